"""Tests for the procedural renderer `camjax.data.shapes`."""

import itertools

import numpy as np
import pytest

from camjax.data import shapes

SIZE = 64
NUM_SAMPLES = 300


def _render(index: int, size: int = SIZE, seed: int = 0, split: str = "train") -> dict:
    return shapes.render_example(shapes.example_rng(seed, split, index), size)


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    return [_render(i) for i in range(NUM_SAMPLES)]


def _box_wh(box: np.ndarray) -> tuple[float, float]:
    return float(box[2] - box[0]), float(box[3] - box[1])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (x0, y0, x1, y1) boxes with exclusive ends."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])
    return inter / (area(a) + area(b) - inter)


def test_same_stream_gives_identical_example():
    a, b = _render(7), _render(7)
    for key in ("image", "mask", "box"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["label"] == b["label"]


@pytest.mark.parametrize(
    "other", [dict(index=8), dict(index=7, split="test"), dict(index=7, seed=1)]
)
def test_different_stream_gives_different_image(other):
    assert not np.array_equal(_render(7)["image"], _render(**other)["image"])


@pytest.mark.parametrize("size", [32, 64, 96, 224])
def test_dtypes_and_shapes(size):
    for index in range(4):
        example = _render(index, size)
        assert example["image"].shape == (size, size, 3)
        assert example["image"].dtype == np.uint8
        assert example["mask"].shape == (size, size)
        assert example["mask"].dtype == bool
        assert example["box"].shape == (4,)
        assert example["box"].dtype == np.float32
        assert isinstance(example["label"], int)
        assert 0 <= example["label"] < len(shapes.CLASS_NAMES)


@pytest.mark.parametrize("size", [32, 64, 96, 224])
def test_box_is_tight_box_of_mask(size):
    for index in range(40):
        example = _render(index, size)
        ys, xs = np.nonzero(example["mask"])
        expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        np.testing.assert_array_equal(example["box"], np.array(expected, np.float32))


def test_tight_box_uses_exclusive_ends():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:6] = True  # rows 2..4, columns 3..5
    np.testing.assert_array_equal(shapes.tight_box(mask), [3, 2, 6, 5])
    with pytest.raises(ValueError):
        shapes.tight_box(np.zeros((4, 4), bool))


def test_area_fractions_and_aspects(samples):
    wh = np.array([_box_wh(example["box"]) for example in samples])
    fractions = wh.prod(axis=1) / SIZE**2
    assert fractions.min() >= shapes.MIN_AREA_FRACTION
    assert fractions.max() <= shapes.MAX_AREA_FRACTION
    # Uniform over the range: both ends are reached.
    assert fractions.min() < 0.08 and fractions.max() > 0.36
    aspects = wh[:, 0] / wh[:, 1]
    # Whole-pixel rounding may stretch the sampled aspect range a little.
    assert aspects.min() >= 0.45 and aspects.max() <= 2.2
    assert aspects.min() < 0.6 and aspects.max() > 1.7


def test_no_single_centred_box_localizes_most_objects(samples):
    boxes = [example["box"] for example in samples]
    best = 0.0
    for fraction, aspect in itertools.product(np.linspace(0.05, 0.4, 8), [0.5, 0.71, 1, 1.41, 2]):
        w, h = SIZE * np.sqrt(fraction * aspect), SIZE * np.sqrt(fraction / aspect)
        centred = np.array([SIZE - w, SIZE - h, SIZE + w, SIZE + h]) / 2
        best = max(best, np.mean([_iou(centred, box) >= 0.5 for box in boxes]))
    assert best < 0.35


def test_box_centres_cover_the_image(samples):
    centres = np.array([(example["box"][:2] + example["box"][2:]) / 2 for example in samples])
    cells = np.floor(centres / SIZE * 3).astype(int)
    counts = np.zeros((3, 3), int)
    np.add.at(counts, (cells[:, 1], cells[:, 0]), 1)
    assert counts.min() >= 0.01 * NUM_SAMPLES, counts


def test_classes_roughly_uniform(samples):
    counts = np.bincount([example["label"] for example in samples], minlength=10)
    assert len(shapes.CLASS_NAMES) == 10 == len(set(shapes.CLASS_NAMES))
    expected = NUM_SAMPLES / len(shapes.CLASS_NAMES)
    assert counts.min() >= 0.5 * expected and counts.max() <= 1.6 * expected, counts


def test_silhouettes_fill_their_boxes_as_their_shape(samples):
    fill = {name: [] for name in shapes.SHAPES}
    for example in samples:
        w, h = _box_wh(example["box"])
        shape = shapes.SHAPES[example["label"] // len(shapes.TEXTURES)]
        fill[shape].append(example["mask"].sum() / (w * h))
    assert np.all(np.array(fill["rectangle"]) == 1.0)
    # pi/4 for an ellipse, 1/2 for a triangle, plus the half-pixel growth of the edges.
    assert 0.75 < np.min(fill["ellipse"]) and np.max(fill["ellipse"]) < 0.92
    assert 0.48 < np.min(fill["triangle"]) and np.max(fill["triangle"]) < 0.65
    for name in ("cross", "star"):
        assert 0.35 < np.min(fill[name]) and np.max(fill[name]) < 0.85


def test_texture_colours_vary_and_carry_no_class(samples):
    means = np.array([example["image"][example["mask"]].mean(axis=0) for example in samples])
    labels = np.array([example["label"] for example in samples])
    assert means.std(axis=0).min() > 25.0
    luma = means @ np.array([0.299, 0.587, 0.114])
    for label in range(len(shapes.CLASS_NAMES)):
        assert 80.0 < luma[labels == label].mean() < 175.0


def test_object_texture_is_visible_and_background_is_not_flat(samples):
    luma = lambda pixels: pixels @ np.array([0.299, 0.587, 0.114])
    for example in samples[:50]:
        image, mask = example["image"].astype(np.float64), example["mask"]
        # Two texture colours at least 80 luma apart give a std of about 40.
        assert luma(image[mask]).std() > 25.0
        assert image[~mask].std(axis=0).max() > 10.0


@pytest.mark.parametrize("size", [0, 16, 31])
def test_rejects_small_images(size):
    with pytest.raises(ValueError, match="image_size"):
        shapes.render_example(np.random.default_rng(0), size)


def test_example_rng_validates_its_arguments():
    with pytest.raises(ValueError, match="split"):
        shapes.example_rng(0, "val", 0)
    with pytest.raises(ValueError):
        shapes.example_rng(0, "train", -1)


def test_mask_is_exactly_the_visible_object(monkeypatch):
    # Without pixel noise the object is its two texture colours and nothing else, so any
    # clutter drawn over it (or mask pixels outside it) would show up as a third colour.
    monkeypatch.setattr(shapes, "_PIXEL_NOISE_STD", 0.0)
    for index in range(100):
        example = _render(index)
        colours = np.unique(example["image"][example["mask"]], axis=0)
        assert len(colours) == 2
