"""The CAM paper's localization metrics, as pure functions of arrays plus a streaming accumulator.

Boxes are (x0, y0, x1, y1) pixel boxes with exclusive x1/y1 (a box spanning pixel columns a..b has
x0 = a, x1 = b + 1), so a box's area is its pixel count.

Protocol (Zhou et al. 2016): one box per guessed class; an image is correct at top-k when one of
its first k guesses has the ground-truth class and IoU >= 0.5 with one of its GT boxes. With one
box per class from that class's CAM, this is exactly "GT class among the top-k predictions and the
GT class's box hits", which is how it is computed here. GT-known loc ignores the classifier.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from camjax.localization.boxes import box_from_scoremap


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


def localization_counts(
    scoremaps: jax.Array,
    gt_boxes: jax.Array,
    num_gt: jax.Array,
    labels: jax.Array,
    top_classes: jax.Array,
    valid: jax.Array,
    thresholds: jax.Array,
    center_boxes: jax.Array,
    iou_threshold: float = 0.5,
) -> dict[str, jax.Array]:
    """Per-batch counts of correct images for every threshold; sum them over batches.

    scoremaps: (B, H, W) min-max normalised CAM of each image's GT class at image resolution.
    gt_boxes: (B, M, 4); num_gt: (B,); labels: (B,) int; top_classes: (B, k) predicted classes,
    best first; valid: (B,) bool (padding rows count nowhere); thresholds: (T,) in [0, 1];
    center_boxes: (F, 4). Returns int32 counts: 'n', 'top1_cls', 'topk_cls' scalars,
    'gt_known', 'top1_loc', 'topk_loc' (T,), 'center_box' (F,).
    """
    boxes = jax.vmap(lambda t: box_from_scoremap(scoremaps, t))(thresholds)  # (T, B, 4)
    hit = (max_iou_with_gt(boxes, gt_boxes, num_gt) >= iou_threshold) & valid  # (T, B)
    top1 = top_classes[:, 0] == labels
    topk = jnp.any(top_classes == labels[:, None], axis=-1)
    center_b = jnp.broadcast_to(center_boxes[:, None], (center_boxes.shape[0], *labels.shape, 4))
    center_hit = (max_iou_with_gt(center_b, gt_boxes, num_gt) >= iou_threshold) & valid

    def count(x, axis=-1):
        return jnp.sum(x, axis=axis, dtype=jnp.int32)

    return {
        "n": count(valid),
        "top1_cls": count(top1 & valid),
        "topk_cls": count(topk & valid),
        "gt_known": count(hit),
        "top1_loc": count(hit & top1),
        "topk_loc": count(hit & topk),
        "center_box": count(center_hit),
    }


@dataclasses.dataclass
class LocalizationAccumulator:
    """Streaming sums of `localization_counts` over a split; `merge` combines hosts or shards."""

    thresholds: np.ndarray
    center_fractions: np.ndarray
    counts: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def update(self, batch_counts: dict[str, jax.Array]) -> None:
        for k, v in jax.device_get(batch_counts).items():
            self.counts[k] = self.counts.get(k, 0) + np.asarray(v, np.int64)

    def merge(self, other: "LocalizationAccumulator") -> "LocalizationAccumulator":
        if not np.array_equal(self.thresholds, other.thresholds):
            raise ValueError("cannot merge localization counts made with different thresholds.")
        merged = LocalizationAccumulator(self.thresholds, self.center_fractions)
        for k in self.counts.keys() | other.counts.keys():
            merged.counts[k] = self.counts.get(k, 0) + other.counts.get(k, 0)
        return merged

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
