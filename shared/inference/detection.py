"""Object detection (Faster R-CNN, RetinaNet, YOLOv5): AutoML's documented ONNX pre- and post-processing,
the model, and the skill's `objects` answer for one image.

The recipe follows Microsoft's "Make predictions with ONNX on computer vision models from AutoML" and AutoML's
ONNX helper; shared.bundle.detection recognises the run and says which family it is. AutoML exports detection
models with batch size 1, so one run is one image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from shared.bundle.detection import BG_LABEL, YOLO_MAX_DET, YOLO_MAX_WH, DetectionSpec
from shared.bundle.loader import IMAGENET_MEAN, IMAGENET_STD, ModelBundle
from shared.core.errors import BundleError
from shared.inference.model import ImageInfo, ImageOutcome, InferenceOptions
from shared.inference.session import open_session

LETTERBOX_FILL = 114
_RCNN_OUTPUTS = ("boxes", "labels", "scores")


# ------------------------------------------------------------------------------------------------ preprocessing


def stretch_tensor(image: Image.Image, spec: DetectionSpec) -> np.ndarray:
    """Faster R-CNN/RetinaNet input [1, 3, H, W] float32: Pillow's default resize (bicubic) to W x H, [0, 1],
    ImageNet mean/std computed in float64 then cast, as the documented `preprocess` does."""
    resized = image.resize((spec.width, spec.height), Image.Resampling.BICUBIC)
    chw = np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)
    if not spec.normalize:
        return chw[None].astype(np.float32)
    mean = np.asarray(IMAGENET_MEAN)[:, None, None]
    std = np.asarray(IMAGENET_STD)[:, None, None]
    tensor: np.ndarray = ((chw / 255 - mean) / std).astype(np.float32)[None]
    return tensor


def _linear_axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR taps along one axis: source indices and 11-bit fixed-point weights (half-pixel
    centres computed in float32, edges clamped, `saturate_cast<short>((1 - f) * 2048)`)."""
    src = ((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5).astype(np.float32)
    i0 = np.floor(src).astype(np.int64)
    frac = (src - i0).astype(np.float32)
    low = i0 < 0
    frac[low], i0[low] = 0, 0
    high = i0 >= n_in - 1
    frac[high], i0[high] = 0, n_in - 1
    w0 = np.rint((1 - frac) * 2048).astype(np.int64)
    return i0, np.minimum(i0 + 1, n_in - 1), w0, 2048 - w0


def resize_linear(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 HWC resized like `cv2.resize(..., interpolation=cv2.INTER_LINEAR)` (no antialiasing), in
    OpenCV's fixed-point arithmetic: the horizontal pass in 11-bit weights, the vertical one as its SIMD
    kernel rounds, `(((b0 * (r0 >> 4)) >> 16) + ((b1 * (r1 >> 4)) >> 16) + 2) >> 2`. Measured bit-exact
    against opencv-python-headless 4.14 on the sample photos (tests/inference/test_detection.py)."""
    h, w = pixels.shape[:2]
    y0, y1, b0, b1 = _linear_axis(height, h)
    x0, x1, a0, a1 = _linear_axis(width, w)
    source = pixels.astype(np.int64)
    rows = source[:, x0] * a0[None, :, None] + source[:, x1] * a1[None, :, None]
    top, bottom = rows[y0] >> 4, rows[y1] >> 4
    out = (((b0[:, None, None] * top) >> 16) + ((b1[:, None, None] * bottom) >> 16) + 2) >> 2
    resized: np.ndarray = np.clip(out, 0, 255).astype(np.uint8)
    return resized


@dataclass(frozen=True)
class Letterbox:
    """The padding of one letterboxed image: dw/dh are the helper's half paddings (floats)."""

    dw: float
    dh: float

    @property
    def left(self) -> int:
        return round(self.dw - 0.1)

    @property
    def top(self) -> int:
        return round(self.dh - 0.1)

    @property
    def right(self) -> int:
        return round(self.dw + 0.1)

    @property
    def bottom(self) -> int:
        return round(self.dh + 0.1)


def letterbox_tensor(image: Image.Image, size: int) -> tuple[np.ndarray, Letterbox]:
    """YOLOv5 input [1, 3, size, size] float32 in [0, 1] and its padding: the documented `letterbox` with
    auto=False, scaleup=False (aspect kept, never upscaled), fill 114, the odd pixel at the bottom/right."""
    pixels = np.asarray(image, dtype=np.uint8)
    h, w = pixels.shape[:2]
    r = min(size / h, size / w, 1.0)
    new_w, new_h = round(w * r), round(h * r)
    pad = Letterbox(dw=(size - new_w) / 2, dh=(size - new_h) / 2)
    if (w, h) != (new_w, new_h):
        pixels = resize_linear(pixels, new_w, new_h)
    canvas = np.full((new_h + pad.top + pad.bottom, new_w + pad.left + pad.right, 3), LETTERBOX_FILL, np.uint8)
    canvas[pad.top : pad.top + new_h, pad.left : pad.left + new_w] = pixels
    return (canvas.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255.0)), pad


# --------------------------------------------------------------------------------------------- postprocessing


@dataclass(frozen=True)
class DetectedObject:
    """One object: label, score, and its box as fractions of the image (top-left, bottom-right)."""

    label: str
    score: float
    box: tuple[float, float, float, float]

    def as_dict(self) -> dict[str, Any]:
        x1, y1, x2, y2 = self.box
        return {"label": self.label, "score": self.score, "box": {"topX": x1, "topY": y1, "bottomX": x2, "bottomY": y2}}


def _label(labels: tuple[str, ...], index: int) -> str | None:
    if not 0 <= index < len(labels):
        raise BundleError(f"the model returned label id {index} but labels.json lists {len(labels)} labels")
    name = labels[index]
    return None if name == BG_LABEL else name


def _finish(found: list[DetectedObject], threshold: float, top_k: int) -> list[DetectedObject]:
    kept = [o for o in found if o.score >= threshold and math.isfinite(o.score)]
    kept.sort(key=lambda o: -o.score)
    return kept[:top_k]


def rcnn_objects(
    boxes: np.ndarray,
    *,
    labels_out: np.ndarray,
    scores: np.ndarray,
    spec: DetectionSpec,
    labels: tuple[str, ...],
    threshold: float,
    top_k: int,
) -> list[DetectedObject]:
    """Faster R-CNN/RetinaNet outputs (input pixels) to objects with boxes as fractions of the image."""
    found = []
    scale = np.asarray([spec.width, spec.height, spec.width, spec.height], dtype=np.float64)
    for box, index, score in zip(
        np.asarray(boxes, np.float64).reshape(-1, 4), np.ravel(labels_out), np.ravel(scores), strict=True
    ):
        name = _label(labels, int(index))
        if name is None:
            continue
        x1, y1, x2, y2 = (float(v) for v in np.clip(box / scale, 0.0, 1.0))
        found.append(DetectedObject(label=name, score=float(score), box=(x1, y1, x2, y2)))
    return _finish(found, threshold, top_k)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy NMS, best first: a box goes when its IoU with a kept one exceeds the threshold
    (torchvision.ops.nms's rule)."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(iou > iou_threshold)]
    return np.asarray(keep, dtype=np.int64)


def yolo_objects(
    output: np.ndarray,
    pad: Letterbox,
    *,
    spec: DetectionSpec,
    labels: tuple[str, ...],
    threshold: float,
    top_k: int,
) -> list[DetectedObject]:
    """YOLOv5's `output` [1, N, 5 + classes] to objects: objectness x class score, per-class NMS at the
    model's nms_iou_thresh, the padding removed, boxes clipped to the image and made fractions of it."""
    x = np.asarray(output, dtype=np.float32).reshape(-1, output.shape[-1])
    x = x[x[:, 4] >= threshold]
    if not len(x):
        return []
    cls = x[:, 5:] * x[:, 4:5]
    j = cls.argmax(axis=1)
    conf = cls[np.arange(len(cls)), j]
    xy, wh = x[:, :2], x[:, 2:4]
    box = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)
    chosen = conf >= threshold
    box, conf, j = box[chosen], conf[chosen], j[chosen]
    if not len(box):
        return []
    keep = nms(box + (j[:, None] * YOLO_MAX_WH).astype(np.float32), conf, spec.nms_iou_thresh)[:YOLO_MAX_DET]
    img_w = spec.width - (pad.left + pad.right)
    img_h = spec.height - (pad.top + pad.bottom)
    found = []
    for i in keep:
        name = _label(labels, int(j[i]))
        if name is None:
            continue
        b = box[i].astype(np.float64) - [pad.left, pad.top, pad.left, pad.top]
        b = np.clip(b, 0, [img_w, img_h, img_w, img_h]) / [img_w, img_h, img_w, img_h]
        found.append(DetectedObject(label=name, score=float(conf[i]), box=tuple(float(v) for v in b)))  # type: ignore[arg-type]
    return _finish(found, threshold, top_k)


# ---------------------------------------------------------------------------------------------------- the model


class DetectionModel:
    """An object detector: one ONNX Runtime session over a detection bundle (shared.inference.model.Model).

    Opening it checks the input and outputs against the family's contract (YOLOv5: 5 + labels columns) and
    runs one smoke inference; BundleError otherwise. `labels` are the class names without "--bg--".
    Thread-safe: ONNX Runtime sessions accept concurrent `run` calls.
    """

    # The recipe resizes the full image itself: draft decoding would change its input for little saving next
    # to a detection run.
    draft_short_side: int | None = None
    # AutoML's detection exports take one image per run (Faster R-CNN's outputs have no batch axis).
    max_run: int | None = 1

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
        self.labels: tuple[str, ...] = tuple(label for label in bundle.labels if label != BG_LABEL)
        self.task: str = bundle.task
        self.preprocessing = bundle.preprocessing
        self.version: str = bundle.version
        self.input_shape = (3, spec.height, spec.width)
        (smoke,) = self.run(np.zeros((1, *self.input_shape), dtype=np.float32))
        if spec.family == "yolov5":
            width = smoke[0].shape[-1]
            if smoke[0].ndim != 3 or width != 5 + len(bundle.labels):
                raise BundleError(
                    f"{bundle.model_path} outputs {width} columns per box but labels.json lists "
                    f"{len(bundle.labels)} labels (YOLOv5 gives 5 + classes); the two files must come from the same run"
                )

    def default_threshold(self) -> float:
        """The model's box_score_thresh."""
        return self.spec.box_score_thresh

    def prepare_bytes(self, width: int, height: int) -> int:
        """Pillow's and numpy's buffers for one image: the resized copy and the float64 normalization
        (Faster R-CNN, RetinaNet), or the integer resize and the padded canvas (YOLOv5)."""
        h, w = self.spec.height, self.spec.width
        if self.spec.family != "yolov5":
            return 4 * h * w + 2 * 8 * 3 * h * w
        scale = min(h / height, w / width, 1.0)
        new_w = round(width * scale)
        # resize_linear: the source and one pass as int64, then the padded canvas and its float32 copy.
        return 8 * 3 * width * height + 2 * 8 * 3 * new_w * height + 3 * h * w * (1 + 4)

    def prepare(self, image: Image.Image, out: np.ndarray) -> Letterbox | None:
        if self.spec.family == "yolov5":
            tensor, pad = letterbox_tensor(image, self.spec.height)
            out[...] = tensor[0]
            return pad
        out[...] = stretch_tensor(image, self.spec)[0]
        return None

    def run(self, batch: np.ndarray) -> list[list[np.ndarray]]:
        """Each image's wanted outputs, in `output_names` order (one session run per image)."""
        return [
            [np.asarray(x) for x in self.session.run(self.output_names, {self.input_name: batch[i : i + 1]})]
            for i in range(len(batch))
        ]

    def objects(
        self, output: Sequence[np.ndarray], pad: Letterbox | None, threshold: float | None, top_k: int | None
    ) -> list[DetectedObject]:
        """Objects of one image's output, best first, score >= threshold (default box_score_thresh), at most
        top_k (default box_detections_per_img); boxes are fractions of the image's width and height."""
        cutoff = self.default_threshold() if threshold is None else threshold
        limit = self.spec.box_detections_per_img if top_k is None else top_k
        labels = self.bundle.labels
        if self.spec.family == "yolov5":
            assert pad is not None, "a YOLOv5 image is letterboxed"
            return yolo_objects(output[0], pad, spec=self.spec, labels=labels, threshold=cutoff, top_k=limit)
        boxes, label_ids, scores = output
        return rcnn_objects(
            boxes, labels_out=label_ids, scores=scores, spec=self.spec, labels=labels, threshold=cutoff, top_k=limit
        )

    def detect(
        self, image: Image.Image, threshold: float | None = None, top_k: int | None = None
    ) -> list[DetectedObject]:
        """Objects in one RGB image (see `objects`)."""
        tensor = np.empty((1, *self.input_shape), dtype=np.float32)
        pad = self.prepare(image, tensor[0])
        (output,) = self.run(tensor)
        return self.objects(output, pad, threshold, top_k)

    def result(self, output: Any, context: Any, image: ImageInfo, options: InferenceOptions) -> ImageOutcome:
        found = self.objects(output, context, options.threshold, options.top_k)
        warnings: tuple[str, ...] = ()
        if not found:
            cutoff = self.default_threshold() if options.threshold is None else options.threshold
            warnings = (f"low confidence: no object scored at or above the threshold {cutoff:g}",)
        return ImageOutcome(data=objects_data(found, self.version), warnings=warnings)


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
