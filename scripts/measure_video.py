"""Measure the two video decoders `keyframes` could use, on the same 1080p files, side by side.

For each video: PyAV decoding key frames only (`skip_frame="NONKEY"`, what `--mode iframes` does), PyAV
decoding every frame (what `--mode scenes` and `--mode interval` need), and OpenCV (`cv2.VideoCapture`, which
must decode every frame to find the key frames: `CAP_PROP_FRAME_TYPE` is known only after decoding). Each run
also encodes the frames it keeps as JPEG (quality 90), as `keyframes` does. Prints seconds per minute of video
and keyframes per minute, the median of `--runs` runs.

Without paths it first writes two one-minute 1080p30 H.264 videos (x264 `veryfast`, CRF 23, film grain, GOP 60
and 250 frames, a new scene every 10 s) from the photos in samples/ into a temporary folder (`--keep DIR`: there).

    .venv/bin/python scripts/measure_video.py [--runs 3] [--keep DIR] [VIDEO ...]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def make_video(path: Path, gop: int, seconds: int = 60, fps: int = 30, crf: int = 23) -> None:
    import av

    photos = sorted(p for p in (ROOT / "samples").iterdir() if p.suffix in {".png", ".jpg"})
    frames = [np.asarray(Image.open(p).convert("RGB").resize((2400, 1500))) for p in photos]
    rng = np.random.default_rng(0)
    grain = [rng.integers(-10, 11, (1080, 1920, 3), dtype=np.int16) for _ in range(5)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": str(crf), "g": str(gop)}
        for i in range(seconds * fps):
            scene = frames[(i // (10 * fps)) % len(frames)]
            x = int((i % (10 * fps)) * 1.5)  # a slow pan, as a hand-held camera
            pixels = np.clip(scene[200:1280, x : x + 1920].astype(np.int16) + grain[i % 5], 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def jpeg(image: Image.Image) -> int:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return len(buffer.getvalue())


def pyav_keyframes(path: Path) -> int:
    import av

    kept = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONKEY"
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            jpeg(frame.to_image())
            kept += 1
    return kept


def pyav_all_frames(path: Path) -> int:
    import av

    kept = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if frame.key_frame:
                jpeg(frame.to_image())
                kept += 1
    return kept


def opencv_keyframes(path: Path) -> int:
    import cv2

    capture = cv2.VideoCapture(str(path))
    kept = 0
    try:
        while capture.grab():
            if int(capture.get(cv2.CAP_PROP_FRAME_TYPE)) == ord("I"):
                ok, bgr = capture.retrieve()
                if ok:
                    jpeg(Image.fromarray(bgr[:, :, ::-1]))
                    kept += 1
    finally:
        capture.release()
    return kept


def duration_s(path: Path) -> float:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        return float(container.duration or 0) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="*", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="write the generated videos here and keep them")
    args = parser.parse_args()
    cpus = os.cpu_count()
    print(f"{platform.processor() or platform.machine()}, {cpus} CPUs, Python {sys.version.split()[0]}")
    methods: list[tuple[str, Callable[[Path], int]]] = [
        ("PyAV, key frames only (skip_frame NONKEY)", pyav_keyframes),
        ("PyAV, every frame decoded", pyav_all_frames),
        ("OpenCV, every frame decoded (grab)", opencv_keyframes),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        videos = list(args.videos)
        if not videos:
            for gop in (60, 250):
                path = (args.keep or Path(tmp)) / f"1080p30-gop{gop}.mp4"
                print(f"writing {path.name} ...", flush=True)
                make_video(path, gop)
                videos.append(path)
        for video in videos:
            minutes = duration_s(video) / 60
            size_mb = video.stat().st_size / 1e6
            print(f"\n{video.name}: {minutes * 60:.1f} s, {size_mb:.1f} MB ({8 * size_mb / (minutes * 60):.1f} Mbit/s)")
            for name, method in methods:
                times = []
                kept = 0
                for _ in range(args.runs):
                    started = time.perf_counter()
                    kept = method(video)
                    times.append(time.perf_counter() - started)
                median = statistics.median(times)
                print(
                    f"  {name:44s} {median / minutes:6.2f} s per minute of video "
                    f"(runs {min(times) / minutes:.2f}-{max(times) / minutes:.2f}), "
                    f"{kept / minutes:.0f} keyframes per minute"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
