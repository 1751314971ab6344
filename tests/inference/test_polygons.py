"""Masks to polygons (shared.inference.polygons): exact outlines, OpenCV's nearest resize, bounded points."""

from __future__ import annotations

import numpy as np
import pytest

from shared.inference.polygons import (
    PackedMask,
    limit_points,
    mask_polygons,
    nearest_edges,
    pack_mask,
    resize_nearest,
    trace_boundaries,
)


def fill_polygons(polygons: list[list[float]], width: int, height: int) -> np.ndarray:
    """Rasterize flat [x0, y0, ...] polygons (fractions of the image) at pixel centres, even-odd across all
    contours (a contour inside another is a hole): what a polygon's filled area is, independent of the code
    under test."""
    out = np.zeros((height, width), dtype=bool)
    for flat in polygons:
        pts = np.asarray(flat, dtype=np.float64).reshape(-1, 2) * [width, height]
        x0, y0 = pts[:, 0], pts[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        one = np.zeros((height, width), dtype=bool)
        for row in range(height):
            y = row + 0.5
            crossing = ((y0 <= y) & (y < y1)) | ((y1 <= y) & (y < y0))
            if not crossing.any():
                continue
            xs = np.sort(
                x0[crossing] + (y - y0[crossing]) * (x1[crossing] - x0[crossing]) / (y1[crossing] - y0[crossing])
            )
            for a, b in zip(xs[0::2], xs[1::2], strict=True):
                one[row, max(0, int(np.ceil(a - 0.5))) : max(0, int(np.ceil(b - 0.5)))] = True
        out ^= one
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else 1.0


def _packed(mask: np.ndarray) -> PackedMask:
    packed = pack_mask(mask.astype(np.float32), 0.5)
    assert packed is not None
    return packed


RING = np.pad(np.ones((6, 6), bool), 2)
RING[4:6, 4:6] = False  # a 2 x 2 hole


def test_trace_gives_outer_boundary_and_hole_corners_only() -> None:
    loops = trace_boundaries(RING)
    assert len(loops) == 2
    outer, hole = sorted(loops, key=len, reverse=True)
    assert sorted(map(tuple, outer.tolist())) == [(2, 2), (2, 8), (8, 2), (8, 8)]
    assert sorted(map(tuple, hole.tolist())) == [(4, 4), (4, 6), (6, 4), (6, 6)]


def test_pixels_touching_at_a_corner_are_separate_objects() -> None:
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = mask[2, 2] = True
    loops = trace_boundaries(mask)
    assert sorted(sorted(map(tuple, loop.tolist())) for loop in loops) == [
        [(1, 1), (1, 2), (2, 1), (2, 2)],
        [(2, 2), (2, 3), (3, 2), (3, 3)],
    ]


@pytest.mark.parametrize(("source", "target"), [(192, 427), (256, 640), (600, 357), (800, 500), (7, 7), (5, 13)])
def test_nearest_resize_is_opencvs(source: int, target: int) -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(source * 1000 + target)
    plane = rng.random((source, source + 3)).astype(np.float32)
    ours = resize_nearest(plane, target + 1, target)
    theirs = cv2.resize(plane[:, :, None], (target + 1, target), 0, 0, interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(ours, theirs)
    edges = nearest_edges(source, target)
    assert edges[0] == 0 and edges[-1] == target and np.all(np.diff(edges) >= 0)


@pytest.mark.parametrize(("image_w", "image_h"), [(32, 24), (100, 75), (23, 17), (333, 250)])
def test_polygons_fill_exactly_the_resized_mask(image_w: int, image_h: int) -> None:
    """Without simplification the polygons' filled area is the nearest-resized mask, pixel for pixel, for
    upscales, downscales and odd ratios; holes are holes."""
    rng = np.random.default_rng(image_w)
    mask = np.zeros((24, 32), bool)
    mask[3:20, 4:28] = True
    mask[8:12, 10:14] = False
    mask |= rng.random(mask.shape) > 0.93  # specks and diagonal neighbours
    polygons = mask_polygons(
        _packed(mask), input_height=24, input_width=32, image_height=image_h, image_width=image_w, max_points=10_000
    )
    expected = resize_nearest(mask, image_w, image_h)
    assert np.array_equal(fill_polygons(polygons, image_w, image_h), expected)
    assert all(0.0 <= v <= 1.0 for p in polygons for v in p)


def test_each_polygon_is_simplified_to_the_limit_and_stays_close() -> None:
    yy, xx = np.mgrid[0:200, 0:300]
    disc = (xx - 150) ** 2 + (yy - 100) ** 2 < 80**2
    for limit in (100, 30, 8):
        (polygon,) = mask_polygons(
            _packed(disc), input_height=200, input_width=300, image_height=400, image_width=600, max_points=limit
        )
        assert 3 <= len(polygon) // 2 <= limit
        assert iou(fill_polygons([polygon], 600, 400), resize_nearest(disc, 600, 400)) > (0.99 if limit > 8 else 0.9)


def test_limit_points_always_ends_within_the_limit() -> None:
    angles = np.linspace(0, 2 * np.pi, 5000, endpoint=False)
    wobbly = np.stack([1000 + 900 * np.cos(angles) * (1 + 0.05 * np.sin(40 * angles)), 1000 + 900 * np.sin(angles)], 1)
    assert len(limit_points(wobbly, 12)) <= 12


def test_an_empty_mask_has_no_pixels_to_keep() -> None:
    assert pack_mask(np.full((8, 8), 0.5, dtype=np.float32), 0.5) is None  # the cut is strict, as the recipe's
    packed = pack_mask(np.pad(np.ones((2, 3), np.float32), ((1, 4), (5, 0))), 0.5)
    assert packed is not None and (packed.top, packed.left, packed.height, packed.width) == (1, 5, 2, 3)
    assert packed.unpack().all() and packed.nbytes == 1
