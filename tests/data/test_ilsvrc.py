"""Tests for the `ilsvrc2012_loc` builder on tiny archives with the official layouts."""

import csv
import hashlib
import io
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from absl import app, flags
from absl.testing import flagsaver
from PIL import Image
from tensorflow_datasets.core import shuffle as tfds_shuffle

import camjax.data
from camjax import experiment
from camjax.data import downloads, ilsvrc, ilsvrc_annotations, manual, pipeline, prepare
from configs import vgg16_gap_imagenet

# Preparing and reading must never open a connection.
pytestmark = pytest.mark.usefixtures("no_network")

# Listed unsorted on purpose: class indices follow the sorted synsets.
SYNSETS = ["n02105855", "n01440764", "n01443537"]
CLASSES = sorted(SYNSETS)

# Validation images: synset, (width, height), grey?, boxes as the sources give them
# (0-based, inclusive xmin ymin xmax ymax). They cover the image borders, a one-pixel box
# and an image with a dozen boxes.
VAL = {
    "ILSVRC2012_val_00000001.JPEG": ("n01443537", (40, 30), False, [(3, 4, 20, 25)]),
    "ILSVRC2012_val_00000002.JPEG": (
        "n01440764",
        (32, 48),
        False,
        [(0, 0, 31, 47)] + [(i, 2 * i, i + 3, 2 * i + 5) for i in range(11)],
    ),
    "ILSVRC2012_val_00000003.JPEG": ("n02105855", (50, 20), False, [(0, 5, 49, 19)]),
    "ILSVRC2012_val_00000004.JPEG": ("n01440764", (24, 24), True, [(2, 2, 9, 9), (10, 1, 23, 20)]),
    "ILSVRC2012_val_00000005.JPEG": ("n02105855", (25, 35), False, [(12, 17, 12, 17)]),
}
# Archive order differs from name order, as in the official validation tar.
VAL_TAR_ORDER = [3, 1, 5, 2, 4]

# Training images per class: name -> kind ("rgb", "grey", "cmyk": a CMYK JPEG as in the
# official train set, "png": a PNG named .JPEG).
TRAIN = {
    "n02105855": {"n02105855_2933.JPEG": "png", "n02105855_17.JPEG": "rgb"},
    "n01440764": {"n01440764_10026.JPEG": "rgb", "n01440764_1309.JPEG": "cmyk"},
    "n01443537": {"n01443537_7.JPEG": "grey", "n01443537_8.JPEG": "rgb", "n01443537_9.JPEG": "rgb"},
}


def _pixels(seed: int, width: int, height: int, grey: bool = False) -> np.ndarray:
    """Smooth colours plus noise, so JPEG round trips stay close."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256])
    image = np.clip(base.transpose(1, 2, 0) + rng.integers(-8, 9, (height, width, 3)), 0, 255)
    image = image.astype(np.uint8)
    return image[..., 0] if grey else image


def _encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _train_image(kind: str, seed: int) -> tuple[bytes, np.ndarray]:
    """(file bytes, the RGB pixels they were made from)."""
    rgb = _pixels(seed, 20 + seed, 16)
    if kind == "grey":
        grey = rgb[..., 0]
        return _encode(Image.fromarray(grey)), np.repeat(grey[..., None], 3, -1)
    if kind == "cmyk":
        return _encode(Image.fromarray(rgb).convert("CMYK")), rgb
    return _encode(Image.fromarray(rgb), "PNG" if kind == "png" else "JPEG"), rgb


def tar_bytes(members: list[tuple[str, bytes]], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _xml(name: str, synset: str, size: tuple[int, int], boxes) -> bytes:
    objects = "".join(
        f"<object><name>{synset}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
        f"<ymax>{y1}</ymax></bndbox></object>"
        for x0, y0, x1, y1 in boxes
    )
    return (
        f"<annotation><folder>val</folder><filename>{name[:-5]}</filename><source><database>"
        f"ILSVRC_2012</database></source><size><width>{size[0]}</width><height>{size[1]}"
        f"</height><depth>3</depth></size><segmented>0</segmented>{objects}</annotation>"
    ).encode()


def val_images() -> dict[str, bytes]:
    images = {}
    for seed, (name, (_, (width, height), grey, _)) in enumerate(VAL.items()):
        images[name] = _encode(Image.fromarray(_pixels(100 + seed, width, height, grey)))
    return images


def write_manual_dir(
    path: Path,
    *,
    train: bool = False,
    boxes: str = "xml",
    mapping: bool = False,
    images: dict[str, bytes] | None = None,
    drop_classes: tuple[str, ...] = (),
    val_prefix: str = "",
) -> Path:
    """Writes the inputs in their official layouts; `images` replaces the validation images.

    `val_prefix` goes before the validation tar's member names (`./` when made with `tar -C`).
    """
    path.mkdir(parents=True, exist_ok=True)
    images = val_images() if images is None else images
    names = list(VAL)
    ordered = [names[i - 1] for i in VAL_TAR_ORDER]
    val = [(val_prefix + name, images[name]) for name in ordered if name in images]
    (path / ilsvrc.VAL_ARCHIVE).write_bytes(tar_bytes(val))
    if boxes == "xml":
        xmls = [(f"val/{n[:-5]}.xml", _xml(n, s, size, b)) for n, (s, size, _, b) in VAL.items()]
        (path / ilsvrc.BOXES_XML).write_bytes(tar_bytes(xmls, "w:gz"))
    else:
        with open(path / ilsvrc.BOXES_CSV, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["ImageId", "PredictionString"])
            for name in reversed(names):
                synset, _, _, b = VAL[name]
                tokens = " ".join(f"{synset} {x0} {y0} {x1} {y1}" for x0, y0, x1, y1 in b)
                writer.writerow([name[:-5], tokens + " "])
    if mapping:
        lines = [f"{s} description of {s}" for s in SYNSETS]
        (path / ilsvrc.SYNSET_MAPPING).write_text("\n".join(lines) + "\n")
    if train:
        class_tars = []
        for synset in reversed(CLASSES):
            if synset in drop_classes:
                continue
            files = [
                (n, _train_image(kind, i)[0]) for i, (n, kind) in enumerate(TRAIN[synset].items())
            ]
            class_tars.append((f"{synset}.tar", tar_bytes(files)))
        (path / ilsvrc.TRAIN_ARCHIVE).write_bytes(tar_bytes(class_tars))
    return path


def _records(source) -> list[dict]:
    return [source[i] for i in range(len(source))]


def _id(record) -> str:
    image_id = record["image_id"]
    return image_id.decode() if isinstance(image_id, bytes) else image_id


@pytest.fixture(scope="module")
def val_only(tmp_path_factory):
    """Config `validation` from the XML archive, written in several small shards."""
    root = tmp_path_factory.mktemp("val_xml")
    manual_dir = write_manual_dir(root / "manual")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manual, "SHARD_BYTES", 2000)
        # Past this, tfds's own writer would spill to disk through TensorFlow.
        patch.setattr(tfds_shuffle, "MAX_MEM_BUFFER_SIZE", 0)
        builder = ilsvrc.Ilsvrc2012Loc.prepare(str(manual_dir), str(root / "tfds"), progress=False)
    return builder, ilsvrc.Ilsvrc2012Loc.data_sources(str(root / "tfds"))


def test_validation_records_in_name_order_with_labels_and_sizes(val_only):
    builder, sources = val_only
    assert builder.builder_config.name == "validation"
    assert sorted(sources) == ["validation"]
    records = _records(sources["validation"])
    assert [_id(r) for r in records] == sorted(VAL)
    names = builder.info.features["label"].names
    assert names == CLASSES
    for record in records:
        synset, (width, height), _, _ = VAL[_id(record)]
        assert names[record["label"]] == synset
        assert record["image"].shape == (height, width, 3)
        assert record["image"].dtype == np.uint8
        assert (record["height"], record["width"]) == (height, width)
    assert builder.info.splits["validation"].num_shards > 1
    assert builder.info.metadata["skipped_corrupt"] == []
    # Building and reading must work without TensorFlow.
    assert "tensorflow" not in sys.modules


def test_prepared_dataset_is_reused_and_reloaded_whole(val_only):
    builder, _ = val_only
    data_dir = builder.data_dir_root
    again = ilsvrc.Ilsvrc2012Loc.prepare(
        "/nonexistent", data_dir, progress=False
    )  # no input needed now
    assert again.data_dir == builder.data_dir
    reloaded = ilsvrc.Ilsvrc2012Loc.configured(data_dir, train=False)
    assert reloaded.info.features["label"].names == CLASSES
    assert reloaded.info.splits["validation"].num_examples == len(VAL)


def test_validation_boxes_are_exclusive_pixel_boxes(val_only):
    _, sources = val_only
    for record in _records(sources["validation"]):
        _, (width, height), _, boxes = VAL[_id(record)]
        got, count = pipeline.pixel_boxes(record["objects"]["bbox"], height, width, 16)
        expected = np.array([(x0, y0, x1 + 1, y1 + 1) for x0, y0, x1, y1 in boxes], np.float32)
        assert count == len(boxes)
        np.testing.assert_allclose(got[:count], expected, atol=1e-3)
        np.testing.assert_array_equal(np.rint(got[:count]), expected)


def test_validation_images_are_the_original_bytes(val_only):
    builder, sources = val_only
    decode = builder.info.features["image"].decode_example_np
    originals = val_images()
    for record in _records(sources["validation"]):
        expected = decode(originals[_id(record)])
        np.testing.assert_array_equal(record["image"], expected)
        if VAL[_id(record)][2]:  # a grey JPEG comes back with 3 equal channels
            assert np.all(record["image"] == record["image"][..., :1])


def test_csv_form_and_synset_mapping_give_the_same_records(val_only, tmp_path):
    _, sources = val_only
    # Kaggle's form: the CSV, the synset list, a validation tar made from its folder.
    manual_dir = write_manual_dir(tmp_path / "manual", boxes="csv", mapping=True, val_prefix="./")
    builder = ilsvrc.Ilsvrc2012Loc.prepare(str(manual_dir), str(tmp_path / "tfds"), progress=False)
    assert builder.info.features["label"].names == CLASSES
    from_csv = _records(ilsvrc.Ilsvrc2012Loc.data_sources(str(tmp_path / "tfds"))["validation"])
    from_xml = _records(sources["validation"])
    assert [_id(r) for r in from_csv] == [_id(r) for r in from_xml]
    for a, b in zip(from_csv, from_xml, strict=True):
        assert a["label"] == b["label"]
        np.testing.assert_array_equal(a["objects"]["bbox"], b["objects"]["bbox"])
        np.testing.assert_array_equal(a["image"], b["image"])


def test_full_config_streams_the_nested_train_tar(tmp_path):
    manual_dir = write_manual_dir(tmp_path / "manual", train=True)
    data_dir = str(tmp_path / "tfds")
    builder = ilsvrc.Ilsvrc2012Loc.prepare(
        str(manual_dir), data_dir, progress=False
    )  # picks `full`
    assert builder.builder_config.name == "full"
    # Without LOC_synset_mapping.txt the classes are the class tars' names, sorted.
    assert builder.info.features["label"].names == CLASSES
    sources = ilsvrc.Ilsvrc2012Loc.data_sources(data_dir)
    assert sorted(sources) == ["train", "validation"]
    assert len(sources["validation"]) == len(VAL)
    # The WSOL splits keep the training images as they are.
    wsol = camjax.data.load_data_sources("ilsvrc2012_loc", 224, data_dir)
    assert sorted(wsol) == ["test", "train", "validation"]
    assert [_id(r) for r in wsol["train"]] == [_id(r) for r in sources["train"]]
    decode = builder.info.features["image"].decode_example_np
    records = {_id(r): r for r in _records(sources["train"])}
    assert sorted(records) == sorted(n for files in TRAIN.values() for n in files)
    labels = [r["label"] for r in _records(sources["train"])]
    assert labels == sorted(labels)  # class by class in class-index order
    for synset, files in TRAIN.items():
        for seed, (name, kind) in enumerate(files.items()):
            record = records[name]
            data, rgb = _train_image(kind, seed)
            assert record["label"] == CLASSES.index(synset)
            assert record["image"].shape == rgb.shape
            assert (record["height"], record["width"]) == rgb.shape[:2]
            assert len(record["objects"]["bbox"]) == 0
            if kind == "cmyk":
                assert np.asarray(Image.open(io.BytesIO(data))).shape[-1] == 4  # as PIL reads it
                # Stored as Pillow's RGB conversion, losslessly; near the pixels it encodes.
                expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                assert np.abs(record["image"].astype(int) - rgb).mean() < 4
            else:  # the file's own bytes (a PNG named .JPEG included)
                expected = decode(data)
            np.testing.assert_array_equal(record["image"], expected)
            if kind == "png":
                np.testing.assert_array_equal(record["image"], rgb)


def test_missing_files_are_listed_before_any_work(tmp_path):
    data_dir = tmp_path / "tfds"
    with pytest.raises(downloads.MissingFilesError) as err:
        ilsvrc.Ilsvrc2012Loc.prepare(str(tmp_path), str(data_dir), progress=False, train=True)
    either = f"{ilsvrc.BOXES_XML} or {ilsvrc.BOXES_CSV}"
    assert err.value.missing == [ilsvrc.TRAIN_ARCHIVE, ilsvrc.VAL_ARCHIVE, either]
    message = str(err.value)
    assert "image-net.org" in message and "kaggle.com" in message and "train=False" in message
    assert not data_dir.exists()
    (tmp_path / ilsvrc.BOXES_CSV).write_text("ImageId,PredictionString\n")
    with pytest.raises(downloads.MissingFilesError) as err:
        ilsvrc.Ilsvrc2012Loc.prepare(
            str(tmp_path), str(data_dir), progress=False
        )  # picks `validation`
    assert err.value.missing == [ilsvrc.VAL_ARCHIVE]


def test_images_absent_from_the_validation_tar_are_listed(tmp_path):
    images = val_images()
    del images["ILSVRC2012_val_00000004.JPEG"]
    manual_dir = write_manual_dir(tmp_path / "manual", images=images)
    with pytest.raises(downloads.MissingFilesError) as err:
        ilsvrc.Ilsvrc2012Loc.prepare(str(manual_dir), str(tmp_path / "tfds"), progress=False)
    assert err.value.missing == ["ILSVRC2012_val_00000004.JPEG"]
    assert ilsvrc.VAL_ARCHIVE in str(err.value) and "incomplete" in str(err.value)


def test_truncated_validation_tar_is_reported_incomplete(tmp_path):
    manual_dir = write_manual_dir(tmp_path / "manual")
    tar = manual_dir / ilsvrc.VAL_ARCHIVE
    data = tar.read_bytes()
    with tarfile.open(tar) as archive:
        last = archive.getmembers()[-1]
    tar.write_bytes(data[: last.offset_data + 10])  # cut inside the last image
    with pytest.raises(downloads.MissingFilesError) as err:
        ilsvrc.Ilsvrc2012Loc.prepare(str(manual_dir), str(tmp_path / "tfds"), progress=False)
    assert err.value.missing == [Path(last.name).name]


def test_class_tar_missing_from_the_train_tar_is_listed(tmp_path):
    manual_dir = write_manual_dir(tmp_path / "manual", train=True, drop_classes=("n02105855",))
    with pytest.raises(downloads.MissingFilesError) as err:
        ilsvrc.Ilsvrc2012Loc.prepare(str(manual_dir), str(tmp_path / "tfds"), progress=False)
    assert err.value.missing == ["n02105855.tar"]


@pytest.fixture
def corrupt_manual_dir(tmp_path) -> Path:
    images = val_images()
    name = "ILSVRC2012_val_00000004.JPEG"
    images[name] = images[name][: len(images[name]) // 2]  # a truncated JPEG
    return write_manual_dir(tmp_path / "manual", images=images)


def test_corrupt_image_error_names_the_file(corrupt_manual_dir, tmp_path):
    with pytest.raises(downloads.CorruptFileError, match="ILSVRC2012_val_00000004.JPEG"):
        ilsvrc.Ilsvrc2012Loc.prepare(
            str(corrupt_manual_dir), str(tmp_path / "tfds"), progress=False
        )


def test_skip_corrupt_skips_counts_and_records(corrupt_manual_dir, tmp_path):
    data_dir = str(tmp_path / "tfds")
    builder = ilsvrc.Ilsvrc2012Loc.prepare(
        str(corrupt_manual_dir), data_dir, skip_corrupt=True, progress=False
    )
    assert builder.info.metadata["skipped_corrupt"] == ["ILSVRC2012_val_00000004.JPEG"]
    source = ilsvrc.Ilsvrc2012Loc.data_sources(data_dir)["validation"]
    assert len(source) == len(VAL) - 1
    assert "ILSVRC2012_val_00000004.JPEG" not in [_id(r) for r in _records(source)]
    # The skip list survives a reload from disk.
    assert ilsvrc.Ilsvrc2012Loc.configured(data_dir, train=False).info.metadata[
        "skipped_corrupt"
    ] == ["ILSVRC2012_val_00000004.JPEG"]


def test_annotations_of_two_synsets_for_one_image_are_rejected(tmp_path):
    path = tmp_path / ilsvrc.BOXES_CSV
    path.write_text(
        "ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4 n01443537 1 2 3 4\n"
    )
    with pytest.raises(downloads.CorruptFileError, match="one synset"):
        ilsvrc_annotations.read_csv(path)


def test_load_data_sources_tells_how_to_prepare(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="python -m camjax.data.prepare ilsvrc --manual_dir"
    ):
        ilsvrc.Ilsvrc2012Loc.data_sources(str(tmp_path))


def test_normalized_boxes_give_back_the_pixels():
    rng = np.random.default_rng(0)
    for _ in range(200):
        width, height = rng.integers(1, 4000, size=2)
        x = np.sort(rng.integers(0, width, size=(8, 2)), axis=1)
        y = np.sort(rng.integers(0, height, size=(8, 2)), axis=1)
        inclusive = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], -1).astype(np.float64)
        annotation = ilsvrc_annotations.Annotation("n01440764", inclusive, None)
        bbox = ilsvrc_annotations.normalized_boxes("x", annotation, int(height), int(width))
        assert bbox.dtype == np.float32 and np.all((bbox >= 0) & (bbox <= 1))
        got, _ = pipeline.pixel_boxes(bbox, int(height), int(width), 8)
        np.testing.assert_allclose(got, inclusive + [0, 0, 1, 1], atol=1e-3)


def test_a_box_past_the_image_edge_is_clipped_and_one_starting_there_refused(caplog):
    """Some official boxes end on or past the image's last pixel (the XML's size and the JPEG's
    differ): clipped to the image, with a warning; a box that starts outside is corrupt."""
    past = ilsvrc_annotations.Annotation("n01440764", np.array([[0.0, 0.0, 10.0, 3.0]]), None)
    bbox = ilsvrc_annotations.normalized_boxes("x", past, 8, 10)
    np.testing.assert_array_equal(bbox, [[0.0, 0.0, 0.5, 1.0]])  # (ymin, xmin, ymax, xmax)
    assert "ends outside its 10x8 image; clipped" in caplog.text
    outside = ilsvrc_annotations.Annotation("n01440764", np.array([[10.0, 0.0, 12.0, 3.0]]), None)
    with pytest.raises(downloads.CorruptFileError, match="lies outside its 10x8 image"):
        ilsvrc_annotations.normalized_boxes("x", outside, 8, 10)


@pytest.mark.parametrize("box", [[-1, 0, 3, 3], [0, -1, 3, 3], [4, 0, 3, 3], [0, 4, 3, 3]])
def test_a_box_left_of_or_above_the_image_or_reversed_is_corrupt(box):
    with pytest.raises(downloads.CorruptFileError, match="invalid box among"):
        ilsvrc_annotations._annotation("w.xml", ["n01440764"], [box], None)


def test_an_evaluation_only_dataset_opens_for_evaluation_and_not_for_training(val_only):
    """Config `validation` has no train split: evaluation reads its validation and test splits;
    training is refused in one line naming the missing split."""
    builder, _ = val_only
    config = vgg16_gap_imagenet.get_config()
    config.data.data_dir, config.data.validation_per_class = str(builder.data_dir_root), 1
    sources = experiment.data_sources(config, experiment.EVALUATION_SPLITS)
    assert (len(sources["validation"]), len(sources["test"])) == (
        len(CLASSES),
        len(VAL) - len(CLASSES),
    )
    with pytest.raises(ValueError) as error:
        experiment.data_sources(config)
    assert str(error.value) == (
        "config.data.train_split is 'train', a split ilsvrc2012_loc does not have; set it to "
        "one of its splits: test, validation."
    )


def test_wsol_validation_and_test_partition_the_official_validation(val_only):
    builder, sources = val_only
    data_dir = str(builder.data_dir_root)
    wsol = camjax.data.load_data_sources(
        "ilsvrc2012_loc", 224, data_dir, {"validation_per_class": 1}
    )
    assert sorted(wsol) == ["test", "validation"]  # config `validation`: no train split
    ids = {split: [_id(r) for r in wsol[split]] for split in wsol}

    # Reference: per class the file whose name hashes lowest; both views in name order.
    def digest(name: str) -> bytes:
        return hashlib.sha256(name.encode()).digest()

    expected = sorted(min((n for n in VAL if VAL[n][0] == s), key=digest) for s in CLASSES)
    assert ids["validation"] == expected
    assert ids["test"] == sorted(set(VAL) - set(expected))
    official = {_id(r): r for r in _records(sources["validation"])}
    for record in _records(wsol["validation"]) + _records(wsol["test"]):
        original = official[_id(record)]
        np.testing.assert_array_equal(record["objects"]["bbox"], original["objects"]["bbox"])
        np.testing.assert_array_equal(record["image"], original["image"])
    # The default is the reference's 10 per class; 2 per class leave no fake image for test.
    assert ilsvrc.VALIDATION_PER_CLASS == 10
    assert len(ilsvrc.Ilsvrc2012Loc.wsol_sources(data_dir, validation_per_class=2)["test"]) == 0
    with pytest.raises(FileNotFoundError, match="python -m camjax.data.prepare ilsvrc"):
        camjax.data.load_data_sources("ilsvrc2012_loc", 224, data_dir + "/nothing")


def test_manual_files_prefer_the_xml_boxes_and_add_the_mapping_when_there(tmp_path):
    """Both annotation forms present: the XML archive is used; the optional synset list is
    returned when there; the `train=False` hint only when the training tar is asked for."""
    manual_dir = write_manual_dir(tmp_path / "manual", mapping=True)
    (manual_dir / ilsvrc.BOXES_CSV).write_text("ImageId,PredictionString\n")
    paths = ilsvrc.manual_files(manual_dir, train=False)
    names = [ilsvrc.VAL_ARCHIVE, ilsvrc.BOXES_XML, ilsvrc.SYNSET_MAPPING]
    assert paths == {name: manual_dir / name for name in names}
    with pytest.raises(downloads.MissingFilesError) as err:
        ilsvrc.manual_files(tmp_path / "empty", train=False)
    assert "train=False" not in str(err.value)


def test_synset_mapping_sets_the_classes_and_must_cover_the_other_inputs(tmp_path):
    """Classes are the sorted synsets of LOC_synset_mapping.txt, even one without images; a
    synset of the annotations or the training tar that it does not list is refused, and a
    listed synset without a class tar is missing from the training tar."""
    manual_dir = write_manual_dir(tmp_path / "manual")
    mapping = manual_dir / ilsvrc.SYNSET_MAPPING
    mapping.write_text("".join(f"{s} x\n" for s in ["n09999999", *SYNSETS]))
    assert ilsvrc._make_plan(manual_dir, train=False).classes == [*CLASSES, "n09999999"]

    mapping.write_text("n01440764 x\nn01443537 x\n")
    with pytest.raises(
        downloads.CorruptFileError, match=r"does not list the synsets \['n02105855'\]"
    ):
        ilsvrc._make_plan(manual_dir, train=False)

    mapping.write_text("".join(f"{s} x\n" for s in SYNSETS))
    train = manual_dir / ilsvrc.TRAIN_ARCHIVE
    train.write_bytes(tar_bytes([(f"{s}.tar", tar_bytes([])) for s in [*CLASSES, "n09999999"]]))
    with pytest.raises(
        downloads.CorruptFileError, match=r"does not list the synsets \['n09999999'\]"
    ):
        ilsvrc._make_plan(manual_dir, train=True)

    train.write_bytes(tar_bytes([(f"{s}.tar", tar_bytes([])) for s in CLASSES[:2]]))
    with pytest.raises(downloads.MissingFilesError) as err:
        ilsvrc._make_plan(manual_dir, train=True)
    assert err.value.missing == ["n02105855.tar"]


def test_validation_images_without_annotations_are_listed(tmp_path):
    manual_dir = write_manual_dir(tmp_path / "manual")
    extra = "ILSVRC2012_val_00000006.JPEG"
    members = [*val_images().items(), (extra, val_images()["ILSVRC2012_val_00000001.JPEG"])]
    (manual_dir / ilsvrc.VAL_ARCHIVE).write_bytes(tar_bytes(members))
    with pytest.raises(downloads.MissingFilesError) as err:
        ilsvrc.Ilsvrc2012Loc.prepare(str(manual_dir), str(tmp_path / "tfds"), progress=False)
    assert err.value.missing == [extra]
    message = str(err.value)
    assert f"{ilsvrc.BOXES_XML} is incomplete" in message and "image-net.org" in message


def test_validation_tar_made_with_tar_c_of_the_folder_is_read(tmp_path):
    """`tar -cf ILSVRC2012_img_val.tar -C val .` also stores the folder itself as `./`."""
    manual_dir = write_manual_dir(tmp_path / "manual")
    folder = tmp_path / "val"
    folder.mkdir()
    for name, data in val_images().items():
        (folder / name).write_bytes(data)
    with tarfile.open(manual_dir / ilsvrc.VAL_ARCHIVE, "w") as tar:
        tar.add(folder, arcname=".")
    with tarfile.open(manual_dir / ilsvrc.VAL_ARCHIVE) as tar:
        assert tar.getmembers()[0].isdir()
    plan = ilsvrc._make_plan(manual_dir, train=False)
    assert [m.name for m in plan.val_members] == [f"./{name}" for name in sorted(VAL)]


def test_unreadable_validation_tar_is_corrupt_and_names_its_source(tmp_path):
    manual_dir = write_manual_dir(tmp_path / "manual")
    (manual_dir / ilsvrc.VAL_ARCHIVE).write_bytes(b"not a tar archive" * 100)
    with pytest.raises(downloads.CorruptFileError) as err:
        ilsvrc.Ilsvrc2012Loc.prepare(str(manual_dir), str(tmp_path / "tfds"), progress=False)
    message = str(err.value)
    assert f"{ilsvrc.VAL_ARCHIVE} is not a readable tar archive" in message
    assert "image-net.org" in message


def test_class_tars_are_found_by_file_name_and_other_members_ignored(tmp_path, caplog):
    path = tmp_path / ilsvrc.TRAIN_ARCHIVE
    names = ["n02105855.tar", "README.txt", "./n01443537.tar", "n01440764.tar", "n01440764"]
    path.write_bytes(tar_bytes([(name, b"") for name in names]))
    class_tars = ilsvrc._class_tars(path)
    assert [m.name for m in class_tars] == ["n01440764.tar", "./n01443537.tar", "n02105855.tar"]
    assert "Ignoring README.txt" in caplog.text and "Ignoring n01440764 " in caplog.text


def test_reference_ids_name_the_split_and_file_of_official_images():
    reference_id = ilsvrc.Ilsvrc2012Loc.reference_id
    val = "ILSVRC2012_val_00000001.JPEG"
    assert reference_id(f"val/{val}") == ("validation", val)
    train = "n01440764_10026.JPEG"
    assert reference_id(f"train/n01440764/{train}") == ("train", train)
    for other in ("val2/0/0.jpeg", "test/x.JPEG", "train/x.JPEG", f"val/n01440764/{val}"):
        assert reference_id(other) is None


def test_cli_reports_skipped_images_and_corrupt_inputs(corrupt_manual_dir, tmp_path, capsys):
    """`prepare_and_report` passes skip_corrupt on and lists what it skipped; a corrupt image
    without it is an error line and exit status 1, not a traceback."""
    manual_dir = str(corrupt_manual_dir)
    name = "ILSVRC2012_val_00000004.JPEG"
    assert prepare.prepare_and_report("ilsvrc", manual_dir, str(tmp_path / "a"), True) == 0
    out = capsys.readouterr().out
    assert f"validation {len(VAL) - 1} examples" in out
    assert f"Skipped 1 corrupt example(s): {name}" in out
    assert prepare.prepare_and_report("ilsvrc", manual_dir, str(tmp_path / "b")) == 1
    err = capsys.readouterr().err
    assert f"error: {name}" in err and "Traceback" not in err


def test_cli_without_manual_dir_or_with_an_unpreparable_dataset_is_a_usage_error():
    was_parsed = flags.FLAGS.is_parsed()
    with flagsaver.flagsaver():
        flags.FLAGS(["prepare"])
        try:
            datasets = "cub_200_2011,cub,ilsvrc2012_loc,ilsvrc,openimages30k_wsol,openimages"
            with pytest.raises(app.UsageError, match=f"{{{datasets}}} --manual_dir DIR"):
                prepare.main(["prepare", "ilsvrc"])
            flags.FLAGS.manual_dir = "/nonexistent"
            with pytest.raises(app.UsageError, match="--manual_dir DIR"):
                prepare.main(["prepare", "wsol_shapes"])
        finally:
            if not was_parsed:
                flags.FLAGS.unparse_flags()


def test_a_class_tar_without_validation_images_is_refused_without_the_mapping(tmp_path):
    """Without LOC_synset_mapping.txt the classes are the class tars' names; a class tar whose
    synset no validation image has (here one sorting first) would shift every class index,
    and is refused; a mapping that lists it keeps it as a class."""
    manual_dir = write_manual_dir(tmp_path / "manual")
    synsets = ["n01440000", *CLASSES]
    members = [(f"{s}.tar", tar_bytes([])) for s in synsets]
    (manual_dir / ilsvrc.TRAIN_ARCHIVE).write_bytes(tar_bytes(members))
    with pytest.raises(
        downloads.CorruptFileError,
        match=r"class tars \['n01440000'\], whose synsets no validation image has; remove them, "
        r"or add LOC_synset_mapping.txt",
    ):
        ilsvrc._make_plan(manual_dir, train=True)
    (manual_dir / ilsvrc.SYNSET_MAPPING).write_text("".join(f"{s} x\n" for s in synsets))
    assert ilsvrc._make_plan(manual_dir, train=True).classes == synsets
