"""AutoML object detection models: recognise the run, and AutoML's documented ONNX pre- and post-processing.

Pure numpy + Pillow (no ONNX Runtime, no torch): the bundle loader calls `recognise_detection`, the detection
engine (`shared.detector`) calls the rest. The recipe is the one of Microsoft's "Make predictions with ONNX on
computer vision models from AutoML" and of AutoML's ONNX helper (`yolo_onnx_preprocessing_utils.py`):

- Faster R-CNN and RetinaNet: input `input` [1, 3, H, W]; the image is resized to W x H with Pillow's
  default filter for `Image.resize` (bicubic), scaled to [0, 1] and normalized with ImageNet mean/std
  (unless the graph normalizes itself); outputs `boxes` [n, 4] (x_min, y_min, x_max, y_max in input pixels),
  `labels` [n], `scores` [n] (RetinaNet: boxes, scores, labels). Score cut and NMS ran inside the graph.
  Faster R-CNN's labels.json starts with "--bg--" (AutoML's BG_LABEL), so a label id indexes it directly.
- YOLOv5: input `input` [1, 3, S, S]; letterbox (aspect kept, never upscaled, padding 114, the odd pixel
  at the bottom/right), scaled to [0, 1], no mean/std; output `output` [1, N, 5 + classes] (cx, cy, w, h,
  objectness, class scores); confidence = objectness x class score, per-class NMS, then the padding is
  removed and the boxes are clipped to the unpadded image.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from shared.errors import BundleError

Family = Literal["faster_rcnn", "retinanet", "yolov5"]
FAMILIES: tuple[Family, ...] = ("faster_rcnn", "retinanet", "yolov5")

DETECTION_TASK: Literal["object-detection"] = "object-detection"
# AutoML's task names (scoring file TASK_TYPE, MLmodel metadata finetuning_task).
AML_DETECTION = "image-object-detection"
AML_SEGMENTATION = "image-instance-segmentation"
MLMODEL_FILE = "MLmodel"
BG_LABEL = "--bg--"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LETTERBOX_FILL = 114
# AutoML's defaults (object detection: box_score_thresh 0.3, nms_iou_thresh 0.5, box_detections_per_img 100;
# YOLOv5: box_score_thresh 0.1, nms_iou_thresh 0.5, img_size 640) and the helper's NMS constants.
DEFAULT_SCORE = {"faster_rcnn": 0.3, "retinanet": 0.3, "yolov5": 0.1}
DEFAULT_NMS_IOU = 0.5
DEFAULT_DETECTIONS = 100
DEFAULT_RCNN_SIZE = (600, 800)
DEFAULT_YOLO_SIZE = 640
YOLO_MAX_WH = 4096
YOLO_MAX_DET = 300

_SEGMENTATION_REFUSAL = (
    "is an instance segmentation model (Mask R-CNN: a `masks` output); only image classification and "
    "object detection models are served"
)


@dataclass(frozen=True)
class DetectionSpec:
    """How a detection model is fed and read.

    family: which output contract; height/width: the ONNX input size in pixels; normalize: ImageNet
    mean/std applied outside the graph (Faster R-CNN/RetinaNet without in-graph normalization; never YOLOv5);
    box_score_thresh, nms_iou_thresh, box_detections_per_img: the model's inference settings (defaults for
    the skill's threshold and topK).
    """

    family: Family
    height: int
    width: int
    normalize: bool = True
    box_score_thresh: float = 0.3
    nms_iou_thresh: float = DEFAULT_NMS_IOU
    box_detections_per_img: int = DEFAULT_DETECTIONS
    model_name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "family": self.family,
            "height": self.height,
            "width": self.width,
            "resize": "letterbox" if self.family == "yolov5" else "stretch-bicubic",
            "normalize": self.normalize,
            "box_score_thresh": self.box_score_thresh,
            "nms_iou_thresh": self.nms_iou_thresh,
            "box_detections_per_img": self.box_detections_per_img,
        }
        if self.model_name:
            out["model_name"] = self.model_name
        return out

    @classmethod
    def from_dict(cls, data: Any, source: Path) -> DetectionSpec:
        """Read the `preprocessing.detection` object of a manifest; BundleError naming the bad key."""
        if not isinstance(data, dict):
            raise BundleError(f"{source}: preprocessing.detection must be a JSON object")
        family = data.get("family")
        if family not in FAMILIES:
            raise BundleError(f"{source}: preprocessing.detection.family must be one of {', '.join(FAMILIES)}")
        height = _pixels(data.get("height"), "preprocessing.detection.height", source)
        width = _pixels(data.get("width"), "preprocessing.detection.width", source)
        if height is None or width is None:
            raise BundleError(f"{source}: preprocessing.detection needs height and width")
        name = data.get("model_name")
        return cls(
            family=family,
            height=height,
            width=width,
            normalize=bool(data.get("normalize", family != "yolov5")),
            box_score_thresh=_fraction(data.get("box_score_thresh"), "box_score_thresh", source, DEFAULT_SCORE[family]),
            nms_iou_thresh=_fraction(data.get("nms_iou_thresh"), "nms_iou_thresh", source, DEFAULT_NMS_IOU),
            box_detections_per_img=_count(data.get("box_detections_per_img"), "box_detections_per_img", source),
            model_name=name if isinstance(name, str) else None,
        )


def _pixels(value: Any, key: str, source: Path) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 16 <= value <= 4096:
        raise BundleError(f"{source}: {key} must be an integer number of pixels from 16 to 4096, got {value!r}")
    return int(value)


def _fraction(value: Any, key: str, source: Path, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise BundleError(f"{source}: {key} must be a number from 0 to 1, got {value!r}")
    return float(value)


def _count(value: Any, key: str, source: Path, default: int = DEFAULT_DETECTIONS) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise BundleError(f"{source}: {key} must be an integer from 1 to 1000, got {value!r}")
    return int(value)


def read_mlmodel_metadata(path: Path) -> dict[str, str]:
    """The scalar keys under `metadata:` of an MLflow MLmodel file (YAML; read without a YAML parser, as
    only flat `key: value` lines are needed: `base_model_name`, `finetuning_task`, `model_type`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise BundleError(f"cannot read {path}") from None
    found: dict[str, str] = {}
    inside = False
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith((" ", "\t")):
            inside = line.rstrip() == "metadata:"
            continue
        match = re.match(r"^\s+([A-Za-z_][\w-]*):\s*(.*?)\s*$", line)
        if inside and match and match.group(2):
            found[match.group(1)] = match.group(2).strip("'\"")
    return found


def _family_from_outputs(outputs: tuple[tuple[str, tuple[int | str | None, ...]], ...]) -> Family | None:
    names = [name for name, _ in outputs]
    # YOLOv5's `output` is [1, N, 5 + classes]; a classifier whose [batch, classes] output happens to be
    # named "output" is not one.
    if any(name == "output" and len(shape) == 3 for name, shape in outputs):
        return "yolov5"
    if {"boxes", "labels", "scores"} <= set(names):
        return "retinanet" if names.index("scores") < names.index("labels") else "faster_rcnn"
    return None


def recognise_detection(
    *,
    model_path: Path,
    outputs: tuple[tuple[str, tuple[int | str | None, ...]], ...],
    input_shape: tuple[int | str | None, ...],
    task_hints: dict[str, str],
    settings: dict[str, Any],
    settings_path: Path | None,
    labels: tuple[str, ...],
) -> DetectionSpec | None:
    """Decide whether a run is a detection model and how to serve it; None for a classifier.

    `task_hints` maps each place that named a task (manifest, scoring file TASK_TYPE, MLmodel
    finetuning_task) to that name; `settings` is settings.json (AutoML's inference settings). Raises
    BundleError for instance segmentation (refused) and for a run that says detection but whose ONNX
    outputs match no known family.
    """
    names = tuple(name for name, _ in outputs)
    if "masks" in names or any(v == AML_SEGMENTATION for v in task_hints.values()):
        raise BundleError(f"{model_path} {_SEGMENTATION_REFUSAL}")
    family = _family_from_outputs(outputs)
    said_detection = {k for k, v in task_hints.items() if v in (AML_DETECTION, DETECTION_TASK)}
    said_classification = {k for k, v in task_hints.items() if v not in (AML_DETECTION, DETECTION_TASK)}
    if family is None:
        if said_detection:
            raise BundleError(
                f"{model_path} is an object detection model per {', '.join(sorted(said_detection))} but its "
                f"outputs {list(names)} match no AutoML family (boxes/labels/scores, or YOLOv5's output)"
            )
        return None
    if said_classification and not said_detection:
        raise BundleError(
            f"{model_path} has object detection outputs {list(names)} but "
            f"{', '.join(sorted(said_classification))} says the task is classification"
        )
    where = settings_path or model_path
    height, width = _input_size(input_shape, family, settings, where)
    model_name = settings.get("model_name") if isinstance(settings.get("model_name"), str) else None
    if family == "faster_rcnn" and (not labels or labels[0] != BG_LABEL):
        raise BundleError(
            f"{model_path} is a Faster R-CNN model, whose labels.json must start with {BG_LABEL!r} (label id k "
            "names labels[k]); use the labels.json of the same run"
        )
    return DetectionSpec(
        family=family,
        height=height,
        width=width,
        normalize=family != "yolov5",
        box_score_thresh=_fraction(settings.get("box_score_thresh"), "box_score_thresh", where, DEFAULT_SCORE[family]),
        nms_iou_thresh=_fraction(settings.get("nms_iou_thresh"), "nms_iou_thresh", where, DEFAULT_NMS_IOU),
        # YOLOv5's settings have no box_detections_per_img: its documented NMS keeps at most 300 boxes.
        box_detections_per_img=_count(
            settings.get("box_detections_per_img"),
            "box_detections_per_img",
            where,
            YOLO_MAX_DET if family == "yolov5" else DEFAULT_DETECTIONS,
        ),
        model_name=model_name,
    )


def _input_size(
    shape: tuple[int | str | None, ...], family: Family, settings: dict[str, Any], source: Path
) -> tuple[int, int]:
    """(height, width) of the ONNX input; from settings.json where the graph leaves them dynamic."""
    if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int) and shape[2] > 0:
        return int(shape[2]), int(shape[3])
    if family == "yolov5":
        side = _pixels(settings.get("img_size"), "img_size", source) or DEFAULT_YOLO_SIZE
        return side, side
    # AutoML exports Faster R-CNN/RetinaNet at height min_size and width = the export's width (800 by default).
    height = _pixels(settings.get("min_size"), "min_size", source) or DEFAULT_RCNN_SIZE[0]
    return height, round(height * DEFAULT_RCNN_SIZE[1] / DEFAULT_RCNN_SIZE[0])


# ---------------------------------------------------------------------------------------------- preprocessing


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
    against opencv-python-headless 4.14 on the sample photos (tests/test_detection.py)."""
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
