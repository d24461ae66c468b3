"""Tests for camjax.localization.wsol: identical integer counts to the OpenCV reference.

The reference (``wsol_reference.py``) follows the published evaluator with cv2.findContours;
the maps are built to stress contour rules: blobs, rings with holes, nested rings, thin and
diagonal lines, touching objects, objects on the border, constant and NaN maps. Both
implementations (camjax's host max-tree, ``"maxtree"``, and the independent XLA labelling of
``wsol_xla.py``, ``"xla"``) are held to it.
"""

import sys
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax.cam import normalize_minmax
from camjax.localization import pxap, wsol
from tests.meshes import on_mesh

sys.path.insert(0, str(Path(__file__).parent))
import wsol_reference as ref  # noqa: E402
import wsol_xla  # noqa: E402

GRID = wsol.default_thresholds(0.01)


# ---------------------------------------------------------------------------- map generators


def _blobs(rng, h, w):
    yy, xx = np.mgrid[:h, :w]
    m = np.zeros((h, w))
    for _ in range(rng.integers(1, 5)):
        cy, cx = rng.uniform(-2, h + 2), rng.uniform(-2, w + 2)
        s = rng.uniform(1, max(h, w) / 3)
        m += rng.uniform(0.3, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    return m


def _rings(rng, h, w):
    yy, xx = np.mgrid[:h, :w]
    m = np.zeros((h, w))
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = np.hypot(yy - cy, xx - cx)
        period = rng.uniform(2, 8)
        m += np.cos(r / period * 2 * np.pi) * np.exp(-r / rng.uniform(4, h))
    return m


def _lines(rng, h, w):
    m = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(2, 8)):
        p0 = tuple(int(v) for v in rng.integers(0, [w, h]))
        p1 = tuple(int(v) for v in rng.integers(0, [w, h]))
        cv2.line(m, p0, p1, int(rng.integers(50, 256)), 1)
    return m.astype(np.float64) + 0.05 * rng.random((h, w))


def _touching(rng, h, w):
    # Squares of different heights touching at corners and edges; a checkerboard patch.
    m = np.zeros((h, w))
    s = max(2, h // 6)
    for i in range(0, h - s, s):
        for j in range(0, w - s, s):
            if (i // s + j // s) % 2 == 0:
                m[i : i + s, j : j + s] = rng.integers(1, 5)
    c = rng.integers(0, h - 4)
    m[c : c + 4, c : c + 4] = np.indices((4, 4)).sum(0) % 2 * 6
    return m


def _noise(rng, h, w):
    return rng.random((h, w)) * (rng.random((h, w)) < 0.4)


GENERATORS = [_blobs, _rings, _lines, _touching, _noise]


def _gt_boxes(rng, h, w, count, max_boxes):
    boxes = np.zeros((count, max_boxes, 4), np.int32)
    num = rng.integers(1, max_boxes + 1, count)
    for b in range(count):
        for k in range(num[b]):
            x = np.sort(rng.integers(0, w, 2))
            y = np.sort(rng.integers(0, h, 2))
            if rng.random() < 0.3:  # Touch the border.
                x[1] = w - 1
                y[0] = 0
            boxes[b, k] = [x[0], y[0], x[1], y[1]]
    return boxes, num


def _batch(seed, count, h, w, max_boxes=3):
    rng = np.random.default_rng(seed)
    maps = np.stack([GENERATORS[i % len(GENERATORS)](rng, h, w) for i in range(count)])
    maps = maps.astype(np.float32)
    maps[0] = 3.0  # constant
    maps[1, 2, 3] = np.nan
    scoremaps = np.array(normalize_minmax(jnp.asarray(maps)))
    boxes, num = _gt_boxes(rng, h, w, count, max_boxes)
    return scoremaps, boxes, num


def _reference_counts(scoremaps, boxes, num, thresholds, multi):
    gts = [boxes[i, : num[i]] for i in range(len(num))]
    return ref.box_correct_counts(list(scoremaps), gts, thresholds, multi_contour_eval=multi)


def _counts(scoremaps, boxes, num, thresholds, multi, method="maxtree"):
    q = wsol.quantize_scoremaps(scoremaps)
    return np.asarray(
        IMPLS[method].box_correct_counts(q, boxes, num, thresholds, multi_contour=multi)
    )


IMPLS = {"maxtree": wsol, "xla": wsol_xla}
# The XLA cross-check's sweeps compile a labelling per shape and grid (seconds each on a CPU):
# they run in the full suite; the fast lane holds camjax's engine to the reference alone.
METHODS = pytest.mark.parametrize(
    "method", ["maxtree", pytest.param("xla", marks=pytest.mark.slow)]
)


def _level_hits(method):
    return wsol.level_hits if method == "maxtree" else wsol_xla.level_hits_checked


# ------------------------------------------------------------------------------- exactness


def test_the_grid_and_its_levels_are_the_evaluators_to_the_last_entry():
    """wsolevaluation's ``np.arange(0, 1, 0.001)`` (0.999 last) and ``int(t * peak)`` in Python
    floats for every peak: min-max maps peak at 255, maps from other tools may not."""
    grid = wsol.default_thresholds()
    np.testing.assert_array_equal(grid, np.arange(0, 1, 0.001))
    assert grid.size == 1000 and grid[-1] == 0.999
    want = [[int(float(t) * peak) for t in grid] for peak in range(256)]
    np.testing.assert_array_equal(wsol.threshold_levels(grid), want)


def test_quantize_matches_float64_cast():
    rng = np.random.default_rng(0)
    k = np.arange(256) / 255
    near = np.concatenate([k, rng.random(5000)]).astype(np.float32)
    near = np.clip(near, 0, 1)
    for x in (near, np.nextafter(near, np.float32(0)), np.nextafter(near, np.float32(1))):
        x = x.astype(np.float32)
        expected = (x.astype(np.float64) * 255).astype(np.uint8)
        on_host = wsol.quantize_scoremaps(x.reshape(1, -1))
        assert isinstance(on_host, np.ndarray)
        np.testing.assert_array_equal(on_host[0], expected)
        on_device = wsol.quantize_scoremaps(jnp.asarray(x.reshape(1, -1)))
        assert isinstance(on_device, jax.Array)
        np.testing.assert_array_equal(np.asarray(on_device)[0], expected)
    x64 = rng.random((3, 5))
    np.testing.assert_array_equal(wsol.quantize_scoremaps(x64), (x64 * 255).astype(np.uint8))


def test_quantize_a_batch_sharded_on_a_mesh_with_explicit_axes():
    """jax.make_mesh's default axes raised a ShardingTypeError in the lookup of the exact
    steps; the levels now equal the unsharded batch's and keep its sharding."""
    maps = np.random.default_rng(1).random((8, 5, 7)).astype(np.float32)
    got = wsol.quantize_scoremaps(on_mesh(maps)[0])
    np.testing.assert_array_equal(got, wsol.quantize_scoremaps(maps))
    assert got.sharding.spec[0] == "data"


def test_normalization_agrees_with_reference_on_degenerate_maps():
    maps = np.stack([np.full((4, 5), 7.0), np.arange(20.0).reshape(4, 5), np.zeros((4, 5))])
    maps[2, 1, 1] = np.nan
    ours = np.asarray(normalize_minmax(jnp.asarray(maps, jnp.float32)))
    theirs = np.stack([ref.normalize_scoremap(m) for m in maps])
    np.testing.assert_array_equal(ours[[0, 2]], 0)
    np.testing.assert_array_equal(theirs[[0, 2]], 0)
    np.testing.assert_allclose(ours[1], theirs[1], atol=1e-7)


@METHODS
@pytest.mark.parametrize("multi", [True, False], ids=["v2", "v1"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_counts_match_reference(seed, multi, method):
    scoremaps, boxes, num = _batch(seed, 10, 32, 32)
    got = _counts(scoremaps, boxes, num, GRID, multi, method)
    np.testing.assert_array_equal(got, _reference_counts(scoremaps, boxes, num, GRID, multi))


@METHODS
def test_box_counts_match_reference_rectangular_fine_grid(method):
    scoremaps, boxes, num = _batch(3, 6, 40, 56, max_boxes=4)
    grid = wsol.default_thresholds(0.001)
    for multi in (True, False):
        got = _counts(scoremaps, boxes, num, grid, multi, method)
        np.testing.assert_array_equal(got, _reference_counts(scoremaps, boxes, num, grid, multi))


def test_box_counts_of_maps_peaking_below_one_use_each_maps_own_peak():
    """Maps that stop short of 1 (other tools' maps): threshold t probes the level
    ``int(t * peak)`` of each map's own quantised peak, as the reference's, not of 255."""
    scoremaps, boxes, num = _batch(8, 10, 24, 24)
    scoremaps = scoremaps * np.linspace(0.2, 0.9, 10, dtype=np.float32)[:, None, None]
    for multi in (True, False):
        got = _counts(scoremaps, boxes, num, GRID, multi)
        np.testing.assert_array_equal(got, _reference_counts(scoremaps, boxes, num, GRID, multi))


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (2, 2), (3, 17), (23, 5)])
def test_maxtree_matches_reference_on_many_small_maps(shape):
    # Property-style: many random maps of every generator at odd shapes, the host path only
    # (it is cheap); degenerate 1-pixel-wide maps put every pixel on the border.
    h, w = shape
    rng = np.random.default_rng(h * 100 + w)
    maps = np.stack([rng.random((h, w)) * (rng.random((h, w)) < 0.6) for _ in range(20)])
    maps[::5] = np.round(maps[::5] * 3)  # few levels: large flat regions, ties, holes
    scoremaps = np.asarray(normalize_minmax(jnp.asarray(maps, jnp.float32)))
    boxes, num = _gt_boxes(rng, h, w, len(maps), 3)
    grid = wsol.default_thresholds(0.001)
    for multi in (True, False):
        got = _counts(scoremaps, boxes, num, grid, multi)
        np.testing.assert_array_equal(got, _reference_counts(scoremaps, boxes, num, grid, multi))


def test_maxtree_matches_reference_on_many_generated_maps():
    for seed in range(10, 16):
        scoremaps, boxes, num = _batch(seed, 20, 28, 36, max_boxes=3)
        for multi in (True, False):
            got = _counts(scoremaps, boxes, num, GRID, multi)
            want = _reference_counts(scoremaps, boxes, num, GRID, multi)
            np.testing.assert_array_equal(got, want)


@METHODS
def test_box_counts_match_reference_224(method):
    # One full-size map (blobs plus rings) on a coarse grid: 20 levels keep it quick on CPU.
    rng = np.random.default_rng(7)
    maps = (_blobs(rng, 224, 224) + 0.5 * _rings(rng, 224, 224))[None].astype(np.float32)
    scoremaps = np.asarray(normalize_minmax(jnp.asarray(maps)))
    boxes, num = _gt_boxes(rng, 224, 224, 1, 3)
    grid = wsol.default_thresholds(0.05)
    for multi in (True, False):
        got = _counts(scoremaps, boxes, num, grid, multi, method)
        np.testing.assert_array_equal(got, _reference_counts(scoremaps, boxes, num, grid, multi))


@METHODS
def test_level_hits_match_reference_at_every_level(method):
    scoremaps, boxes, num = _batch(4, 10, 32, 32)
    q = wsol.quantize_scoremaps(scoremaps)
    for multi in (True, False):
        hits = np.asarray(_level_hits(method)(q, boxes, num, multi_contour=multi))
        for b in range(len(num)):
            peak = int(np.max(np.asarray(q[b])))
            # Thresholds t = L / peak probe the levels L exactly (int(L / peak * peak) == L is
            # not guaranteed in float, so probe with slightly larger t).
            levels = np.arange(max(peak, 1))
            t = np.minimum((levels + 0.5) / max(peak, 1), 1.0)
            want = ref.box_correct_counts(
                [scoremaps[b]], [boxes[b, : num[b]]], t, multi_contour_eval=multi
            )
            np.testing.assert_array_equal(hits[b][:, levels].astype(int), want)


# ------------------------------------------------------------------------- hand-made cases


def _hits_of(mask, gt, multi, delta=50):
    """Hit at the level 0 of a 0/1 map (foreground = pixels > 0), placed in the top-left
    corner of a 12x12 map so that every hand-made case shares one compilation; both methods
    must agree."""
    full = np.zeros((12, 12), np.uint8)
    full[: mask.shape[0], : mask.shape[1]] = mask
    q = jnp.asarray(full[None] * 255)
    gt = np.asarray([[gt]], np.int32)
    hits = [bool(np.asarray(_level_hits(m)(q, gt, [1], [delta], multi))[0, 0, 0]) for m in IMPLS]
    assert hits[0] == hits[1]
    return hits[0]


def test_iou_is_inclusive():
    iou = ref.calculate_multiple_iou(np.array([[0, 0, 1, 1]]), np.array([[1, 1, 2, 2]]))
    assert iou[0, 0] == pytest.approx(1 / 7)  # One shared pixel of 4 + 4 - 1.
    # The same boxes through camjax: IoU 1/7 hits at 14% but not at 15%.
    mask = np.zeros((5, 5))
    mask[0:1, 0:1] = 1  # Box (0, 0, 1, 1) after the x + w rule.
    assert _hits_of(mask, [1, 1, 2, 2], True, delta=14)
    assert not _hits_of(mask, [1, 1, 2, 2], True, delta=15)


def test_hole_contour_box_is_hole_grown_by_one():
    # A 7x7 square with a 3x3 hole; the hole's contour box is (1, 1, 5, 5) -> x1 = 1 + 5.
    mask = np.zeros((12, 12))
    mask[0:7, 0:7] = 1
    mask[2:5, 2:5] = 0
    # Outer box: (0, 0, 7, 7); hole border rect: x = 1, w = 5 -> (1, 1, 6, 6).
    assert _hits_of(mask, [1, 1, 6, 6], True, delta=100)
    assert not _hits_of(mask, [1, 1, 6, 6], False, delta=100)  # V1 takes the outer contour.
    assert _hits_of(mask, [0, 0, 7, 7], False, delta=100)


def test_boxes_clip_at_last_pixel_and_empty_is_origin():
    mask = np.zeros((12, 12))
    mask[6:12, 5:12] = 1  # Touches the right and bottom border: (5, 6, min(12, 11), ...).
    assert _hits_of(mask, [5, 6, 11, 11], True, delta=100)
    assert _hits_of(mask, [5, 6, 11, 11], False, delta=100)
    empty = np.zeros((6, 8))
    assert _hits_of(empty, [0, 0, 0, 0], True, delta=100)
    assert _hits_of(empty, [0, 0, 0, 0], False, delta=100)


def test_v1_ties_go_to_the_last_component_in_raster_order():
    mask = np.zeros((9, 9))
    mask[1, 1] = mask[7, 2] = mask[4, 6] = 1  # Three contours of area 0.
    assert _hits_of(mask, [2, 7, 3, 8], False, delta=100)


def test_pxap_matches_reference():
    rng = np.random.default_rng(5)
    scoremaps, _, _ = _batch(5, 6, 20, 20)
    scoremaps[2, :2, :2] = 1.0
    masks = rng.choice(np.array([0, 1, 255], np.uint8), size=scoremaps.shape, p=[0.6, 0.3, 0.1])
    grid = wsol.default_thresholds(0.001)
    acc = pxap.PxAPAccumulator(grid)
    acc.update(pxap.pxap_histograms(scoremaps[:3], masks[:3], grid))
    other = pxap.PxAPAccumulator(grid)
    other.update(pxap.pxap_histograms(scoremaps[3:], masks[3:], grid))
    acc.merge(other)
    t, f = ref.pxap_histograms(list(scoremaps), list(masks), grid)
    np.testing.assert_array_equal(acc.histograms, np.stack([t, f]).astype(np.int64))
    assert acc.pxap() == ref.pxap(t, f)


def test_pxap_float32_scores_on_a_bin_edge_fall_as_the_reference_bins_them():
    """A float32 score equal to float32(edge), or one ulp either side, bins as np.histogram of
    its float64 value: float32(edge) lies below the float64 edge for about half the edges."""
    grid = wsol.default_thresholds(0.001)
    e32 = grid.astype(np.float32)
    scores = np.stack([e32, np.nextafter(e32, np.float32(0)), np.nextafter(e32, np.float32(1))])
    scores = np.clip(scores, 0, 1).reshape(1, 30, 100)
    masks = np.random.default_rng(0).choice(np.array([0, 1], np.uint8), size=scores.shape)
    acc = pxap.PxAPAccumulator(grid)
    acc.update(pxap.pxap_histograms(scores, masks, grid))
    t, f = ref.pxap_histograms(list(scores), list(masks), grid)
    np.testing.assert_array_equal(acc.histograms, np.stack([t, f]).astype(np.int64))


def test_pxap_by_hand():
    # Foreground scores 0.9 and 0.4, background 0.6 and 0.1, thresholds 0, 0.5, 0.75. Going
    # down the thresholds: >= 0.75 keeps 1 TP (P = 1, R = 1/2); >= 0.5 adds an FP (P = 1/2,
    # R = 1/2); >= 0 keeps all (P = 1/2, R = 1). AP = sum P * dR = 1/2 + 0 + 1/4.
    grid = np.array([0.0, 0.5, 0.75])
    s = np.array([[[0.9, 0.4], [0.6, 0.1]]], np.float32)
    m = np.array([[[1, 1], [0, 0]]], np.uint8)
    acc = pxap.PxAPAccumulator(grid)
    acc.update(pxap.pxap_histograms(s, m, grid))
    np.testing.assert_array_equal(acc.histograms, [[1, 0, 1, 0, 0], [1, 1, 0, 0, 0]])
    assert acc.pxap() == 75.0


def test_accumulator_matches_reference_metrics():
    # Two batches padded to 10 rows (the shapes of the other tests: no new compilation).
    scoremaps, boxes, num = _batch(6, 14, 32, 32)
    acc = wsol.WsolBoxAccumulator(GRID)
    for sl in (slice(0, 10), slice(10, 14)):
        pad = np.zeros(10, bool)
        n = len(range(14)[sl])
        pad[:n] = True
        s = np.zeros((10, 32, 32), np.float32)
        s[:n] = scoremaps[sl]
        bx = np.zeros((10, 3, 4), np.int32)
        bx[:n] = boxes[sl]
        nm = np.ones(10, np.int32)
        nm[:n] = num[sl]
        q = wsol.quantize_scoremaps(s)
        acc.update(wsol.box_correct_counts(q, bx, nm, GRID, valid=pad), n)
    want = _reference_counts(scoremaps, boxes, num, GRID, True)
    np.testing.assert_array_equal(acc.counts, want)
    np.testing.assert_array_equal(list(acc.max_box_acc().values()), ref.max_box_acc(want, 14))
    assert acc.max_box_acc_v2() == np.average(ref.max_box_acc(want, 14))
    half = wsol.WsolBoxAccumulator(GRID, counts=want // 2, num_images=7)
    half.merge(wsol.WsolBoxAccumulator(GRID, counts=want - want // 2, num_images=7))
    np.testing.assert_array_equal(half.counts, want)
    assert half.num_images == 14


# ------------------------------------------------------------------------------ bad inputs


def test_bad_inputs():
    q = wsol.quantize_scoremaps(np.zeros((1, 4, 4), np.float32))
    ok_boxes, ok_num = np.array([[[0, 0, 1, 1]]]), np.array([1])
    with pytest.raises(ValueError, match="x0 <= x1"):
        wsol.box_correct_counts(q, np.array([[[2, 0, 1, 1]]]), ok_num, GRID)
    with pytest.raises(ValueError, match="x0 <= x1"):
        wsol.box_correct_counts(q, np.array([[[-1, 0, 1, 1]]]), ok_num, GRID)
    with pytest.raises(ValueError, match="num_gt"):
        wsol.box_correct_counts(q, ok_boxes, np.array([0]), GRID)
    with pytest.raises(ValueError, match="gt_boxes"):
        wsol.box_correct_counts(q, np.zeros((1, 0, 4), np.int32), ok_num, GRID)
    with pytest.raises(ValueError, match="integer"):
        wsol.box_correct_counts(q, ok_boxes.astype(float), ok_num, GRID)
    with pytest.raises(ValueError, match="uint8"):
        wsol.box_correct_counts(jnp.zeros((1, 4, 4)), ok_boxes, ok_num, GRID)
    with pytest.raises(ValueError, match="uint8"):
        wsol.box_correct_counts(q[0], ok_boxes, ok_num, GRID)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        wsol.box_correct_counts(q, ok_boxes, ok_num, np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="percentages"):
        wsol.box_correct_counts(q, ok_boxes, ok_num, GRID, iou_thresholds=[0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        wsol.quantize_scoremaps(np.full((1, 2, 2), 1.5, np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        wsol.quantize_scoremaps(np.full((1, 2, 2), np.nan, np.float32))
    for bad in (-0.25, 1.5, np.nan):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            wsol.quantize_scoremaps(jnp.full((1, 2, 2), bad, jnp.float32))
    with pytest.raises(ValueError, match="rank"):
        wsol.quantize_scoremaps(np.zeros((4,), np.float32))
    np.testing.assert_array_equal(
        wsol.quantize_scoremaps(np.full((1, 2, 2), 0.5, np.float16)), np.full((1, 2, 2), 127)
    )
    with pytest.raises(ValueError, match="at most 101"):
        wsol.box_correct_counts(q, ok_boxes, ok_num, GRID, iou_thresholds=list(range(50)) * 3)
    with pytest.raises(ValueError, match="float"):
        wsol.quantize_scoremaps(np.zeros((1, 2, 2), np.int32))
    with pytest.raises(ValueError, match="masks"):
        pxap.pxap_histograms(np.zeros((1, 2, 2), np.float32), np.zeros((1, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="outside jax.jit"):
        jax.jit(lambda m: wsol.level_hits(m, ok_boxes, ok_num))(q)
    with pytest.raises(ValueError, match="no images"):
        wsol.WsolBoxAccumulator(GRID).max_box_acc()
    with pytest.raises(ValueError, match="different thresholds"):
        wsol.WsolBoxAccumulator(GRID).merge(wsol.WsolBoxAccumulator(GRID[:5]))


def test_gt_coordinates_that_int32_cannot_hold_are_refused_not_wrapped():
    """The int64 box (0, 0, 2**32 + 6, 4) was narrowed to (0, 0, 6, 4), which covers this 4 x 4
    map: counted a hit at every threshold where the reference's box (IoU 16 / 2**32) misses."""
    q = wsol.quantize_scoremaps(np.ones((1, 4, 4), np.float32))
    # x1 past 2**32, y1 (the last coordinate) too, and one int32 reads as negative (2**31 + 6).
    for box, got in [
        ([0, 0, 2**32 + 6, 4], 2**32 + 6),
        ([0, 0, 4, 2**32 + 6], 2**32 + 6),
        ([0, 0, 2**31 + 6, 4], 2**31 + 6),
    ]:
        with pytest.raises(
            ValueError, match=rf"^GT box coordinates must be below 2\*\*31; got {got}\.$"
        ):
            wsol.box_correct_counts(q, np.array([[box]]), np.array([1]), GRID)
    top = np.iinfo(np.int32).max  # the largest that fits is taken, and misses
    counts = wsol.box_correct_counts(q, np.array([[[0, 0, top, 4]]]), np.array([1]), GRID)
    assert not np.any(counts)
    # A padding row (past num_gt) is never read: whatever it holds is not checked. The real
    # box is the map (corners inclusive): a hit at every threshold and IoU threshold (30, 50, 70).
    padded = np.array([[[0, 0, 3, 3], [0, 0, 2**32, 2**32]]])
    counts = wsol.box_correct_counts(q, padded, np.array([1]), GRID)
    assert counts.shape == (3, len(GRID)) and np.all(counts == 1)


def test_pxap_refuses_thresholds_out_of_order():
    """Unsorted edges binned float32 maps silently wrong (np.histogram refuses float64 ones)."""
    maps = np.random.default_rng(0).random((2, 5, 5)).astype(np.float32)
    masks = (maps > 0.5).astype(np.uint8)
    for unsorted in (GRID[::-1], [0.0, 0.5, 0.25, 0.9]):  # reversed, or one pair out of order
        with pytest.raises(ValueError, match="sort them in increasing order"):
            pxap.pxap_histograms(maps, masks, thresholds=unsorted)
    ref_hist = pxap.pxap_histograms(maps, masks, thresholds=GRID)  # sorted: taken
    assert np.asarray(ref_hist).sum() == 2 * 25
    # A repeated threshold is an empty bin, as np.histogram makes it from float64 maps.
    repeated = [0.0, 0.5, 0.5, 0.9]
    hist = pxap.pxap_histograms(maps, masks, thresholds=repeated)
    np.testing.assert_array_equal(
        hist, pxap.pxap_histograms(maps.astype(np.float64), masks, thresholds=repeated)
    )
    assert np.asarray(hist)[:, 1].sum() == 0 and np.asarray(hist).sum() == 2 * 25


@METHODS
def test_several_image_sets_from_one_sweep(method):
    """valid (K, B) counts K sets of images from one sweep, as K calls with (B,) would."""
    scoremaps, boxes, num = _batch(11, 10, 32, 32)
    q = wsol.quantize_scoremaps(scoremaps)
    rng = np.random.default_rng(3)
    masks = rng.random((3, 10)) < 0.6
    for multi in (True, False):
        both = IMPLS[method].box_correct_counts(
            q, boxes, num, GRID, multi_contour=multi, valid=masks
        )
        assert both.shape == (3, 3, len(GRID))
        for k in range(3):
            one = IMPLS[method].box_correct_counts(
                q, boxes, num, GRID, multi_contour=multi, valid=masks[k]
            )
            np.testing.assert_array_equal(both[k], one)
        sel = np.flatnonzero(masks[0])
        want = _reference_counts(scoremaps[sel], boxes[sel], num[sel], GRID, multi)
        np.testing.assert_array_equal(both[0], want)
    with pytest.raises(ValueError, match=r"valid must have shape \(10,\) or \(K, 10\)"):
        IMPLS[method].box_correct_counts(q, boxes, num, GRID, valid=np.ones((2, 9), bool))


def test_empty_batch_gives_zero_counts():
    """A batch of no images (a host with nothing left to evaluate) counts nothing, in every rule
    and shape of ``valid``, and adds nothing to an accumulator."""
    q = np.zeros((0, 8, 8), np.uint8)
    boxes, num = np.zeros((0, 2, 4), np.int32), np.zeros((0,), np.int32)
    for multi in (True, False):
        counts = wsol.box_correct_counts(q, boxes, num, GRID, multi_contour=multi)
        np.testing.assert_array_equal(counts, np.zeros((3, len(GRID)), np.int32))
        sets = wsol.box_correct_counts(
            q, boxes, num, GRID, multi_contour=multi, valid=np.ones((2, 0), bool)
        )
        np.testing.assert_array_equal(sets, np.zeros((2, 3, len(GRID)), np.int32))
    paper = wsol.box_correct_counts(
        q, boxes.astype(np.float64), num, [0.2], (50,), False, paper=True
    )
    np.testing.assert_array_equal(paper, np.zeros((1, 1), np.int32))
    assert wsol.level_hits(q, boxes, num).shape == (0, 3, wsol.NUM_LEVELS)
    acc = wsol.WsolBoxAccumulator(GRID)
    acc.update(wsol.box_correct_counts(q, boxes, num, GRID), 0)
    assert acc.num_images == 0 and not acc.counts.any()


def test_pxap_of_float64_maps_is_exact():
    """float64 maps are binned in float64 (the reference's np.histogram), not rounded to
    float32: a score just below a bin edge would round onto it and change bins."""
    rng = np.random.default_rng(8)
    grid = wsol.default_thresholds(0.001)
    scoremaps = rng.random((6, 20, 20))  # float64
    near = rng.random(scoremaps.shape) < 0.2  # a fifth of the pixels a hair below an edge
    edges = grid[rng.integers(1, grid.size, near.sum())]
    scoremaps[near] = edges * (1 - 1e-12)
    masks = rng.choice(np.array([0, 1, 255], np.uint8), size=scoremaps.shape, p=[0.6, 0.3, 0.1])
    t, f = ref.pxap_histograms(list(scoremaps), list(masks), grid)
    got = pxap.pxap_histograms(scoremaps, masks, grid)
    assert isinstance(got, np.ndarray) and got.dtype == np.int32
    np.testing.assert_array_equal(got, np.stack([t, f]))
    as32 = np.asarray(pxap.pxap_histograms(scoremaps.astype(np.float32), masks, grid))
    assert not np.array_equal(as32, got)  # what the silent cast used to give
    with jax.enable_x64(True):  # float64 jax arrays too, outside jit
        np.testing.assert_array_equal(
            pxap.pxap_histograms(jnp.asarray(scoremaps), masks, grid), got
        )
        with pytest.raises(ValueError, match="outside jax.jit"):
            jax.jit(lambda s: pxap.pxap_histograms(s, masks, grid))(jnp.asarray(scoremaps))


def test_accumulator_refuses_fractional_iou_thresholds_and_impossible_counts():
    """iou_thresholds (0.3, 0.5, 0.7) were truncated to (0, 0, 0), where every box is correct;
    counts above num_images, negative num_images and fractional counts were added as given."""
    for bad in ((0.3, 0.5, 0.7), (50, 101), ()):
        with pytest.raises(ValueError, match="iou_thresholds must be"):
            wsol.WsolBoxAccumulator(GRID, bad)
    acc = wsol.WsolBoxAccumulator(GRID, (30, 50))
    counts = np.zeros((2, len(GRID)), np.int32)
    counts[0, 0] = 3
    with pytest.raises(ValueError, match=r"counts must be in \[0, num_images=2\]"):
        acc.update(counts, 2)
    with pytest.raises(ValueError, match="num_images must be an int >= 0, got -1"):
        acc.update(counts * 0, -1)
    with pytest.raises(ValueError, match="num_images must be an int >= 0, got 2.5"):
        acc.update(counts, 2.5)
    with pytest.raises(ValueError, match="counts must be integer image counts"):
        acc.update(counts.astype(np.float32), 3)
    assert acc.num_images == 0 and not acc.counts.any()
    acc.update(counts, np.int64(3))
    assert acc.num_images == 3 and acc.counts[0, 0] == 3
