"""The model bundle on disk: find AutoML's files, read labels and settings, decide task and preprocessing.

A path is either a bundle directory (`model.onnx`, `labels.json`, optional `settings.json`,
`scoring_file_v_1_0_0.py`, `manifest.json`) or a downloaded AutoML run folder, where the same files sit
under `train_artifacts/`, `outputs/` and `outputs/mlflow-model/artifacts/`. A path to `model.onnx` itself
means its folder.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from shared.bundle.detection import (
    DETECTION_TASK,
    MLMODEL_FILE,
    SEGMENTATION_TASK,
    DetectionSpec,
    read_mlmodel_metadata,
    recognise_detection,
)
from shared.bundle.embedding import Embedding, locate
from shared.bundle.layout import (
    CHECKPOINT_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    SCORING_FILE,
    SETTINGS_FILE,
)
from shared.bundle.onnxinfo import OnnxFormatError, read_onnx_info
from shared.core.errors import BundleError
from shared.core.paths import PathError, path_kind

Task = Literal["multiclass", "multilabel", "object-detection", "instance-segmentation"]


# Where AutoML puts each file in a run's artifacts, relative to the run folder; a bundle has them at its root.
_SEARCH_DIRS = ("", "train_artifacts", "outputs", "outputs/mlflow-model/artifacts", "mlflow-model/artifacts")
# MLflow's MLmodel sits beside artifacts/, not in it.
_MLMODEL_DIRS = ("", "outputs/mlflow-model", "mlflow-model")

# AutoML's defaults for image classification (valid_resize_size, valid_crop_size) and ImageNet statistics,
# which AutoML uses for every architecture, ViT included.
DEFAULT_RESIZE = 256
DEFAULT_CROP = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor.

    resize: the shorter side is resized to this many pixels (bilinear); crop: then a centered square of
    this side is cut; in_graph: the graph normalizes itself and wants raw 0-255 floats, otherwise the
    input is (x/255 - mean) / std. detection: set for an object detection or instance segmentation model,
    whose input is made as its spec says (shared.bundle.detection); resize and crop then hold the input's shorter side.
    """

    resize: int
    crop: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    in_graph: bool = False
    detection: DetectionSpec | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.detection is not None:
            return {"detection": self.detection.as_dict()}
        out: dict[str, Any] = {"resize": self.resize, "crop": self.crop}
        if self.in_graph:
            out["in_graph"] = True
        else:
            out["mean"] = list(self.mean)
            out["std"] = list(self.std)
        return out


@dataclass(frozen=True)
class ModelBundle:
    """Everything needed to serve one model (the ONNX file itself stays on disk: ONNX Runtime reads it)."""

    root: Path
    model_path: Path
    labels_path: Path
    labels: tuple[str, ...]
    task: Task
    preprocessing: Preprocessing
    version: str
    opset: int | None
    manifest: dict[str, Any] | None
    evidence: dict[str, str]
    # A classifier's embedding (shared.bundle.embedding); None for a detector or a head that is not linear.
    embedding: Embedding | None = None


def find_file(root: Path, name: str) -> Path | None:
    """Where a bundle or AutoML run folder keeps `name` (the bundle's root first), or None."""
    return _find(root, name)


def _find(root: Path, name: str) -> Path | None:
    for sub in _SEARCH_DIRS:
        candidate = root / sub / name if sub else root / name
        if candidate.is_file():
            return candidate
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read {path}: {exc.__class__.__name__}") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def _read_labels(path: Path) -> tuple[str, ...]:
    data = _read_json(path)
    if not isinstance(data, list) or not data or not all(isinstance(x, str) for x in data):
        raise BundleError(f"{path} must be a non-empty JSON array of class names (strings)")
    if len(set(data)) != len(data):
        raise BundleError(f"{path} lists the same class name more than once")
    return tuple(data)


def _scoring_file_facts(path: Path) -> tuple[Task | None, dict[str, Any], str | None]:
    """TASK_TYPE (as a classification Task, and as written) and the `model_settings` dict literal from
    AutoML's generated scoring script."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        raise BundleError(f"{path} is not a readable Python scoring file") from None
    task: Task | None = None
    raw_task: str | None = None
    settings: dict[str, Any] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target = node.targets[0]
        if not isinstance(target, ast.Name):
            continue
        try:
            value = ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
        if target.id == "TASK_TYPE" and isinstance(value, str):
            raw_task = value
            if value == "image-classification-multilabel":
                task = "multilabel"
            elif value == "image-classification":
                task = "multiclass"
        elif target.id == "model_settings" and isinstance(value, dict):
            settings.update(value)
    return task, settings, raw_task


def _size(value: Any, key: str, source: Path) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 16 <= value <= 4096:
        raise BundleError(f"{source}: {key} must be an integer number of pixels from 16 to 4096, got {value!r}")
    return int(value)


def load_bundle(path: str | Path) -> ModelBundle:
    """Read a bundle directory or AutoML run folder.

    Raises BundleError naming the file and what is wrong with it. The ONNX graph itself is checked by
    the engine when it opens the session (input shape, output width against the labels).
    """
    root = Path(path)
    try:
        kind = path_kind(root, "model path")
        if kind == "file" and root.name == MODEL_FILE:
            root, kind = root.parent, path_kind(root.parent)
    except PathError as exc:
        raise BundleError(str(exc)) from None
    if kind == "missing":
        raise BundleError(f"model path {root} does not exist")
    if kind != "dir":
        raise BundleError(f"model path {root} is not a folder holding model.onnx and labels.json")

    model_path = _find(root, MODEL_FILE)
    if model_path is None:
        if _find(root, CHECKPOINT_FILE) is not None:
            raise BundleError(
                f"{root} has AutoML's model.pt but no model.onnx; converting a PyTorch checkpoint to ONNX "
                "is a separate step (`python -m shared convert`), or download train_artifacts/model.onnx "
                "from the run"
            )
        raise BundleError(
            f"no model.onnx in {root} (looked in {', '.join(d or '.' for d in _SEARCH_DIRS)}); download "
            "train_artifacts/model.onnx and train_artifacts/labels.json from the AutoML best child run"
        )
    labels_path = _find(root, LABELS_FILE)
    if labels_path is None:
        raise BundleError(f"no labels.json beside {model_path}; download train_artifacts/labels.json from the run")

    evidence: dict[str, str] = {}
    labels = _read_labels(labels_path)
    manifest_path = _find(root, MANIFEST_FILE)
    manifest = _read_json(manifest_path) if manifest_path else None
    if manifest is not None and not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path} must be a JSON object")

    task: Task | None = None
    resize: int | None = None
    crop: int | None = None
    in_graph: bool | None = None
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    # Where a task is named, as written there: a detection run is recognised from these and the ONNX outputs.
    task_hints: dict[str, str] = {}
    manifest_detection: Any = None

    if manifest is not None and manifest_path is not None:
        declared = manifest.get("task")
        if declared is not None:
            if declared not in ("multiclass", "multilabel", DETECTION_TASK, SEGMENTATION_TASK):
                raise BundleError(
                    f"{manifest_path}: task must be 'multiclass', 'multilabel', '{DETECTION_TASK}' or "
                    f"'{SEGMENTATION_TASK}', got {declared!r}"
                )
            task_hints[MANIFEST_FILE] = declared
            if declared not in (DETECTION_TASK, SEGMENTATION_TASK):
                task = declared
                evidence["task"] = MANIFEST_FILE
        pre = manifest.get("preprocessing") or {}
        if not isinstance(pre, dict):
            raise BundleError(f"{manifest_path}: preprocessing must be a JSON object")
        manifest_detection = pre.get("detection")
        resize = _size(pre.get("resize"), "preprocessing.resize", manifest_path)
        crop = _size(pre.get("crop"), "preprocessing.crop", manifest_path)
        if "in_graph" in pre:
            in_graph = bool(pre["in_graph"])
        if "mean" in pre or "std" in pre:
            mean, std = _mean_std(pre.get("mean"), pre.get("std"), manifest_path)
        if resize or crop:
            evidence["sizes"] = MANIFEST_FILE

    settings_path = _find(root, SETTINGS_FILE)
    settings: dict[str, Any] = {}
    if settings_path is not None:
        settings = _read_json(settings_path)
        if not isinstance(settings, dict):
            raise BundleError(f"{settings_path} must be a JSON object")
    if settings_path is not None and (resize is None or crop is None):
        resize = resize or _size(settings.get("valid_resize_size"), "valid_resize_size", settings_path)
        crop = crop or _size(settings.get("valid_crop_size"), "valid_crop_size", settings_path)
        evidence.setdefault("sizes", SETTINGS_FILE)

    scoring_path = _find(root, SCORING_FILE)
    if scoring_path is not None:
        scoring_task, model_settings, raw_task = _scoring_file_facts(scoring_path)
        if raw_task is not None:
            task_hints[SCORING_FILE + " TASK_TYPE"] = raw_task
        if task is None and scoring_task is not None:
            task = scoring_task
            evidence["task"] = SCORING_FILE
        if resize is None or crop is None:
            resize = resize or _size(model_settings.get("valid_resize_size"), "valid_resize_size", scoring_path)
            crop = crop or _size(model_settings.get("valid_crop_size"), "valid_crop_size", scoring_path)
            evidence.setdefault("sizes", SCORING_FILE)

    try:
        model_bytes = model_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {model_path}: {exc.__class__.__name__}") from None
    try:
        info = read_onnx_info(model_bytes)
    except OnnxFormatError:
        raise BundleError(f"{model_path} is not an ONNX model (the file does not parse as one)") from None

    mlmodel_path = next((p for d in _MLMODEL_DIRS if (p := root / d / MLMODEL_FILE).is_file()), None)
    if mlmodel_path is not None:
        metadata = read_mlmodel_metadata(mlmodel_path)
        if metadata.get("finetuning_task"):
            task_hints["MLmodel finetuning_task"] = metadata["finetuning_task"]
        if metadata.get("base_model_name") and "model_name" not in settings:
            settings = {**settings, "model_name": metadata["base_model_name"]}
    detection = recognise_detection(
        model_path=model_path,
        outputs=info.outputs,
        input_shape=info.inputs[0][1] if info.inputs else (),
        task_hints=task_hints,
        settings=settings,
        settings_path=settings_path,
        labels=labels,
    )
    if detection is not None:
        if manifest_detection is not None and manifest_path is not None:
            detection = DetectionSpec.from_dict(manifest_detection, manifest_path)
            if detection.family != "mask_rcnn" and any(name == "masks" for name, _ in info.outputs):
                raise BundleError(
                    f"{manifest_path}: preprocessing.detection.family must be mask_rcnn for a `masks` output"
                )
        elif "Div" in info.first_ops() and detection.family != "yolov5":
            # AutoML's enable_onnx_normalization: the graph divides and normalizes itself.
            detection = replace(detection, normalize=False)
        evidence["task"] = ", ".join(sorted(task_hints)) or "ONNX outputs"
        evidence["family"] = f"{detection.family} (ONNX outputs {[name for name, _ in info.outputs]})"
        side = min(detection.height, detection.width)
        preprocessing = Preprocessing(resize=side, crop=side, detection=detection)
        return ModelBundle(
            root=root,
            model_path=model_path,
            labels_path=labels_path,
            labels=labels,
            task=detection.task,
            preprocessing=preprocessing,
            version=_version(manifest, model_bytes, labels, detection.task, preprocessing),
            opset=info.opset,
            manifest=manifest,
            evidence=evidence,
        )

    if in_graph is None:
        # AutoML's enable_onnx_normalization wraps the network in x/255 then (x-mean)/std: a Div reads input1.
        in_graph = "Div" in info.first_ops()
        evidence["normalization"] = "in graph (Div reads the input)" if in_graph else "outside graph"

    if crop is None and info.inputs:
        shape = info.inputs[0][1]
        if len(shape) == 4 and isinstance(shape[2], int) and shape[2] == shape[3]:
            crop = int(shape[2])
            evidence["sizes"] = "ONNX input shape"
    if crop is None:
        crop = DEFAULT_CROP
        evidence["sizes"] = "AutoML defaults"
    if resize is None:
        # AutoML's default pair is 256/224; keep that ratio for other crops.
        resize = DEFAULT_RESIZE if crop == DEFAULT_CROP else round(crop / 0.875)
    if resize < crop:
        raise BundleError(f"resize size {resize} is smaller than crop size {crop}; the crop must fit in the image")

    if task is None:
        task = "multiclass"
        evidence["task"] = "default (no manifest or scoring file says otherwise)"

    preprocessing = Preprocessing(resize=resize, crop=crop, mean=mean, std=std, in_graph=in_graph)
    version = _version(manifest, model_bytes, labels, task, preprocessing)
    embedding = locate([name for name, _ in info.outputs], manifest, classifier=True)

    return ModelBundle(
        root=root,
        model_path=model_path,
        labels_path=labels_path,
        labels=labels,
        task=task,
        preprocessing=preprocessing,
        version=version,
        opset=info.opset,
        manifest=manifest,
        evidence=evidence,
        embedding=embedding,
    )


def _version(
    manifest: dict[str, Any] | None, model_bytes: bytes, labels: Sequence[str], task: str, preprocessing: Preprocessing
) -> str:
    """The manifest's version, else content_version()."""
    version = manifest.get("version") if manifest is not None else None
    if not isinstance(version, str) or not version:
        version = content_version(hashlib.sha256(model_bytes).hexdigest(), labels, task, preprocessing)
    return version


def _mean_std(mean: Any, std: Any, source: Path) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    def triple(value: Any, key: str) -> tuple[float, float, float]:
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
        ):
            raise BundleError(f"{source}: preprocessing.{key} must be a list of 3 numbers")
        if key == "std" and any(x <= 0 for x in value):
            raise BundleError(f"{source}: preprocessing.std values must be positive")
        return (float(value[0]), float(value[1]), float(value[2]))

    return triple(mean if mean is not None else list(IMAGENET_MEAN), "mean"), triple(
        std if std is not None else list(IMAGENET_STD), "std"
    )


CONTENT_VERSION_PREFIX = "m-"


def content_version(model_sha256: str, labels: Sequence[str], task: str, preprocessing: Preprocessing) -> str:
    """The default version name of a model: `m-` + 12 hex digits of one hash over the ONNX file's sha256,
    the labels, the task and the preprocessing.

    The one default name everywhere: `classify` shows it for a folder without a manifest, `convert` writes
    it into a converted bundle's manifest, and `publish` uses it when no --version or run id is given, so
    the same model has the same name wherever it is seen.
    """
    digest = hashlib.sha256()
    digest.update(model_sha256.encode())
    digest.update(json.dumps(list(labels)).encode())
    digest.update(json.dumps({"task": task, **preprocessing.as_dict()}, sort_keys=True).encode())
    return CONTENT_VERSION_PREFIX + digest.hexdigest()[:12]


def bundle_content_version(bundle: ModelBundle) -> str:
    """content_version() of a loaded bundle (whatever name its manifest gives it)."""
    return content_version(file_entry(bundle.model_path)["sha256"], bundle.labels, bundle.task, bundle.preprocessing)


def file_entry(path: Path) -> dict[str, Any]:
    """`{"sha256", "bytes"}` of one file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "bytes": size}


def build_manifest(
    folder: Path,
    *,
    version: str,
    task: Task,
    preprocessing: Preprocessing,
    source: dict[str, Any],
    metric: dict[str, Any] | None = None,
    opset: int | None = None,
    created: str | None = None,
    embedding: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a bundle folder (docs/model-store.md): every file but the manifest itself, with sha256 and size.

    `created` is an ISO 8601 UTC time; the current time when omitted. `embedding` is a classifier's
    embedding output (Embedding.as_manifest()); None (written as null) for a model without one.
    """
    from datetime import UTC, datetime

    files = {
        p.relative_to(folder).as_posix(): file_entry(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }
    labels = folder / LABELS_FILE
    return {
        "version": version,
        "source": source,
        "task": task,
        "labels_sha256": file_entry(labels)["sha256"] if labels.is_file() else None,
        "preprocessing": preprocessing.as_dict(),
        "onnx_opset": opset,
        "embedding": embedding,
        "metric": metric,
        "files": files,
        "created": created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
