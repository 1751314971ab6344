"""Instance segmentation (AutoML's Mask R-CNN): the model and the skill's answer for one image, objects as in
detection plus each object's `polygon`.

Microsoft's recipe ("Make predictions with ONNX on computer vision models from AutoML", instance
segmentation) feeds the image as Faster R-CNN's (Pillow's default resize to the input size, ImageNet mean/std)
and reads `boxes`, `labels`, `scores` and `masks` [n, 1, H, W]: each object's pixel scores over the input,
resized to the image (nearest neighbour) and cut at `mask_pixel_score_threshold`. AutoML's output (Learn, "Data
schemas to train computer vision models with automated ML", instance segmentation) gives each object its
`polygon`: a list of flat [x0, y0, x1, y1, ...] lists, fractions of the image (shared.inference.polygons).

Memory: the masks are n x H x W float32 planes (100 objects at 600 x 800 are 192 MB, and a run peaks at
several times that). The session runs in `prepare`, under the decode budget that the scheduler holds while an
image is prepared, and each mask is reduced there to its pixels above the threshold, cropped and packed 8 to a
byte; only those reach `result`. So `run` has nothing left to do, and the scheduler stays the same for every
task (its log line counts segmentation's inference time under decoding).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from shared.bundle.detection import BG_LABEL, SEGMENTATION_TASK, DetectionSpec
from shared.bundle.loader import ModelBundle
from shared.core.errors import BundleError
from shared.inference.detection import DetectedObject, objects_data, stretch_tensor
from shared.inference.model import ImageInfo, ImageOutcome, InferenceOptions
from shared.inference.polygons import PackedMask, mask_polygons, pack_mask
from shared.inference.session import open_session

OUTPUTS = ("boxes", "labels", "scores", "masks")
# A run's peak memory, in masks outputs: torchvision's exported paste loop builds each object's (H, W) plane
# from several full-size intermediates, then concatenates them. Measured: 790 MB above the loaded session for
# 100 objects at 600 x 800 (4.3 outputs of 183 MiB; ONNX Runtime 1.30, ResNet-18 FPN).
_MASK_COPIES = 5


@dataclass(frozen=True)
class SegmentedObject(DetectedObject):
    """A detected object and its mask's polygons (fractions of the image, see mask_polygons)."""

    polygon: tuple[tuple[float, ...], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "polygon": [list(p) for p in self.polygon]}


@dataclass(frozen=True)
class Instance:
    """One object as the model returned it, its mask reduced to what the answer needs."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    mask: PackedMask | None


@dataclass(frozen=True)
class Segmentation:
    """One image's model output, kept from `prepare` to `result`."""

    instances: tuple[Instance, ...]

    @property
    def nbytes(self) -> int:
        return sum(i.mask.nbytes for i in self.instances if i.mask is not None)


def segmentation_data(objects: Sequence[SegmentedObject], model_version: str) -> dict[str, Any]:
    """The skill's fields for one image: detection's (objects_data; each object also has `polygon`) plus
    `polygons`, each object's polygon as one JSON string, in the order of `objects` (what an index's string
    collection can hold)."""
    data = objects_data(objects, model_version)
    data["polygons"] = [json.dumps([list(p) for p in o.polygon], separators=(",", ":")) for o in objects]
    return data


class SegmentationModel:
    """An AutoML Mask R-CNN: one ONNX Runtime session over an instance segmentation bundle
    (shared.inference.model.Model).

    Opening it checks the input [1, 3, H, W] and the outputs boxes, labels, scores, masks, and runs one smoke
    inference; BundleError otherwise. `labels` are the class names without "--bg--". Thread-safe.
    """

    # The recipe resizes the full image itself (as detection).
    draft_short_side: int | None = None
    max_run: int | None = 1

    def __init__(self, bundle: ModelBundle, threads: int | None = None) -> None:
        spec = bundle.preprocessing.detection
        if spec is None or spec.family != "mask_rcnn":
            raise BundleError(f"{bundle.model_path} is not an instance segmentation (Mask R-CNN) bundle")
        self.bundle = bundle
        self.spec: DetectionSpec = spec
        # Without the arena a run's buffers (hundreds of MB, see _MASK_COPIES) go back when it ends, and the
        # decode budget's trim returns them to the OS; the arena would keep its largest run's for good.
        self.session = open_session(bundle.model_path, threads, mem_pattern=False, arena=False)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise BundleError(
                f"{bundle.model_path} is not an AutoML Mask R-CNN model: expected one image input [1, 3, height, "
                f"width], got {[(i.name, list(i.shape)) for i in inputs]}"
            )
        self.input_name = inputs[0].name
        names = [o.name for o in self.session.get_outputs()]
        if not set(OUTPUTS) <= set(names):
            raise BundleError(f"{bundle.model_path} (mask_rcnn) needs outputs {list(OUTPUTS)}, has {names}")
        self.labels: tuple[str, ...] = tuple(label for label in bundle.labels if label != BG_LABEL)
        self.task: str = SEGMENTATION_TASK
        self.preprocessing = bundle.preprocessing
        self.version: str = bundle.version
        self.input_shape = (3, spec.height, spec.width)
        self.infer(np.zeros((1, *self.input_shape), dtype=np.float32))

    def default_threshold(self) -> float:
        """The model's box_score_thresh."""
        return self.spec.box_score_thresh

    def prepare_bytes(self, width: int, height: int) -> int:
        """What `prepare` allocates: detection's resized copy and float64 normalization, and the run's peak at
        its largest (box_detections_per_img planes of H x W float32, `_MASK_COPIES` times): 915 MiB at AutoML's
        defaults, more than the largest default budget, so such an image runs alone."""
        h, w = self.spec.height, self.spec.width
        return 4 * h * w + 2 * 8 * 3 * h * w + _MASK_COPIES * self.spec.box_detections_per_img * 4 * h * w

    def prepare(self, image: Image.Image, out: np.ndarray) -> Segmentation:
        """Write the input tensor into `out`, run the model on it and return its objects with packed masks."""
        out[...] = stretch_tensor(image, self.spec)[0]
        return self.infer(out[None])

    def infer(self, tensor: np.ndarray) -> Segmentation:
        """Run one [1, 3, H, W] input; each mask is cut at mask_pixel_score_threshold and packed, the float
        planes dropped as soon as they are read."""
        boxes, label_ids, scores, masks = self.session.run(list(OUTPUTS), {self.input_name: tensor})
        labels = self.bundle.labels
        scale = np.asarray([self.spec.width, self.spec.height, self.spec.width, self.spec.height], dtype=np.float64)
        masks = np.asarray(masks)
        if masks.ndim != 4 or masks.shape[0] != len(scores) or masks.shape[2:] != tuple(self.input_shape[1:]):
            raise BundleError(
                f"{self.bundle.model_path} returned masks of shape {list(masks.shape)} for {len(scores)} objects; "
                f"expected [{len(scores)}, 1, {self.spec.height}, {self.spec.width}]"
            )
        instances = []
        for i, (box, label_id, score) in enumerate(
            zip(np.asarray(boxes, np.float64).reshape(-1, 4), np.ravel(label_ids), np.ravel(scores), strict=True)
        ):
            index = int(label_id)
            if not 0 <= index < len(labels):
                raise BundleError(f"the model returned label id {index} but labels.json lists {len(labels)} labels")
            if labels[index] == BG_LABEL or not math.isfinite(float(score)):
                continue
            x1, y1, x2, y2 = (float(v) for v in np.clip(box / scale, 0.0, 1.0))
            mask = pack_mask(masks[i, 0], self.spec.mask_pixel_score_threshold)
            instances.append(Instance(labels[index], float(score), (x1, y1, x2, y2), mask))
        del masks
        return Segmentation(tuple(instances))

    def run(self, batch: np.ndarray) -> list[None]:
        """Nothing: `prepare` ran each image (see the module's docstring)."""
        return [None] * len(batch)

    def objects(
        self, found: Segmentation, image: ImageInfo, threshold: float | None, top_k: int | None
    ) -> list[SegmentedObject]:
        """Objects best first, score >= threshold (default box_score_thresh), at most top_k (default
        box_detections_per_img), each with the polygons of its mask resized to the image."""
        cutoff = self.default_threshold() if threshold is None else threshold
        limit = self.spec.box_detections_per_img if top_k is None else top_k
        kept = sorted((i for i in found.instances if i.score >= cutoff), key=lambda i: -i.score)[:limit]
        return [
            SegmentedObject(
                label=i.label,
                score=i.score,
                box=i.box,
                polygon=tuple(
                    tuple(p)
                    for p in (
                        mask_polygons(
                            i.mask,
                            input_height=self.spec.height,
                            input_width=self.spec.width,
                            image_height=image.height,
                            image_width=image.width,
                            max_points=self.spec.max_number_of_polygon_points,
                        )
                        if i.mask is not None
                        else []
                    )
                ),
            )
            for i in kept
        ]

    def segment(
        self, image: Image.Image, threshold: float | None = None, top_k: int | None = None
    ) -> list[SegmentedObject]:
        """Objects in one RGB image (see `objects`)."""
        tensor = np.empty((1, *self.input_shape), dtype=np.float32)
        found = self.prepare(image, tensor[0])
        info = ImageInfo(width=image.width, height=image.height, format=None, draft=False)
        return self.objects(found, info, threshold, top_k)

    def result(self, output: Any, context: Any, image: ImageInfo, options: InferenceOptions) -> ImageOutcome:
        found = self.objects(context, image, options.threshold, options.top_k)
        warnings: tuple[str, ...] = ()
        if not found:
            cutoff = self.default_threshold() if options.threshold is None else options.threshold
            warnings = (f"low confidence: no object scored at or above the threshold {cutoff:g}",)
        return ImageOutcome(data=segmentation_data(found, self.version), warnings=warnings)
