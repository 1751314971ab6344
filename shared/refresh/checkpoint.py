"""AutoML `model.pt` checkpoints -> ONNX, with PyTorch, torchvision and timm (all imported lazily).

A run whose `train_artifacts/model.onnx` is missing or unusable still becomes a servable bundle: the
network is rebuilt from the checkpoint's `model_name` (docs/models.md lists them), its `model_state` loaded with
`strict=True`, exported once to ONNX in AutoML's layout (`input1` -> `output1` logits, dynamic batch,
ImageNet normalization outside the graph), and accepted only if ONNX Runtime agrees with PyTorch within
1e-4 on a few images. Serving then stays on ONNX Runtime; torch is never imported on the HTTP path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.bundle.layout import CHECKPOINT_FILE, LABELS_FILE, MANIFEST_FILE, MODEL_FILE, write_manifest
from shared.bundle.loader import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    Task,
    build_manifest,
    content_version,
    find_file,
)
from shared.core.errors import BundleError
from shared.core.paths import PathError, path_kind
from shared.core.settings import APP_ROOT

logger = logging.getLogger(__name__)

# AutoML model_name -> (library, constructor). ViT is built at the checkpoint's own image size.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "resnet18": ("torchvision", "resnet18"),
    "resnet34": ("torchvision", "resnet34"),
    "resnet50": ("torchvision", "resnet50"),
    "resnet101": ("torchvision", "resnet101"),
    "resnet152": ("torchvision", "resnet152"),
    "mobilenetv2": ("torchvision", "mobilenet_v2"),
    "seresnext": ("timm", "legacy_seresnext50_32x4d"),
    "resnest50": ("timm", "resnest50d"),
    "resnest101": ("timm", "resnest101e"),
    "vits16r224": ("timm", "vit_small_patch16_224"),
    "vitb16r224": ("timm", "vit_base_patch16_224"),
    "vitl16r224": ("timm", "vit_large_patch16_224"),
}
# The legacy TorchScript exporter at opset 14: the lowest with the attention ops ViT needs. The parity
# check below guards every export, because an exporter can be wrong without failing (docs/models.md).
OPSET = 14
# Outputs must agree within 1e-4 of the logits' scale (max(1, max |logit|)): float32 rounding grows with
# depth and magnitude (ResNet-101 reaches 1e-3 at logits near 20 with optimizations off), while a wrong graph
# is off by the scale itself.
PARITY_RTOL = 1e-4
PARITY_IMAGES = 3
CONVERTED_DIR = "converted"


class CheckpointError(BundleError):
    """The checkpoint cannot be converted; the message says why and what to do instead."""


@dataclass(frozen=True)
class Checkpoint:
    model_name: str
    labels: tuple[str, ...]
    multilabel: bool
    resize: int
    crop: int
    state: dict[str, Any]
    score: float | None
    sha256: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _require_torch() -> Any:
    try:
        import timm  # noqa: F401 - checked here so the error names everything that is missing
        import torch
        import torchvision  # noqa: F401
    except ImportError as exc:
        raise CheckpointError(
            f"converting AutoML's model.pt to ONNX needs torch, torchvision and timm ({exc.name} is not installed): "
            "pip install -r requirements-torch.txt, or convert elsewhere with `python -m shared convert` and "
            "publish the result"
        ) from None
    return torch


def find_checkpoint(path: Path) -> Path:
    """`path` itself when it is a file, else the model.pt of a run or bundle folder (wherever AutoML puts
    it: the folder, train_artifacts/, outputs/). Raises CheckpointError naming what is missing."""
    try:
        kind = path_kind(path)
    except PathError as exc:
        raise CheckpointError(str(exc)) from None
    if kind == "file":
        return path
    if kind == "missing":
        raise CheckpointError(f"{path} does not exist: give AutoML's model.pt or the run folder that holds it")
    if kind != "dir":
        raise CheckpointError(f"{path} is neither a file nor a folder")
    found = find_file(path, CHECKPOINT_FILE)
    if found is None:
        raise CheckpointError(
            f"no {CHECKPOINT_FILE} in {path} (looked in the folder, train_artifacts/ and outputs/); download "
            "train_artifacts/model.pt from the AutoML best child run"
        )
    return found


def read_checkpoint(path: Path) -> Checkpoint:
    """Read an AutoML (>= 1.25) checkpoint. Raises CheckpointError for older or foreign files."""
    torch = _require_torch()

    try:
        # weights_only=False executes pickled code: AutoML checkpoints hold numpy objects (metrics) that the
        # safe loader refuses. We only open files from the configured AML workspace or a path the user
        # named explicitly, never a file that arrived with a request.
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as exc:
        raise CheckpointError(
            f"{path} was written by an AutoML version (<= 1.24) whose checkpoint needs the AutoML package "
            f"itself ({exc.name}); export ONNX from AML instead (train_artifacts/model.onnx)"
        ) from None
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder: give the model.pt file, or use find_checkpoint()") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or 'input/output error'}") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged or non-torch file
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict) or "model_state" not in raw or "model_name" not in raw:
        raise CheckpointError(
            f"{path} is a bare state_dict, as AutoML <= 1.24 wrote them: converting it needs the AutoML package; "
            "export ONNX from AML instead (train_artifacts/model.onnx)"
        )
    name = str(raw["model_name"])
    if name not in ARCHITECTURES:
        raise CheckpointError(f"{path}: unknown model_name {name!r}; supported: {', '.join(sorted(ARCHITECTURES))}")
    specs = raw.get("specs") or {}
    labels = specs.get("labels")
    if not isinstance(labels, list | tuple) or not labels or not all(isinstance(x, str) for x in labels):
        raise CheckpointError(f"{path}: specs['labels'] must be the list of class names")
    settings = specs.get("model_settings") or {}
    resize = int(settings.get("valid_resize_size") or 256)
    crop = int(settings.get("valid_crop_size") or 224)
    score = raw.get("score")
    return Checkpoint(
        model_name=name,
        labels=tuple(labels),
        multilabel=bool(specs.get("multilabel", False)),
        resize=resize,
        crop=crop,
        state=dict(raw["model_state"]),
        score=float(score) if isinstance(score, int | float | np.floating) else None,
        sha256=file_sha256(path),
    )


def vit_image_size(state: dict[str, Any], patch: int = 16) -> int | None:
    """The image side a ViT was trained at, from its position embedding (1 class token + a square grid)."""
    pos = state.get("pos_embed")
    if pos is None:
        return None
    tokens = int(pos.shape[1]) - 1
    side = round(tokens**0.5)
    return side * patch if side * side == tokens else None


def build_network(model_name: str, classes: int, image_size: int) -> Any:
    """The torchvision or timm network AutoML trained, with random weights."""
    library, constructor = ARCHITECTURES[model_name]
    if library == "torchvision":
        import torchvision

        return getattr(torchvision.models, constructor)(weights=None, num_classes=classes)
    import timm

    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": classes}
    if model_name.startswith("vit"):
        kwargs["img_size"] = image_size
    return timm.create_model(constructor, **kwargs)


def load_network(checkpoint: Checkpoint, source: Path) -> Any:
    size = vit_image_size(checkpoint.state) or checkpoint.crop
    network = build_network(checkpoint.model_name, len(checkpoint.labels), size)
    try:
        network.load_state_dict(checkpoint.state, strict=True)
    except RuntimeError as exc:
        detail = next(
            (
                line.strip()
                for line in str(exc).splitlines()
                if "size mismatch" in line or "Missing" in line or "Unexpected" in line
            ),
            str(exc).splitlines()[0],
        )
        raise CheckpointError(
            f"{source}: the weights do not fit {checkpoint.model_name} with {len(checkpoint.labels)} classes: "
            f"{detail[:300]}"
        ) from None
    return network.eval()


def _parity_inputs(crop: int) -> np.ndarray:
    """A few normalized inputs: the committed sample photos when present, else fixed noise."""
    from PIL import Image

    from shared.inference.classification import preprocess

    photos = sorted((APP_ROOT / "samples").glob("*.png"))[:PARITY_IMAGES]
    pre = Preprocessing(resize=max(crop, round(crop / 0.875)), crop=crop)
    if photos:
        return np.stack([preprocess(Image.open(p).convert("RGB"), pre) for p in photos])
    rng = np.random.default_rng(0)
    return rng.normal(0, 1, (PARITY_IMAGES, 3, crop, crop)).astype(np.float32)


def export_onnx(network: Any, crop: int, path: Path) -> float:
    """Export and compare with torch; returns the largest difference relative to the logits' scale, and
    raises CheckpointError above PARITY_RTOL."""
    import warnings

    import onnxruntime as ort
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (torch.zeros(1, 3, crop, crop),),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input1"],
            output_names=["output1"],
            dynamic_axes={"input1": {0: "batch"}, "output1": {0: "batch"}},
        )
    batch = _parity_inputs(crop)
    with torch.no_grad():
        expected = network(torch.from_numpy(batch)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["output1"], {"input1": batch})[0]
    scale = max(1.0, float(np.abs(expected).max()))
    diff = float(np.abs(got - expected).max()) / scale
    if not diff <= PARITY_RTOL:
        raise CheckpointError(
            f"the ONNX export of this {type(network).__name__} differs from PyTorch by {diff:.2e} of the logits' "
            f"scale (limit {PARITY_RTOL:g}); refusing it"
        )
    return diff


def _add_embedding(path: Path) -> dict[str, Any] | None:
    """Give the exported model its embedding output (shared.bundle.embedding) and return the manifest's entry;
    None when its graph does not end in a linear layer."""
    from shared.bundle.embedding import manifest_entry

    edited, entry = manifest_entry(path.read_bytes())
    if edited is not None:
        path.write_bytes(edited)
    return entry


def convert_checkpoint(model_pt: Path, out_dir: Path) -> Path:
    """Convert `model.pt` into a bundle folder `out_dir` (model.onnx, labels.json, manifest.json).

    Writes into a temp folder beside `out_dir` and renames it into place, so a failed conversion leaves
    nothing. Raises CheckpointError.
    """
    checkpoint = read_checkpoint(model_pt)
    torch = _require_torch()
    network = load_network(checkpoint, model_pt)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=out_dir.parent))
    try:
        diff = export_onnx(network, checkpoint.crop, staging / MODEL_FILE)
        embedding = _add_embedding(staging / MODEL_FILE)
        (staging / LABELS_FILE).write_text(json.dumps(list(checkpoint.labels)), encoding="utf-8")
        task: Task = "multilabel" if checkpoint.multilabel else "multiclass"
        metric = None
        if checkpoint.score is not None:
            metric = {"name": "iou" if checkpoint.multilabel else "accuracy", "value": checkpoint.score}
        preprocessing = Preprocessing(
            resize=checkpoint.resize, crop=checkpoint.crop, mean=IMAGENET_MEAN, std=IMAGENET_STD
        )
        manifest = build_manifest(
            staging,
            # The same default name the converted bundle gets everywhere else (classify, publish).
            version=content_version(file_sha256(staging / MODEL_FILE), checkpoint.labels, task, preprocessing),
            task=task,
            preprocessing=preprocessing,
            source={
                "kind": "checkpoint",
                "model_name": checkpoint.model_name,
                "checkpoint_sha256": checkpoint.sha256,
                "exporter": "torch.onnx legacy (dynamo=False)",
                "torch": str(torch.__version__),
                "parity_max_rel_diff": diff,
            },
            metric=metric,
            opset=OPSET,
            embedding=embedding,
        )
        write_manifest(staging, manifest)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("converted %s (%s) to ONNX in %s, parity %.1e", model_pt, checkpoint.model_name, out_dir, diff)
    return out_dir


def servable_folder(path: Path, cache_dir: Path, on_convert: Callable[[Path], None] | None = None) -> Path:
    """`path` itself when its model.onnx loads; else, when it has AutoML's model.pt, a converted bundle
    (cached under `cache_dir/converted/<checkpoint sha256>`). Raises BundleError when neither works.
    `on_convert(model_pt)` is called just before a conversion starts (the CLI tells the user it takes a while)."""
    from shared.inference.factory import load_model

    try:
        kind = path_kind(path, "model path")
        root = path.parent if kind == "file" and path.name in (MODEL_FILE, CHECKPOINT_FILE) else path
        is_dir = path_kind(root) == "dir"
    except PathError as exc:
        raise BundleError(str(exc)) from None
    checkpoint = find_file(root, CHECKPOINT_FILE) if is_dir else None
    onnx_error: BundleError | None = None
    if is_dir and find_file(root, MODEL_FILE) is not None:
        if checkpoint is None:
            return root  # nothing to fall back to: whoever loads it reports what is wrong
        try:
            load_model(root, threads=1)
            return root
        except BundleError as exc:
            if checkpoint is None:
                raise
            onnx_error = exc
    if checkpoint is None:
        return root  # load_bundle will say what is missing
    target = cache_dir / CONVERTED_DIR / file_sha256(checkpoint)[:16]
    if (target / MANIFEST_FILE).is_file():
        return target
    if onnx_error is not None:
        logger.warning("model.onnx is unusable (%s); converting %s instead", onnx_error, checkpoint)
    if on_convert is not None:
        on_convert(checkpoint)
    return convert_checkpoint(checkpoint, target)
