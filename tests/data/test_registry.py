"""The dataset registry (`camjax.data.DATASETS`), and what its datasets read, pinned.

The digests below were recorded at aef8d3e, before the datasets were classes behind one
registry, from the same fixtures through the same entry points: every dataset's examples, their
order (also the step-indexed train order), its splits and the reference splits are unchanged.
CUB's test split holds the fixtures' CMYK JPEG: its two digests and its reference split's were
recorded again when cub 1.0.1 stored that image as Pillow's RGB conversion instead of OpenCV's
(1 level apart); nothing else moved.
"""

import hashlib
import pickle
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import camjax.data
from camjax.data import catalog, cub, ilsvrc, openimages, pipeline, wsol_shapes, wsol_splits
from tests.data.test_cub import SPECS as CUB_SPECS
from tests.data.test_cub import write_archives
from tests.data.test_ilsvrc import VAL
from tests.data.test_ilsvrc import write_manual_dir as write_ilsvrc
from tests.data.test_openimages import write_manual_dir as write_openimages
from tests.data.test_wsol_splits import _cub_metadata, _ilsvrc_metadata

# (name, split_sizes) -> split -> "<length>:<digest>", recorded at aef8d3e.
PINNED = {
    ("cub_200_2011", ()): {
        "test": "4:c1f1d8e51e37fae4",  # cub 1.0.1 (module doc)
        "train": "0:e3b0c44298fc1c14",
        "validation": "6:2b177ae7bcb3e67c",
    },
    ("cub_200_2011", (("validation_per_class", 1),)): {
        "test": "4:c1f1d8e51e37fae4",  # cub 1.0.1
        "train": "3:68264a0ca85184f2",
        "validation": "3:0e0f836f7ae1fce1",
    },
    ("ilsvrc2012_loc", ()): {
        "test": "0:e3b0c44298fc1c14",
        "train": "7:65e5c716ea8afc00",
        "validation": "5:f71ba7ad014f3967",
    },
    ("ilsvrc2012_loc", (("validation_per_class", 1),)): {
        "test": "2:f810a6e8015496db",
        "train": "7:65e5c716ea8afc00",
        "validation": "3:b8a6b69319623efd",
    },
    ("openimages30k_wsol", ()): {
        "test": "3:ff0b7e11aa7c05b3",
        "train": "4:92b1eb63b7b9e06d",
        "validation": "3:849bc14cc503684e",
    },
    ("openimages30k_wsol", (("num_test", 2), ("num_train", 2))): {
        "test": "2:7032d5e140413c4f",
        "train": "2:0142697f230891f1",
        "validation": "3:849bc14cc503684e",
    },
    ("wsol_shapes", (("num_test", 3), ("num_train", 5), ("num_validation", 3))): {
        "test": "3:3030405d413f2d1c",
        "train": "5:a66eb6a241ce04b7",
        "validation": "3:79f15f247d4b9413",
    },
}


def _digest(source) -> str:
    """'<length>:<digest>' of every field of every record, in order."""
    h = hashlib.sha256()
    for i in range(len(source)):
        record = source[i]
        for key in sorted(record):
            value = record[key]["bbox"] if isinstance(record[key], dict) else record[key]
            h.update(key.encode())
            h.update(np.asarray(value).tobytes())
    return f"{len(source)}:{h.hexdigest()[:16]}"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("registry")
    data_dir = str(root / "tfds")
    cub.Cub2002011.prepare(str(write_archives(root / "cub")), data_dir, progress=False)
    manual = write_ilsvrc(root / "ilsvrc", train=True)
    ilsvrc.Ilsvrc2012Loc.prepare(str(manual), data_dir, progress=False)
    manual = write_openimages(root / "openimages")
    openimages.OpenImages30kWsol.prepare(str(manual), data_dir, progress=False)
    return root, data_dir


@pytest.mark.parametrize("name, sizes", list(PINNED))
def test_examples_order_and_splits_are_pinned(prepared, name, sizes):
    _, data_dir = prepared
    sources = camjax.data.load_data_sources(name, 64, data_dir, dict(sizes))
    assert {split: _digest(s) for split, s in sorted(sources.items())} == PINNED[name, sizes]


def test_train_order_and_reference_splits_are_pinned(prepared):
    root, data_dir = prepared
    sources = camjax.data.load_data_sources(
        "cub_200_2011", 64, data_dir, {"validation_per_class": 1}
    )
    cfg = pipeline.PreprocessConfig(image_size=16, resize_size=20)
    ds = pipeline.train_dataset(sources["train"], cfg, 2, seed=3)
    labels = [np.asarray(ds[step]["label"]).tolist() for step in range(6)]
    assert labels == [[199, 1], [0, 1], [0, 199], [1, 0], [199, 199], [1, 0]]
    images = b"".join(np.asarray(ds[step]["image"]).tobytes() for step in range(6))
    assert hashlib.sha256(images).hexdigest()[:16] == "c55ac1357dae3a5b"

    test = [s for s in CUB_SPECS if not s[5]][::-1]
    mixed = [CUB_SPECS[k] for k in (4, 0, 9, 2, 1)]
    names = sorted(VAL, reverse=True)
    for path, pinned in (
        (_cub_metadata(root, "test", test), "4:fd01db8353cad30e"),  # cub 1.0.1
        (_cub_metadata(root, "mixed", mixed), "5:4d91fc862db5ca9f"),
        (_ilsvrc_metadata(root, "test", names), "5:bfb3ec034aaf8abc"),
    ):
        assert _digest(wsol_splits.reference_split(path, data_dir)) == pinned


def test_datasets_are_found_by_name_or_alias():
    for name in camjax.data.DATASETS:
        assert camjax.data.dataset(name).name == name
    assert camjax.data.dataset("cub") is camjax.data.dataset("CUB") is cub.Cub2002011
    assert camjax.data.dataset("ILSVRC") is ilsvrc.Ilsvrc2012Loc
    assert camjax.data.dataset("wsol_shapes") is wsol_shapes.WsolShapes
    with pytest.raises(KeyError, match="not a camjax dataset"):
        camjax.data.dataset("caltech_birds2011")
    # Recipes read their numbers from the classes.
    assert cub.Cub2002011.train_images() == 5_994 - 5 * 200
    assert ilsvrc.Ilsvrc2012Loc.train_images() == 1_281_167


def test_record_digest_is_the_sha256_prefix_kept_in_the_metadata():
    """The digests of prepared datasets' metadata.json: changing them would refuse those."""
    assert camjax.data.record_digest(b"abc") == "ba7816bf8f01cfea"


def _builder(file_instructions: list, metadata: dict | None = None) -> SimpleNamespace:
    splits = {"train": SimpleNamespace(file_instructions=file_instructions)}
    return SimpleNamespace(
        data_path="/prepared", info=SimpleNamespace(splits=splits, metadata=metadata)
    )


def test_check_shards_refuses_a_split_without_shards_or_more_first_records_than_shards():
    with pytest.raises(camjax.data.DataFilesError, match="lists no examples for the train split"):
        camjax.data.check_shards(_builder([]))
    shard = SimpleNamespace(
        filename="/prepared/train.array_record-00000-of-00001", examples_in_shard=1
    )
    metadata = {camjax.data.FIRST_RECORDS: {"train": ["0" * 16, "1" * 16]}}
    with pytest.raises(
        camjax.data.DataFilesError, match="has 1 shards, where its metadata.json lists 2"
    ):
        camjax.data.check_shards(_builder([shard], metadata))


class _Unreadable(Sequence):
    def __len__(self) -> int:
        return 3

    def __getitem__(self, index):
        raise RuntimeError("bad block")


def test_reopened_source_still_names_its_split_when_reading_fails():
    source = camjax.data.ReopenableSource(_Unreadable, what="the test split of x")
    reopened = pickle.loads(pickle.dumps(source))
    assert len(reopened) == 3
    with pytest.raises(
        camjax.data.DataFilesError,
        match=r"reading example 1 of the test split of x failed \(RuntimeError: bad block\)",
    ):
        reopened[1]


def test_catalog_datasets_without_validation_hold_out_the_last_tenth_of_train(monkeypatch):
    """Validation is the last round(10%) of train, at least one record; `num_<split>` then
    spreads that many records over the split (indices floor(i * len / n))."""
    splits = {"train": list(range(50)), "test": ["t0", "t1"]}
    monkeypatch.setattr(catalog, "load_catalog_sources", lambda name, data_dir: dict(splits))

    def read(sources):
        return {split: [s[i] for i in range(len(s))] for split, s in sources.items()}

    got = read(camjax.data.load_data_sources("fake", 64))
    assert got == {
        "train": list(range(45)),
        "validation": list(range(45, 50)),
        "test": ["t0", "t1"],
    }
    got = read(camjax.data.load_data_sources("fake", 64, None, {"num_train": 5, "num_test": 1}))
    assert got == {"train": [0, 9, 18, 27, 36], "validation": list(range(45, 50)), "test": ["t0"]}
    splits["train"] = ["a", "b"]
    got = read(camjax.data.load_data_sources("fake", 64))
    assert got == {"train": ["a"], "validation": ["b"], "test": ["t0", "t1"]}
