"""Procedural renderer for the `wsol_shapes` weakly-supervised localization benchmark.

Each image holds exactly one labelled object on a cluttered background. The class is the
pair (silhouette, texture): five silhouettes times two textures give ten classes, and the
texture colours are drawn at random per image so that colour carries no class signal.
Backgrounds are smooth colour noise with thin lines and a few small solid or speckled
distractor blobs, which never use the class textures and are drawn before the object,
so the object's mask is exactly its visible pixels.

Box convention: `(x0, y0, x1, y1)` in pixels with exclusive ends, so an object covering
columns `a..b` has `x0 = a, x1 = b + 1`. The returned box is always the tight box of the
returned mask.

Everything is vectorised numpy over coordinate grids (half-plane tests for polygons), and
each example depends only on the generator passed in, so `example_rng` makes any single
example reproducible on its own.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

SHAPES = ("ellipse", "rectangle", "triangle", "cross", "star")
TEXTURES = ("striped", "checkered")
# Label = shape_index * len(TEXTURES) + texture_index.
CLASS_NAMES: tuple[str, ...] = tuple(f"{t}_{s}" for s in SHAPES for t in TEXTURES)
SPLITS: tuple[str, ...] = ("train", "validation", "test")

MIN_AREA_FRACTION = 0.05
MAX_AREA_FRACTION = 0.40
MAX_ASPECT = 2.0
MIN_IMAGE_SIZE = 32

# Texture and clutter scales are given for a 64 px image and scale with the image, so the
# benchmark looks the same (only sharper) at 96 or 224.
_REFERENCE_SIZE = 64.0
_STRIPE_PERIOD = (5.0, 8.0)
_CHECKER_CELL = (3.0, 4.5)
# Luminance gap between the two texture colours: keeps the texture readable whatever the
# random colours are.
_MIN_TEXTURE_CONTRAST = 80.0
_NUM_LINES = (2, 6)
_NUM_DISTRACTORS = (2, 5)
_DISTRACTOR_AREA_FRACTION = (0.006, 0.03)
_PIXEL_NOISE_STD = 4.0
# Growing every silhouette by half a pixel guarantees that sharp tips (star points,
# triangle apex, ellipse ends) still cover a pixel centre on the box edge, so the tight
# box of the mask equals the sampled box.
_GROW = 0.5
# Regular pentagram is 0.38; a fatter star stays star-like at 14 px.
_STAR_INNER_RATIO = 0.45
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent random stream for one example, so it can be regenerated alone.

    Args:
      seed: non-negative dataset seed.
      split: one of `SPLITS`.
      index: non-negative example index within the split.

    Returns:
      A generator seeded from the entropy triple (seed, split id, index).
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got {seed=} {index=}.")
    return np.random.default_rng([int(seed), SPLITS.index(split), int(index)])


def render_example(rng: np.random.Generator, image_size: int = 64) -> dict[str, np.ndarray | int]:
    """Renders one example.

    Args:
      rng: the example's generator (see `example_rng`); it is consumed.
      image_size: side S of the square image, at least `MIN_IMAGE_SIZE`.

    Returns:
      A dict with `image` (S, S, 3) uint8, `label` int in [0, len(CLASS_NAMES)),
      `mask` (S, S) bool (the object's visible pixels) and `box` (4,) float32
      `(x0, y0, x1, y1)`, exclusive ends, the tight box of `mask`.
    """
    size = int(image_size)
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}.")
    scale = size / _REFERENCE_SIZE

    image = _smooth_noise(rng, size)
    _draw_lines(rng, image, scale)
    for _ in range(rng.integers(_NUM_DISTRACTORS[0], _NUM_DISTRACTORS[1] + 1)):
        _draw_distractor(rng, image)

    shape_id = int(rng.integers(len(SHAPES)))
    texture_id = int(rng.integers(len(TEXTURES)))
    x0, y0, x1, y1 = _sample_box(rng, size)
    xs = np.arange(x0, x1, dtype=np.float32) + 0.5
    ys = np.arange(y0, y1, dtype=np.float32) + 0.5
    silhouette = _silhouette(rng, SHAPES[shape_id], (x0, y0, x1, y1), xs, ys)
    texture = _texture(rng, TEXTURES[texture_id], xs, ys, scale)
    colors = _texture_colors(rng)
    crop = image[y0:y1, x0:x1]
    crop[silhouette] = colors[texture[silhouette]]

    image += _PIXEL_NOISE_STD * rng.standard_normal(image.shape, dtype=np.float32)
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = silhouette
    np.clip(image, 0.0, 255.0, out=image)
    return {
        # Round half up; the values are non-negative after clipping.
        "image": (image + 0.5).astype(np.uint8),
        "label": shape_id * len(TEXTURES) + texture_id,
        "mask": mask,
        "box": tight_box(mask),
    }


def tight_box(mask: np.ndarray) -> np.ndarray:
    """Tight box of a non-empty mask.

    Args:
      mask: (H, W) bool.

    Returns:
      (4,) float32 `(x0, y0, x1, y1)` with exclusive ends.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("tight_box of an empty mask.")
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


def _sample_box(rng: np.random.Generator, size: int) -> tuple[int, int, int, int]:
    """Integer box with area fraction uniform in the allowed range, log-uniform aspect
    and a position uniform over all placements that fit."""
    while True:
        area = rng.uniform(MIN_AREA_FRACTION, MAX_AREA_FRACTION) * size * size
        aspect = np.exp(rng.uniform(-np.log(MAX_ASPECT), np.log(MAX_ASPECT)))
        w = int(np.clip(np.rint(np.sqrt(area * aspect)), 2, size))
        h = int(np.clip(np.rint(np.sqrt(area / aspect)), 2, size))
        # Rounding to whole pixels can push the area just outside the range; resample
        # rather than distort the advertised range.
        if MIN_AREA_FRACTION <= w * h / (size * size) <= MAX_AREA_FRACTION:
            break
    x0 = int(rng.integers(0, size - w + 1))
    y0 = int(rng.integers(0, size - h + 1))
    return x0, y0, x0 + w, y0 + h


def _silhouette(
    rng: np.random.Generator,
    shape: str,
    box: tuple[int, int, int, int],
    xs: np.ndarray,
    ys: np.ndarray,
) -> np.ndarray:
    """(h, w) bool mask of `shape` filling `box`, sampled at pixel centres xs (w,), ys (h,)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if shape == "rectangle":
        return np.ones((h, w), bool)
    if shape == "ellipse":
        dx = (xs - 0.5 * (x0 + x1)) / (0.5 * w + _GROW)
        dy = (ys - 0.5 * (y0 + y1)) / (0.5 * h + _GROW)
        return dx[None, :] ** 2 + dy[:, None] ** 2 <= 1.0
    if shape == "triangle":
        pieces = [((0.5, 0.0), (1.0, 1.0), (0.0, 1.0))]
        quarter_turns = int(rng.integers(4))
    elif shape == "cross":
        half = 0.5 * float(rng.uniform(0.3, 0.45))
        lo, hi = 0.5 - half, 0.5 + half
        pieces = [
            ((0.0, lo), (1.0, lo), (1.0, hi), (0.0, hi)),
            ((lo, 0.0), (hi, 0.0), (hi, 1.0), (lo, 1.0)),
        ]
        quarter_turns = 0
    elif shape == "star":
        pieces = list(_star_pieces())
        quarter_turns = 2 * int(rng.integers(2))
    else:
        raise ValueError(f"Unknown shape {shape!r}.")
    mask = np.zeros((h, w), bool)
    for unit in pieces:
        for _ in range(quarter_turns):
            # A quarter turn of the unit square keeps the piece filling the box.
            unit = [(1.0 - v, u) for u, v in unit]
        mask |= _convex_mask([(x0 + u * w, y0 + v * h) for u, v in unit], xs, ys, _GROW)
    return mask


@functools.cache
def _star_pieces() -> tuple[tuple[tuple[float, float], ...], ...]:
    """Five-point star in the unit square as convex pieces: the inner pentagon and five
    spike triangles, each a tuple of (u, v) vertices with v pointing down."""
    outer_angles = np.deg2rad(-90.0 + 72.0 * np.arange(5))
    inner_angles = outer_angles + np.deg2rad(36.0)
    outer = np.stack([np.cos(outer_angles), np.sin(outer_angles)], axis=1)
    inner = _STAR_INNER_RATIO * np.stack([np.cos(inner_angles), np.sin(inner_angles)], axis=1)
    lo, hi = outer.min(axis=0), outer.max(axis=0)
    outer, inner = (outer - lo) / (hi - lo), (inner - lo) / (hi - lo)
    as_tuples = lambda points: tuple((float(u), float(v)) for u, v in points)
    spikes = tuple(as_tuples([inner[k - 1], outer[k], inner[k]]) for k in range(5))
    return (as_tuples(inner), *spikes)


def _convex_mask(
    vertices: Sequence[tuple[float, float]], xs: np.ndarray, ys: np.ndarray, grow: float
) -> np.ndarray:
    """Half-plane test of a convex polygon grown outwards by `grow` pixels.

    Args:
      vertices: K >= 3 (x, y) pixel positions, either winding.
      xs: (W,) pixel-centre x coordinates; ys: (H,) pixel-centre y coordinates.
      grow: outward offset of every edge, in pixels.

    Returns:
      (H, W) bool.
    """
    # Plain floats: polygons have a handful of edges, and numpy's per-call overhead on
    # (K, 2) arrays would dominate the render time.
    edges = list(zip(vertices, [*vertices[1:], vertices[0]], strict=True))
    winding = 1.0 if sum(px * qy - qx * py for (px, py), (qx, qy) in edges) > 0 else -1.0
    inside = np.ones((ys.size, xs.size), bool)
    for (px, py), (qx, qy) in edges:
        nx, ny = winding * (qy - py), winding * (px - qx)
        norm = math.hypot(nx, ny)
        if norm == 0.0:
            # Repeated vertex: no edge to test.
            continue
        nx, ny = nx / norm, ny / norm
        inside &= (nx * xs)[None, :] + (ny * ys)[:, None] <= nx * px + ny * py + grow
    return inside


def _texture(
    rng: np.random.Generator, texture: str, xs: np.ndarray, ys: np.ndarray, scale: float
) -> np.ndarray:
    """(H, W) int colour index in {0, 1} of a randomly oriented and phased texture."""
    theta = rng.uniform(0.0, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    if texture == "striped":
        width = 0.5 * scale * rng.uniform(*_STRIPE_PERIOD)
        along = ((c * xs)[None, :] + (s * ys)[:, None]) / width + rng.uniform(0.0, 2.0)
        return np.floor(along).astype(np.int64) % 2
    if texture == "checkered":
        cell = scale * rng.uniform(*_CHECKER_CELL)
        u = ((c * xs)[None, :] + (s * ys)[:, None]) / cell + rng.uniform(0.0, 2.0)
        v = ((-s * xs)[None, :] + (c * ys)[:, None]) / cell + rng.uniform(0.0, 2.0)
        return (np.floor(u).astype(np.int64) + np.floor(v).astype(np.int64)) % 2
    raise ValueError(f"Unknown texture {texture!r}.")


def _texture_colors(rng: np.random.Generator) -> np.ndarray:
    """(2, 3) float32 RGB pair in [0, 255] with at least `_MIN_TEXTURE_CONTRAST` luma gap."""
    while True:
        colors = rng.uniform(0.0, 255.0, (2, 3)).astype(np.float32)
        luma = colors @ _LUMA
        if abs(luma[0] - luma[1]) >= _MIN_TEXTURE_CONTRAST:
            return colors


@functools.cache
def _interpolation_matrix(size: int, nodes: int) -> np.ndarray:
    """(size, nodes) float32 linear interpolation weights from a coarse grid to pixels."""
    pos = (np.arange(size) + 0.5) / size * (nodes - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), nodes - 2)
    frac = (pos - lo).astype(np.float32)
    weights = np.zeros((size, nodes), np.float32)
    weights[np.arange(size), lo] = 1.0 - frac
    weights[np.arange(size), lo + 1] = frac
    return weights


def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """(S, S, 3) float32 background: random colours on a coarse grid, bilinearly upsampled."""
    nodes = int(rng.integers(2, 6))
    grid = rng.uniform(0.0, 255.0, (nodes, nodes, 3)).astype(np.float32)
    weights = _interpolation_matrix(size, nodes)
    rows = (weights @ grid.reshape(nodes, nodes * 3)).reshape(size, nodes, 3)
    # Batched over output rows: (S, S, n) @ (S, n, 3).
    return np.matmul(weights, rows)


def _draw_lines(rng: np.random.Generator, image: np.ndarray, scale: float) -> None:
    """Draws a few thin straight segments of random colour into image (S, S, 3) in place."""
    size = image.shape[0]
    n = int(rng.integers(_NUM_LINES[0], _NUM_LINES[1] + 1))
    cx, cy = rng.uniform(0.0, size, (2, n, 1, 1)).astype(np.float32)
    theta = rng.uniform(0.0, np.pi, (n, 1, 1)).astype(np.float32)
    half_length = (0.5 * size * rng.uniform(0.3, 1.2, (n, 1, 1))).astype(np.float32)
    half_width = (0.5 * scale * rng.uniform(0.8, 1.6, (n, 1, 1))).astype(np.float32)
    colors = rng.uniform(0.0, 255.0, (n, 3)).astype(np.float32)
    axis = np.arange(size, dtype=np.float32) + 0.5
    dx, dy = axis[None, None, :] - cx, axis[None, :, None] - cy
    c, s = np.cos(theta), np.sin(theta)
    on_line = (np.abs(s * dx - c * dy) <= half_width) & (np.abs(c * dx + s * dy) <= half_length)
    for k in range(n):
        image[on_line[k]] = colors[k]


def _draw_distractor(rng: np.random.Generator, image: np.ndarray) -> None:
    """Draws one small ellipse or convex polygon, solid or speckled, into image in place."""
    size = image.shape[0]
    area = rng.uniform(*_DISTRACTOR_AREA_FRACTION) * size * size
    aspect = np.exp(rng.uniform(-np.log(MAX_ASPECT), np.log(MAX_ASPECT)))
    rx = 0.5 * np.sqrt(area * aspect)
    ry = 0.5 * np.sqrt(area / aspect)
    cx, cy = rng.uniform(0.0, size, 2).tolist()
    x0, x1 = max(int(cx - rx) - 1, 0), min(int(cx + rx) + 2, size)
    y0, y1 = max(int(cy - ry) - 1, 0), min(int(cy + ry) + 2, size)
    if x0 >= x1 or y0 >= y1:
        return
    xs = np.arange(x0, x1, dtype=np.float32) + 0.5
    ys = np.arange(y0, y1, dtype=np.float32) + 0.5
    if rng.random() < 0.5:
        inside = ((xs - cx) / rx)[None, :] ** 2 + ((ys - cy) / ry)[:, None] ** 2 <= 1.0
    else:
        # Sorted angles on an ellipse give a convex polygon.
        angles = np.sort(rng.uniform(0.0, 2.0 * np.pi, int(rng.integers(3, 7)))).tolist()
        vertices = [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]
        inside = _convex_mask(vertices, xs, ys, 0.0)
    # Solid or per-pixel speckle fill: neither is periodic, so neither mimics a class texture.
    fill = rng.uniform(0.0, 255.0, 3).astype(np.float32)
    crop = image[y0:y1, x0:x1]
    if rng.random() < 0.5:
        crop[inside] = fill
    else:
        speckle = rng.uniform(20.0, 60.0) * rng.standard_normal(crop.shape, dtype=np.float32)
        crop[inside] = (fill + speckle)[inside]
