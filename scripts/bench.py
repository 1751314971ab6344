"""`make bench`: the request path against bare inference, an old-style baseline, cold start and memory.

All figures come from one run on this machine, side by side, as medians:

(a) inference: ONNX Runtime alone on already preprocessed tensors, batch 16;
(b) skill: `ClassifySkill.main` on requests of 16 normalized-image records holding 2000x1500 JPEGs (real
    photos re-encoded to that size, base64, the shape Azure AI Search sends);
(c) old style, like the previous PowerSkill: one image per request, full JPEG decode, torchvision
    transforms, PyTorch eager EfficientNet-Lite0;
(d) cold start: a fresh `python -m shared serve` process from start to its first answered request,
    against the floor of a bare script that imports onnxruntime, numpy and PIL, creates the session and
    classifies one image;
(e) peak RSS (VmHWM) of the serving process after the skill workload over HTTP;
(f) with the Blob model store on a local Azurite: cold start of the dev server with an empty cache (the
    model downloaded from Blob and verified) against the same floor, and the skill throughput with the
    store polled every second versus not polled;
(g) object detection: a Faster R-CNN ResNet-18 FPN run at AutoML's 800x600 input (seeded random weights,
    built like the tests' AutoML-layout runs), through `classify_batch` on the same 2000x1500 JPEGs: images/s
    and ms per image (decode + resize + one ONNX Runtime run per image), next to the bare ONNX run.

The last line printed is one JSON object with the ratios.
"""

from __future__ import annotations

import base64
import compileall
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = 16
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
    """(a): one ONNX Runtime run on a preprocessed batch of 16 (the skill's own session)."""
    from shared.app import service

    engine = service().holder.current()
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


def throughputs(calls: dict[str, tuple[Callable[[], object], int, int]], rounds: int) -> dict[str, float]:
    """Images/s per call, from medians of samples taken in interleaved rounds, so that the machine's
    background noise falls on every contender alike. `calls` maps name -> (call, images per call, calls
    per round)."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for call, _, _ in calls.values():
        call()
        call()
    for _ in range(rounds):
        for name, (call, _, repeat) in calls.items():
            for _ in range(repeat):
                start = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - start)
    return {name: images / statistics.median(samples[name]) for name, (_, images, _) in calls.items()}


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


def bench_blob(body: bytes, one_record: bytes, photo: Path, work: Path) -> dict[str, float]:
    """(f): the same cold start and skill path with models coming from Blob storage (Azurite)."""
    from shared.app import SkillService
    from shared.settings import Settings
    from shared.store import BlobModelStore
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

        served, floor = bench_cold_start(one_record, photo, runs=5, server_env=server_env)
        polled = SkillService(Settings(**{**settings.__dict__, "poll_s": 1.0}))
        unpolled = SkillService(Settings(**{**settings.__dict__, "poll_s": 86_400.0}))
        for service in (polled, unpolled):
            assert service.classify(body, {})[0] == 200
        rates = throughputs(
            {
                "on": (lambda: polled.classify(body, {}), BATCH, 2),
                "off": (lambda: unpolled.classify(body, {}), BATCH, 2),
            },
            rounds=8,
        )
        checks = polled.holder.status()["lastCheck"]
        assert checks is not None
    finally:
        azurite.close()
    return {"served": served, "floor": floor, "on": rates["on"], "off": rates["off"]}


def bench_detection(jpegs: list[bytes], rounds: int = 3) -> dict[str, float]:
    """(g): median ms per image through the skill's batch path and for the bare ONNX run, Faster R-CNN
    ResNet-18 FPN at 800x600 (needs torch to build the model; it is not on the measured path)."""
    from shared.bundle import load_bundle
    from shared.detector import DetectionEngine
    from shared.engine import Engine
    from shared.skill import ClassifyOptions, classify_batch
    from tests.detection_models import build_rcnn

    with tempfile.TemporaryDirectory() as tmp:
        build_rcnn(Path(tmp) / "frcnn", "faster_rcnn", ["can", "carton", "milk_bottle", "water_bottle"])
        engine = Engine(load_bundle(Path(tmp) / "frcnn"))
        assert isinstance(engine, DetectionEngine)
        loaders = [lambda data=data: data for data in jpegs]
        tensor = np.random.default_rng(0).standard_normal((1, 3, 600, 800)).astype(np.float32)
        classify_batch(engine, loaders[:1], ClassifyOptions())  # warm-up
        skill, bare = [], []
        for _ in range(rounds):
            began = time.perf_counter()
            outcomes = classify_batch(engine, loaders, ClassifyOptions())
            skill.append((time.perf_counter() - began) / len(loaders))
            assert all(o.data is not None for o in outcomes)
            began = time.perf_counter()
            engine.run(tensor)
            bare.append(time.perf_counter() - began)
    per_image = statistics.median(skill)
    return {"ms_per_image": per_image * 1000, "images_per_s": 1 / per_image, "bare_ms": statistics.median(bare) * 1000}


def main() -> int:
    # A deployment ships compiled bytecode (pip compiles packages; this compiles the app), so a cold start
    # does not pay for compiling our modules even where PYTHONDONTWRITEBYTECODE is set.
    for folder in ("shared", "ClassifySkill", "Health"):
        compileall.compile_dir(str(ROOT / folder), quiet=1)
    jpegs = large_jpegs()
    body = skill_body(jpegs, BATCH)
    one_record = skill_body(jpegs, 1)
    mean_kb = statistics.mean(len(j) for j in jpegs) / 1024
    print(
        f"machine: {os.cpu_count()} cores; model: sample EfficientNet-Lite0; images: {len(PHOTOS)} photos at "
        f"{SIZE[0]}x{SIZE[1]} JPEG, {mean_kb:.0f} kB mean",
        flush=True,
    )
    rates = throughputs(
        {
            "inference": (inference_call(), BATCH, 4),
            "skill": (skill_call(body), BATCH, 2),
            "old": (old_style_call(jpegs), 1, 6),
        },
        rounds=8,
    )
    inference, skill, old = rates["inference"], rates["skill"], rates["old"]
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "large.jpg"
        photo.write_bytes(jpegs[0])
        served, floor = bench_cold_start(one_record, photo)
    rss = bench_peak_rss(body)
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "large.jpg"
        photo.write_bytes(jpegs[0])
        blob = bench_blob(body, one_record, photo, Path(tmp))
    rows = [
        ("(a) ONNX Runtime alone, batch 16", f"{inference:.1f} images/s"),
        ("(b) skill: ClassifySkill.main, 16 x 2000x1500 JPEG", f"{skill:.1f} images/s"),
        ("(c) old style: 1 image/request, full decode, torch eager", f"{old:.1f} images/s"),
        ("(d) cold start: dev server to first answer", f"{served * 1000:.0f} ms"),
        ("    floor: bare onnxruntime script, one image", f"{floor * 1000:.0f} ms"),
        ("(e) peak RSS of the serving process", f"{rss:.0f} MB"),
        ("(f) cold start from Blob (Azurite), empty cache", f"{blob['served'] * 1000:.0f} ms"),
        ("    floor, measured alongside", f"{blob['floor'] * 1000:.0f} ms"),
        ("    skill, store polled every 1 s", f"{blob['on']:.1f} images/s"),
        ("    skill, store not polled", f"{blob['off']:.1f} images/s"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    result = {
        "skill_images_per_s": round(skill, 1),
        "inference_images_per_s": round(inference, 1),
        "old_style_images_per_s": round(old, 1),
        "skill_over_inference": round(skill / inference, 3),
        "speedup_vs_old_style": round(skill / old, 2),
        "cold_start_ms": round(served * 1000),
        "cold_start_floor_ms": round(floor * 1000),
        "cold_start_over_floor": round(served / floor, 3),
        "peak_rss_mb": round(rss, 1),
        "blob_cold_start_ms": round(blob["served"] * 1000),
        "blob_cold_start_over_floor": round(blob["served"] / blob["floor"], 3),
        "skill_poll_on_over_off": round(blob["on"] / blob["off"], 3),
    }
    detection = bench_detection(jpegs)
    print(
        f"{'(g) detection: Faster R-CNN R18-FPN 800x600, skill path':<{width}}  {detection['images_per_s']:.2f} "
        f"images/s, {detection['ms_per_image']:.0f} ms/image (bare ONNX run {detection['bare_ms']:.0f} ms)"
    )
    result["detection_images_per_s"] = round(detection["images_per_s"], 2)
    result["detection_ms_per_image"] = round(detection["ms_per_image"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
