from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.bundle.loader import Preprocessing, load_bundle
from shared.core.errors import BundleError
from shared.inference.classification import (
    EXACT_RESIZE_MAX_PIXELS,
    preprocess,
    resized_size,
    sigmoid,
    softmax,
)
from shared.inference.factory import open_model
from tests.conftest import ROOT
from tests.modelfactory import tiny_bundle, tiny_classifier, write_labels

torch = pytest.importorskip("torch")
transforms = pytest.importorskip("torchvision.transforms")


def torchvision_reference(image: Image.Image, resize: int, crop: int) -> np.ndarray:
    pipeline = transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(crop),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    return np.asarray(pipeline(image).numpy())


@pytest.mark.parametrize(("resize", "crop"), [(256, 224), (288, 256), (224, 224), (480, 384)])
def test_preprocess_equals_torchvision_on_real_photos(photos: list[Image.Image], resize: int, crop: int) -> None:
    pre = Preprocessing(resize=resize, crop=crop)
    for photo in photos:
        for image in (photo, photo.resize((2000, 1500)), photo.resize((257, 1000)), photo.resize((999, 301))):
            ours = preprocess(image, pre)
            ref = torchvision_reference(image, resize, crop)
            assert ours.shape == ref.shape == (3, crop, crop)
            assert np.array_equal(ours, ref), f"max diff {np.abs(ours - ref).max()} at {image.size}"


def test_preprocess_in_graph_keeps_raw_pixels(photos: list[Image.Image]) -> None:
    raw = preprocess(photos[0], Preprocessing(resize=256, crop=224, in_graph=True))
    normalized = preprocess(photos[0], Preprocessing(resize=256, crop=224))
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    assert raw.dtype == np.float32
    assert raw.min() >= 0 and raw.max() <= 255 and np.array_equal(raw, np.round(raw))
    assert np.allclose((raw / 255 - mean) / std, normalized, atol=1e-6)


def test_resized_size_truncates_the_longer_side_like_torchvision() -> None:
    assert resized_size(451, 300, 256) == (384, 256)
    assert resized_size(300, 451, 256) == (256, 384)
    assert resized_size(2000, 1500, 256) == (341, 256)


def test_softmax_and_sigmoid_match_torch() -> None:
    logits = np.random.default_rng(1).normal(0, 5, size=(3, 7)).astype(np.float32)
    assert np.allclose(softmax(logits), torch.softmax(torch.from_numpy(logits), 1).numpy(), atol=1e-7)
    assert np.allclose(sigmoid(logits), torch.sigmoid(torch.from_numpy(logits)).numpy(), atol=1e-7)


def test_one_batched_run_equals_single_runs(tmp_path: Path, photos: list[Image.Image]) -> None:
    engine = open_model(load_bundle(tiny_bundle(tmp_path / "m", crop=32)))
    together = engine.classify(photos, top_k=4)
    alone = [engine.classify([p], top_k=4)[0] for p in photos]
    for a, b in zip(together, alone, strict=True):
        assert a.label == b.label
        assert [s for _, s in a.predictions] == pytest.approx([s for _, s in b.predictions], abs=1e-6)


def test_top_k_threshold_and_labels_multiclass(tmp_path: Path, photos: list[Image.Image]) -> None:
    engine = open_model(load_bundle(tiny_bundle(tmp_path / "m", classes=6)))
    (result,) = engine.classify(photos[:1], top_k=3)
    scores = [s for _, s in result.predictions]
    assert len(result.predictions) == 3 and scores == sorted(scores, reverse=True)
    assert result.label == result.predictions[0][0] and result.labels == (result.label,)
    assert result.confidence == scores[0]
    (strict,) = engine.classify(photos[:1], top_k=100, threshold=1.0)
    assert strict.label is None and strict.labels == () and len(strict.predictions) == 6


def test_multilabel_uses_sigmoid_and_every_label_over_threshold(tmp_path: Path, photos: list[Image.Image]) -> None:
    folder = tiny_bundle(tmp_path / "m", classes=5)
    (folder / "manifest.json").write_text('{"task": "multilabel"}')
    engine = open_model(load_bundle(folder))
    batch = engine.preprocess_batch(photos)
    expected = sigmoid(engine.logits(batch))
    results = engine.classify(photos, top_k=5)
    for row, result in zip(expected, results, strict=True):
        want = {engine.labels[i] for i in np.flatnonzero(row >= 0.5)}
        assert set(result.labels) == want
        assert dict(result.predictions) == pytest.approx({engine.labels[i]: row[i] for i in range(5)})


def test_threads_setting_is_applied(tmp_path: Path) -> None:
    engine = open_model(load_bundle(tiny_bundle(tmp_path / "m")), threads=1)
    assert engine.session.get_session_options().intra_op_num_threads == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": 1}, "is not an image classifier: input 'input1' is tensor(float) ['batch', 1, 32, 32]"),
        ({"rank": 2}, "is not an image classifier: input 'input1' is tensor(float) ['batch', 16]"),
    ],
)
def test_not_an_image_classifier(tmp_path: Path, kwargs: dict[str, int], message: str) -> None:
    tiny_classifier(tmp_path / "model.onnx", **kwargs)  # type: ignore[arg-type]
    write_labels(tmp_path / "labels.json", ["a", "b", "c", "d"])
    with pytest.raises(BundleError) as caught:
        open_model(load_bundle(tmp_path))
    assert message in str(caught.value)


def test_label_count_must_equal_output_width(tmp_path: Path) -> None:
    tiny_classifier(tmp_path / "model.onnx", classes=4)
    write_labels(tmp_path / "labels.json", ["a", "b", "c"])
    with pytest.raises(BundleError) as caught:
        open_model(load_bundle(tmp_path))
    assert str(caught.value) == (
        f"{tmp_path / 'model.onnx'} outputs 4 classes but labels.json lists 3; "
        "the two files must come from the same run"
    )


def test_garbage_onnx_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(io.BytesIO(b"\x08\x07garbage that is not protobuf" * 3).getvalue())
    write_labels(tmp_path / "labels.json", ["a"])
    with pytest.raises(BundleError) as caught:
        open_model(load_bundle(tmp_path))
    assert "model.onnx" in str(caught.value)
    assert "Traceback" not in str(caught.value)


@pytest.mark.parametrize("size", [(40, 4000), (4000, 40)])
def test_preprocess_stays_exact_up_to_the_resize_bound(photos: list[Image.Image], size: tuple[int, int]) -> None:
    image = photos[0].resize(size)
    assert resized_size(*size, 256)[0] * resized_size(*size, 256)[1] <= EXACT_RESIZE_MAX_PIXELS
    assert np.array_equal(
        preprocess(image, Preprocessing(resize=256, crop=224)), torchvision_reference(image, 256, 224)
    )


@pytest.mark.parametrize(
    ("size", "resize", "crop"), [((16, 2000), 256, 224), ((2000, 16), 256, 224), ((20, 3000), 480, 384)]
)
def test_thin_images_resize_only_the_centre_within_two_levels_of_torchvision(
    photos: list[Image.Image], size: tuple[int, int], resize: int, crop: int
) -> None:
    image = photos[1].resize(size)
    new_w, new_h = resized_size(*size, resize)
    assert new_w * new_h > EXACT_RESIZE_MAX_PIXELS  # past the bound: the centre-window path
    pre = Preprocessing(resize=resize, crop=crop, in_graph=True)
    reference = pipeline_raw(image, resize, crop)
    ours = preprocess(image, pre)
    assert ours.shape == reference.shape == (3, crop, crop)
    assert np.abs(ours - reference).max() <= 2.0  # raw 0-255 levels


def pipeline_raw(image: Image.Image, resize: int, crop: int) -> np.ndarray:
    pipeline = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop), transforms.PILToTensor()])
    return np.asarray(pipeline(image).numpy(), dtype=np.float32)


def test_a_thin_image_costs_the_crop_not_gigabytes() -> None:
    # 16x200,000 pixels (a 10 kB PNG) resized whole to a 256-pixel shorter side is 256x3,200,000: 3.3 GB.
    # Under a 1.5 GiB address-space limit the full resize raises MemoryError; the centre window does not.
    script = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))\n"
        "from PIL import Image\n"
        "from shared.bundle.loader import Preprocessing\n"
        "from shared.inference.classification import preprocess\n"
        "out = preprocess(Image.new('RGB', (16, 200_000), (200, 100, 50)), Preprocessing(resize=256, crop=224))\n"
        "print(out.shape, float(out[0, 0, 0]))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-500:]
    assert completed.stdout.split(")")[0] == "(3, 224, 224"
