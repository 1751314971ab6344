"""`make bench`: the request path against bare inference, an old-style baseline, cold start and memory.

All figures come from one run on one machine, side by side, as medians:

(a) inference: ONNX Runtime alone on already preprocessed tensors, batch 16, all cores in one run;
(b) skill: `ClassifySkill.main` on requests of 16 normalized-image records holding 2000x1500 JPEGs (real
    photos re-encoded to that size, base64, the shape Azure AI Search sends);
(c) old style, like the previous PowerSkill: one image per request, full JPEG decode, torchvision
    transforms, PyTorch eager EfficientNet-Lite0;
(d) cold start: a fresh `python -m shared serve` process from start to its first answered request,
    against the floor of a bare script that imports onnxruntime, numpy and PIL, creates the session and
    classifies one image;
(e) peak RSS (VmHWM) of the serving process after the skill workload over HTTP;
(f) with the Blob model store on a local Azurite: cold start of the dev server with an empty cache (the
    Azure Storage SDK imported and the model downloaded from Blob and verified, on the prefetch's thread)
    against the same floor, and the skill throughput with the store polled every second versus not polled.

(g) the floor: the single-core CPU cost per image of each phase of the skill path (body parse, base64,
    JPEG decode, preprocess) and of inference (a one-thread session, so no thread pool spins, in the
    skill's runs of INFERENCE_RUN images), measured with the thread's CPU clock on every core at once: one
    process per core, pinned to it, all running the phases together in each of the interleaved rounds of
    (a) and (b), as the skill's threads run on every core together. Each core with no waste would
    classify 1 / (the sum of its costs) images/s, and the floor is the sum over the cores: N / (the sum)
    when the cores run at one speed. `skill_over_floor` is (b) over that. The same phases measured on one
    core at a time, the others idle, are printed beside it: on a quiet host the two floors agree; when
    other machines load the host, cores that all work at once get less done than one alone, for the
    skill and for its floor alike.

(i) embeddings: ONNX Runtime on the sample model as shipped (logits only) against the same model with its
    embedding output added (shared.bundle.embedding), fetching the logits only and fetching both, batch 16,
    one-thread sessions timed with the thread's CPU clock;
    and ClassifySkill.main on the 16-record request without and with `embedding=true`: images/s and the
    response's bytes per image.

(h) object detection: a Faster R-CNN ResNet-18 FPN run at AutoML's 800x600 input (seeded random weights,
    built like the tests' AutoML-layout runs), through `run_batch` on the same 2000x1500 JPEGs: images/s
    and ms per image (decode + resize + one ONNX Runtime run per image), next to the bare ONNX run.

(i) instance segmentation: a Mask R-CNN ResNet-18 FPN run at AutoML's 800x600 input (built like the tests'
    runs, AutoML's 1,000 proposals and 100 detections per image), through `run_batch` on four of the JPEGs:
    images/s and ms per image, and of those the ms spent turning masks into polygons (`result`).

Targets live here, in TARGETS, and each figure is printed next to its target. The last line printed is
one JSON object with the figures. `--quick` cuts the rounds for iterating (noisier); `--only` runs some
sections (throughput, cold, rss, blob, detection, segmentation).
"""

from __future__ import annotations

import argparse
import base64
import compileall
import contextlib
import importlib.util
import io
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = 16
PARALLEL = 4  # requests at once in (b'), as a skillset with degreeOfParallelism 4 sends them
SIZE = (2000, 1500)
PHOTOS = sorted(p for p in (ROOT / "samples").iterdir() if p.suffix in (".png", ".jpg"))


def large_jpegs() -> list[bytes]:
    out = []
    for path in PHOTOS:
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").resize(SIZE, Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def skill_body(jpegs: list[bytes], records: int) -> bytes:
    values = []
    for i in range(records):
        data = base64.b64encode(jpegs[i % len(jpegs)]).decode()
        image = {
            "$type": "file", "data": data, "width": SIZE[0], "height": SIZE[1], "originalWidth": 4032,
            "originalHeight": 3024, "rotationFromOriginal": 0, "contentOffset": 0, "pageNumber": 0,
            "contentType": "image/jpeg", "url": None,
        }  # fmt: skip
        values.append({"recordId": str(i), "data": {"image": image}})
    return json.dumps({"values": values}).encode()


def inference_call() -> Callable[[], object]:
    """(a): one ONNX Runtime run on a preprocessed batch of 16, the skill's model in a session using every
    core (intra-op threads), the way ONNX Runtime alone is fastest on one batch."""
    from shared.inference.factory import open_model
    from shared.skill.service import service

    engine = open_model(service().holder.current().bundle)
    batch = np.random.default_rng(0).uniform(0, 255, (BATCH, 3, 224, 224)).astype(np.float32)
    return lambda: engine.logits(batch)


def skill_call(body: bytes) -> Callable[[], object]:
    """(b): ClassifySkill.main on one request of 16 records."""
    import azure.functions as func

    import ClassifySkill

    def one() -> None:
        response = ClassifySkill.main(func.HttpRequest(method="POST", url="/api/classify", body=body))
        assert response.status_code == 200, response.get_body()[:200]

    return one


def old_style_call(jpegs: list[bytes]) -> Callable[[], object]:
    import torch
    from torchvision import transforms

    spec = importlib.util.spec_from_file_location("export_sample_model", ROOT / "scripts" / "export_sample_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["export_sample_model"] = module
    spec.loader.exec_module(module)
    model = module.build_torch_model()
    pipeline = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()])
    requests = [json.dumps({"values": [{"recordId": "0", "data": {"images": {"data": base64.b64encode(j).decode()}}}]})
                for j in jpegs]  # fmt: skip
    counter = iter(range(10**9))

    def one() -> None:
        request = json.loads(requests[next(counter) % len(requests)])
        data = base64.b64decode(request["values"][0]["data"]["images"]["data"])
        image = Image.open(io.BytesIO(data)).convert("RGB")
        with torch.no_grad():
            logits = model(pipeline(image).float().unsqueeze(0))
        json.dumps({"label": int(logits.argmax())})

    return one


Sampler = Callable[[], float]


def per_image(call: Callable[[], object], images: int, clock: Callable[[], float] = time.perf_counter) -> Sampler:
    """A sampler: runs `call` once and returns `clock` seconds per image."""

    def sample() -> float:
        start = clock()
        call()
        return (clock() - start) / images

    return sample


WARMUP = 2  # unmeasured calls of each sampler before the rounds


def interleaved(samplers: dict[str, tuple[Sampler, int]], rounds: int) -> dict[str, list[float]]:
    """Every sample (seconds per image) of each sampler, in the order taken, from interleaved rounds, so
    that each contender is sampled in the same minutes of the machine's background load. `samplers` maps
    name -> (sampler, samples per round); every sampler first runs WARMUP times, unmeasured."""
    samples: dict[str, list[float]] = {name: [] for name in samplers}
    for sampler, _ in samplers.values():
        for _ in range(WARMUP):
            sampler()
    for _ in range(rounds):
        for name, (sampler, repeat) in samplers.items():
            samples[name].extend(sampler() for _ in range(repeat))
    return samples


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in samples.items()}


PHASES = ("parse", "base64", "decode", "preprocess", "inference")


def floor_cores() -> list[int | None]:
    """The cores the floor is measured on: each core this process may run on (Linux), else [None]."""
    cores: list[int | None] = [None]
    if hasattr(os, "sched_setaffinity"):
        cores = [*sorted(os.sched_getaffinity(0))]
    return cores


def pinned(sampler: Sampler, core: int | None) -> Sampler:
    """`sampler` run with the calling thread pinned to `core` (None: wherever the scheduler puts it)."""
    if core is None:
        return sampler

    def sample() -> float:
        allowed = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {core})  # pid 0: the calling thread only
        try:
            return sampler()
        finally:
            os.sched_setaffinity(0, allowed)

    return sample


def core_label(core: int | None) -> str:
    return f"cpu{'' if core is None else core}"


def floor_key(core: int | None, phase: str) -> str:
    return f"{core_label(core)}:{phase}"


def phase_calls(body: bytes) -> tuple[dict[str, Callable[[], object]], int]:
    """(g): one call per phase of the skill path (PHASES), each doing one request's worth of that phase with
    the skill's own functions and settings, and the request's image count."""
    from shared.inference.classification import preprocess
    from shared.inference.factory import open_model
    from shared.inference.images import decode_image
    from shared.inference.scheduler import INFERENCE_RUN
    from shared.skill.contract import parse_request
    from shared.skill.service import service

    svc = service()
    s = svc.settings
    engine = svc.holder.current()
    single = open_model(engine.bundle, threads=1)

    def parse() -> list[Any]:
        return parse_request(
            body, max_request_bytes=s.max_request_bytes, max_records=s.max_records, max_image_bytes=s.max_image_bytes
        )

    loaders = [r.loader for r in parse()]
    encoded = [load() for load in loaders]
    draft = engine.preprocessing.resize if s.fast_jpeg_decode else None
    decoded = [decode_image(data, s.image_limits(), draft_short_side=draft) for data in encoded]
    crop = engine.preprocessing.crop
    tensors = np.empty((len(decoded), 3, crop, crop), dtype=np.float32)
    for i, d in enumerate(decoded):
        preprocess(d.image, engine.preprocessing, out=tensors[i])

    calls: dict[str, Callable[[], object]] = {
        "parse": parse,
        "base64": lambda: [load() for load in loaders],
        "decode": lambda: [decode_image(data, s.image_limits(), draft_short_side=draft) for data in encoded],
        "preprocess": lambda: [
            preprocess(d.image, engine.preprocessing, out=tensors[i]) for i, d in enumerate(decoded)
        ],
        # The skill's runs: INFERENCE_RUN images at a time.
        "inference": lambda: [
            single.logits(tensors[i : i + INFERENCE_RUN]) for i in range(0, len(tensors), INFERENCE_RUN)
        ],
    }
    assert tuple(calls) == PHASES
    return calls, len(loaders)


def floor_samplers(body: bytes) -> dict[str, tuple[Sampler, int]]:
    """(g) one core at a time: a sampler per phase and per core (`floor_cores`), each running the phase on
    this thread pinned to that core while the other cores have nothing to do, timed by the thread's CPU
    clock."""
    calls, images = phase_calls(body)
    return {
        floor_key(core, name): (pinned(per_image(call, images, time.thread_time), core), 1)
        for core in floor_cores()
        for name, call in calls.items()
    }


PhaseCalls = Callable[[bytes], tuple[dict[str, Callable[[], object]], int]]


def _floor_worker(conn: Connection, core: int | None, body: bytes, calls_of: PhaseCalls) -> None:
    """One core's process of `AllCoresFloor`: pinned to `core`, it answers each true message with one
    sample (seconds per image, CPU clock) of every phase, and stops at a false one."""
    if core is not None:
        os.sched_setaffinity(0, {core})
    calls, images = calls_of(body)
    samplers = {name: per_image(call, images, time.thread_time) for name, call in calls.items()}
    for sampler in samplers.values():
        sampler()
    conn.send(os.getpid())
    while conn.recv():
        conn.send({name: sampler() for name, sampler in samplers.items()})


class AllCoresFloor:
    """(g) with every core busy: one process per core (`floor_cores`), pinned to it, each with its own
    copy of the phases (`calls_of(body)`, `phase_calls` unless a test passes another). `sample` starts one
    sample of every phase on all of them at once and waits for all; `samples` keeps them by
    `floor_key(core, phase)`. Processes, not threads, so that nothing in one process (the GIL, an
    allocator) slows another: what the cores lose together, they lose to the machine."""

    def __init__(self, body: bytes, calls_of: PhaseCalls = phase_calls) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process holding threads and sessions
        self.cores = floor_cores()
        self.samples: dict[str, list[float]] = {floor_key(c, name): [] for c in self.cores for name in PHASES}
        self.conns: list[Connection] = []
        self.procs: list[BaseProcess] = []
        for core in self.cores:
            ours, theirs = context.Pipe()
            proc = context.Process(target=_floor_worker, args=(theirs, core, body, calls_of), daemon=True)
            proc.start()
            theirs.close()  # so that a process that dies is an EOFError here, not a wait forever
            self.conns.append(ours)
            self.procs.append(proc)
        self.pids = [self._answer(core, conn) for core, conn in zip(self.cores, self.conns, strict=True)]

    def _answer(self, core: int | None, conn: Connection) -> Any:
        try:
            return conn.recv()
        except EOFError:
            self.close()
            raise RuntimeError(f"the floor's process for {core_label(core)} exited; its error is above") from None

    def sample(self) -> float:
        """One sample on every core at once; returns the slowest core's seconds per image over the phases."""
        for conn in self.conns:
            conn.send(True)
        sums = []
        for core, conn in zip(self.cores, self.conns, strict=True):
            answer: dict[str, float] = self._answer(core, conn)
            for name, value in answer.items():
                self.samples[floor_key(core, name)].append(value)
            sums.append(sum(answer.values()))
        return max(sums)

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):  # BrokenPipeError: that process is gone already
                conn.send(False)
        for proc in self.procs:
            proc.join(timeout=30)


def floor_of(seconds: dict[str, float], n_cores: int) -> tuple[dict[int | None, float], dict[str, float], float]:
    """(g) from the floor samplers' seconds per image: each core's sum over the phases, each phase's mean over
    the cores, and the floor in images/s. Each core has its own cost (the cores of a VM do not always run
    at the same speed), and the floor is what they classify together: the sum of their rates."""
    by_core = {core: sum(seconds[floor_key(core, name)] for name in PHASES) for core in floor_cores()}
    costs = {name: statistics.mean(seconds[floor_key(core, name)] for core in by_core) for name in PHASES}
    return by_core, costs, sum(1 / cost for cost in by_core.values()) * (n_cores / len(by_core))


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _wait_for_server(proc: subprocess.Popen[str]) -> str:
    line = proc.stderr.readline() if proc.stderr else ""
    while "serving " not in line:
        if not line:
            raise RuntimeError("dev server exited before serving")
        line = proc.stderr.readline() if proc.stderr else ""
    return line.split(" on ", 1)[1].split("/api/", 1)[0]


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared", "serve", "--port", "0"], cwd=ROOT, env=env,
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    return proc, _wait_for_server(proc)


def post(url: str, body: bytes) -> dict[str, Any]:
    request = urllib.request.Request(f"{url}/api/classify", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "SKILL_API_KEY" and not k.startswith("MODEL_")}


def bench_cold_start(
    one_record: bytes, photo: Path, runs: int = 5, server_env: Callable[[], dict[str, str]] = clean_env
) -> tuple[float, float]:
    """(d): medians of `runs` fresh processes each, the server and the floor alternating. `server_env` is
    called before each server start (a fresh, empty model cache for the Blob variant)."""
    env = clean_env()
    floor_script = (
        "import numpy as np, onnxruntime as ort\n"
        "from PIL import Image\n"
        f"s = ort.InferenceSession({str(ROOT / 'model_cache/sample/model.onnx')!r},"
        " providers=['CPUExecutionProvider'])\n"
        f"im = Image.open({str(photo)!r}).convert('RGB')\n"
        "w, h = im.size; r = 256 / min(w, h)\n"
        "im = im.resize((max(256, int(w * r)), max(256, int(h * r))), Image.BILINEAR)\n"
        "w, h = im.size; l, t = (w - 224) // 2, (h - 224) // 2\n"
        "x = np.asarray(im.crop((l, t, l + 224, t + 224)), np.float32).transpose(2, 0, 1)[None]\n"
        "print(int(s.run(None, {'input1': x})[0].argmax()))\n"
    )
    served, floor = [], []
    for _ in range(runs):
        fresh = server_env()
        start = time.perf_counter()
        proc, url = start_server(fresh)
        try:
            post(url, one_record)
            served.append(time.perf_counter() - start)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", floor_script], cwd=ROOT, env=env, check=True, capture_output=True)
        floor.append(time.perf_counter() - start)
    return statistics.median(served), statistics.median(floor)


def bench_peak_rss(body: bytes, requests: int = 10) -> float:
    env = clean_env()
    proc, url = start_server(env)
    try:
        for _ in range(requests):
            assert len(post(url, body)["values"]) == BATCH
        status = Path(f"/proc/{proc.pid}/status").read_text()
        hwm_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return hwm_kb / 1024


def bench_blob(
    body: bytes, one_record: bytes, photo: Path, work: Path, *, runs: int = 5, rounds: int = 8
) -> dict[str, float]:
    """(f): the same cold start and skill path with models coming from Blob storage (Azurite)."""
    from shared.core.settings import Settings
    from shared.modelstore.blobstore import BlobModelStore
    from shared.skill.service import SkillService
    from tests.azurite import Azurite

    azurite = Azurite().start()
    try:
        settings = Settings(blob_connection_string=azurite.connection_string, cache_dir=work / "cache-inproc")
        store = BlobModelStore.from_settings(settings)
        assert store is not None
        store.publish(ROOT / "model_cache" / "sample", version="bench-1")
        counter = iter(range(1000))

        def server_env() -> dict[str, str]:
            return clean_env() | {
                "MODEL_BLOB_CONNECTION_STRING": azurite.connection_string,
                "MODEL_CACHE_DIR": str(work / f"cache-{next(counter)}"),
            }

        served, floor = bench_cold_start(one_record, photo, runs=runs, server_env=server_env)
        polled = SkillService(Settings(**{**settings.__dict__, "poll_s": 1.0}))
        unpolled = SkillService(Settings(**{**settings.__dict__, "poll_s": 86_400.0}))
        for service in (polled, unpolled):
            assert service.classify(body, {})[0] == 200
        samples = interleaved(
            {
                "on": (per_image(lambda: polled.classify(body, {}), BATCH), 2),
                "off": (per_image(lambda: unpolled.classify(body, {}), BATCH), 2),
            },
            rounds=rounds,
        )
        # A poll is an occasional cost (one check a second, in a few of the samples), which a median would
        # leave out: the mean counts it.
        rates = {name: 1 / statistics.fmean(values) for name, values in samples.items()}
        checks = polled.holder.status()["lastCheck"]
        assert checks is not None
    finally:
        azurite.close()
    return {"served": served, "floor": floor, "on": rates["on"], "off": rates["off"]}


def bench_detection(jpegs: list[bytes], rounds: int = 3) -> dict[str, float]:
    """(h): median ms per image through the skill's batch path and for the bare ONNX run, Faster R-CNN
    ResNet-18 FPN at 800x600 (needs torch to build the model; it is not on the measured path)."""
    from shared.bundle.loader import load_bundle
    from shared.inference.detection import DetectionModel
    from shared.inference.factory import open_model
    from shared.inference.model import InferenceOptions
    from shared.inference.scheduler import run_batch
    from tests.detection_models import build_rcnn

    with tempfile.TemporaryDirectory() as tmp:
        build_rcnn(Path(tmp) / "frcnn", "faster_rcnn", ["can", "carton", "milk_bottle", "water_bottle"])
        engine = open_model(load_bundle(Path(tmp) / "frcnn"))
        assert isinstance(engine, DetectionModel)
        loaders = [lambda data=data: data for data in jpegs]
        tensor = np.random.default_rng(0).standard_normal((1, 3, 600, 800)).astype(np.float32)
        run_batch(engine, loaders[:1], InferenceOptions())  # warm-up
        skill, bare = [], []
        for _ in range(rounds):
            began = time.perf_counter()
            outcomes = run_batch(engine, loaders, InferenceOptions())
            skill.append((time.perf_counter() - began) / len(loaders))
            assert all(o.data is not None for o in outcomes)
            began = time.perf_counter()
            engine.run(tensor)
            bare.append(time.perf_counter() - began)
    per_image = statistics.median(skill)
    return {"ms_per_image": per_image * 1000, "images_per_s": 1 / per_image, "bare_ms": statistics.median(bare) * 1000}


def bench_segmentation(jpegs: list[bytes], rounds: int = 2) -> dict[str, float]:
    """(i): median ms per image through the skill's batch path for a Mask R-CNN ResNet-18 FPN at 800x600, and
    the share of it spent in `result` (masks to polygons); needs torch to build the model."""
    from shared.bundle.loader import load_bundle
    from shared.inference.factory import open_model
    from shared.inference.model import InferenceOptions
    from shared.inference.scheduler import run_batch
    from shared.inference.segmentation import SegmentationModel
    from tests.detection_models import build_mask_rcnn

    with tempfile.TemporaryDirectory() as tmp:
        build_mask_rcnn(Path(tmp) / "mrcnn", ["can", "carton", "milk_bottle", "water_bottle"])
        engine = open_model(load_bundle(Path(tmp) / "mrcnn"))
        assert isinstance(engine, SegmentationModel)
        loaders = [lambda data=data: data for data in jpegs[:4]]
        spent: list[float] = []
        real_result = engine.result

        def timed_result(*args: Any) -> Any:
            began = time.perf_counter()
            try:
                return real_result(*args)
            finally:
                spent.append(time.perf_counter() - began)

        engine.result = timed_result  # type: ignore[method-assign]
        run_batch(engine, loaders[:1], InferenceOptions())  # warm-up
        skill, polygons, objects = [], [], []
        for _ in range(rounds):
            spent.clear()
            began = time.perf_counter()
            outcomes = run_batch(engine, loaders, InferenceOptions())
            skill.append((time.perf_counter() - began) / len(loaders))
            polygons.append(sum(spent) / len(loaders))
            assert all(o.data is not None for o in outcomes)
            objects.append(statistics.fmean(len(o.data["objects"]) for o in outcomes if o.data is not None))
    per_image = statistics.median(skill)
    return {
        "ms_per_image": per_image * 1000,
        "images_per_s": 1 / per_image,
        "polygon_ms": statistics.median(polygons) * 1000,
        "objects": statistics.median(objects),
    }


# name -> (comparison, bound). Each is printed next to its figure; the bench reports, it does not fail.
TARGETS: dict[str, tuple[str, float]] = {
    # Without embedding=true nothing changes: the session with the extra output, asked for the logits only, and
    # the skill's answer (the same bytes) against the model as shipped.
    "embedding_graph_logits_over_shipped": (">=", 0.95),
    "skill_over_floor": (">=", 0.9),
    "skill_over_inference": (">=", 0.5),
    "speedup_vs_old_style": (">=", 5.0),
    "cold_start_over_floor": ("<=", 1.3),
    "peak_rss_mb": ("<=", 400.0),
    "blob_cold_start_over_floor": ("<=", 2.5),
    "skill_poll_on_over_off": (">=", 0.95),
}
SECTIONS = ("throughput", "cold", "rss", "blob", "detection", "segmentation", "embedding")


def bench_embedding(body: bytes, rounds: int) -> dict[str, float]:
    """(j): the embedding's cost. Speeds in images/s (medians of interleaved samples); bytes per image."""
    import azure.functions as func
    import onnxruntime as ort

    import ClassifySkill
    from shared.bundle.embedding import edit_model_bytes
    from shared.bundle.layout import SAMPLE_BUNDLE
    from shared.inference.session import open_session

    path = SAMPLE_BUNDLE / "model.onnx"
    # One intra-op thread each, timed with the thread's CPU clock: the two graphs' own cost, not the host's load
    # (wall-clock medians of multi-threaded runs moved by 10% between neighbouring samplers on a busy host).
    shipped: ort.InferenceSession = open_session(path, 1, mem_pattern=False)
    edited: ort.InferenceSession = open_session(
        path, 1, mem_pattern=False, model_bytes=edit_model_bytes(path.read_bytes())
    )
    batch = np.random.default_rng(0).uniform(0, 255, (BATCH, 3, 224, 224)).astype(np.float32)

    def request(params: dict[str, str]) -> Callable[[], bytes]:
        def one() -> bytes:
            response = ClassifySkill.main(
                func.HttpRequest(method="POST", url="/api/classify", body=body, params=params)
            )
            assert response.status_code == 200, response.get_body()[:200]
            return bytes(response.get_body())

        return one

    plain, with_vector = request({}), request({"embedding": "true"})
    cpu = time.thread_time
    samples = medians(
        interleaved(
            {
                "shipped": (per_image(lambda: shipped.run(["output1"], {"input1": batch}), BATCH, cpu), 3),
                "logits": (per_image(lambda: edited.run(["output1"], {"input1": batch}), BATCH, cpu), 3),
                "both": (per_image(lambda: edited.run(["output1", "embedding"], {"input1": batch}), BATCH, cpu), 3),
                "skill": (per_image(plain, BATCH), 2),
                "skill_embedding": (per_image(with_vector, BATCH), 2),
            },
            rounds=rounds,
        )
    )
    return {
        "shipped": 1 / samples["shipped"],
        "logits": 1 / samples["logits"],
        "both": 1 / samples["both"],
        "skill": 1 / samples["skill"],
        "skill_embedding": 1 / samples["skill_embedding"],
        "bytes": len(plain()) / BATCH,
        "bytes_embedding": len(with_vector()) / BATCH,
    }


def verdict(name: str, value: float) -> str:
    if name not in TARGETS:
        return ""
    op, bound = TARGETS[name]
    met = value >= bound if op == ">=" else value <= bound
    return f"target {op} {bound:g}: {'met' if met else 'MISSED'}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and cold starts (noisier; for iterating)")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated sections to run, of {', '.join(SECTIONS)}"
    )
    args = parser.parse_args(argv)
    args.sections = {s.strip() for s in args.only.split(",") if s.strip()}
    if unknown := args.sections - set(SECTIONS):
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rounds, runs = (3, 2) if args.quick else (8, 5)
    # A deployment ships compiled bytecode (pip compiles packages; this compiles the app), so a cold start
    # does not pay for compiling our modules even where PYTHONDONTWRITEBYTECODE is set.
    for folder in ("shared", "ClassifySkill", "Health"):
        compileall.compile_dir(str(ROOT / folder), quiet=1)
    jpegs = large_jpegs()
    body = skill_body(jpegs, BATCH)
    one_record = skill_body(jpegs, 1)
    mean_kb = statistics.mean(len(j) for j in jpegs) / 1024
    n_cores = cores()
    print(
        f"machine: {n_cores} cores; model: sample EfficientNet-Lite0; images: {len(PHOTOS)} photos at "
        f"{SIZE[0]}x{SIZE[1]} JPEG, {mean_kb:.0f} kB mean{'; --quick' if args.quick else ''}",
        flush=True,
    )
    rows: list[tuple[str, str]] = []
    result: dict[str, Any] = {}
    if "throughput" in args.sections:
        skill_cpu: list[float] = []
        skill = skill_call(body)

        def skill_sample() -> float:
            wall, cpu = time.perf_counter(), time.process_time()
            skill()
            skill_cpu.append((time.process_time() - cpu) / BATCH)
            return (time.perf_counter() - wall) / BATCH

        # Azure AI Search sends up to degreeOfParallelism requests at once (4 in infra/search/skillset.json):
        # the same requests, PARALLEL at a time, where one request's parse and tail overlap another's work.
        callers = ThreadPoolExecutor(max_workers=PARALLEL, thread_name_prefix="caller")

        def parallel_sample() -> float:
            wall = time.perf_counter()
            for future in [callers.submit(skill) for _ in range(PARALLEL)]:
                future.result()
            return (time.perf_counter() - wall) / (BATCH * PARALLEL)

        # The skill comes last in each round, after the one-thread floor samplers: the threads of (a)'s
        # session and of PyTorch spin for a while after each run, and would take CPU from the skill and
        # add to its CPU time (measured: 19.1 instead of 16.9 ms per image right after an (a) run).
        # The floor on every core at once; the same phases one core at a time are sampled too, for comparison.
        floor_all = AllCoresFloor(body)
        try:
            samples = interleaved(
                {
                    "inference": (per_image(inference_call(), BATCH), 4),
                    "old": (per_image(old_style_call(jpegs), 1), 6),
                    **floor_samplers(body),
                    "floor": (floor_all.sample, 1),
                    "skill": (skill_sample, 2),
                    "parallel": (parallel_sample, 1),
                },
                rounds=rounds,
            )
        finally:
            floor_all.close()
        callers.shutdown()
        seconds = medians(samples)
        inference, skill_rate, old = 1 / seconds["inference"], 1 / seconds["skill"], 1 / seconds["old"]
        # Without interleaved's warm-up calls, which the floor's processes answered like any other.
        by_core, costs, floor_rate = floor_of(
            medians({key: values[WARMUP:] for key, values in floor_all.samples.items()}), n_cores
        )
        alone_rate = floor_of(seconds, n_cores)[2]
        # skill_over_floor = (floor's share of the skill's CPU) x (cores the skill got / cores): the first
        # is the code's waste, the second the machine's (other processes) or serial parts of the path.
        cpu = statistics.median(skill_cpu)
        rows += [
            ("(a) ONNX Runtime alone, batch 16", f"{inference:.1f} images/s"),
            ("(b) skill: ClassifySkill.main, 16 x 2000x1500 JPEG", f"{skill_rate:.1f} images/s"),
            ("(c) old style: 1 image/request, full decode, torch eager", f"{old:.1f} images/s"),
            ("(g) floor: one core's CPU per image, every core at once", ""),
            *((f"    {name}", f"{costs[name] * 1000:.2f} ms") for name in PHASES),
            ("    sum", f"{sum(costs.values()) * 1000:.2f} ms"),
            ("    sum by core", ", ".join(f"{core_label(c)} {v * 1000:.2f} ms" for c, v in by_core.items())),
            (f"    floor: {n_cores} cores, no waste", f"{floor_rate:.1f} images/s"),
            (
                "    the same, one core at a time, others idle",
                f"{alone_rate:.1f} images/s, (b) {skill_rate / alone_rate:.3f} of it",
            ),
            ("    skill's own CPU per image (all threads)", f"{cpu * 1000:.2f} ms"),
            ("    floor's share of it (1 = no CPU wasted)", f"{sum(costs.values()) / cpu:.2f}"),
            ("    cores the skill got (CPU / wall)", f"{cpu / seconds['skill']:.2f} of {n_cores}"),
            (
                f"(b') skill, {PARALLEL} such requests at once",
                f"{1 / seconds['parallel']:.1f} images/s, {1 / seconds['parallel'] / floor_rate:.3f} of the floor",
            ),
        ]
        result |= {
            "skill_images_per_s": round(skill_rate, 1),
            "floor_images_per_s": round(floor_rate, 1),
            "skill_over_floor": round(skill_rate / floor_rate, 3),
            "inference_images_per_s": round(inference, 1),
            "old_style_images_per_s": round(old, 1),
            "skill_over_inference": round(skill_rate / inference, 3),
            "speedup_vs_old_style": round(skill_rate / old, 2),
            "floor_cpu_ms_per_image": {name: round(costs[name] * 1000, 2) for name in PHASES},
            "floor_cpu_ms_per_image_by_core": {core_label(c): round(v * 1000, 2) for c, v in by_core.items()},
            "skill_cpu_ms_per_image": round(cpu * 1000, 2),
            "floor_share_of_skill_cpu": round(sum(costs.values()) / cpu, 3),
            "skill_cores_used": round(cpu / seconds["skill"], 2),
            "parallel_skill_images_per_s": round(1 / seconds["parallel"], 1),
            "parallel_skill_over_floor": round(1 / seconds["parallel"] / floor_rate, 3),
            "floor_alone_images_per_s": round(alone_rate, 1),
            "skill_over_floor_alone": round(skill_rate / alone_rate, 3),
        }
    if "cold" in args.sections:
        with tempfile.TemporaryDirectory() as tmp:
            photo = Path(tmp) / "large.jpg"
            photo.write_bytes(jpegs[0])
            served, floor = bench_cold_start(one_record, photo, runs=runs)
        rows += [
            ("(d) cold start: dev server to first answer", f"{served * 1000:.0f} ms"),
            ("    floor: bare onnxruntime script, one image", f"{floor * 1000:.0f} ms"),
        ]
        result |= {
            "cold_start_ms": round(served * 1000),
            "cold_start_floor_ms": round(floor * 1000),
            "cold_start_over_floor": round(served / floor, 3),
        }
    if "rss" in args.sections:
        rss = bench_peak_rss(body)
        rows.append(("(e) peak RSS of the serving process", f"{rss:.0f} MB"))
        result["peak_rss_mb"] = round(rss, 1)
    if "blob" in args.sections:
        with tempfile.TemporaryDirectory() as tmp:
            photo = Path(tmp) / "large.jpg"
            photo.write_bytes(jpegs[0])
            blob = bench_blob(body, one_record, photo, Path(tmp), runs=runs, rounds=rounds)
        rows += [
            ("(f) cold start from Blob (Azurite), empty cache", f"{blob['served'] * 1000:.0f} ms"),
            ("    floor, measured alongside", f"{blob['floor'] * 1000:.0f} ms"),
            ("    skill, store polled every 1 s", f"{blob['on']:.1f} images/s"),
            ("    skill, store not polled", f"{blob['off']:.1f} images/s"),
        ]
        result |= {
            "blob_cold_start_ms": round(blob["served"] * 1000),
            "blob_cold_start_floor_ms": round(blob["floor"] * 1000),
            "blob_cold_start_over_floor": round(blob["served"] / blob["floor"], 3),
            "skill_poll_on_over_off": round(blob["on"] / blob["off"], 3),
        }
    if "detection" in args.sections:
        detection = bench_detection(jpegs, rounds=2 if args.quick else 3)
        rows.append(
            (
                "(h) detection: Faster R-CNN R18-FPN 800x600, skill path",
                f"{detection['images_per_s']:.2f} images/s, {detection['ms_per_image']:.0f} ms/image "
                f"(bare ONNX run {detection['bare_ms']:.0f} ms)",
            )
        )
        result["detection_images_per_s"] = round(detection["images_per_s"], 2)
        result["detection_ms_per_image"] = round(detection["ms_per_image"])
    if "segmentation" in args.sections:
        segmentation = bench_segmentation(jpegs, rounds=1 if args.quick else 2)
        rows.append(
            (
                "(i) segmentation: Mask R-CNN R18-FPN 800x600, skill path",
                f"{segmentation['images_per_s']:.2f} images/s, {segmentation['ms_per_image']:.0f} ms/image "
                f"(polygons {segmentation['polygon_ms']:.0f} ms for {segmentation['objects']:.0f} objects)",
            )
        )
        result["segmentation_images_per_s"] = round(segmentation["images_per_s"], 3)
        result["segmentation_ms_per_image"] = round(segmentation["ms_per_image"])
        result["segmentation_polygon_ms_per_image"] = round(segmentation["polygon_ms"])
    if "embedding" in args.sections:
        emb = bench_embedding(body, rounds=rounds)
        rows += [
            ("(j) embeddings: one-thread session, CPU, model as shipped", f"{1000 / emb['shipped']:.2f} ms/image"),
            ("    with the embedding output, logits fetched", f"{1000 / emb['logits']:.2f} ms/image"),
            ("    with the embedding output, both fetched", f"{1000 / emb['both']:.2f} ms/image"),
            ("    skill without embedding=true", f"{emb['skill']:.1f} images/s, {emb['bytes']:.0f} bytes/image"),
            (
                "    skill with embedding=true",
                f"{emb['skill_embedding']:.1f} images/s, {emb['bytes_embedding']:.0f} bytes/image",
            ),
        ]
        result |= {
            "embedding_graph_logits_over_shipped": round(emb["logits"] / emb["shipped"], 3),
            "embedding_both_over_shipped": round(emb["both"] / emb["shipped"], 3),
            "skill_embedding_over_plain": round(emb["skill_embedding"] / emb["skill"], 3),
            "response_bytes_per_image": round(emb["bytes"]),
            "response_bytes_per_image_embedding": round(emb["bytes_embedding"]),
        }
    ratios = [(name, value) for name, value in result.items() if name in TARGETS]
    rows += [(name, f"{value:g}  {verdict(name, value)}") for name, value in ratios]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}".rstrip())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
