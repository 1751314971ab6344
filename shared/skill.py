"""Classify a batch of encoded images: decode with limits, batched inference, one answer per image.

Both the HTTP skill (`app.SkillService.classify`) and the CLI go through `classify_batch`, so what a
user sees locally is what the search index gets.
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
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from shared.engine import Classification, Engine, preprocess, preprocess_bytes
from shared.errors import ImageError
from shared.images import DecodeBudget, ImageLimits, load_rgb, open_image
from shared.settings import Settings

logger = logging.getLogger(__name__)

# Images decoded and classified together. A skillset's batchSize for images is 4-16, so a call is one such
# batch; larger ones are split so the float32 input tensor stays small (32 x 3 x 224 x 224 x 4 B = 19 MB).
MAX_INFERENCE_BATCH = 32

# Images per ONNX Runtime run when a pool classifies a batch. Sample model, this machine: alone on one
# thread, runs of 2 or 4 cost about the same CPU per image and less than runs of 1 or 16; in the skill,
# runs of 2 classify about as many images per second as runs of 4 (1.005x over 14 interleaved A/Bs) with
# 0.3-3.2% less CPU, and each thread holds half the activations (peak RSS 184 instead of 228 MB).
# A batch's last images run one at a time (`run_size`): 16 images on 2 threads make 7 runs of 2 and 2 of 1.
INFERENCE_RUN = 2

# Returns the encoded image bytes or raises ImageError (a file that cannot be read, bad base64, ...).
ImageLoader = Callable[[], bytes]


@dataclass(frozen=True)
class ClassifyOptions:
    """top_k: predictions returned per image; threshold: None means the model's default cutoff;
    fast_decode: JPEG draft decoding (see images.decode_image); object_top_k: objects per image for a
    detection model, None meaning the model's box_detections_per_img."""

    top_k: int = 5
    threshold: float | None = None
    fast_decode: bool = True
    limits: ImageLimits = field(default_factory=ImageLimits)
    object_top_k: int | None = None


@dataclass(frozen=True)
class ImageOutcome:
    """`data` is None exactly when `errors` is non-empty."""

    data: dict[str, Any] | None
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass
class BatchStats:
    """Per-phase wall time of one batch, milliseconds, for the summary log line."""

    decode_ms: float = 0.0
    infer_ms: float = 0.0
    images: int = 0


def record_data(result: Classification, model_version: str) -> dict[str, Any]:
    """The skill's output fields for one classified image (DESIGN §3)."""
    return {
        "label": result.label,
        "confidence": result.confidence,
        "labels": list(result.labels),
        "predictions": [{"label": label, "score": score} for label, score in result.predictions],
        "modelVersion": model_version,
        "amllabel": result.label,
    }


def _warnings(decoded: PreparedImage, result: Classification, engine: Engine, threshold: float | None) -> list[str]:
    notes = []
    resize = engine.preprocessing.resize
    if min(decoded.width, decoded.height) < resize:
        notes.append(
            f"image is {decoded.width}x{decoded.height}, smaller than the model's {resize}-pixel input "
            "size; it was upscaled, so its scores are less reliable"
        )
    if result.label is None:
        cutoff = engine.default_threshold() if threshold is None else threshold
        best = result.predictions[0]
        notes.append(
            f"low confidence: no label scored at or above the threshold {cutoff:g} (best: {best[0]!r} at {best[1]:.4f})"
        )
    return notes


@dataclass(frozen=True)
class PreparedImage:
    """What the answer needs to know about an image once its tensor is written (the pixels are gone)."""

    width: int
    height: int
    format: str | None
    draft: bool


def _load_and_prepare(
    loader: ImageLoader,
    engine: Engine,
    options: ClassifyOptions,
    out: np.ndarray,
    *,
    budget: DecodeBudget | None,
    deadline: float | None,
    budget_s: float,
    clock: Callable[[], float],
) -> PreparedImage | ImageError:
    """Decode one image and write its preprocessed tensor into `out`; runs in the decode pool.

    Never raises: every failure, MemoryError included, is this image's error. The decoded pixels are held
    under `budget` and dropped before returning.
    """
    if deadline is not None and clock() > deadline:
        return ImageError(deadline_message(budget_s))
    pre = engine.preprocessing
    try:
        opened = open_image(loader(), options.limits, draft_short_side=pre.resize if options.fast_decode else None)
        info = PreparedImage(width=opened.width, height=opened.height, format=opened.format, draft=opened.draft)
        cost = opened.decoded_bytes + preprocess_bytes(opened.image.width, opened.image.height, pre)
        with budget.hold(cost, deadline, budget_s=budget_s) if budget is not None else nullcontext():
            preprocess(load_rgb(opened).image, pre, out=out)
            del opened
    except ImageError as exc:
        # A fresh error: the raised one's traceback would keep this frame, and any decoded pixels, alive
        # until the whole batch is answered, outside the budget.
        return ImageError(str(exc))
    except Exception as exc:  # MemoryError or a library fault: this image's error, never the batch's
        incident = uuid.uuid4().hex[:12]
        logger.error("preparing an image failed: %s (incident %s)", exc.__class__.__name__, incident, exc_info=True)
        return ImageError(
            f"image could not be prepared ({exc.__class__.__name__}, incident {incident}); the other records "
            "were answered"
        )
    return info


def deadline_message(budget_s: float) -> str:
    return (
        f"not classified: the batch ran past its {budget_s:g} s budget (SKILL_DEADLINE_SECONDS) before "
        "reaching this record; lower the skillset's batchSize"
    )


def _outcome(
    item: PreparedImage | ImageError, result: Classification | str | None, engine: Engine, options: ClassifyOptions
) -> ImageOutcome:
    """The answer for one image: its preparation's error, its inference's error message, or its result."""
    if isinstance(item, ImageError):
        return ImageOutcome(data=None, errors=(str(item),))
    assert result is not None, "a prepared image always has a result"
    if isinstance(result, str):
        return ImageOutcome(data=None, errors=(result,))
    return ImageOutcome(
        data=record_data(result, engine.version), warnings=tuple(_warnings(item, result, engine, options.threshold))
    )


def _infer(engine: Engine, batch: np.ndarray, options: ClassifyOptions, images: int) -> list[Classification] | str:
    """One ONNX Runtime run: the results, or the message every image of the run answers with when the model
    fails on valid input (our problem: logged with an incident id, the process keeps serving)."""
    try:
        return engine.interpret(engine.scores(batch), options.top_k, options.threshold)
    except Exception:
        incident = uuid.uuid4().hex[:12]
        logger.exception("inference failed for %d images (incident %s)", images, incident)
        return f"internal error while classifying this image (incident {incident}); the batch may be retried"


def _classify_part(
    engine: Engine,
    loaders: Sequence[ImageLoader],
    *,
    options: ClassifyOptions,
    budget: DecodeBudget | None,
    deadline: float | None,
    budget_s: float,
    clock: Callable[[], float],
) -> tuple[list[ImageOutcome], BatchStats]:
    """Decode and preprocess some images one after another on this thread, then classify them in one ONNX
    Runtime run."""
    stats = BatchStats()
    began = time.perf_counter()
    crop = engine.preprocessing.crop
    tensors = np.empty((len(loaders), 3, crop, crop), dtype=np.float32)
    prepared = [
        _load_and_prepare(
            loader, engine, options, tensors[i], budget=budget, deadline=deadline, budget_s=budget_s, clock=clock
        )
        for i, loader in enumerate(loaders)
    ]
    good = [i for i, p in enumerate(prepared) if isinstance(p, PreparedImage)]
    inferred = time.perf_counter()
    stats.decode_ms = 1000 * (inferred - began)
    results: dict[int, Classification | str] = {}
    if good:
        batch = tensors if len(good) == len(loaders) else tensors[good]
        found = _infer(engine, batch, options, len(good))
        results = dict(zip(good, found, strict=True)) if not isinstance(found, str) else dict.fromkeys(good, found)
    stats.infer_ms = 1000 * (time.perf_counter() - inferred)
    stats.images = len(good)
    return [_outcome(item, results.get(i), engine, options) for i, item in enumerate(prepared)], stats


def run_size(unassigned: int, workers: int) -> int:
    """Images in the next inference run of a pooled batch, when `unassigned` of its images (prepared, or
    still being prepared) are in no run yet: INFERENCE_RUN, but the last `workers` images one at a time.
    The threads take runs as they come free, so a thread on a faster core takes more of them; ending on
    single images lets the threads end the batch within one image of each other, even when one core runs
    slower than the other (as on a busy host)."""
    return 1 if unassigned <= workers else INFERENCE_RUN


def _classify_pooled(
    engine: Engine,
    loaders: Sequence[ImageLoader],
    *,
    options: ClassifyOptions,
    pool: Executor,
    workers: int,
    budget: DecodeBudget | None,
    deadline: float | None,
    budget_s: float,
    clock: Callable[[], float],
    stats: BatchStats,
) -> list[ImageOutcome]:
    """Classify at most MAX_INFERENCE_BATCH images on the pool's threads.

    Each image is decoded and preprocessed as one task. Once every image's task has started, a thread that
    ends one does not wait for the others: it classifies prepared images, in runs of `run_size`, until
    none is left to take, and the thread that prepares the last image takes what remains. Decoding comes
    first because its cost varies with the file and an inference run's does not: the batch ends on runs,
    which threads share evenly. A run checks the deadline before it starts, like an image: past it, its
    images answer with the deadline error.
    """
    crop = engine.preprocessing.crop
    tensors = np.empty((len(loaders), 3, crop, crop), dtype=np.float32)
    prepared: list[PreparedImage | ImageError | None] = [None] * len(loaders)
    results: dict[int, Classification | str] = {}
    lock = threading.Lock()
    started = 0
    ready: list[int] = []  # prepared images in no run yet, in the order they were prepared
    unassigned = len(loaders)  # images in no run yet that did not fail to prepare

    def run(indices: list[int]) -> None:
        began = time.perf_counter()
        if deadline is not None and clock() > deadline:
            found: list[Classification] | str = deadline_message(budget_s)
        else:
            contiguous = indices[-1] - indices[0] + 1 == len(indices)
            batch = tensors[indices[0] : indices[-1] + 1] if contiguous else tensors[indices]
            found = _infer(engine, batch, options, len(indices))
        with lock:
            results.update(
                dict.fromkeys(indices, found) if isinstance(found, str) else zip(indices, found, strict=True)
            )
            stats.infer_ms += 1000 * (time.perf_counter() - began)

    def prepare(i: int) -> None:
        nonlocal started, unassigned
        with lock:
            started += 1
        began = time.perf_counter()
        item = prepared[i] = _load_and_prepare(
            loaders[i], engine, options, tensors[i], budget=budget, deadline=deadline, budget_s=budget_s, clock=clock
        )
        with lock:
            stats.decode_ms += 1000 * (time.perf_counter() - began)
            if isinstance(item, PreparedImage):
                ready.append(i)
            else:
                unassigned -= 1
            if started < len(loaders):
                return  # the pool hands this thread the next image; a later one classifies this one
        while True:
            with lock:
                if not ready:
                    return
                take = min(run_size(unassigned, workers), len(ready))
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
        answers.append(_outcome(item, results.get(i), engine, options))
    return answers


def engine_threads(settings: Settings) -> int | None:
    """ONNX Runtime intra-op threads for an engine that `classify_batch` drives: ENGINE_THREADS when set;
    else 1 when a pool of DECODE_THREADS workers classifies the parts of a batch in parallel (one part per
    core already keeps every core busy); else None, all cores."""
    if settings.engine_threads:
        return settings.engine_threads
    return 1 if (settings.decode_threads or os.cpu_count() or 1) > 1 else None


def classify_batch(
    engine: Engine,
    loaders: Sequence[ImageLoader],
    options: ClassifyOptions,
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

    Images are taken in batches of at most MAX_INFERENCE_BATCH. With a `pool` of `workers` threads
    (default: one per core), every image is decoded and preprocessed as one task of the pool, never in the
    caller's thread (one-record requests included), and the prepared images are classified in runs of at
    most INFERENCE_RUN images that the threads take as they come free (`_classify_pooled`). Images are
    independent, so the cores stay busy without the per-operator synchronization (and spinning) of ONNX
    Runtime's intra-op threads, which the engine should then not use (`engine_threads`). Without a pool,
    the batch is decoded on this thread and classified in one run. Each image holds its decoded bytes under
    `budget` while it is prepared. Once `clock()` passes `deadline`, no new image or run starts: the rest
    are answered with an error telling the caller to lower the batch size, so a call ends within the budget
    plus one task per thread. `stats` receives the phases' times summed over the threads.
    """
    if engine.task == "object-detection":
        from shared.detector import DetectionEngine, detect_batch

        assert isinstance(engine, DetectionEngine)
        return detect_batch(
            engine,
            loaders,
            options,
            pool=pool,
            budget=budget,
            deadline=deadline,
            budget_s=budget_s,
            clock=clock,
            stats=stats,
        )
    outcomes: list[ImageOutcome] = []
    stats = stats if stats is not None else BatchStats()
    part = partial(
        _classify_part, engine, options=options, budget=budget, deadline=deadline, budget_s=budget_s, clock=clock
    )
    for start in range(0, len(loaders), MAX_INFERENCE_BATCH):
        chunk = loaders[start : start + MAX_INFERENCE_BATCH]
        if deadline is not None and clock() > deadline:
            outcomes.extend(ImageOutcome(data=None, errors=(deadline_message(budget_s),)) for _ in chunk)
            continue
        if pool is not None:
            outcomes.extend(
                _classify_pooled(
                    engine,
                    chunk,
                    options=options,
                    pool=pool,
                    workers=workers or os.cpu_count() or 1,
                    budget=budget,
                    deadline=deadline,
                    budget_s=budget_s,
                    clock=clock,
                    stats=stats,
                )
            )
            continue
        part_outcomes, part_stats = part(chunk)
        outcomes.extend(part_outcomes)
        stats.decode_ms += part_stats.decode_ms
        stats.infer_ms += part_stats.infer_ms
        stats.images += part_stats.images
    return outcomes
