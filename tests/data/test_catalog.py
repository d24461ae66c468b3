"""Tests for `camjax.data.catalog` on tiny stand-ins of tfds catalog datasets.

Catalog data cannot be downloaded here, so each stand-in subclasses the installed catalog
builder under its tfds name (same features, version and, for the birds, the catalog's own box
arithmetic) and generates a few examples, written as ArrayRecord into a tmp data dir the way
`tfds build` would. They are then read back through the catalog's code builder, as a user's
prepared copy would be.
"""

import dataclasses
import functools
import io
import json
import logging
import pickle
import shutil
import sys
from pathlib import Path

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from camjax.data import catalog, cub, pipeline

MAX_BOXES = 4
_NO_GCS = tfds.download.DownloadConfig(try_download_gcs=False)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _image(rng: np.random.Generator, height: int, width: int, channels: int = 3) -> np.ndarray:
    return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)


def _prepare(builder_cls: type, data_dir: Path) -> None:
    builder = builder_cls(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(file_format="array_record", download_config=_NO_GCS)


def _pixel_boxes(example: dict) -> np.ndarray:
    """The example's boxes in whole pixels (x0, y0, x1, y1), exclusive ends."""
    h, w = example["image"].shape[:2]
    boxes, n = pipeline.pixel_boxes(example["objects"]["bbox"], h, w, MAX_BOXES)
    return np.rint(boxes[:n]).astype(int)


def _by_id(source) -> dict:
    return {ex["image_id"]: ex for ex in source}


# --- caltech_birds2011 ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bird:
    image_id: str  # path under CUB_200_2011/images/
    label: int
    size: tuple[int, int]  # height, width
    box: tuple[int, int, int, int]  # x, y, w, h as in bounding_boxes.txt: x + w is the last column


BIRDS = {
    "train": [
        Bird(
            "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg",
            0,
            (29, 41),
            (0, 0, 40, 28),
        ),
        Bird("002.Laysan_Albatross/Laysan_Albatross_0082_524.jpg", 1, (36, 36), (10, 11, 5, 7)),
    ],
    "test": [
        Bird(
            "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg",
            0,
            (34, 50),
            (6, 2, 32, 30),
        ),
        Bird(
            "200.Common_Yellowthroat/Common_Yellowthroat_0003_190521.jpg",
            199,
            (31, 48),
            (0, 4, 47, 26),
        ),
    ],
}


def _bird_mask(bird: Bird) -> np.ndarray:
    """Grey mask as in segmentations.tgz: 0 outside, partial agreement 64, full 255."""
    h, w = bird.size
    x, y, bw, bh = bird.box
    mask = np.zeros((h, w), np.uint8)
    mask[y : y + bh + 1, x : x + bw + 1] = 64
    mask[y + 1 : y + bh, x + 1 : x + bw] = 255
    return mask


class FakeBirds(tfds.builder_cls("caltech_birds2011"), skip_registration=True):
    """`caltech_birds2011` with its features and `_get_bounding_box_values`, on BIRDS."""

    name = "caltech_birds2011"

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(birds) for split, birds in BIRDS.items()}

    def _generate_examples(self, birds):
        rng = np.random.default_rng(0)
        for bird in birds:
            h, w = bird.size
            ymin, xmin, ymax, xmax = self._get_bounding_box_values(bird.box, w, h)
            yield (
                bird.image_id,
                {
                    "image": _png(_image(rng, h, w)),
                    "image/filename": f"CUB_200_2011/images/{bird.image_id}",
                    "label": bird.label,
                    "label_name": bird.image_id.split("/")[0].split(".")[1].lower(),
                    "bbox": tfds.features.BBox(
                        min(ymin, 1.0), min(xmin, 1.0), min(ymax, 1.0), min(xmax, 1.0)
                    ),
                    "segmentation_mask": _png(_bird_mask(bird)),
                },
            )


# --- stanford_dogs -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dog:
    image_id: str  # <synset>-<breed>/<file>
    label: int
    size: tuple[int, int]  # height, width
    boxes: tuple[tuple[int, int, int, int], ...]  # XML xmin, ymin, xmax, ymax: last col / row


DOGS = {
    "train": [
        Dog("n02085620-Chihuahua/n02085620_7.jpg", 0, (19, 25), ((7, 0, 19, 18),)),
        # Two dogs; the second box's xmax is W, one past the image, which tfds clips to 1.
        Dog(
            "n02085782-Japanese_spaniel/n02085782_17.jpg",
            1,
            (30, 40),
            ((0, 2, 9, 11), (20, 5, 40, 29)),
        ),
    ],
    "test": [
        Dog("n02116738-African_hunting_dog/n02116738_9829.jpg", 119, (22, 17), ((3, 4, 16, 21),))
    ],
}


def _dog_box(box: tuple[int, int, int, int], h: int, w: int) -> tfds.features.BBox:
    x0, y0, x1, y1 = box
    # As the builder does: each coordinate over the XML's size, at most 1.
    return tfds.features.BBox(
        min(y0 / h, 1.0), min(x0 / w, 1.0), min(y1 / h, 1.0), min(x1 / w, 1.0)
    )


class FakeDogs(tfds.builder_cls("stanford_dogs"), skip_registration=True):
    """`stanford_dogs` with its features, boxes normalized as its builder does, on DOGS."""

    name = "stanford_dogs"

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(dogs) for split, dogs in DOGS.items()}

    def _generate_examples(self, dogs):
        rng = np.random.default_rng(1)
        for dog in dogs:
            h, w = dog.size
            boxes = [_dog_box(box, h, w) for box in dog.boxes]
            yield (
                dog.image_id,
                {
                    "image": _png(_image(rng, h, w)),
                    "image/filename": f"Images/{dog.image_id}",
                    "label": dog.label,
                    "objects": [{"bbox": b} for b in boxes],
                },
            )


# --- oxford_iiit_pet -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pet:
    file_name: str
    label: int
    size: tuple[int, int]  # height, width
    pet: tuple[int, int, int, int]  # x0, y0, x1, y1 of the pet pixels (exclusive); band 1 px out


PETS = {
    "train": [
        Pet("Abyssinian_1.jpg", 0, (20, 30), (5, 6, 12, 14)),
        Pet("beagle_3.jpg", 4, (26, 18), (1, 1, 17, 25)),
    ],
    "test": [Pet("pug_52.jpg", 25, (15, 15), (4, 3, 9, 10))],
}


def _trimap(pet: Pet) -> np.ndarray:
    x0, y0, x1, y1 = pet.pet
    trimap = np.full(pet.size, 2, np.uint8)
    trimap[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = 3
    trimap[y0:y1, x0:x1] = 1
    trimap[y0, x0] = 3  # a notch: the pet region need not be a rectangle
    return trimap


class FakePets(tfds.builder_cls("oxford_iiit_pet"), skip_registration=True):
    """`oxford_iiit_pet` with its features, a trimap per image, on PETS."""

    name = "oxford_iiit_pet"

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(pets) for split, pets in PETS.items()}

    def _generate_examples(self, pets):
        rng = np.random.default_rng(2)
        for pet in pets:
            yield (
                pet.file_name,
                {
                    "image": _png(_image(rng, *pet.size)),
                    "label": pet.label,
                    "species": 0,
                    "file_name": pet.file_name,
                    "segmentation_mask": _png(_trimap(pet)),
                    "head_bbox": tfds.features.BBox(0.1, 0.1, 0.3, 0.3),
                },
            )


class FakePetsV3(FakePets, skip_registration=True):
    name = "oxford_iiit_pet"
    VERSION = tfds.core.Version("3.2.0")
    RELEASE_NOTES = {"3.2.0": "An older version."}


# --- a dataset without catalog code: the generic adapter, read from files -----------------


class FakeGeneric(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Grey images, a class label and `objects/bbox`; no code registered under its name."""

    name = "camjax_test_generic"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "picture": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                    "kind": tfds.features.ClassLabel(names=["a", "b", "c"]),
                    "objects": tfds.features.Sequence({"bbox": tfds.features.BBoxFeature()}),
                }
            ),
            supervised_keys=("picture", "kind"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        rng = np.random.default_rng(3)
        for i in range(3):
            yield (
                i,
                {
                    "picture": _png(_image(rng, 10 + i, 12, 1)[..., 0]),
                    "kind": i,
                    "objects": [{"bbox": tfds.features.BBox(0.1 * i, 0.25, 0.5, 0.75)}] * i,
                },
            )


class FakeUnboxed(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = "camjax_test_unboxed"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(), "label": tfds.features.ClassLabel(num_classes=2)}
            )
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"test": self._generate_examples()}

    def _generate_examples(self):
        yield 0, {"image": _png(np.zeros((6, 7, 3), np.uint8)), "label": 1}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tfds")
    for builder_cls in (FakeBirds, FakeDogs, FakePets, FakeGeneric, FakeUnboxed):
        _prepare(builder_cls, path)
    return path


@pytest.fixture(scope="module")
def birds(data_dir) -> dict:
    return catalog.load_catalog_sources("caltech_birds2011", str(data_dir))


@pytest.fixture(scope="module")
def dogs(data_dir) -> dict:
    return catalog.load_catalog_sources("stanford_dogs", str(data_dir))


def test_caltech_birds(birds):
    assert {s: len(v) for s, v in birds.items()} == {"train": 2, "test": 2}
    for split, records in BIRDS.items():
        examples = _by_id(birds[split])
        assert sorted(examples) == sorted(b.image_id.encode() for b in records)
        for bird in records:
            ex = examples[bird.image_id.encode()]
            assert ex["label"] == bird.label
            assert ex["image"].shape == (*bird.size, 3) and ex["image"].dtype == np.uint8
            x, y, w, h = bird.box
            # The official inclusive x + w becomes the exclusive x + w + 1.
            np.testing.assert_array_equal(_pixel_boxes(ex), [[x, y, x + w + 1, y + h + 1]])
            assert ex["objects"]["bbox"].dtype == np.float32  # the module's promise
            # The same box as camjax's own cub_200_2011 builder stores for this annotation.
            record = cub._Record(1, bird.image_id, bird.label, split == "train", bird.box)
            np.testing.assert_allclose(
                ex["objects"]["bbox"], cub._normalized_box(record, *bird.size)[None], atol=1e-6
            )
            assert ex["mask"].shape == (*bird.size, 1) and ex["mask"].dtype == np.uint8
            np.testing.assert_array_equal(ex["mask"][..., 0], (_bird_mask(bird) > 0) * 255)


def test_stanford_dogs_boxes_and_pipeline(dogs):
    assert {s: len(v) for s, v in dogs.items()} == {"train": 2, "test": 1}
    for split, records in DOGS.items():
        examples = _by_id(dogs[split])
        for dog in records:
            ex = examples[dog.image_id.encode()]
            assert ex["label"] == dog.label
            h, w = dog.size
            expected = [(x0, y0, min(x1 + 1, w), min(y1 + 1, h)) for x0, y0, x1, y1 in dog.boxes]
            np.testing.assert_array_equal(_pixel_boxes(ex), expected)
            assert ex["objects"]["bbox"].dtype == np.float32
            assert "mask" not in ex

    # The pipeline reads the adapted source as any camjax source.
    size = 16
    cfg = pipeline.PreprocessConfig(image_size=size, resize_size=20, max_boxes=MAX_BOXES)
    rows = list(grain.MapDataset.source(dogs["train"]).map(pipeline.EvalPreprocess(cfg)))
    for row, ex in zip(rows, dogs["train"], strict=True):
        h, w = ex["image"].shape[:2]
        n = len(ex["objects"]["bbox"])
        assert row["image"].shape == (size, size, 3) and row["num_boxes"] == n
        np.testing.assert_array_equal(row["original_size"], [h, w])
        scale = np.array([size / w, size / h, size / w, size / h])
        np.testing.assert_allclose(row["boxes"][:n], _pixel_boxes(ex) * scale, atol=1e-3)
    batch = pipeline.train_dataset(dogs["train"], cfg, global_batch_size=2, seed=0)[0]
    assert batch["image"].shape == (2, size, size, 3) and batch["label"].shape == (2,)
    # grain's worker processes receive the source pickled.
    copy = pickle.loads(pickle.dumps(dogs["train"]))
    np.testing.assert_array_equal(copy[1]["objects"]["bbox"], dogs["train"][1]["objects"]["bbox"])


@pytest.mark.parametrize("border_is_pet", [True, False])
def test_oxford_pet_mask_and_box_from_trimap(data_dir, border_is_pet):
    adapter = functools.partial(catalog.oxford_pet_adapter, border_is_pet=border_is_pet)
    kwargs = {} if border_is_pet else {"adapter": adapter}  # True is the default
    pets = catalog.load_catalog_sources("oxford_iiit_pet", str(data_dir), **kwargs)
    for split, records in PETS.items():
        examples = _by_id(pets[split])
        for pet in records:
            ex = examples[pet.file_name.encode()]
            assert ex["label"] == pet.label
            x0, y0, x1, y1 = pet.pet
            trimap = _trimap(pet)
            if border_is_pet:
                np.testing.assert_array_equal(_pixel_boxes(ex), [[x0 - 1, y0 - 1, x1 + 1, y1 + 1]])
                np.testing.assert_array_equal(ex["mask"][..., 0], (trimap != 2) * 255)
            else:
                # The notch at (x0, y0) is band, not pet: the box's corner is still inside.
                np.testing.assert_array_equal(_pixel_boxes(ex), [[x0, y0, x1, y1]])
                np.testing.assert_array_equal(ex["mask"][..., 0], (trimap == 1) * 255)
            assert ex["mask"].dtype == np.uint8 and ex["mask"].shape == (*pet.size, 1)


def test_generic_adapter_read_from_files(data_dir):
    sources = catalog.load_catalog_sources("camjax_test_generic", str(data_dir))
    examples = sorted(sources["train"], key=lambda ex: ex["label"])
    assert [ex["label"] for ex in examples] == [0, 1, 2]
    for i, ex in enumerate(examples):
        assert ex["image"].shape == (10 + i, 12, 3)
        np.testing.assert_array_equal(ex["image"][..., 0], ex["image"][..., 2])
        assert ex["objects"]["bbox"].shape == (i, 4)
        # Taken as stored.
        np.testing.assert_allclose(
            ex["objects"]["bbox"], np.reshape([[0.1 * i, 0.25, 0.5, 0.75]] * i, (-1, 4)), atol=1e-7
        )


def test_generic_adapter_without_boxes_warns(data_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="camjax.data.catalog"):
        sources = catalog.load_catalog_sources("camjax_test_unboxed", str(data_dir))
    assert "no `objects/bbox`" in caplog.text
    ex = sources["test"][0]
    assert ex["label"] == 1 and ex["objects"]["bbox"].shape == (0, 4)


def test_splits_argument(data_dir):
    sources = catalog.load_catalog_sources(
        "stanford_dogs", str(data_dir), splits={"train": "train[:1]", "validation": "train[1:]"}
    )
    assert {s: len(v) for s, v in sources.items()} == {"train": 1, "validation": 1}
    assert list(catalog.load_catalog_sources("stanford_dogs", str(data_dir), splits=["test"])) == [
        "test"
    ]
    with pytest.raises(ValueError, match="no split 'validation'"):
        catalog.load_catalog_sources("stanford_dogs", str(data_dir), splits=["validation"])


def test_adapter_rejects_other_features(data_dir):
    info = tfds.builder("camjax_test_unboxed", data_dir=str(data_dir)).info
    with pytest.raises(ValueError, match=r"no feature\(s\) \['bbox'\]"):
        catalog.caltech_birds_adapter(info)


def test_not_prepared(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        catalog.load_catalog_sources("stanford_dogs", str(tmp_path))
    message = str(err.value)
    assert "tfds build stanford_dogs" in message and "--file_format=array_record" in message
    assert "python -m camjax.data.prepare" in message
    # The command builds into the data dir camjax reads, not tfds's default.
    assert f"--data_dir={tmp_path} --file_format" in message
    assert not (tmp_path / "stanford_dogs").exists()  # nothing prepared or downloaded


def test_other_version_prepared(tmp_path):
    _prepare(FakePetsV3, tmp_path)
    for name in ("oxford_iiit_pet", "oxford_iiit_pet:3.1.0"):  # the code's, one not in the code
        with pytest.raises(FileNotFoundError, match="'oxford_iiit_pet:3.2.0'"):
            catalog.load_catalog_sources(name, str(tmp_path))
    pets = catalog.load_catalog_sources("oxford_iiit_pet:3.2.0", str(tmp_path))
    ex = _by_id(pets["test"])[b"pug_52.jpg"]
    x0, y0, x1, y1 = PETS["test"][0].pet
    np.testing.assert_array_equal(_pixel_boxes(ex), [[x0 - 1, y0 - 1, x1 + 1, y1 + 1]])


def test_unknown_dataset(tmp_path):
    with pytest.raises(catalog.UnknownDatasetError, match="neither in the installed tfds catalog"):
        catalog.load_catalog_sources("camjax_no_such_dataset", str(tmp_path))


def _as_tfrecord(data_dir: Path, target: Path, *, keep_array_record: bool) -> Path:
    """A copy of the prepared dogs whose dataset_info.json says TFRecord, as `tfds build`'s
    default writes it; with keep_array_record, as `tfds convert_format` leaves it in place."""
    shutil.copytree(data_dir / "stanford_dogs", target / "stanford_dogs")
    version_dir = next((target / "stanford_dogs").iterdir())
    info_path = version_dir / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    for shard in version_dir.glob("*.array_record-*"):
        tfrecord = shard.with_name(shard.name.replace(".array_record-", ".tfrecord-"))
        if keep_array_record:
            info["alternativeFileFormats"] = ["array_record"]
            tfrecord.write_bytes(b"")
        else:
            shard.rename(tfrecord)
    info_path.write_text(json.dumps(info))
    return version_dir


def test_tfrecord_only_is_refused_with_conversion_command(data_dir, tmp_path):
    version_dir = _as_tfrecord(data_dir, tmp_path, keep_array_record=False)
    with pytest.raises(ValueError) as err:
        catalog.load_catalog_sources("stanford_dogs", str(tmp_path))
    message = str(err.value)
    assert "stored as tfrecord" in message
    assert f"tfds convert_format --dataset_version_dir={version_dir}" in message
    assert "--out_file_format=array_record" in message


def test_converted_in_place_is_read(data_dir, dogs, tmp_path):
    _as_tfrecord(data_dir, tmp_path, keep_array_record=True)
    sources = catalog.load_catalog_sources("stanford_dogs", str(tmp_path))
    got, want = _by_id(sources["train"]), _by_id(dogs["train"])
    assert sorted(got) == sorted(want)
    for key, ex in got.items():
        np.testing.assert_array_equal(ex["objects"]["bbox"], want[key]["objects"]["bbox"])
    assert "tensorflow" not in sys.modules


def test_load_data_sources_reads_catalog_datasets_with_a_validation_holdout(data_dir):
    """camjax.data.load_data_sources falls back to the catalog; train/test only datasets get
    validation from the end of train, disjoint from it and from test."""
    from camjax import data as camjax_data

    sources = camjax_data.load_data_sources("stanford_dogs", 64, str(data_dir))
    direct = catalog.load_catalog_sources("stanford_dogs", str(data_dir))
    assert set(sources) == {"train", "validation", "test"}
    assert len(sources["train"]) + len(sources["validation"]) == len(direct["train"])
    assert len(sources["test"]) == len(direct["test"])
    ids = {s: {bytes(ex["image_id"]) for ex in sources[s]} for s in sources}
    assert not ids["train"] & ids["validation"] and not ids["validation"] & ids["test"]
    with pytest.raises(ValueError, match="Unknown dataset 'no_such_dataset'"):
        camjax_data.load_data_sources("no_such_dataset", 64, str(data_dir))


# --- adapters on examples built in memory ---------------------------------------------------


def _info(tmp_path: Path, features: dict, supervised_keys=None) -> tfds.core.DatasetInfo:
    """The info of an unprepared builder with these features (nothing is written)."""
    feature_dict = tfds.features.FeaturesDict(features)

    class Features(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "camjax_test_features"
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return self.dataset_info_from_configs(
                features=feature_dict, supervised_keys=supervised_keys
            )

        def _split_generators(self, dl_manager):
            return {}

        def _generate_examples(self):
            yield from ()

    return Features(data_dir=str(tmp_path)).info


def test_pet_trimap_without_pet_pixels_has_no_box(data_dir):
    """A trimap with only background and band, read with border_is_pet=False: no pet, so no
    box at all, (0, 4), rather than a zero box the metrics would count as an object."""
    info = tfds.builder("oxford_iiit_pet", data_dir=str(data_dir)).info
    fn = catalog.oxford_pet_adapter(info, border_is_pet=False)
    trimap = np.full((6, 7, 1), 2, np.uint8)
    trimap[1:3, 2:5] = 3
    ex = fn({"image": np.zeros((6, 7, 3), np.uint8), "label": 3, "segmentation_mask": trimap})
    assert ex["objects"]["bbox"].shape == (0, 4) and ex["objects"]["bbox"].dtype == np.float32
    np.testing.assert_array_equal(ex["mask"], np.zeros((6, 7, 1), np.uint8))
    # With the band as pet: rows 1-2, columns 2-4, exclusive ends (3 / 6, 5 / 7).
    ex = catalog.oxford_pet_adapter(info)(
        {"image": np.zeros((6, 7, 3), np.uint8), "label": 3, "segmentation_mask": trimap}
    )
    np.testing.assert_allclose(ex["objects"]["bbox"], [[1 / 6, 2 / 7, 3 / 6, 5 / 7]], atol=1e-7)


def test_birds_image_id_from_a_windows_path(data_dir):
    """A copy prepared on Windows stores `image/filename` with backslashes; the id is still
    `<class dir>/<file>`, as camjax's own cub_200_2011 names it."""
    info = tfds.builder("caltech_birds2011", data_dir=str(data_dir)).info
    fn = catalog.caltech_birds_adapter(info)
    path = b"C:\\data\\CUB_200_2011\\images\\001.Black_footed_Albatross\\Black_Footed_1.jpg"
    ex = fn(
        {
            "image": np.zeros((4, 5, 3), np.uint8),
            "label": 0,
            "bbox": np.array([0.0, 0.0, 0.5, 0.4], np.float32),
            "image/filename": path,
            "segmentation_mask": np.zeros((4, 5, 1), np.uint8),
        }
    )
    assert ex["image_id"] == b"001.Black_footed_Albatross/Black_Footed_1.jpg"


def test_generic_adapter_refuses_what_it_cannot_read(tmp_path):
    """RGBA images and integer labels that are not class labels are refused up front, not
    passed on to a pipeline that expects 3 channels and a class count."""
    rgba = _info(
        tmp_path,
        {
            "image": tfds.features.Image(shape=(None, None, 4)),
            "label": tfds.features.ClassLabel(num_classes=2),
        },
    )
    with pytest.raises(ValueError, match="not an RGB or grey image"):
        catalog.generic_adapter(rgba)
    plain_int = _info(tmp_path, {"image": tfds.features.Image(), "label": np.int64})
    with pytest.raises(ValueError, match="not a class label"):
        catalog.generic_adapter(plain_int)


def test_generic_adapter_box_features(tmp_path, caplog):
    """A top-level `bbox` box is read as the one box; an `objects/bbox` that is not a box
    feature (e.g. pixel coordinates in a plain tensor) is not taken for normalized boxes."""
    image = np.zeros((4, 6, 3), np.uint8)
    top = _info(
        tmp_path,
        {
            "image": tfds.features.Image(),
            "label": tfds.features.ClassLabel(num_classes=2),
            "bbox": tfds.features.BBoxFeature(),
        },
    )
    fn = catalog.generic_adapter(top)
    ex = fn({"image": image, "label": 1, "bbox": np.array([0.25, 0.5, 0.75, 1.0], np.float32)})
    np.testing.assert_array_equal(ex["objects"]["bbox"], [[0.25, 0.5, 0.75, 1.0]])

    pixels = _info(
        tmp_path,
        {
            "image": tfds.features.Image(),
            "label": tfds.features.ClassLabel(num_classes=2),
            "objects": tfds.features.Sequence(
                {"bbox": tfds.features.Tensor(shape=(4,), dtype=np.int64)}
            ),
        },
    )
    with caplog.at_level(logging.WARNING, logger="camjax.data.catalog"):
        fn = catalog.generic_adapter(pixels)
    assert "no `objects/bbox`" in caplog.text
    ex = fn({"image": image, "label": 0, "objects": {"bbox": np.array([[1, 2, 3, 4]])}})
    assert ex["objects"]["bbox"].shape == (0, 4)


def test_split_specs_may_join_splits(data_dir):
    """tfds split specs join splits with `+`, spaces allowed around it; `all` is every split."""
    sources = catalog.load_catalog_sources(
        "stanford_dogs",
        str(data_dir),
        splits={"both": "train+test", "some": "train[:1] + test", "every": "all"},
    )
    assert {s: len(v) for s, v in sources.items()} == {"both": 3, "some": 2, "every": 3}
    ids = [r["image_id"] for r in sources["every"]]
    assert sorted(ids) == sorted(r["image_id"] for r in sources["both"])
    with pytest.raises(ValueError, match="no split 'validation'"):
        catalog.load_catalog_sources("stanford_dogs", str(data_dir), splits=["train+validation"])


def test_array_record_listed_but_missing_is_refused(data_dir, tmp_path):
    """dataset_info.json says ArrayRecord but the shards are gone (a partial copy): refused
    with the reason, rather than failing later on a missing file."""
    shutil.copytree(data_dir / "stanford_dogs", tmp_path / "stanford_dogs")
    version_dir = next((tmp_path / "stanford_dogs").iterdir())
    for shard in version_dir.glob("*.array_record-*"):
        shard.unlink()
    with pytest.raises(ValueError, match="no ArrayRecord file is there") as err:
        catalog.load_catalog_sources("stanford_dogs", str(tmp_path))
    assert f"--dataset_version_dir={version_dir}" in str(err.value)


def test_other_versions_listed_newest_first(tmp_path):
    """Versions in version order (3.10.0 after 3.9.0), newest first; a version folder without
    dataset_info.json (an unfinished copy) and other folders are not offered."""
    pets = tmp_path / "oxford_iiit_pet"
    for version in ("3.2.0", "3.10.0", "3.9.0"):
        (pets / version).mkdir(parents=True)
        (pets / version / "dataset_info.json").write_text("{}")
    (pets / "4.1.0").mkdir()
    (pets / "incomplete.1").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        catalog.load_catalog_sources("oxford_iiit_pet", str(tmp_path))
    listed = "'oxford_iiit_pet:3.10.0', 'oxford_iiit_pet:3.9.0', 'oxford_iiit_pet:3.2.0'."
    assert f"Prepared there, to read by naming them: {listed}" in str(err.value)
