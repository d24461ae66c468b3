"""The pointing game (Zhang et al., ECCV 2016; TorchRay `benchmark/pointing_game.py`), batched
and jittable, summed over a split with the faithfulness metrics (`faithfulness.batch_sums`).

The point is the map's first maximum in raster order; a hit when some GT pixel lies at
Euclidean distance strictly below `tolerance` (15 px) from it. Accuracy: per class hits /
max(1, images), then the mean over the classes that occur (TorchRay's mean over all classes
when all occur).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def box_masks(boxes: jax.Array, num_boxes: jax.Array, height: int, width: int) -> jax.Array:
    """(B, H, W) bool union of each image's GT boxes: pixels whose centre lies in a box.

    boxes: (B, M, 4) float (x0, y0, x1, y1), pixels, x1 and y1 one past an integer box's last
    pixel; num_boxes: (B,). A centre on an edge counts as inside, at either end: an integer
    box covers pixels x0..x1 - 1, and an edge through a pixel's centre (resized boxes have
    them) keeps that half-covered pixel, the same at both ends."""
    ys = jnp.arange(height, dtype=jnp.float32)[:, None] + 0.5
    xs = jnp.arange(width, dtype=jnp.float32)[None, :] + 0.5
    bx = boxes[:, :, None, None, :]
    inside = (xs >= bx[..., 0]) & (xs <= bx[..., 2]) & (ys >= bx[..., 1]) & (ys <= bx[..., 3])
    real = jnp.arange(boxes.shape[1])[None, :] < num_boxes[:, None]
    return jnp.any(inside & real[:, :, None, None], axis=1)


def pointing_hits(maps: jax.Array, gt_masks: jax.Array, tolerance: float = 15.0) -> jax.Array:
    """(B,) bool: is a GT pixel strictly within `tolerance` px of the map's first maximum?

    maps: (B, H, W); gt_masks: (B, H, W) bool, at the maps' resolution."""
    b, h, w = maps.shape
    idx = jnp.argmax(maps.reshape(b, -1), axis=-1)
    y, x = (idx // w)[:, None, None], (idx % w)[:, None, None]
    yy, xx = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
    accept = (yy - y) ** 2 + (xx - x) ** 2 < tolerance**2
    return jnp.any(jnp.asarray(gt_masks, bool) & accept, axis=(1, 2))  # 0/1 or 255 masks too


def pointing_sums(
    point_maps, gt_masks, labels, num_classes: int, valid, finite, tolerance: float
) -> dict[str, jax.Array]:
    """Per-class hits and counts of a batch's `valid` images; those whose image is not `finite`,
    whose label is outside [0, num_classes) or whose map is not finite count in 'pointing_nan'.
    """
    if num_classes < 1:
        raise ValueError(f"the pointing game needs num_classes >= 1; got {num_classes}.")
    in_range = (labels >= 0) & (labels < num_classes)
    pok = valid & finite & in_range & jnp.all(jnp.isfinite(point_maps), axis=(1, 2))
    point_maps = jnp.where(pok[:, None, None], point_maps, 0.0)
    hits = pointing_hits(point_maps, gt_masks, tolerance) & pok
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return {
        "pointing_hits": jnp.sum(one_hot * hits[:, None], axis=0),
        "pointing_count": jnp.sum(one_hot * pok[:, None], axis=0),
        "pointing_nan": jnp.sum((valid & ~pok).astype(jnp.float32)),
    }


def pointing_summary(sums: dict[str, Any]) -> dict[str, float]:
    """The pointing game in percent from `pointing_sums` summed over a split (host arrays);
    NaN when no image was counted (every map not finite, or every label out of range:
    'pointing_num_nan_maps' says how many), never a plausible 0."""
    seen = sums["pointing_count"] > 0
    per_class = sums["pointing_hits"][seen] / sums["pointing_count"][seen]
    return {
        "pointing_game": 100.0 * float(per_class.mean()) if seen.any() else float("nan"),
        "pointing_num_nan_maps": int(sums.get("pointing_nan", 0)),
    }
