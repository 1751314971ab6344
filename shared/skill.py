"""Classify a batch of encoded images: decode with limits, one batched inference, per-image answers.

Both the HTTP skill and the CLI go through `classify_encoded`, so what a user sees locally is what the
search index gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.engine import Classification, Engine
from shared.errors import ImageError
from shared.images import DecodedImage, ImageLimits, decode_image


@dataclass(frozen=True)
class ClassifyOptions:
    """top_k: predictions returned per image; threshold: None means the model's default cutoff."""

    top_k: int = 5
    threshold: float | None = None
    fast_decode: bool = True
    limits: ImageLimits = field(default_factory=ImageLimits)


@dataclass(frozen=True)
class ImageOutcome:
    """`data` is None exactly when `errors` is non-empty."""

    data: dict[str, Any] | None
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


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


def _warnings(decoded: DecodedImage, result: Classification, engine: Engine, threshold: float | None) -> list[str]:
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


def classify_encoded(
    engine: Engine, items: Sequence[bytes | ImageError], options: ClassifyOptions
) -> list[ImageOutcome]:
    """Answer each item in order: an ImageError item is reported as given; bytes are decoded and classified.

    One item's failure never affects the others; all decodable images go through one batched run.
    """
    draft = engine.preprocessing.resize if options.fast_decode else None
    outcomes: list[ImageOutcome | None] = [None] * len(items)
    decoded: list[tuple[int, DecodedImage]] = []
    for index, item in enumerate(items):
        if isinstance(item, ImageError):
            outcomes[index] = ImageOutcome(data=None, errors=(str(item),))
            continue
        try:
            decoded.append((index, decode_image(item, options.limits, draft_short_side=draft)))
        except ImageError as exc:
            outcomes[index] = ImageOutcome(data=None, errors=(str(exc),))
    results = engine.classify([d.image for _, d in decoded], options.top_k, options.threshold)
    for (index, image), result in zip(decoded, results, strict=True):
        outcomes[index] = ImageOutcome(
            data=record_data(result, engine.version),
            warnings=tuple(_warnings(image, result, engine, options.threshold)),
        )
    return [o if o is not None else ImageOutcome(data=None, errors=("internal: not answered",)) for o in outcomes]
