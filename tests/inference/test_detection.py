"""Object detection: AutoML run folders (torchvision Faster R-CNN/RetinaNet, a YOLOv5-shaped stand-in) served
against a reference implementation of the documented ONNX recipe, on real photos."""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from shared.bundle.detection import DetectionSpec
from shared.bundle.loader import load_bundle
from shared.core.errors import BundleError
from shared.inference.classification import ClassificationModel
from shared.inference.detection import (
    DetectedObject,
    DetectionModel,
    Letterbox,
    letterbox_tensor,
    object_count_tokens,
    objects_data,
    rcnn_objects,
)
from shared.inference.factory import open_model
from tests.conftest import ROOT, SAMPLE_PHOTOS, encode, preloaded_holder
from tests.detection_models import build_mask_rcnn_shaped, build_rcnn, build_yolo

pytestmark = pytest.mark.integration  # see tests/conftest.py

CLASSES = ["can", "carton", "milk_bottle"]
SEED_DOGS = Path("/work/shared/data/seed-dogs")
PHOTO_PATHS = [*SAMPLE_PHOTOS, *sorted(SEED_DOGS.glob("*.jpg"))[:3]]
RCNN_SIZE = (192, 256)  # height, width: small to keep the tests fast; the bench uses AutoML's 600 x 800


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """AutoML-layout run folders, built once per session."""
    root = tmp_path_factory.mktemp("detection-runs")
    h, w = RCNN_SIZE
    build_rcnn(root / "faster_rcnn", "faster_rcnn", CLASSES, height=h, width=w, box_score_thresh=0.05)
    build_rcnn(root / "retinanet", "retinanet", CLASSES, height=h, width=w, box_score_thresh=0.001)
    build_yolo(root / "yolov5", CLASSES, img_size=160)
    return {name: root / name for name in ("faster_rcnn", "retinanet", "yolov5")}


@pytest.fixture(scope="session")
def engines(runs: dict[str, Path]) -> dict[str, DetectionModel]:
    out = {}
    for name, path in runs.items():
        engine = open_model(load_bundle(path), threads=2)
        assert isinstance(engine, DetectionModel)
        out[name] = engine
    return out


@pytest.fixture(scope="session")
def real_photos() -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in PHOTO_PATHS]


# ------------------------------------------------------------------ reference: the documented recipe, literally


@functools.cache
def _session(model: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model / "train_artifacts" / "model.onnx"), providers=["CPUExecutionProvider"])


def reference_rcnn(model: Path, image: Image.Image, family: str) -> list[dict[str, Any]]:
    """Microsoft's `preprocess` + `get_prediction` for Faster R-CNN/RetinaNet, outputs taken by position."""
    session = _session(model)
    classes = json.loads((model / "train_artifacts" / "labels.json").read_text())
    _, _, height_onnx, width_onnx = session.get_inputs()[0].shape
    resized = image.convert("RGB").resize((width_onnx, height_onnx))  # Pillow's default filter, as documented
    np_image = np.array(resized).transpose(2, 0, 1)
    mean_vec = np.array([0.485, 0.456, 0.406])
    std_vec = np.array([0.229, 0.224, 0.225])
    norm_img_data = np.zeros(np_image.shape).astype("float32")
    for i in range(np_image.shape[0]):
        norm_img_data[i, :, :] = (np_image[i, :, :] / 255 - mean_vec[i]) / std_vec[i]
    outputs = session.run(None, {session.get_inputs()[0].name: np.expand_dims(norm_img_data, axis=0)})
    if family == "retinanet":
        boxes, scores, labels = outputs
    else:
        boxes, labels, scores = outputs
    records = []
    for box, label_index, score in zip(boxes, labels, scores, strict=True):
        dims = dict(zip(["topX", "topY", "bottomX", "bottomY"], [c.item() for c in box], strict=True))
        dims["topX"] /= width_onnx
        dims["bottomX"] /= width_onnx
        dims["topY"] /= height_onnx
        dims["bottomY"] /= height_onnx
        records.append({"box": dims, "label": classes[label_index], "score": score.item()})
    return records


def reference_letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """The documented helper's `letterbox(img, new_shape=size, auto=False, scaleup=False)` with OpenCV."""
    import cv2

    shape = img.shape[:2]
    r = min(size / shape[0], size / shape[1])
    r = min(r, 1.0)
    new_unpad = round(shape[1] * r), round(shape[0] * r)
    dw, dh = (size - new_unpad[0]) / 2, (size - new_unpad[1]) / 2
    if shape[::-1] != new_unpad:
        img = cv2.resize(img, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return img, (dw, dh)


def reference_yolo(model: Path, image: Image.Image, conf_thres: float, iou_thres: float) -> list[dict[str, Any]]:
    """The documented YOLOv5 path: letterbox, /255, `output` by name, the helper's non_max_suppression and
    `_convert_to_rcnn_output` (unpad, clip), boxes as fractions of the unpadded image."""
    import torch
    import torchvision

    session = _session(model)
    classes = json.loads((model / "train_artifacts" / "labels.json").read_text())
    size = session.get_inputs()[0].shape[2]
    img, (dw, dh) = reference_letterbox(np.array(image.convert("RGB")), size)
    tensor = np.expand_dims(np.ascontiguousarray(img.transpose(2, 0, 1)), 0).astype(np.float32) / 255.0
    prediction = torch.from_numpy(session.run(["output"], {"input": tensor})[0])
    x = prediction[0][prediction[0][:, 4] > conf_thres]
    if not len(x):
        return []
    x[:, 5:] *= x[:, 4:5]
    box = torch.zeros_like(x[:, :4])
    box[:, 0] = x[:, 0] - x[:, 2] / 2
    box[:, 1] = x[:, 1] - x[:, 3] / 2
    box[:, 2] = x[:, 0] + x[:, 2] / 2
    box[:, 3] = x[:, 1] + x[:, 3] / 2
    conf, j = x[:, 5:].max(1, keepdim=True)
    x = torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]
    keep = torchvision.ops.boxes.nms(x[:, :4] + x[:, 5:6] * 4096, x[:, 4], iou_thres)[:300]
    out = x[keep]
    left, right = round(dw - 0.1), round(dw + 0.1)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    img_w, img_h = size - (left + right), size - (top + bottom)
    out[:, [0, 2]] = (out[:, [0, 2]] - left).clamp(0, img_w)
    out[:, [1, 3]] = (out[:, [1, 3]] - top).clamp(0, img_h)
    return [
        {
            "box": {"topX": r[0] / img_w, "topY": r[1] / img_h, "bottomX": r[2] / img_w, "bottomY": r[3] / img_h},
            "label": classes[int(r[5])],
            "score": float(r[4]),
        }
        for r in out.tolist()
    ]


def _matches(got: DetectedObject, want: dict[str, Any]) -> bool:
    box = want["box"]
    corners = (box["topX"], box["topY"], box["bottomX"], box["bottomY"])
    return (
        got.label == want["label"]
        and abs(got.score - want["score"]) <= 1e-4
        and all(abs(a - b) <= 1e-3 for a, b in zip(got.box, corners, strict=True))
    )


def assert_same_objects(ours: list[DetectedObject], reference: list[dict[str, Any]]) -> None:
    """One-to-one: every object of ours has its own reference object with the same label, a score within
    1e-4 and box corners within 1e-3 of the image size (scores that tie within 1e-4 may swap places)."""
    assert ours, "the comparison must not be vacuous"
    assert [o.score for o in ours] == sorted((o.score for o in ours), reverse=True)
    assert len(ours) == len(reference)
    left = list(reference)
    for got in ours:
        match = next((i for i, want in enumerate(left) if _matches(got, want)), None)
        assert match is not None, f"{got} has no counterpart in the reference"
        left.pop(match)


# ------------------------------------------------------------------------------------------- loading the run


def test_runs_are_recognised_with_family_and_preprocessing(runs: dict[str, Path]) -> None:
    frcnn = load_bundle(runs["faster_rcnn"])
    assert frcnn.task == "object-detection"
    assert frcnn.preprocessing.as_dict() == {
        "detection": {
            "family": "faster_rcnn",
            "height": 192,
            "width": 256,
            "resize": "stretch-bicubic",
            "normalize": True,
            "box_score_thresh": 0.05,
            "nms_iou_thresh": 0.5,
            "box_detections_per_img": 100,
            "model_name": "fasterrcnn_resnet18_fpn",
        }
    }
    assert frcnn.evidence["task"] == "MLmodel finetuning_task, scoring_file_v_1_0_0.py TASK_TYPE"
    retina = load_bundle(runs["retinanet"]).preprocessing.detection
    assert retina is not None and retina.family == "retinanet"
    yolo = load_bundle(runs["yolov5"]).preprocessing.detection
    assert yolo == DetectionSpec(
        family="yolov5",
        height=160,
        width=160,
        normalize=False,
        box_score_thresh=0.1,
        box_detections_per_img=300,
        model_name="yolov5",
    )


def test_outputs_alone_identify_a_detection_model(runs: dict[str, Path], tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.onnx", "labels.json"):
        (bare / name).write_bytes((runs["retinanet"] / "train_artifacts" / name).read_bytes())
    bundle = load_bundle(bare)
    assert bundle.task == "object-detection" and bundle.evidence["task"] == "ONNX outputs"
    assert bundle.preprocessing.detection == DetectionSpec(family="retinanet", height=192, width=256)


def test_a_masks_output_makes_an_instance_segmentation_model(tmp_path: Path) -> None:
    build_mask_rcnn_shaped(tmp_path / "mask", CLASSES)
    bundle = load_bundle(tmp_path / "mask")
    assert bundle.task == "instance-segmentation"
    assert bundle.preprocessing.detection is not None and bundle.preprocessing.detection.family == "mask_rcnn"


def _copy_run(src: Path, dst: Path) -> Path:
    for path in src.rglob("*"):
        if path.is_file():
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return dst


@pytest.mark.parametrize(
    ("family", "change", "message"),
    [
        (
            "faster_rcnn",
            lambda run: (run / "train_artifacts" / "labels.json").write_text(json.dumps(CLASSES)),
            "{run}/train_artifacts/model.onnx is a Faster R-CNN model, whose labels.json must start with '--bg--' "
            "(label id k names labels[k]); use the labels.json of the same run",
        ),
        (
            "retinanet",
            lambda run: [
                (run / "outputs" / "scoring_file_v_1_0_0.py").write_text('TASK_TYPE = "image-classification"'),
                (run / "outputs" / "mlflow-model" / "MLmodel").unlink(),
            ],
            "{run}/train_artifacts/model.onnx has object detection outputs ['boxes', 'scores', 'labels'] but "
            "scoring_file_v_1_0_0.py TASK_TYPE says the task is classification",
        ),
        (
            "yolov5",
            lambda run: (run / "train_artifacts" / "labels.json").write_text(json.dumps(["a", "b"])),
            "{run}/train_artifacts/model.onnx outputs 8 columns per box but labels.json lists 2 labels (YOLOv5 gives "
            "5 + classes); the two files must come from the same run",
        ),
        (
            "yolov5",
            lambda run: (run / "outputs" / "mlflow-model" / "artifacts" / "settings.json").write_text(
                '{"box_score_thresh": 3}'
            ),
            "{run}/outputs/mlflow-model/artifacts/settings.json: box_score_thresh must be a number from 0 to 1, got 3",
        ),
    ],
)
def test_bad_detection_runs_are_refused_clearly(
    runs: dict[str, Path], tmp_path: Path, family: str, change: Any, message: str
) -> None:
    run = _copy_run(runs[family], tmp_path / "run")
    change(run)
    with pytest.raises(BundleError) as caught:
        open_model(load_bundle(run))
    assert str(caught.value) == message.format(run=run)


def test_the_onnx_export_matches_torch(runs: dict[str, Path], real_photos: list[Image.Image]) -> None:
    """Parity guard for the exports the other tests rely on (the legacy exporter, opset 11/13)."""
    import torch

    from shared.inference.detection import letterbox_tensor as lb

    model = build_yolo(runs["yolov5"].parent / "yolo-parity", CLASSES, img_size=160)
    tensor, _ = lb(real_photos[0], 160)
    with torch.no_grad():
        expected = model(torch.from_numpy(tensor))[0].numpy()
    session = ort.InferenceSession(str(runs["yolov5"] / "train_artifacts" / "model.onnx"))
    np.testing.assert_allclose(session.run(["output"], {"input": tensor})[0], expected, rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------------- the documented recipe


@pytest.mark.parametrize("family", ["faster_rcnn", "retinanet"])
def test_rcnn_families_match_the_documented_recipe_on_real_photos(
    family: str, runs: dict[str, Path], engines: dict[str, DetectionModel], real_photos: list[Image.Image]
) -> None:
    for image in real_photos:
        assert_same_objects(engines[family].detect(image), reference_rcnn(runs[family], image, family))


def test_yolo_matches_the_documented_recipe_on_real_photos(
    runs: dict[str, Path], engines: dict[str, DetectionModel], real_photos: list[Image.Image]
) -> None:
    for image in real_photos:
        assert_same_objects(engines["yolov5"].detect(image), reference_yolo(runs["yolov5"], image, 0.1, 0.5))


@pytest.mark.parametrize(
    ("size", "pad", "borders"),
    [
        ((300, 201), Letterbox(dw=0.0, dh=26.5), (26, 27, 0, 0)),  # odd padding: the extra row at the bottom
        ((201, 300), Letterbox(dw=26.5, dh=0.0), (0, 0, 26, 27)),  # and the extra column at the right
        ((100, 60), Letterbox(dw=30.0, dh=50.0), (50, 50, 30, 30)),  # smaller than the input: never upscaled
        ((160, 160), Letterbox(dw=0.0, dh=0.0), (0, 0, 0, 0)),
    ],
)
def test_letterbox_matches_the_documented_helper(
    size: tuple[int, int], pad: Letterbox, borders: tuple[int, int, int, int], real_photos: list[Image.Image]
) -> None:
    image = real_photos[1].resize(size, Image.Resampling.BICUBIC)
    tensor, got = letterbox_tensor(image, 160)
    assert got == pad
    assert (got.top, got.bottom, got.left, got.right) == borders
    expected, (dw, dh) = reference_letterbox(np.array(image), 160)
    assert (dw, dh) == (pad.dw, pad.dh)
    ours = np.rint(tensor[0].transpose(1, 2, 0) * 255).astype(np.int16)
    assert ours.shape == expected.shape == (160, 160, 3)
    np.testing.assert_array_equal(ours, expected)  # OpenCV's fixed-point INTER_LINEAR, bit for bit
    top, bottom, left, right = borders
    if top:
        assert (ours[:top] == 114).all() and (ours[160 - bottom :] == 114).all()
    if left:
        assert (ours[:, :left] == 114).all() and (ours[:, 160 - right :] == 114).all()


def test_bg_label_and_label_ids_index_labels_json_directly() -> None:
    spec = DetectionSpec(family="faster_rcnn", height=100, width=200)
    boxes = np.array([[0, 0, 100, 50], [20, 10, 200, 100], [0, 0, 10, 10]], dtype=np.float32)
    found = rcnn_objects(
        boxes,
        labels_out=np.array([2, 0, 1]),
        scores=np.array([0.6, 0.9, 0.2], dtype=np.float32),
        spec=spec,
        labels=("--bg--", "cat", "dog"),
        threshold=0.3,
        top_k=10,
    )
    assert found == [DetectedObject(label="dog", score=pytest.approx(0.6), box=(0.0, 0.0, 0.5, 0.5))]  # type: ignore[arg-type]
    retina = rcnn_objects(
        boxes[:1],
        labels_out=np.array([0]),
        scores=np.array([0.5], dtype=np.float32),
        spec=DetectionSpec(family="retinanet", height=100, width=200),
        labels=("cat", "dog"),
        threshold=0.3,
        top_k=10,
    )
    assert [o.label for o in retina] == ["cat"]
    with pytest.raises(BundleError, match=r"^the model returned label id 7 but labels.json lists 2 labels$"):
        rcnn_objects(
            boxes[:1],
            labels_out=np.array([7]),
            scores=np.array([0.5], dtype=np.float32),
            spec=spec,
            labels=("cat", "dog"),
            threshold=0.3,
            top_k=10,
        )


def test_threshold_and_top_k(engines: dict[str, DetectionModel], real_photos: list[Image.Image]) -> None:
    engine = engines["yolov5"]
    everything = engine.detect(real_photos[0])
    assert len(everything) > 5 and all(o.score >= 0.1 for o in everything)
    assert [o.score for o in everything] == sorted((o.score for o in everything), reverse=True)
    strict = engine.detect(real_photos[0], threshold=everything[2].score)
    assert strict == everything[:3]
    assert engine.detect(real_photos[0], top_k=2) == everything[:2]


def test_objects_data_shape() -> None:
    objects = [
        DetectedObject("dog", 0.9, (0.1, 0.2, 0.3, 0.4)),
        DetectedObject("cat", 0.8, (0.5, 0.5, 0.6, 0.6)),
        DetectedObject("dog", 0.7, (0.0, 0.0, 1.0, 1.0)),
    ]
    assert objects_data(objects, "v7") == {
        "objects": [
            {"label": "dog", "score": 0.9, "box": {"topX": 0.1, "topY": 0.2, "bottomX": 0.3, "bottomY": 0.4}},
            {"label": "cat", "score": 0.8, "box": {"topX": 0.5, "topY": 0.5, "bottomX": 0.6, "bottomY": 0.6}},
            {"label": "dog", "score": 0.7, "box": {"topX": 0.0, "topY": 0.0, "bottomX": 1.0, "bottomY": 1.0}},
        ],
        "label": "dog",
        "confidence": 0.9,
        "labels": ["dog", "cat"],
        "predictions": [{"label": "dog", "score": 0.9}, {"label": "cat", "score": 0.8}],
        "objectCount": 3,
        "objectCounts": ["dog>=1", "dog>=2", "cat>=1"],
        "modelVersion": "v7",
        "amllabel": "dog",
    }
    assert objects_data([], "v7") == {
        "objects": [],
        "label": None,
        "confidence": None,
        "labels": [],
        "predictions": [],
        "objectCount": 0,
        "objectCounts": [],
        "modelVersion": "v7",
        "amllabel": None,
    }


def _objects(*labels: str) -> list[DetectedObject]:
    return [DetectedObject(label, 0.9 - i / 100, (0.1, 0.1, 0.2, 0.2)) for i, label in enumerate(labels)]


@pytest.mark.parametrize(
    ("labels", "tokens"),
    [
        ((), []),
        (("forklift",), ["forklift>=1"]),
        (("forklift", "person", "forklift"), ["forklift>=1", "forklift>=2", "person>=1"]),
        (("crack",) * 4, ["crack>=1", "crack>=2", "crack>=3", "crack>=4"]),
        (("person", "forklift", "forklift", "person", "person"),
         ["person>=1", "person>=2", "person>=3", "forklift>=1", "forklift>=2"]),
        (("milk bottle", "o'brien"), ["milk bottle>=1", "o'brien>=1"]),
    ],
)  # fmt: skip
def test_object_count_tokens(labels: tuple[str, ...], tokens: list[str]) -> None:
    # One token per object, labels in order of their best score: "at least n of a label" is a string equality.
    assert object_count_tokens(_objects(*labels)) == tokens
    assert objects_data(_objects(*labels), "v1")["objectCounts"] == tokens


# ------------------------------------------------------------------------------------------ the skill contract


def _request(images: list[Any]) -> bytes:
    return json.dumps(
        {"values": [{"recordId": str(i), "data": {"image": img}} for i, img in enumerate(images)]}
    ).encode()


def test_skill_answers_objects_for_every_record(install_service: Any, engines: dict[str, DetectionModel]) -> None:
    import azure.functions as func

    import ClassifySkill

    engine = engines["faster_rcnn"]
    install_service(holder=preloaded_holder(engine))
    photo = Image.open(SAMPLE_PHOTOS[0]).convert("RGB")
    good = base64.b64encode(encode(photo, "PNG")).decode()
    body = _request([good, {"$type": "file", "data": good}, "not base64!", None])
    response = ClassifySkill.main(
        func.HttpRequest(method="POST", url="/api/classify", body=body, params={"topK": "3", "threshold": "0.06"})
    )
    assert response.status_code == 200
    values = {v["recordId"]: v for v in json.loads(response.get_body())["values"]}
    assert set(values) == {"0", "1", "2", "3"}
    expected = engine.detect(photo, threshold=0.06, top_k=3)
    assert expected
    for rid in ("0", "1"):
        data = values[rid]["data"]
        assert values[rid]["errors"] is None
        assert [(o["label"], o["score"]) for o in data["objects"]] == [(o.label, o.score) for o in expected]
        assert data["label"] == data["amllabel"] == expected[0].label and data["confidence"] == expected[0].score
        assert data["modelVersion"] == engine.version
        assert all(o["score"] >= 0.06 for o in data["objects"]) and len(data["objects"]) <= 3
        assert data["objectCount"] == len(expected)
        assert data["objectCounts"] == object_count_tokens(expected)
    assert values["2"] == {
        "recordId": "2",
        "data": {},
        "errors": [{"message": "image data is not valid base64"}],
        "warnings": None,
    }
    assert values["3"]["data"] == {} and values["3"]["errors"]


def test_skill_defaults_come_from_the_model_and_nothing_found_warns(
    install_service: Any, engines: dict[str, DetectionModel]
) -> None:
    from shared.skill import service as app

    engine = engines["yolov5"]
    install_service(holder=preloaded_holder(engine))
    photo = base64.b64encode(encode(Image.open(SAMPLE_PHOTOS[0]).convert("RGB"), "PNG")).decode()
    status, body, _ = app.service().classify(_request([photo]), {})
    assert status == 200
    data = json.loads(body)["values"][0]["data"]
    assert len(data["objects"]) == len(engine.detect(Image.open(SAMPLE_PHOTOS[0]).convert("RGB"))) > 5
    assert min(o["score"] for o in data["objects"]) >= 0.1
    status, body, _ = app.service().classify(_request([photo]), {"threshold": "1"})
    value = json.loads(body)["values"][0]
    assert value["data"]["objects"] == [] and value["data"]["label"] is None
    assert value["warnings"] == [{"message": "low confidence: no object scored at or above the threshold 1"}]


def test_classification_answers_are_unchanged(sample_engine: ClassificationModel) -> None:
    from shared.inference.model import InferenceOptions
    from shared.inference.scheduler import run_batch

    photo = encode(Image.open(SAMPLE_PHOTOS[0]).convert("RGB"), "PNG")
    (outcome,) = run_batch(sample_engine, [lambda: photo], InferenceOptions())
    assert outcome.data is not None and "objects" not in outcome.data
    assert set(outcome.data) == {"label", "confidence", "labels", "predictions", "modelVersion", "amllabel"}


# ------------------------------------------------------------------------------------------- store and refresh


def test_publish_and_serve_a_detection_bundle_through_azurite(
    runs: dict[str, Path], blob_settings: Any, engines: dict[str, DetectionModel]
) -> None:
    from shared.modelstore.blobstore import BlobModelStore
    from shared.skill.service import SkillService

    store = BlobModelStore.from_settings(blob_settings)
    assert store is not None
    store.ensure_container()
    result = store.publish(runs["retinanet"], version="det1", validate=lambda b: open_model(b, threads=1) and None)
    assert result.promoted
    manifest, _ = store.read_manifest("det1") or ({}, "")
    assert manifest["task"] == "object-detection"
    assert manifest["preprocessing"]["detection"]["family"] == "retinanet"
    service = SkillService(blob_settings)
    photo = Image.open(SAMPLE_PHOTOS[2]).convert("RGB")
    status, body, _ = service.classify(_request([base64.b64encode(encode(photo, "PNG")).decode()]), {})
    assert status == 200
    data = json.loads(body)["values"][0]["data"]
    assert data["modelVersion"] == "det1"
    expected = engines["retinanet"].detect(photo)
    assert expected and [o["score"] for o in data["objects"]] == pytest.approx([o.score for o in expected], abs=1e-6)
    assert service.holder.status()["task"] == "object-detection"


def test_refresh_picks_the_detection_run_by_mean_average_precision(
    runs: dict[str, Path], blob_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.core.settings import Settings
    from shared.modelstore.blobstore import BlobModelStore
    from shared.refresh import aml
    from shared.refresh.policy import refresh_model
    from tests.fakeaml import FakeAml, FakeTrackingService, automl_child, training_run

    settings = Settings(
        **{
            **blob_settings.__dict__,
            "aml_subscription_id": "00000000-0000-0000-0000-000000000000",
            "aml_resource_group": "rg-labeling",
            "aml_workspace_name": "ws-labeling",
            "aml_experiment_name": "labeling_Training_od",
        }
    )
    store = BlobModelStore.from_settings(settings)
    assert store is not None
    store.ensure_container()
    # No best-child tag: the trials are compared by their primary metric.
    metric = "mean_average_precision"
    weak = automl_child("AutoML_od_HD_0", runs["yolov5"], 0.41, metric=metric)
    strong = automl_child("AutoML_od_HD_1", runs["faster_rcnn"], 0.63, metric=metric)
    job = training_run("AutoML_od", [weak, strong], primary_metric=metric)
    service = FakeTrackingService({"labeling_Training_od": job}, tmp_path / "empty-artifacts")
    FakeAml(service).install(monkeypatch)
    outcome = refresh_model(settings, store=store)
    assert outcome.candidate == "AutoML_od_HD_1"
    assert outcome.metric == {"name": metric, "value": 0.63}
    assert "AutoML_od_HD_1/outputs/mlflow-model/MLmodel" in service.downloads
    assert not [name for name in service.downloads if name.startswith("AutoML_od_HD_0/")]
    manifest, _ = store.read_manifest(outcome.version or "") or ({}, "")
    assert manifest["task"] == "object-detection"
    assert manifest["preprocessing"]["detection"]["family"] == "faster_rcnn"
    assert aml.OPTIONAL_FILES[-1] == "outputs/mlflow-model/MLmodel"


def test_docs_have_a_detection_page() -> None:
    text = (ROOT / "docs" / "detection.md").read_text()
    assert "objects" in text and "batchSize" in text
    assert "docs/detection.md" in (ROOT / "README.md").read_text()


# ----------------------------------------------------------------------------------------- CLI and dev server


def test_cli_classify_json_table_and_boxes(
    runs: dict[str, Path], engines: dict[str, DetectionModel], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shared.cli import main as cli_main

    photo = SAMPLE_PHOTOS[0]
    expected = engines["yolov5"].detect(Image.open(photo).convert("RGB"))
    assert cli_main(["classify", "--json", "--model", str(runs["yolov5"]), str(photo)]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["file"] == str(photo)
    assert [(o["label"], o["score"]) for o in line["objects"]] == [(o.label, o.score) for o in expected]

    out_dir = tmp_path / "drawn"
    code = cli_main(["classify", "--model", str(runs["yolov5"]), "--top-k", "2", "--boxes", str(out_dir), str(photo)])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[1].split() == ["file", "objects"]
    best = ", ".join(f"{o.label} {o.score:.2f}" for o in expected[:2])
    assert out[2] == f"{photo}  2 objects: {best}"
    drawn = out_dir / (photo.name + ".boxes.png")
    assert capsys.readouterr().err == ""
    with Image.open(drawn) as image:
        assert image.size == Image.open(photo).size
        changed = np.asarray(image.convert("RGB")) != np.asarray(Image.open(photo).convert("RGB"))
    assert changed.any() and changed.mean() < 0.2  # boxes and captions drawn, the photo still there


def test_cli_boxes_names_never_clash_nor_grow_past_255_bytes_and_say_where_they_went(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.cli import main as cli_main

    monkeypatch.chdir(tmp_path)
    photo = SAMPLE_PHOTOS[0].read_bytes()
    for name in ("a/b_c.png", "a_b/c.png", "other/a/b_c.png"):  # one name each as the old `/` -> `_` scheme gave
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(photo)
    deep = tmp_path.joinpath(*(["f" * 200] * 6))  # six folders deep: the whole path is over 1,200 bytes
    deep.mkdir(parents=True)
    (deep / ("p" * 250 + ".png")).write_bytes(photo)
    args = ["classify", "--json", "--model", str(runs["yolov5"]), "--boxes", "out"]
    code = cli_main([*args, "a/b_c.png", "a_b/c.png", "other", str(deep)])
    out, err = capsys.readouterr()
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    drawn = [row["boxes"] for row in rows]
    assert drawn[:3] == ["out/b_c.png.boxes.png", "out/c.png.boxes.png", "out/other/a/b_c.png.boxes.png"]
    long_name = Path(drawn[3]).name
    assert Path(drawn[3]).parent == Path("out") / deep.name
    assert len(long_name.encode()) <= 255 and long_name.endswith(".boxes.png") and long_name.startswith("p" * 200)
    assert all((tmp_path / d).is_file() for d in drawn)
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "out").rglob("*.png")) == sorted(drawn)
    assert err == "wrote 4 drawings with boxes to out/ (the first: out/b_c.png.boxes.png)\n"
    # The same input twice: the second drawing is numbered, not written over the first.
    assert cli_main([*args, "a/b_c.png", "other", "a/b_c.png"]) == 0
    drawn = [json.loads(line)["boxes"] for line in capsys.readouterr().out.splitlines()]
    assert drawn == ["out/b_c.png.boxes.png", "out/other/a/b_c.png.boxes.png", "out/b_c.png.boxes-2.png"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("README.md", "--boxes README.md is a file; give a folder to write the drawings into"),
        ("/proc/x", "--boxes /proc/x: cannot create the folder (No such file or directory)"),
        (
            "x" * 300,
            f"--boxes: cannot use {'x' * 38}...{'x' * 38}: a name in it is 300 bytes long; the limit is 255 "
            "bytes per name",
        ),
    ],
)
def test_cli_boxes_to_a_place_it_cannot_write_is_one_line_before_any_image(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, message: str
) -> None:
    from shared.cli import main as cli_main

    target = str(ROOT / target) if target == "README.md" else target
    message = message.replace("README.md", target)
    assert cli_main(["classify", "--model", str(runs["yolov5"]), "--boxes", target, str(SAMPLE_PHOTOS[0])]) == 1
    assert capsys.readouterr() == ("", f"error: {message}\n")


def test_cli_boxes_with_a_classifier_is_one_error_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from shared.bundle.layout import SAMPLE_BUNDLE
    from shared.cli import main as cli_main

    assert cli_main(["classify", "--boxes", str(tmp_path), str(SAMPLE_PHOTOS[0])]) == 1
    assert capsys.readouterr().err == (
        f"error: --boxes needs an object detection model; {SAMPLE_BUNDLE} is a multiclass classifier\n"
    )


def test_dev_server_serves_a_detection_run_folder(runs: dict[str, Path]) -> None:
    import threading
    import urllib.request

    from shared.cli.devserver import make_server
    from shared.core.settings import Settings
    from shared.skill import service as app

    settings = Settings(model_dir=runs["faster_rcnn"])
    app.reset_service(app.SkillService(settings))
    httpd = make_server(settings, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = httpd.server_address[:2]
        photo = base64.b64encode(encode(Image.open(SAMPLE_PHOTOS[3]).convert("RGB"), "PNG")).decode()
        request = urllib.request.Request(f"http://{host!s}:{port}/api/classify", data=_request([photo]), method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
            value = json.loads(response.read())["values"][0]
        assert value["errors"] is None and value["data"]["objects"]
        assert all(o["score"] >= 0.05 for o in value["data"]["objects"])
    finally:
        httpd.shutdown()
        httpd.server_close()
        app.reset_service(None)


def test_serving_a_detection_model_never_imports_torch(runs: dict[str, Path]) -> None:
    import os
    import subprocess
    import sys

    script = (
        "import base64, json, sys\n"
        "from shared.skill import service as app\n"
        f"photo = base64.b64encode(open({str(SAMPLE_PHOTOS[0])!r}, 'rb').read()).decode()\n"
        "body = json.dumps({'values': [{'recordId': 'a', 'data': {'image': photo}}]}).encode()\n"
        "status, body, _ = app.classify(body, {})\n"
        "assert status == 200 and json.loads(body)['values'][0]['data']['objects'], body[:300]\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'cv2', 'azureml')))\n"
    )
    env = {**os.environ, "AZUREML_MODEL_DIR": str(runs["yolov5"])}
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_hot_swap_from_a_classifier_to_a_detection_model(
    runs: dict[str, Path], blob_settings: Any, tmp_path: Path
) -> None:
    from shared.modelstore.blobstore import BlobModelStore
    from shared.skill.service import SkillService
    from tests.modelfactory import tiny_bundle

    store = BlobModelStore.from_settings(blob_settings)
    assert store is not None
    store.ensure_container()
    store.publish(tiny_bundle(tmp_path / "classifier"), version="cls1")
    service = SkillService(blob_settings)
    photo = base64.b64encode(encode(Image.open(SAMPLE_PHOTOS[0]).convert("RGB"), "PNG")).decode()
    status, body, _ = service.classify(_request([photo]), {})
    before = json.loads(body)["values"][0]["data"]
    assert status == 200 and before["modelVersion"] == "cls1" and "objects" not in before
    store.publish(runs["yolov5"], version="det2")
    service.holder.poll_now()
    status, body, _ = service.classify(_request([photo]), {})
    after = json.loads(body)["values"][0]["data"]
    assert status == 200 and after["modelVersion"] == "det2" and after["objects"]
    assert service.holder.status()["task"] == "object-detection"


def test_a_classifier_whose_output_is_named_output_stays_a_classifier(tmp_path: Path) -> None:
    import onnx

    from tests.modelfactory import tiny_classifier

    path = tiny_classifier(tmp_path / "model.onnx")
    model = onnx.load(str(path))
    old = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = ["output" if name == old else name for name in node.output]
    model.graph.output[0].name = "output"
    onnx.save(model, str(path))
    (tmp_path / "labels.json").write_text(json.dumps(["a", "b", "c", "d"]))
    bundle = load_bundle(tmp_path)
    assert bundle.task == "multiclass" and bundle.preprocessing.detection is None
    assert not isinstance(open_model(bundle), DetectionModel)


def test_past_the_deadline_no_new_detection_starts(engines: dict[str, DetectionModel]) -> None:
    from shared.inference.model import InferenceOptions
    from shared.inference.scheduler import deadline_message, run_batch

    photo = encode(Image.open(SAMPLE_PHOTOS[0]).convert("RGB"), "PNG")
    # Checked before the batch and before each image: the first starts, the others are past 1.0.
    ticks = iter([0.0, 0.0, 5.0, 5.0])
    outcomes = run_batch(
        engines["yolov5"],
        [lambda: photo, lambda: photo, lambda: b"not an image"],
        InferenceOptions(),
        deadline=1.0,
        budget_s=1.0,
        clock=lambda: next(ticks),
    )
    assert outcomes[0].data is not None and outcomes[0].data["objects"]
    assert outcomes[1].errors == (deadline_message(1.0),)
    # Not started either: past the deadline no image is even decoded, so its bad bytes are never looked at.
    assert outcomes[2].errors == (deadline_message(1.0),)


@pytest.mark.parametrize("family", ["faster_rcnn", "yolov5"])
def test_detection_runs_on_the_pool_like_classification(
    family: str, engines: dict[str, DetectionModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler gives detection the pooled schedule: every image prepared and run on the pool's threads,
    one image per run (AutoML's exports take batch 1), the same answers as on the caller's thread."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from shared.inference.model import InferenceOptions
    from shared.inference.scheduler import run_batch

    engine = engines[family]
    photos = [encode(Image.open(p).convert("RGB"), "PNG") for p in PHOTO_PATHS]
    loaders = [lambda data=data: data for data in photos] + [lambda: b"not an image"]
    alone = run_batch(engine, loaders, InferenceOptions())
    runs: list[tuple[str, int]] = []
    real_run = engine.run

    def recorded(batch: Any) -> Any:
        runs.append((threading.current_thread().name, len(batch)))
        return real_run(batch)

    monkeypatch.setattr(engine, "run", recorded)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="pool") as pool:
        pooled = run_batch(engine, loaders, InferenceOptions(), pool=pool, workers=2)
    assert pooled == alone
    assert [o.errors for o in pooled[:-1]] == [()] * len(photos) and pooled[-1].errors
    assert len(runs) == len(photos) and all(name.startswith("pool") and size == 1 for name, size in runs)
