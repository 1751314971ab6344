"""The model class for a bundle's task: the one place that knows which tasks there are."""

from __future__ import annotations

from pathlib import Path

from shared.bundle.detection import DETECTION_TASK, SEGMENTATION_TASK
from shared.bundle.loader import ModelBundle, load_bundle
from shared.inference.classification import ClassificationModel
from shared.inference.model import Model


def open_model(bundle: ModelBundle, threads: int | None = None) -> Model:
    """The loaded model for `bundle` (`threads` intra-op threads, None for one per core): it has checked its
    graph and answered one smoke inference. Raises BundleError."""
    if bundle.task == DETECTION_TASK:
        # Imported for detection bundles only: a classifier's cold start does not load the detection recipe.
        from shared.inference.detection import DetectionModel

        return DetectionModel(bundle, threads)
    if bundle.task == SEGMENTATION_TASK:
        from shared.inference.segmentation import SegmentationModel

        return SegmentationModel(bundle, threads)
    return ClassificationModel(bundle, threads)


def load_model(path: str | Path, threads: int | None = None) -> Model:
    """`open_model(load_bundle(path), threads)`. Raises BundleError."""
    return open_model(load_bundle(path), threads)
