"""Instance masks to polygons, in numpy: what AutoML's answer for instance segmentation carries.

Microsoft's recipe ("Make predictions with ONNX on computer vision models from AutoML", instance
segmentation) resizes each (H, W) mask of the model's input to the image with OpenCV's INTER_NEAREST and keeps
the pixels scoring above `mask_pixel_score_threshold`; AutoML's mask tools then trace that binary mask's
contours and simplify each to at most `max_number_of_polygon_points` points. Here:

- Thresholding and a nearest-neighbour resize commute, so the mask is thresholded at the model's size and only
  its bounding rectangle is kept, packed 8 pixels a byte (`PackedMask`): a few kB per object instead of the
  (H, W) float32 plane.
- The boundary is traced along pixel edges at the model's size, and each edge is moved to where the nearest
  resize puts it in the image (`nearest_edges`): the polygon's filled area is exactly the resized mask's pixels
  before simplification, whatever the image size, without making an image-sized array.
- Collinear points go first; then Ramer-Douglas-Peucker with a growing tolerance (in image pixels) until the
  contour has at most the allowed points, as AutoML's loop does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# AutoML's mask tools try at most 25 tolerances (0, 1, ... 24 pixels); past that we double it, so a contour
# always ends within the limit.
_STEPS = 25
# Directions of a boundary edge, turning clockwise on screen (y down): east, south, west, north.
_STEP = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]], dtype=np.int64)  # (row, column)


@dataclass(frozen=True)
class PackedMask:
    """The pixels of one object above the threshold, at the model's input size: rows top..top+height and
    columns left..left+width of an (input_height, input_width) plane, packed with np.packbits (row-major)."""

    top: int
    left: int
    height: int
    width: int
    bits: bytes

    @property
    def nbytes(self) -> int:
        return len(self.bits)

    def unpack(self) -> np.ndarray:
        """The (height, width) bool array."""
        flat = np.unpackbits(np.frombuffer(self.bits, dtype=np.uint8), count=self.height * self.width)
        return flat.reshape(self.height, self.width).astype(bool)


def pack_mask(scores: np.ndarray, threshold: float) -> PackedMask | None:
    """The pixels of a (H, W) score plane strictly above `threshold` (the recipe's `mask > threshold`),
    cropped to their bounding rectangle; None when there are none."""
    above = scores > threshold
    rows = np.flatnonzero(above.any(axis=1))
    if not rows.size:
        return None
    cols = np.flatnonzero(above.any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = above[top:bottom, left:right]
    return PackedMask(top, left, bottom - top, right - left, np.packbits(crop).tobytes())


def nearest_edges(source: int, target: int) -> np.ndarray:
    """Where the edges of `source` pixels land when resized to `target` with OpenCV's INTER_NEAREST: entry k
    (0..source) is the first target pixel whose source index is k or more (target for k = source).

    OpenCV maps target pixel x to source `min(floor(x * (1 / (target / source))), source - 1)`, in doubles."""
    edges: np.ndarray = np.searchsorted(_nearest_index(source, target), np.arange(source + 1), side="left")
    return edges


def _nearest_index(source: int, target: int) -> np.ndarray:
    """The source index of each target pixel under INTER_NEAREST (see nearest_edges)."""
    scale = 1.0 / (target / source)
    index: np.ndarray = np.minimum(np.floor(np.arange(target, dtype=np.float64) * scale).astype(np.int64), source - 1)
    return index


def resize_nearest(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A 2-D array resized like `cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)`."""
    rows = np.minimum(
        np.floor(np.arange(height) * (1.0 / (height / mask.shape[0]))).astype(np.int64), mask.shape[0] - 1
    )
    cols = np.minimum(np.floor(np.arange(width) * (1.0 / (width / mask.shape[1]))).astype(np.int64), mask.shape[1] - 1)
    resized: np.ndarray = mask[rows][:, cols]
    return resized


def trace_boundaries(mask: np.ndarray) -> list[np.ndarray]:
    """The closed boundaries of a 2-D bool array along pixel edges, as (k, 2) int arrays of (row, column)
    corner points, one per boundary (outer ones clockwise on screen, holes counter-clockwise), corners only.
    Pixels that touch only at a corner belong to separate boundaries (objects are 4-connected)."""
    padded = np.pad(mask, 1)
    # Edges with the object on their right when walking on screen: tops go east, bottoms west, left sides
    # north, right sides south. Vertex (r, c) is the top-left corner of pixel (r, c).
    inside = padded[1:, 1:-1]
    above = padded[:-1, 1:-1]
    east = np.argwhere(inside & ~above)  # (r, c): from (r, c) to (r, c + 1)
    west = np.argwhere(above & ~inside) + np.array([0, 1])  # from (r, c + 1) to (r, c)
    right = padded[1:-1, 1:]
    left = padded[1:-1, :-1]
    north = np.argwhere(right & ~left) + np.array([1, 0])  # from (r + 1, c) to (r, c)
    south = np.argwhere(left & ~right)  # from (r, c) to (r + 1, c)
    starts = np.concatenate([east, south, west, north])
    if not len(starts):
        return []
    directions = np.repeat(np.arange(4), [len(east), len(south), len(west), len(north)])
    columns = mask.shape[1] + 1
    keys = starts[:, 0] * columns + starts[:, 1]
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    # At a corner where two object pixels touch diagonally, two edges leave the vertex: take the clockwise
    # turn (it keeps walking around the same pixel).
    outgoing: dict[int, list[int]] = {}
    for key, edge in zip(sorted_keys.tolist(), order.tolist(), strict=True):
        outgoing.setdefault(key, []).append(edge)
    ends = starts + _STEP[directions]
    end_keys = (ends[:, 0] * columns + ends[:, 1]).tolist()
    direction_list = directions.tolist()
    used = np.zeros(len(starts), dtype=bool)
    loops: list[np.ndarray] = []
    for first in range(len(starts)):
        if used[first]:
            continue
        corners: list[int] = []
        edge = first
        while not used[edge]:
            used[edge] = True
            choices = outgoing[end_keys[edge]]
            heading = direction_list[edge]
            if len(choices) == 1:
                following = choices[0]
            else:
                following = next((e for e in choices if direction_list[e] == (heading + 1) % 4), choices[0])
            if direction_list[following] != heading:
                corners.append(end_keys[edge])
            edge = following
        flat = np.asarray(corners, dtype=np.int64)
        loops.append(np.stack([flat // columns, flat % columns], axis=1))
    return loops


def _drop_redundant(points: np.ndarray) -> np.ndarray:
    """A closed polygon without repeated consecutive points and without points on a straight line."""
    if len(points) < 3:
        return points
    points = points[np.any(points != np.roll(points, 1, axis=0), axis=1)]
    if len(points) < 3:
        return points
    before, after = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    cross = (points[:, 0] - before[:, 0]) * (after[:, 1] - points[:, 1]) - (points[:, 1] - before[:, 1]) * (
        after[:, 0] - points[:, 0]
    )
    kept: np.ndarray = points[cross != 0]
    return kept


def _rdp_open(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Ramer-Douglas-Peucker on an open chain: a bool mask of the points kept (both ends always)."""
    keep = np.zeros(len(points), dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, len(points) - 1)]
    while stack:
        first, last = stack.pop()
        if last - first < 2:
            continue
        start, end = points[first], points[last]
        inner = points[first + 1 : last]
        span = end - start
        length = float(np.hypot(span[0], span[1]))
        if length == 0.0:
            distances = np.hypot(inner[:, 0] - start[0], inner[:, 1] - start[1])
        else:
            distances = np.abs(span[0] * (inner[:, 1] - start[1]) - span[1] * (inner[:, 0] - start[0])) / length
        worst = int(np.argmax(distances))
        if distances[worst] > tolerance:
            split = first + 1 + worst
            keep[split] = True
            stack.append((first, split))
            stack.append((split, last))
    return keep


def simplify_closed(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Ramer-Douglas-Peucker on a closed polygon (no repeated last point), split at its first point and the
    point farthest from it."""
    if len(points) <= 3:
        return points
    far = int(np.argmax(np.hypot(points[:, 0] - points[0, 0], points[:, 1] - points[0, 1])))
    if far == 0:
        return points[:1]
    first = _rdp_open(points[: far + 1], tolerance)
    second = _rdp_open(np.concatenate([points[far:], points[:1]]), tolerance)
    keep = np.concatenate([first[:-1], second[:-1]])
    simplified: np.ndarray = points[keep]
    return simplified


def limit_points(points: np.ndarray, max_points: int) -> np.ndarray:
    """Simplify a closed polygon with tolerances 1, 2, ... 24 pixels (then doubling) until it has at most
    `max_points` points."""
    tolerance = 1.0
    step = 0
    while len(points) > max_points:
        points = simplify_closed(points, tolerance)
        step += 1
        tolerance = tolerance + 1.0 if step < _STEPS - 1 else tolerance * 2.0
    return points


def mask_polygons(
    mask: PackedMask,
    *,
    input_height: int,
    input_width: int,
    image_height: int,
    image_width: int,
    max_points: int,
    digits: int = 6,
) -> list[list[float]]:
    """The polygons of one object's mask as AutoML answers them: one flat `[x0, y0, x1, y1, ...]` list per
    contour (outer boundaries and holes), fractions of the image's width and height rounded to `digits`
    decimals, each with 3 to `max_points` points. The mask is at the model's input size; the polygons outline
    it resized to the image with INTER_NEAREST."""
    rows = nearest_edges(input_height, image_height)
    cols = nearest_edges(input_width, image_width)
    polygons: list[list[float]] = []
    for loop in trace_boundaries(mask.unpack()):
        # Corner (r, c) of the crop is the image point (x, y) = (cols[left + c], rows[top + r]).
        points = np.stack([cols[loop[:, 1] + mask.left], rows[loop[:, 0] + mask.top]], axis=1)
        points = limit_points(_drop_redundant(points), max_points)
        if len(points) < 3:
            continue  # the object's pixels vanish at this image size (a downscale dropped them)
        flat = np.round(points / np.asarray([image_width, image_height], dtype=np.float64), digits).ravel()
        polygons.append(flat.tolist())
    return polygons
