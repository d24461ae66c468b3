"""Tests for camjax.localization.wsol_frame: GT boxes resized to the reference evaluator's frame,
and its score-map and PxAP mask files.

The metadata folders are those of tests/localization/test_wsol_io.py; the expected resized
boxes are worked out by hand in the comments.
"""

import errno
import os

import cv2
import numpy as np
import pytest

from camjax.localization import wsol, wsol_frame, wsol_io
from tests.localization import wsol_reference as ref
from tests.localization.test_wsol_io import CUB, ILSVRC, _folder

# ------------------------------------------------------------------------------ resizing


def test_resized_boxes_hand_computed(tmp_path):
    meta = wsol_io.read_metadata(_folder(tmp_path, CUB))
    gt, num_gt = wsol_frame.resized_gt_boxes(meta)
    assert gt.dtype == np.int32 and num_gt.dtype == np.int32
    # 500x335 image: 60*224/500 = 26.88, 27*224/335 = 18.05, 385*224/500 = 172.48,
    # 331*224/335 = 221.32; truncated, not rounded (rounding would give x0 = 27).
    np.testing.assert_array_equal(gt[0, 0], [26, 18, 172, 221])
    # A non-square frame, (height, width) = (10, 35), on a 10x20 (w x h) image:
    # x: 1*35/10 = 3.5, 4*35/10 = 14; y: 2*10/20 = 1, 3*10/20 = 1.5.
    gt, _ = wsol_frame.resized_gt_boxes(meta, size=(10, 35))
    np.testing.assert_array_equal(gt[1, 0], [3, 1, 14, 1])


def test_resized_boxes_multiply_before_dividing_and_pad(tmp_path):
    meta = wsol_io.read_metadata(_folder(tmp_path, ILSVRC))
    gt, num_gt = wsol_frame.resized_gt_boxes(meta)
    np.testing.assert_array_equal(num_gt, [3, 1, 1])
    assert gt.shape == (3, 3, 4)
    # 500x375: 156*224/500 = 69.888, 163*224/375 = 97.365, 318*224/500 = 142.464,
    # 230*224/375 = 137.386; 23 -> 10.304, 12 -> 7.168, 101 -> 45.248, 259 -> 154.709;
    # 499 -> 223.552, 374 -> 223.402.
    np.testing.assert_array_equal(gt[0], [[69, 97, 142, 137], [10, 7, 45, 154], [0, 0, 223, 223]])
    # 80x112: 45*224/80 is exactly 126 (45*(224/80) would be 125.99999999999999) and
    # 61*224/112 exactly 122 (61/112*224 would be 121.99999999999999); 79*224/80 = 221.2,
    # 111*224/112 = 222.
    assert 45 * (224 / 80) < 126 and 61 / 112 * 224 < 122
    np.testing.assert_array_equal(gt[1], [[126, 122, 221, 222], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(gt[2, 0], [0, 0, 223, 223])  # Same size: unchanged.


def test_resize_rule_over_a_grid(tmp_path):
    """Every coordinate of every extent up to 150, against the rule written in Python floats."""
    extents = range(1, 151)
    meta = wsol_io.WsolMetadata(
        image_ids=[f"{n}.jpg" for n in extents],
        class_labels=[0] * len(extents),
        boxes=[[[c, c, c, c] for c in range(n)] for n in extents],
        image_sizes=[(n, n) for n in extents],
    )
    height, width = 150, 224
    gt, num_gt = wsol_frame.resized_gt_boxes(meta, size=(height, width))
    for k, n in enumerate(extents):
        xs = [int(float(c) * float(width) / float(n)) for c in range(n)]
        ys = [int(float(c) * float(height) / float(n)) for c in range(n)]
        assert num_gt[k] == n
        np.testing.assert_array_equal(gt[k, :n], np.stack([xs, ys, xs, ys], axis=1))


def test_resize_is_float64_at_any_extent():
    """81226 * 224 / 134775 is 134.99999... in float64 (the reference's Python floats) and
    rounds to 135.0 in float32: a panorama's box would move a pixel."""
    assert int(float(81226) * 224.0 / 134775.0) == 134
    got = wsol_frame.resize_boxes(np.array([[81226, 0, 81226, 0]]), (134775, 10), (224, 224))
    np.testing.assert_array_equal(got, [[134, 0, 134, 0]])


def test_resizing_needs_sizes(tmp_path):
    meta = wsol_io.read_metadata(_folder(tmp_path, CUB, image_sizes=""))
    with pytest.raises(ValueError, match="needs image sizes"):
        wsol_frame.resized_gt_boxes(meta)
    meta = wsol_io.read_metadata(_folder(tmp_path / "sized", CUB))
    for size in ((0, 224), (224, 0), (-1, 224)):
        with pytest.raises(ValueError, match="size must be a positive"):
            wsol_frame.resized_gt_boxes(meta, size=size)


# ------------------------------------------------------------------------------ score maps


def _maps(n, size=(224, 224), seed=0):
    maps = np.random.default_rng(seed).random((n, *size)).astype(np.float32)
    maps[:, 0, 0], maps[:, 0, 1] = 0.0, 1.0
    return maps


def test_scoremap_path_keeps_the_extension(tmp_path):
    assert wsol_frame.scoremap_path(tmp_path, "val2/0/0.jpeg") == tmp_path / "val2/0/0.jpeg.npy"
    for bad in ["../x.jpg", "/abs/x.jpg", "a//b.jpg", "a/./b.jpg", "a/", "a\\b.jpg", "", "a,b"]:
        with pytest.raises(ValueError):
            wsol_frame.scoremap_path(tmp_path, bad)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_export_and_load_bit_exact(tmp_path, dtype):
    ids = ["val2/0/0.jpeg", "val2/0/1.jpeg", "val2/13/2.jpeg"]
    maps = _maps(3)
    wsol_frame.save_scoremaps(tmp_path, ids, maps, dtype=dtype)
    for image_id, m in zip(ids, maps, strict=True):
        stored = np.load(tmp_path / f"{image_id}.npy")  # What the reference's loader reads.
        assert stored.dtype == dtype and stored.shape == (224, 224)
        np.testing.assert_array_equal(stored, m)  # float32 -> float64 widening is exact.
    loaded = wsol_frame.load_scoremaps(tmp_path, ids[::-1])
    assert loaded.dtype == dtype
    np.testing.assert_array_equal(loaded, maps[::-1])
    # Only the maps: no temporary files left behind.
    assert sorted(os.listdir(tmp_path / "val2" / "0")) == ["0.jpeg.npy", "1.jpeg.npy"]


def test_export_of_float64_maps_is_bit_exact(tmp_path):
    maps = _maps(2).astype(np.float64) / 3
    wsol_frame.save_scoremaps(tmp_path, ["a.jpg", "b.jpg"], maps)
    np.testing.assert_array_equal(wsol_frame.load_scoremaps(tmp_path, ["a.jpg", "b.jpg"]), maps)
    with pytest.raises(ValueError, match="would round"):
        wsol_frame.save_scoremaps(tmp_path, ["a.jpg", "b.jpg"], maps, dtype=np.float32)


@pytest.mark.parametrize(
    "maps, ids, match",
    [
        (_maps(2, (224, 223)), ["a", "b"], r"must be \(224, 224\)"),
        (_maps(2)[0], ["a"], r"must be \(N, H, W\) float"),
        ((_maps(2) * 255).astype(np.uint8), ["a", "b"], r"must be \(N, H, W\) float"),
        (_maps(2), ["a"], "got 1 image ids for 2 score maps"),
        (_maps(2), ["a", "a"], "repeat: 'a'"),
        (_maps(2) * 1.5, ["a", "b"], r"score map of 'a' must lie in \[0, 1\]"),
        (_maps(2) - 0.5, ["a", "b"], r"must lie in \[0, 1\]"),
    ],
)
def test_export_validates(tmp_path, maps, ids, match):
    with pytest.raises(ValueError, match=match):
        wsol_frame.save_scoremaps(tmp_path, ids, maps)
    assert not any(tmp_path.iterdir())


def test_export_checks_every_map_before_writing(tmp_path):
    maps = _maps(3)
    maps[2, 5, 5] = np.nan
    with pytest.raises(ValueError, match="score map of 'c.jpg' holds NaN"):
        wsol_frame.save_scoremaps(tmp_path, ["a.jpg", "b.jpg", "c.jpg"], maps)
    assert not any(tmp_path.iterdir())


def test_export_failure_leaves_the_old_map(tmp_path, monkeypatch):
    old = _maps(1, seed=1)
    wsol_frame.save_scoremaps(tmp_path, ["d/a.jpg"], old)
    before = (tmp_path / "d" / "a.jpg.npy").read_bytes()

    def half_save(f, array, allow_pickle):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt  # An interrupted export, mid-file.

    monkeypatch.setattr(wsol_io.np, "save", half_save)
    with pytest.raises(KeyboardInterrupt):
        wsol_frame.save_scoremaps(tmp_path, ["d/a.jpg"], _maps(1, seed=2))
    monkeypatch.undo()
    assert (tmp_path / "d" / "a.jpg.npy").read_bytes() == before
    assert os.listdir(tmp_path / "d") == ["a.jpg.npy"]
    np.testing.assert_array_equal(wsol_frame.load_scoremaps(tmp_path, ["d/a.jpg"]), old)


def test_a_short_write_names_the_map_and_the_likely_cause(tmp_path, monkeypatch):
    """numpy's own error on a full disk names no file and no errno."""

    def short_write(f, array, allow_pickle):
        raise OSError("50176 requested and 38384 written")

    monkeypatch.setattr(wsol_io.np, "save", short_write)
    with pytest.raises(OSError) as error:
        wsol_frame.save_scoremaps(tmp_path, ["d/a.jpg"], _maps(1, seed=2))
    assert error.value.filename == str(tmp_path / "d" / "a.jpg.npy")
    assert (
        error.value.strerror
        == "50176 requested and 38384 written: a short write, as on a full disk"
    )
    assert os.listdir(tmp_path / "d") == []


def test_a_failed_write_keeps_its_errno_and_reason_and_names_the_map(tmp_path, monkeypatch):
    """A write that fails with an errno but no file name (ENOSPC from f.write) keeps its own
    errno and reason, and names the map it was writing; the short-write wording is numpy's
    case alone."""

    def no_space(f, array, allow_pickle):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wsol_io.np, "save", no_space)
    with pytest.raises(OSError) as error:
        wsol_frame.save_scoremaps(tmp_path, ["d/a.jpg"], _maps(1))
    assert error.value.errno == errno.ENOSPC
    assert error.value.strerror == "No space left on device"
    assert error.value.filename == str(tmp_path / "d" / "a.jpg.npy")


def test_export_refuses_a_dtype_other_than_float32_or_float64(tmp_path):
    """The reference writes float64; float32 widens exactly. float16 maps are not narrowed:
    they are refused by name, and nothing is written."""
    with pytest.raises(ValueError, match="dtype must be float32 or float64, got float16"):
        wsol_frame.save_scoremaps(tmp_path, ["a.jpg"], _maps(1).astype(np.float16), np.float16)
    assert not any(tmp_path.iterdir())


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no score map for image 'x/y.jpg'.*y.jpg.npy"):
        wsol_frame.load_scoremaps(tmp_path, ["x/y.jpg"])
    np.save(tmp_path / "small.jpg.npy", _maps(1, (7, 7))[0])
    with pytest.raises(ValueError, match=r"small.jpg.npy: expected shape \(224, 224\)"):
        wsol_frame.load_scoremaps(tmp_path, ["small.jpg"])
    assert wsol_frame.load_scoremaps(tmp_path, ["small.jpg"], size=None).shape == (1, 7, 7)
    np.save(tmp_path / "cube.jpg.npy", np.zeros((2, 7, 7)))
    with pytest.raises(ValueError, match=r"cube.jpg.npy: expected a 2-D float map"):
        wsol_frame.load_scoremaps(tmp_path, ["cube.jpg"], size=None)
    np.save(tmp_path / "int.jpg.npy", np.zeros((224, 224), np.int64))
    with pytest.raises(ValueError, match="int.jpg.npy: expected a 2-D float map"):
        wsol_frame.load_scoremaps(tmp_path, ["int.jpg"])
    nan = _maps(1)[0]
    nan[3, 3] = np.nan
    np.save(tmp_path / "nan.jpg.npy", nan)
    with pytest.raises(ValueError, match="score map of 'nan.jpg' holds NaN"):
        wsol_frame.load_scoremaps(tmp_path, ["nan.jpg"])
    with pytest.raises(ValueError, match="no image ids"):
        wsol_frame.load_scoremaps(tmp_path, [])
    np.save(tmp_path / "other.jpg.npy", _maps(1, (8, 7))[0])
    with pytest.raises(ValueError, match=r"score maps differ in shape: \[\(7, 7\), \(8, 7\)\]"):
        wsol_frame.load_scoremaps(tmp_path, ["small.jpg", "other.jpg"], size=None)


def test_exported_split_evaluates_with_camjax(tmp_path):
    """A camjax split and its CAMs, written for the reference and read back, count as expected:
    a map whose blob is the GT box is a hit; a map far off the box is a miss."""
    size = (16, 16)
    meta = wsol_io.WsolMetadata(
        image_ids=["s/0.png", "s/1.png"],
        class_labels=[1, 2],
        boxes=[[[4, 4, 9, 9]], [[0, 0, 3, 3], [12, 12, 15, 15]]],
        image_sizes=[size, size],
    )
    maps = np.zeros((2, *size), np.float32)
    maps[0, 4:9, 4:9] = 1.0  # Box (4, 4, 9, 9) with the evaluator's x + w ends.
    maps[1, 6:9, 6:9] = 1.0  # (6, 6, 9, 9): far from both GT boxes.
    wsol_io.write_metadata(tmp_path / "metadata", meta)
    wsol_frame.save_scoremaps(tmp_path / "scoremaps", meta.image_ids, maps, size=size)

    read = wsol_io.read_metadata(tmp_path / "metadata")
    gt, num_gt = wsol_frame.resized_gt_boxes(read, size=size)
    loaded = wsol_frame.load_scoremaps(tmp_path / "scoremaps", read.image_ids, size=size)
    counts = wsol.box_correct_counts(
        wsol.quantize_scoremaps(loaded), gt, num_gt, thresholds=[0.5], iou_thresholds=[50]
    )
    np.testing.assert_array_equal(np.asarray(counts), [[1]])


# ------------------------------------------------------------------------------ PxAP masks


def _masks(n):
    masks = np.zeros((n, 224, 224), np.uint8)
    masks[:, 10:50, 20:90] = 1
    masks[:, 100:120, :] = 255
    masks[n - 1, 0, 0] = 1
    return masks


def test_masks_are_read_back_by_the_reference_as_written(tmp_path):
    """Each image's two PNGs sit at ``<split>/<image_id>.mask.png`` and ``.ignore.png`` under
    the root, one 8-bit grayscale channel, 255 on the foreground (or the ignored pixels) and 0
    elsewhere; the reference's get_mask rebuilds the 0/1/255 mask from them exactly."""
    assert wsol_frame.mask_file_paths("test", "x/1.jpg") == (
        "test/x/1.jpg.mask.png",
        "test/x/1.jpg.ignore.png",
    )
    ids = ["x/1.jpg", "y/2.jpg"]
    paths = [wsol_frame.mask_file_paths("test", i) for i in ids]
    masks = _masks(2)
    wsol_frame.save_masks(tmp_path, paths, masks)
    assert sorted(os.listdir(tmp_path / "test" / "x")) == ["1.jpg.ignore.png", "1.jpg.mask.png"]
    for (mask_path, ignore_path), m in zip(paths, masks, strict=True):
        np.testing.assert_array_equal(ref.get_mask(str(tmp_path), [mask_path], ignore_path), m)
        for rel, on in ((mask_path, m == 1), (ignore_path, m == 255)):
            png = cv2.imread(str(tmp_path / rel), cv2.IMREAD_UNCHANGED)
            assert png.dtype == np.uint8 and png.shape == (224, 224)
            np.testing.assert_array_equal(png, np.where(on, 255, 0))


def test_save_masks_refuses_other_values_and_unpaired_masks_before_writing(tmp_path):
    """A value other than 0, 1 or 255 would silently become background; masks and paths that
    do not pair up would write some images' files before failing: both are refused first."""
    paths = [wsol_frame.mask_file_paths("test", i) for i in ("a.jpg", "b.jpg")]
    masks = _masks(2)
    masks[1, 5, 5] = 2
    with pytest.raises(ValueError, match=r"must be 0 \(background\), 1 \(foreground\) or 255"):
        wsol_frame.save_masks(tmp_path, paths, masks)
    with pytest.raises(ValueError, match=r"got 1 \(mask, ignore\) paths for 2 masks"):
        wsol_frame.save_masks(tmp_path, paths[:1], _masks(2))
    with pytest.raises(ValueError, match=r"masks must be \(N, 224, 224\) uint8, got int64"):
        wsol_frame.save_masks(tmp_path, paths, _masks(2).astype(np.int64))
    assert not any(tmp_path.iterdir())
