from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from shared.core.errors import ImageError
from shared.core.limits import ImageLimits, default_decode_budget_bytes, instance_memory_bytes
from shared.inference.images import (
    DecodeBudget,
    decode_image,
    draft_request,
    open_image,
    release_memory,
    resident_bytes,
)
from tests.conftest import encode, jpeg_bytes

LIMITS = ImageLimits(max_bytes=5_000_000, max_pixels=4_000_000, min_side=16)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    from tests.conftest import SAMPLE_PHOTOS

    return Image.open(SAMPLE_PHOTOS[1]).convert("RGB").resize((120, 80))


@pytest.mark.parametrize(
    ("fmt", "mode", "params"),
    [
        ("JPEG", "RGB", {}),
        ("JPEG", "L", {}),
        ("JPEG", "CMYK", {}),
        ("PNG", "RGB", {}),
        ("PNG", "RGBA", {}),
        ("PNG", "P", {}),
        ("PNG", "LA", {}),
        ("PNG", "I;16", {}),
        ("GIF", "P", {}),
        ("BMP", "RGB", {}),
        ("TIFF", "RGB", {}),
        ("TIFF", "CMYK", {}),
        ("WEBP", "RGB", {"quality": 90}),
    ],
)
def test_formats_and_modes_become_rgb_like_automl(
    photo: Image.Image, fmt: str, mode: str, params: dict[str, object]
) -> None:
    source = photo.convert("I").point(lambda v: v * 200).convert("I;16") if mode == "I;16" else photo.convert(mode)
    data = encode(source, fmt, **params)
    decoded = decode_image(data, LIMITS)
    assert decoded.image.mode == "RGB" and decoded.image.size == (120, 80)
    assert (decoded.width, decoded.height, decoded.format) == (120, 80, fmt)
    # AutoML reads every image with Image.open(...).convert("RGB"); we must give the same pixels.
    expected = Image.open(io.BytesIO(data)).convert("RGB")
    assert np.array_equal(np.asarray(decoded.image), np.asarray(expected))


def test_animated_gif_uses_the_first_frame(photo: Image.Image) -> None:
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(buffer.getvalue(), LIMITS)
    first = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    assert np.array_equal(np.asarray(decoded.image), np.asarray(first))


def test_draft_decodes_large_jpegs_at_reduced_scale_never_below_the_resize(large_jpeg: bytes) -> None:
    fast = decode_image(large_jpeg, ImageLimits(), draft_short_side=256)
    exact = decode_image(large_jpeg, ImageLimits())
    assert fast.draft and not exact.draft
    assert exact.image.size == (2000, 1500)
    assert min(fast.image.size) >= 256 and fast.image.size[0] < 2000
    assert (fast.width, fast.height) == (2000, 1500)
    assert draft_request(2000, 1500, 256) == (342, 256)


def test_draft_is_skipped_below_twice_the_resize_and_for_png(photo: Image.Image) -> None:
    small = jpeg_bytes(photo.resize((500, 400)))
    assert not decode_image(small, LIMITS, draft_short_side=256).draft
    png = encode(photo.resize((1200, 1000)), "PNG")
    assert not decode_image(png, LIMITS, draft_short_side=256).draft


def truncated(photo: Image.Image) -> bytes:
    data = jpeg_bytes(photo.resize((400, 300)))
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: b"", "image is empty (0 bytes)"),
        (
            lambda p: b"%PDF-1.7 not an image",
            "data is not an image that can be decoded (JPEG, PNG, GIF, BMP, TIFF or WebP expected)",
        ),
        (lambda p: b"x" * 5_000_001, "image is 5,000,001 bytes; the limit is 5,000,000 bytes"),
        (
            lambda p: encode(Image.new("L", (4000, 1001)), "PNG"),
            "image is 4000x1001 = 4,004,000 pixels; the limit is 4,000,000 pixels",
        ),
        (
            lambda p: encode(Image.new("RGB", (15, 300)), "PNG"),
            "image is 15x300; the shortest side must be at least 16 pixels",
        ),
        (truncated, "image data is truncated or corrupt (OSError)"),
    ],
)
def test_bad_images_get_a_message_naming_the_problem(photo: Image.Image, make: object, message: str) -> None:
    with pytest.raises(ImageError) as caught:
        decode_image(make(photo), LIMITS)  # type: ignore[operator]
    assert str(caught.value) == message


def test_decompression_bomb_is_refused_from_the_header_alone() -> None:
    # A 20000x20000 PNG header compresses to a few hundred kB; decoding it would need 1.2 GB of RGB.
    bomb = encode(Image.new("1", (20000, 20000)), "PNG")
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageError, match="400,000,000 pixels; the limit is 4,000,000 pixels"):
        decode_image(bomb, LIMITS)


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [("ICO", "RGBA"), ("TGA", "RGB"), ("PCX", "RGB"), ("SGI", "RGB"), ("PPM", "RGB"), ("DDS", "RGBA"), ("EPS", "RGB")],
)
def test_formats_outside_the_documented_ones_are_refused_by_name(fmt: str, mode: str) -> None:
    data = encode(Image.new(mode, (32, 32), (1, 2, 3)), fmt)
    with pytest.raises(ImageError) as caught:
        decode_image(data, LIMITS)
    assert str(caught.value) == f"image format {fmt} is not accepted; send JPEG, PNG, GIF, BMP, TIFF or WebP"


@pytest.mark.parametrize(
    ("mode", "size", "expected"),
    [
        ("RGB", (100, 50), 100 * 50 * 4),  # Pillow keeps RGB as 4 bytes a pixel; no conversion
        ("RGBA", (7000, 7000), 7000 * 7000 * 8),  # the RGBA pixels, then their RGB copy: about 392 MB
        ("L", (16, 200_000), 16 * 200_000 * 5),
    ],
)
def test_opened_image_knows_what_decoding_it_will_allocate(mode: str, size: tuple[int, int], expected: int) -> None:
    opened = open_image(encode(Image.new(mode, size), "PNG"), ImageLimits(max_pixels=50_000_000))
    assert opened.decoded_bytes == expected


def test_draft_shrinks_the_decode_cost_of_a_large_jpeg(large_jpeg: bytes) -> None:
    exact = open_image(large_jpeg, ImageLimits())
    fast = open_image(large_jpeg, ImageLimits(), draft_short_side=256)
    assert exact.decoded_bytes == 2000 * 1500 * 4
    assert fast.decoded_bytes == fast.image.width * fast.image.height * 4 < exact.decoded_bytes // 4


def test_budget_waits_for_room_and_records_the_peak() -> None:
    budget = DecodeBudget(100, trim_after_bytes=1 << 40)
    entered = threading.Event()
    order: list[str] = []
    with budget.hold(70):
        assert budget.in_flight == 70

        def second() -> None:
            with budget.hold(60):
                order.append("second")
                entered.set()

        thread = threading.Thread(target=second)
        thread.start()
        # The second holder cannot enter while the first holds 70 of 100 (the event stays unset).
        assert not entered.wait(0.2)
        order.append("first done")
    thread.join(timeout=10)
    assert order == ["first done", "second"]
    assert budget.peak_bytes == 70 and budget.in_flight == 0


def test_budget_lets_an_oversized_image_run_alone() -> None:
    budget = DecodeBudget(100, trim_after_bytes=1 << 40)
    with budget.hold(500):
        assert budget.in_flight == 100
    assert budget.peak_bytes == 100 and budget.in_flight == 0


def test_budget_wait_ends_at_the_deadline_with_a_record_error() -> None:
    budget = DecodeBudget(100, clock=lambda: 10.0)
    with budget.hold(100), pytest.raises(ImageError) as caught, budget.hold(1, deadline=5.0, budget_s=3):
        pass
    assert str(caught.value) == (
        "not classified: the batch ran past its 3 s budget (SKILL_DEADLINE_SECONDS) waiting for decode memory "
        "(0 MiB in flight at most, DECODE_MEMORY_MB); lower the skillset's batchSize or degreeOfParallelism"
    )
    assert budget.in_flight == 0


@pytest.mark.skipif(not release_memory(), reason="malloc_trim is glibc's")
def test_budget_gives_memory_back_after_large_decodes_once_idle() -> None:
    budget = DecodeBudget(1 << 30, trim_after_bytes=50)
    with budget.hold(30):
        pass
    assert budget.trims == 0
    with budget.hold(30), budget.hold(30):
        pass
    assert budget.trims == 1  # once, when the last holder left and 90 >= 50 bytes were released


@pytest.mark.skipif(not release_memory(), reason="malloc_trim is glibc's")
def test_budget_gives_memory_back_only_when_the_process_has_grown_since_the_last_time() -> None:
    resident = [1000]
    budget = DecodeBudget(1 << 30, trim_after_bytes=50, resident=lambda: resident[0])
    with budget.hold(60):
        pass
    assert budget.trims == 1  # the first time there is nothing to compare with
    with budget.hold(60):
        pass
    assert budget.trims == 1  # 60 bytes released again, but the process holds what it held after the trim
    resident[0] = 1049
    with budget.hold(60):
        pass
    assert budget.trims == 1  # 49 bytes more than after the trim
    resident[0] = 1050
    with budget.hold(60):
        pass
    assert budget.trims == 2
    resident[0] = 1060
    with budget.hold(60):
        pass
    assert budget.trims == 2  # measured from what it held after the second trim: 10 bytes more


@pytest.mark.skipif(not release_memory(), reason="malloc_trim is glibc's")
def test_budget_trims_each_time_where_resident_memory_cannot_be_read() -> None:
    budget = DecodeBudget(1 << 30, trim_after_bytes=50, resident=lambda: None)
    for _ in range(3):
        with budget.hold(60):
            pass
    assert budget.trims == 3


@pytest.mark.skipif(resident_bytes() is None, reason="/proc/self/statm is Linux's")
def test_resident_bytes_follows_memory_the_process_touches() -> None:
    before = resident_bytes()
    block = bytearray(64 << 20)  # zeroed by the kernel on first touch: write every page
    block[::4096] = b"\x01" * len(block[::4096])
    after = resident_bytes()
    assert before is not None and after is not None
    assert after - before >= 60 << 20
    del block


def test_default_budget_is_a_quarter_of_memory_at_most_512_mib() -> None:
    memory = instance_memory_bytes()
    assert memory is not None and memory > 0
    assert default_decode_budget_bytes() == max(64 << 20, min(memory // 4, 512 << 20))
