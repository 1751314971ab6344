"""Instance segmentation: an AutoML Mask R-CNN run folder (torchvision, exported with AutoML's call) served
against Microsoft's documented ONNX recipe on real photos, through the skill, the store, refresh and the CLI."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from shared.bundle.loader import load_bundle
from shared.core.errors import BundleError
from shared.inference.factory import open_model
from shared.inference.model import ImageInfo, InferenceOptions
from shared.inference.scheduler import run_batch
from shared.inference.segmentation import SegmentationModel
from tests.conftest import ROOT, SAMPLE_PHOTOS, encode, preloaded_holder
from tests.detection_models import build_mask_rcnn, build_mask_rcnn_shaped, build_rcnn
from tests.inference.test_polygons import fill_polygons, iou

pytestmark = pytest.mark.integration  # see tests/conftest.py

CLASSES = ["can", "carton", "milk_bottle"]
SEED_DOGS = Path("/work/shared/data/seed-dogs")
PHOTO_PATHS = [*SAMPLE_PHOTOS, *sorted(SEED_DOGS.glob("*.jpg"))[:3]]
HEIGHT, WIDTH = 192, 256  # small to keep the tests fast; the bench uses AutoML's 600 x 800
DETECTIONS = 10


@pytest.fixture(scope="session")
def seg_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """An AutoML instance segmentation run folder, exported once per session, and its torch module."""
    folder = tmp_path_factory.mktemp("segmentation-run") / "mask_rcnn"
    module = build_mask_rcnn(folder, CLASSES, height=HEIGHT, width=WIDTH, detections=DETECTIONS, proposals=100)
    return folder, module


@pytest.fixture(scope="session")
def seg_run(seg_build: tuple[Path, Any]) -> Path:
    return seg_build[0]


@pytest.fixture(scope="session")
def seg_model(seg_run: Path) -> SegmentationModel:
    model = open_model(load_bundle(seg_run), threads=2)
    assert isinstance(model, SegmentationModel)
    return model


@pytest.fixture(scope="session")
def recipe(seg_run: Path) -> dict[str, Any]:
    """Microsoft's recipe, run once per photo: {path: (image size, records with the recipe's masks)}."""
    import cv2

    session = ort.InferenceSession(str(seg_run / "train_artifacts" / "model.onnx"), providers=["CPUExecutionProvider"])
    classes = json.loads((seg_run / "train_artifacts" / "labels.json").read_text())
    out = {}
    for path in PHOTO_PATHS:
        image = Image.open(path).convert("RGB")
        resized = image.resize((WIDTH, HEIGHT))  # the documented `preprocess`: Pillow's default filter
        np_image = np.array(resized).transpose(2, 0, 1)
        mean_vec = np.array([0.485, 0.456, 0.406])
        std_vec = np.array([0.229, 0.224, 0.225])
        norm = np.zeros(np_image.shape).astype("float32")
        for i in range(np_image.shape[0]):
            norm[i, :, :] = (np_image[i, :, :] / 255 - mean_vec[i]) / std_vec[i]
        boxes, labels, scores, masks = session.run(None, {session.get_inputs()[0].name: norm[None]})
        records = []
        for box, label_index, score, mask in zip(boxes, labels, scores, masks, strict=True):
            # `display_detections`: the mask resized to the image (nearest) and cut at the threshold.
            full = cv2.resize(mask[0, :, :, None], (image.width, image.height), 0, 0, interpolation=cv2.INTER_NEAREST)
            records.append(
                {
                    "box": (box[0] / WIDTH, box[1] / HEIGHT, box[2] / WIDTH, box[3] / HEIGHT),
                    "label": classes[label_index],
                    "score": float(score),
                    "mask": full > 0.5,
                }
            )
        out[str(path)] = (image.size, records)
    return out


# ------------------------------------------------------------------------------------------- loading the run


def test_the_run_is_recognised_as_instance_segmentation(seg_run: Path) -> None:
    bundle = load_bundle(seg_run)
    assert bundle.task == "instance-segmentation"
    assert bundle.labels[0] == "--bg--"
    assert bundle.preprocessing.as_dict() == {
        "detection": {
            "family": "mask_rcnn",
            "height": HEIGHT,
            "width": WIDTH,
            "resize": "stretch-bicubic",
            "normalize": True,
            "box_score_thresh": 0.05,
            "nms_iou_thresh": 0.5,
            "box_detections_per_img": DETECTIONS,
            "model_name": "maskrcnn_resnet18_fpn",
            "mask_pixel_score_threshold": 0.5,
            "max_number_of_polygon_points": 100,
        }
    }
    assert bundle.evidence["family"] == "mask_rcnn (ONNX outputs ['boxes', 'labels', 'scores', 'masks'])"
    # AutoML's export leaves the input size dynamic: the height is settings.json's min_size.
    assert ort.InferenceSession(str(bundle.model_path)).get_inputs()[0].shape == ["batch", "channel", "height", "width"]


def _copy(src: Path, dst: Path) -> Path:
    for path in src.rglob("*"):
        if path.is_file():
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return dst


def test_files_that_disagree_on_the_task_are_refused(seg_run: Path, tmp_path: Path) -> None:
    run = _copy(seg_run, tmp_path / "said-detection")
    (run / "outputs" / "scoring_file_v_1_0_0.py").write_text('TASK_TYPE = "image-object-detection"\n')
    (run / "outputs" / "mlflow-model" / "MLmodel").unlink()
    with pytest.raises(BundleError) as caught:
        load_bundle(run)
    assert str(caught.value) == (
        f"{run}/train_artifacts/model.onnx has Mask R-CNN's outputs ['boxes', 'labels', 'scores', 'masks'] but "
        "scoring_file_v_1_0_0.py TASK_TYPE says the task is object detection; the files must come from the same run"
    )
    build_rcnn(tmp_path / "frcnn", "faster_rcnn", CLASSES, height=64, width=64)
    (tmp_path / "frcnn" / "outputs" / "mlflow-model" / "MLmodel").unlink()
    (tmp_path / "frcnn" / "outputs" / "scoring_file_v_1_0_0.py").write_text(
        'TASK_TYPE = "image-instance-segmentation"\n'
    )
    with pytest.raises(BundleError, match=r"is an instance segmentation model per scoring_file_v_1_0_0.py TASK_TYPE"):
        load_bundle(tmp_path / "frcnn")


def test_a_mask_rcnn_without_the_background_label_is_refused(tmp_path: Path) -> None:
    build_mask_rcnn_shaped(tmp_path / "mask", CLASSES)
    (tmp_path / "mask" / "train_artifacts" / "labels.json").write_text(json.dumps(CLASSES))
    with pytest.raises(BundleError, match=r"is a Mask R-CNN model, whose labels.json must start with '--bg--'"):
        load_bundle(tmp_path / "mask")


# ------------------------------------------------------------------------------------- the documented recipe


def test_the_onnx_export_matches_torch(seg_build: tuple[Path, Any], seg_model: SegmentationModel) -> None:
    """The exported graph answers what the torch module does: the same objects, boxes within 1e-3 pixels,
    scores within 1e-4, masks within 1e-3."""
    import torch

    folder, module = seg_build
    session = ort.InferenceSession(str(folder / "train_artifacts" / "model.onnx"), providers=["CPUExecutionProvider"])
    for path in PHOTO_PATHS[:2]:
        tensor = np.empty((1, *seg_model.input_shape), dtype=np.float32)
        seg_model.prepare(Image.open(path).convert("RGB"), tensor[0])
        with torch.no_grad():
            want = [t.numpy() for t in module(torch.from_numpy(tensor))]
        got = session.run(None, {"input": tensor})
        assert len(got[0]) == len(want[0]) == DETECTIONS
        np.testing.assert_allclose(got[0], want[0], atol=1e-3)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[2], want[2], atol=1e-4)
        np.testing.assert_allclose(got[3], want[3], atol=1e-3)


def test_answers_match_the_recipe_on_real_photos(seg_model: SegmentationModel, recipe: dict[str, Any]) -> None:
    """Boxes, labels and scores within 1e-4 of the recipe's; each polygon's filled area against the recipe's
    mask: IoU at least 0.8 on every mask of 100 pixels or more, 0.9 in the median."""
    ious = []
    for path in PHOTO_PATHS:
        (width, height), records = recipe[str(path)]
        image = Image.open(path).convert("RGB")
        ours = seg_model.segment(image, threshold=0.0)
        assert len(ours) == len(records) == DETECTIONS
        for got, want in zip(ours, records, strict=True):  # both best first
            assert got.label == want["label"]
            assert abs(got.score - want["score"]) <= 1e-4
            assert np.allclose(got.box, np.clip(want["box"], 0, 1), atol=1e-4)
            if want["mask"].sum() >= 100:
                ious.append(iou(fill_polygons([list(p) for p in got.polygon], width, height), want["mask"]))
            elif not want["mask"].any():
                assert got.polygon == ()
    assert len(ious) >= 30, "the comparison must not be vacuous"
    assert min(ious) >= 0.8
    assert float(np.median(ious)) >= 0.9


def test_polygons_respect_the_point_limit_and_are_fractions(seg_model: SegmentationModel) -> None:
    image = Image.open(PHOTO_PATHS[-1]).convert("RGB")
    objects = seg_model.segment(image, threshold=0.0)
    assert any(len(p) // 2 > 20 for o in objects for p in o.polygon)
    for obj in objects:
        for polygon in obj.polygon:
            assert len(polygon) % 2 == 0 and 3 <= len(polygon) // 2 <= 100
            assert all(0.0 <= v <= 1.0 for v in polygon)


def test_only_the_answer_is_kept_between_prepare_and_result(seg_model: SegmentationModel) -> None:
    """The (n, 1, H, W) float masks are reduced in `prepare` (under the decode budget, which counts the
    masks output at its largest) to packed pixels above the threshold."""
    image = Image.open(PHOTO_PATHS[0]).convert("RGB")
    tensor = np.empty((1, *seg_model.input_shape), dtype=np.float32)
    found = seg_model.prepare(image, tensor[0])
    floats = len(found.instances) * HEIGHT * WIDTH * 4
    assert found.instances and found.nbytes * 32 <= floats
    assert seg_model.prepare_bytes(image.width, image.height) >= DETECTIONS * HEIGHT * WIDTH * 4
    assert seg_model.run(tensor) == [None]


def test_the_scheduler_serves_segmentation_like_any_task(seg_model: SegmentationModel) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from shared.inference.images import DecodeBudget

    photos = [encode(Image.open(p).convert("RGB"), "PNG") for p in PHOTO_PATHS[:3]]
    loaders = [lambda data=data: data for data in photos] + [lambda: b"not an image"]
    alone = run_batch(seg_model, loaders, InferenceOptions(threshold=0.2))
    budget = DecodeBudget(64 << 20)
    with ThreadPoolExecutor(max_workers=2) as pool:
        pooled = run_batch(seg_model, loaders, InferenceOptions(threshold=0.2), pool=pool, workers=2, budget=budget)
    assert pooled == alone
    assert pooled[-1].errors and all(o.data is not None for o in pooled[:-1])
    assert budget.in_flight == 0 and budget.peak_bytes <= budget.capacity_bytes
    data = pooled[0].data
    assert data is not None and data["objects"] and all(o["score"] >= 0.2 for o in data["objects"])
    assert [json.loads(s) for s in data["polygons"]] == [o["polygon"] for o in data["objects"]]


# ------------------------------------------------------------------------------------------------- the skill


def _request(images: list[Any]) -> bytes:
    return json.dumps(
        {"values": [{"recordId": str(i), "data": {"image": img}} for i, img in enumerate(images)]}
    ).encode()


def test_skill_answers_objects_with_polygons(install_service: Any, seg_model: SegmentationModel) -> None:
    import azure.functions as func

    import ClassifySkill

    install_service(holder=preloaded_holder(seg_model))
    photo = Image.open(PHOTO_PATHS[-1]).convert("RGB")
    good = base64.b64encode(encode(photo, "PNG")).decode()
    body = _request([good, "not base64!"])
    response = ClassifySkill.main(
        func.HttpRequest(method="POST", url="/api/classify", body=body, params={"topK": "3", "threshold": "0.1"})
    )
    assert response.status_code == 200
    values = {v["recordId"]: v for v in json.loads(response.get_body())["values"]}
    expected = seg_model.segment(photo, threshold=0.1, top_k=3)
    data = values["0"]["data"]
    assert values["0"]["errors"] is None and len(data["objects"]) == len(expected) == 3
    assert [o["polygon"] for o in data["objects"]] == [[list(p) for p in o.polygon] for o in expected]
    assert set(data["objects"][0]) == {"label", "score", "box", "polygon"}
    assert data["polygons"] == [json.dumps(o["polygon"], separators=(",", ":")) for o in data["objects"]]
    assert data["objectCount"] == 3 and data["modelVersion"] == seg_model.version
    assert values["1"]["errors"] == [{"message": "image data is not valid base64"}]


def test_publish_and_serve_a_segmentation_bundle_through_azurite(
    seg_run: Path, blob_settings: Any, seg_model: SegmentationModel
) -> None:
    from shared.modelstore.blobstore import BlobModelStore
    from shared.skill.service import SkillService

    store = BlobModelStore.from_settings(blob_settings)
    assert store is not None
    store.ensure_container()
    result = store.publish(seg_run, version="seg1", validate=lambda b: open_model(b, threads=1) and None)
    assert result.promoted
    manifest, _ = store.read_manifest("seg1") or ({}, "")
    assert manifest["task"] == "instance-segmentation"
    assert manifest["preprocessing"]["detection"]["family"] == "mask_rcnn"
    service = SkillService(blob_settings)
    photo = Image.open(PHOTO_PATHS[0]).convert("RGB")
    status, body, _ = service.classify(_request([base64.b64encode(encode(photo, "PNG")).decode()]), {})
    assert status == 200
    data = json.loads(body)["values"][0]["data"]
    assert data["modelVersion"] == "seg1"
    expected = seg_model.segment(photo)
    assert expected and [o["polygon"] for o in data["objects"]] == [[list(p) for p in o.polygon] for o in expected]
    assert service.holder.status()["task"] == "instance-segmentation"


def test_refresh_picks_the_segmentation_run_by_mean_average_precision(
    seg_run: Path, blob_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.core.settings import Settings
    from shared.modelstore.blobstore import BlobModelStore
    from shared.refresh.policy import refresh_model
    from tests.fakeaml import FakeAml, FakeTrackingService, automl_child, training_run

    experiment = "labeling_Training_is"
    settings = Settings(
        **{
            **blob_settings.__dict__,
            "aml_subscription_id": "00000000-0000-0000-0000-000000000000",
            "aml_resource_group": "rg-labeling",
            "aml_workspace_name": "ws-labeling",
            "aml_experiment_name": experiment,
        }
    )
    store = BlobModelStore.from_settings(settings)
    assert store is not None
    store.ensure_container()
    # No best-child tag: the trials are compared by the task's primary metric.
    weak = automl_child("AutoML_is_HD_0", seg_run, 0.31, metric="mean_average_precision")
    strong = automl_child("AutoML_is_HD_1", seg_run, 0.52, metric="mean_average_precision")
    runs = training_run("AutoML_is", [weak, strong])
    FakeAml(FakeTrackingService({experiment: runs}, tmp_path / "empty-artifacts")).install(monkeypatch)
    outcome = refresh_model(settings, store=store)
    assert outcome.candidate == "AutoML_is_HD_1"
    assert outcome.metric == {"name": "mean_average_precision", "value": 0.52}
    manifest, _ = store.read_manifest(outcome.version or "") or ({}, "")
    assert manifest["task"] == "instance-segmentation"
    assert manifest["preprocessing"]["detection"]["family"] == "mask_rcnn"


# ----------------------------------------------------------------------------------------- CLI and dev server


def test_cli_classify_json_and_boxes_draw_translucent_masks(
    seg_run: Path, seg_model: SegmentationModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shared.cli import main as cli_main

    photo = PHOTO_PATHS[-1]
    original = Image.open(photo).convert("RGB")
    expected = seg_model.segment(original, top_k=1)
    assert expected and expected[0].polygon
    assert cli_main(["classify", "--json", "--model", str(seg_run), "--top-k", "1", str(photo)]) == 0
    line = json.loads(capsys.readouterr().out)
    assert [o["polygon"] for o in line["objects"]] == [[list(p) for p in expected[0].polygon]]

    out_dir = tmp_path / "drawn"
    assert cli_main(["classify", "--model", str(seg_run), "--top-k", "1", "--boxes", str(out_dir), str(photo)]) == 0
    capsys.readouterr()
    with Image.open(out_dir / (photo.name + ".boxes.png")) as drawn:
        pixels = np.asarray(drawn.convert("RGB")).astype(int)
    before = np.asarray(original).astype(int)
    inside = fill_polygons([list(p) for p in expected[0].polygon], original.width, original.height)
    x1, y1, x2, y2 = (round(v * s) for v, s in zip(expected[0].box, (*original.size, *original.size), strict=True))
    away_from_box = np.ones_like(inside)
    away_from_box[max(0, y1 - 20) : y2 + 20, max(0, x1 - 20) : x2 + 20] = False
    tinted = np.abs(pixels - before).sum(axis=2) > 0
    assert tinted[inside].mean() > 0.95  # the mask is drawn over its pixels ...
    assert not tinted[away_from_box & ~inside].any()  # ... and nowhere else but the box and caption
    # ... translucent: the photo still shows through (its detail survives under the tint).
    assert np.corrcoef(pixels[inside][:, 1], before[inside][:, 1])[0, 1] > 0.5


def test_dev_server_serves_a_segmentation_run_folder(seg_run: Path) -> None:
    import threading
    import urllib.request

    from shared.cli.devserver import make_server
    from shared.core.settings import Settings
    from shared.skill import service as app

    settings = Settings(model_dir=seg_run)
    app.reset_service(app.SkillService(settings))
    httpd = make_server(settings, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = httpd.server_address[:2]
        photo = base64.b64encode(encode(Image.open(PHOTO_PATHS[0]).convert("RGB"), "PNG")).decode()
        request = urllib.request.Request(f"http://{host!s}:{port}/api/classify", data=_request([photo]), method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200
            value = json.loads(response.read())["values"][0]
        assert value["errors"] is None and value["data"]["objects"]
        assert all("polygon" in o for o in value["data"]["objects"]) and len(value["data"]["polygons"]) == len(
            value["data"]["objects"]
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
        app.reset_service(None)


def test_result_of_an_object_without_mask_pixels_has_an_empty_polygon(seg_model: SegmentationModel) -> None:
    from shared.inference.segmentation import Instance, Segmentation

    found = Segmentation((Instance("can", 0.9, (0.1, 0.1, 0.2, 0.2), None),))
    outcome = seg_model.result(None, found, ImageInfo(640, 480, "PNG", False), InferenceOptions())
    assert outcome.data is not None
    assert outcome.data["objects"][0]["polygon"] == [] and outcome.data["polygons"] == ["[]"]


def test_docs_have_a_segmentation_page() -> None:
    text = (ROOT / "docs" / "segmentation.md").read_text()
    assert "polygon" in text and "search-setup --segmentation" in text
    assert "docs/segmentation.md" in (ROOT / "README.md").read_text()
