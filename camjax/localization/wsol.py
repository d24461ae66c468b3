"""The WSOL evaluation protocol of Choe et al. (CVPR 2020), reproduced exactly in JAX.

The published evaluator (clovaai/wsolevaluation) loops over images and thresholds with OpenCV.
This module computes the same integer counts for whole batches on device:

* ``quantize_scoremaps``: ``(scoremap * 255).astype(np.uint8)`` of the evaluator;
* ``box_correct_counts``: per (IoU threshold, CAM threshold), how many images have a box with
  IoU >= delta / 100 against one of their GT boxes. With ``multi_contour=True`` every contour's
  box counts (MaxBoxAccV2); otherwise the largest contour's (MaxBoxAcc, "V1");
* ``pxap_histograms``: the score histograms of GT-foreground and GT-background pixels behind
  PxAP, with the evaluator's bins;
* ``WsolBoxAccumulator`` and ``PxAPAccumulator`` sum those over batches and hosts and finish
  the metrics in float64 numpy, with the evaluator's formulas.

What the OpenCV pipeline computes, established against cv2 (``tests/localization``):

* The map is quantised to ``q = floor(255 * s)`` (uint8) and a threshold ``t`` becomes the
  integer level ``int(t * max(q))``; ``cv2.threshold(THRESH_BINARY)`` keeps ``q > level``. So a
  threshold grid only ever probes integer levels 0..255: we evaluate all 256 levels once and
  gather the grid's levels per image from a host table (exact float64 products, as the
  original's).
* ``cv2.findContours(RETR_TREE)`` treats the outside of the image as background (the map is
  not eroded at the border) and returns one contour per 8-connected foreground component
  (its outer border) plus one per hole, a hole being a 4-connected background component that
  does not reach the image border. ``cv2.boundingRect`` of an outer border is the component's
  bounding box; that of a hole border is the hole's bounding box grown by one pixel on every
  side (the border runs through the foreground pixels around the hole).
* Boxes are ``(x, y, min(x + w, W - 1), min(y + h, H - 1))`` and compared with GT boxes by IoU
  with inclusive coordinates (areas ``(x1 - x0 + 1) * (y1 - y0 + 1)``); a level without any
  contour yields the box ``(0, 0, 0, 0)``, which still covers pixel (0, 0) in that convention.
* ``IoU >= delta / 100`` is decided in int32 integers, ``100 * inter >= delta * union``: the
  original's float64 comparison agrees with it for any union below 2**31 / 100 pixels (the
  gap between two different ratios is far above float64 rounding).
* ``max(contours, key=cv2.contourArea)`` (V1) ranks contours by the area of the polygon
  through their border pixels' centres, not by pixel count, and keeps the first maximum in
  OpenCV's order: a depth-first walk of the contour tree with siblings latest-found first
  (outer contours found in raster order of their first pixel). Since an enclosed contour
  never has more area than its enclosers, and an equal one has the same polygon and box, the
  winner is the outermost component with the largest outer polygon area, ties going to the
  one whose first pixel comes last in raster order. The polygon area is summed from local
  2x2 windows (see ``_outer_areas``).

Components are labelled with a data-parallel union-find (hook roots onto the neighbourhood
minimum, compress by pointer jumping), 8-connected for the foreground and 4-connected for the
background, at every level a batch's thresholds probe (up to 256). Levels are nested, so the
foreground is swept from the top level down and the background from the bottom up, each
level's labelling starting from the previous level's labels; V1 also labels the background
of every level from scratch, to tell outer contours from hole contours. A true max-tree
(one union-find pass over the pixels sorted by value) would share all the work and is the
next step for speed, but it is sequential per map and does not map well onto XLA.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from camjax.localization.boxes import check_float_maps, label_one

NUM_LEVELS = 256
DEFAULT_IOU_THRESHOLDS = (30, 50, 70)


def default_thresholds(interval: float = 0.001) -> np.ndarray:
    """The evaluator's CAM threshold grid ``np.arange(0, 1, interval)``, float64 (T,)."""
    return np.arange(0, 1, interval)


# --------------------------------------------------------------------------------------------
# Quantisation and threshold levels.


@functools.cache
def _quantization_steps() -> np.ndarray:
    """(257,) float32: entry k is the smallest float32 f with f * 255 >= k exactly (real
    arithmetic), entry 256 is +inf. A float32 x quantises to the k with steps[k] <= x <
    steps[k + 1], which is ``floor(float64(x) * 255)``: the float64 product of a float32 and
    255 is exact (24 + 8 bits)."""
    steps = np.empty(257, np.float32)
    for k in range(256):
        f = np.float32(k / 255)
        while np.float64(f) * 255 < k:
            f = np.nextafter(f, np.float32(np.inf))
        while f > 0 and np.float64(np.nextafter(f, np.float32(-np.inf))) * 255 >= k:
            f = np.nextafter(f, np.float32(-np.inf))
        steps[k] = f
    steps[256] = np.inf
    steps.setflags(write=False)
    return steps


def _quantize_f32(scoremaps: jax.Array) -> jax.Array:
    steps = jnp.asarray(_quantization_steps())
    x = scoremaps.astype(jnp.float32)
    # float32 rounding moves x * 255 by less than one step, so the floor is off by at most one;
    # two comparisons with the exact steps settle it.
    q0 = jnp.clip(jnp.floor(x * 255), 0, 255).astype(jnp.int32)
    q = q0 + (x >= steps[q0 + 1]).astype(jnp.int32) - (x < steps[q0]).astype(jnp.int32)
    return jnp.clip(q, 0, 255).astype(jnp.uint8)


def quantize_scoremaps(scoremaps: jax.Array | np.ndarray) -> jax.Array | np.ndarray:
    """The evaluator's ``(scoremap * 255).astype(np.uint8)``, exactly.

    Args:
      scoremaps: (..., H, W) float in [0, 1], e.g. ``camjax.cam.normalize_minmax`` output
        (which, like the evaluator's ``normalize_scoremap``, turns constant and NaN maps into
        zeros). float32 arrays are quantised on device as if widened to float64 first; a numpy
        float64 array is quantised on the host in float64 (JAX would round it to float32).

    Returns:
      (..., H, W) uint8, ``floor(255 * s)``; jax array, or numpy for numpy float64 input.
    """
    if isinstance(scoremaps, np.ndarray) and scoremaps.dtype == np.float64:
        _check_unit_interval(scoremaps)
        return (scoremaps * 255).astype(np.uint8)
    scoremaps = check_float_maps(scoremaps, "scoremaps")
    _check_unit_interval(scoremaps)
    return _quantize_f32(scoremaps)


def _check_unit_interval(x) -> None:
    if isinstance(x, jax.core.Tracer):
        return  # Values under the caller's jit are the caller's responsibility.
    x = np.asarray(x)
    if x.size and not (np.all(x >= 0) and np.all(x <= 1)):
        raise ValueError(
            "scoremaps must lie in [0, 1] without NaN (min-max normalise them first, e.g. with "
            "camjax.cam.normalize_minmax)."
        )


def _check_thresholds(thresholds) -> np.ndarray:
    t = np.asarray(thresholds)
    real = np.issubdtype(t.dtype, np.floating) or np.issubdtype(t.dtype, np.integer)
    if t.ndim != 1 or t.size == 0 or not real:
        raise ValueError(f"thresholds must be a non-empty 1-D real array, got {t!r}.")
    t = t.astype(np.float64)
    if not np.all((t >= 0) & (t <= 1)):
        raise ValueError("thresholds must lie in [0, 1].")
    return t


def threshold_levels(thresholds) -> np.ndarray:
    """Level of every CAM threshold for every possible map peak: int32 (256, T).

    Entry [m, i] is the evaluator's ``int(thresholds[i] * m)`` for a quantised map whose
    maximum is m, computed with the same float64 products (numpy, on the host)."""
    t = _check_thresholds(thresholds)
    peaks = np.arange(NUM_LEVELS, dtype=np.uint8)
    return (t[None, :] * peaks[:, None]).astype(np.int32)


# --------------------------------------------------------------------------------------------
# Connected components.


def _segment_boxes(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Bounding boxes of labelled components: labels (H, W) int32 (-1 = none) ->
    (boxes int32 (H*W, 4) inclusive ``(xmin, ymin, xmax, ymax)`` indexed by label, present
    bool (H*W,))."""
    h, w = labels.shape
    n = h * w
    flat = labels.reshape(-1)
    slot = jnp.where(flat >= 0, flat, n)
    ys, xs = jnp.divmod(jnp.arange(n, dtype=jnp.int32), w)
    xy = jnp.stack([xs, ys], axis=-1)
    big = jnp.int32(np.iinfo(np.int32).max)
    # One two-wide scatter per reduction: fewer, larger ops than one per coordinate.
    low = jnp.full((n + 1, 2), big).at[slot].min(xy, mode="promise_in_bounds")[:n]
    high = jnp.full((n + 1, 2), -1).at[slot].max(xy, mode="promise_in_bounds")[:n]
    xmin, ymin, xmax, ymax = low[:, 0], low[:, 1], high[:, 0], high[:, 1]
    return jnp.stack([xmin, ymin, xmax, ymax], axis=-1), xmax >= 0


# --------------------------------------------------------------------------------------------
# Boxes and hits.


def _hits(boxes: jax.Array, present: jax.Array, gt: jax.Array, gt_valid, deltas) -> jax.Array:
    """Whether any present box has IoU >= delta / 100 with any valid GT box.

    boxes (K, 4), present (K,), gt (G, 4), gt_valid (G,) bool, deltas (D,) int -> (D,) bool.
    Inclusive coordinates, as ``calculate_multiple_iou``; a non-positive union gives IoU 0."""
    a = boxes[:, None, :]
    b = gt[None, :, :]
    iw = jnp.maximum(0, jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0]) + 1)
    ih = jnp.maximum(0, jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1]) + 1)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    pair = present[:, None] & gt_valid[None, :]  # (K, G)
    d = deltas[:, None, None]
    hit = jnp.where(union > 0, 100 * inter >= d * union, d <= 0)  # (D, K, G)
    return jnp.any(hit & pair, axis=(1, 2))


def _outer_hits(labels: jax.Array, gt, gt_valid, deltas) -> jax.Array:
    """(D,) bool: does the box of any outer contour hit? labels: (H, W) fg components."""
    h, w = labels.shape
    boxes, present = _segment_boxes(labels)
    # Exclusive-style ends x + w, y + h, clipped to the last pixel.
    outer = jnp.stack(
        [
            boxes[:, 0],
            boxes[:, 1],
            jnp.minimum(boxes[:, 2] + 1, w - 1),
            jnp.minimum(boxes[:, 3] + 1, h - 1),
        ],
        axis=-1,
    )
    return _hits(outer, present, gt, gt_valid, deltas)


def _hole_hits(bg_labels: jax.Array, gt, gt_valid, deltas) -> jax.Array:
    """(D,) bool: does the box of any hole contour hit?

    bg_labels: (H+2, W+2) 4-connected background components of the map padded with a frame of
    background; the frame's component (label 0, it holds raster index 0) is the outside and
    every other component is a hole."""
    h, w = bg_labels.shape[0] - 2, bg_labels.shape[1] - 2
    boxes, present = _segment_boxes(bg_labels)
    present = present.at[0].set(False)
    # Padded coordinates are image + 1; a hole's border spans its box grown by one pixel.
    hole = jnp.stack(
        [
            boxes[:, 0] - 2,
            boxes[:, 1] - 2,
            jnp.minimum(boxes[:, 2] + 1, w - 1),
            jnp.minimum(boxes[:, 3] + 1, h - 1),
        ],
        axis=-1,
    )
    return _hits(hole, present, gt, gt_valid, deltas)


def _empty_hits(gt, gt_valid, deltas) -> jax.Array:
    """(D,) bool: a level without any contour is scored with the box (0, 0, 0, 0)."""
    return _hits(jnp.zeros((1, 4), jnp.int32), jnp.ones((1,), bool), gt, gt_valid, deltas)


def _sweep(step, init, levels, needed, num_out):
    """Scans ``step(carry, level) -> (carry, (B, D) hits)`` over ``levels``, skipping levels
    that no threshold of the batch probes (their hits stay False, the carry unchanged)."""

    def body(carry, level):
        return jax.lax.cond(
            needed[level],
            lambda c: step(c, level),
            lambda c: (c, jnp.zeros(num_out, bool)),
            carry,
        )

    return jax.lax.scan(body, init, levels)[1]


@jax.jit
def _all_level_hits_v2(q, gt_boxes, num_gt, deltas, needed):
    b, h, w = q.shape
    d = deltas.shape[0]
    gt_valid = jnp.arange(gt_boxes.shape[1]) < num_gt[:, None]
    qi = q.astype(jnp.int32)
    label8 = jax.vmap(lambda m, init: label_one(m, 8, init))
    label4 = jax.vmap(lambda m, init: label_one(m, 4, init))
    outer_hits = jax.vmap(_outer_hits, in_axes=(0, 0, 0, None))
    hole_hits = jax.vmap(_hole_hits, in_axes=(0, 0, 0, None))

    # Foreground grows as the level falls: sweep down, starting each level's labelling from
    # the previous one. The background grows as the level rises: sweep up for the holes.
    def fg_step(labels, level):
        labels = label8(qi > level, labels)
        return labels, outer_hits(labels, gt_boxes, gt_valid, deltas)

    down = jnp.arange(NUM_LEVELS - 1, -1, -1, dtype=jnp.int32)
    fg = _sweep(fg_step, jnp.full((b, h, w), -1, jnp.int32), down, needed, (b, d))[::-1]

    # The frame is background at every level (value -1 <= level).
    qp = jnp.pad(qi, ((0, 0), (1, 1), (1, 1)), constant_values=-1)

    def bg_step(labels, level):
        labels = label4(qp <= level, labels)
        return labels, hole_hits(labels, gt_boxes, gt_valid, deltas)

    up = jnp.arange(NUM_LEVELS, dtype=jnp.int32)
    holes = _sweep(bg_step, jnp.full((b, h + 2, w + 2), -1, jnp.int32), up, needed, (b, d))

    empty = jax.vmap(_empty_hits, in_axes=(0, 0, None))(gt_boxes, gt_valid, deltas)  # (B, D)
    peak = jnp.max(qi, axis=(1, 2))
    any_fg = up[:, None] < peak[None, :]  # (256, B)
    hits = jnp.where(any_fg[..., None], fg | holes, empty[None])
    return jnp.transpose(hits, (1, 2, 0))  # (B, D, 256)


@jax.jit
def _needed_levels(q, table):
    """(256,) bool: the levels some threshold of the batch probes."""
    peak = jnp.max(q.astype(jnp.int32), axis=(-2, -1))
    return jnp.zeros((NUM_LEVELS,), bool).at[table[peak].reshape(-1)].set(True)


@jax.jit
def _counts_from_level_hits(level_hits, q, table, valid):
    peak = jnp.max(q.astype(jnp.int32), axis=(-2, -1))  # (B,)
    levels = table[peak]  # (B, T)
    hits = jnp.take_along_axis(level_hits, levels[:, None, :], axis=-1)  # (B, D, T)
    return jnp.sum(hits & valid[:, None, None], axis=0, dtype=jnp.int32)


def level_hits(
    quantized: jax.Array,
    gt_boxes: jax.Array,
    num_gt: jax.Array,
    iou_thresholds=DEFAULT_IOU_THRESHOLDS,
    multi_contour: bool = True,
    needed: jax.Array | None = None,
) -> jax.Array:
    """Per map, IoU threshold and integer level, whether the evaluator would count a hit.

    Args:
      quantized: (B, H, W) uint8 from ``quantize_scoremaps``.
      gt_boxes: (B, M, 4) int, ``(x0, y0, x1, y1)`` inclusive pixel coordinates in the map's
        frame (the evaluator's resized boxes), padded to M per image. Boxes must satisfy
        ``0 <= x0 <= x1``, ``0 <= y0 <= y1`` (the evaluator's convention check); like the
        evaluator, boxes reaching past the map are accepted as they are.
      num_gt: (B,) int, the number of real boxes of each image (>= 1).
      iou_thresholds: integer percentages (D,).
      multi_contour: every contour's box (V2) or the largest contour's only (V1).
      needed: optional (256,) bool, the levels to evaluate (others come back False); all by
        default. ``box_correct_counts`` passes the levels its thresholds probe.

    Returns:
      (B, D, 256) bool: entry [b, d, L] for the mask ``quantized[b] > L``.
    """
    q, gt, num_gt, deltas = _check_box_inputs(quantized, gt_boxes, num_gt, iou_thresholds)
    if needed is None:
        needed = jnp.ones((NUM_LEVELS,), bool)
    fn = _all_level_hits_v2 if multi_contour else _all_level_hits_v1
    return fn(q, gt, num_gt, deltas, needed)


def box_correct_counts(
    quantized: jax.Array,
    gt_boxes: jax.Array,
    num_gt: jax.Array,
    thresholds=None,
    iou_thresholds=DEFAULT_IOU_THRESHOLDS,
    multi_contour: bool = True,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Images counted correct at each (IoU threshold, CAM threshold): the evaluator's
    ``num_correct`` for one batch.

    Args:
      quantized: (B, H, W) uint8 from ``quantize_scoremaps``.
      gt_boxes, num_gt, iou_thresholds, multi_contour: as ``level_hits``.
      thresholds: (T,) CAM thresholds in [0, 1]; default ``default_thresholds()``.
      valid: (B,) bool, False for padding rows of a ragged last batch; default all True.

    Returns:
      (D, T) int32 counts; sum them over batches (``WsolBoxAccumulator``).
    """
    thresholds = default_thresholds() if thresholds is None else thresholds
    table = jnp.asarray(threshold_levels(thresholds))
    q = jnp.asarray(quantized)
    needed = _needed_levels(q, table) if q.ndim == 3 else None
    hits = level_hits(q, gt_boxes, num_gt, iou_thresholds, multi_contour, needed)
    b = hits.shape[0]
    valid = jnp.ones((b,), bool) if valid is None else jnp.asarray(valid, bool)
    if valid.shape != (b,):
        raise ValueError(f"valid must have shape ({b},), got {valid.shape}.")
    return _counts_from_level_hits(hits, jnp.asarray(quantized), table, valid)


def _check_box_inputs(quantized, gt_boxes, num_gt, iou_thresholds):
    q = jnp.asarray(quantized)
    if q.dtype != jnp.uint8 or q.ndim != 3:
        raise ValueError(
            f"quantized must be (B, H, W) uint8 (see quantize_scoremaps), got {q.dtype} {q.shape}."
        )
    b, h, w = q.shape
    if h == 0 or w == 0:
        raise ValueError(f"maps must have non-empty spatial axes, got {q.shape}.")
    gt = np.asarray(gt_boxes) if not isinstance(gt_boxes, jax.core.Tracer) else gt_boxes
    if gt.ndim != 3 or gt.shape[0] != b or gt.shape[2] != 4 or gt.shape[1] == 0:
        raise ValueError(f"gt_boxes must have shape ({b}, M >= 1, 4), got {gt.shape}.")
    if not jnp.issubdtype(gt.dtype, jnp.integer):
        raise ValueError(f"gt_boxes must be integer pixel coordinates, got {gt.dtype}.")
    n = np.asarray(num_gt) if not isinstance(num_gt, jax.core.Tracer) else num_gt
    if n.shape != (b,):
        raise ValueError(f"num_gt must have shape ({b},), got {n.shape}.")
    if isinstance(gt, np.ndarray) and isinstance(n, np.ndarray):
        if np.any(n < 1) or np.any(n > gt.shape[1]):
            raise ValueError(f"num_gt must be in [1, {gt.shape[1]}] (every image needs a GT box).")
        real = np.arange(gt.shape[1])[None, :] < n[:, None]
        g = gt[real]
        if np.any(g < 0) or np.any(g[:, 2] < g[:, 0]) or np.any(g[:, 3] < g[:, 1]):
            raise ValueError(
                "GT boxes must be (x0, y0, x1, y1) with 0 <= x0 <= x1 and 0 <= y0 <= y1."
            )
    deltas = np.asarray(iou_thresholds)
    if deltas.ndim != 1 or deltas.size == 0 or not np.issubdtype(deltas.dtype, np.integer):
        raise ValueError(
            f"iou_thresholds must be a non-empty list of integer percentages, got {deltas!r}."
        )
    if np.any((deltas < 0) | (deltas > 100)):
        raise ValueError("iou_thresholds must be percentages in [0, 100].")
    return (
        q,
        jnp.asarray(gt, jnp.int32),
        jnp.asarray(n, jnp.int32),
        jnp.asarray(deltas, jnp.int32),
    )


def _outer_areas(fgp: jax.Array, lab: jax.Array, blab: jax.Array) -> jax.Array:
    """Twice the ``cv2.contourArea`` of every component's outer contour.

    fgp: (H+2, W+2) bool foreground padded with a frame of background; lab, blab: its
    8-connected foreground and 4-connected background labels. Returns int32 ((H+2)*(W+2),)
    indexed by foreground label (0 where there is no label).

    The contour is the polygon through the centres of the border pixels. Each of its edges lies
    in one 2x2 window of pixel centres and is decided by that window alone: an axis edge joins
    two foreground pixels whose other side is background, a diagonal edge joins two diagonal
    foreground pixels past a background pixel. Every edge faces a background pixel; the edges
    facing the background component that encloses the component (not one of its holes) make
    its outer contour, and their shoelace terms, walked with the background on the right, sum
    to its area. A hole's encloser is the foreground component just left of its first pixel.
    """
    hp, wp = fgp.shape
    npx = hp * wp
    flat_lab = lab.reshape(-1)
    # parent[B]: the fg label left of bg component B's first pixel; -1 for the outside (B = 0).
    idx = jnp.arange(npx, dtype=jnp.int32)
    parent = jnp.where(idx > 0, flat_lab[jnp.maximum(idx - 1, 0)], -1)

    ys = jnp.arange(hp - 1, dtype=jnp.int32)[:, None]
    corners = {
        "tl": (slice(0, -1), slice(0, -1), 0, 0),
        "tr": (slice(0, -1), slice(1, None), 1, 0),
        "bl": (slice(1, None), slice(0, -1), 0, 1),
        "br": (slice(1, None), slice(1, None), 1, 1),
    }
    f = {k: fgp[r, c] for k, (r, c, _, _) in corners.items()}
    lb = {k: lab[r, c] for k, (r, c, _, _) in corners.items()}
    bl = {k: blab[r, c] for k, (r, c, _, _) in corners.items()}
    off = {k: (dx, dy) for k, (_, _, dx, dy) in corners.items()}
    # (from, to, facing, condition): the background pixel `facing` is on the right of the walk.
    edges = [
        ("tl", "tr", "bl", f["tl"] & f["tr"] & ~f["bl"] & ~f["br"]),
        ("br", "bl", "tl", f["bl"] & f["br"] & ~f["tl"] & ~f["tr"]),
        ("bl", "tl", "tr", f["tl"] & f["bl"] & ~f["tr"] & ~f["br"]),
        ("tr", "br", "tl", f["tr"] & f["br"] & ~f["tl"] & ~f["bl"]),
        ("br", "tl", "tr", f["tl"] & f["br"] & ~f["tr"]),
        ("tl", "br", "bl", f["tl"] & f["br"] & ~f["bl"]),
        ("tr", "bl", "tl", f["tr"] & f["bl"] & ~f["tl"]),
        ("bl", "tr", "br", f["tr"] & f["bl"] & ~f["br"]),
    ]
    slots, terms = [], []
    for a, b, facing, cond in edges:
        comp = lb[a]
        outer = cond & (parent[jnp.maximum(bl[facing], 0)] != comp)
        (xa, ya), (xb, yb) = off[a], off[b]
        # Shoelace as trapezoids, (x_b - x_a) * (y_a + y_b): small terms, no int32 overflow.
        term = jnp.broadcast_to((xb - xa) * (2 * ys + ya + yb), cond.shape)
        slots.append(jnp.where(outer, comp, npx).reshape(-1))
        terms.append(jnp.where(outer, term, 0).reshape(-1))
    area2 = (
        jnp.zeros((npx + 1,), jnp.int32)
        .at[jnp.concatenate(slots)]
        .add(jnp.concatenate(terms), mode="promise_in_bounds")
    )
    return jnp.abs(area2[:npx])


def _largest_contour_hits(fgp, lab, gt, gt_valid, deltas) -> jax.Array:
    """(D,) bool: does the box of the largest contour hit? fgp, lab: padded mask and labels.

    ``max(contours, key=cv2.contourArea)`` keeps the first maximum in OpenCV's order (a
    depth-first walk of the contour tree, siblings latest-found first). An enclosed contour
    never has more area than its enclosers, and one with equal area has the same polygon and
    box, so the winner is an outermost component: the one of largest outer area, ties going to
    the component found last in the raster scan, i.e. the largest label."""
    hp, wp = fgp.shape
    h, w = hp - 2, wp - 2
    npx = hp * wp
    area2 = _outer_areas(fgp, lab, label_one(~fgp, 4))
    ids = jnp.arange(npx, dtype=jnp.int32)
    root = lab.reshape(-1) == ids
    best_area = jnp.max(jnp.where(root, area2, -1))
    best = jnp.max(jnp.where(root & (area2 == best_area), ids, -1))
    sel = lab == best
    cols = jnp.any(sel, axis=0)
    rows = jnp.any(sel, axis=1)
    # Padded coordinates: image x = padded x - 1.
    x0 = jnp.argmax(cols) - 1
    y0 = jnp.argmax(rows) - 1
    x1 = wp - 2 - jnp.argmax(cols[::-1])
    y1 = hp - 2 - jnp.argmax(rows[::-1])
    box = jnp.stack([x0, y0, jnp.minimum(x1 + 1, w - 1), jnp.minimum(y1 + 1, h - 1)])
    return _hits(box[None].astype(jnp.int32), jnp.ones((1,), bool), gt, gt_valid, deltas)


@jax.jit
def _all_level_hits_v1(q, gt_boxes, num_gt, deltas, needed):
    b = q.shape[0]
    d = deltas.shape[0]
    gt_valid = jnp.arange(gt_boxes.shape[1]) < num_gt[:, None]
    qp = jnp.pad(q.astype(jnp.int32), ((0, 0), (1, 1), (1, 1)), constant_values=-1)
    label8 = jax.vmap(lambda m, init: label_one(m, 8, init))
    largest = jax.vmap(_largest_contour_hits, in_axes=(0, 0, 0, 0, None))

    def step(labels, level):
        fgp = qp > level
        labels = label8(fgp, labels)
        return labels, largest(fgp, labels, gt_boxes, gt_valid, deltas)

    down = jnp.arange(NUM_LEVELS - 1, -1, -1, dtype=jnp.int32)
    hits = _sweep(step, jnp.full(qp.shape, -1, jnp.int32), down, needed, (b, d))[::-1]
    empty = jax.vmap(_empty_hits, in_axes=(0, 0, None))(gt_boxes, gt_valid, deltas)
    peak = jnp.max(q.astype(jnp.int32), axis=(1, 2))
    any_fg = jnp.arange(NUM_LEVELS)[:, None] < peak[None, :]
    hits = jnp.where(any_fg[..., None], hits, empty[None])
    return jnp.transpose(hits, (1, 2, 0))


# --------------------------------------------------------------------------------------------
# PxAP.


def pxap_bin_edges(thresholds=None) -> np.ndarray:
    """The evaluator's histogram edges ``thresholds + [1, 2, 3]``, float64 (T + 3,)."""
    thresholds = default_thresholds() if thresholds is None else thresholds
    return np.append(_check_thresholds(thresholds), [1.0, 2.0, 3.0])


def _float32_ceil(edges: np.ndarray) -> np.ndarray:
    """Smallest float32 >= each float64 edge, so ``x >= edge`` is exact for float32 x."""
    e32 = edges.astype(np.float32)
    low = e32.astype(np.float64) < edges
    e32[low] = np.nextafter(e32[low], np.float32(np.inf))
    return e32


@jax.jit
def _histograms(scoremaps, masks, edges):
    x = scoremaps.reshape(-1).astype(jnp.float32)
    m = masks.reshape(-1)
    nbins = edges.shape[0] - 1
    # np.histogram: bin k holds edges[k] <= x < edges[k + 1]; the last bin also holds its
    # right edge; values outside [edges[0], edges[-1]] are dropped.
    k = jnp.searchsorted(edges, x, side="right") - 1
    k = jnp.where(x == edges[-1], nbins - 1, k)
    inside = (k >= 0) & (k < nbins)
    k = jnp.where(inside, k, nbins)
    fg = jnp.zeros((nbins + 1,), jnp.int32).at[k].add((m == 1) & inside)
    bg = jnp.zeros((nbins + 1,), jnp.int32).at[k].add((m == 0) & inside)
    return jnp.stack([fg[:nbins], bg[:nbins]])


def pxap_histograms(scoremaps: jax.Array, masks: jax.Array, thresholds=None) -> jax.Array:
    """Score histograms of GT-foreground and GT-background pixels (``MaskEvaluator``).

    Args:
      scoremaps: (B, H, W) float32 in [0, 1] (compared with the float64 bin edges exactly).
      masks: (B, H, W) integer, the evaluator's convention: 1 foreground, 0 background, any
        other value (255) ignored.
      thresholds: (T,) in [0, 1]; default ``default_thresholds()``.

    Returns:
      (2, T + 2) int32: row 0 foreground, row 1 background counts per bin.
    """
    s = jnp.asarray(scoremaps)
    m = jnp.asarray(masks)
    if s.ndim != 3 or not jnp.issubdtype(s.dtype, jnp.floating):
        raise ValueError(f"scoremaps must be (B, H, W) float, got {s.dtype} {s.shape}.")
    if m.shape != s.shape or not jnp.issubdtype(m.dtype, jnp.integer):
        raise ValueError(f"masks must be integer with shape {s.shape}, got {m.dtype} {m.shape}.")
    _check_unit_interval(s)
    edges = jnp.asarray(_float32_ceil(pxap_bin_edges(thresholds)))
    return _histograms(s, m, edges)


def pxap_from_histograms(true_hist: np.ndarray, false_hist: np.ndarray) -> float:
    """PxAP in percent from the two histograms, with ``MaskEvaluator.compute``'s float64
    arithmetic (precision summed against recall steps, bins of empty predictions skipped)."""
    true_hist = np.asarray(true_hist, np.float64)
    false_hist = np.asarray(false_hist, np.float64)
    tp = true_hist[::-1].cumsum()
    fn = true_hist.sum() - tp
    fp = false_hist[::-1].cumsum()
    if np.all(tp + fn <= 0):
        raise ValueError("no GT-foreground pixel was evaluated.")
    if np.all(tp + fp <= 0):
        raise ValueError("no pixel was evaluated (all ignored).")
    predicted = (tp + fp) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
    return float((precision[1:] * np.diff(recall))[predicted[1:]].sum() * 100)


# --------------------------------------------------------------------------------------------
# Accumulators.


@dataclasses.dataclass
class WsolBoxAccumulator:
    """Streaming ``num_correct`` of the box evaluator; ``merge`` combines hosts or shards.

    thresholds: (T,) CAM thresholds; iou_thresholds: (D,) integer percentages.
    """

    thresholds: np.ndarray = dataclasses.field(default_factory=default_thresholds)
    iou_thresholds: tuple[int, ...] = DEFAULT_IOU_THRESHOLDS
    counts: np.ndarray | None = None
    num_images: int = 0

    def __post_init__(self):
        self.thresholds = _check_thresholds(self.thresholds)
        self.iou_thresholds = tuple(int(d) for d in self.iou_thresholds)
        if self.counts is None:
            self.counts = np.zeros((len(self.iou_thresholds), len(self.thresholds)), np.int64)

    def update(self, counts: jax.Array, num_images: int) -> None:
        """Adds one batch: counts (D, T) from ``box_correct_counts``, its number of real images."""
        counts = np.asarray(jax.device_get(counts), np.int64)
        if counts.shape != self.counts.shape:
            raise ValueError(f"counts must have shape {self.counts.shape}, got {counts.shape}.")
        self.counts = self.counts + counts
        self.num_images += int(num_images)

    def merge(self, other: "WsolBoxAccumulator") -> "WsolBoxAccumulator":
        if not np.array_equal(self.thresholds, other.thresholds) or (
            self.iou_thresholds != other.iou_thresholds
        ):
            raise ValueError("cannot merge box counts made with different thresholds.")
        return WsolBoxAccumulator(
            self.thresholds,
            self.iou_thresholds,
            self.counts + other.counts,
            self.num_images + other.num_images,
        )

    def box_accuracy(self) -> np.ndarray:
        """BoxAcc curves in percent, float64 (D, T)."""
        if self.num_images == 0:
            raise ValueError("no images were evaluated.")
        return self.counts * 100.0 / float(self.num_images)

    def max_box_acc(self) -> dict[int, float]:
        """Best BoxAcc over thresholds for each IoU threshold (the evaluator's ``compute``)."""
        acc = self.box_accuracy()
        return {d: float(row.max()) for d, row in zip(self.iou_thresholds, acc, strict=True)}

    def max_box_acc_v2(self) -> float:
        """MaxBoxAccV2: mean over IoU thresholds (use multi-contour counts)."""
        return float(np.average(list(self.max_box_acc().values())))


@dataclasses.dataclass
class PxAPAccumulator:
    """Streaming PxAP histograms; ``merge`` combines hosts or shards."""

    thresholds: np.ndarray = dataclasses.field(default_factory=default_thresholds)
    histograms: np.ndarray | None = None

    def __post_init__(self):
        self.thresholds = _check_thresholds(self.thresholds)
        if self.histograms is None:
            self.histograms = np.zeros((2, len(self.thresholds) + 2), np.int64)

    def update(self, histograms: jax.Array) -> None:
        """Adds one batch of ``pxap_histograms`` (2, T + 2)."""
        h = np.asarray(jax.device_get(histograms), np.int64)
        if h.shape != self.histograms.shape:
            raise ValueError(f"histograms must have shape {self.histograms.shape}, got {h.shape}.")
        self.histograms = self.histograms + h

    def merge(self, other: "PxAPAccumulator") -> "PxAPAccumulator":
        if not np.array_equal(self.thresholds, other.thresholds):
            raise ValueError("cannot merge histograms made with different thresholds.")
        return PxAPAccumulator(self.thresholds, self.histograms + other.histograms)

    def pxap(self) -> float:
        return pxap_from_histograms(self.histograms[0], self.histograms[1])


__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "NUM_LEVELS",
    "PxAPAccumulator",
    "WsolBoxAccumulator",
    "box_correct_counts",
    "default_thresholds",
    "level_hits",
    "pxap_bin_edges",
    "pxap_from_histograms",
    "pxap_histograms",
    "quantize_scoremaps",
    "threshold_levels",
]
