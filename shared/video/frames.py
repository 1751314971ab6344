"""Keyframes out of one video file, as JPEG, with PyAV (FFmpeg in its wheels, imported lazily).

Three ways to choose the frames (`FrameOptions.mode`):

- `iframes`: the video's own key frames (I-frames), and only those are decoded (`skip_frame="NONKEY"`): the
  encoder put one at every scene cut it saw and at least every GOP (1-10 s in most cameras and phones). The
  fastest by far (docs/video.md has the figures).
- `scenes`: every frame is decoded, shrunk to a 64x36 grayscale thumbnail, and a frame is kept when it differs
  from the frame before it by more than SCENE_CHANGE on average (a cut), plus the first frame.
- `interval`: every frame is decoded and the first frame at or after 0, `every_s`, 2 x `every_s`, ... is kept.

In every mode a frame closer than `min_gap_s` to the last kept one is dropped, and at most `max_frames` are kept.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.core.errors import AppError

MODES = ("iframes", "scenes", "interval")
DEFAULT_MODE = "iframes"
# A cut: the mean absolute difference of two consecutive 64x36 grayscale thumbnails, as a fraction of 255. A slow
# pan or a face moving stays well below; a cut to another shot is usually above 0.2.
SCENE_CHANGE = 0.12
THUMBNAIL = (64, 36)
# The indexer normalizes images to at most 2000 px (normalizedImageMaxWidth/Height); a bigger keyframe costs
# storage and transfer and is shrunk by the indexer anyway.
MAX_SIDE_PX = 2000
JPEG_QUALITY = 90


class VideoError(AppError):
    """One video cannot be read; the message says why, in one line."""


@dataclass(frozen=True)
class FrameOptions:
    """How keyframes are chosen: `mode` (MODES), `every_s` (interval mode, seconds), `min_gap_s` (seconds between
    two kept frames, at least), `max_frames` (per video; None: no limit)."""

    mode: str = DEFAULT_MODE
    every_s: float | None = None
    min_gap_s: float = 0.0
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise VideoError(f"mode {self.mode!r} is unknown: choose from {', '.join(MODES)}")
        if self.mode == "interval" and (self.every_s is None or self.every_s <= 0):
            raise VideoError("--mode interval needs --every SECONDS (more than 0)")
        if self.mode != "interval" and self.every_s is not None:
            raise VideoError("--every only applies with --mode interval")
        if self.min_gap_s < 0:
            raise VideoError(f"--min-gap must be 0 or more seconds, got {self.min_gap_s:g}")
        if self.max_frames is not None and self.max_frames < 1:
            raise VideoError(f"--max-frames must be 1 or more, got {self.max_frames}")

    def describe(self) -> str:
        """The options as they are recorded with the keyframes (a change of options extracts again)."""
        parts = [self.mode]
        if self.every_s is not None:
            parts.append(f"every={self.every_s:g}")
        if self.min_gap_s:
            parts.append(f"min-gap={self.min_gap_s:g}")
        if self.max_frames is not None:
            parts.append(f"max-frames={self.max_frames}")
        return ",".join(parts)


@dataclass(frozen=True)
class Keyframe:
    """One kept frame: `timestamp_ms` from the start of the video, `frame_index` its number in the video (0 is
    the first; in `iframes` mode, computed from the timestamp and the stream's frame rate, since the frames in
    between are never decoded), `jpeg` the encoded image."""

    timestamp_ms: int
    frame_index: int
    jpeg: bytes


def _reason(exc: BaseException) -> str:
    text = " ".join(str(getattr(exc, "strerror", None) or exc).split())
    return (text or exc.__class__.__name__)[:200]


def _jpeg(frame: Any) -> bytes:
    width, height = frame.width, frame.height
    scale = MAX_SIDE_PX / max(width, height)
    if scale < 1:
        frame = frame.reformat(width=max(1, round(width * scale)), height=max(1, round(height * scale)))
    image = frame.to_image()
    rotation = int(getattr(frame, "rotation", 0) or 0)
    if rotation % 360:
        # The display matrix of a phone's portrait video: FFmpeg gives the counterclockwise angle the frame must
        # be turned by to be shown upright, which is PIL's direction.
        image = image.rotate(rotation, expand=True)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _thumbnail(frame: Any) -> Any:
    import numpy as np

    small = frame.reformat(width=THUMBNAIL[0], height=THUMBNAIL[1], format="gray")
    return np.asarray(small.to_ndarray(), dtype=np.float32)


def duration_s(path: Path) -> float | None:
    """The video stream's duration in seconds, when the container says (for progress only)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0] if container.streams.video else None
            if stream is not None and stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return float(container.duration) / 1e6 if container.duration else None
    except (av.error.FFmpegError, OSError):
        return None


def extract(path: Path, options: FrameOptions, on_time: Callable[[float], None] | None = None) -> Iterator[Keyframe]:
    """The keyframes of the video file at `path`, in time order, chosen by `options`. `on_time(seconds)` (optional)
    is called with the position of each decoded frame, for progress. Raises VideoError (one line) when the file
    is no video FFmpeg can read, has no video stream, or breaks off so that nothing at all can be decoded; a video
    that breaks off later yields the keyframes before the break."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"cannot be read as a video ({_reason(exc)})") from None
    with container:
        if not container.streams.video:
            raise VideoError("has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if options.mode == "iframes":
            stream.codec_context.skip_frame = "NONKEY"
        time_base = stream.time_base
        start = stream.start_time if stream.start_time is not None else 0
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        kept = 0
        decoded = 0
        last_kept_ms: int | None = None
        next_due_ms = 0.0
        previous: Any = None
        try:
            for frame in container.decode(stream):
                if frame.pts is not None and time_base is not None:
                    seconds = max(0.0, float((frame.pts - start) * time_base))
                else:
                    seconds = decoded / rate if rate else 0.0
                timestamp_ms = round(seconds * 1000)
                index = decoded if options.mode != "iframes" else (round(seconds * rate) if rate else decoded)
                decoded += 1
                if on_time is not None:
                    on_time(seconds)
                if options.mode == "scenes":
                    thumbnail = _thumbnail(frame)
                    changed = previous is None or float(abs(thumbnail - previous).mean()) / 255 > SCENE_CHANGE
                    previous = thumbnail
                    if not changed:
                        continue
                elif options.mode == "interval":
                    if timestamp_ms < next_due_ms:
                        continue
                    every_ms = (options.every_s or 0) * 1000
                    next_due_ms = (math.floor(timestamp_ms / every_ms) + 1) * every_ms
                if last_kept_ms is not None and timestamp_ms - last_kept_ms < options.min_gap_s * 1000:
                    continue
                yield Keyframe(timestamp_ms=timestamp_ms, frame_index=index, jpeg=_jpeg(frame))
                last_kept_ms = timestamp_ms
                kept += 1
                if options.max_frames is not None and kept >= options.max_frames:
                    return
        except av.error.FFmpegError as exc:
            if kept == 0 and decoded == 0:
                raise VideoError(f"cannot be decoded ({_reason(exc)})") from None
            # A truncated upload: the frames before the damage are still good keyframes.
            return
        if decoded == 0:
            raise VideoError("holds no frame that can be decoded")
