"""Tests for the `wsol_shapes` tfds builder: tiny splits prepared in a tmp dir."""

import io
import json
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from camjax import data as data_lib
from camjax.data import shapes, subsets, wsol_shapes

SIZE = 64
COUNTS = dict(num_train=12, num_validation=5, num_test=6)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def sources(data_dir) -> dict:
    return wsol_shapes.WsolShapes.sources(data_dir, SIZE, COUNTS)


def test_splits_and_sizes(sources):
    assert sorted(sources) == ["test", "train", "validation"]
    assert len(sources["train"]) == COUNTS["num_train"]
    assert len(sources["validation"]) == COUNTS["num_validation"]
    assert len(sources["test"]) == COUNTS["num_test"]


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_records_equal_freshly_rendered_examples(sources, data_dir, split):
    seed = wsol_shapes.get_builder(SIZE, data_dir, **COUNTS).builder_config.seed
    for index in range(len(sources[split])):
        record = sources[split][index]
        expected = shapes.render_example(shapes.example_rng(seed, split, index), SIZE)
        assert record["image"].dtype == np.uint8
        np.testing.assert_array_equal(record["image"], expected["image"])
        assert record["mask"].shape == (SIZE, SIZE, 1)
        np.testing.assert_array_equal(record["mask"][..., 0], expected["mask"] * 255)
        bbox = np.stack(record["objects"]["bbox"])
        assert bbox.shape == (1, 4)
        assert np.all((bbox >= 0.0) & (bbox <= 1.0))
        np.testing.assert_array_equal(wsol_shapes.bbox_to_pixels(bbox, SIZE)[0], expected["box"])
        assert record["label"] == expected["label"]
    # Building and reading must work without TensorFlow.
    assert "tensorflow" not in sys.modules


def test_records_without_images_reads_every_record_in_order_undecoded(
    sources, data_dir, monkeypatch
):
    """Reads of 4 records over a split of 6: every (index, record) once and in order across
    the reads, the images and masks left as their PNG bytes (decoding every image of a large
    split only to read its labels and ids would take hours)."""
    monkeypatch.setattr(subsets, "_READ_BATCH", 4)
    builder = wsol_shapes.get_builder(SIZE, data_dir, **COUNTS)
    read = list(subsets.records_without_images(builder, "test"))
    assert [i for i, _ in read] == list(range(COUNTS["num_test"]))
    for index, record in read:
        decoded = sources["test"][index]
        assert record["label"] == decoded["label"]
        for key in ("image", "mask"):
            assert isinstance(record[key], bytes) and record[key].startswith(b"\x89PNG")
            png = np.asarray(Image.open(io.BytesIO(record[key])))
            np.testing.assert_array_equal(png.reshape(decoded[key].shape), decoded[key])


def test_bbox_convention_is_normalized_yxyx_with_exclusive_ends():
    example = shapes.render_example(shapes.example_rng(0, "test", 0), SIZE)
    x0, y0, x1, y1 = example["box"]
    encoded = wsol_shapes.encode_example(example)
    np.testing.assert_allclose(encoded["objects"]["bbox"], [[y0, x0, y1, x1]] / np.float32(SIZE))
    assert encoded["image"].startswith(b"\x89PNG") and encoded["mask"].startswith(b"\x89PNG")


def test_info_features_and_format(sources, data_dir):
    builder = wsol_shapes.get_builder(SIZE, data_dir, **COUNTS)
    assert builder.name == wsol_shapes.DATASET_NAME
    assert builder.is_prepared()
    assert builder.builder_config.name == "s64_n12_5_6"
    assert builder.info.file_format.value == "array_record"
    label = builder.info.features["label"]
    assert label.names == list(shapes.CLASS_NAMES)
    assert label.int2str(sources["test"][0]["label"]) in shapes.CLASS_NAMES
    assert builder.info.features["image"].shape == (SIZE, SIZE, 3)
    assert builder.info.supervised_keys == ("image", "label")


def test_second_load_reuses_prepared_data(sources, data_dir):
    again = wsol_shapes.WsolShapes.sources(data_dir, SIZE, COUNTS)
    np.testing.assert_array_equal(again["train"][3]["image"], sources["train"][3]["image"])


def test_standard_configs(tmp_path):
    configs = {c.name: c for c in wsol_shapes.WsolShapes.BUILDER_CONFIGS}
    assert wsol_shapes.available_image_sizes() == (64, 96, 224)
    for name in ("s64", "s96"):
        c = configs[name]
        assert (c.num_train, c.num_validation, c.num_test) == (10_000, 1_000, 1_000)
    assert configs["s224"].image_size == 224
    # Small splits so the full-size model configs can run a few steps.
    c = configs["s224"]
    assert (c.num_train, c.num_validation, c.num_test) == (2_000, 256, 256)
    assert all(c.seed == 0 for c in configs.values())
    builder = wsol_shapes.get_builder(96, str(tmp_path))
    assert builder.builder_config is configs["s96"]
    assert not builder.is_prepared()


@pytest.mark.parametrize("size", [32, 128])
def test_unknown_image_size_names_available_sizes(size):
    with pytest.raises(ValueError, match=r"available sizes: \[64, 96, 224\]"):
        wsol_shapes.get_builder(size)
    with pytest.raises(ValueError, match="available sizes"):
        wsol_shapes.WsolShapes.sources(None, size, {})


def test_data_of_a_renderer_changed_without_a_version_bump_is_refused(
    sources, data_dir, monkeypatch
):
    """Prepared files of the same VERSION that today's renderer would not draw (a change to
    `shapes` without a VERSION bump) are refused at opening, the message naming that cause."""
    render = wsol_shapes.render_example

    def recoloured(rng, size):
        example = render(rng, size)
        return dict(example, image=255 - example["image"])

    monkeypatch.setattr(wsol_shapes, "render_example", recoloured)
    with pytest.raises(data_lib.DataFilesError, match="a camjax that renders differently"):
        wsol_shapes.WsolShapes.sources(data_dir, SIZE, COUNTS)


def test_damaged_prepared_files_are_one_line_errors_naming_the_fix(sources, data_dir, tmp_path):
    """Caught at opening: a shard swapped with another split's or truncated (its record count),
    a byte flipped in a split's first example, two splits of equal size swapped whole (their
    first examples are not the ones rendered for them), a version folder without its
    dataset_info.json (tfds takes the folder as prepared) or with a broken one; at the read of
    an example: a byte flipped in a later one; a data dir that is a file cannot be generated
    into. Each says what to delete, and each case damages its own copy of the data."""

    def damaged(case, counts=COUNTS):
        copy = str(tmp_path / case)
        shutil.copytree(data_dir, copy)
        if counts != COUNTS:
            wsol_shapes.WsolShapes.sources(copy, SIZE, counts)  # generated
        version = wsol_shapes.get_builder(SIZE, copy, **counts).data_path
        shard = {
            s: os.path.join(version, f"wsol_shapes-{s}.array_record-00000-of-00001")
            for s in ("train", "validation", "test")
        }
        return copy, version, shard, open(shard["train"], "rb").read()

    def flipped(data, at):
        return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]

    copy, _, shard, _ = damaged("swapped")
    shutil.copyfile(shard["test"], shard["train"])  # the test split's 6 records as train's 12
    with pytest.raises(data_lib.DataFilesError, match=r"train split holds 6 examples, where its "):
        data_lib.reopenable_sources("wsol_shapes", SIZE, copy, COUNTS)
    copy, _, shard, good = damaged("truncated")
    open(shard["train"], "wb").write(good[:5000])
    with pytest.raises(data_lib.DataFilesError, match=r"train split holds no readable examples"):
        data_lib.reopenable_sources("wsol_shapes", SIZE, copy, COUNTS)
    copy, _, shard, good = damaged("flipped_first")
    open(shard["train"], "wb").write(flipped(good, 5000))
    with pytest.raises(data_lib.DataFilesError, match=r"the first example of the train split .*"):
        data_lib.reopenable_sources("wsol_shapes", SIZE, copy, COUNTS)
    copy, _, shard, good = damaged("flipped_later")
    open(shard["train"], "wb").write(flipped(good, len(good) // 2))  # a later example's chunk
    opened = data_lib.reopenable_sources("wsol_shapes", SIZE, copy, COUNTS)
    with pytest.raises(data_lib.DataFilesError, match=r"example \d+ of the train split .* Delete"):
        for index in range(len(opened["train"])):
            opened["train"][index]
    equal = dict(COUNTS, num_test=COUNTS["num_validation"])
    copy, _, shard, _ = damaged("equal_splits_swapped", equal)
    os.replace(shard["validation"], shard["train"] + ".x")
    os.replace(shard["test"], shard["validation"])
    os.replace(shard["train"] + ".x", shard["test"])
    with pytest.raises(
        data_lib.DataFilesError,
        match=r"first example of the validation split .* is not the one rendered for it",
    ):
        data_lib.reopenable_sources("wsol_shapes", SIZE, copy, equal)
    copy, version, _, _ = damaged("info")
    info = os.path.join(version, "dataset_info.json")
    with open(info) as f:
        fields = json.load(f)
    with open(info, "w") as f:
        f.write("{not json")
    with pytest.raises(data_lib.DataFilesError, match="damaged dataset_info.json"):
        wsol_shapes.WsolShapes.sources(copy, SIZE, COUNTS)
    with open(info, "w") as f:
        json.dump({k: v for k, v in fields.items() if k != "splits"}, f)  # read: no split
    with pytest.raises(data_lib.DataFilesError, match=r"is incomplete \(no 'train' split"):
        wsol_shapes.WsolShapes.sources(copy, SIZE, COUNTS)
    os.remove(info)  # tfds would take the folder as prepared and skip generating it
    with pytest.raises(data_lib.DataFilesError, match=r"holds no prepared wsol_shapes .*again"):
        wsol_shapes.WsolShapes.sources(copy, SIZE, COUNTS)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(data_lib.DataFilesError, match=r"cannot generate or read .*Not a"):
        wsol_shapes.WsolShapes.sources(str(a_file), SIZE, COUNTS)


def test_builder_defaults_to_array_record(tmp_path):
    """Built directly (as `tfds.builder` does), not through `get_builder`, the builder still
    writes ArrayRecord: random access (`as_data_source`) needs it."""
    builder = wsol_shapes.WsolShapes(config="s64", data_dir=str(tmp_path))
    assert builder.info.file_format.value == "array_record"


@pytest.mark.parametrize("size", [64, 96, 224])
def test_bbox_to_pixels_recovers_every_whole_pixel(size):
    """Every pixel coordinate k in 0..S, stored as float32 k / S, comes back as exactly k:
    k / S is not exact in float32 for S = 96 or 224, so truncating k / S * S would lose a
    pixel."""
    k = np.arange(size + 1, dtype=np.float64)
    stored = np.stack([k, k, k, k], axis=-1) / size
    pixels = wsol_shapes.bbox_to_pixels(stored.astype(np.float32), size)
    assert pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, np.stack([k, k, k, k], axis=-1))


def test_zero_split_sizes_mean_the_standard_sizes(monkeypatch):
    """`sources` passes only nonzero sizes to `get_builder`: 0 means the config's standard
    size, not an empty split (that would be config `s64_n0_0_3`)."""
    seen = {}

    class Stop(Exception):
        pass

    def fake_get_builder(image_size, data_dir, **sizes):
        seen.update(sizes, image_size=image_size, data_dir=data_dir)
        raise Stop

    monkeypatch.setattr(wsol_shapes, "get_builder", fake_get_builder)
    with pytest.raises(Stop):
        wsol_shapes.WsolShapes.sources(
            "somewhere", SIZE, {"num_train": 0, "num_validation": 0, "num_test": 3}
        )
    assert seen == {"num_test": 3, "image_size": SIZE, "data_dir": "somewhere"}
