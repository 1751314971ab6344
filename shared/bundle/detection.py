"""AutoML object detection runs: recognise one from its files and ONNX outputs, and describe how it is served.

The bundle loader calls `recognise_detection`; the DetectionSpec it returns tells the detection model
(shared.inference.detection) which recipe to follow, the one of Microsoft's "Make predictions with ONNX on
computer vision models from AutoML" and of AutoML's ONNX helper (`yolo_onnx_preprocessing_utils.py`):

- Faster R-CNN and RetinaNet: input `input` [1, 3, H, W]; the image is resized to W x H with Pillow's
  default filter for `Image.resize` (bicubic), scaled to [0, 1] and normalized with ImageNet mean/std
  (unless the graph normalizes itself); outputs `boxes` [n, 4] (x_min, y_min, x_max, y_max in input pixels),
  `labels` [n], `scores` [n] (RetinaNet: boxes, scores, labels). Score cut and NMS ran inside the graph.
  Faster R-CNN's labels.json starts with "--bg--" (AutoML's BG_LABEL), so a label id indexes it directly.
- Mask R-CNN (instance segmentation): Faster R-CNN's input and outputs plus `masks` [n, 1, H, W] (each
  object's pixel scores over the whole input); AutoML exports it with a dynamic input size, served at height
  `min_size` and width 4/3 of it (600 x 800 by default) like a Faster R-CNN. Its settings
  `mask_pixel_score_threshold` (0.5) and `max_number_of_polygon_points` (100) say how masks become polygons.
- YOLOv5: input `input` [1, 3, S, S]; letterbox (aspect kept, never upscaled, padding 114, the odd pixel
  at the bottom/right), scaled to [0, 1], no mean/std; output `output` [1, N, 5 + classes] (cx, cy, w, h,
  objectness, class scores); confidence = objectness x class score, per-class NMS, then the padding is
  removed and the boxes are clipped to the unpadded image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shared.core.errors import BundleError

Family = Literal["faster_rcnn", "retinanet", "yolov5", "mask_rcnn"]
FAMILIES: tuple[Family, ...] = ("faster_rcnn", "retinanet", "yolov5", "mask_rcnn")

DETECTION_TASK: Literal["object-detection"] = "object-detection"
SEGMENTATION_TASK: Literal["instance-segmentation"] = "instance-segmentation"
# AutoML's task names (scoring file TASK_TYPE, MLmodel metadata finetuning_task).
AML_DETECTION = "image-object-detection"
AML_SEGMENTATION = "image-instance-segmentation"
MLMODEL_FILE = "MLmodel"
BG_LABEL = "--bg--"

# AutoML's defaults (object detection: box_score_thresh 0.3, nms_iou_thresh 0.5, box_detections_per_img 100;
# YOLOv5: box_score_thresh 0.1, nms_iou_thresh 0.5, img_size 640) and the helper's NMS constants.
DEFAULT_SCORE = {"faster_rcnn": 0.3, "retinanet": 0.3, "yolov5": 0.1, "mask_rcnn": 0.3}
# AutoML's mask tools (instance segmentation): a pixel belongs to the object above this score; a polygon has
# at most this many points.
DEFAULT_MASK_PIXEL_SCORE = 0.5
DEFAULT_POLYGON_POINTS = 100
DEFAULT_NMS_IOU = 0.5
DEFAULT_DETECTIONS = 100
DEFAULT_RCNN_SIZE = (600, 800)
DEFAULT_YOLO_SIZE = 640
YOLO_MAX_WH = 4096
YOLO_MAX_DET = 300

_RCNN_OUTPUTS = ("boxes", "labels", "scores")
_MASK_RCNN_OUTPUTS = (*_RCNN_OUTPUTS, "masks")


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
    mask_pixel_score_threshold: float = DEFAULT_MASK_PIXEL_SCORE
    max_number_of_polygon_points: int = DEFAULT_POLYGON_POINTS

    @property
    def task(self) -> Literal["object-detection", "instance-segmentation"]:
        """The bundle's task: instance segmentation for Mask R-CNN, else object detection."""
        return SEGMENTATION_TASK if self.family == "mask_rcnn" else DETECTION_TASK

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
        if self.family == "mask_rcnn":
            out["mask_pixel_score_threshold"] = self.mask_pixel_score_threshold
            out["max_number_of_polygon_points"] = self.max_number_of_polygon_points
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
            mask_pixel_score_threshold=_fraction(
                data.get("mask_pixel_score_threshold"), "mask_pixel_score_threshold", source, DEFAULT_MASK_PIXEL_SCORE
            ),
            max_number_of_polygon_points=_polygon_points(data.get("max_number_of_polygon_points"), source),
        )


def _polygon_points(value: Any, source: Path) -> int:
    if value is None:
        return DEFAULT_POLYGON_POINTS
    if isinstance(value, bool) or not isinstance(value, int) or not 3 <= value <= 10000:
        raise BundleError(f"{source}: max_number_of_polygon_points must be an integer from 3 to 10000, got {value!r}")
    return int(value)


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
    if set(_MASK_RCNN_OUTPUTS) <= set(names):
        return "mask_rcnn"
    if set(_RCNN_OUTPUTS) <= set(names):
        return "retinanet" if names.index("scores") < names.index("labels") else "faster_rcnn"
    return None


# A task name as AutoML (scoring file, MLmodel) or our manifest writes it -> the task we serve.
_TASK_NAMES = {
    AML_DETECTION: DETECTION_TASK,
    DETECTION_TASK: DETECTION_TASK,
    AML_SEGMENTATION: SEGMENTATION_TASK,
    SEGMENTATION_TASK: SEGMENTATION_TASK,
}


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
    """Decide whether a run is a detection or instance segmentation model and how to serve it; None for a
    classifier (the spec's `task` says which of the two).

    `task_hints` maps each place that named a task (manifest, scoring file TASK_TYPE, MLmodel
    finetuning_task) to that name; `settings` is settings.json (AutoML's inference settings). Raises
    BundleError for a run that says detection or segmentation but whose ONNX outputs match no known family,
    or whose files disagree on the task.
    """
    names = tuple(name for name, _ in outputs)
    family = _family_from_outputs(outputs)
    said = {k: v for k, v in task_hints.items() if v in _TASK_NAMES}
    said_segmentation = sorted(k for k, v in said.items() if _TASK_NAMES[v] == SEGMENTATION_TASK)
    said_detection = sorted(k for k, v in said.items() if _TASK_NAMES[v] == DETECTION_TASK)
    said_classification = sorted(k for k in task_hints if k not in said)
    if family is None:
        if said_segmentation:
            raise BundleError(
                f"{model_path} is an instance segmentation model per {', '.join(said_segmentation)} but its "
                f"outputs {list(names)} are not Mask R-CNN's {list(_MASK_RCNN_OUTPUTS)}"
            )
        if said_detection:
            raise BundleError(
                f"{model_path} is an object detection model per {', '.join(said_detection)} but its "
                f"outputs {list(names)} match no AutoML family (boxes/labels/scores, or YOLOv5's output)"
            )
        return None
    if family == "mask_rcnn" and said_detection and not said_segmentation:
        raise BundleError(
            f"{model_path} has Mask R-CNN's outputs {list(names)} but {', '.join(said_detection)} says the task is "
            "object detection; the files must come from the same run"
        )
    if family != "mask_rcnn" and said_segmentation:
        raise BundleError(
            f"{model_path} is an instance segmentation model per {', '.join(said_segmentation)} but has no "
            f"`masks` output (outputs {list(names)}); the files must come from the same run"
        )
    if said_classification and not said:
        raise BundleError(
            f"{model_path} has object detection outputs {list(names)} but "
            f"{', '.join(said_classification)} says the task is classification"
        )
    where = settings_path or model_path
    height, width = _input_size(input_shape, family, settings, where)
    model_name = settings.get("model_name") if isinstance(settings.get("model_name"), str) else None
    if family in ("faster_rcnn", "mask_rcnn") and (not labels or labels[0] != BG_LABEL):
        raise BundleError(
            f"{model_path} is a {'Mask' if family == 'mask_rcnn' else 'Faster'} R-CNN model, whose labels.json must "
            f"start with {BG_LABEL!r} (label id k "
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
        mask_pixel_score_threshold=_fraction(
            settings.get("mask_pixel_score_threshold"), "mask_pixel_score_threshold", where, DEFAULT_MASK_PIXEL_SCORE
        ),
        max_number_of_polygon_points=_polygon_points(settings.get("max_number_of_polygon_points"), where),
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
