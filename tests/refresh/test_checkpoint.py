"""AutoML model.pt checkpoints become ONNX bundles that serve exactly like their PyTorch networks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.bundle.loader import load_bundle
from shared.cli import main as cli_main
from shared.inference.factory import open_model
from shared.refresh.checkpoint import ARCHITECTURES, OPSET, CheckpointError, convert_checkpoint, read_checkpoint
from tests.checkpoints import automl_checkpoint
from tests.conftest import ROOT, SAMPLE_PHOTOS
from tests.modelfactory import write_labels

pytestmark = pytest.mark.integration  # see tests/conftest.py

torch = pytest.importorskip("torch")

LABELS = ["bird", "cat", "dog", "fish", "horse"]


def torch_logits(model_pt: Path, batch: np.ndarray) -> np.ndarray:
    from shared.refresh.checkpoint import load_network

    network = load_network(read_checkpoint(model_pt), model_pt)
    with torch.no_grad():
        return np.asarray(network(torch.from_numpy(batch)).numpy())


@pytest.mark.parametrize(
    ("model_name", "crop", "resize"),
    [(name, 224, 256) for name in ARCHITECTURES] + [("vits16r224", 192, 220)],
)
def test_every_architecture_converts_and_matches_torch(tmp_path: Path, model_name: str, crop: int, resize: int) -> None:
    model_pt = automl_checkpoint(tmp_path / "model.pt", model_name, LABELS, crop=crop, resize=resize)
    out = convert_checkpoint(model_pt, tmp_path / "bundle")
    bundle = load_bundle(out)
    assert bundle.labels == tuple(LABELS) and bundle.task == "multiclass" and bundle.opset == OPSET
    assert (bundle.preprocessing.resize, bundle.preprocessing.crop, bundle.preprocessing.in_graph) == (
        resize,
        crop,
        False,
    )
    manifest = bundle.manifest or {}
    assert manifest["source"]["model_name"] == model_name and manifest["metric"] == {"name": "accuracy", "value": 0.875}
    engine = open_model(bundle)
    batch = engine.preprocess_batch([Image.open(p).convert("RGB") for p in SAMPLE_PHOTOS])
    expected = torch_logits(model_pt, batch)
    got = engine.logits(batch)
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(expected).std()) > 0.1  # real outputs, not a vacuous zero-vs-zero comparison
    assert float(np.abs(got - expected).max()) / scale <= 1e-4
    # The embedding: recorded in the manifest, in the file, and equal to the head's input as torch computes it.
    assert manifest["embedding"]["output"] == "embedding"
    assert bundle.embedding is not None and bundle.embedding.in_file
    assert manifest["embedding"]["dimensions"] == engine.embedding_dimensions  # type: ignore[attr-defined]
    assert_embeddings_match(engine, model_pt, batch)


def head_input(model_pt: Path, batch: np.ndarray) -> np.ndarray:
    """The input of the network's final nn.Linear for `batch`, caught with a forward hook (not from any graph)."""
    from shared.refresh.checkpoint import load_network

    network = load_network(read_checkpoint(model_pt), model_pt)
    head = [m for m in network.modules() if isinstance(m, torch.nn.Linear)][-1]
    caught: list[np.ndarray] = []
    handle = head.register_forward_hook(lambda module, args, output: caught.append(args[0].detach().numpy()))
    with torch.no_grad():
        network(torch.from_numpy(batch))
    handle.remove()
    features = caught[-1].reshape(len(batch), -1).astype(np.float64)
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def assert_embeddings_match(engine: object, model_pt: Path, batch: np.ndarray) -> None:
    view = engine.with_embedding()  # type: ignore[attr-defined]
    got = np.array([embedding for _, embedding in view.run(batch)], dtype=np.float64)
    expected = head_input(model_pt, batch)
    assert got.shape == expected.shape and float(np.abs(expected).std()) > 1e-3
    assert float(np.abs(got - expected).max()) <= 1e-4


@pytest.mark.parametrize("model_name", ["resnet18", "mobilenetv2", "vits16r224"])
def test_automls_own_onnx_export_in_a_run_folder_gets_its_embedding_when_loaded(
    tmp_path: Path, model_name: str
) -> None:
    model_pt = automl_checkpoint(tmp_path / "model.pt", model_name, LABELS)
    run = export_twin(model_pt, tmp_path / "run")
    bundle = load_bundle(run)
    assert bundle.embedding is not None and not bundle.embedding.in_file  # added in memory, the file unchanged
    engine = open_model(bundle)
    batch = engine.preprocess_batch([Image.open(p).convert("RGB") for p in SAMPLE_PHOTOS])  # type: ignore[attr-defined]
    assert_embeddings_match(engine, model_pt, batch)


def test_multilabel_specs_give_a_multilabel_bundle(tmp_path: Path) -> None:
    model_pt = automl_checkpoint(tmp_path / "model.pt", "resnet18", LABELS, multilabel=True, score=0.61)
    bundle = load_bundle(convert_checkpoint(model_pt, tmp_path / "bundle"))
    assert bundle.task == "multilabel"
    assert (bundle.manifest or {})["metric"] == {"name": "iou", "value": 0.61}
    engine = open_model(bundle)
    (result,) = engine.classify([Image.open(SAMPLE_PHOTOS[0]).convert("RGB")], top_k=5)
    scores = dict(result.predictions)
    assert set(result.labels) == {label for label, score in scores.items() if score >= 0.5}


def export_twin(model_pt: Path, run: Path) -> Path:
    """The same network as AutoML itself would export it: train_artifacts/model.onnx + labels.json."""
    from shared.refresh.checkpoint import load_network

    network = load_network(read_checkpoint(model_pt), model_pt)
    (run / "train_artifacts").mkdir(parents=True)
    torch.onnx.export(
        network,
        (torch.zeros(1, 3, 224, 224),),
        str(run / "train_artifacts" / "model.onnx"),
        dynamo=False,
        opset_version=16,
        input_names=["input1"],
        output_names=["output1"],
        dynamic_axes={"input1": {0: "batch"}, "output1": {0: "batch"}},
    )
    write_labels(run / "train_artifacts" / "labels.json", LABELS)
    return run


def classify_json(model: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, float]]:
    assert cli_main(["classify", "--json", "--top-k", "5", "--model", str(model), str(ROOT / "samples")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return {Path(line["file"]).name: {p["label"]: p["score"] for p in line["predictions"]} for line in lines}


def test_a_run_with_only_model_pt_serves_like_its_onnx_twin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, blob_settings: object
) -> None:
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "cache"))
    pt_run = tmp_path / "pt-run"
    model_pt = automl_checkpoint(pt_run / "train_artifacts" / "model.pt", "mobilenetv2", LABELS)
    twin = export_twin(model_pt, tmp_path / "onnx-run")

    converted = classify_json(pt_run, capsys)
    expected = classify_json(twin, capsys)
    assert converted.keys() == expected.keys() and len(converted) == len(SAMPLE_PHOTOS)
    for name in expected:
        assert converted[name].keys() == expected[name].keys()
        assert max(abs(converted[name][k] - expected[name][k]) for k in expected[name]) < 1e-5
    cached = list((tmp_path / "cache" / "converted").iterdir())
    assert len(cached) == 1 and (cached[0] / "model.onnx").is_file()
    classify_json(pt_run, capsys)  # the second time reuses the converted bundle
    assert list((tmp_path / "cache" / "converted").iterdir()) == cached

    # publish converts too, and the skill then serves it from the store with the same scores.
    from shared.core.settings import Settings
    from shared.skill.service import SkillService

    settings: Settings = blob_settings  # type: ignore[assignment]
    assert settings.blob_connection_string is not None
    monkeypatch.setenv("MODEL_BLOB_CONNECTION_STRING", settings.blob_connection_string)
    monkeypatch.setenv("MODEL_BLOB_CONTAINER", settings.blob_container)
    assert cli_main(["publish", str(pt_run), "--version", "from-pt"]) == 0
    assert capsys.readouterr().out == "published from-pt (uploaded); current.json now points to it\n"
    import base64

    body = json.dumps(
        {
            "values": [
                {"recordId": p.name, "data": {"image": base64.b64encode(p.read_bytes()).decode()}}
                for p in SAMPLE_PHOTOS
            ]
        }
    ).encode()
    status, raw, _ = SkillService(settings).classify(body, {"topK": "5"})
    assert status == 200
    for value in json.loads(raw)["values"]:
        assert value["data"]["modelVersion"] == "from-pt"
        scores = {p["label"]: p["score"] for p in value["data"]["predictions"]}
        assert max(abs(scores[k] - expected[value["recordId"]][k]) for k in LABELS) < 1e-5


def test_the_http_path_serves_a_converted_model_without_torch(tmp_path: Path) -> None:
    model_pt = automl_checkpoint(tmp_path / "model.pt", "resnet18", LABELS)
    bundle = convert_checkpoint(model_pt, tmp_path / "bundle")
    script = (
        "import base64, json, sys, azure.functions as func\n"
        "import ClassifySkill\n"
        "image = base64.b64encode(open('samples/coffee.png', 'rb').read()).decode()\n"
        "body = json.dumps({'values': [{'recordId': '1', 'data': {'image': image}}]}).encode()\n"
        "r = ClassifySkill.main(func.HttpRequest(method='POST', url='/api/classify', body=body))\n"
        "data = json.loads(r.get_body())['values'][0]['data']\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm', 'azureml'))\n"
        "print(json.dumps({'status': r.status_code, 'version': data['modelVersion'], 'heavy': heavy}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_")} | {"AZUREML_MODEL_DIR": str(bundle)}
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=120
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["status"] == 200 and result["version"].startswith("m-") and result["heavy"] == []


def write_bare_state_dict(path: Path) -> Path:
    network = __import__("torchvision").models.resnet18(weights=None, num_classes=5)
    torch.save(network.state_dict(), path)
    return path


def write_automl_wrapper(path: Path) -> Path:
    """A pickle that, like AutoML <= 1.24's wrapper, needs a module that is not installed here."""
    module = types.ModuleType("azureml_automl_dnn_vision_fake")

    class ModelWrapper:
        pass

    ModelWrapper.__module__ = module.__name__
    ModelWrapper.__qualname__ = "ModelWrapper"
    module.ModelWrapper = ModelWrapper  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        torch.save({"model": ModelWrapper(), "state": {}}, path)
    finally:
        del sys.modules[module.__name__]
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            write_bare_state_dict,
            "{p} is a bare state_dict, as AutoML <= 1.24 wrote them: converting it needs the AutoML package; "
            "export ONNX from AML instead (train_artifacts/model.onnx)",
        ),
        (
            write_automl_wrapper,
            "{p} was written by an AutoML version (<= 1.24) whose checkpoint needs the AutoML package itself "
            "(azureml_automl_dnn_vision_fake); export ONNX from AML instead (train_artifacts/model.onnx)",
        ),
        (
            lambda p: automl_checkpoint(p, "resnet18", LABELS) and _rename_model(p, "efficientnet_b7"),
            "{p}: unknown model_name 'efficientnet_b7'; supported: mobilenetv2, resnest101, resnest50, resnet101, "
            "resnet152, resnet18, resnet34, resnet50, seresnext, vitb16r224, vitl16r224, vits16r224",
        ),
        (
            lambda p: automl_checkpoint(p, "resnet18", LABELS) and _relabel(p, LABELS[:4]),
            "{p}: the weights do not fit resnet18 with 4 classes: size mismatch for fc.weight: copying a param with "
            "shape torch.Size([5, 512]) from checkpoint, the shape in current model is torch.Size([4, 512]).",
        ),
        (
            lambda p: p.write_bytes(b"not a checkpoint") and p,
            "{p} is not a readable PyTorch checkpoint (UnpicklingError)",
        ),
    ],
)
def test_clear_errors(tmp_path: Path, make: object, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = make(tmp_path / "model.pt")  # type: ignore[operator]
    with pytest.raises(CheckpointError) as caught:
        convert_checkpoint(path, tmp_path / "out")
    assert str(caught.value) == message.format(p=tmp_path / "model.pt")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".converting-*"))
    assert cli_main(["convert", str(path), str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"error: {message.format(p=tmp_path / 'model.pt')}\n"


def _rename_model(path: Path, name: str) -> Path:
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["model_name"] = name
    torch.save(checkpoint, path)
    return path


def _relabel(path: Path, labels: list[str]) -> Path:
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["specs"]["labels"] = labels
    torch.save(checkpoint, path)
    return path


def test_convert_command_reports_what_it_made(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_pt = automl_checkpoint(tmp_path / "model.pt", "resnet18", LABELS, crop=224, resize=256)
    assert cli_main(["convert", str(model_pt), str(tmp_path / "bundle")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        f"converted {model_pt} to {tmp_path / 'bundle'}: multiclass, 5 labels, 256/224 px, opset 14, "
    )
    assert out.rstrip().endswith(f"of the logits' scale; version {load_bundle(tmp_path / 'bundle').version}")


def test_an_unusable_model_onnx_falls_back_to_model_pt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    automl_checkpoint(run / "train_artifacts" / "model.pt", "resnet18", LABELS)
    (run / "train_artifacts" / "model.onnx").write_bytes(b"a failed export")
    write_labels(run / "train_artifacts" / "labels.json", LABELS)
    scores = classify_json(run, capsys)
    assert len(scores) == len(SAMPLE_PHOTOS) and all(set(s) == set(LABELS) for s in scores.values())
    assert len(list((tmp_path / "cache" / "converted").iterdir())) == 1
