"""Decode image bytes into RGB the way AutoML reads them, with limits checked before the pixels are decoded."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from shared.errors import ImageError

# We check the header's pixel count against our own limit before decoding anything, so Pillow's global
# decompression-bomb guard (which raises or warns at fixed sizes, before we can say which limit applies)
# is redundant here.
Image.MAX_IMAGE_PIXELS = None

SUPPORTED_FORMATS = "JPEG, PNG, GIF, BMP, TIFF or WebP"


@dataclass(frozen=True)
class ImageLimits:
    """max_bytes: encoded size; max_pixels: width x height from the header; min_side: shortest side, pixels."""

    max_bytes: int = 30 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 8


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image ready for preprocessing, with the size the encoded file declared."""

    image: Image.Image
    width: int
    height: int
    format: str | None
    draft: bool


def draft_request(width: int, height: int, short_side: int) -> tuple[int, int]:
    """The smallest size JPEG draft may reduce to and still leave the shorter side >= `short_side`."""
    scale = short_side / min(width, height)
    return math.ceil(width * scale), math.ceil(height * scale)


def decode_image(data: bytes, limits: ImageLimits, *, draft_short_side: int | None = None) -> DecodedImage:
    """Decode encoded bytes (first frame of animations) and convert to RGB as AutoML does (`convert("RGB")`).

    With `draft_short_side`, a JPEG whose shorter side is at least twice that is decoded at a reduced
    scale in the DCT domain (Pillow's `draft`), never below `draft_short_side`: several times faster,
    slightly different pixels. Raises ImageError naming the limit or the problem.
    """
    if len(data) > limits.max_bytes:
        raise ImageError(f"image is {len(data):,} bytes; the limit is {limits.max_bytes:,} bytes")
    if not data:
        raise ImageError("image is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(f"data is not an image that can be decoded ({SUPPORTED_FORMATS} expected)") from None
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
        if draft_short_side and image.format == "JPEG" and min(width, height) >= 2 * draft_short_side:
            drafted = image.draft("RGB", draft_request(width, height, draft_short_side)) is not None
        image.load()
        rgb = image if image.mode == "RGB" else image.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data surfaces as OSError, ValueError, ...
        raise ImageError(f"image data is truncated or corrupt ({exc.__class__.__name__})") from None
    return DecodedImage(image=rgb, width=width, height=height, format=image.format, draft=drafted)
