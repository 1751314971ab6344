"""`classify --json` on downloaded AutoML run folders reproduces AutoML's own probabilities.

The folders are built here the way AutoML's best child run uploads them (train_artifacts/model.onnx and
labels.json, outputs/scoring_file_v_1_0_0.py, optionally outputs/mlflow-model/artifacts/settings.json),
from a torchvision MobileNetV2 with a 5-class head. "AutoML's probabilities" are what AutoML's validation
transform and the PyTorch network give: torchvision Resize/CenterCrop/ToTensor/Normalize, then softmax
(multi-class) or sigmoid (multi-label).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, SAMPLE_PHOTOS
from tests.modelfactory import scoring_file, write_labels

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from torchvision import transforms  # noqa: E402

LABELS = sorted(["daisy", "dandelion", "rose", "sunflower", "tulip"])
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class NormalizeInGraph(torch.nn.Module):  # type: ignore[misc]
    """AutoML's enable_onnx_normalization: the exported graph takes raw 0-255 pixels."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x / 255.0 - self.mean) / self.std)


def mobilenet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torchvision.models.mobilenet_v2(weights=None, num_classes=len(LABELS))
    # Spread the random head's logits so probabilities (and the 0.5 multi-label cutoff) are not all alike.
    torch.nn.init.normal_(net.classifier[1].weight, 0.0, 0.2)
    torch.nn.init.normal_(net.classifier[1].bias, 0.0, 1.0)
    return net.eval()


def export_run(
    root: Path, net: torch.nn.Module, *, crop: int, task_type: str, resize: int, settings_json: bool
) -> Path:
    onnx_path = root / "train_artifacts" / "model.onnx"
    onnx_path.parent.mkdir(parents=True)
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, crop, crop),),
        str(onnx_path),
        dynamo=False,
        opset_version=13,
        input_names=["input1"],
        output_names=["output1"],
        dynamic_axes={"input1": {0: "batch"}, "output1": {0: "batch"}},
    )
    write_labels(root / "train_artifacts" / "labels.json", LABELS)
    sizes = {"valid_resize_size": resize, "valid_crop_size": crop, "train_crop_size": crop}
    if settings_json:
        scoring_file(root / "outputs" / "scoring_file_v_1_0_0.py", task_type, {})
        settings = root / "outputs" / "mlflow-model" / "artifacts" / "settings.json"
        settings.parent.mkdir(parents=True)
        settings.write_text(json.dumps(sizes))
    else:
        scoring_file(root / "outputs" / "scoring_file_v_1_0_0.py", task_type, sizes)
    return root


def automl_probabilities(net: torch.nn.Module, *, resize: int, crop: int, multilabel: bool, raw: bool) -> np.ndarray:
    steps = [transforms.Resize(resize), transforms.CenterCrop(crop), transforms.ToTensor()]
    if not raw:
        steps.append(transforms.Normalize(MEAN, STD))
    pipeline = transforms.Compose(steps)
    batch = torch.stack([pipeline(Image.open(p).convert("RGB")) for p in SAMPLE_PHOTOS])
    if raw:
        batch = batch * 255.0
    with torch.no_grad():
        logits = net(batch)
    scores = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)
    return np.asarray(scores.numpy(), dtype=np.float64)


CASES = {
    "multiclass": {"seed": 1, "task_type": "image-classification", "in_graph": False, "resize": 256, "crop": 224},
    "multilabel": {
        "seed": 2,
        "task_type": "image-classification-multilabel",
        "in_graph": False,
        "resize": 256,
        "crop": 224,
    },
    "normalization_in_graph": {
        "seed": 3,
        "task_type": "image-classification",
        "in_graph": True,
        "resize": 288,
        "crop": 256,
    },
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_classify_json_reproduces_automl_probabilities(tmp_path: Path, case: str) -> None:
    spec = CASES[case]
    net = mobilenet(int(spec["seed"]))  # type: ignore[call-overload]
    exported = NormalizeInGraph(net).eval() if spec["in_graph"] else net
    multilabel = spec["task_type"].endswith("multilabel")  # type: ignore[union-attr]
    crop, resize = int(spec["crop"]), int(spec["resize"])  # type: ignore[call-overload]
    run = export_run(
        tmp_path / "run",
        exported,
        crop=crop,
        task_type=str(spec["task_type"]),
        resize=resize,
        settings_json=bool(spec["in_graph"]),
    )
    expected = automl_probabilities(
        exported, resize=resize, crop=crop, multilabel=multilabel, raw=bool(spec["in_graph"])
    )

    completed = subprocess.run(
        [sys.executable, "-m", "shared", "classify", "--json", "--top-k", "5", "--model", str(run), "samples"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    lines = [json.loads(line) for line in completed.stdout.splitlines()]
    assert [line["file"] for line in lines] == [f"samples/{p.name}" for p in SAMPLE_PHOTOS]
    for line, want in zip(lines, expected, strict=True):
        got = {p["label"]: p["score"] for p in line["predictions"]}
        assert set(got) == set(LABELS)
        assert np.abs(np.array([got[label] for label in LABELS]) - want).max() < 1e-4
        best = LABELS[int(np.argmax(want))]
        assert line["confidence"] == pytest.approx(float(want.max()), abs=1e-4)
        if multilabel:
            assert set(line["labels"]) == {LABELS[i] for i in np.flatnonzero(want >= 0.5)}
            assert line["label"] == (best if want.max() >= 0.5 else None)
        else:
            assert line["label"] == line["amllabel"] == best and line["labels"] == [best]
        assert line["modelVersion"].startswith("m-")
    if multilabel:
        # The random head must give a real mix, or the cutoff would be tested vacuously.
        counts = {len(line["labels"]) for line in lines}
        assert len(counts) > 1 or counts - {0, 5}
