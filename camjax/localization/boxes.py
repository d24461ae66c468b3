"""The CAM paper's localization (Zhou et al., CVPR 2016) on the WSOL box-counting engine.

The paper keeps the pixels of a CAM above a fraction of its maximum (0.2) and boxes the largest
connected region. Here that heuristic is one rule of the engine in ``wsol.py`` and
``maxtree.py`` (``paper=True``), which also counts the WSOL protocol's boxes:

* masks ``scoremap >= t`` on maps already divided by their maximum (or min-max normalised),
  decided exactly for every threshold through ``wsol.quantize_for_thresholds``;
* the largest 8-connected region by pixel count, ties going to the region met first in raster
  order (the evaluator's MaxBoxAcc instead ranks OpenCV contours by polygon area);
* its tight box; no box when no pixel is kept (the evaluator scores ``(0, 0, 0, 0)``);
* IoU with the pipeline's real-valued GT boxes (``x1``, ``y1`` exclusive) decided in float64.

``box_from_scoremap`` is that box for each map, with exclusive ends: a region over columns
``a..b`` has ``x0 = a, x1 = b + 1``, an empty mask gives ``(0, 0, 0, 0)``.
``localization_counts`` and ``LocalizationAccumulator`` give the paper's GT-known, top-1 and
top-k localization over a split: an image is correct at top-k when the GT class is among the k
best guesses and its box has IoU >= 0.5 with one of the image's GT boxes.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from camjax.localization import wsol


def _check_threshold(threshold) -> None:
    values = np.asarray(threshold)
    if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"threshold must be a real number in [0, 1], got dtype {values.dtype}.")
    if np.iscomplexobj(values) or not np.all((values >= 0) & (values <= 1)):
        raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}.")


def box_from_scoremap(scoremap, threshold=0.2) -> np.ndarray:
    """The CAM paper's box: largest 8-connected region of ``scoremap >= threshold``.

    Args:
      scoremap: (..., H, W) float, each map already normalised to [0, 1] (by its maximum, as
        the paper, or min-max); NaN, values outside [0, 1], empty maps and tracers (under
        ``jax.jit``) are refused.
      threshold: scalar or array broadcastable against the leading axes ``...`` of
        ``scoremap``, values in [0, 1]; e.g. ``scoremap`` (B, H, W) with ``threshold`` (T, 1)
        boxes every map at every threshold.

    Returns:
      (*broadcast(..., threshold.shape), 4) int32 numpy ``(x0, y0, x1, y1)``, exclusive ends;
      ``(0, 0, 0, 0)`` where nothing reaches the threshold. Computed on the host cores.
    """
    if any(isinstance(x, jax.core.Tracer) for x in (scoremap, threshold)):
        raise ValueError(
            "box_from_scoremap runs on the host and cannot be traced: call it outside jax.jit."
        )
    maps = np.asarray(wsol.check_float_maps(scoremap, "scoremap"))
    if 0 in maps.shape[-2:]:
        raise ValueError(f"scoremap must have non-empty spatial axes (H, W), got {maps.shape}.")
    # Both normalisations the callers use (max, the paper's, and min-max) give [0, 1]: NaN
    # would be boxed by its finite part (all-NaN as no box), a raw map against a fraction.
    if not (np.all(maps >= 0) and np.all(maps <= 1)):
        raise ValueError(
            "scoremap must lie in [0, 1] without NaN (normalise each map first, e.g. with "
            "camjax.cam.normalize_max, the paper's, or normalize_minmax)."
        )
    _check_threshold(threshold)
    t = np.asarray(threshold, maps.dtype)
    lead = np.broadcast_shapes(maps.shape[:-2], t.shape)
    h, w = maps.shape[-2:]
    # One threshold per map: its mask is the engine's quantised map, boxed at level 0.
    masks = np.broadcast_to(maps, lead + (h, w)) >= np.broadcast_to(t, lead)[..., None, None]
    boxes = wsol._backend("maxtree").region_boxes(masks.reshape(-1, h, w))[:, 0]
    boxes = np.where(boxes[:, :1] >= 0, boxes + np.array([0, 0, 1, 1], np.int32), 0)
    return boxes.reshape(lead + (4,)).astype(np.int32)


def localization_counts(
    region_maps: np.ndarray,
    gt_boxes: np.ndarray,
    num_gt: np.ndarray,
    labels: np.ndarray,
    top_classes: np.ndarray,
    valid: np.ndarray,
    thresholds: np.ndarray,
    iou_threshold: float = 0.5,
) -> dict[str, np.ndarray]:
    """One batch's counts of correct images at every threshold (host); sum them over batches.

    region_maps: (B, H, W) uint8 ``wsol.quantize_for_thresholds(scoremaps, thresholds)`` of the
    GT class's normalised CAM at image resolution; gt_boxes: (B, M, 4) float pixel boxes with
    exclusive ends; num_gt: (B,); labels: (B,) int; top_classes: (B, k) predicted classes, best
    first; valid: (B,) bool (padding rows count nowhere); thresholds: (T,) in [0, 1].
    Returns int counts: 'n', 'top1_cls', 'topk_cls' scalars, 'gt_known', 'top1_loc',
    'topk_loc' (T,).
    """
    delta = round(100 * iou_threshold)
    if abs(delta - 100 * iou_threshold) > 1e-9:
        raise ValueError(f"iou_threshold must be a whole percentage, got {iou_threshold}.")
    labels, top, valid = np.asarray(labels), np.asarray(top_classes), np.asarray(valid, bool)
    top1 = top[:, 0] == labels
    topk = np.any(top == labels[:, None], axis=-1)
    gt = np.asarray(gt_boxes, np.float64)
    inclusive = np.concatenate([gt[..., :2], gt[..., 2:] - 1], axis=-1)
    sets = np.stack([valid, valid & top1, valid & topk])
    hits = wsol.box_correct_counts(
        region_maps, inclusive, num_gt, thresholds, (delta,), False, sets, paper=True
    )[:, 0]
    return {
        "n": np.sum(sets[0]),
        "top1_cls": np.sum(sets[1]),
        "topk_cls": np.sum(sets[2]),
        "gt_known": hits[0],
        "top1_loc": hits[1],
        "topk_loc": hits[2],
    }


def center_box_counts(gt_boxes, num_gt, valid, center_boxes, iou_threshold) -> jax.Array:
    """(F,) int32: images whose GT box each centered box (F, 4) hits, the baseline that knows
    nothing of the image (jittable); arguments as ``localization_counts``."""
    lead = (center_boxes.shape[0], *valid.shape, 4)
    center_b = jnp.broadcast_to(center_boxes[:, None], lead)
    hit = (max_iou_with_gt(center_b, gt_boxes, num_gt) >= iou_threshold) & valid
    return jnp.sum(hit, axis=-1, dtype=jnp.int32)


def box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """IoU of boxes broadcast against each other: a (..., 4), b (..., 4) -> (...) float32.

    Degenerate (zero-area) boxes have IoU 0 with everything, never NaN.
    """
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    iw = jnp.clip(jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0]), 0)
    ih = jnp.clip(jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1]), 0)
    inter = iw * ih

    def area(x):
        return jnp.clip(x[..., 2] - x[..., 0], 0) * jnp.clip(x[..., 3] - x[..., 1], 0)

    union = area(a) + area(b) - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def max_iou_with_gt(boxes: jax.Array, gt_boxes: jax.Array, num_gt: jax.Array) -> jax.Array:
    """Best IoU of each predicted box with any of its image's GT boxes.

    boxes: (..., B, 4); gt_boxes: (B, M, 4) padded; num_gt: (B,) int count of real GT boxes.
    Returns (..., B) float32; 0 for an image without GT boxes.
    """
    iou = box_iou(boxes[..., None, :], gt_boxes)  # (..., B, M)
    real = jnp.arange(gt_boxes.shape[1]) < num_gt[:, None]
    return jnp.max(jnp.where(real, iou, 0.0), axis=-1)


def centered_boxes(height: int, width: int, fractions: np.ndarray) -> np.ndarray:
    """Every centered box whose width and height are each one of `fractions` of the image.

    Returns float32 (F * F, 4): the baseline that knows nothing of the image.
    """
    fw, fh = np.meshgrid(fractions, fractions, indexing="ij")
    fw, fh = fw.reshape(-1), fh.reshape(-1)
    bw, bh = np.round(fw * width), np.round(fh * height)
    x0, y0 = np.floor((width - bw) / 2), np.floor((height - bh) / 2)
    return np.stack([x0, y0, x0 + bw, y0 + bh], axis=-1).astype(np.float32)


@dataclasses.dataclass
class LocalizationAccumulator:
    """Streaming sums of `localization_counts` over a split; `merge` combines hosts or shards."""

    thresholds: np.ndarray
    center_fractions: np.ndarray
    counts: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def update(self, batch_counts: dict[str, jax.Array]) -> None:
        for k, v in jax.device_get(batch_counts).items():
            self.counts[k] = self.counts.get(k, 0) + np.asarray(v, np.int64)

    def merge(self, other: "LocalizationAccumulator") -> None:
        """Adds another accumulator's counts (another host's or shard's), in place as ``update``."""
        if not np.array_equal(self.thresholds, other.thresholds):
            raise ValueError("cannot merge localization counts made with different thresholds.")
        for k in self.counts.keys() | other.counts.keys():
            self.counts[k] = self.counts.get(k, 0) + other.counts.get(k, 0)

    def rates(self) -> dict[str, np.ndarray]:
        """Fractions of the split's images: scalars for classification, (T,) or (F,) curves."""
        n = int(self.counts.get("n", 0))
        if n == 0:
            raise ValueError("no images were evaluated: the split is empty.")
        return {k: np.asarray(v, np.float64) / n for k, v in self.counts.items() if k != "n"}

    def summary(self, threshold: float, k: int) -> dict[str, float]:
        """Headline percentages at one CAM threshold (the nearest grid point is used)."""
        r = self.rates()
        i = int(np.argmin(np.abs(self.thresholds - threshold)))
        best_center = int(np.argmax(r["center_box"]))
        fw, fh = np.meshgrid(self.center_fractions, self.center_fractions, indexing="ij")
        return {
            "threshold": float(self.thresholds[i]),
            "top1_cls": 100 * float(r["top1_cls"]),
            f"top{k}_cls": 100 * float(r["topk_cls"]),
            "top1_loc": 100 * float(r["top1_loc"][i]),
            f"top{k}_loc": 100 * float(r["topk_loc"][i]),
            "gt_known_loc": 100 * float(r["gt_known"][i]),
            "best_center_box_gt_known_loc": 100 * float(r["center_box"][best_center]),
            "best_center_box_size": [
                float(fw.reshape(-1)[best_center]),
                float(fh.reshape(-1)[best_center]),
            ],
            "num_images": int(self.counts["n"]),
        }

    def best_threshold(self) -> float:
        """The grid threshold with the highest GT-known loc (ties: the lowest threshold)."""
        return float(self.thresholds[int(np.argmax(self.rates()["gt_known"]))])
