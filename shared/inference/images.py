"""Decode image bytes into RGB the way AutoML reads them, with limits checked before the pixels are decoded."""

from __future__ import annotations

import ctypes
import io
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from shared.core.errors import ImageError
from shared.core.limits import ImageLimits

# We check the header's pixel count against our own limit before decoding anything, so Pillow's global
# decompression-bomb guard (which raises or warns at fixed sizes, before we can say which limit applies)
# is redundant here.
Image.MAX_IMAGE_PIXELS = None

# The formats the skill documents (what Azure AI Search's normalized images and common uploads are). Pillow
# reads many more (ICO, TGA, PCX, SGI, PPM, DDS, EPS, ...), each one more parser exposed to callers.
SUPPORTED_FORMATS = "JPEG, PNG, GIF, BMP, TIFF or WebP"
# Pillow's JPEG reader opens a camera JPEG with extra pictures (Multi-Picture Format) as format "MPO".
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")

# Bytes per pixel of Pillow's in-memory image for each mode (RGB is stored as 4 bytes, RGBX).
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image ready for preprocessing, with the size the encoded file declared."""

    image: Image.Image
    width: int
    height: int
    format: str | None
    draft: bool


@dataclass(frozen=True)
class OpenedImage:
    """An image whose header was read and checked, not yet decoded; `decoded_bytes` is what decoding it to
    RGB will allocate (Pillow's pixel buffers: the decoded mode, plus the RGB copy when it must convert)."""

    image: Image.Image
    width: int
    height: int
    format: str | None
    draft: bool
    decoded_bytes: int


def draft_request(width: int, height: int, short_side: int) -> tuple[int, int]:
    """The smallest size JPEG draft may reduce to and still leave the shorter side >= `short_side`."""
    scale = short_side / min(width, height)
    return math.ceil(width * scale), math.ceil(height * scale)


def _not_accepted(data: bytes) -> ImageError:
    """The error for data that none of ACCEPTED_FORMATS opens, naming its format when Pillow knows it."""
    found = None
    try:
        with Image.open(io.BytesIO(data)) as other:
            found = other.format
    except Exception:  # noqa: BLE001 - only used to name the format in the message
        pass
    if found:
        return ImageError(f"image format {found} is not accepted; send {SUPPORTED_FORMATS}")
    return ImageError(f"data is not an image that can be decoded ({SUPPORTED_FORMATS} expected)")


def open_image(data: bytes, limits: ImageLimits, *, draft_short_side: int | None = None) -> OpenedImage:
    """Read and check the header of encoded bytes without decoding the pixels.

    With `draft_short_side`, a JPEG whose shorter side is at least twice that is set to decode at a reduced
    scale in the DCT domain (Pillow's `draft`), never below `draft_short_side`: several times faster,
    slightly different pixels. Raises ImageError naming the limit or the problem.
    """
    if len(data) > limits.max_bytes:
        raise ImageError(f"image is {len(data):,} bytes; the limit is {limits.max_bytes:,} bytes")
    if not data:
        raise ImageError("image is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise _not_accepted(data) from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for malformed headers
        raise ImageError(f"image header is malformed ({exc.__class__.__name__})") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height:,} pixels; the limit is {limits.max_pixels:,} pixels"
        )
    if min(width, height) < limits.min_side:
        raise ImageError(f"image is {width}x{height}; the shortest side must be at least {limits.min_side} pixels")
    drafted = False
    try:
        if draft_short_side and image.format in ("JPEG", "MPO") and min(width, height) >= 2 * draft_short_side:
            drafted = image.draft("RGB", draft_request(width, height, draft_short_side)) is not None
    except Exception as exc:  # noqa: BLE001 - a malformed JPEG header can fail here too
        raise ImageError(f"image data is truncated or corrupt ({exc.__class__.__name__})") from None
    pixels = image.width * image.height
    decoded = pixels * _PIXEL_BYTES.get(image.mode, 4) + (0 if image.mode == "RGB" else pixels * 4)
    return OpenedImage(
        image=image, width=width, height=height, format=image.format, draft=drafted, decoded_bytes=decoded
    )


def load_rgb(opened: OpenedImage) -> DecodedImage:
    """Decode an opened image (first frame of animations) to RGB as AutoML does (`convert("RGB")`).
    Raises ImageError for truncated or corrupt data."""
    image = opened.image
    try:
        image.load()
        rgb = image if image.mode == "RGB" else image.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data surfaces as OSError, ValueError, ...
        raise ImageError(f"image data is truncated or corrupt ({exc.__class__.__name__})") from None
    return DecodedImage(image=rgb, width=opened.width, height=opened.height, format=opened.format, draft=opened.draft)


def decode_image(data: bytes, limits: ImageLimits, *, draft_short_side: int | None = None) -> DecodedImage:
    """`open_image` then `load_rgb`: header checks, then the pixels. Raises ImageError."""
    return load_rgb(open_image(data, limits, draft_short_side=draft_short_side))


def _load_malloc_trim() -> Callable[[int], int] | None:
    # glibc keeps freed heap blocks of large decodes (RSS stayed at 1-4 GiB until restart, measured);
    # malloc_trim(0) gives them back. musl and other libcs have no malloc_trim: then nothing to do. The
    # process's own symbol table (CDLL(None)) holds the C library's: ctypes.util.find_library would run
    # ldconfig in a subprocess at every start.
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_malloc_trim = _load_malloc_trim()


def release_memory() -> bool:
    """Return freed heap memory to the OS (glibc `malloc_trim(0)`); False where that is not available."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """This process's resident memory (Linux `/proc/self/statm`); None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


class DecodeBudget:
    """The process-wide budget of decoded pixel bytes in flight; decoders wait for their share.

    `hold(n, deadline)` blocks until `n` bytes fit (a request larger than the whole budget waits until it
    can run alone), or raises ImageError once `clock()` passes `deadline`. After the budget falls idle
    having released at least `trim_after_bytes` since the last check, freed memory goes back to the OS if
    the process's `resident()` memory is `trim_after_bytes` or more above what it was after the last trim
    (always, the first time or where it cannot be read). So a burst of large images is given back, and
    steady traffic keeps the memory it reuses at once instead of faulting it in again (measured: trimming
    every third 16-image request cost 1-2% of the skill's throughput). Thread-safe.
    """

    def __init__(
        self,
        capacity_bytes: int,
        *,
        trim_after_bytes: int = 64 << 20,
        clock: Callable[[], float] = time.monotonic,
        resident: Callable[[], int | None] = resident_bytes,
    ) -> None:
        if capacity_bytes < 1:
            raise ValueError("capacity_bytes must be positive")
        self.capacity_bytes = capacity_bytes
        self.trim_after_bytes = trim_after_bytes
        self.clock = clock
        self.resident = resident
        self.in_flight = 0
        self.peak_bytes = 0
        self.trims = 0
        self._released_since_trim = 0
        self._resident_after_trim: int | None = None
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int, deadline: float | None = None, *, budget_s: float = 0.0) -> Iterator[None]:
        share = max(0, min(nbytes, self.capacity_bytes))
        with self._changed:
            while self.in_flight + share > self.capacity_bytes:
                remaining = None if deadline is None else deadline - self.clock()
                if remaining is not None and remaining <= 0:
                    raise ImageError(
                        f"not classified: the batch ran past its {budget_s:g} s budget (SKILL_DEADLINE_SECONDS) "
                        f"waiting for decode memory ({self.capacity_bytes >> 20} MiB in flight at most, "
                        "DECODE_MEMORY_MB); lower the skillset's batchSize or degreeOfParallelism"
                    )
                self._changed.wait(remaining)
            self.in_flight += share
            self.peak_bytes = max(self.peak_bytes, self.in_flight)
        trim = False
        try:
            yield
        finally:
            with self._changed:
                self.in_flight -= share
                self._released_since_trim += nbytes
                if self.in_flight == 0 and self._released_since_trim >= self.trim_after_bytes:
                    self._released_since_trim = 0
                    trim = True
                self._changed.notify_all()
            if trim:
                self._trim_if_grown()

    def _trim_if_grown(self) -> None:
        now, after_last = self.resident(), self._resident_after_trim
        if now is not None and after_last is not None and now - after_last < self.trim_after_bytes:
            return
        if release_memory():
            after = self.resident()
            with self._changed:
                self.trims += 1
                self._resident_after_trim = after
