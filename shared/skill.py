"""Classify a batch of encoded images: decode with limits, batched inference, one answer per image.

Both the HTTP skill (`app.SkillService.classify`) and the CLI go through `classify_batch`, so what a
user sees locally is what the search index gets.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
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

# Images per ONNX Runtime run. A skillset's batchSize for images is 4-16, so a call is one run; larger
# batches are split so the float32 input tensor stays small (32 x 3 x 224 x 224 x 4 B = 19 MB).
MAX_INFERENCE_BATCH = 32

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
    results: list[Classification] | None = []
    failure = ""
    if good:
        try:
            batch = tensors if len(good) == len(loaders) else tensors[good]
            results = engine.interpret(engine.scores(batch), options.top_k, options.threshold)
        except Exception:  # a model that fails on a valid image is our problem: answer, log, keep serving
            incident = uuid.uuid4().hex[:12]
            logger.exception("inference failed for %d images (incident %s)", len(good), incident)
            results = None
            failure = f"internal error while classifying this image (incident {incident}); the batch may be retried"
    stats.infer_ms = 1000 * (time.perf_counter() - inferred)
    stats.images = len(good)
    by_index = dict(zip(good, results, strict=True)) if results is not None else {}
    outcomes: list[ImageOutcome] = []
    for i, item in enumerate(prepared):
        if isinstance(item, ImageError):
            outcomes.append(ImageOutcome(data=None, errors=(str(item),)))
        elif i in by_index:
            result = by_index[i]
            outcomes.append(
                ImageOutcome(
                    data=record_data(result, engine.version),
                    warnings=tuple(_warnings(item, result, engine, options.threshold)),
                )
            )
        else:
            outcomes.append(ImageOutcome(data=None, errors=(failure,)))
    return outcomes, stats


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
    budget: DecodeBudget | None = None,
    deadline: float | None = None,
    budget_s: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    stats: BatchStats | None = None,
    parts: int | None = None,
) -> list[ImageOutcome]:
    """Answer every loader, in order. One image's failure never affects the others.

    Images are classified in runs of at most MAX_INFERENCE_BATCH. With a `pool` (every image then runs
    there, never in the caller's thread, one-record requests included), each run is split into `parts`
    parts (default: one per image), each decoded, preprocessed and classified as one task of the pool.
    Images are independent, so the cores stay busy without the per-operator synchronization (and spinning)
    of ONNX Runtime's intra-op threads, which the engine should then not use (`engine_threads`); one-image
    tasks balance the cores best (`make bench`: halves of a batch left a core idle while the slower half
    finished). Each image holds its decoded bytes under `budget` while it is prepared. Once `clock()`
    passes `deadline`, no new image starts: the rest are answered with an error telling the caller to lower
    the batch size, so a call ends within the budget plus one image per thread. `stats` receives the
    phases' times summed over the parts.
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
            n = min(parts or len(chunk), len(chunk))
            pieces = [chunk[i * len(chunk) // n : (i + 1) * len(chunk) // n] for i in range(n)]
            done = [f.result() for f in [pool.submit(part, piece) for piece in pieces]]
        else:
            done = [part(chunk)]
        for part_outcomes, part_stats in done:
            outcomes.extend(part_outcomes)
            stats.decode_ms += part_stats.decode_ms
            stats.infer_ms += part_stats.infer_ms
            stats.images += part_stats.images
    return outcomes
