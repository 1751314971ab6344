"""Short H.264 videos made in the test from still photos, with PyAV (the decoder `keyframes` uses)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image


def video_from_photos(
    path: Path,
    photos: Sequence[Image.Image],
    *,
    seconds_each: int = 3,
    fps: int = 10,
    size: tuple[int, int] = (640, 480),
    gop_seconds: int | None = None,
) -> Path:
    """An MP4 (H.264, yuv420p) showing each photo for `seconds_each` seconds. Key frames come exactly every
    `gop_seconds` (default `seconds_each`: one at the start of each photo) and nowhere else (x264's scene-cut
    detection is off), so the test knows where they are."""
    import av
    import numpy as np

    gop = (gop_seconds or seconds_each) * fps
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"crf": "16", "preset": "veryfast", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        for photo in photos:
            pixels = np.asarray(photo.convert("RGB").resize(size, Image.Resampling.BICUBIC))
            for _ in range(seconds_each * fps):
                for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
