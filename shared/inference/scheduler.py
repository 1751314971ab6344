"""Answer a batch of encoded images with one model, whatever its task: decode with limits, prepare, run, answer.

Both the HTTP skill (shared.skill.service) and the CLI go through `run_batch`, so what a user sees locally is
what the search index gets. The scheduler knows the model only through shared.inference.model.Model: the
pool, the deadline, the decode budget and the per-image errors are the same for every task.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, wait
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.core.errors import ImageError
from shared.core.settings import Settings
from shared.inference.images import DecodeBudget, load_rgb, open_image
from shared.inference.model import ImageInfo, ImageLoader, ImageOutcome, InferenceOptions, Model

logger = logging.getLogger(__name__)

# Images decoded and answered together. A skillset's batchSize for images is 4-16, so a call is one such
# batch; larger ones are split so the float32 input tensors stay small (32 x 3 x 224 x 224 x 4 B = 19 MB).
MAX_INFERENCE_BATCH = 32
# The input tensors of one part of a batch, at most (a detector's 3 x 800 x 600 input is 5.8 MB an image).
MAX_BATCH_TENSOR_BYTES = 64 << 20

# Images per ONNX Runtime run when a pool answers a batch. Sample model on the reference hardware
# (docs/performance.md): alone on one thread, runs of 2 or 4 cost about the same CPU per image and less than
# runs of 1 or 16; in the skill, runs of 2 answer about as many images per second as runs of 4 with slightly
# less CPU, and each thread holds half the activations (peak RSS 184 instead of 228 MB).
# A batch's last images run one at a time (`run_size`): 16 images on 2 threads make 7 runs of 2 and 2 of 1.
INFERENCE_RUN = 2


@dataclass
class BatchStats:
    """Per-phase wall time of one batch, milliseconds, summed over the threads, for the summary log line."""

    decode_ms: float = 0.0
    infer_ms: float = 0.0
    images: int = 0


@dataclass(frozen=True)
class _Prepared:
    """An image whose tensor is written, with what its answer needs."""

    info: ImageInfo
    context: Any


def deadline_message(budget_s: float) -> str:
    return (
        f"not classified: the batch ran past its {budget_s:g} s budget (SKILL_DEADLINE_SECONDS) before "
        "reaching this record; lower the skillset's batchSize"
    )


def _incident(what: str, exc: BaseException | None = None) -> str:
    """Log a failure that is ours, not the caller's (with its traceback), and return its incident id."""
    incident = uuid.uuid4().hex[:12]
    logger.error("%s (incident %s)", what, incident, exc_info=exc is not None)
    return incident


def _load_and_prepare(
    loader: ImageLoader,
    model: Model,
    options: InferenceOptions,
    out: np.ndarray,
    *,
    budget: DecodeBudget | None,
    deadline: float | None,
    budget_s: float,
    clock: Callable[[], float],
) -> _Prepared | ImageError:
    """Decode one image and write its input tensor into `out`.

    Never raises: every failure, MemoryError included, is this image's error. The decoded pixels and what
    `prepare` allocates are held under `budget` and dropped before returning.
    """
    if deadline is not None and clock() > deadline:
        return ImageError(deadline_message(budget_s))
    draft = model.draft_short_side if options.fast_decode else None
    try:
        opened = open_image(loader(), options.limits, draft_short_side=draft)
        info = ImageInfo(width=opened.width, height=opened.height, format=opened.format, draft=opened.draft)
        cost = opened.decoded_bytes + model.prepare_bytes(opened.image.width, opened.image.height)
        with budget.hold(cost, deadline, budget_s=budget_s) if budget is not None else nullcontext():
            context = model.prepare(load_rgb(opened).image, out)
            del opened
    except ImageError as exc:
        # A fresh error: the raised one's traceback would keep this frame, and any decoded pixels, alive
        # until the whole batch is answered, outside the budget.
        return ImageError(str(exc))
    except Exception as exc:  # noqa: BLE001 - MemoryError or a library fault: this image's error, never the batch's
        incident = _incident(f"preparing an image failed: {exc.__class__.__name__}", exc)
        return ImageError(
            f"image could not be prepared ({exc.__class__.__name__}, incident {incident}); the other records "
            "were answered"
        )
    return _Prepared(info, context)


def _run(model: Model, batch: np.ndarray) -> Sequence[Any] | str:
    """One ONNX Runtime run: an output per image, or the message every image of the run answers with when the
    model fails on valid input (our problem: logged with an incident id, the process keeps serving)."""
    try:
        outputs = model.run(batch)
    except Exception as exc:  # noqa: BLE001 - any failure of the model is answered per image, never as a 500
        incident = _incident(f"inference failed for {len(batch)} images", exc)
        return f"internal error while classifying this image (incident {incident}); the batch may be retried"
    return outputs


def _outcome(model: Model, item: _Prepared | ImageError, output: Any, options: InferenceOptions) -> ImageOutcome:
    """The answer for one image: its preparation's error, its run's error message, or its result."""
    if isinstance(item, ImageError):
        return ImageOutcome(data=None, errors=(str(item),))
    if isinstance(output, str):
        return ImageOutcome(data=None, errors=(output,))
    try:
        return model.result(output, item.context, item.info, options)
    except Exception as exc:  # noqa: BLE001 - a fault reading one image's output is that record's error
        incident = _incident(f"reading the model's output failed: {exc.__class__.__name__}", exc)
        return ImageOutcome(data=None, errors=(f"internal error while classifying this image (incident {incident})",))


def _runs(indices: list[int], max_run: int | None) -> list[list[int]]:
    step = max_run or len(indices) or 1
    return [indices[i : i + step] for i in range(0, len(indices), step)]


def _batch_of(tensors: np.ndarray, indices: list[int]) -> np.ndarray:
    if indices[-1] - indices[0] + 1 == len(indices):
        return tensors[indices[0] : indices[-1] + 1]
    return tensors[indices]


def _answer_here(
    model: Model,
    loaders: Sequence[ImageLoader],
    options: InferenceOptions,
    *,
    budget: DecodeBudget | None,
    deadline: float | None,
    budget_s: float,
    clock: Callable[[], float],
    stats: BatchStats,
) -> list[ImageOutcome]:
    """Decode and prepare some images one after another on this thread, then run them in as few runs as the
    model takes."""
    began = time.perf_counter()
    tensors = np.empty((len(loaders), *model.input_shape), dtype=np.float32)
    prepared = [
        _load_and_prepare(
            loader, model, options, tensors[i], budget=budget, deadline=deadline, budget_s=budget_s, clock=clock
        )
        for i, loader in enumerate(loaders)
    ]
    good = [i for i, p in enumerate(prepared) if isinstance(p, _Prepared)]
    inferred = time.perf_counter()
    stats.decode_ms += 1000 * (inferred - began)
    outputs: dict[int, Any] = {}
    for run in _runs(good, model.max_run) if good else []:
        found = _run(model, _batch_of(tensors, run))
        outputs.update(dict.fromkeys(run, found) if isinstance(found, str) else zip(run, found, strict=True))
    stats.infer_ms += 1000 * (time.perf_counter() - inferred)
    stats.images += len(good)
    return [_outcome(model, item, outputs.get(i), options) for i, item in enumerate(prepared)]


def run_size(unassigned: int, workers: int, max_run: int | None = None) -> int:
    """Images in the next run of a pooled batch, when `unassigned` of its images (prepared, or still being
    prepared) are in no run yet: INFERENCE_RUN (at most the model's `max_run`), but the last `workers` images
    one at a time. The threads take runs as they come free, so a thread on a faster core takes more of them;
    ending on single images lets the threads end the batch within one image of each other, even when one core
    runs slower than the other (as on a busy host)."""
    size = 1 if unassigned <= workers else INFERENCE_RUN
    return min(size, max_run) if max_run else size


def _answer_pooled(
    model: Model,
    loaders: Sequence[ImageLoader],
    options: InferenceOptions,
    *,
    pool: Executor,
    workers: int,
    budget: DecodeBudget | None,
    deadline: float | None,
    budget_s: float,
    clock: Callable[[], float],
    stats: BatchStats,
) -> list[ImageOutcome]:
    """Answer some images on the pool's threads.

    Each image is decoded and prepared as one task. Once every image's task has started, a thread that ends
    one does not wait for the others: it runs prepared images, in runs of `run_size`, until none is left to
    take, and the thread that prepares the last image takes what remains. Decoding comes first because its
    cost varies with the file and a run's does not: the batch ends on runs, which threads share evenly. A run
    checks the deadline before it starts, like an image: past it, its images answer with the deadline error.
    """
    tensors = np.empty((len(loaders), *model.input_shape), dtype=np.float32)
    prepared: list[_Prepared | ImageError | None] = [None] * len(loaders)
    outputs: dict[int, Any] = {}
    lock = threading.Lock()
    started = 0
    ready: list[int] = []  # prepared images in no run yet, in the order they were prepared
    unassigned = len(loaders)  # images in no run yet that did not fail to prepare

    def run(indices: list[int]) -> None:
        began = time.perf_counter()
        if deadline is not None and clock() > deadline:
            found: Sequence[Any] | str = deadline_message(budget_s)
        else:
            found = _run(model, _batch_of(tensors, indices))
        with lock:
            outputs.update(
                dict.fromkeys(indices, found) if isinstance(found, str) else zip(indices, found, strict=True)
            )
            stats.infer_ms += 1000 * (time.perf_counter() - began)

    def prepare(i: int) -> None:
        nonlocal started, unassigned
        with lock:
            started += 1
        began = time.perf_counter()
        item = prepared[i] = _load_and_prepare(
            loaders[i], model, options, tensors[i], budget=budget, deadline=deadline, budget_s=budget_s, clock=clock
        )
        with lock:
            stats.decode_ms += 1000 * (time.perf_counter() - began)
            if isinstance(item, _Prepared):
                ready.append(i)
            else:
                unassigned -= 1
            if started < len(loaders):
                return  # the pool hands this thread the next image; a later one runs this one
        while True:
            with lock:
                if not ready:
                    return
                take = min(run_size(unassigned, workers, model.max_run), len(ready))
                indices = sorted(ready[:take])
                del ready[:take]
                unassigned -= take
                stats.images += take
            run(indices)

    tasks = [pool.submit(prepare, i) for i in range(len(loaders))]
    wait(tasks)
    for task in tasks:
        task.result()
    answers = []
    for i, item in enumerate(prepared):
        assert item is not None, "every image was prepared"
        answers.append(_outcome(model, item, outputs.get(i), options))
    return answers


def part_size(model: Model) -> int:
    """Images answered together: MAX_INFERENCE_BATCH, fewer when their input tensors would pass
    MAX_BATCH_TENSOR_BYTES."""
    channels, height, width = model.input_shape
    per_image = 4 * channels * height * width
    return max(1, min(MAX_INFERENCE_BATCH, MAX_BATCH_TENSOR_BYTES // per_image))


def model_threads(settings: Settings) -> int | None:
    """ONNX Runtime intra-op threads for a model that `run_batch` drives: ENGINE_THREADS when set; else 1 when
    a pool of DECODE_THREADS workers runs the parts of a batch in parallel (one part per core already keeps
    every core busy); else None, all cores."""
    if settings.engine_threads:
        return settings.engine_threads
    return 1 if (settings.decode_threads or os.cpu_count() or 1) > 1 else None


def run_batch(
    model: Model,
    loaders: Sequence[ImageLoader],
    options: InferenceOptions,
    *,
    pool: Executor | None = None,
    workers: int | None = None,
    budget: DecodeBudget | None = None,
    deadline: float | None = None,
    budget_s: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    stats: BatchStats | None = None,
) -> list[ImageOutcome]:
    """Answer every loader, in order. One image's failure never affects the others.

    Images are taken in parts of `part_size` images. With a `pool` of `workers` threads (default: one per
    core), every image is decoded and prepared as one task of the pool, never in the caller's thread
    (one-record requests included), and the prepared images run in runs of at most INFERENCE_RUN images that
    the threads take as they come free (`_answer_pooled`). Images are independent, so the cores stay busy
    without the per-operator synchronization (and spinning) of ONNX Runtime's intra-op threads, which the
    model should then not use (`model_threads`). Without a pool, a part is decoded on this thread and run in
    as few runs as the model takes. Each image holds its decoded bytes under `budget` while it is prepared.
    Once `clock()` passes `deadline`, no new image or run starts: the rest are answered with an error telling
    the caller to lower the batch size, so a call ends within the budget plus one task per thread. `stats`
    receives the phases' times summed over the threads.
    """
    outcomes: list[ImageOutcome] = []
    stats = stats if stats is not None else BatchStats()
    size = part_size(model)
    for start in range(0, len(loaders), size):
        part = loaders[start : start + size]
        if deadline is not None and clock() > deadline:
            outcomes.extend(ImageOutcome(data=None, errors=(deadline_message(budget_s),)) for _ in part)
            continue
        if pool is not None:
            outcomes.extend(
                _answer_pooled(
                    model,
                    part,
                    options,
                    pool=pool,
                    workers=workers or os.cpu_count() or 1,
                    budget=budget,
                    deadline=deadline,
                    budget_s=budget_s,
                    clock=clock,
                    stats=stats,
                )
            )
        else:
            outcomes.extend(
                _answer_here(
                    model, part, options, budget=budget, deadline=deadline, budget_s=budget_s, clock=clock, stats=stats
                )
            )
    return outcomes
