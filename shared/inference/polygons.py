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
- Collinear points go first; then Ramer-Douglas-Peucker at the smallest tolerance (in image pixels) that leaves
  at most the allowed points (AutoML's loop tries 0, 1, ... 24 pixels and may stop above the limit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def _significance(points: np.ndarray) -> np.ndarray:
    """Ramer-Douglas-Peucker on an open chain, for every tolerance at once: entry i is the largest tolerance
    at which point i survives (inf for both ends). RDP splits a segment at its interior point farthest from
    the chord whatever the tolerance, so the splits form one tree; at tolerance t a point is kept when its own
    distance and every ancestor's exceed t, i.e. when the minimum along its path does. Computed level by level
    over all segments at once."""
    n = len(points)
    significance = np.full(n, np.inf)
    starts = np.array([0])
    ends = np.array([n - 1])
    caps = np.array([np.inf])
    while len(starts):
        interior = ends - starts - 1
        busy = interior > 0
        starts, ends, caps, interior = starts[busy], ends[busy], caps[busy], interior[busy]
        if not len(starts):
            break
        segment = np.repeat(np.arange(len(starts)), interior)
        first = np.cumsum(interior) - interior
        index = starts[segment] + 1 + (np.arange(len(segment)) - first[segment])
        a, b = points[starts][segment], points[ends][segment]
        span = b - a
        length = np.hypot(span[:, 0], span[:, 1])
        offset = points[index] - a
        cross = np.abs(span[:, 0] * offset[:, 1] - span[:, 1] * offset[:, 0])
        distance = np.where(length > 0, cross / np.where(length > 0, length, 1.0), np.hypot(offset[:, 0], offset[:, 1]))
        farthest = np.maximum.reduceat(distance, first)
        is_far = distance == farthest[segment]
        chosen_segment, at = np.unique(segment[is_far], return_index=True)
        split = index[is_far][at]
        value = np.minimum(farthest[chosen_segment], caps[chosen_segment])
        significance[split] = value
        starts = np.concatenate([starts[chosen_segment], split])
        ends = np.concatenate([split, ends[chosen_segment]])
        caps = np.concatenate([value, value])
    return significance


def limit_points(points: np.ndarray, max_points: int) -> np.ndarray:
    """A closed polygon (no repeated last point) with at most `max_points` points: Ramer-Douglas-Peucker at
    the smallest tolerance that leaves that few, split at the first point and the point farthest from it
    (both always kept)."""
    if len(points) <= max_points:
        return points
    far = int(np.argmax(np.hypot(points[:, 0] - points[0, 0], points[:, 1] - points[0, 1])))
    if far == 0:
        return points[:1]
    first = _significance(points[: far + 1].astype(np.float64))
    second = _significance(np.concatenate([points[far:], points[:1]]).astype(np.float64))
    significance = np.concatenate([first[:-1], second[:-1]])
    cut = np.sort(significance)[::-1][max(max_points, 2)]
    kept: np.ndarray = points[significance > cut]
    return kept


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
