"""camjax.viz: the colour map, the overlay, the two-panel picture and the contact sheet, each
against pixels worked out by hand."""

import numpy as np
import pytest
from PIL import Image

from camjax import viz


@pytest.mark.parametrize("count, size", [(1, (5, 3)), (2, (10, 3)), (4, (20, 3)), (6, (20, 6))])
def test_contact_sheet_tiles_four_per_row_without_blank_columns(tmp_path, count, size):
    paths = []
    for i in range(count):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.full((3, 5, 3), 10 * i, np.uint8)).save(paths[-1])
    sheet = viz.contact_sheet(paths)
    assert sheet.size == size
    tiles = np.asarray(sheet)
    for i in range(count):
        row, col = divmod(i, 4)
        assert (tiles[3 * row : 3 * row + 3, 5 * col : 5 * col + 5] == 10 * i).all()


def test_jet_colours_by_hand():
    """viz.jet's piecewise-linear 'jet', worked out by hand: 255 * clip(1.5 - |4x - c|, 0, 1)
    with c = 3, 2, 1 for red, green, blue, truncated to uint8 (255 * 0.5 = 127.5 -> 127).
    Values outside [0, 1] take the colour of the nearer end."""
    x = np.array([[0.0, 0.25, 0.5], [0.75, 1.0, -1.0], [2.0, 0.0, 0.0]])
    want = np.array(
        [
            [[0, 0, 127], [0, 127, 255], [127, 255, 127]],
            [[255, 127, 0], [127, 0, 0], [0, 0, 127]],
            [[127, 0, 0], [0, 0, 127], [0, 0, 127]],
        ],
        np.uint8,
    )
    got = viz.jet(x)
    assert got.dtype == np.uint8 and got.shape == (3, 3, 3)
    np.testing.assert_array_equal(got, want)


def test_a_nan_map_or_a_weight_outside_0_1_is_refused_not_drawn():
    """NaN has no colour (a uint8 cast would make one up, with a RuntimeWarning at most), and
    an alpha outside [0, 1] is no blend; +-Inf is a colour, the nearer end's."""
    with pytest.raises(ValueError, match="^the map holds NaN, which has no colour"):
        viz.jet(np.array([[0.5, np.nan]]))
    np.testing.assert_array_equal(viz.jet(np.array([np.inf, -np.inf])), [[127, 0, 0], [0, 0, 127]])
    image, scoremap = np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2))
    for alpha in (-0.1, 1.5):
        with pytest.raises(
            ValueError, match=r"alpha is the map's weight in the blend, in \[0, 1\]"
        ):
            viz.overlay(image, scoremap, alpha=alpha)


def test_overlay_blends_image_and_jet_by_alpha():
    """(1 - alpha) * image + alpha * jet, truncated: with image 40 and jet(0.5) = (127, 255, 127)
    at alpha 0.25, 30 + 31.75 = 61.75 -> 61 and 30 + 63.75 = 93.75 -> 93."""
    image = np.full((2, 3, 3), 40, np.uint8)
    scoremap = np.full((2, 3), 0.5, np.float32)
    for alpha, colour in [(0.25, [61, 93, 61]), (0.0, [40, 40, 40]), (1.0, [127, 255, 127])]:
        got = viz.overlay(image, scoremap, alpha=alpha)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, np.broadcast_to(np.uint8(colour), image.shape))
    # A map of another shape (here transposed, and one that would broadcast) is refused, not
    # stretched or broadcast over the image.
    for wrong in [np.zeros((3, 2)), np.zeros((1, 3))]:
        with pytest.raises(ValueError, match="upsample the CAM to the image first"):
            viz.overlay(image, wrong)


def _outline(canvas, box, color, width=1):
    """Paints by hand the outline of a box with exclusive ends (x0, y0, x1, y1), `width` pixels
    thick inside it."""
    x0, y0, x1, y1 = box
    inside = np.zeros(canvas.shape[:2], bool)
    inside[y0:y1, x0:x1] = True
    inner = np.zeros_like(inside)
    inner[y0 + width : y1 - width, x0 + width : x1 - width] = True
    canvas[inside & ~inner] = color


def test_cam_picture_layout_and_boxes_pixel_by_pixel():
    """Left the image, then a 4-pixel white gap, then the overlay; a 14-pixel caption band on
    top only with a caption; GT boxes green and the CAM box red on both panels, drawn inside
    their exclusive ends (x1, y1 are the first pixels outside)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)  # h 6, w 8: not square
    scoremap = np.zeros((6, 8), np.float32)
    # The overlay of a zero map: 0.5 * image + 0.5 * jet(0), jet(0) = (0, 0, 127), truncated.
    panel = np.floor(0.5 * image.astype(np.float64) + 0.5 * np.array([0, 0, 127])).astype(np.uint8)

    # scale 1: boxes pixel by pixel; a single GT box may come flat, shape (4,).
    pic = np.asarray(viz.cam_picture(image, scoremap, [2, 3, 5, 6], (6, 0, 8, 3), scale=1))
    assert pic.shape == (6, 2 * 8 + 4, 3)
    for left, base in [(0, image), (12, panel)]:
        want = base.copy()
        _outline(want, (2, 3, 5, 6), viz.GT_COLOR)
        _outline(want, (6, 0, 8, 3), viz.PRED_COLOR)
        np.testing.assert_array_equal(pic[:, left : left + 8], want)
    assert (pic[:, 8:12] == 255).all()
    empty = np.asarray(viz.cam_picture(image, scoremap, np.zeros((0, 4)), (3, 1, 3, 5), scale=1))
    np.testing.assert_array_equal(empty[:, :8], image)  # a zero-width CAM box draws nothing
    np.testing.assert_array_equal(empty[:, 12:], panel)

    # Small images are enlarged (nearest neighbour) by `scale`, lines scale // 2 pixels thick.
    pic = np.asarray(viz.cam_picture(image, scoremap, [[1, 1, 3, 3]], None, "x", scale=4))
    assert pic.shape == (14 + 6 * 4, 2 * 8 * 4 + 4, 3)
    big = image.repeat(4, axis=0).repeat(4, axis=1)
    _outline(big, (4, 4, 12, 12), viz.GT_COLOR, width=2)
    np.testing.assert_array_equal(pic[14:, : 8 * 4], big)
    assert (pic[14:, 32:36] == 255).all()
    # Large ones are not; no caption, no band.
    wide = np.zeros((2, 200, 3), np.uint8)
    pic = viz.cam_picture(wide, np.zeros((2, 200)), np.zeros((0, 4)), None, scale=4)
    assert pic.size == (2 * 200 + 4, 2)
