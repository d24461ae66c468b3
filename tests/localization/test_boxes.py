"""Tests for camjax.localization.boxes: labelling and CAM boxes against known answers.

References are independent: a plain-Python flood fill for labels and OpenCV's
connectedComponentsWithStats for component sizes and boxes.
"""

import collections

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax.localization.boxes import (
    BACKGROUND,
    box_from_scoremap,
    label_components,
    largest_component_box,
)

# Module-level jits: one compile per shape for the whole file keeps it fast.
label_jit = jax.jit(label_components)
box_jit = jax.jit(largest_component_box)
score_box_jit = jax.jit(box_from_scoremap)


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


def test_label_components_hand_drawn():
    mask = draw("""
        ##...#
        ##..#.
        ......
        .#..##
        """)
    expected = np.array(
        [
            [0, 0, -1, -1, -1, 5],
            [0, 0, -1, -1, 5, -1],
            [-1, -1, -1, -1, -1, -1],
            [-1, 19, -1, -1, 22, 22],
        ]
    )
    labels = label_jit(mask)
    assert labels.dtype == jnp.int32
    np.testing.assert_array_equal(labels, expected)


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
        # A ring with a hole is one component and its box covers the whole ring.
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
def test_largest_component_box_hand_drawn(mask, box):
    got = box_jit(mask)
    assert got.dtype == jnp.int32 and got.shape == (4,)
    assert tuple(int(v) for v in got) == box
    assert cv2_largest_box(mask) == box


def test_checkerboard_is_one_component():
    board = (np.add.outer(np.arange(9), np.arange(12)) % 2 == 0)[None]
    labels = np.asarray(label_jit(board))[0]
    assert set(np.unique(labels)) == {BACKGROUND, 0}
    assert tuple(int(v) for v in box_jit(board)[0]) == (0, 0, 12, 9)


@pytest.mark.parametrize("shape", ["spiral", "snake", "comb"])
def test_long_paths(shape):
    n = 63
    if shape == "spiral":
        mask = spiral(n)
    elif shape == "snake":
        mask = snake(n)
    else:
        # Teeth standing on the bottom row; the smallest index is at the top of the first.
        mask = np.zeros((n, n), bool)
        mask[:, ::2] = True
        mask[-1] = True
    # The smallest raster index sits at one end of a path of ~n * n / 2 pixels, so plain
    # label propagation would need that many passes.
    assert cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] == 2
    np.testing.assert_array_equal(label_jit(mask), flood_fill_labels(mask))
    ys, xs = np.nonzero(mask)
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert tuple(int(v) for v in box_jit(mask)) == box


def reference_box(labels: np.ndarray) -> tuple[int, int, int, int]:
    """Box of the most populous label, ties to the smaller label, from a labelled map."""
    values, counts = np.unique(labels[labels != BACKGROUND], return_counts=True)
    if values.size == 0:
        return (0, 0, 0, 0)
    ys, xs = np.nonzero(labels == values[np.argmax(counts)])
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def test_random_masks_match_references():
    rng = np.random.default_rng(0)
    density = rng.uniform(0.1, 0.9, (24, 1, 1))
    masks = np.concatenate([rng.random((24, 17, 23)) < density, blobby_masks(rng, 8, 23)[:, :17]])
    labels = np.asarray(label_jit(masks))
    boxes = np.asarray(box_jit(masks))
    for mask, got_labels, got_box in zip(masks, labels, boxes, strict=True):
        expected_labels = flood_fill_labels(mask)
        np.testing.assert_array_equal(got_labels, expected_labels)
        assert tuple(int(v) for v in got_box) == reference_box(expected_labels)
        # OpenCV agrees on the component sizes.
        stats = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)[2]
        sizes = np.unique(got_labels[got_labels != BACKGROUND], return_counts=True)[1]
        np.testing.assert_array_equal(np.sort(sizes), np.sort(stats[1:, cv2.CC_STAT_AREA]))


def test_leading_dims_and_vmap_equal_per_map():
    rng = np.random.default_rng(1)
    masks = blobby_masks(rng, 6, 20).reshape(2, 3, 20, 20)
    boxes = np.asarray(box_jit(masks))
    labels = np.asarray(label_jit(masks))
    vmapped = np.asarray(jax.jit(jax.vmap(largest_component_box))(masks))
    assert boxes.shape == (2, 3, 4) and labels.shape == (2, 3, 20, 20)
    np.testing.assert_array_equal(vmapped, boxes)
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(boxes[i, j], box_jit(masks[i, j]))
            np.testing.assert_array_equal(labels[i, j], label_jit(masks[i, j]))


def test_box_from_scoremap_thresholds():
    scoremap = np.zeros((6, 8), np.float32)
    scoremap[1:3, 1:3] = 0.3  # Larger, weaker blob.
    scoremap[4, 5] = 1.0  # Single strong pixel.
    assert tuple(int(v) for v in score_box_jit(scoremap, 0.2)) == (1, 1, 3, 3)
    assert tuple(int(v) for v in score_box_jit(scoremap, 0.5)) == (5, 4, 6, 5)
    # The comparison is >=, so a threshold equal to the maximum keeps the peak.
    assert tuple(int(v) for v in score_box_jit(scoremap, 1.0)) == (5, 4, 6, 5)
    assert tuple(int(v) for v in score_box_jit(scoremap, 0.0)) == (0, 0, 8, 6)
    # Default threshold is the CAM paper's 0.2.
    assert tuple(int(v) for v in box_from_scoremap(scoremap)) == (1, 1, 3, 3)
    constant = np.full((6, 8), 0.5, np.float32)
    assert tuple(int(v) for v in score_box_jit(constant, 0.2)) == (0, 0, 8, 6)
    assert tuple(int(v) for v in score_box_jit(constant, 0.7)) == (0, 0, 0, 0)


def test_threshold_sweep_traces_once():
    traces = []

    @jax.jit
    def boxes(scoremaps, threshold):
        traces.append(1)  # Runs only when jax traces.
        return box_from_scoremap(scoremaps, threshold)

    rng = np.random.default_rng(2)
    scoremaps = rng.random((3, 16, 16)).astype(np.float32)
    swept = [np.asarray(boxes(scoremaps, t)) for t in (0.1, 0.35, 0.6, 0.95)]
    assert len(traces) == 1
    for t, got in zip((0.1, 0.35, 0.6, 0.95), swept, strict=True):
        np.testing.assert_array_equal(got, box_jit(scoremaps >= t))
    # Thresholds broadcast against the batch axes: (T, 1) x (B,) -> (T, B, 4).
    thresholds = np.array([[0.1], [0.35], [0.6], [0.95]], np.float32)
    np.testing.assert_array_equal(score_box_jit(scoremaps, thresholds), np.stack(swept))


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (np.zeros((5,), bool), "rank >= 2"),
        (np.zeros((4, 4), np.float32), "must be a boolean array"),
        (np.zeros((4, 4), np.int32), "must be a boolean array"),
        (np.zeros((4, 0), bool), "non-empty spatial axes"),
    ],
)
def test_bad_masks_raise(mask, match):
    with pytest.raises(ValueError, match=match):
        label_components(mask)
    with pytest.raises(ValueError, match=match):
        largest_component_box(mask)


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
        box_from_scoremap(scoremap, threshold)
