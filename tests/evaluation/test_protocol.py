"""Tests for camjax/evaluation/protocol.py: the WSOL protocol's settings and GT conventions."""

import cv2
import numpy as np
import pytest

from camjax.evaluation import protocol
from camjax.evaluation import run as run_lib
from camjax.localization import wsol_frame
from configs import default, tiny, vgg16_gap_imagenet
from tests.localization import wsol_reference as ref


def test_protocol_boxes_are_inclusive_pixel_boxes():
    """Pipeline boxes end one past the last pixel; the reference's end on it."""
    # An object on columns 2..5 and rows 1..3 of an 8x8 image.
    mask = np.zeros((8, 8), np.uint8)
    mask[1:4, 2:6] = 1
    exclusive = np.array([[[2.0, 1.0, 6.0, 4.0]]], np.float32)  # as pipeline.pixel_boxes gives it
    box = protocol.protocol_boxes(exclusive, 8, 8, [(8, 8)])
    np.testing.assert_array_equal(box, [[[2, 1, 5, 3]]])
    assert box.dtype == np.int32
    ys, xs = np.nonzero(mask)
    np.testing.assert_array_equal(box[0], [[xs.min(), ys.min(), xs.max(), ys.max()]])
    # The reference's IoU counts x1 - x0 + 1 columns, so the box has the object's area; read
    # unconverted, the exclusive box would be a different one (IoU 12 / 20 with the object).
    x0, y0, x1, y1 = box[0, 0]
    assert (x1 - x0 + 1) * (y1 - y0 + 1) == mask.sum()
    assert ref.calculate_multiple_iou(box[0], exclusive[0].astype(int))[0, 0] == pytest.approx(0.6)
    # float32 noise from normalised coordinates; zero padding rows stay zeros.
    noisy = np.array([[[1.9999999, 0.0000001, 6.0000005, 7.9999995], [0, 0, 0, 0]]])
    np.testing.assert_array_equal(
        protocol.protocol_boxes(noisy, 8, 8, [(8, 8)]), [[[2, 0, 5, 7], [0, 0, 0, 0]]]
    )


def test_protocol_boxes_resize_from_the_original_as_the_reference():
    """Other sizes: the original-pixel inclusive box through the reference's resize_bbox."""
    # A 10 (high) x 20 (wide) original with the object on columns 4..11 and rows 2..6,
    # resized by the pipeline to 8x8 and evaluated at 224x224.
    original_box = np.array([4, 2, 11, 6])
    at_8 = np.array([[[4 * 8 / 20, 2 * 8 / 10, 12 * 8 / 20, 7 * 8 / 10]]], np.float32)
    got = protocol.protocol_boxes(at_8, 8, 224, [(10, 20)])
    # resize_bbox: int(c * 224 / L), L = 20 for x and 10 for y.
    np.testing.assert_array_equal(got, [[[44, 44, 123, 134]]])
    np.testing.assert_array_equal(
        got[0], wsol_frame.resize_boxes(original_box[None], (20, 10), (224, 224))
    )
    with pytest.raises(ValueError, match="original_sizes"):
        protocol.protocol_boxes(at_8, 8, 224, [(10, 20), (10, 20)])


@pytest.mark.parametrize("shape,size", [((16, 16), 16), ((8, 8), 19), ((21, 21), 10)])
def test_protocol_mask_resizes_like_opencv_nearest(shape, size):
    rng = np.random.default_rng(size)
    mask = (rng.random(shape) < 0.4).astype(np.uint8) * 255
    got = protocol.protocol_mask(mask[..., None], size)
    resized = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(got, (resized > 0.5).astype(np.uint8))


def test_wsol_protocol_defaults():
    p = protocol.wsol_protocol(default.get_config())
    np.testing.assert_array_equal(p.thresholds, np.arange(0, 1, 0.001))
    assert (p.iou_thresholds, p.eval_size, p.fixed_threshold, p.pxap) == (
        (30, 50, 70),
        64,
        0.2,
        True,
    )
    assert protocol.wsol_protocol(vgg16_gap_imagenet.get_config()).eval_size == 224
    config = tiny.get_config()
    config.eval.wsol.enabled = False
    assert protocol.wsol_protocol(config) is None


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("eval.wsol.threshold_step", 0.0, r"config.eval.wsol.threshold_step must be a number in"),
        ("eval.wsol.threshold_step", 1.0, r"config.eval.wsol.threshold_step"),
        ("eval.wsol.threshold_step", 1e-6, r"config.eval.wsol.threshold_step"),
        ("eval.wsol.iou_thresholds", (0.5,), r"config.eval.wsol.iou_thresholds .* e.g. \(30"),
        ("eval.wsol.iou_thresholds", (50, 50), r"config.eval.wsol.iou_thresholds"),
        ("eval.wsol.iou_thresholds", (), r"config.eval.wsol.iou_thresholds"),
        ("eval.wsol.iou_thresholds", (0, 101), r"config.eval.wsol.iou_thresholds"),
        ("eval.wsol.eval_size", -1, r"config.eval.wsol.eval_size must be an integer >= 0"),
        ("eval.fixed_threshold", 1.5, r"config.eval.fixed_threshold must be a CAM threshold"),
    ],
)
def test_bad_wsol_config_is_a_clear_error(key, value, match, tmp_path):
    """Values out of range; keys and types are the locked ConfigDict's (test below)."""
    config = tiny.get_config()
    config.update_from_flattened_dict({key: value})
    with pytest.raises(ValueError, match=match):
        protocol.wsol_protocol(config)
    # run_evaluation checks the config before restoring anything.
    with pytest.raises(ValueError, match=match):
        run_lib.run_evaluation(config, str(tmp_path))


def test_protocol_mask_marks_ignored_pixels_off_the_object():
    """OpenImages' ignore regions become 255 (not scored) except where the object is."""
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 1:3] = 255
    ignore = np.zeros((4, 6), np.uint8)
    ignore[:, 2:5] = 255
    got = protocol.protocol_mask(mask, 8, ignore[..., None])
    nearest = {
        k: cv2.resize(m.astype(np.float32), (8, 8), interpolation=cv2.INTER_NEAREST) > 0.5
        for k, m in (("object", mask), ("ignore", ignore))
    }
    expected = np.where(nearest["object"], 1, np.where(nearest["ignore"], 255, 0))
    np.testing.assert_array_equal(got, expected)
    assert set(np.unique(got)) == {0, 1, 255}


def test_wsol_config_without_any_metric_is_an_error():
    config = tiny.get_config()
    config.eval.wsol.pxap = config.eval.wsol.boxes = False
    with pytest.raises(ValueError, match="no WSOL metric is left"):
        protocol.wsol_protocol(config)


def test_locked_config_rejects_unknown_keys_and_wrong_types():
    """wsol_protocol leaves key and type checks to ConfigDict, as evaluate.py locks it."""
    config = tiny.get_config()
    config.lock()
    with pytest.raises(AttributeError):
        config.eval.wsol.threshold_stp = 0.01
    with pytest.raises(TypeError):
        config.eval.wsol.pxap = "yes"


def test_reference_scoremaps_of_constant_and_nan_cams_are_zeros():
    """normalize_scoremap's rule: a constant map (dead features, an early checkpoint) or one
    with a NaN scores zeros, not 0 / 0."""
    cams = np.stack([np.full((7, 7), 3.0), np.where(np.eye(7) > 0, np.nan, 1.0), np.eye(7)])
    got = protocol.reference_scoremaps(cams, 16)
    assert got.shape == (3, 16, 16) and got.dtype == np.float64
    np.testing.assert_array_equal(got[:2], 0.0)
    np.testing.assert_array_equal(
        got[2], ref.normalize_scoremap(ref.resize_cam(np.eye(7), (16, 16)))
    )


def test_protocol_mask_reads_any_nonzero_and_refuses_a_colour_mask():
    np.testing.assert_array_equal(protocol.protocol_mask(np.eye(4, dtype=np.uint8), 4), np.eye(4))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, 1\)"):
        protocol.protocol_mask(np.zeros((4, 4, 3), np.uint8), 4)


def test_protocol_boxes_need_one_height_and_width_per_image():
    boxes = np.zeros((2, 1, 4), np.float32)
    for sizes in ([(8, 8)], [(8, 8, 3), (8, 8, 3)]):
        with pytest.raises(ValueError, match=r"original_sizes must be \(2, 2\)"):
            protocol.protocol_boxes(boxes, 8, 8, sizes)
