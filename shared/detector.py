"""Serving AutoML object detection models: the ONNX Runtime engine and one batch of images -> `objects`.

`Engine(bundle)` returns a DetectionEngine for a bundle whose task is `object-detection`, so every place that
opens an engine (skill, CLI, publish validation, refresh) serves detection models unchanged; `classify_batch`
hands such an engine to `detect_batch`. AutoML exports detection models with batch size 1: one run per image.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from shared.bundle import ModelBundle
from shared.detection import (
    BG_LABEL,
    DetectedObject,
    DetectionSpec,
    letterbox_tensor,
    rcnn_objects,
    stretch_tensor,
    yolo_objects,
)
from shared.engine import Engine, open_session
from shared.errors import BundleError, ImageError
from shared.images import DecodeBudget, load_rgb, open_image

if TYPE_CHECKING:
    from shared.skill import BatchStats, ClassifyOptions, ImageLoader, ImageOutcome

logger = logging.getLogger(__name__)

_RCNN_OUTPUTS = ("boxes", "labels", "scores")


class DetectionEngine(Engine):
    """One ONNX Runtime session over a detection bundle (Faster R-CNN, RetinaNet or YOLOv5).

    Opening it checks the input and outputs against the family's contract (YOLOv5: 5 + labels columns) and
    runs one smoke inference; BundleError otherwise. `labels` are the class names without "--bg--".
    Thread-safe like Engine.
    """

    spec: DetectionSpec

    def __init__(self, bundle: ModelBundle, threads: int | None = None) -> None:
        spec = bundle.preprocessing.detection
        if spec is None:
            raise BundleError(f"{bundle.model_path} is not an object detection bundle")
        self.bundle = bundle
        self.spec = spec
        self.session = open_session(bundle.model_path, threads, mem_pattern=True)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] != 3:
            raise BundleError(
                f"{bundle.model_path} is not an AutoML detection model: expected one image input [1, 3, height, "
                f"width], got {[(i.name, list(i.shape)) for i in inputs]}"
            )
        self.input_name = inputs[0].name
        names = [o.name for o in self.session.get_outputs()]
        wanted = ("output",) if spec.family == "yolov5" else _RCNN_OUTPUTS
        if not set(wanted) <= set(names):
            raise BundleError(f"{bundle.model_path} ({spec.family}) needs outputs {list(wanted)}, has {names}")
        self.output_names = list(wanted)
        self.output_name = wanted[0]
        self.labels = tuple(label for label in bundle.labels if label != BG_LABEL)
        self.task = bundle.task
        self.preprocessing = bundle.preprocessing
        self.version = bundle.version
        smoke = self.run(np.zeros((1, 3, spec.height, spec.width), dtype=np.float32))
        if spec.family == "yolov5":
            width = smoke[0].shape[-1]
            if smoke[0].ndim != 3 or width != 5 + len(bundle.labels):
                raise BundleError(
                    f"{bundle.model_path} outputs {width} columns per box but labels.json lists "
                    f"{len(bundle.labels)} labels (YOLOv5 gives 5 + classes); the two files must come from the same run"
                )

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        """The wanted outputs for one preprocessed image [1, 3, H, W], in `output_names` order."""
        return [np.asarray(x) for x in self.session.run(self.output_names, {self.input_name: tensor})]

    def default_threshold(self) -> float:
        """The model's box_score_thresh."""
        return self.spec.box_score_thresh

    def detect(
        self, image: Image.Image, threshold: float | None = None, top_k: int | None = None
    ) -> list[DetectedObject]:
        """Objects in one RGB image, best first, score >= threshold (default box_score_thresh), at most
        top_k (default box_detections_per_img); boxes are fractions of the image's width and height."""
        cutoff = self.default_threshold() if threshold is None else threshold
        limit = self.spec.box_detections_per_img if top_k is None else top_k
        if self.spec.family == "yolov5":
            tensor, pad = letterbox_tensor(image, self.spec.height)
            (output,) = self.run(tensor)
            return yolo_objects(output, pad, spec=self.spec, labels=self.bundle.labels, threshold=cutoff, top_k=limit)
        boxes, labels, scores = self.run(stretch_tensor(image, self.spec))
        return rcnn_objects(
            boxes,
            labels_out=labels,
            scores=scores,
            spec=self.spec,
            labels=self.bundle.labels,
            threshold=cutoff,
            top_k=limit,
        )

    def classify(self, images: Sequence[Image.Image], top_k: int = 5, threshold: float | None = None) -> list[Any]:
        raise BundleError("this is an object detection model: use detect() (the skill answers `objects`)")


def object_count_tokens(objects: Sequence[DetectedObject]) -> list[str]:
    """`"<label>>=<n>"` for n = 1 .. the number of objects of that label, labels in order of their best score:
    ["forklift>=1", "forklift>=2", "person>=1"] for two forklifts and a person. An index filters on such a
    string collection with `eq`, which is all Azure AI Search allows on one ("images with at least two
    forklifts": `t eq 'forklift>=2'`); there is one token per object, so the list is as long as `objects`."""
    counts: dict[str, int] = {}
    for obj in objects:
        counts[obj.label] = counts.get(obj.label, 0) + 1
    return [f"{label}>={n}" for label, total in counts.items() for n in range(1, total + 1)]


def objects_data(objects: Sequence[DetectedObject], model_version: str) -> dict[str, Any]:
    """The skill's fields for one image: `objects`, plus label/confidence/labels/predictions/amllabel derived
    from them (the best object; distinct labels by their best score), `objectCount` (how many objects) and
    `objectCounts` (object_count_tokens())."""
    best: dict[str, float] = {}
    for obj in objects:
        if obj.label not in best:
            best[obj.label] = obj.score
    top = objects[0] if objects else None
    return {
        "objects": [o.as_dict() for o in objects],
        "label": top.label if top else None,
        "confidence": top.score if top else None,
        "labels": list(best),
        "predictions": [{"label": label, "score": score} for label, score in best.items()],
        "objectCount": len(objects),
        "objectCounts": object_count_tokens(objects),
        "modelVersion": model_version,
        "amllabel": top.label if top else None,
    }


def _detect_one(
    engine: DetectionEngine,
    loader: ImageLoader,
    options: ClassifyOptions,
    *,
    budget: DecodeBudget | None,
    deadline: float | None,
    budget_s: float,
    clock: Callable[[], float],
) -> tuple[ImageOutcome, float, float]:
    """Decode one image and run the detector on it: (outcome, decode ms, detection ms). Never raises (every
    failure, MemoryError included, is this image's error). The decoded pixels are held under `budget` until
    the run has resized them."""
    from shared.skill import ImageOutcome, deadline_message

    if deadline is not None and clock() > deadline:
        return ImageOutcome(data=None, errors=(deadline_message(budget_s),)), 0.0, 0.0
    began = decoded = ended = time.perf_counter()
    try:
        # Exact decoding (no JPEG draft): the recipe resizes the full image, and draft's saving is small next
        # to a detection run.
        opened = open_image(loader(), options.limits)
        with budget.hold(opened.decoded_bytes, deadline, budget_s=budget_s) if budget is not None else nullcontext():
            image = load_rgb(opened).image
            del opened
            decoded = time.perf_counter()
            objects = engine.detect(image, options.threshold, options.object_top_k)
            ended = time.perf_counter()
            del image
    except ImageError as exc:
        return ImageOutcome(data=None, errors=(str(exc),)), 0.0, 0.0
    except Exception as exc:  # a model or library fault on one image: that record's error, never the batch's
        incident = uuid.uuid4().hex[:12]
        logger.error("detection failed: %s (incident %s)", exc.__class__.__name__, incident, exc_info=True)
        message = f"internal error while detecting objects (incident {incident}); the batch may be retried"
        return ImageOutcome(data=None, errors=(message,)), 0.0, 0.0
    warnings: tuple[str, ...] = ()
    if not objects:
        cutoff = engine.default_threshold() if options.threshold is None else options.threshold
        warnings = (f"low confidence: no object scored at or above the threshold {cutoff:g}",)
    outcome = ImageOutcome(data=objects_data(objects, engine.version), warnings=warnings)
    return outcome, 1000 * (decoded - began), 1000 * (ended - decoded)


def detect_batch(
    engine: DetectionEngine,
    loaders: Sequence[ImageLoader],
    options: ClassifyOptions,
    *,
    pool: Executor | None = None,
    budget: DecodeBudget | None = None,
    deadline: float | None = None,
    budget_s: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    stats: BatchStats | None = None,
) -> list[ImageOutcome]:
    """Answer every loader in order, like `classify_batch`: each image decoded under `budget` and run through
    the detector on its own (detection exports take batch size 1), in `pool` when given (every image then
    runs there, never in the caller's thread). Past `deadline` no new image starts; the rest get the
    lower-your-batchSize error."""
    from shared.skill import BatchStats

    stats = stats if stats is not None else BatchStats()
    one = partial(
        _detect_one, engine, options=options, budget=budget, deadline=deadline, budget_s=budget_s, clock=clock
    )
    if pool is None:
        done = [one(loader) for loader in loaders]
    else:
        done = [f.result() for f in [pool.submit(one, loader) for loader in loaders]]
    for outcome, decode_ms, infer_ms in done:
        stats.decode_ms += decode_ms
        stats.infer_ms += infer_ms
        stats.images += outcome.data is not None
    return [outcome for outcome, _, _ in done]


def object_summary(data: dict[str, Any], shown: int = 3) -> str:
    """The CLI table's cell for one image: the object count and the best few objects."""
    objects = data.get("objects") or []
    best = ", ".join(f"{o['label']} {o['score']:.2f}" for o in objects[:shown])
    more = f", +{len(objects) - shown} more" if len(objects) > shown else ""
    return f"{len(objects)} object{'s' if len(objects) != 1 else ''}" + (f": {best}{more}" if objects else "")


def draw_boxes(image_path: Path, objects: Sequence[dict[str, Any]], target: Path) -> Path:
    """Write `image_path` as PNG to `target` with each object's box and "label score" drawn on it."""
    from PIL import ImageDraw

    with Image.open(image_path) as opened:
        image = opened.convert("RGB")
    draw = ImageDraw.Draw(image)
    width, height = image.size
    line = max(2, round(min(width, height) / 300))
    palette = ("#ff3b30", "#34c759", "#007aff", "#ff9500", "#af52de", "#00c7be")
    colours: dict[str, str] = {}
    for obj in reversed(objects):  # the best object is drawn last, on top
        colour = colours.setdefault(obj["label"], palette[len(colours) % len(palette)])
        box = obj["box"]
        corners = (box["topX"] * width, box["topY"] * height, box["bottomX"] * width, box["bottomY"] * height)
        draw.rectangle(corners, outline=colour, width=line)
        caption = f"{obj['label']} {obj['score']:.2f}"
        left, top = corners[0], max(0.0, corners[1] - 12)
        text_box = draw.textbbox((left, top), caption)
        draw.rectangle(text_box, fill=colour)
        draw.text((left, top), caption, fill="white")
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, format="PNG")
    return target
