"""The box-counting engine: the WSOL protocol of Choe et al. (CVPR 2020), reproduced exactly,
and the CAM paper's heuristic as one more rule of it.

The published evaluator (clovaai/wsolevaluation) loops over images and thresholds with OpenCV.
This module computes the same integer counts for whole batches:

* ``quantize_scoremaps``: ``(scoremap * 255).astype(np.uint8)`` of the evaluator;
* ``box_correct_counts``: per (IoU threshold, CAM threshold), how many images have a box with
  IoU >= delta / 100 against one of their GT boxes. With ``multi_contour=True`` every contour's
  box counts (MaxBoxAccV2); otherwise the largest contour's (MaxBoxAcc, "V1"); with
  ``paper=True`` the CAM paper's box (``boxes.py``) on maps from ``quantize_for_thresholds``;
* ``WsolBoxAccumulator`` sums those over batches and hosts and finishes the metrics in float64
  numpy, with the evaluator's formulas (PxAP: ``pxap.py``).

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
  one whose first pixel comes last in raster order. The polygon area is a sum over local
  2x2 windows of pixel centres.

The counts come from compiled union-find sweeps on the host CPU cores that see all 256 levels
in one pass per map (``maxtree.py``; the tests hold an independent XLA implementation to the
same reference). Dense work (CAMs, resizing, normalising, quantising, PxAP histograms) stays
on device; only the uint8 maps travel to the host for the max-tree.
"""

import dataclasses
import functools
import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np

from camjax import errors, explicit_axes

NUM_LEVELS = 256  # levels of a uint8 map, the evaluator's quantisation
DEFAULT_IOU_THRESHOLDS = (30, 50, 70)


def _backend(name: str):
    """``maxtree``'s numba kernels, loaded on first use: ``import camjax`` skips numba's seconds."""
    return importlib.import_module(f"camjax.localization.{name}")


def check_float_maps(maps, name: str) -> jax.Array:
    """maps as a jax array, or a ValueError unless it is a float (..., H, W) array."""
    maps = jnp.asarray(maps)
    if not jnp.issubdtype(maps.dtype, jnp.floating):
        raise ValueError(f"{name} must be a float array, got {maps.dtype}.")
    if maps.ndim < 2:
        raise ValueError(f"{name} must have rank >= 2 (..., H, W), got {maps.shape}.")
    return maps


def default_thresholds(interval: float = 0.001) -> np.ndarray:
    """The evaluator's CAM threshold grid ``np.arange(0, 1, interval)``, float64 (T,)."""
    return np.arange(0, 1, interval)


# --------------------------------------------------------------------------------------------
# Quantisation and threshold levels.


@functools.cache
def _quantization_steps() -> np.ndarray:
    """(257,) float32: entry k is the smallest float32 f with f * 255 >= k (real arithmetic), 256
    is +inf. A float32 x quantises to the k with steps[k] <= x < steps[k + 1], which is
    ``floor(float64(x) * 255)``: a float32 times 255 is exact in float64 (24 + 8 bits)."""
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


@jax.jit
def _quantize_f32_checked(scoremaps: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`_quantize_f32` and whether all values lie in [0, 1] (NaN: no); Explicit axes made Auto."""
    spec = (explicit_axes.batch_spec(scoremaps, scoremaps.ndim), explicit_axes.REPLICATED)
    return explicit_axes.with_auto_axes(_checked_levels, scoremaps, spec, scoremaps)


def _checked_levels(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = x.astype(jnp.float32)
    return _quantize_f32(x), jnp.all((x >= 0) & (x <= 1))


def quantize_scoremaps(scoremaps: jax.Array | np.ndarray) -> jax.Array | np.ndarray:
    """The evaluator's ``(scoremap * 255).astype(np.uint8)``, exactly.

    Args:
      scoremaps: (..., H, W) float in [0, 1], e.g. ``camjax.cam.normalize_minmax`` output
        (which, like the evaluator's ``normalize_scoremap``, turns constant and NaN maps into
        zeros). Values outside [0, 1] or NaN are an error (checked unless traced under jit).

    Returns:
      (..., H, W) uint8 ``floor(255 * s)`` with ``s`` widened to float64 as the evaluator does.
      A numpy input is quantised on the host CPU cores into numpy, ready for the max-tree; a
      jax array on its device into a jax array (float32 exactly as if widened, wider floats
      first rounded to float32 by JAX).
    """
    if isinstance(scoremaps, np.ndarray) and np.issubdtype(scoremaps.dtype, np.floating):
        if scoremaps.ndim < 2:
            raise ValueError(f"scoremaps must have rank >= 2 (..., H, W), got {scoremaps.shape}.")
        quantized, in_range = _backend("maxtree").quantize(scoremaps)
    else:
        scoremaps = check_float_maps(scoremaps, "scoremaps")
        if isinstance(scoremaps, jax.core.Tracer):
            return _quantize_f32(scoremaps)  # Values under the caller's jit are its business.
        # One compiled pass quantises and checks (separate host scans cost more than the sweeps).
        quantized, in_range = _quantize_f32_checked(scoremaps)
    if not in_range:
        raise ValueError(_UNIT_INTERVAL_ERROR)
    return quantized


_UNIT_INTERVAL_ERROR = (
    "scoremaps must lie in [0, 1] without NaN (min-max normalise them first, e.g. with "
    "camjax.cam.normalize_minmax)."
)


def _check_unit_interval(x) -> None:
    if isinstance(x, jax.core.Tracer):
        return  # Values under the caller's jit are the caller's responsibility.
    x = np.asarray(x)
    if x.size and not (np.all(x >= 0) and np.all(x <= 1)):
        raise ValueError(_UNIT_INTERVAL_ERROR)


def _check_thresholds(thresholds) -> np.ndarray:
    t = np.asarray(thresholds)
    real = np.issubdtype(t.dtype, np.floating) or np.issubdtype(t.dtype, np.integer)
    if t.ndim != 1 or t.size == 0 or not real:
        raise ValueError(f"thresholds must be a non-empty 1-D real array, got {t!r}.")
    t = t.astype(np.float64)
    if not np.all((t >= 0) & (t <= 1)):
        raise ValueError("thresholds must lie in [0, 1].")
    return t


def threshold_levels(thresholds, paper: bool = False) -> np.ndarray:
    """Level of every CAM threshold for every possible map peak: int32 (256, T).

    Entry [m, i] is the evaluator's ``int(thresholds[i] * m)`` for a quantised map whose
    maximum is m, computed with the same float64 products (numpy, on the host). With
    ``paper``, maps come from ``quantize_for_thresholds`` and threshold i's level is the number
    of thresholds below it, whatever the peak."""
    t = _check_thresholds(thresholds)
    if paper:
        if t.size >= NUM_LEVELS:
            raise ValueError(f"the paper's rule takes at most {NUM_LEVELS - 1} thresholds.")
        below = np.searchsorted(np.sort(t), t, side="left").astype(np.int32)
        return np.broadcast_to(below, (NUM_LEVELS, t.size))
    peaks = np.arange(NUM_LEVELS, dtype=np.uint8)
    return (t[None, :] * peaks[:, None]).astype(np.int32)


def quantize_for_thresholds(scoremaps: jax.Array, thresholds: jax.Array) -> jax.Array:
    """The CAM paper's masks ``scoremap >= t`` for every threshold as one uint8 map (jittable).

    Args:
      scoremaps: (..., H, W) float, e.g. CAMs divided by their maximum (the paper's threshold
        is relative to the map's max).
      thresholds: (T,) in [0, 1], T < 256, compared in the maps' dtype.

    Returns:
      (..., H, W) uint8: how many thresholds each score reaches, so that ``scoremap >= t`` is
      exactly ``q > threshold_levels(thresholds, paper=True)[:, i]`` for threshold t = t_i.
    """
    t = jnp.sort(jnp.asarray(thresholds, scoremaps.dtype))
    return jnp.searchsorted(t, scoremaps, side="right").astype(jnp.uint8)


# --------------------------------------------------------------------------------------------
# Box counts.


def _rule(multi_contour: bool, paper: bool) -> int:
    if paper and multi_contour:
        raise ValueError("the paper's heuristic boxes one region: pass multi_contour=False.")
    return 2 if paper else 0 if multi_contour else 1  # maxtree's rule numbers


def level_hits(
    quantized: jax.Array | np.ndarray,
    gt_boxes: jax.Array | np.ndarray,
    num_gt: jax.Array | np.ndarray,
    iou_thresholds=DEFAULT_IOU_THRESHOLDS,
    multi_contour: bool = True,
    paper: bool = False,
) -> np.ndarray:
    """Per map, IoU threshold and integer level, whether the rule counts a hit.

    Args:
      quantized: (B, H, W) uint8 from ``quantize_scoremaps`` (``quantize_for_thresholds`` with
        ``paper``).
      gt_boxes: (B, M, 4) int, ``(x0, y0, x1, y1)`` inclusive pixel coordinates in the map's
        frame (the evaluator's resized boxes), padded to M per image. Boxes must satisfy
        ``0 <= x0 <= x1``, ``0 <= y0 <= y1`` (the evaluator's convention check); like the
        evaluator, boxes reaching past the map are accepted as they are. With ``paper``, any
        real inclusive boxes (the pipeline's exclusive boxes with 1 off the ends).
      num_gt: (B,) int, the number of real boxes of each image (>= 1; >= 0 with ``paper``).
      iou_thresholds: integer percentages (D,).
      multi_contour: every contour's box (V2) or the largest contour's only (V1).
      paper: the CAM paper's heuristic instead of the evaluator's contours: the box of the
        largest 8-connected region by pixel count (ties: first in raster order), tight, none
        for an empty mask (needs ``multi_contour=False``).

    Returns:
      (B, D, 256) bool: entry [b, d, L] for the mask ``quantized[b] > L``.
    """
    rule = _rule(multi_contour, paper)
    q, gt, num_gt, deltas = _check_box_inputs(quantized, gt_boxes, num_gt, iou_thresholds, paper)
    reached, rank = _reached_levels(q, gt, num_gt, deltas, rule)
    return reached[:, None, :] > rank[None, :, None]


def box_correct_counts(
    quantized: jax.Array | np.ndarray,
    gt_boxes: jax.Array | np.ndarray,
    num_gt: jax.Array | np.ndarray,
    thresholds=None,
    iou_thresholds=DEFAULT_IOU_THRESHOLDS,
    multi_contour: bool = True,
    valid: jax.Array | np.ndarray | None = None,
    paper: bool = False,
) -> np.ndarray:
    """Images counted correct at each (IoU threshold, CAM threshold): the evaluator's
    ``num_correct`` for one batch, or the CAM paper's localization counts with ``paper``.

    Args:
      quantized: (B, H, W) uint8 from ``quantize_scoremaps`` (with ``paper``: from
        ``quantize_for_thresholds`` with the same thresholds).
      gt_boxes, num_gt, iou_thresholds, multi_contour, paper: as ``level_hits``.
      thresholds: (T,) CAM thresholds in [0, 1]; default ``default_thresholds()``.
      valid: (B,) bool, False for padding rows of a ragged last batch; default all True. Or
        (K, B): K sets of images counted from the same sweep (e.g. all images, and those whose
        top-1 class is right), giving (K, D, T).

    Returns:
      (D, T) int32 numpy counts, or (K, D, T) for a (K, B) valid; sum them over batches
      (``WsolBoxAccumulator``).
    """
    rule = _rule(multi_contour, paper)
    thresholds = default_thresholds() if thresholds is None else thresholds
    table = threshold_levels(thresholds, paper)  # (256, T)
    q, gt, num_gt, deltas = _check_box_inputs(quantized, gt_boxes, num_gt, iou_thresholds, paper)
    b = q.shape[0]
    valid = np.ones((b,), bool) if valid is None else np.asarray(valid, bool)
    if valid.shape[-1:] != (b,) or valid.ndim > 2:
        raise ValueError(f"valid must have shape ({b},) or (K, {b}), got {valid.shape}.")
    # Not reshape(-1, b): an empty batch (b == 0) would make the -1 ambiguous.
    masks = valid.reshape(math.prod(valid.shape[:-1]), b)  # (K, B)
    reached, rank = _reached_levels(q, gt, num_gt, deltas, rule)
    q = np.asarray(q)
    levels = table[q.max(axis=(1, 2))]  # (B, T): the level of each threshold
    at = np.take_along_axis(reached, levels, axis=1)  # (B, T)
    hit = at[:, None, :] > rank[None, :, None]  # (B, D, T)
    counts = np.einsum("kb,bdt->kdt", masks.astype(np.int32), hit.astype(np.int32))
    return counts.reshape(valid.shape[:-1] + counts.shape[1:])


def _reached_levels(q, gt, num_gt, deltas, rule) -> tuple[np.ndarray, np.ndarray]:
    """The max-tree's (B, 256) count of ascending deltas reached per level, and each delta's
    rank among the sorted deltas (D,): delta d is reached at level L iff count > rank[d]."""
    if any(isinstance(x, jax.core.Tracer) for x in (q, gt, num_gt)):
        raise ValueError(
            "box counts run on the host and cannot be traced: call them outside jax.jit."
        )
    order = np.argsort(deltas, kind="stable")
    rank = np.empty(deltas.shape, np.int64)
    rank[order] = np.arange(deltas.size)
    reached = _backend("maxtree").hit_levels(
        np.asarray(q), np.asarray(gt), np.asarray(num_gt), deltas[order], rule
    )
    return reached, rank


def _check_box_inputs(quantized, gt_boxes, num_gt, iou_thresholds, paper=False):
    """Validated (q, gt, num_gt int32, deltas int64): numpy unless traced under jit; gt int32,
    or float64 with ``paper`` (the paper's GT boxes are real-valued)."""
    q = quantized if isinstance(quantized, jax.Array) else np.asarray(quantized)
    if q.dtype != np.uint8 or q.ndim != 3:
        raise ValueError(
            f"quantized must be (B, H, W) uint8 (see quantize_scoremaps), got {q.dtype} {q.shape}."
        )
    b, h, w = q.shape
    if h == 0 or w == 0:
        raise ValueError(f"maps must have non-empty spatial axes, got {q.shape}.")
    gt = np.asarray(gt_boxes) if not isinstance(gt_boxes, jax.core.Tracer) else gt_boxes
    if gt.ndim != 3 or gt.shape[0] != b or gt.shape[2] != 4 or gt.shape[1] == 0:
        raise ValueError(f"gt_boxes must have shape ({b}, M >= 1, 4), got {gt.shape}.")
    if not paper and not jnp.issubdtype(gt.dtype, jnp.integer):
        raise ValueError(f"gt_boxes must be integer pixel coordinates, got {gt.dtype}.")
    n = np.asarray(num_gt) if not isinstance(num_gt, jax.core.Tracer) else num_gt
    if n.shape != (b,):
        raise ValueError(f"num_gt must have shape ({b},), got {n.shape}.")
    if not paper and isinstance(gt, np.ndarray) and isinstance(n, np.ndarray):
        if np.any(n < 1) or np.any(n > gt.shape[1]):
            raise ValueError(f"num_gt must be in [1, {gt.shape[1]}] (every image needs a GT box).")
        real = np.arange(gt.shape[1])[None, :] < n[:, None]
        g = gt[real]
        if np.any(g < 0) or np.any(g[:, 2] < g[:, 0]) or np.any(g[:, 3] < g[:, 1]):
            raise ValueError(
                "GT boxes must be (x0, y0, x1, y1) with 0 <= x0 <= x1 and 0 <= y0 <= y1."
            )
        if np.any(g > np.iinfo(np.int32).max):  # counted in int32: 2**32 + 6 would be 6
            raise ValueError(f"GT box coordinates must be below 2**31; got {g.max()}.")
    deltas = _check_iou_thresholds(iou_thresholds)
    if isinstance(gt, np.ndarray):
        gt = gt.astype(np.float64 if paper else np.int32)
    if isinstance(n, np.ndarray):
        n = np.clip(n, 0, gt.shape[1]).astype(np.int32)
    return q, gt, n, deltas


def _check_iou_thresholds(iou_thresholds) -> np.ndarray:
    """(D,) int64 IoU thresholds, checked: integer percentages in [0, 100]."""
    deltas = np.asarray(iou_thresholds)
    if deltas.ndim != 1 or deltas.size == 0 or not np.issubdtype(deltas.dtype, np.integer):
        raise ValueError(
            f"iou_thresholds must be a non-empty list of integer percentages, got {deltas!r}."
        )
    if np.any((deltas < 0) | (deltas > 100)):
        raise ValueError("iou_thresholds must be percentages in [0, 100].")
    if deltas.size > 101:  # hit levels are int8
        raise ValueError(f"at most 101 iou_thresholds (percentages 0..100), got {deltas.size}.")
    return deltas.astype(np.int64)


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
        # As box_correct_counts takes them: int() would truncate 0.5 to 0 (every box correct).
        self.iou_thresholds = tuple(int(d) for d in _check_iou_thresholds(self.iou_thresholds))
        if self.counts is None:
            self.counts = np.zeros((len(self.iou_thresholds), len(self.thresholds)), np.int64)

    def update(self, counts: jax.Array, num_images: int) -> None:
        """Adds one batch: counts (D, T) from ``box_correct_counts``, its number of real images."""
        counts = np.asarray(jax.device_get(counts))
        if counts.shape != self.counts.shape:
            raise ValueError(f"counts must have shape {self.counts.shape}, got {counts.shape}.")
        if not np.issubdtype(counts.dtype, np.integer):
            raise ValueError(
                f"counts must be integer image counts (box_correct_counts'), got {counts.dtype}."
            )
        if not errors.is_int_at_least(num_images, 0):
            raise ValueError(f"num_images must be an int >= 0, got {num_images!r}.")
        if counts.size and (counts.min() < 0 or counts.max() > num_images):
            raise ValueError(
                f"counts must be in [0, num_images={num_images}] (images counted correct), got "
                f"[{counts.min()}, {counts.max()}]; pass the batch's number of real images."
            )
        self.counts = self.counts + counts.astype(np.int64)
        self.num_images += int(num_images)

    def merge(self, other: "WsolBoxAccumulator") -> None:
        """Adds another accumulator's counts (another host's or shard's), in place as ``update``."""
        if not np.array_equal(self.thresholds, other.thresholds) or (
            self.iou_thresholds != other.iou_thresholds
        ):
            raise ValueError("cannot merge box counts made with different thresholds.")
        self.counts = self.counts + other.counts
        self.num_images += other.num_images

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


__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "NUM_LEVELS",
    "WsolBoxAccumulator",
    "box_correct_counts",
    "default_thresholds",
    "level_hits",
    "quantize_scoremaps",
    "threshold_levels",
]
