"""Tests for camjax/localization/boxes.py: the CAM paper's boxes and counts on the WSOL engine.

References are independent: a plain-Python flood fill for the regions, OpenCV's
connectedComponentsWithStats for their sizes and boxes, and float IoUs computed here.
"""

import collections

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax.localization import boxes, maxtree, wsol

BACKGROUND = -1


def box_of(mask: np.ndarray) -> tuple[int, ...]:
    """box_from_scoremap of a boolean mask (as a 0/1 map at threshold 0.5), as a tuple."""
    got = boxes.box_from_scoremap(mask.astype(np.float32), 0.5)
    assert got.dtype == np.int32 and got.shape == mask.shape[:-2] + (4,)
    return tuple(int(v) for v in got)


def draw(rows: str) -> np.ndarray:
    """A mask from ASCII art: '#' is foreground, anything else background."""
    lines = [line.strip() for line in rows.strip().splitlines()]
    return np.array([[c == "#" for c in line] for line in lines], dtype=bool)


def flood_fill_labels(mask: np.ndarray) -> np.ndarray:
    """8-connected labels by breadth-first search; each label is the smallest raster index."""
    h, w = mask.shape
    labels = np.full((h, w), BACKGROUND, np.int64)
    for start in range(h * w):
        y, x = divmod(start, w)
        if not mask[y, x] or labels[y, x] != BACKGROUND:
            continue
        # Scanning in raster order, the first unlabelled pixel is its component's minimum.
        labels[y, x] = start
        queue = collections.deque([(y, x)])
        while queue:
            cy, cx = queue.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and labels[ny, nx] < 0:
                        labels[ny, nx] = start
                        queue.append((ny, nx))
    return labels


def cv2_largest_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Largest component's (x0, y0, x1, y1) from OpenCV; ties go to the earlier component."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count == 1:
        return (0, 0, 0, 0)
    # OpenCV numbers components in raster order of their first pixel, like our labels, so
    # argmax's first-maximum rule breaks ties the same way.
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[best, :4])
    return (x, y, x + w, y + h)


def spiral(n: int) -> np.ndarray:
    """A one-pixel-wide square spiral walking inwards with one-pixel gaps: one long path."""
    grid = np.zeros((n, n), bool)
    y, x, dy, dx = 0, 0, 0, 1
    while True:
        grid[y, x] = True
        for _ in range(2):
            ny, nx, fy, fx = y + dy, x + dx, y + 2 * dy, x + 2 * dx
            free = 0 <= ny < n and 0 <= nx < n and not grid[ny, nx]
            ahead_free = not (0 <= fy < n and 0 <= fx < n and grid[fy, fx])
            if free and ahead_free:
                y, x = ny, nx
                break
            dy, dx = dx, -dy  # Turn clockwise.
        else:
            return grid


def snake(n: int) -> np.ndarray:
    """Rows joined alternately at the right and left ends: a boustrophedon path."""
    grid = np.zeros((n, n), bool)
    grid[::2] = True
    for i, row in enumerate(range(1, n, 2)):
        grid[row, n - 1 if i % 2 == 0 else 0] = True
    return grid


def blobby_masks(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """Thresholded smooth noise: a few irregular blobs per map, like thresholded CAMs."""
    noise = rng.standard_normal((count, 5, 5)).astype(np.float32)
    smooth = np.stack([cv2.resize(n, (size, size), interpolation=cv2.INTER_CUBIC) for n in noise])
    return smooth > 0.3


def reference_box(labels: np.ndarray) -> tuple[int, int, int, int]:
    """Box of the most populous label, ties to the smaller label, from a labelled map."""
    values, counts = np.unique(labels[labels != BACKGROUND], return_counts=True)
    if values.size == 0:
        return (0, 0, 0, 0)
    ys, xs = np.nonzero(labels == values[np.argmax(counts)])
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


@pytest.mark.parametrize(
    ("mask", "box"),
    [
        (np.zeros((6, 8), bool), (0, 0, 0, 0)),
        (np.ones((6, 8), bool), (0, 0, 8, 6)),
        (draw("........\n........\n.....#..\n........\n........\n........"), (5, 2, 6, 3)),
        (draw("#.......\n........\n........\n........\n........\n.......#"), (0, 0, 1, 1)),
        # Larger blob wins even though the smaller one comes first in raster order.
        (draw("##......\n........\n....###.\n....###.\n........\n........"), (4, 2, 7, 4)),
        # Equal sizes: the one met first in raster order.
        (draw("......##\n........\n##......\n........\n...##...\n........"), (6, 0, 8, 1)),
        # Diagonal-only contact connects under 8-connectivity.
        (draw("#.......\n.#......\n..#.....\n...#..##\n......##\n........"), (0, 0, 4, 4)),
        # Border-touching blobs, on the right and bottom edges.
        (draw("........\n.......#\n.......#\n.......#\n......##\n##....##"), (6, 1, 8, 6)),
        # A ring with a hole is one region and its box covers the whole ring.
        (draw("........\n.#####..\n.#...#..\n.#...#..\n.#####..\n........"), (1, 1, 6, 5)),
    ],
    ids=[
        "empty",
        "full",
        "pixel",
        "two-pixels-tie",
        "largest-wins",
        "tie-raster-order",
        "diagonal",
        "border",
        "ring",
    ],
)
def test_box_from_scoremap_hand_drawn(mask, box):
    assert box_of(mask) == box
    assert cv2_largest_box(mask) == box


def test_checkerboard_is_one_region():
    board = np.add.outer(np.arange(9), np.arange(12)) % 2 == 0
    assert box_of(board) == (0, 0, 12, 9)


@pytest.mark.parametrize("shape", ["spiral", "snake", "comb"])
def test_long_paths(shape):
    n = 63
    if shape == "spiral":
        mask = spiral(n)
    elif shape == "snake":
        mask = snake(n)
    else:
        mask = np.zeros((n, n), bool)
        mask[:, ::2] = True
        mask[-1] = True
    assert cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] == 2
    ys, xs = np.nonzero(mask)
    assert box_of(mask) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_random_masks_match_references():
    rng = np.random.default_rng(0)
    density = rng.uniform(0.1, 0.9, (24, 1, 1))
    masks = np.concatenate([rng.random((24, 17, 23)) < density, blobby_masks(rng, 8, 23)[:, :17]])
    got = boxes.box_from_scoremap(masks.astype(np.float32), 0.5)
    for mask, got_box in zip(masks, got, strict=True):
        assert tuple(int(v) for v in got_box) == reference_box(flood_fill_labels(mask))
        assert tuple(int(v) for v in got_box) == cv2_largest_box(mask)


def test_leading_dims_equal_per_map():
    rng = np.random.default_rng(1)
    masks = blobby_masks(rng, 6, 20).reshape(2, 3, 20, 20)
    got = boxes.box_from_scoremap(masks.astype(np.float32), 0.5)
    assert got.shape == (2, 3, 4)
    for i in range(2):
        for j in range(3):
            assert tuple(got[i, j]) == box_of(masks[i, j])


def test_region_ties_after_a_merge_go_to_the_merged_regions_first_pixel():
    """Two regions of 18 pixels at level 0: one made by a merge whose earliest pixel, (0, 0),
    came with the absorbed part (its root is (0, 9)), the other starting at (0, 2). The tie
    goes to the first in raster order, the merged region, as flood fill says."""
    q = np.zeros((6, 11), np.uint8)
    q[0, 0], q[1, 0], q[0, 9] = 2, 3, 3  # part B (0, 0), (1, 0); part A (0, 9)
    q[2:4, 0] = q[4, :10] = q[1:4, 9] = 1  # the chain that joins them at (4, 9)
    q[0:3, 2:8] = 2  # the other region: 18 pixels
    assert np.sum(q > 0) == 36
    want = reference_box(flood_fill_labels(q > 0))
    assert want == (0, 0, 10, 5)
    assert tuple(int(v) for v in maxtree.region_boxes(q[None])[0, 0] + [0, 0, 1, 1]) == want


def test_box_from_scoremap_thresholds():
    scoremap = np.zeros((6, 8), np.float32)
    scoremap[1:3, 1:3] = 0.3  # Larger, weaker blob.
    scoremap[4, 5] = 1.0  # Single strong pixel.

    def box(s, t):
        return tuple(int(v) for v in boxes.box_from_scoremap(s, t))

    assert box(scoremap, 0.2) == (1, 1, 3, 3)
    assert box(scoremap, 0.5) == (5, 4, 6, 5)
    # The comparison is >=, so a threshold equal to the maximum keeps the peak.
    assert box(scoremap, 1.0) == (5, 4, 6, 5)
    assert box(scoremap, 0.0) == (0, 0, 8, 6)
    # Default threshold is the CAM paper's 0.2; device arrays are accepted.
    assert tuple(int(v) for v in boxes.box_from_scoremap(jnp.asarray(scoremap))) == (1, 1, 3, 3)
    constant = np.full((6, 8), 0.5, np.float32)
    assert box(constant, 0.2) == (0, 0, 8, 6)
    assert box(constant, 0.7) == (0, 0, 0, 0)


def test_thresholds_broadcast_against_the_batch():
    rng = np.random.default_rng(2)
    scoremaps = rng.random((3, 16, 16)).astype(np.float32)
    ts = (0.1, 0.35, 0.6, 0.95)
    swept = np.stack([boxes.box_from_scoremap(scoremaps, t) for t in ts])
    for t, got in zip(ts, swept, strict=True):
        for m, b in zip(scoremaps >= np.float32(t), got, strict=True):
            assert tuple(b) == reference_box(flood_fill_labels(m))
    # (T, 1) x (B,) -> (T, B, 4).
    thresholds = np.array(ts, np.float32)[:, None]
    np.testing.assert_array_equal(boxes.box_from_scoremap(scoremaps, thresholds), swept)


@pytest.mark.parametrize(
    ("scoremap", "threshold", "match"),
    [
        (np.zeros((4, 4), np.float32), -0.1, r"\[0, 1\]"),
        (np.zeros((4, 4), np.float32), 1.5, r"\[0, 1\]"),
        (np.zeros((4, 4), np.float32), float("nan"), r"\[0, 1\]"),
        (np.zeros((4, 4), np.float32), np.array([0.2, 1.2]), r"\[0, 1\]"),
        (np.zeros((4, 4), np.float32), "0.2", "real number"),
        (np.zeros((4, 4), bool), 0.2, "must be a float array"),
        (np.zeros((4, 4), np.int32), 0.2, "must be a float array"),
        (np.zeros((4,), np.float32), 0.2, "rank >= 2"),
    ],
)
def test_bad_scoremap_inputs_raise(scoremap, threshold, match):
    with pytest.raises(ValueError, match=match):
        boxes.box_from_scoremap(scoremap, threshold)


def test_nan_out_of_range_empty_and_traced_scoremaps_are_refused():
    """A NaN map was boxed by its finite part (all-NaN: (0, 0, 0, 0), as if nothing reached
    the threshold), a map outside [0, 1] against a fraction of 1, an empty map failed in
    numpy's reshape and a traced one in jax's multi-line conversion error."""
    blob = np.zeros((2, 6, 8), np.float32)
    blob[:, 1:3, 1:3] = 1.0
    partly_nan = blob.copy()
    partly_nan[0, 4, 5] = np.nan
    for bad in (partly_nan, np.full_like(blob, np.nan), blob * 3, blob - 0.5):
        with pytest.raises(ValueError, match=r"scoremap must lie in \[0, 1\] without NaN"):
            boxes.box_from_scoremap(bad)
    with pytest.raises(ValueError, match=r"non-empty spatial axes \(H, W\), got \(2, 0, 16\)"):
        boxes.box_from_scoremap(np.zeros((2, 0, 16), np.float32))
    with pytest.raises(ValueError, match="runs on the host and cannot be traced"):
        jax.jit(boxes.box_from_scoremap)(blob)
    np.testing.assert_array_equal(boxes.box_from_scoremap(blob), [[1, 1, 3, 3]] * 2)


def float_iou(a, b) -> float:
    """IoU of exclusive-end boxes, in float64."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def counts_of_maps(maps, gt, num, labels, top, valid, thresholds, **kwargs):
    """`boxes.localization_counts` of float maps, quantised for `thresholds` as the evaluator
    quantises them."""
    q = np.asarray(wsol.quantize_for_thresholds(jnp.asarray(maps), thresholds))
    return boxes.localization_counts(q, gt, num, labels, top, valid, thresholds, **kwargs)


def test_localization_counts_match_a_reference_with_real_valued_gt_boxes():
    """The engine's paper rule against flood fill + float IoU, GT boxes off the pixel grid."""
    rng = np.random.default_rng(3)
    b, h, w = 40, 19, 23
    noise = rng.standard_normal((b, 4, 4)).astype(np.float32)
    maps = np.stack([cv2.resize(n, (w, h), interpolation=cv2.INTER_CUBIC) for n in noise])
    maps = np.clip(maps / np.abs(maps).max(axis=(1, 2), keepdims=True), 0, 1)
    maps[::5] = np.round(maps[::5] * 4) / 4  # plateaus make ties
    thresholds = np.array([0.1, 0.25, 0.5, 0.75], np.float32)
    gt = np.zeros((b, 2, 4))
    for i in range(b):
        ys, xs = np.nonzero(maps[i] >= rng.uniform(0.1, 0.6))
        if len(xs) == 0:
            ys, xs = np.array([0]), np.array([0])
        jitter = rng.uniform(-1.5, 1.5, 4)
        gt[i, 0] = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) + jitter
        gt[i, 1] = rng.uniform(0, 5, 4) + [0, 0, 5, 5]
    num = rng.integers(1, 3, b)
    labels = rng.integers(0, 3, b)
    top = np.stack([rng.permutation(3)[:2] for _ in range(b)])
    valid = rng.random(b) < 0.9
    got = counts_of_maps(maps, gt, num, labels, top, valid, thresholds, iou_threshold=0.5)
    want = np.zeros((3, len(thresholds)), int)
    for i in range(b):
        for j, t in enumerate(thresholds):
            box = reference_box(flood_fill_labels(maps[i] >= t))
            if box == (0, 0, 0, 0):
                continue
            hit = valid[i] and max(float_iou(box, g) for g in gt[i, : num[i]]) >= 0.5
            want[:, j] += [hit, hit and top[i, 0] == labels[i], hit and labels[i] in top[i]]
    counted = np.stack([got[k] for k in ("gt_known", "top1_loc", "topk_loc")])
    np.testing.assert_array_equal(counted, want)
    assert want[0].max() > 5  # the check has hits to count
    assert int(got["n"]) == valid.sum()


def test_box_iou_hand_computed():
    a = jnp.array([0, 0, 10, 10])
    assert float(boxes.box_iou(a, a)) == 1.0
    assert float(boxes.box_iou(a, jnp.array([5, 0, 15, 10]))) == pytest.approx(1 / 3)
    assert float(boxes.box_iou(a, jnp.array([10, 0, 20, 10]))) == 0.0  # touching, exclusive
    assert float(boxes.box_iou(a, jnp.array([2, 2, 4, 6]))) == pytest.approx(8 / 100)
    assert float(boxes.box_iou(jnp.zeros(4), jnp.zeros(4))) == 0.0  # degenerate, not NaN


def test_box_iou_of_boxes_apart_on_both_axes_is_zero():
    """Boxes apart share nothing: a negative overlap makes no negative or positive area.
    The centre-box baseline meets this with GT boxes in a corner of the image."""
    a = jnp.array([0, 0, 4, 4])
    assert float(boxes.box_iou(a, jnp.array([6, 6, 10, 10]))) == 0.0
    assert float(boxes.box_iou(a, jnp.array([6, 0, 10, 4]))) == 0.0  # not negative
    gt = jnp.array([[[0, 0, 2, 2]]], jnp.float32)
    center = jnp.array([[4, 4, 8, 8]], jnp.float32)  # 2 apart: (-2) * (-2) would be 4
    assert float(boxes.max_iou_with_gt(center, gt, jnp.array([1]))[0]) == 0.0


def test_max_iou_ignores_padding_and_takes_best_gt():
    gt = jnp.array([[[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]]], jnp.float32)
    box = jnp.array([[20, 20, 30, 40]], jnp.float32)
    assert float(boxes.max_iou_with_gt(box, gt, jnp.array([2]))[0]) == pytest.approx(0.5)
    assert float(boxes.max_iou_with_gt(box, gt, jnp.array([1]))[0]) == 0.0
    # A leading threshold axis broadcasts.
    assert boxes.max_iou_with_gt(jnp.stack([box, box]), gt, jnp.array([2])).shape == (2, 1)


def test_centered_boxes():
    centered = boxes.centered_boxes(10, 20, np.array([0.5, 1.0]))
    np.testing.assert_array_equal(
        centered, [[5, 2, 15, 7], [5, 0, 15, 10], [0, 2, 20, 7], [0, 0, 20, 10]]
    )


def test_localization_counts_hand_built_batch():
    """Three images: a hit with the right class, a hit with a wrong class, a miss; one pad row."""
    maps = np.zeros((4, 8, 8), np.float32)
    maps[0, 2:6, 2:6] = 1.0  # box (2, 2, 6, 6): equals GT 0
    maps[1, 0:4, 0:4] = 1.0  # box (0, 0, 4, 4): equals GT 1
    maps[2, 6:8, 6:8] = 1.0  # box (6, 6, 8, 8): misses GT 2
    maps[:3] += 0.1 * np.arange(64).reshape(8, 8) / 64  # below 0.2 except blobs
    gt = np.array([[[2, 2, 6, 6]], [[0, 0, 4, 4]], [[0, 0, 8, 8]], [[0, 0, 8, 8]]], np.float32)
    labels = np.array([1, 2, 0, 0])
    top = np.array([[1, 0], [0, 2], [0, 1], [0, 1]])
    thresholds = np.array([0.5, 0.05], np.float32)
    valid = np.array([True, True, True, False])
    out = counts_of_maps(
        maps,
        gt,
        np.array([1, 1, 1, 1]),
        labels,
        top,
        valid,
        thresholds,
    )
    out["center_box"] = boxes.center_box_counts(
        jnp.asarray(gt),
        jnp.array([1, 1, 1, 1]),
        jnp.asarray(valid),
        jnp.array([[0, 0, 8, 8], [2, 2, 6, 6]], jnp.float32),
        0.5,
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


def test_a_mask_with_no_pixel_has_no_box_even_on_a_gt_box_at_the_origin():
    """The paper's rule boxes nothing when no pixel reaches the threshold; the evaluator's
    ``(0, 0, 0, 0)`` (pixel (0, 0)) would hit a one-pixel GT box there, IoU 1."""
    maps = np.zeros((2, 6, 6), np.float32)
    maps[1, 0, 0] = 1.0  # the same GT box found for real: a hit at both thresholds
    thresholds = np.array([0.2, 0.5], np.float32)
    out = counts_of_maps(
        maps,
        np.array([[[0, 0, 1, 1]], [[0, 0, 1, 1]]], np.float32),
        np.array([1, 1]),
        np.array([0, 0]),
        np.array([[0], [0]]),
        np.array([True, True]),
        thresholds,
    )
    np.testing.assert_array_equal(out["gt_known"], [1, 1])


def test_top_k_counts_a_gt_class_in_the_last_of_five_guesses():
    """Top-5, the paper's k: the GT class as the fifth guess counts for top-k, not top-1."""
    maps = np.zeros((1, 6, 6), np.float32)
    maps[0, 1:3, 1:3] = 1.0
    thresholds = np.array([0.5], np.float32)
    out = counts_of_maps(
        maps,
        np.array([[[1, 1, 3, 3]]], np.float32),
        np.array([1]),
        np.array([7]),
        np.array([[1, 2, 3, 4, 7]]),
        np.array([True]),
        thresholds,
    )
    assert int(out["top1_cls"]) == 0 and int(out["topk_cls"]) == 1
    np.testing.assert_array_equal([out["top1_loc"], out["topk_loc"]], [[0], [1]])


def test_an_iou_of_exactly_the_threshold_hits_and_any_whole_percentage_is_taken():
    """IoU >= threshold, as the evaluator: a (0, 0, 8, 4) center box on a whole-image GT box is
    IoU 0.5 exactly. 100 * 0.57 is 56.99999999999999 in floats: still the percentage 57."""
    gt, num, valid = jnp.float32([[[0, 0, 8, 8]]]), jnp.array([1]), jnp.array([True])
    center = jnp.float32([[0, 0, 8, 4], [0, 0, 8, 3]])
    np.testing.assert_array_equal(boxes.center_box_counts(gt, num, valid, center, 0.5), [1, 0])
    maps = np.zeros((1, 8, 8), np.float32)
    maps[0, :, :4] = 1.0  # its box is the left half: IoU 0.5 with the whole image
    args = (
        maps,
        np.asarray(gt),
        np.array([1]),
        np.array([0]),
        np.array([[0]]),
        np.array([True]),
        np.float32([0.5]),
    )
    assert counts_of_maps(*args, iou_threshold=0.5)["gt_known"].tolist() == [1]
    assert counts_of_maps(*args, iou_threshold=0.57)["gt_known"].tolist() == [0]


def test_accumulator_merge_rates_summary_and_errors():
    th = np.array([0.1, 0.2], np.float32)
    a = boxes.LocalizationAccumulator(th, np.array([1.0]))
    b = boxes.LocalizationAccumulator(th, np.array([1.0]))
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
    a.merge(b)  # in place, as update
    both = a
    assert int(both.counts["n"]) == 8
    s = both.summary(0.2, k=5)
    assert s["gt_known_loc"] == 75.0 and s["top1_loc"] == 50.0 and s["top5_loc"] == 75.0
    assert s["top1_cls"] == 50.0 and s["best_center_box_gt_known_loc"] == 25.0
    assert both.best_threshold() == pytest.approx(0.2)
    tied = boxes.LocalizationAccumulator(th, np.array([1.0]))
    tied.update({**batch, "gt_known": np.array([3, 3])})
    assert tied.best_threshold() == pytest.approx(0.1)  # a tie goes to the lowest threshold
    with pytest.raises(ValueError, match="different thresholds"):
        b.merge(boxes.LocalizationAccumulator(th + 0.1, np.array([1.0])))
    with pytest.raises(ValueError, match="empty"):
        boxes.LocalizationAccumulator(th, np.array([1.0])).rates()
