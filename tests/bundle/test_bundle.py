from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.bundle.layout import SAMPLE_BUNDLE, write_manifest
from shared.bundle.loader import Preprocessing, build_manifest, file_entry, load_bundle
from shared.core.errors import BundleError
from tests.modelfactory import scoring_file, tiny_bundle, tiny_classifier, write_labels


def run_folder(root: Path, *, task_type: str = "image-classification", **model: object) -> Path:
    """The files AutoML's best child run uploads, where it uploads them."""
    tiny_classifier(root / "train_artifacts" / "model.onnx", **model)  # type: ignore[arg-type]
    write_labels(root / "train_artifacts" / "labels.json", ["a", "b", "c", "d"])
    scoring_file(
        root / "outputs" / "scoring_file_v_1_0_0.py",
        task_type,
        {"valid_resize_size": 40, "valid_crop_size": 32, "train_crop_size": 32},
    )
    return root


def test_run_folder_task_and_sizes_from_the_scoring_file(tmp_path: Path) -> None:
    bundle = load_bundle(run_folder(tmp_path / "run", task_type="image-classification-multilabel"))
    assert bundle.model_path == tmp_path / "run" / "train_artifacts" / "model.onnx"
    assert bundle.task == "multilabel"
    assert bundle.preprocessing == Preprocessing(resize=40, crop=32)
    assert bundle.labels == ("a", "b", "c", "d")
    assert bundle.opset == 13
    assert bundle.version.startswith("m-") and len(bundle.version) == len("m-") + 12


def test_settings_json_wins_over_the_scoring_file(tmp_path: Path) -> None:
    root = run_folder(tmp_path / "run")
    artifacts = root / "outputs" / "mlflow-model" / "artifacts"
    artifacts.mkdir(parents=True)
    (artifacts / "settings.json").write_text(
        json.dumps({"valid_resize_size": 36, "valid_crop_size": 32, "train_crop_size": 32})
    )
    bundle = load_bundle(root)
    assert (bundle.preprocessing.resize, bundle.preprocessing.crop) == (36, 32)
    assert bundle.task == "multiclass"
    assert bundle.evidence == {
        "task": "scoring_file_v_1_0_0.py",
        "sizes": "settings.json",
        "normalization": "outside graph",
    }


def test_without_evidence_sizes_come_from_the_onnx_input_and_task_defaults_to_multiclass(tmp_path: Path) -> None:
    bundle = load_bundle(tiny_bundle(tmp_path / "b", crop=224))
    assert bundle.preprocessing == Preprocessing(resize=256, crop=224)
    assert bundle.task == "multiclass"
    other = load_bundle(tiny_bundle(tmp_path / "c", crop=384))
    assert (other.preprocessing.resize, other.preprocessing.crop) == (439, 384)


def test_normalization_in_graph_is_detected(tmp_path: Path) -> None:
    assert load_bundle(tiny_bundle(tmp_path / "in", in_graph=True)).preprocessing.in_graph is True
    assert load_bundle(tiny_bundle(tmp_path / "out")).preprocessing.in_graph is False


def test_a_path_to_model_onnx_means_its_folder(tmp_path: Path) -> None:
    folder = tiny_bundle(tmp_path / "b")
    assert load_bundle(folder / "model.onnx").root == folder


def test_manifest_declares_task_preprocessing_and_version(tmp_path: Path) -> None:
    folder = tiny_bundle(tmp_path / "b")
    pre = Preprocessing(resize=48, crop=32, in_graph=True)
    manifest = build_manifest(
        folder,
        version="v7",
        task="multilabel",
        preprocessing=pre,
        source={"run_id": "r1"},
        created="2026-01-01T00:00:00Z",
    )
    write_manifest(folder, manifest)
    bundle = load_bundle(folder)
    assert (bundle.version, bundle.task, bundle.preprocessing) == ("v7", "multilabel", pre)
    assert manifest["files"]["model.onnx"] == file_entry(folder / "model.onnx")
    assert "manifest.json" not in manifest["files"]
    assert manifest["labels_sha256"] == file_entry(folder / "labels.json")["sha256"]


def test_the_bundled_sample_loads() -> None:
    bundle = load_bundle(SAMPLE_BUNDLE)
    assert bundle.version == "sample-efficientnet-lite0-imagenet"
    assert len(bundle.labels) == 1000 and bundle.preprocessing.in_graph


def checkpoint_only(root: Path) -> Path:
    (root / "train_artifacts").mkdir(parents=True)
    (root / "train_artifacts" / "model.pt").write_bytes(b"checkpoint")
    return root


def bad(tmp_path: Path, name: str, content: str) -> Path:
    folder = tiny_bundle(tmp_path / "b")
    (folder / name).write_text(content)
    return folder


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: t / "missing", "model path {t}/missing does not exist"),
        (
            lambda t: checkpoint_only(t / "pt"),
            "{t}/pt has AutoML's model.pt but no model.onnx; converting a PyTorch checkpoint to ONNX is a separate "
            "step (`python -m shared convert`), or download train_artifacts/model.onnx from the run",
        ),
        (
            lambda t: (t / "empty").mkdir() or t / "empty",
            "no model.onnx in {t}/empty (looked in ., train_artifacts, outputs, outputs/mlflow-model/artifacts, "
            "mlflow-model/artifacts); download train_artifacts/model.onnx and train_artifacts/labels.json from the "
            "AutoML best child run",
        ),
        (lambda t: bad(t, "labels.json", '["a", "b"'), "{t}/b/labels.json is not valid JSON (line 1, column 10: "),
        (
            lambda t: bad(t, "labels.json", '{"a": 1}'),
            "{t}/b/labels.json must be a non-empty JSON array of class names",
        ),
        (lambda t: bad(t, "labels.json", '["a", "a"]'), "{t}/b/labels.json lists the same class name more than once"),
        (lambda t: bad(t, "manifest.json", "{"), "{t}/b/manifest.json is not valid JSON"),
        (
            lambda t: bad(t, "manifest.json", '{"task": "detection"}'),
            "{t}/b/manifest.json: task must be 'multiclass', 'multilabel', 'object-detection' or "
            "'instance-segmentation', got 'detection'",
        ),
        (lambda t: bad(t, "settings.json", "[1]"), "{t}/b/settings.json must be a JSON object"),
        (
            lambda t: bad(t, "settings.json", '{"valid_resize_size": 200, "valid_crop_size": 224}'),
            "resize size 200 is smaller than crop size 224",
        ),
        (
            lambda t: bad(t, "settings.json", '{"valid_crop_size": "224"}'),
            "{t}/b/settings.json: valid_crop_size must be an integer number of pixels from 16 to 4096, got '224'",
        ),
        (lambda t: bad(t, "model.onnx", "not a model at all"), "{t}/b/model.onnx is not an ONNX model"),
    ],
)
def test_bad_bundles_get_one_clear_message(tmp_path: Path, make: object, message: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(BundleError) as caught:
        load_bundle(path)
    assert str(caught.value).startswith(message.format(t=tmp_path))
