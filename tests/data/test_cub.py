"""Tests for the CUB-200-2011 builder and `python -m camjax.data.prepare`, on tiny fake archives.

The fakes have the official layout (`CUB_200_2011.tgz` with `CUB_200_2011/images/...` and the
five metadata tables, `segmentations.tgz` with grey PNGs), with members in an order unlike
`images.txt` and unrelated members the builder must ignore.
"""

import hashlib
import io
import logging
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core import shuffle as tfds_shuffle

import camjax.data
from camjax import experiment
from camjax.data import cub, downloads, manual, pipeline, prepare
from camjax.evaluation import protocol
from configs import tiny

# Preparing and reading must never open a connection.
pytestmark = pytest.mark.usefixtures("no_network")

_NAMED = {1: "Black_footed_Albatross", 2: "Laysan_Albatross", 200: "Common_Yellowthroat"}
CLASSES = [f"{i:03d}.{_NAMED.get(i, f'Bird_{i:03d}')}" for i in range(1, 201)]

# id, class id, file, width, height, is_train, (x, y, w, h) as in bounding_boxes.txt, mode
SPECS = [
    (1, 1, "Black_Footed_Albatross_0046_18.jpg", 50, 34, False, (6, 2, 32, 30), "RGB"),
    (2, 1, "Black_Footed_Albatross_0009_34.jpg", 41, 29, True, (0, 0, 40, 28), "RGB"),
    (3, 2, "Laysan_Albatross_0002_1027.jpg", 23, 37, False, (3, 5, 14, 20), "L"),
    (4, 2, "Laysan_Albatross_0082_524.jpg", 36, 36, True, (10, 11, 5, 7), "RGB"),
    (5, 200, "Common_Yellowthroat_0003_190521.jpg", 48, 31, True, (0, 4, 47, 26), "RGB"),
    (6, 200, "Common_Yellowthroat_0010_190572.jpg", 27, 44, False, (1, 0, 25, 43), "RGB"),
    (7, 1, "Black_Footed_Albatross_0074_59.jpg", 33, 25, True, (7, 3, 19, 15), "RGB"),
    (8, 2, "Laysan_Albatross_0003_1033.jpg", 30, 20, False, (2, 1, 20, 15), "CMYK"),
    (9, 2, "Laysan_Albatross_0044_784.jpg", 28, 22, True, (1, 2, 20, 15), "RGB"),
    (10, 200, "Common_Yellowthroat_0055_190967.jpg", 35, 26, True, (3, 3, 25, 18), "RGB"),
]
TRAIN = [s for s in SPECS if s[5]]
TEST = [s for s in SPECS if not s[5]]


def image_id(spec) -> str:
    return f"{CLASSES[spec[1] - 1]}/{spec[2]}"


def _jpeg(spec) -> bytes:
    _, _, _, w, h, _, _, mode = spec
    rng = np.random.default_rng(spec[0])
    smooth = np.cumsum(rng.integers(-20, 21, size=(h, w, 3)), axis=1) % 256
    array = smooth.astype(np.uint8)
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    image.convert(mode).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _grey_mask(spec) -> np.ndarray:
    """Annotator-averaged greys: 0 outside, 255, 128 and 1 inside the box."""
    _, _, _, w, h, _, (x, y, bw, bh), _ = spec
    grey = np.zeros((h, w), np.uint8)
    grey[y : y + bh + 1, x : x + bw + 1] = 255
    grey[y, x : x + bw + 1] = 128
    grey[y + bh, x] = 1
    return grey


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _tables() -> dict[str, str]:
    # images.txt order (by id) differs from the archive order below.
    return {
        "images.txt": "".join(f"{s[0]} {image_id(s)}\n" for s in SPECS),
        "image_class_labels.txt": "".join(f"{s[0]} {s[1]}\n" for s in SPECS),
        "train_test_split.txt": "".join(f"{s[0]} {int(s[5])}\n" for s in SPECS),
        "bounding_boxes.txt": "".join(
            f"{s[0]} {' '.join(f'{float(v):.1f}' for v in s[6])}\n" for s in SPECS
        ),
        "classes.txt": "".join(f"{i} {name}\n" for i, name in enumerate(CLASSES, 1)),
    }


def _write_tgz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_archives(directory: Path, *, drop=(), replace=None, segmentations: bool = True) -> Path:
    """Fake official archives in `directory`, minus the members in `drop`; `replace` sets the
    bytes of members (new ones go last), `segmentations/...` ones in that archive."""
    directory.mkdir(parents=True, exist_ok=True)
    replace = replace or {}
    members = {"attributes.txt": b"1 has_bill_shape::curved\n"}
    for spec in reversed(SPECS):
        members[f"CUB_200_2011/images/{image_id(spec)}"] = _jpeg(spec)
    members["CUB_200_2011/parts/parts.txt"] = b"1 back\n"
    members["CUB_200_2011/README"] = b"fake\n"
    for name, text in _tables().items():
        members[f"CUB_200_2011/{name}"] = text.encode()
    members.update({k: v for k, v in replace.items() if not k.startswith("segmentations/")})
    _write_tgz(directory / cub.IMAGES_ARCHIVE, {k: v for k, v in members.items() if k not in drop})
    if segmentations:
        masks = {
            f"segmentations/{image_id(s)[:-4]}.png": _png(_grey_mask(s))
            for s in sorted(SPECS, key=lambda s: s[2])
        }
        masks.update({k: v for k, v in replace.items() if k.startswith("segmentations/")})
        _write_tgz(
            directory / cub.SEGMENTATIONS_ARCHIVE, {k: v for k, v in masks.items() if k not in drop}
        )
    return directory


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory) -> Path:
    return write_archives(tmp_path_factory.mktemp("manual"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, manual_dir) -> str:
    """The `masks` config, written in several small shards."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manual, "SHARD_BYTES", 3000)
        # Past this, tfds's own writer would spill to disk through TensorFlow.
        patch.setattr(tfds_shuffle, "MAX_MEM_BUFFER_SIZE", 0)
        cub.Cub2002011.prepare(str(manual_dir), data_dir, progress=False)
    return data_dir


@pytest.fixture(scope="module")
def sources(data_dir) -> dict:
    return cub.Cub2002011.data_sources(data_dir)


def test_splits_ids_labels_and_order(sources):
    assert sorted(sources) == ["test", "train"]
    for split, specs in (("train", TRAIN), ("test", TEST)):
        records = [sources[split][i] for i in range(len(sources[split]))]
        # Records follow images.txt (id) order whatever the archive order.
        assert [int(r["cub_id"]) for r in records] == [s[0] for s in specs]
        assert [r["image_id"].decode() for r in records] == [image_id(s) for s in specs]
        assert [int(r["label"]) for r in records] == [s[1] - 1 for s in specs]
    assert (
        sources["train"][2]["image_id"]
        == b"200.Common_Yellowthroat/Common_Yellowthroat_0003_190521.jpg"
    )


def test_images_are_the_original_jpegs_and_a_cmyk_one_pillows_rgb(sources, data_dir):
    """RGB and greyscale JPEGs are stored as they are; the CMYK one as a PNG of Pillow's RGB
    conversion, the reference's `convert('RGB')` to the level (OpenCV's own conversion, which
    tfds would apply to the JPEG, is 1 level off)."""
    raw = cub.Cub2002011.configured(data_dir, masks=True).as_data_source(
        deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
    )
    for split, specs in (("train", TRAIN), ("test", TEST)):
        for i, spec in enumerate(specs):
            jpeg = _jpeg(spec)
            # The serialized record holds the JPEG as is, but for the CMYK one.
            assert (jpeg in raw[split][i]) == (spec[7] != "CMYK")
            record = sources[split][i]
            assert (record["height"], record["width"]) == (spec[4], spec[3])
            assert record["image"].dtype == np.uint8
            assert record["image"].shape == (spec[4], spec[3], 3)  # greyscale too
            pillow = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
            np.testing.assert_array_equal(record["image"], pillow)


def test_boxes_give_back_the_exact_pixel_boxes(sources):
    for split, specs in (("train", TRAIN), ("test", TEST)):
        for i, spec in enumerate(specs):
            record = sources[split][i]
            x, y, w, h = spec[6]
            bbox = np.asarray(record["objects"]["bbox"])
            assert bbox.shape == (1, 4) and bbox.dtype == np.float32
            boxes, n = pipeline.pixel_boxes(bbox, int(record["height"]), int(record["width"]), 2)
            assert n == 1
            # (x, y) is the first pixel and (x + w, y + h) the last, so the ends are + 1.
            expected = np.array([x, y, x + w + 1, y + h + 1], np.float32)
            np.testing.assert_allclose(boxes[0], expected, atol=1e-3)
            np.testing.assert_array_equal(np.rint(boxes[0]), expected)
    # A box from the top-left to the last row and column covers the whole image.
    whole = sources["train"][0]["objects"]["bbox"]
    np.testing.assert_array_equal(np.asarray(whole)[0], [0.0, 0.0, 1.0, 1.0])


def test_masks_are_the_pixels_above_zero(sources):
    for split, specs in (("train", TRAIN), ("test", TEST)):
        for i, spec in enumerate(specs):
            mask = sources[split][i]["mask"]
            assert mask.shape == (spec[4], spec[3], 1) and mask.dtype == np.uint8
            np.testing.assert_array_equal(mask[..., 0], (_grey_mask(spec) > 0) * 255)


def test_info(data_dir, sources):
    builder = cub.Cub2002011.configured(data_dir, masks=True)
    assert builder.is_prepared()
    assert builder.name == "cub_200_2011" and builder.builder_config.name == "masks"
    assert builder.info.file_format.value == "array_record"
    assert builder.info.features["label"].names == CLASSES
    assert builder.info.splits["train"].num_examples == len(TRAIN)
    # Several shards, yet records in id order across them (test_splits_ids_labels_and_order).
    assert builder.info.splits["train"].num_shards > 1
    assert builder.info.metadata["skipped_corrupt"] == []
    # Building and reading must work without TensorFlow.
    assert "tensorflow" not in sys.modules


def test_cli_without_segmentations_builds_the_boxes_config(tmp_path, sources, capsys):
    manual = write_archives(tmp_path / "manual", segmentations=False)
    data_dir = str(tmp_path / "tfds")
    assert prepare.prepare_and_report("cub", str(manual), data_dir) == 0
    assert f"train {len(TRAIN)}, test {len(TEST)} examples" in capsys.readouterr().out
    boxes = cub.Cub2002011.data_sources(data_dir)
    assert "mask" not in boxes["train"][0]
    for split in ("train", "test"):
        for i in range(len(boxes[split])):
            a, b = boxes[split][i], sources[split][i]
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["objects"]["bbox"], b["objects"]["bbox"])
    # Already prepared: a second run is a no-op that needs no archives.
    assert prepare.prepare_and_report("cub", str(tmp_path), data_dir) == 0


def test_missing_archives_are_listed_with_their_source(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    data_dir = tmp_path / "tfds"
    with pytest.raises(downloads.MissingFilesError) as err:
        cub.Cub2002011.prepare(str(empty), str(data_dir), masks=True, progress=False)
    assert err.value.missing == ["CUB_200_2011.tgz", "segmentations.tgz"]
    assert "data.caltech.edu" in str(err.value)
    assert not data_dir.exists()  # failed before any work
    run = subprocess.run(
        [sys.executable, "-m", "camjax.data.prepare", "cub", "--manual_dir", str(empty)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert "CUB_200_2011.tgz" in run.stderr and "Traceback" not in run.stderr


def test_incomplete_archives_list_the_missing_members(tmp_path):
    spec = SPECS[3]
    dropped = [
        "CUB_200_2011/bounding_boxes.txt",
        f"CUB_200_2011/images/{image_id(spec)}",
        f"segmentations/{image_id(spec)[:-4]}.png",
    ]
    data_dir = tmp_path / "tfds"
    for drop, missing in ((dropped, dropped[:1]), (dropped[1:], dropped[1:2]), (dropped[2:],) * 2):
        manual = write_archives(tmp_path / f"manual{len(drop)}", drop=drop)
        with pytest.raises(downloads.MissingFilesError) as err:
            cub.Cub2002011.prepare(str(manual), str(data_dir), progress=False)
        assert err.value.missing == list(missing)
        assert all(m in str(err.value) for m in missing)
    assert not data_dir.exists()  # failed before any work


def test_truncated_archive_lists_what_it_lost(tmp_path):
    manual = write_archives(tmp_path / "manual", segmentations=False)
    archive = manual / cub.IMAGES_ARCHIVE
    archive.write_bytes(archive.read_bytes()[:-300])  # loses the tables at the end
    with pytest.raises(downloads.MissingFilesError) as err:
        cub.Cub2002011.prepare(str(manual), str(tmp_path / "tfds"), progress=False)
    assert "CUB_200_2011/classes.txt" in err.value.missing
    # Where the archive ends (the folder's name, the test's, holds "truncated" too).
    assert f"{archive} is incomplete (damaged or truncated after " in str(err.value)


def test_an_archive_damaged_after_every_member_needed_still_builds(tmp_path, caplog):
    """The index scan stops at the damage and, as every member needed comes before it, warns
    and goes on; writing then reads the images and no further (reading on would hit it)."""
    noise = np.random.default_rng(0).integers(0, 256, 30_000, np.uint8).tobytes()
    last = {"CUB_200_2011/attributes/image_attribute_labels.txt": noise}  # after the tables
    manual = write_archives(tmp_path / "manual", replace=last, segmentations=False)
    archive = manual / cub.IMAGES_ARCHIVE
    archive.write_bytes(archive.read_bytes()[:-5_000])  # cut inside the incompressible noise
    with caplog.at_level(logging.WARNING, logger="camjax"):
        builder = cub.Cub2002011.prepare(str(manual), str(tmp_path / "tfds"), progress=False)
    assert builder.info.splits["train"].num_examples == len(TRAIN)
    assert builder.info.splits["test"].num_examples == len(TEST)
    assert "damaged or truncated after" in caplog.text
    # Once: the tables' check and the images' check of the same archive warned alike.
    assert caplog.text.count("every member needed comes before that, going on") == 1


def test_corrupt_jpegs_are_named_or_skipped_and_counted(tmp_path, caplog):
    truncated, garbage = SPECS[2], SPECS[6]  # a test and a train image
    member = f"CUB_200_2011/images/{image_id(truncated)}"
    jpeg = _jpeg(truncated)
    manual = write_archives(
        tmp_path / "strict", replace={member: jpeg[: len(jpeg) // 2]}, segmentations=False
    )
    with pytest.raises(downloads.CorruptFileError, match=f"{member} cannot be decoded"):
        cub.Cub2002011.prepare(str(manual), str(tmp_path / "strict_tfds"), progress=False)
    assert not cub.Cub2002011.configured(str(tmp_path / "strict_tfds"), masks=False).is_prepared()

    replace = {
        member: jpeg[: len(jpeg) // 2],
        f"CUB_200_2011/images/{image_id(garbage)}": b"x" * 99,
    }
    manual = write_archives(tmp_path / "lenient", replace=replace, segmentations=False)
    data_dir = str(tmp_path / "lenient_tfds")
    with caplog.at_level(logging.WARNING, logger="camjax"):
        builder = cub.Cub2002011.prepare(str(manual), data_dir, skip_corrupt=True, progress=False)
    assert builder.info.splits["train"].num_examples == len(TRAIN) - 1
    assert builder.info.splits["test"].num_examples == len(TEST) - 1
    assert "Skipped 2 corrupt image(s)" in caplog.text and member in caplog.text
    # The skips are recorded with the dataset (train is generated first).
    skipped = [image_id(garbage), image_id(truncated)]
    assert (
        cub.Cub2002011.configured(data_dir, masks=False).info.metadata["skipped_corrupt"] == skipped
    )
    sources = cub.Cub2002011.data_sources(data_dir)
    ids = [r["image_id"].decode() for split in ("train", "test") for r in sources[split]]
    assert sorted(ids) == sorted(image_id(s) for s in SPECS if image_id(s) not in skipped)


def test_a_corrupt_segmentation_is_named_or_skipped_with_its_image(tmp_path):
    """A mask that does not decode stops the build naming the mask's member (not its image's);
    with skip_corrupt its image is left out and recorded by image id."""
    spec = SPECS[3]  # a train image
    mask = f"segmentations/{image_id(spec)[:-4]}.png"
    manual = write_archives(tmp_path / "manual", replace={mask: _png(_grey_mask(spec))[:60]})
    with pytest.raises(downloads.CorruptFileError, match=f"^{re.escape(mask)} cannot be decoded"):
        cub.Cub2002011.prepare(str(manual), str(tmp_path / "strict"), progress=False)
    builder = cub.Cub2002011.prepare(
        str(manual), str(tmp_path / "lenient"), skip_corrupt=True, progress=False
    )
    assert builder.builder_config.name == "masks"
    assert builder.info.metadata["skipped_corrupt"] == [image_id(spec)]
    assert builder.info.splits["train"].num_examples == len(TRAIN) - 1
    assert builder.info.splits["test"].num_examples == len(TEST)


def test_the_masks_config_follows_the_segmentation_archive_alone(data_dir, tmp_path):
    """prepare's default config is `masks` exactly when segmentations.tgz is in the manual
    directory, whatever is prepared (`data_dir` holds `masks`); `boxes` leaves it unread."""
    (tmp_path / cub.IMAGES_ARCHIVE).touch()
    assert cub.Cub2002011.default_flag(tmp_path, data_dir) is False
    assert cub.archive_paths(tmp_path, masks=False) == {
        cub.IMAGES_ARCHIVE: tmp_path / cub.IMAGES_ARCHIVE
    }
    (tmp_path / cub.SEGMENTATIONS_ARCHIVE).touch()
    assert cub.Cub2002011.default_flag(tmp_path, str(tmp_path / "none")) is True
    assert cub.archive_paths(tmp_path, masks=False) == {
        cub.IMAGES_ARCHIVE: tmp_path / cub.IMAGES_ARCHIVE
    }
    assert cub.archive_paths(tmp_path, masks=True) == {
        cub.IMAGES_ARCHIVE: tmp_path / cub.IMAGES_ARCHIVE,
        cub.SEGMENTATIONS_ARCHIVE: tmp_path / cub.SEGMENTATIONS_ARCHIVE,
    }


def test_reference_ids_are_ours_and_only_cubv2_ones_are_explained():
    """The reference's CUB ids are our image ids, in any split; its `val` ids are CUBV2's
    Flickr photo ids (metadata/CUB/val/image_ids.txt), the only ones explain_missing explains."""
    official = image_id(SPECS[0])
    v2 = "001.Black_footed_Albatross/30107316117.jpg"  # the first of the reference's val
    assert cub.Cub2002011.reference_id(official) == (None, official)
    assert cub.Cub2002011.explain_missing([official]) == ""
    assert cub.Cub2002011.explain_missing([official, image_id(SPECS[1])]) == ""
    for missing in ([v2], [official, v2], [v2, official]):
        assert "is CUBV2" in cub.Cub2002011.explain_missing(missing)


def test_loading_before_preparing_says_how(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m camjax.data.prepare cub"):
        cub.Cub2002011.data_sources(str(tmp_path))


def test_registry_holds_cub():
    assert camjax.data.dataset("cub") is camjax.data.dataset("cub_200_2011") is cub.Cub2002011


def _held_out(specs, per_class: int) -> list[int]:
    """Reference: the CUB ids, per class those `per_class` whose image id hashes lowest."""
    held = []
    for label in sorted({s[1] for s in specs}):
        in_class = [s for s in specs if s[1] == label]
        in_class.sort(key=lambda s: hashlib.sha256(image_id(s).encode()).hexdigest())
        held += [s[0] for s in in_class[:per_class]]
    return sorted(held)


def test_wsol_splits_hold_validation_out_of_train(data_dir, sources):
    wsol = camjax.data.load_data_sources(
        "cub_200_2011", 224, data_dir, {"num_train": 0, "validation_per_class": 1}
    )
    assert sorted(wsol) == ["test", "train", "validation"]
    ids = {split: [int(r["cub_id"]) for r in wsol[split]] for split in wsol}
    assert ids["validation"] == _held_out(TRAIN, 1)  # one per class, in id order
    assert sorted(ids["train"] + ids["validation"]) == [s[0] for s in TRAIN]
    assert not set(ids["train"]) & set(ids["validation"])
    assert ids["test"] == [s[0] for s in TEST]
    # The views give the prepared records: image, box and mask.
    by_id = {int(r["cub_id"]): r for split in ("train", "test") for r in sources[split]}
    for split in wsol:
        for record in wsol[split]:
            original = by_id[int(record["cub_id"])]
            for key in ("image", "mask"):
                np.testing.assert_array_equal(record[key], original[key])
    # Default: the size of the reference's CUB validation set, 5 of each class.
    assert cub.VALIDATION_PER_CLASS == 5
    assert len(cub.Cub2002011.wsol_sources(data_dir)["validation"]) == len(_held_out(TRAIN, 5))


def test_wsol_splits_feed_the_eval_pipeline(data_dir):
    """Non-square originals resized to a square: boxes scale with the image, masks too."""
    wsol = camjax.data.load_data_sources("cub_200_2011", 16, data_dir, {"validation_per_class": 1})
    source = wsol["validation"]
    assert len(grain.MapDataset.source(source)) == len(source)
    cfg = pipeline.PreprocessConfig(image_size=16, resize_size=20, max_boxes=2)
    (batch,) = list(pipeline.eval_batches(source, cfg, 4, num_threads=0))
    assert batch["image"].shape == (4, 16, 16, 3)
    assert list(batch["valid"]) == [True] * len(source) + [False] * (4 - len(source))
    for row in range(len(source)):
        record = source[row]
        h, w = int(record["height"]), int(record["width"])
        (spec,) = [s for s in SPECS if s[0] == int(record["cub_id"])]
        x, y, bw, bh = spec[6]
        scale = np.array([16 / w, 16 / h, 16 / w, 16 / h])
        expected = np.array([x, y, x + bw + 1, y + bh + 1]) * scale
        np.testing.assert_allclose(batch["boxes"][row, 0], expected, rtol=1e-5)
        # PxAP's mask at a 24 x 24 evaluation size: OpenCV's nearest neighbour of the original.
        resized = cv2.resize(record["mask"][..., 0], (24, 24), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(protocol.protocol_mask(record["mask"], 24), resized > 0)


def test_wsol_split_sizes(data_dir):
    wsol = camjax.data.load_data_sources("cub_200_2011", 224, data_dir, {"num_test": 2})
    full = cub.Cub2002011.data_sources(data_dir)["test"]
    # Spread over the split: records 0 and 2 of 4.
    assert [r["image_id"] for r in wsol["test"]] == [full[0]["image_id"], full[2]["image_id"]]
    with pytest.raises(ValueError, match="num_tset"):
        camjax.data.load_data_sources("cub_200_2011", 224, data_dir, {"num_tset": 2})
    with pytest.raises(ValueError, match=r"^split size num_test must be >= 0 .*; got -1\.$"):
        camjax.data.load_data_sources("cub_200_2011", 224, data_dir, {"num_test": -1})


def test_a_split_left_empty_by_the_holdout_is_a_config_error(data_dir):
    """Every train image of this small CUB held out for validation: one line, not a bare
    StopIteration at the first training step."""
    config = tiny.get_config()
    config.data.name, config.data.data_dir = "cub_200_2011", data_dir
    config.data.validation_per_class = 100
    config.data.num_train = config.data.num_validation = config.data.num_test = 0  # all of each
    with pytest.raises(ValueError) as error:
        experiment.data_sources(config)
    assert str(error.value) == (
        "the train split of cub_200_2011 holds no examples: config.data.validation_per_class "
        "held every image out of it."
    )


def test_data_sources_pass_each_split_size_and_the_holdout_to_its_own_split(data_dir):
    """config.data.validation_per_class and num_<split> reach the split they name: this CUB's
    train split has 2 images of each of its 3 classes, so a holdout of 1 per class leaves 3 in
    train and puts 3 in validation (the default, 5 per class, would take all 6)."""
    config = tiny.get_config()
    config.data.name, config.data.data_dir = "cub_200_2011", data_dir
    config.data.validation_per_class = 1
    config.data.num_train, config.data.num_validation, config.data.num_test = 0, 2, 0
    sources = experiment.data_sources(config)
    assert len(sources["train"]) == 3
    assert len(sources["validation"]) == 2  # num_validation of the 3 held out
    assert len(sources["test"]) == len(TEST)  # 0: all
    held = [r["image_id"].decode().split("/")[0] for r in sources["validation"]]
    assert len(set(held)) == 2  # one image per class, two of the three classes


def test_wsol_loading_before_preparing_says_how(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m camjax.data.prepare cub"):
        camjax.data.load_data_sources("cub_200_2011", 224, str(tmp_path))
    assert "cub_200_2011" in camjax.data.DATASETS


def test_boxes_are_clipped_to_the_image_and_an_empty_one_or_a_wrong_sized_mask_refused():
    """bounding_boxes.txt's (x, y, w, h) ends on pixel x + w; a box past an edge is clipped to
    the image (tfds's [0, 1]); one with no pixel inside, or a segmentation whose size is not its
    image's, is a corrupt file."""

    def box(x, y, w, h):
        return cub._normalized_box(cub._Record(1, "a/b.jpg", 0, True, (x, y, w, h)), 8, 10)

    np.testing.assert_array_equal(box(2, 1, 3, 2), np.float32([1 / 8, 2 / 10, 4 / 8, 6 / 10]))
    np.testing.assert_array_equal(box(-2, 1, 7, 9), np.float32([1 / 8, 0, 1, 6 / 10]))
    np.testing.assert_array_equal(box(0, 0, 9, 7), np.float32([0, 0, 1, 1]))
    # Past the top and past the right edge.
    np.testing.assert_array_equal(box(1, -3, 2, 5), np.float32([0, 1 / 10, 3 / 8, 4 / 10]))
    np.testing.assert_array_equal(box(7, 2, 5, 1), np.float32([2 / 8, 7 / 10, 4 / 8, 1]))
    for outside in ((10, 1, 0, 4), (1, 8, 2, 0)):  # right of the image, below it
        with pytest.raises(downloads.CorruptFileError, match="outside its 10x8 image"):
            box(*outside)
    for height, width in ((8, 9), (7, 10)):  # narrower, shorter
        grey = _png(np.full((height, width), 255, np.uint8))
        with pytest.raises(
            downloads.CorruptFileError, match=f"is {width}x{height} but its image is 10x8"
        ):
            cub._binary_mask("m.png", grey, (10, 8))


def test_segmentations_of_any_png_mode_are_read_as_grey():
    """An RGB or 1-bit segmentation gives the mask its grey image gives: (H, W), 255 where
    the grey is above 0."""
    spec = SPECS[0]
    grey = _grey_mask(spec)  # 0, 1, 128 and 255
    for image in (
        Image.fromarray(grey),
        Image.fromarray(np.repeat(grey[..., None], 3, axis=-1)),
        Image.fromarray(grey > 0),
    ):
        mask = cub._binary_mask("m.png", _png(np.asarray(image)), (spec[3], spec[4]))
        decoded = np.asarray(Image.open(io.BytesIO(mask)))
        np.testing.assert_array_equal(decoded, (grey > 0) * 255)
