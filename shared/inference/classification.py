"""Image classification (multi-class and multi-label): AutoML's exact preprocessing, ONNX Runtime, top-k and
threshold, and the skill's answer for one image."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from shared.bundle.embedding import EMBEDDING_OUTPUT, edit_model_bytes
from shared.bundle.loader import ModelBundle, Preprocessing
from shared.bundle.onnxinfo import OnnxFormatError
from shared.core.errors import BundleError
from shared.inference.model import ImageInfo, ImageOutcome, InferenceOptions
from shared.inference.session import open_session

_FLOAT_TYPES = ("tensor(float)",)
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Classification:
    """One image's answer.

    label: the top label, or None when its score is below the threshold; confidence: the top score;
    labels: every label at or above the threshold, best first (multi-class: at most the top one);
    predictions: the top-k (label, score) pairs, best first, regardless of the threshold.
    """

    label: str | None
    confidence: float
    labels: tuple[str, ...]
    predictions: tuple[tuple[str, float], ...]


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to `short_side`, the longer truncated (torchvision's rule)."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


# Largest resized image (pixels) that preprocess builds whole. Up to it the resize-then-crop is exactly
# torchvision's; beyond it (aspect ratios past about 120:1 at resize 256, 34:1 at 480) only the centre window
# is resized, so a thin 16x3,000,000 PNG costs a 224x224 resize instead of a 256x48,000,000 one (37 GB).
EXACT_RESIZE_MAX_PIXELS = 8_000_000


def _resize_and_crop(image: Image.Image, pre: Preprocessing) -> Image.Image:
    new_w, new_h = resized_size(image.width, image.height, pre.resize)
    top = round((new_h - pre.crop) / 2.0)
    left = round((new_w - pre.crop) / 2.0)
    if new_w * new_h > EXACT_RESIZE_MAX_PIXELS:
        # Pillow's `box` resamples just the source region the crop covers. Its pixels differ from the full
        # resize by at most a few levels out of 255 (float rounding of the kernel centres, measured).
        sx, sy = image.width / new_w, image.height / new_h
        box = (left * sx, top * sy, (left + pre.crop) * sx, (top + pre.crop) * sy)
        return image.resize((pre.crop, pre.crop), Image.Resampling.BILINEAR, box=box)
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    return image.crop((left, top, left + pre.crop, top + pre.crop))


def preprocess_bytes(width: int, height: int, pre: Preprocessing) -> int:
    """Pillow memory `preprocess` allocates for a `width` x `height` RGB image: the resized image it builds
    (4 bytes a pixel) and the horizontal pass before it; bounded by the crop past EXACT_RESIZE_MAX_PIXELS."""
    new_w, new_h = resized_size(width, height, pre.resize)
    if new_w * new_h > EXACT_RESIZE_MAX_PIXELS:
        return 2 * 4 * pre.crop * pre.crop
    return 4 * (new_w * new_h + new_w * height)


def preprocess(image: Image.Image, pre: Preprocessing, out: np.ndarray | None = None) -> np.ndarray:
    """AutoML's validation transform: Resize(shorter side) bilinear, CenterCrop, ToTensor, Normalize.

    `image` must be RGB. Returns float32 CHW `[3, crop, crop]`, written into `out` when given. With
    `pre.in_graph` the values stay raw 0-255 (the graph divides and normalizes itself). Equal to
    torchvision's `Compose([Resize(r), CenterCrop(c), ToTensor(), Normalize(mean, std)])` on PIL input
    bit for bit (the same PIL resize, the same crop offsets, the same float32 operations in the same order)
    whenever the resized image has at most EXACT_RESIZE_MAX_PIXELS; thinner images resize only the centre
    window, so memory and time stay bounded by the crop whatever the aspect ratio.
    """
    pixels = np.asarray(_resize_and_crop(image, pre), dtype=np.uint8)
    chw = pixels.transpose(2, 0, 1)
    if out is None:
        out = np.empty((3, pre.crop, pre.crop), dtype=np.float32)
    if pre.in_graph:
        np.copyto(out, chw, casting="unsafe")
        return out
    np.divide(chw, np.float32(255.0), out=out, dtype=np.float32)
    out -= np.asarray(pre.mean, dtype=np.float32)[:, None, None]
    out /= np.asarray(pre.std, dtype=np.float32)[:, None, None]
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return probabilities


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


class ClassificationModel:
    """A multi-class or multi-label classifier: one ONNX Runtime session over one bundle (shared.inference.model.Model).

    Opening it checks that the graph is an image classifier whose output width equals the label count
    and runs one smoke inference; BundleError otherwise. Thread-safe: ONNX Runtime sessions accept
    concurrent `run` calls.
    """

    def __init__(self, bundle: ModelBundle, threads: int | None = None) -> None:
        self.bundle = bundle
        self._threads = threads
        self._upgrade_lock = threading.Lock()
        # Measured on the sample model at batch 16: the same speed without memory-pattern planning and about
        # 30 MB less peak RSS (the plan preallocates every activation of the largest batch at once).
        self.session = open_session(bundle.model_path, threads, mem_pattern=False)

        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if len(inputs) != 1:
            raise BundleError(
                f"{bundle.model_path} is not an image classifier: it has {len(inputs)} inputs, expected one "
                "image tensor [batch, 3, height, width]"
            )
        shape = inputs[0].shape
        crop = bundle.preprocessing.crop
        if len(shape) != 4 or shape[1] != 3 or inputs[0].type not in _FLOAT_TYPES:
            raise BundleError(
                f"{bundle.model_path} is not an image classifier: input {inputs[0].name!r} is "
                f"{inputs[0].type} {list(shape)}, expected float [batch, 3, height, width]"
            )
        if any(isinstance(side, int) and side != crop for side in shape[2:]):
            raise BundleError(
                f"{bundle.model_path} wants {shape[2]}x{shape[3]} inputs but the bundle's crop size is {crop}"
            )
        if len(outputs) < 1 or len(outputs[0].shape) != 2:
            raise BundleError(
                f"{bundle.model_path} is not an image classifier: its first output should be "
                f"[batch, classes], got {list(outputs[0].shape) if outputs else 'no output'}"
            )
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        # The embedding output (shared.bundle.embedding), fetched only by the view with_embedding() returns. A
        # file without it (a run folder, the sample, a version published before embeddings) gets it when it is
        # first asked for, so loading and serving without embeddings cost what they did.
        self.embedding_output: str | None = None
        self.embedding_dimensions: int | None = None
        self.fetch_embedding = False
        self._can_embed = bundle.embedding is not None
        if bundle.embedding is not None and bundle.embedding.in_file:
            found = next((o for o in outputs[1:] if o.name == bundle.embedding.output), None)
            if found is not None and len(found.shape) == 2:
                self.embedding_output = found.name
            else:
                self._can_embed = False
        # A graph exported with a fixed batch of 1 (AutoML's has a dynamic batch axis) runs image by image.
        self.one_at_a_time = shape[0] == 1
        self.max_run: int | None = 1 if self.one_at_a_time else None
        self.labels: tuple[str, ...] = bundle.labels
        self.task: str = bundle.task
        self.preprocessing = bundle.preprocessing
        self.version: str = bundle.version
        self.input_shape = (3, crop, crop)
        # The resize is the first step of AutoML's transform: a JPEG may be decoded at reduced scale down to it.
        self.draft_short_side: int | None = self.preprocessing.resize

        smoke = np.zeros((1, 3, crop, crop), dtype=np.float32)
        if self.embedding_output is not None:
            logits, features = self.session.run([self.output_name, self.embedding_output], {self.input_name: smoke})
            width = np.asarray(logits).shape[1]
            self.embedding_dimensions = int(np.asarray(features).shape[1])
        else:
            width = self.logits(smoke).shape[1]
        if width != len(self.labels):
            raise BundleError(
                f"{bundle.model_path} outputs {width} classes but labels.json lists {len(self.labels)}; "
                "the two files must come from the same run"
            )

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw model outputs for a preprocessed float32 batch `[n, 3, crop, crop]`."""
        if self.one_at_a_time and len(batch) > 1:
            return np.concatenate([self.logits(batch[i : i + 1]) for i in range(len(batch))])
        result = self.session.run([self.output_name], {self.input_name: batch})[0]
        return np.asarray(result)

    def features(self, batch: np.ndarray) -> np.ndarray:
        """The embedding output, `[n, dimensions]` float32, not normalised. Needs `embedding_output`."""
        if self.embedding_output is None:
            raise BundleError(f"{self.bundle.model_path} has no embedding (its graph does not end in a linear layer)")
        if self.one_at_a_time and len(batch) > 1:
            return np.concatenate([self.features(batch[i : i + 1]) for i in range(len(batch))])
        return np.asarray(self.session.run([self.embedding_output], {self.input_name: batch})[0], dtype=np.float32)

    @property
    def has_embedding(self) -> bool:
        """Whether with_embedding() can answer (a classifier whose graph ends in a linear layer)."""
        return self._can_embed

    def with_embedding(self) -> ClassificationModel:
        """A view of this model (the same session) whose answers carry `embedding` too. The first call on a
        model whose file lacks the output adds it (a new session over the edited graph replaces this one: the
        same logits, bit for bit). BundleError when the model has none."""
        if self.embedding_output is None:
            self._add_embedding()
        view = copy.copy(self)
        view.fetch_embedding = True
        return view

    def _add_embedding(self) -> None:
        with self._upgrade_lock:
            if self.embedding_output is not None:
                return
            if not self._can_embed:
                raise BundleError(f"model {self.version} has no embedding: its graph does not end in a linear layer")
            try:
                edited = edit_model_bytes(self.bundle.model_path.read_bytes())
            except (OSError, OnnxFormatError, ValueError) as exc:
                self._can_embed = False
                logger.warning("model %s has no embedding: %s", self.version, exc)
                raise BundleError(f"model {self.version} has no embedding: {exc}") from None
            session = open_session(self.bundle.model_path, self._threads, mem_pattern=False, model_bytes=edited)
            del edited
            smoke = np.zeros((1, *self.input_shape), dtype=np.float32)
            features = session.run([EMBEDDING_OUTPUT], {self.input_name: smoke})[0]
            self.embedding_dimensions = int(np.asarray(features).shape[1])
            self.session = session
            self.embedding_output = EMBEDDING_OUTPUT
            logger.info("model %s: embedding output added (%d dimensions)", self.version, self.embedding_dimensions)

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities `[n, classes]`: softmax for multi-class, sigmoid for multi-label."""
        logits = self.logits(batch)
        return sigmoid(logits) if self.task == "multilabel" else softmax(logits)

    def preprocess_batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        crop = self.preprocessing.crop
        batch = np.empty((len(images), 3, crop, crop), dtype=np.float32)
        for i, image in enumerate(images):
            preprocess(image, self.preprocessing, out=batch[i])
        return batch

    def default_threshold(self) -> float:
        """AutoML's cutoff for multi-label (0.5); multi-class always counts its top label (0)."""
        return 0.5 if self.task == "multilabel" else 0.0

    def classify(
        self, images: Sequence[Image.Image], top_k: int = 5, threshold: float | None = None
    ) -> list[Classification]:
        """Classify RGB images in one batched run; an empty sequence gives an empty list."""
        if not images:
            return []
        return self.interpret(self.scores(self.preprocess_batch(images)), top_k, threshold)

    def interpret(self, scores: np.ndarray, top_k: int, threshold: float | None) -> list[Classification]:
        """Turn a `[n, classes]` score matrix into answers with top-k and threshold applied."""
        cutoff = self.default_threshold() if threshold is None else threshold
        k = max(1, min(top_k, scores.shape[1]))
        results = []
        for row in scores:
            order = np.argsort(-row, kind="stable")
            top = [(self.labels[i], float(row[i])) for i in order[:k]]
            best_label, best_score = self.labels[order[0]], float(row[order[0]])
            if self.task == "multilabel":
                above = tuple(self.labels[i] for i in order[: int((row >= cutoff).sum())])
            else:
                above = (best_label,) if best_score >= cutoff else ()
            results.append(
                Classification(
                    label=best_label if best_score >= cutoff else None,
                    confidence=best_score,
                    labels=above,
                    predictions=tuple(top),
                )
            )
        return results

    # -- shared.inference.model.Model ------------------------------------------------------------------------

    def prepare_bytes(self, width: int, height: int) -> int:
        return preprocess_bytes(width, height, self.preprocessing)

    def prepare(self, image: Image.Image, out: np.ndarray) -> None:
        preprocess(image, self.preprocessing, out=out)

    def run(self, batch: np.ndarray) -> list[Any]:
        """Each image's probabilities, `[classes]`; from with_embedding()'s view, (probabilities, embedding)."""
        if not self.fetch_embedding or self.embedding_output is None:
            return list(self.scores(batch))
        if self.one_at_a_time and len(batch) > 1:
            return [pair for i in range(len(batch)) for pair in self.run(batch[i : i + 1])]
        logits, features = self.session.run([self.output_name, self.embedding_output], {self.input_name: batch})
        logits = np.asarray(logits)
        scores = sigmoid(logits) if self.task == "multilabel" else softmax(logits)
        return list(zip(scores, normalise(np.asarray(features, dtype=np.float32)), strict=True))

    def result(self, output: Any, context: Any, image: ImageInfo, options: InferenceOptions) -> ImageOutcome:
        top_k = options.top_k if options.top_k is not None else options.default_top_k
        embedding = None
        if isinstance(output, tuple):
            output, embedding = output
        (found,) = self.interpret(np.asarray(output)[None], top_k, options.threshold)
        warnings = tuple(self._warnings(image, found, options))
        data = record_data(found, self.version)
        if embedding is not None:
            data["embedding"] = embedding.tolist()
        return ImageOutcome(data=data, warnings=warnings)

    def _warnings(self, image: ImageInfo, found: Classification, options: InferenceOptions) -> list[str]:
        notes = []
        resize = self.preprocessing.resize
        if min(image.width, image.height) < resize:
            notes.append(
                f"image is {image.width}x{image.height}, smaller than the model's {resize}-pixel input "
                "size; it was upscaled, so its scores are less reliable"
            )
        if found.label is None:
            cutoff = self.default_threshold() if options.threshold is None else options.threshold
            best = found.predictions[0]
            notes.append(
                f"low confidence: no label scored at or above the threshold {cutoff:g} (best: {best[0]!r} at "
                f"{best[1]:.4f})"
            )
        return notes


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32), so a dot product is the cosine; an all-zero row stays zero."""
    norms = np.linalg.norm(features.astype(np.float64), axis=1, keepdims=True)
    out: np.ndarray = (features / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return out


def record_data(result: Classification, model_version: str) -> dict[str, Any]:
    """The skill's output fields for one classified image (docs/skill.md)."""
    return {
        "label": result.label,
        "confidence": result.confidence,
        "labels": list(result.labels),
        "predictions": [{"label": label, "score": score} for label, score in result.predictions],
        "modelVersion": model_version,
        "amllabel": result.label,
    }
