"""Choosing and encoding keyframes from a real H.264 file made in the test (no services)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from shared.video.frames import MAX_SIDE_PX, FrameOptions, VideoError, extract
from tests.conftest import ROOT, SAMPLES
from tests.videos import video_from_photos


@pytest.fixture(scope="module")
def two_photos() -> list[Image.Image]:
    return [Image.open(SAMPLES / "coffee.png").convert("RGB"), Image.open(SAMPLES / "chelsea.png").convert("RGB")]


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory, two_photos: list[Image.Image]) -> Path:
    return video_from_photos(tmp_path_factory.mktemp("video") / "two.mp4", two_photos)


def timestamps(path: Path, **options: object) -> list[tuple[int, int]]:
    return [(f.timestamp_ms, f.frame_index) for f in extract(path, FrameOptions(**options))]  # type: ignore[arg-type]


def test_iframes_are_the_key_frames_at_their_timestamps(video: Path) -> None:
    assert timestamps(video) == [(0, 0), (3000, 30)]


def test_interval_keeps_the_first_frame_at_or_after_each_step(video: Path) -> None:
    assert timestamps(video, mode="interval", every_s=1.0) == [(t, t // 100) for t in range(0, 6000, 1000)]
    assert timestamps(video, mode="interval", every_s=2.5) == [(0, 0), (2500, 25), (5000, 50)]


def test_scenes_finds_the_cut_between_the_photos(tmp_path: Path, two_photos: list[Image.Image]) -> None:
    # One key frame every 6 s: the cut at 3 s is no key frame, so only decoding every frame finds it.
    path = video_from_photos(tmp_path / "long-gop.mp4", two_photos, gop_seconds=6)
    assert timestamps(path) == [(0, 0)]
    assert timestamps(path, mode="scenes") == [(0, 0), (3000, 30)]


def test_min_gap_and_max_frames(video: Path) -> None:
    assert timestamps(video, mode="interval", every_s=1.0, min_gap_s=1.5) == [(0, 0), (2000, 20), (4000, 40)]
    assert timestamps(video, mode="interval", every_s=1.0, max_frames=2) == [(0, 0), (1000, 10)]


def test_keyframes_are_jpegs_of_the_photos(video: Path, two_photos: list[Image.Image]) -> None:
    import numpy as np

    frames = list(extract(video, FrameOptions()))
    for frame, photo in zip(frames, two_photos, strict=True):
        image = Image.open(io.BytesIO(frame.jpeg))
        assert image.format == "JPEG"
        assert image.size == (640, 480)
        expected = np.asarray(photo.resize((640, 480)), dtype=np.float32)
        assert np.abs(np.asarray(image.convert("RGB"), dtype=np.float32) - expected).mean() < 6


def test_a_large_frame_is_shrunk_to_the_indexers_image_size(tmp_path: Path, two_photos: list[Image.Image]) -> None:
    path = video_from_photos(tmp_path / "big.mp4", two_photos[:1], seconds_each=1, size=(2560, 1440))
    [frame] = extract(path, FrameOptions())
    assert Image.open(io.BytesIO(frame.jpeg)).size == (MAX_SIDE_PX, 1125)


def test_a_portrait_phone_video_is_turned_upright(tmp_path: Path) -> None:
    import av
    import numpy as np

    # Stored landscape, left half white, with the display matrix a phone writes for portrait (turn 90° clockwise):
    # shown upright, the white half is on top.
    pixels = np.zeros((240, 320, 3), np.uint8)
    pixels[:, :160] = 255
    path = tmp_path / "portrait.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.set_display_rotation(-90)
        for _ in range(10):
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    [frame] = extract(path, FrameOptions())
    image = np.asarray(Image.open(io.BytesIO(frame.jpeg)).convert("L"), dtype=np.float32)
    assert image.shape == (320, 240)
    assert image[:140].mean() > 240 and image[-140:].mean() < 15


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "cannot be read as a video"),
        (b"this is not a video at all " * 40, "cannot be read as a video"),
    ],
)
def test_what_is_no_video_is_one_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError, match=message) as caught:
        list(extract(path, FrameOptions()))
    assert "\n" not in str(caught.value)


def test_a_file_without_a_video_stream(tmp_path: Path) -> None:
    import av
    import numpy as np

    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        frame.rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(VideoError, match="has no video stream"):
        list(extract(path, FrameOptions()))


def test_a_truncated_stream_yields_the_keyframes_before_the_damage(
    tmp_path: Path, two_photos: list[Image.Image]
) -> None:
    # MPEG-TS (a camera's or a broadcast's recording) starts its clock above 0 and can be cut anywhere.
    path = video_from_photos(tmp_path / "two.ts", two_photos)
    assert timestamps(path) == [(0, 0), (3000, 30)]
    cut = tmp_path / "cut.ts"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 5])
    assert timestamps(cut) == [(0, 0)]


def test_a_truncated_mp4_without_its_index_is_one_error(video: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    with pytest.raises(VideoError, match="cannot be read as a video"):
        list(extract(cut, FrameOptions()))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "interval"}, "--mode interval needs --every SECONDS"),
        ({"mode": "iframes", "every_s": 2.0}, "--every only applies with --mode interval"),
        ({"mode": "shots"}, "mode 'shots' is unknown: choose from iframes, scenes, interval"),
    ],
)
def test_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(VideoError, match=message):
        FrameOptions(**options)  # type: ignore[arg-type]


@pytest.mark.integration
def test_the_skill_and_the_function_folders_never_import_the_decoder() -> None:
    code = (
        "import sys, ClassifySkill, ExtractionSkill, Health\n"
        "import shared.skill.service, shared.modelstore.prefetch\n"
        "bad = sorted(m for m in sys.modules if m == 'av' or m.startswith(('av.', 'shared.video', 'cv2')))\n"
        "print(bad)\n"
    )
    found = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"
