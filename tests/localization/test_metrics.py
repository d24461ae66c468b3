"""Tests for camjax/localization/metrics.py with hand-computed answers."""

import jax.numpy as jnp
import numpy as np
import pytest

from camjax.localization import metrics


def test_box_iou_hand_computed():
    a = jnp.array([0, 0, 10, 10])
    assert float(metrics.box_iou(a, a)) == 1.0
    # Overlap 5x10 = 50; union 100 + 100 - 50 = 150.
    assert float(metrics.box_iou(a, jnp.array([5, 0, 15, 10]))) == pytest.approx(1 / 3)
    assert float(metrics.box_iou(a, jnp.array([10, 0, 20, 10]))) == 0.0  # touching, exclusive
    assert float(metrics.box_iou(a, jnp.array([2, 2, 4, 6]))) == pytest.approx(8 / 100)
    assert float(metrics.box_iou(jnp.zeros(4), jnp.zeros(4))) == 0.0  # degenerate, not NaN


def test_max_iou_ignores_padding_and_takes_best_gt():
    gt = jnp.array([[[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]]], jnp.float32)
    box = jnp.array([[20, 20, 30, 40]], jnp.float32)
    assert float(metrics.max_iou_with_gt(box, gt, jnp.array([2]))[0]) == pytest.approx(0.5)
    assert float(metrics.max_iou_with_gt(box, gt, jnp.array([1]))[0]) == 0.0
    # A leading threshold axis broadcasts.
    assert metrics.max_iou_with_gt(jnp.stack([box, box]), gt, jnp.array([2])).shape == (2, 1)


def test_centered_boxes():
    boxes = metrics.centered_boxes(10, 20, np.array([0.5, 1.0]))
    np.testing.assert_array_equal(
        boxes, [[5, 2, 15, 7], [5, 0, 15, 10], [0, 2, 20, 7], [0, 0, 20, 10]]
    )


def test_localization_counts_hand_built_batch():
    """Three images: a hit with the right class, a hit with a wrong class, a miss; one pad row."""
    maps = np.zeros((4, 8, 8), np.float32)
    maps[0, 2:6, 2:6] = 1.0  # box (2, 2, 6, 6): equals GT 0
    maps[1, 0:4, 0:4] = 1.0  # box (0, 0, 4, 4): equals GT 1
    maps[2, 6:8, 6:8] = 1.0  # box (6, 6, 8, 8): misses GT 2
    maps[:3] += 0.1 * np.arange(64).reshape(8, 8) / 64  # below 0.2 except blobs
    gt = np.array([[[2, 2, 6, 6]], [[0, 0, 4, 4]], [[0, 0, 8, 8]], [[0, 0, 8, 8]]], np.float32)
    labels = jnp.array([1, 2, 0, 0])
    top = jnp.array([[1, 0], [0, 2], [0, 1], [0, 1]])
    out = metrics.localization_counts(
        jnp.asarray(maps),
        jnp.asarray(gt),
        jnp.array([1, 1, 1, 1]),
        labels,
        top,
        jnp.array([True, True, True, False]),
        thresholds=jnp.array([0.5, 0.05]),
        center_boxes=jnp.array([[0, 0, 8, 8], [2, 2, 6, 6]], jnp.float32),
    )
    assert int(out["n"]) == 3
    assert int(out["top1_cls"]) == 2 and int(out["topk_cls"]) == 3
    np.testing.assert_array_equal(
        out["gt_known"], [2, 1]
    )  # at 0.05 the ramp joins the blobs: only image 2 hits
    np.testing.assert_array_equal(out["top1_loc"], [1, 1])
    np.testing.assert_array_equal(out["topk_loc"], [2, 1])
    # Center (0,0,8,8) hits GT 2 only (IoU 1); (2,2,6,6) hits GT 0 only; GT 1 IoU = 4/28.
    np.testing.assert_array_equal(out["center_box"], [1, 1])


def test_accumulator_merge_rates_summary_and_errors():
    th = np.array([0.1, 0.2], np.float32)
    a = metrics.LocalizationAccumulator(th, np.array([1.0]))
    b = metrics.LocalizationAccumulator(th, np.array([1.0]))
    batch = {
        "n": 4,
        "top1_cls": 2,
        "topk_cls": 3,
        "gt_known": np.array([1, 3]),
        "top1_loc": np.array([1, 2]),
        "topk_loc": np.array([1, 3]),
        "center_box": np.array([1]),
    }
    a.update(batch)
    b.update(batch)
    both = a.merge(b)
    assert int(both.counts["n"]) == 8
    s = both.summary(0.2, k=5)
    assert s["gt_known_loc"] == 75.0 and s["top1_loc"] == 50.0 and s["top5_loc"] == 75.0
    assert s["top1_cls"] == 50.0 and s["best_center_box_gt_known_loc"] == 25.0
    assert both.best_threshold() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="different thresholds"):
        a.merge(metrics.LocalizationAccumulator(th + 0.1, np.array([1.0])))
    with pytest.raises(ValueError, match="empty"):
        metrics.LocalizationAccumulator(th, np.array([1.0])).rates()
