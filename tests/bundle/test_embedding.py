"""A classifier's embedding: found by walking back from the logits, added as an output without the `onnx` package,
checked here with `onnx` itself and against the head's input computed independently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from shared.bundle.embedding import EMBEDDING_OUTPUT, edit_model_bytes, find_embedding, output_names
from shared.bundle.layout import SAMPLE_BUNDLE
from shared.bundle.loader import load_bundle
from shared.inference.factory import open_model
from tests.conftest import SAMPLE_PHOTOS
from tests.modelfactory import tiny_bundle, tiny_classifier, write_labels


def test_the_edit_keeps_a_valid_model_and_adds_one_output(tmp_path: Path) -> None:
    data = tiny_classifier(tmp_path / "model.onnx", classes=5).read_bytes()
    site = find_embedding(data)
    assert site is not None and (site.tensor, site.op, site.dimensions, site.batch) == ("flat", "Gemm", 3, "batch")
    edited = edit_model_bytes(data)
    model = onnx.load_from_string(edited)
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["output1", EMBEDDING_OUTPUT]
    original = onnx.load_from_string(data)
    assert list(model.graph.node)[:-1] == list(original.graph.node)
    assert list(model.graph.initializer) == list(original.graph.initializer)
    assert edit_model_bytes(edited) == edited  # idempotent


def test_a_run_folders_embedding_equals_the_pooled_input_of_its_head(tmp_path: Path) -> None:
    run = tmp_path / "run"
    tiny_classifier(run / "train_artifacts" / "model.onnx", classes=4, crop=32, in_graph=True)
    write_labels(run / "train_artifacts" / "labels.json", ["a", "b", "c", "d"])
    bundle = load_bundle(run)
    assert bundle.embedding is not None and not bundle.embedding.in_file
    engine = open_model(bundle)
    batch = engine.preprocess_batch([Image.open(p).convert("RGB") for p in SAMPLE_PHOTOS])  # type: ignore[attr-defined]
    got = np.array([e for _, e in engine.with_embedding().run(batch)])  # type: ignore[attr-defined]
    # Independently: the graph divides by 255, normalises, then averages each channel (GlobalAveragePool).
    mean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    pooled = ((batch.astype(np.float64) / 255 - mean) / std).mean(axis=(2, 3))
    expected = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    assert float(np.abs(got - expected).max()) <= 1e-4
    assert (run / "train_artifacts" / "model.onnx").read_bytes() == tiny_classifier(
        tmp_path / "again.onnx", classes=4, crop=32, in_graph=True
    ).read_bytes()  # the run's file is never rewritten


def test_matmul_plus_bias_heads_are_followed(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("input1", TensorProto.FLOAT, ["batch", 3, 8, 8])
    out = helper.make_tensor_value_info("output1", TensorProto.FLOAT, ["batch", 2])
    inits = [
        numpy_helper.from_array(np.ones((3, 2), np.float32), "W"),
        numpy_helper.from_array(np.zeros(2, np.float32), "B"),
    ]
    nodes = [
        helper.make_node("GlobalAveragePool", ["input1"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["output1"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [out], inits), opset_imports=[helper.make_opsetid("", 13)]
    )
    site = find_embedding(model.SerializeToString())
    assert site is not None and (site.tensor, site.op, site.dimensions) == ("flat", "MatMul", 3)


def test_a_graph_without_a_linear_head_has_no_embedding(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("input1", TensorProto.FLOAT, ["batch", 4])
    out = helper.make_tensor_value_info("output1", TensorProto.FLOAT, ["batch", 4])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["input1"], ["output1"])], "g", [x], [out]),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    assert find_embedding(model.SerializeToString()) is None


def test_the_bundled_sample_gets_a_1280_wide_embedding_when_first_asked() -> None:
    bundle = load_bundle(SAMPLE_BUNDLE)
    assert bundle.embedding is not None and not bundle.embedding.in_file
    model = open_model(bundle)
    assert model.embedding_output is None  # type: ignore[attr-defined]  # loading costs what it did
    photo = [Image.open(SAMPLE_PHOTOS[0]).convert("RGB")]
    before = model.logits(model.preprocess_batch(photo))  # type: ignore[attr-defined]
    view = model.with_embedding()  # type: ignore[attr-defined]
    assert model.embedding_dimensions == view.embedding_dimensions == 1280  # type: ignore[attr-defined]
    assert np.array_equal(model.logits(model.preprocess_batch(photo)), before)  # type: ignore[attr-defined]
    assert output_names((SAMPLE_BUNDLE / "model.onnx").read_bytes()) == ["output1"]  # the committed file as it is


@pytest.mark.integration
def test_publish_stores_the_edited_model_and_records_the_embedding(store: object, tmp_path: Path) -> None:
    from shared.modelstore.blobstore import BlobModelStore

    assert isinstance(store, BlobModelStore)
    store.publish(tiny_bundle(tmp_path / "tiny", classes=3), version="v1")
    found = store.read_manifest("v1")
    assert found is not None
    assert found[0]["embedding"] == {"output": "embedding", "dimensions": 3, "source": "flat"}
    stored = b"".join(store.blob_chunks("v1/model.onnx", "reading"))
    assert output_names(stored) == ["output1", "embedding"]
    folder = store.download_version("v1", tmp_path / "cache")
    bundle = load_bundle(folder)
    assert bundle.embedding is not None and bundle.embedding.in_file
    assert open_model(bundle).embedding_dimensions == 3  # type: ignore[attr-defined]
