"""Tests for the `openimages30k_wsol` builder on tiny zips and metadata in the reference layout.

The fakes follow clovaai/wsolevaluation: `OpenImages_images.zip` with `<split>/<class>/<id>.jpg`,
`OpenImages_annotations.zip` with `<split>/<class>/<id>_m<class>_<hex>.png` instance masks and
`<id>_ignore.png` ignore masks (1-bit, RGB and RGBA PNGs, as in the reference's test data), and
`metadata/OpenImages/{train,val,test}` written with `wsol_io.write_metadata`.
"""

import io
import logging
import re
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core import shuffle as tfds_shuffle

import camjax.data
from camjax.data import downloads, manual, openimages, pipeline, prepare
from camjax.evaluation import protocol
from camjax.localization import wsol_io

# Preparing and reading must never open a connection.
pytestmark = pytest.mark.usefixtures("no_network")

CLASSES = ["01226z", "0bt_c3", "0by6g"]
EVAL_SIZE = 224

# folder -> (stem, label, (width, height), mode); val and test images also have masks (MASKS).
IMAGES = {
    "train": [
        ("ed9d2feb6d44cff3", 0, (30, 20), "RGB"),
        ("0a9b7df4d832baf7", 1, (25, 25), "L"),
        ("d762413ad905af7f", 2, (20, 30), "RGB"),
        ("92934379924a02d0", 0, (16, 12), "CMYK"),
    ],
    "val": [
        ("32fdab44f6e415f1", 0, (32, 24), "RGB"),
        ("1cd9ac0169ec7df0", 1, (40, 30), "RGB"),
        ("490365f63135f3e0", 2, (28, 36), "RGB"),
    ],
    "test": [
        ("7af766bd43da900b", 2, (30, 30), "RGB"),
        ("0a51958fcd523ae4", 0, (24, 32), "L"),
        ("b4d953e7105da1d8", 1, (20, 20), "RGB"),
    ],
}
# stem -> (PNG mode of its masks, instance count, mask sizes (w, h) or None for the image's).
# 490365f63135f3e0's masks are all half its size; 0a51958fcd523ae4's differ from each other.
MASKS = {
    "32fdab44f6e415f1": ("1", 1, None),
    "1cd9ac0169ec7df0": ("RGB", 2, None),
    "490365f63135f3e0": ("RGBA", 2, [(14, 18)] * 3),
    "7af766bd43da900b": ("1", 3, None),
    "0a51958fcd523ae4": ("1", 2, [(24, 32), (12, 16), (24, 32)]),
    "b4d953e7105da1d8": ("RGBA", 1, None),
}
SPLITS = {"train": "train", "validation": "val", "test": "test"}


def image_id(folder: str, spec) -> str:
    return f"{folder}/{CLASSES[spec[1]]}/{spec[0]}.jpg"


def _jpeg(spec) -> bytes:
    stem, _, (w, h), mode = spec
    rng = np.random.default_rng(int(stem[:8], 16))
    array = (np.cumsum(rng.integers(-20, 21, size=(h, w, 3)), axis=1) % 256).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _mask_arrays(spec) -> tuple[list[np.ndarray], np.ndarray]:
    """(instance masks, ignore mask) as bool (h, w): random blobs, the ignore box overlapping."""
    stem, _, (w, h), _ = spec
    _, count, sizes = MASKS[stem]
    sizes = sizes or [(w, h)] * (count + 1)
    rng = np.random.default_rng(int(stem[8:], 16))
    arrays = []
    for mw, mh in sizes:
        m = np.zeros((mh, mw), bool)
        y, x = rng.integers(0, mh // 2), rng.integers(0, mw // 2)
        m[y : y + mh // 2, x : x + mw // 2] = True
        m ^= rng.random((mh, mw)) < 0.1
        arrays.append(m)
    if stem == "b4d953e7105da1d8":  # the reference's "one gt" fixture: all foreground
        arrays[0][:] = True
    return arrays[:-1], arrays[-1]


def _png(mask: np.ndarray, mode: str) -> bytes:
    """A bool mask as a PNG of `mode`, with the value kinds the released masks have."""
    if mode == "1":
        image = Image.fromarray(mask)
    else:
        rgb = np.repeat(mask[..., None] * np.uint8(255), 3, axis=-1)
        # A faint red that OpenCV's greyscale rounds to 0: background for the reference too.
        rgb[~mask] = (1, 0, 0)
        if mode == "RGBA":
            alpha = np.where(mask, 255, 0).astype(np.uint8)[..., None]
            rgb = np.concatenate([rgb, 255 - alpha], axis=-1)  # alpha is ignored
        image = Image.fromarray(rgb, mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _mask_members(folder: str, spec) -> tuple[list[str], str]:
    stem, label, _, _ = spec
    base = f"{folder}/{CLASSES[label]}/{stem}"
    count = MASKS[stem][1]
    return [f"{base}_m{CLASSES[label]}_{k:08x}.png" for k in range(count)], f"{base}_ignore.png"


def _mask_files(folder: str, spec) -> dict[str, bytes]:
    mode = MASKS[spec[0]][0]
    names, ignore_name = _mask_members(folder, spec)
    instances, ignore = _mask_arrays(spec)
    files = {n: _png(m, mode) for n, m in zip(names, instances, strict=True)}
    files[ignore_name] = _png(ignore, mode)
    return files


def _write_zip(path: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name in sorted(files, reverse=True):  # not the metadata order
            archive.writestr(name, files[name])


def write_manual_dir(
    path: Path,
    *,
    form: str = "release",
    drop: tuple[str, ...] = (),
    replace: dict[str, bytes] | None = None,
) -> Path:
    """The inputs in the reference's layout; `form` "eval" writes `OpenImages30k_eval.zip`
    (val and test images with their masks, under a leading `OpenImages/` folder) instead."""
    path.mkdir(parents=True, exist_ok=True)
    images, masks = {}, {}
    for folder, specs in IMAGES.items():
        for spec in specs:
            images[image_id(folder, spec)] = _jpeg(spec)
            if folder != "train":
                masks.update(_mask_files(folder, spec))
    for files in (images, masks):
        for name, data in (replace or {}).items():
            if name in files:
                files[name] = data
        for name in drop:
            files.pop(name, None)
    if form == "release":
        _write_zip(path / openimages.IMAGES_ARCHIVE, {**images, "README.txt": b"fake\n"})
        _write_zip(path / openimages.MASKS_ARCHIVE, masks)
    else:
        evaluation_files = {k: v for k, v in images.items() if not k.startswith("train/")}
        evaluation_files.update(masks)
        prefixed = {f"OpenImages/{k}": v for k, v in evaluation_files.items()}
        _write_zip(path / openimages.EVAL_ARCHIVE, prefixed)
    for folder, specs in IMAGES.items():
        mask_paths = ignore_paths = None
        if folder != "train":
            pairs = [_mask_members(folder, s) for s in specs]
            mask_paths, ignore_paths = [p[0] for p in pairs], [p[1] for p in pairs]
        wsol_io.write_metadata(
            path / openimages.METADATA_DIR / folder,
            wsol_io.WsolMetadata(
                image_ids=[image_id(folder, s) for s in specs],
                class_labels=[s[1] for s in specs],
                mask_paths=mask_paths,
                ignore_paths=ignore_paths,
            ),
        )
    return path


def reference_mask(folder: str, spec, size: int = EVAL_SIZE) -> np.ndarray:
    """The reference's `get_mask`: each PNG read as OpenCV grey, resized alone (nearest),
    > 0.5; foreground 1, ignore box minus foreground 255."""

    def load(data: bytes) -> np.ndarray:
        grey = np.float32(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE))
        return cv2.resize(grey, (size, size), interpolation=cv2.INTER_NEAREST)

    files = _mask_files(folder, spec)
    names, ignore_name = _mask_members(folder, spec)
    foreground = np.stack([load(files[n]) > 0.5 for n in names]).any(axis=0)
    ignore = (load(files[ignore_name]) > 0.5) & ~foreground
    return foreground.astype(np.uint8) + 255 * ignore.astype(np.uint8)


def _records(source) -> list[dict]:
    return [source[i] for i in range(len(source))]


def _prepare(manual_dir: Path, data_dir: Path, **kwargs) -> openimages.OpenImages30kWsol:
    return openimages.OpenImages30kWsol.prepare(
        str(manual_dir), str(data_dir), progress=False, **kwargs
    )


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Config `full`, written in several small shards."""
    root = tmp_path_factory.mktemp("openimages")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manual, "SHARD_BYTES", 3000)
        # Past this, tfds's own writer would spill to disk through TensorFlow.
        patch.setattr(tfds_shuffle, "MAX_MEM_BUFFER_SIZE", 0)
        builder = _prepare(write_manual_dir(root / "manual"), root / "tfds")
    return builder, openimages.OpenImages30kWsol.data_sources(str(root / "tfds"))


def test_splits_follow_the_metadata(full):
    builder, sources = full
    assert builder.builder_config.name == "full"
    assert sorted(sources) == ["test", "train", "validation"]
    assert builder.info.features["label"].names == CLASSES
    for split, folder in SPLITS.items():
        records = _records(sources[split])
        assert [r["image_id"].decode() for r in records] == [
            image_id(folder, s) for s in IMAGES[folder]
        ]
        assert [int(r["label"]) for r in records] == [s[1] for s in IMAGES[folder]]
        for record, (_, _, (w, h), _) in zip(records, IMAGES[folder], strict=True):
            assert (record["height"], record["width"]) == (h, w)
            assert record["image"].shape == (h, w, 3) and record["image"].dtype == np.uint8
            assert np.asarray(record["objects"]["bbox"]).size == 0  # no boxes
    assert builder.info.splits["train"].num_shards > 1
    assert builder.info.metadata["skipped_corrupt"] == []
    assert "tensorflow" not in sys.modules


def test_images_are_the_original_files(full):
    builder, sources = full
    raw = builder.as_data_source(deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    for split, folder in SPLITS.items():
        for i, spec in enumerate(IMAGES[folder]):
            jpeg = _jpeg(spec)
            decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), np.int16)
            if spec[3] == "CMYK":
                # Stored as a PNG of Pillow's RGB conversion: tfds decodes it to 3 channels.
                assert jpeg not in raw[split][i]
                np.testing.assert_array_equal(sources[split][i]["image"], decoded)
            else:
                assert jpeg in raw[split][i]
                assert np.abs(sources[split][i]["image"] - decoded).max() == 0


def _protocol(record, size: int = EVAL_SIZE) -> np.ndarray:
    """The stored masks -> the reference's {0, 1, 255} mask at the evaluation size."""
    return protocol.protocol_mask(record["mask"], size, record["ignore_mask"])


def test_masks_give_the_reference_mask_exactly(full):
    _, sources = full
    for split, folder in (("validation", "val"), ("test", "test")):
        for i, spec in enumerate(IMAGES[folder]):
            record = sources[split][i]
            mask, ignored = record["mask"][..., 0], record["ignore_mask"][..., 0]
            assert set(np.unique(mask)) <= {0, 255} and set(np.unique(ignored)) <= {0, 255}
            # The foreground wins over the ignore box.
            assert not np.any((mask > 0) & (ignored > 0))
            sizes = MASKS[spec[0]][2]
            if sizes and len(set(sizes)) > 1:
                continue  # resized to the image first: test_masks_of_several_sizes
            w, h = sizes[0] if sizes else spec[2]
            assert mask.shape == (h, w)  # the masks' own grid
            instances, ignore = _mask_arrays(spec)
            np.testing.assert_array_equal(mask > 0, np.any(instances, axis=0))
            np.testing.assert_array_equal(ignored > 0, ignore & ~np.any(instances, axis=0))
            for size in (EVAL_SIZE, 7):
                np.testing.assert_array_equal(
                    _protocol(record, size), reference_mask(folder, spec, size)
                )
    # The RGB masks' faint red pixels are background, as OpenCV's greyscale makes them 0.
    assert sources["validation"][1]["mask"].max() == 255


def test_masks_of_several_sizes_are_resized_to_the_image(full):
    _, sources = full
    spec = IMAGES["test"][1]
    record = sources["test"][1]
    (w, h), instances, ignore = spec[2], *_mask_arrays(spec)
    nearest = [
        cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        for m in (*instances, ignore)
    ]
    foreground = np.any(nearest[:-1], axis=0)
    np.testing.assert_array_equal(record["mask"][..., 0] > 0, foreground)
    np.testing.assert_array_equal(record["ignore_mask"][..., 0] > 0, nearest[-1] & ~foreground)


def test_train_masks_ignore_everything(full):
    _, sources = full
    for record in _records(sources["train"]):
        np.testing.assert_array_equal(record["mask"], [[[0]]])
        np.testing.assert_array_equal(record["ignore_mask"], [[[255]]])
        assert np.all(_protocol(record) == 255)


def test_any_grey_above_half_is_foreground_or_ignored_as_the_reference_reads_masks():
    """The reference's get_mask: grey > 0.5 (anti-aliased or palette masks have greys between
    1 and 254), and the object wins over an ignore region."""
    instance = np.zeros((4, 4), np.uint8)
    instance[1, 1], instance[2, 2] = 1, 255
    ignore = np.zeros((4, 4), np.uint8)
    ignore[3, 3], ignore[2, 2] = 1, 100
    foreground, ignored = openimages._reference_masks("i", [instance], ignore, (4, 4))
    np.testing.assert_array_equal(np.argwhere(foreground), [[1, 1], [2, 2]])
    np.testing.assert_array_equal(np.argwhere(ignored), [[3, 3]])


def test_an_ignore_mask_of_another_size_is_resized_to_the_image_too():
    """The instance masks at the image's size, the ignore mask at half of it: every mask, the
    ignore mask included, goes to the image's size (nearest neighbour) before combining."""
    instance = np.zeros((4, 6), np.uint8)
    instance[3, 5] = 255
    ignore = np.array([[255, 0, 0], [0, 0, 0]], np.uint8)  # (2, 3): its top-left pixel
    foreground, ignored = openimages._reference_masks("i", [instance, instance], ignore, (4, 6))
    np.testing.assert_array_equal(foreground, instance > 0)
    expected = np.zeros((4, 6), bool)
    expected[:2, :2] = True  # nearest neighbour doubles each pixel
    np.testing.assert_array_equal(ignored, expected)


def test_masked_eval_preprocess_reads_the_examples(full):
    _, sources = full
    cfg = pipeline.PreprocessConfig(image_size=32, resize_size=36)
    row = protocol.MaskedEvalPreprocess(cfg, EVAL_SIZE).map(sources["validation"][0])
    assert row["image"].shape == (32, 32, 3) and row["num_boxes"] == 0
    assert row["mask"].shape == (EVAL_SIZE, EVAL_SIZE)
    example = sources["validation"][0]
    expected = protocol.protocol_mask(example["mask"], EVAL_SIZE, example["ignore_mask"])
    np.testing.assert_array_equal(row["mask"], expected)
    assert (row["mask"] == 255).any()  # the ignore regions reach PxAP
    assert openimages.OpenImages30kWsol.wsol_sources(full[0].data_dir_root).keys() == sources.keys()
    with pytest.raises(ValueError, match="own validation split"):
        openimages.OpenImages30kWsol.wsol_sources(full[0].data_dir_root, validation_per_class=5)


def test_evaluation_archive_and_cli_build_the_evaluation_config(full, tmp_path, capsys):
    _, sources = full
    manual_dir = write_manual_dir(tmp_path / "manual", form="eval")
    data_dir = str(tmp_path / "tfds")
    assert prepare.prepare_and_report("openimages", str(manual_dir), data_dir) == 0
    assert "validation 3, test 3 examples" in capsys.readouterr().out
    again = openimages.OpenImages30kWsol.data_sources(data_dir)
    assert sorted(again) == ["test", "validation"]
    for split in again:
        for a, b in zip(_records(again[split]), _records(sources[split]), strict=True):
            assert a["image_id"] == b["image_id"]
            for key in ("image", "mask", "ignore_mask"):
                np.testing.assert_array_equal(a[key], b[key])


def test_missing_inputs_are_listed_with_their_source(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(downloads.MissingFilesError) as err:
        _prepare(empty, tmp_path / "tfds", train=True)
    assert err.value.missing[:2] == [openimages.IMAGES_ARCHIVE, openimages.MASKS_ARCHIVE]
    assert "metadata/OpenImages/val/" in err.value.missing
    assert "clovaai/wsolevaluation" in str(err.value)
    assert str(err.value).startswith("Cannot prepare openimages30k_wsol/full: ")
    assert str(err.value).endswith(
        "\nTo build the validation and test splits alone, pass train=False."
    )
    assert not (tmp_path / "tfds").exists()
    with pytest.raises(downloads.MissingFilesError) as err:
        _prepare(empty, tmp_path / "tfds")  # no images archive: the evaluation config
    assert f"{openimages.IMAGES_ARCHIVE} or {openimages.EVAL_ARCHIVE}" in err.value.missing
    assert not any("train/" in m for m in err.value.missing)
    assert str(err.value).startswith("Cannot prepare openimages30k_wsol/evaluation: ")
    assert "train=False" not in str(err.value)  # it is the evaluation config already
    with_images = tmp_path / "with_images"
    with_images.mkdir()
    (with_images / openimages.IMAGES_ARCHIVE).touch()
    with pytest.raises(downloads.MissingFilesError) as err:
        _prepare(with_images, tmp_path / "tfds", train=True)
    assert err.value.missing[0] == openimages.MASKS_ARCHIVE
    assert "train=False" not in str(err.value)  # the full config's own archive is there
    (empty / "metadata/OpenImages/val").mkdir(parents=True)
    (empty / "metadata/OpenImages/val/image_ids.txt").write_text("val/a/b.jpg")
    with pytest.raises(downloads.MissingFilesError) as err:
        _prepare(empty, tmp_path / "tfds")
    assert err.value.missing[-3:] == [
        "metadata/OpenImages/val/class_labels.txt",
        "metadata/OpenImages/val/localization.txt",
        "metadata/OpenImages/test/",
    ]


def test_members_missing_from_the_archives_are_listed(tmp_path):
    """Images, then masks (instance or ignore), each in metadata order, with the archive that
    should hold them and where to get it again; the evaluation archive when it stands in."""
    names, _ = _mask_members("test", IMAGES["test"][0])
    _, val_ignore = _mask_members("val", IMAGES["val"][0])
    image = image_id("val", IMAGES["val"][2])
    manual_dir = write_manual_dir(tmp_path / "manual", drop=(names[1], image, val_ignore))
    with pytest.raises(downloads.MissingFilesError) as err:
        _prepare(manual_dir, tmp_path / "tfds")
    assert err.value.missing == [image, val_ignore, names[1]]
    images, masks, evaluation = (
        openimages.IMAGES_ARCHIVE,
        openimages.MASKS_ARCHIVE,
        openimages.EVAL_ARCHIVE,
    )
    assert str(err.value).splitlines() == [
        "Cannot prepare openimages30k_wsol: the archives are incomplete.",
        f"1 image(s) that metadata/OpenImages names are not in {images}:",
        f"  {image}",
        f"Download {images} again from {openimages.SOURCES[images]}.",
        f"2 mask(s) that metadata/OpenImages names are not in {masks}:",
        f"  {val_ignore}",
        f"  {names[1]}",
        f"Download {masks} again from {openimages.SOURCES[masks]}.",
    ]
    assert not (tmp_path / "tfds").exists()
    manual_dir = write_manual_dir(tmp_path / "eval", form="eval", drop=(names[1],))
    with pytest.raises(downloads.MissingFilesError) as err:
        _prepare(manual_dir, tmp_path / "tfds")
    assert err.value.missing == [names[1]]
    assert str(err.value).splitlines()[1:] == [
        f"1 mask(s) that metadata/OpenImages names are not in {evaluation}:",
        f"  {names[1]}",
        f"Download {evaluation} again from {openimages.SOURCES[evaluation]}.",
    ]
    assert not (tmp_path / "tfds").exists()


def test_a_missing_train_image_is_not_looked_for_in_the_evaluation_archive(tmp_path):
    """The evaluation archive holds validation and test files only: for a train image that the
    images archive lacks, only that archive is to be downloaded again."""
    train = image_id("train", IMAGES["train"][1])
    mask = _mask_members("val", IMAGES["val"][1])[0][1]
    manual_dir = write_manual_dir(tmp_path / "manual", drop=(train, mask))
    evaluation = write_manual_dir(tmp_path / "eval", form="eval", drop=(mask,))
    (evaluation / openimages.EVAL_ARCHIVE).rename(manual_dir / openimages.EVAL_ARCHIVE)
    with pytest.raises(downloads.MissingFilesError) as err:
        _prepare(manual_dir, tmp_path / "tfds")
    assert err.value.missing == [train, mask]
    images, masks, evaluation = (
        openimages.IMAGES_ARCHIVE,
        openimages.MASKS_ARCHIVE,
        openimages.EVAL_ARCHIVE,
    )
    assert str(err.value).splitlines()[1:] == [
        f"1 image(s) that metadata/OpenImages names are not in {images}:",
        f"  {train}",
        f"Download {images} again from {openimages.SOURCES[images]}.",
        f"1 mask(s) that metadata/OpenImages names are not in {masks} or {evaluation}:",
        f"  {mask}",
        f"Download {masks} again from {openimages.SOURCES[masks]}.",
        f"Download {evaluation} again from {openimages.SOURCES[evaluation]}.",
    ]


def test_the_release_archives_are_read_before_the_evaluation_archive(tmp_path):
    """With all three archives, each path is read from the first of OpenImages_images.zip,
    OpenImages_annotations.zip and OpenImages30k_eval.zip that holds it: here the evaluation
    archive's copies of an image and a mask are damaged, and never read."""
    image = image_id("val", IMAGES["val"][0])
    mask = _mask_members("test", IMAGES["test"][0])[0][0]
    damaged = write_manual_dir(tmp_path / "eval", form="eval", replace={image: b"x", mask: b"x"})
    manual_dir = write_manual_dir(tmp_path / "manual")
    (damaged / openimages.EVAL_ARCHIVE).rename(manual_dir / openimages.EVAL_ARCHIVE)
    builder = _prepare(manual_dir, tmp_path / "tfds", train=False)
    assert builder.info.metadata["skipped_corrupt"] == []
    assert builder.info.splits["validation"].num_examples == len(IMAGES["val"])


def test_zip_index_drops_a_leading_dot_slash_and_one_folder_above_the_splits(tmp_path):
    path = tmp_path / "a.zip"
    names = ["./val/a/1.jpg", "OpenImages/test/b/2.png", "./OpenImages/val/d/4.jpg"]
    names += ["train/c/3.jpg", "docs/notes/x.txt"]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("OpenImages/", b"")  # a folder entry: not a file
        for name in [*names, "README.txt"]:
            archive.writestr(name, b"")
    assert openimages._zip_index(path) == {
        "val/a/1.jpg": "./val/a/1.jpg",
        "test/b/2.png": "OpenImages/test/b/2.png",
        "val/d/4.jpg": "./OpenImages/val/d/4.jpg",
        "train/c/3.jpg": "train/c/3.jpg",
        "docs/notes/x.txt": "docs/notes/x.txt",  # its first folder is not above a split
        "README.txt": "README.txt",
    }


def test_truncated_archive_is_named(tmp_path):
    manual_dir = write_manual_dir(tmp_path / "manual")
    path = manual_dir / openimages.MASKS_ARCHIVE
    path.write_bytes(path.read_bytes()[:-200])  # loses the zip's central directory
    with pytest.raises(downloads.CorruptFileError, match="damaged or truncated"):
        _prepare(manual_dir, tmp_path / "tfds")


def test_corrupt_images_and_masks_are_named_or_skipped(tmp_path):
    bad_image = image_id("val", IMAGES["val"][1])
    bad_mask = _mask_members("test", IMAGES["test"][2])[1]
    replace = {bad_image: _jpeg(IMAGES["val"][1])[:200], bad_mask: b"\x89PNG\r\n"}
    manual_dir = write_manual_dir(tmp_path / "manual", replace=replace)
    with pytest.raises(downloads.CorruptFileError, match=bad_image):
        _prepare(manual_dir, tmp_path / "tfds")
    data_dir = tmp_path / "tfds_skip"
    builder = _prepare(manual_dir, data_dir, skip_corrupt=True)
    skipped = [bad_image, image_id("test", IMAGES["test"][2])]
    assert builder.info.metadata["skipped_corrupt"] == skipped
    sources = openimages.OpenImages30kWsol.data_sources(str(data_dir))
    assert (len(sources["validation"]), len(sources["test"])) == (2, 2)
    assert (
        openimages.OpenImages30kWsol.configured(str(data_dir), train=True).info.metadata[
            "skipped_corrupt"
        ]
        == skipped
    )


def test_a_member_that_fails_the_zip_check_is_named_in_its_archive_or_skipped(tmp_path):
    """A member damaged inside an intact zip (a bad CRC) stops the build naming it as the zip
    holds it and the archive; skip_corrupt leaves its image out."""
    member = image_id("val", IMAGES["val"][1])
    name = f"OpenImages/{member}"
    manual_dir = write_manual_dir(tmp_path / "manual", form="eval")
    path = manual_dir / openimages.EVAL_ARCHIVE
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    data = bytearray(path.read_bytes())
    header = info.header_offset  # stored, not deflated: its bytes follow the local header
    start = header + 30 + int.from_bytes(data[header + 26 : header + 28], "little")
    start += int.from_bytes(data[header + 28 : header + 30], "little")
    data[start + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    where = f"{name} (in {openimages.EVAL_ARCHIVE})"
    with pytest.raises(
        downloads.CorruptFileError, match=f"^Cannot read {re.escape(where)}: Bad CRC"
    ):
        _prepare(manual_dir, tmp_path / "strict")
    builder = _prepare(manual_dir, tmp_path / "lenient", skip_corrupt=True)
    assert builder.info.metadata["skipped_corrupt"] == [member]
    assert builder.info.splits["validation"].num_examples == len(IMAGES["val"]) - 1


@pytest.mark.parametrize(
    "offset, value, why",
    [(8, 1, "is encrypted, password required"), (10, 9, "compression method is not supported")],
)
def test_an_encrypted_or_deflate64_member_is_a_corrupt_file_naming_where_to_get_it(
    tmp_path, offset, value, why
):
    """zipfile refuses an encrypted member (general-purpose flag bit 0) with RuntimeError and a
    compression it lacks (method 9, Deflate64) with NotImplementedError: one line naming the
    member, its archive and its source, as for a bad CRC, not a traceback."""
    member = image_id("val", IMAGES["val"][1])
    name = f"OpenImages/{member}"
    manual_dir = write_manual_dir(tmp_path / "manual", form="eval")
    path = manual_dir / openimages.EVAL_ARCHIVE
    data = bytearray(path.read_bytes())
    entry = data.rindex(name.encode()) - 46  # the name's central directory record
    assert data[entry : entry + 4] == b"PK\x01\x02"
    data[entry + offset : entry + offset + 2] = value.to_bytes(2, "little")
    path.write_bytes(bytes(data))
    where = f"{name} (in {openimages.EVAL_ARCHIVE})"
    source = openimages.SOURCES[openimages.EVAL_ARCHIVE]
    with pytest.raises(downloads.CorruptFileError) as err:
        _prepare(manual_dir, tmp_path / "tfds")
    message = str(err.value)
    assert message.startswith(f"Cannot read {where}: ") and why in message
    assert message.endswith(f"; download it again from {source}.")


def test_an_empty_mask_file_is_a_corrupt_file():
    with pytest.raises(
        downloads.CorruptFileError, match=r"^m\.png \(in z\.zip\) cannot be decoded"
    ):
        openimages._grey("m.png (in z.zip)", b"")


def test_classes_are_the_class_folders_of_the_ids_and_must_agree_with_the_labels(caplog):
    """Label k's name is the class folder of its ids; an id without a folder, a label in two
    folders or a label no image has is a corrupt metadata file."""

    def metadata(*pairs, masks=None):
        ids, labels = zip(*pairs, strict=True)
        ignore = None if masks is None else [f"{i[:-4]}_ignore.png" for i in ids]
        return wsol_io.WsolMetadata(
            image_ids=ids, class_labels=labels, mask_paths=masks, ignore_paths=ignore
        )

    train = metadata(("train/b/1.jpg", 0), ("train/a/2.jpg", 1))  # not in sorted order
    val = metadata(("val/a/3.jpg", 1), masks=[["val/a/3_ma_0.png", "val/a/3_ma_1.png"]])
    with caplog.at_level(logging.WARNING, logger="camjax"):
        classes, items = openimages._classes_and_items({"train": train, "validation": val})
    assert classes == ["b", "a"]
    assert items == {
        "train": [
            openimages._Item("train/b/1.jpg", 0, (), None),
            openimages._Item("train/a/2.jpg", 1, (), None),
        ],
        "validation": [
            openimages._Item(
                "val/a/3.jpg", 1, ("val/a/3_ma_0.png", "val/a/3_ma_1.png"), "val/a/3_ignore.png"
            )
        ],
    }
    assert "Found 2 classes; OpenImages30k has 100." in caplog.text
    for pairs, message in (
        ([("3.jpg", 0)], "image id '3.jpg' has no class folder"),
        (
            [("train/a/1.jpg", 0), ("train/b/2.jpg", 0), ("train/c/3.jpg", 1)],
            "Labels with ids in several class folders: {0: ['a', 'b']}.",
        ),
        ([("train/a/1.jpg", 0), ("train/c/3.jpg", 2)], "No image has the labels [1]."),
    ):
        with pytest.raises(downloads.CorruptFileError, match=re.escape(message)):
            openimages._classes_and_items({"train": metadata(*pairs)})


def test_loading_before_preparing_says_how(tmp_path):
    with pytest.raises(FileNotFoundError, match="camjax.data.prepare openimages --manual_dir"):
        openimages.OpenImages30kWsol.data_sources(str(tmp_path))
    assert camjax.data.dataset("openimages") is openimages.OpenImages30kWsol
