"""Tests for `camjax.data.manual`: the writer and configs (on toy builders), the split views,
the image checks, the errors."""

import dataclasses
import hashlib
import io
import json
import sys
from pathlib import Path

import cv2
import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from PIL import Image
from tensorflow_datasets.core import shuffle as tfds_shuffle

from camjax import data as data_lib
from camjax.data import array_records, downloads, manual, subsets

# Keys in generation order (not sorted), payload sizes that fill several 2 kB shards.
KEYS = [7, 3, 11, 0, 5, 9, 2, 8, 1, 10, 4, 6]
CORRUPT = {5, 8}  # keys whose "decoding" fails


class _Toy(manual.ManualBuilder, skip_registration=True):
    """Twelve examples keyed by `KEYS`; `key`-th has label key % 3 and a 600-byte text."""

    name = "manual_toy"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "key": np.int32,
            "label": tfds.features.ClassLabel(num_classes=3),
            "image_id": tfds.features.Text(),
            "payload": tfds.features.Text(),
        }
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        def decode(key: int) -> str:
            if key in CORRUPT:
                raise downloads.CorruptFileError(f"item {key} cannot be decoded")
            return str(key) * 600

        items = self._skipping_corrupt("train", KEYS, lambda k: f"item{k}", decode, len(KEYS))
        for key, payload in items:
            yield key, {"key": key, "label": key % 3, "image_id": f"item{key}", "payload": payload}


class _Sorted(_Toy, skip_registration=True):
    name = "manual_toy_sorted"
    ORDER_BY_KEY = True


@dataclasses.dataclass(eq=False)
class _FlagConfig(tfds.core.BuilderConfig):
    big: bool = True


class _Configured(_Toy, skip_registration=True):
    """Two configs told apart by `big`; preparing needs `toy.txt` in the manual directory."""

    name = "manual_toy_configured"
    BUILDER_CONFIGS = [_FlagConfig(name="small", big=False), _FlagConfig(name="big")]
    CONFIG_FLAG = "big"
    PREPARE_COMMAND = "prepare-toy"
    PREPARE_INPUTS = "DIR holding toy.txt."

    def check_inputs(self, manual_dir: Path) -> None:
        if not (manual_dir / "toy.txt").is_file():
            raise downloads.MissingFilesError("toy.txt is missing", ["toy.txt"])


def _prepare(cls, data_dir: Path, **kwargs) -> manual.ManualBuilder:
    return cls.prepare(data_dir, str(data_dir), progress=False, **kwargs)


@pytest.fixture(autouse=True)
def small_shards_and_no_memory_buffer(monkeypatch):
    monkeypatch.setattr(manual, "SHARD_BYTES", 2000)
    # Past this, tfds's own writer would spill to disk through TensorFlow.
    monkeypatch.setattr(tfds_shuffle, "MAX_MEM_BUFFER_SIZE", 0)


def _keys(source) -> list[int]:
    return [int(r["key"]) for r in source]


def test_writer_orders_by_key_across_shards_and_records_skips(tmp_path):
    builder = _prepare(_Sorted, tmp_path, skip_corrupt=True)
    source = builder.as_data_source("train")
    assert _keys(source) == sorted(set(KEYS) - CORRUPT)
    info = builder.info.splits["train"]
    assert info.num_shards > 1 and info.num_examples == len(KEYS) - len(CORRUPT)
    assert sum(info.shard_lengths) == len(source)
    # Skips in generation order, kept with the dataset; no scratch or part file left.
    assert _Sorted(data_dir=str(tmp_path)).info.metadata["skipped_corrupt"] == ["item5", "item8"]
    names = [p.name for p in builder.data_path.iterdir()]
    assert not [n for n in names if ".part" in n or n.endswith(".unordered")]
    assert "tensorflow" not in sys.modules
    # Prepared: no-op, the inputs unchecked.
    again = _Sorted.prepare(tmp_path, str(tmp_path), progress=False)
    assert again.info.splits["train"].num_examples == len(source)


def test_opening_compares_each_shards_first_record(tmp_path):
    """The writer keeps each shard's first record in the metadata; opening compares it, which
    catches two shards of equal counts swapped (their counts pass); a dataset prepared before
    the record was kept opens on the counts alone."""
    builder = _prepare(_Sorted, tmp_path, skip_corrupt=True)
    info = builder.info.splits["train"]
    firsts = _Sorted(data_dir=str(tmp_path)).info.metadata[data_lib.FIRST_RECORDS]["train"]
    assert len(firsts) == info.num_shards > 2
    _Sorted.prepared(str(tmp_path))
    # Two shards of the same count, swapped: their footers agree with dataset_info.json.
    lengths = info.shard_lengths
    a, b = next((a, b) for a in range(len(lengths)) for b in range(a) if lengths[a] == lengths[b])
    paths = [Path(f.filename) for f in info.file_instructions]
    paths[a].rename(tmp_path / "held")
    paths[b].rename(paths[a])
    (tmp_path / "held").rename(paths[b])
    with pytest.raises(
        data_lib.DataFilesError,
        match=rf"the first example in .*{paths[b].name} of the train split is not the one "
        "prepared there: shards were swapped or reordered",
    ):
        _Sorted.prepared(str(tmp_path))
    # A dataset prepared before: no first records kept.
    metadata = builder.data_path / "metadata.json"
    kept = json.loads(metadata.read_text())
    metadata.write_text(json.dumps({k: v for k, v in kept.items() if k != data_lib.FIRST_RECORDS}))
    _Sorted.prepared(str(tmp_path))
    # Metadata that lists another number of shards than dataset_info.json.
    metadata.write_text(json.dumps({**kept, data_lib.FIRST_RECORDS: {"train": firsts[:1]}}))
    with pytest.raises(data_lib.DataFilesError, match=r"shards, where its metadata.json lists 1"):
        _Sorted.prepared(str(tmp_path))


@pytest.mark.parametrize(
    "text",
    [
        '{"first_records": {"train": ["0123',  # cut short
        "",
        "[1, 2]",
        '{"first_records": ["0123456789abcdef"]}',
        '{"first_records": {"test": ["0123456789abcdef"]}}',  # another split
        '{"first_records": {"train": [null, 3]}}',
    ],
)
def test_damaged_metadata_is_a_one_line_error(tmp_path, text):
    builder = _prepare(_Sorted, tmp_path, skip_corrupt=True)
    metadata = builder.data_path / "metadata.json"
    metadata.write_text(text)
    with pytest.raises(data_lib.DataFilesError) as error:
        _Sorted.prepared(str(tmp_path))
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{metadata} ")
    assert "the prepared files are damaged or were changed. Delete the dataset's" in message


def test_writer_keeps_generation_order_and_the_example_limit(tmp_path):
    builder = _Toy(data_dir=str(tmp_path), skip_corrupt=True)
    config = tfds.download.DownloadConfig(max_examples_per_split=6)
    builder.download_and_prepare(file_format=manual.FILE_FORMAT, download_config=config)
    kept = [k for k in KEYS if k not in CORRUPT]
    assert _keys(builder.as_data_source("train")) == kept[:6]


def test_corrupt_input_stops_the_build_unless_skipped(tmp_path):
    with pytest.raises(downloads.CorruptFileError, match="item 5 cannot be decoded"):
        _prepare(_Sorted, tmp_path)
    assert not _Sorted(data_dir=str(tmp_path)).is_prepared()


def test_duplicate_keys_are_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "KEYS", [1, 2, 1])
    with pytest.raises(ValueError, match="key 1"):
        _prepare(_Sorted, tmp_path)


class _BadLabel(_Toy, skip_registration=True):
    """Key 9's label is `BAD`, past the 3 classes."""

    name = "manual_toy_bad_label"
    BAD: int | None = 3

    def _generate_examples(self):
        for key, example in super()._generate_examples():
            yield key, {**example, "label": self.BAD if key == 9 else example["label"]}


class _NoLabel(_BadLabel, skip_registration=True):
    """Key 9's label is None, which tfds refuses with a TypeError."""

    name = "manual_toy_no_label"
    BAD = None


@pytest.mark.parametrize(
    "builder,why",
    [
        (_BadLabel, "Class label 3 greater than configured num_classes 3"),
        (_NoLabel, "'<=' not supported between instances of 'int' and 'NoneType'"),
    ],
)
def test_an_example_tfds_cannot_encode_is_named_in_one_line(tmp_path, builder, why):
    """tfds's message spans a line per feature and names no example: in a dataset of 10,000
    images, which one? Its TypeError (a None label) too, not only its ValueError."""
    with pytest.raises(ValueError) as err:
        _prepare(builder, tmp_path, skip_corrupt=True)
    assert str(err.value) == (
        'example 9 of the train split cannot be stored: In <ClassLabel> with name "label": '
        f"{why} Fix it in the inputs, then prepare again."
    )
    assert not builder.configured(str(tmp_path)).is_prepared()


def test_a_version_folder_without_its_dataset_info_is_named_not_taken_as_prepared(tmp_path):
    """A half-copied data dir: training said 'not prepared, run prepare'; prepare then saw the
    folder, built nothing and said it was ready; training said 'not prepared' again."""
    data_dir = tmp_path / "tfds"
    folder = data_dir / "manual_toy" / "1.0.0"
    folder.mkdir(parents=True)
    with pytest.raises(data_lib.DataFilesError) as err:
        _Toy.prepare(tmp_path, str(data_dir), progress=False)
    assert str(err.value) == (
        f"{folder} holds no prepared manual_toy (no dataset_info.json: a half-copied or damaged "
        f"folder); delete it and rerun: it is built again from {tmp_path}."
    )
    folder.rmdir()
    assert _Toy.prepare(tmp_path, str(data_dir), progress=False, skip_corrupt=True).is_prepared()


def test_a_dataset_prepared_at_another_version_is_named_in_the_not_prepared_error(tmp_path):
    """A camjax that changes what a dataset stores bumps its version (cub 1.0.1): a data dir
    prepared by an older one holds only the old version's folder, which the error names."""
    builder = _prepare(_Sorted, tmp_path, skip_corrupt=True)
    version = str(_Sorted.VERSION)
    folder = Path(builder.data_path)
    assert folder.name == version
    folder.rename(folder.with_name("0.9.0"))
    with pytest.raises(FileNotFoundError) as err:
        _Sorted.prepared(str(tmp_path))
    assert f"(it holds version 0.9.0 of it; this camjax reads {version}). Prepare it" in str(
        err.value
    )


def test_configs_picked_by_one_flag(tmp_path):
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(FileNotFoundError) as err:
        _Configured.prepared(data_dir)
    assert f"`prepare-toy --data_dir {data_dir}`, DIR holding toy.txt." in str(err.value)

    def prepare(flag: bool) -> manual.ManualBuilder:
        return _Configured.prepare(tmp_path, data_dir, big=flag, skip_corrupt=True, progress=False)

    # The inputs are checked before anything is written.
    with pytest.raises(downloads.MissingFilesError, match="toy.txt is missing"):
        prepare(False)
    assert not _Configured.configured(data_dir, big=False).is_prepared()
    (tmp_path / "toy.txt").touch()
    assert prepare(False).builder_config.name == "small"
    # None takes the True config when prepared, else the False one.
    assert _Configured.prepared(data_dir, big=None).builder_config.name == "small"
    with pytest.raises(FileNotFoundError, match="manual_toy_configured is not prepared"):
        _Configured.prepared(data_dir, big=True)
    assert prepare(True).builder_config.name == "big"
    assert _Configured.prepared(data_dir).builder_config.name == "big"
    assert _Configured.prepared(data_dir, big=False).builder_config.name == "small"


def _encoded(image: Image.Image, kind: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return buffer.getvalue()


def test_checked_image_keeps_rgb_and_grey_and_converts_the_rest_to_png():
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 13, 3), np.uint8))
    for mode, kind in (("RGB", "JPEG"), ("L", "JPEG"), ("RGB", "PNG"), ("L", "PNG")):
        data = _encoded(rgb.convert(mode), kind)
        assert downloads.checked_image("x", data) == (data, 9, 13)
    for mode, kind in (("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "PNG")):
        data = _encoded(rgb.convert(mode), kind)
        stored, height, width = downloads.checked_image("x", data)
        with Image.open(io.BytesIO(stored)) as image:
            assert (image.format, image.mode, height, width) == ("PNG", "RGB", 9, 13)
            expected = Image.open(io.BytesIO(data)).convert("RGB")
            np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))


def test_pngs_that_opencv_would_not_read_as_8_bit_rgb_are_stored_as_they_look():
    """tfds decodes with OpenCV (IMREAD_UNCHANGED): an RGB PNG with a transparent colour came
    out with 4 channels (training then failed in grain), and 16-bit samples as uint16 that tfds
    cut to their low byte (noise); 16-bit grey was clipped to white by Pillow's conversion. The
    stored image is what a viewer shows: 3 channels of each sample's high byte."""
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 2**16, (9, 13, 3), np.uint16)
    rgb16 = cv2.imencode(".png", deep[..., ::-1])[1].tobytes()  # OpenCV writes BGR
    grey16 = _encoded(Image.fromarray(deep[..., 0]), "PNG")
    rgb = Image.fromarray((deep >> 8).astype(np.uint8))
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", transparency=(0, 0, 0))
    for data, expected in (
        (rgb16, deep >> 8),
        (grey16, np.repeat(deep[..., :1] >> 8, 3, axis=2)),
        (buffer.getvalue(), np.asarray(rgb)),
    ):
        raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16 or raw.shape[2] == 4  # what tfds would have read
        stored, height, width = downloads.checked_image("x.png", data)
        decoded = cv2.imdecode(np.frombuffer(stored, np.uint8), cv2.IMREAD_UNCHANGED)
        assert (height, width, decoded.dtype) == (9, 13, np.uint8)
        np.testing.assert_array_equal(decoded[..., ::-1], expected)


def test_a_16_bit_grey_png_opened_as_32_bit_by_an_older_pillow_keeps_its_high_byte(monkeypatch):
    """Older Pillows open 16-bit grey PNGs as mode I, which convert('RGB') clips to white."""
    deep = np.random.default_rng(1).integers(0, 2**16, (9, 13), np.uint16)
    data = _encoded(Image.fromarray(deep), "PNG")
    open_image = Image.open

    def as_older_pillows(*args, **kwargs):
        image = open_image(*args, **kwargs)
        image.load()
        older = image.convert("I")
        older.format, older.info = image.format, image.info
        return older

    monkeypatch.setattr(downloads.Image, "open", as_older_pillows)
    stored, _, _ = downloads.checked_image("x.png", data)
    decoded = cv2.imdecode(np.frombuffer(stored, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded[..., 0], deep >> 8)


def test_damaged_images_are_named():
    jpeg = _encoded(Image.new("RGB", (40, 30), "red"), "JPEG")
    for data in (jpeg[: len(jpeg) // 2], b"not an image"):
        with pytest.raises(downloads.CorruptFileError, match=r"a/b\.jpg \(in c\.tar\) cannot be"):
            downloads.checked_image("a/b.jpg (in c.tar)", data)
        with pytest.raises(downloads.CorruptFileError, match="a/b.jpg cannot be decoded"):
            downloads.open_image("a/b.jpg", data)
    assert downloads.open_image("x", jpeg).size == (40, 30)


def test_holdout_per_class_partitions_a_split(tmp_path):
    builder = _prepare(_Sorted, tmp_path, skip_corrupt=True)
    held, rest = subsets.holdout_per_class(builder, "train", 2)
    keys = sorted(set(KEYS) - CORRUPT)
    # Reference: per label, the two ids of lowest SHA-256; both views in record order.
    expected = []
    for label in range(3):
        ids = sorted(
            (f"item{k}" for k in keys if k % 3 == label),
            key=lambda i: hashlib.sha256(i.encode()).digest(),
        )
        expected += [int(i[4:]) for i in ids[:2]]
    assert _keys(held) == sorted(expected)
    assert _keys(rest) == sorted(set(keys) - set(expected))
    # More per class nests the smaller draw.
    assert set(_keys(held)) <= set(_keys(subsets.holdout_per_class(builder, "train", 3)[0]))
    with pytest.raises(ValueError, match="at least 1"):
        subsets.holdout_per_class(builder, "train", 0)


def test_holdout_names_the_classes_held_out_whole(tmp_path, caplog):
    """Label 2 has two records (keys 11 and 2; 5 and 8 are corrupt): with 2 per class it is
    held out whole, which leaves training no example of it, and the log says so; labels 0
    and 1 (four records each) are not named."""
    builder = _prepare(_Sorted, tmp_path, skip_corrupt=True)
    with caplog.at_level("WARNING", logger=subsets.__name__):
        _, rest = subsets.holdout_per_class(builder, "train", 2)
    (message,) = [
        r.getMessage()
        for r in caplog.records
        if r.name == subsets.__name__ and r.levelname == "WARNING"
    ]
    assert "the classes (labels) [2] have 2 records or fewer" in message
    assert sorted(int(r["label"]) for r in rest) == [0, 0, 1, 1]
    caplog.clear()
    with caplog.at_level("WARNING", logger=subsets.__name__):
        subsets.holdout_per_class(builder, "train", 1)
    assert not [
        r for r in caplog.records if r.name == subsets.__name__ and r.levelname == "WARNING"
    ]


def test_split_view_is_a_random_access_source():
    source = [f"r{i}" for i in range(10)]
    view = subsets.SplitView(source, [1, 4, 9])
    assert len(view) == 3 and list(view) == ["r1", "r4", "r9"]
    assert view[-1] == "r9" and view.__getitems__([2, 0]) == ["r9", "r1"]
    with pytest.raises(IndexError):
        view[3]
    ds = grain.MapDataset.source(view).map(str.upper)
    assert [ds[i] for i in range(len(ds))] == ["R1", "R4", "R9"]


def test_spread_subset_covers_the_split():
    source = list(range(10))
    assert subsets.spread_subset(source, 0) is source
    assert list(subsets.spread_subset(source, 4)) == [0, 2, 5, 7]
    assert list(subsets.spread_subset(source, 10)) == source  # as many as there are: all
    # configs/tiny.py on a small dataset: the message named no config field.
    with pytest.raises(
        ValueError,
        match=r"^num_train is 11 but the train split holds 10 "
        r"examples; set config.data.num_train to at most 10 \(0: the whole",
    ):
        subsets.spread_subset(source, 11, "train")
    with pytest.raises(ValueError, match=r"^asked for 11 examples of a source of 10\.$"):
        subsets.spread_subset(source, 11)
    # A subset of a view indexes the underlying source directly.
    nested = subsets.spread_subset(subsets.SplitView(source, [1, 3, 5, 7, 9]), 2)
    assert nested.source is source and list(nested) == [1, 5]
    with pytest.raises(ValueError, match="11"):
        subsets.spread_subset(source, 11)


def test_incomplete_error_lists_the_first_names_and_counts_the_rest(tmp_path):
    missing = [f"member{i}" for i in range(downloads.MAX_LISTED + 3)]
    err = downloads.incomplete_error(tmp_path / "a.tgz", missing, "https://example.org")
    assert err.missing == missing and isinstance(err, FileNotFoundError)
    message = str(err)
    assert f"member{downloads.MAX_LISTED - 1}\n" in message
    assert f"member{downloads.MAX_LISTED}\n" not in message and "... and 3 more" in message
    assert "Download a.tgz again from https://example.org." in message


def _shard_records(builder, split: str) -> list[list[bytes]]:
    """The serialized records of each shard of `split`, read straight from its files."""
    shards = []
    for instruction in builder.info.splits[split].file_instructions:
        reader = array_record_module.ArrayRecordReader(instruction.filename)
        try:
            assert "group_size:1" in reader.writer_options_string()  # one record per chunk
            shards.append(list(reader.read_all()))
        finally:
            reader.close()
    return shards


def test_shards_close_once_they_reach_shard_bytes_and_bytes_are_counted(tmp_path):
    """Documented rule: a shard takes records until its records reach `SHARD_BYTES` (2000 here),
    then the next record opens a new shard; `num_bytes` is the size of all the records. The
    records are ~600 bytes, so each full shard holds several (not one per shard)."""
    builder = _prepare(_Sorted, tmp_path, skip_corrupt=True)
    shards = _shard_records(builder, "train")
    sizes = [[len(r) for r in shard] for shard in shards]
    assert len(sizes) > 1
    for shard in sizes[:-1]:
        assert sum(shard[:-1]) < 2000 <= sum(shard)
    assert 0 < sum(sizes[-1]) and len(sizes[0]) > 1
    info = builder.info.splits["train"]
    assert info.shard_lengths == [len(s) for s in sizes]
    assert info.num_bytes == sum(map(sum, sizes))


def test_key_order_holds_across_read_batches(tmp_path, monkeypatch):
    """The scratch file is read back `_READ_BATCH` records at a time: with 3 a batch, the ten
    kept records take four reads (3, 3, 3, 1) and the last, short one must not be lost."""
    monkeypatch.setattr(array_records, "_READ_BATCH", 3)
    builder = _prepare(_Sorted, tmp_path, skip_corrupt=True)
    assert _keys(builder.as_data_source("train")) == [0, 1, 2, 3, 4, 6, 7, 9, 10, 11]


def test_a_split_with_every_example_skipped_is_an_error(tmp_path, monkeypatch):
    """Skipping every example would leave a split of no shard: refused, nothing prepared."""
    monkeypatch.setattr(sys.modules[__name__], "CORRUPT", set(KEYS))
    with pytest.raises(downloads.CorruptFileError, match="No example of split train could be"):
        _prepare(_Toy, tmp_path, skip_corrupt=True)
    assert not _Toy(data_dir=str(tmp_path)).is_prepared()


def test_builder_writes_array_record_by_default(tmp_path):
    """A builder made and prepared the plain tfds way (no `file_format`) still writes
    ArrayRecord, which random access (`as_data_source`) needs."""
    builder = _Toy(data_dir=str(tmp_path), skip_corrupt=True)
    builder.download_and_prepare()
    assert builder.info.file_format.value == "array_record"
    assert _keys(builder.as_data_source("train")) == [k for k in KEYS if k not in CORRUPT]


class _Planned(_Toy, skip_registration=True):
    """Reads the manual directory's "index" (`_make_plan`) at the check and when writing."""

    name = "manual_toy_planned"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "toy"
    plans_made = 0

    def _make_plan(self, manual_dir: Path) -> str:
        type(self).plans_made += 1
        return str(manual_dir)

    def _split_generators(self, dl_manager):
        assert self.plan(dl_manager.manual_dir) == str(dl_manager.manual_dir)
        return super()._split_generators(dl_manager)


def test_the_plan_is_made_once_per_folder(tmp_path, monkeypatch):
    """Reading archive indexes is slow: `check_inputs` and the writing share one plan."""
    monkeypatch.setattr(_Planned, "plans_made", 0)
    _prepare(_Planned, tmp_path, skip_corrupt=True)
    assert _Planned.plans_made == 1


def test_an_unknown_config_argument_is_a_type_error(tmp_path):
    """A misspelt flag (`bgi` for `big`) must not be dropped silently."""
    for call in (
        lambda: _Configured.prepared(str(tmp_path), bgi=True),
        lambda: _Configured.prepare(tmp_path, str(tmp_path), bgi=True, progress=False),
        lambda: _Configured.configured(str(tmp_path), bgi=True),
    ):
        with pytest.raises(TypeError, match=r"manual_toy_configured takes no config argument"):
            call()
    # A builder without configs takes none.
    for call in (
        lambda: _Toy.prepared(str(tmp_path), masks=True),
        lambda: _Toy.prepare(tmp_path, str(tmp_path), masks=True, progress=False),
        lambda: _Toy.configured(str(tmp_path), masks=True),
    ):
        with pytest.raises(TypeError) as err:
            call()
        assert str(err.value) == "manual_toy takes no config argument ['masks']."


def test_prepare_without_a_flag_reuses_the_prepared_true_config(tmp_path):
    """`prepare` not told the flag takes True when that config is prepared, even when the
    flag input is not in the manual directory: a no-op, the False config left unprepared."""
    data_dir = str(tmp_path / "tfds")
    (tmp_path / "toy.txt").touch()
    _Configured.prepare(tmp_path, data_dir, big=True, skip_corrupt=True, progress=False)
    again = _Configured.prepare(tmp_path, data_dir, skip_corrupt=True, progress=False)
    assert again.builder_config.name == "big"
    assert not _Configured.configured(data_dir, big=False).is_prepared()


def test_losing_the_rename_race_returns_the_winners_copy(tmp_path, monkeypatch):
    """Another process prepares the dataset meanwhile, and this one's final rename fails
    (OSError): `prepare` returns a builder of the winner's copy, its splits loaded."""

    def lose_the_race(self, **kwargs):
        winner = _Toy(data_dir=self.data_dir_root, skip_corrupt=True)
        original(winner, **kwargs)
        raise OSError("rename failed: directory not empty")

    original = _Toy.download_and_prepare
    monkeypatch.setattr(_Toy, "download_and_prepare", lose_the_race)
    builder = _prepare(_Toy, tmp_path, skip_corrupt=True)
    assert builder.info.splits["train"].num_examples == len(KEYS) - len(CORRUPT)


def test_an_oserror_without_a_prepared_copy_propagates(tmp_path, monkeypatch):
    def fail(self, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(_Toy, "download_and_prepare", fail)
    with pytest.raises(OSError, match="disk full"):
        _prepare(_Toy, tmp_path, skip_corrupt=True)


def test_progress_shows_a_bar_per_split(tmp_path, capsys):
    """The bar counts every item read, the two skipped ones too (12 of 12), and the skips."""
    _Toy.prepare(tmp_path, str(tmp_path), skip_corrupt=True, progress=True)
    err = capsys.readouterr().err
    assert "manual_toy train" in err and "12/12" in err and "skipped=2" in err
    _Sorted.prepare(tmp_path, str(tmp_path), skip_corrupt=True, progress=False)
    assert "manual_toy_sorted train" not in capsys.readouterr().err


def test_prepare_ends_with_one_warning_naming_every_skip(tmp_path, caplog):
    """After the per-item warnings, one summary lists the skipped items in generation order."""
    with caplog.at_level("WARNING", logger=manual.__name__):
        _prepare(_Toy, tmp_path, skip_corrupt=True)
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipped")]
    assert summaries == ["Skipped 2 corrupt image(s): item5, item8"]
