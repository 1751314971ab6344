"""Real ONNX files and AutoML-shaped folders for tests, built with the `onnx` package (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_classifier(
    path: Path,
    *,
    classes: int = 4,
    crop: int = 32,
    channels: int = 3,
    rank: int = 4,
    in_graph: bool = False,
    opset: int = 13,
    seed: int = 0,
    batch: int | str = "batch",
) -> Path:
    """A small image classifier: [N, channels, crop, crop] -> global average pool -> linear -> logits.

    `batch` is the input's first dimension: a name (dynamic, as AutoML exports) or a fixed size.

    `in_graph` puts AutoML's normalization (x/255, then (x-mean)/std) in front, so a Div reads input1.
    `rank=2` makes an input that is not an image ([N, 16]).
    """
    rng = np.random.default_rng(seed)
    nodes = []
    inits = []
    if rank == 2:
        features = 16
        image = helper.make_tensor_value_info("input1", TensorProto.FLOAT, [batch, features])
        pooled = "input1"
    else:
        features = channels
        image = helper.make_tensor_value_info("input1", TensorProto.FLOAT, [batch, channels, crop, crop])
        source = "input1"
        if in_graph:
            inits += [
                numpy_helper.from_array(np.array(255.0, dtype=np.float32), "c255"),
                numpy_helper.from_array(np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1), "mean"),
                numpy_helper.from_array(np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1), "std"),
            ]
            nodes += [
                helper.make_node("Div", ["input1", "c255"], ["scaled"]),
                helper.make_node("Sub", ["scaled", "mean"], ["centered"]),
                helper.make_node("Div", ["centered", "std"], ["normalized"]),
            ]
            source = "normalized"
        nodes += [
            helper.make_node("GlobalAveragePool", [source], ["gap"]),
            helper.make_node("Flatten", ["gap"], ["flat"]),
        ]
        pooled = "flat"
    weight = rng.normal(0, 3, size=(classes, features)).astype(np.float32)
    bias = rng.normal(0, 1, size=(classes,)).astype(np.float32)
    inits += [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")]
    nodes.append(helper.make_node("Gemm", [pooled, "W", "B"], ["output1"], transB=1))
    output = helper.make_tensor_value_info("output1", TensorProto.FLOAT, [batch, classes])
    graph = helper.make_graph(nodes, "tiny", [image], [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_labels(path: Path, labels: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(labels), encoding="utf-8")
    return path


def scoring_file(path: Path, task_type: str, model_settings: dict[str, int] | None = None) -> Path:
    """A scoring script shaped like AutoML's generated `scoring_file_v_1_0_0.py`."""
    settings = json.dumps(model_settings or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "import json\n"
        "from azureml.automl.dnn.vision.common.model_export_utils import load_model, run_inference\n"
        f"TASK_TYPE = '{task_type}'\n"
        "def init():\n"
        "    global model\n"
        f"    model_settings = {settings}\n"
        "    model = load_model(TASK_TYPE, 'model.pt', **model_settings)\n",
        encoding="utf-8",
    )
    return path


def tiny_bundle(folder: Path, *, classes: int = 4, **kwargs: object) -> Path:
    """A bundle folder: model.onnx + labels.json (class_0 ... class_{n-1})."""
    tiny_classifier(folder / "model.onnx", classes=classes, **kwargs)  # type: ignore[arg-type]
    write_labels(folder / "labels.json", [f"class_{i}" for i in range(classes)])
    return folder


def as_stored(path: Path) -> bytes:
    """The bytes `publish` stores for a bundle file: a classifier's model.onnx gains its embedding output
    (shared.bundle.embedding), every other file is copied as it is."""
    from shared.bundle.embedding import manifest_entry

    data = path.read_bytes()
    if path.name != "model.onnx":
        return data
    edited, _ = manifest_entry(data)
    return edited if edited is not None else data
