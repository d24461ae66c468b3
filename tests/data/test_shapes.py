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
    # Our message, not numpy's: numpy rejects a negative entropy word on its own, with a
    # message that names neither the seed nor the index.
    for seed, index in ((0, -1), (-1, 0)):
        with pytest.raises(ValueError, match="seed and index must be non-negative"):
            shapes.example_rng(seed, "train", index)


def test_mask_is_exactly_the_visible_object(monkeypatch):
    # Without pixel noise the object is its two texture colours and nothing else, so any
    # clutter drawn over it (or mask pixels outside it) would show up as a third colour.
    monkeypatch.setattr(shapes, "_PIXEL_NOISE_STD", 0.0)
    for index in range(100):
        example = _render(index)
        colours = np.unique(example["image"][example["mask"]], axis=0)
        assert len(colours) == 2


def test_class_names_follow_the_documented_label_map():
    """Label = shape_index * 2 + texture_index and the name is `{texture}_{shape}`: these
    names are the tfds ClassLabel names stored with the data, so a reordering or renaming
    would silently relabel every class."""
    assert shapes.SHAPES == ("ellipse", "rectangle", "triangle", "cross", "star")
    assert shapes.TEXTURES == ("striped", "checkered")
    assert shapes.CLASS_NAMES == (
        "striped_ellipse",
        "checkered_ellipse",
        "striped_rectangle",
        "checkered_rectangle",
        "striped_triangle",
        "checkered_triangle",
        "striped_cross",
        "checkered_cross",
        "striped_star",
        "checkered_star",
    )


def _box_crop(example: dict) -> np.ndarray:
    x0, y0, x1, y1 = example["box"].astype(int)
    return example["mask"][y0:y1, x0:x1]


def test_triangles_point_four_ways_and_stars_two(samples):
    """Triangles are turned by a random quarter turn, so each side of the box holds the base
    (the one fully covered box edge) in some sample; stars point up (a tip at the middle of
    the box's top row, a gap between two tips at the middle of its bottom row) or down."""
    bases, stars = set(), set()
    for example in samples:
        shape = shapes.SHAPES[example["label"] // len(shapes.TEXTURES)]
        crop = _box_crop(example)
        if shape == "triangle":
            edges = {"top": crop[0], "bottom": crop[-1], "left": crop[:, 0], "right": crop[:, -1]}
            full = [name for name, edge in edges.items() if edge.all()]
            assert len(full) == 1, full
            bases.add(full[0])
        elif shape == "star":
            middle = [(crop.shape[1] - 1) // 2, crop.shape[1] // 2]
            top, bottom = crop[0, middle].all(), crop[-1, middle].any()
            assert top != bottom
            stars.add("up" if top else "down")
    assert bases == {"top", "bottom", "left", "right"}
    assert stars == {"up", "down"}


def test_large_silhouettes_fill_their_exact_area_fractions():
    """At 224 px with boxes of at least 100 px a side, the half-pixel growth adds at most a
    few percent, so each fill is its shape's exact area fraction: pi/4, 1/2, 1; a cross of
    bar width t (a fraction in [0.3, 0.45]) covers 2t - t^2; a five-point star with inner
    radius r = 0.45 of the outer covers its ten triangles 5 r sin 36 over its box
    2 sin 72 x (1 + cos 36)."""
    r, deg = 0.45, np.deg2rad
    star = 5 * r * np.sin(deg(36)) / (2 * np.sin(deg(72)) * (1 + np.cos(deg(36))))
    exact = {"ellipse": np.pi / 4, "triangle": 0.5, "rectangle": 1.0, "star": star}
    fills = {name: [] for name in shapes.SHAPES}
    for index in range(120):
        example = _render(index, 224)
        h, w = _box_crop(example).shape
        if min(w, h) >= 100:
            shape = shapes.SHAPES[example["label"] // len(shapes.TEXTURES)]
            fills[shape].append(example["mask"].sum() / (w * h))
    assert min(len(f) for f in fills.values()) >= 3, {k: len(f) for k, f in fills.items()}
    for name, fraction in exact.items():
        ratio = np.array(fills[name]) / fraction
        assert ratio.min() >= 1.0 and ratio.max() <= 1.06, (name, ratio)
    cross = np.array(fills["cross"])
    assert cross.min() >= 2 * 0.3 - 0.3**2 and cross.max() <= 1.06 * (2 * 0.45 - 0.45**2)


def test_texture_colours_keep_their_luma_gap(monkeypatch):
    """Without pixel noise an object shows exactly its two texture colours, whose luma
    (0.299 R + 0.587 G + 0.114 B) differ by at least 80 (less one for rounding to uint8)."""
    monkeypatch.setattr(shapes, "_PIXEL_NOISE_STD", 0.0)
    for index in range(100):
        example = _render(index)
        colours = np.unique(example["image"][example["mask"]], axis=0).astype(np.float64)
        luma = colours @ np.array([0.299, 0.587, 0.114])
        assert abs(luma[0] - luma[1]) >= 79.0, (index, colours)


def test_textures_match_their_labels(monkeypatch):
    """A 2x2 window of pixel centres in a checkerboard pattern (ab/ba) occurs at the crossing
    of a checkered texture's cell edges, never in stripes: the stripe index floor(f) of a
    linear f changes at most once across a window (stripes are at least 2.5 px wide), and
    f(0,0) + f(1,1) = f(1,0) + f(0,1) rules out the two diagonals landing on different sides.
    Without pixel noise each colour is exact, so windows are read off the image alone."""
    monkeypatch.setattr(shapes, "_PIXEL_NOISE_STD", 0.0)
    crossings = {texture: [] for texture in shapes.TEXTURES}
    for index in range(100):
        example = _render(index)
        image, mask = example["image"], example["mask"]
        a = (image == image[mask][0]).all(axis=-1)
        inside = mask[:-1, :-1] & mask[1:, :-1] & mask[:-1, 1:] & mask[1:, 1:]
        diagonal = (
            (a[:-1, :-1] == a[1:, 1:]) & (a[1:, :-1] == a[:-1, 1:]) & (a[:-1, :-1] != a[1:, :-1])
        )
        texture = shapes.TEXTURES[example["label"] % len(shapes.TEXTURES)]
        crossings[texture].append(int((diagonal & inside).sum()))
    assert max(crossings["striped"]) == 0
    assert np.mean(np.array(crossings["checkered"]) > 0) > 0.6, crossings["checkered"]


def test_objects_reach_every_image_border(samples):
    """Positions are uniform over every placement that fits, the flush ones included."""
    boxes = np.array([example["box"] for example in samples])
    assert np.any(boxes[:, 0] == 0) and np.any(boxes[:, 1] == 0)
    assert np.any(boxes[:, 2] == SIZE) and np.any(boxes[:, 3] == SIZE)
    assert boxes.min() >= 0 and boxes.max() <= SIZE
