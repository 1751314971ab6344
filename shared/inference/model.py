"""The one model interface every task implements, and what the batch scheduler hands back for each image.

A model turns an image into its input tensor (`prepare`), runs a batch of such tensors through ONNX Runtime
(`run`) and turns one image's output into the record's answer (`result`). The scheduler
(shared.inference.scheduler) decodes, budgets, batches and times images without knowing which task a
model serves; a new task is a new module implementing `Model`, chosen by shared.inference.factory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from shared.bundle.loader import ModelBundle
from shared.core.errors import BundleError
from shared.core.limits import ImageLimits

# Returns the encoded image bytes or raises ImageError (a file that cannot be read, bad base64, ...).
ImageLoader = Callable[[], bytes]


@dataclass(frozen=True)
class InferenceOptions:
    """How a caller wants its images answered.

    top_k: answers per image (a classifier's predictions, a detector's objects); None means the model's
    default: `default_top_k` for a classifier, the model's box_detections_per_img for a detector.
    threshold: score cutoff, None for the model's default. fast_decode: let a model that allows it decode
    large JPEGs at reduced scale (see shared.inference.images.open_image). limits: what an image may be.
    """

    top_k: int | None = None
    default_top_k: int = 5
    threshold: float | None = None
    fast_decode: bool = True
    limits: ImageLimits = field(default_factory=ImageLimits)


@dataclass(frozen=True)
class ImageInfo:
    """What an answer may need to know about an image once its tensor is written (the pixels are gone)."""

    width: int
    height: int
    format: str | None
    draft: bool


@dataclass(frozen=True)
class ImageOutcome:
    """One image's answer: `data` is None exactly when `errors` is non-empty."""

    data: dict[str, Any] | None
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


class Model(Protocol):
    """A loaded model of one task. Implementations check their graph and run one smoke inference when they
    are opened (BundleError otherwise), and are thread-safe: ONNX Runtime sessions accept concurrent runs.

    bundle: the files it was loaded from; version, task, labels: what health and answers report;
    input_shape: one image's tensor, (channels, height, width); max_run: the most images one `run` takes,
    None for any number; draft_short_side: the shorter side a JPEG may be draft-decoded down to before
    `prepare`, None when the model's recipe needs the exact pixels.
    """

    bundle: ModelBundle
    version: str
    task: str
    labels: tuple[str, ...]
    input_shape: tuple[int, int, int]
    max_run: int | None
    draft_short_side: int | None

    def default_threshold(self) -> float:
        """The score cutoff when the caller gives none."""
        ...

    def prepare_bytes(self, width: int, height: int) -> int:
        """An upper estimate of the memory `prepare` allocates for an RGB image of that size, in bytes."""
        ...

    def prepare(self, image: Image.Image, out: np.ndarray) -> Any:
        """Write the input tensor of one RGB image into `out` (`input_shape`, float32) and return what
        `result` needs to know about how it was made (None when nothing)."""
        ...

    def run(self, batch: np.ndarray) -> Sequence[Any]:
        """One output per image of a `[n, *input_shape]` batch, n at most `max_run`."""
        ...

    def result(self, output: Any, context: Any, image: ImageInfo, options: InferenceOptions) -> ImageOutcome:
        """The record's answer for one image from its output and what `prepare` returned for it."""
        ...


def embedding_view(model: Model) -> Model | None:
    """The model whose answers carry `embedding` too (a classifier's with_embedding()), or None when `model`
    has no embedding (a detector, or a classifier whose head is not a linear layer)."""
    make = getattr(model, "with_embedding", None)
    if make is None or not getattr(model, "has_embedding", False):
        return None
    try:
        view: Model = make()
    except BundleError:
        return None
    return view
