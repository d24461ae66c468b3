"""Tests for `wsol_splits.reference_split` on the fake CUB and ILSVRC archives of their tests,
with metadata folders written in the reference's format (`wsol_io.write_metadata`)."""

from pathlib import Path

import numpy as np
import pytest
from tensorflow_datasets.core import shuffle as tfds_shuffle

from camjax.data import cub, downloads, ilsvrc, manual, pipeline, subsets, wsol_splits
from camjax.localization import wsol_io
from tests.data.test_cub import SPECS as CUB_SPECS
from tests.data.test_cub import image_id as _cub_id
from tests.data.test_cub import write_archives
from tests.data.test_ilsvrc import CLASSES as ILSVRC_CLASSES
from tests.data.test_ilsvrc import VAL, write_manual_dir


def _cub_metadata(root: Path, folder: str, specs, *, edit=None) -> Path:
    """A reference CUB folder: ids as stored, labels class id - 1, boxes (x, y, x+w, y+h)."""
    rows = [
        [_cub_id(s), s[1] - 1, (s[3], s[4])]
        + [[(s[6][0], s[6][1], s[6][0] + s[6][2], s[6][1] + s[6][3])]]
        for s in specs
    ]
    for k, change in (edit or {}).items():
        rows[k] = change(rows[k])
    path = root / "metadata" / "CUB" / folder
    wsol_io.write_metadata(
        path,
        wsol_io.WsolMetadata(
            image_ids=[r[0] for r in rows],
            class_labels=[r[1] for r in rows],
            image_sizes=[r[2] for r in rows],
            boxes=[np.array(r[3], np.int64) for r in rows],
        ),
    )
    return path


@pytest.fixture(scope="module")
def cub_data(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("cub")
    manual_dir = write_archives(root / "manual", segmentations=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manual, "SHARD_BYTES", 3000)
        patch.setattr(tfds_shuffle, "MAX_MEM_BUFFER_SIZE", 0)
        cub.Cub2002011.prepare(str(manual_dir), str(root / "tfds"), progress=False)
    return root, str(root / "tfds")


@pytest.fixture(scope="module")
def ilsvrc_data(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("ilsvrc")
    manual_dir = write_manual_dir(root / "manual")
    ilsvrc.Ilsvrc2012Loc.prepare(str(manual_dir), str(root / "tfds"), progress=False)
    return root, str(root / "tfds")


def _ids(split) -> list[str]:
    return [split[i]["image_id"].decode() for i in range(len(split))]


def test_cub_test_split_in_metadata_order(cub_data):
    root, data_dir = cub_data
    test = [s for s in CUB_SPECS if not s[5]][::-1]  # not the stored order
    split = wsol_splits.reference_split(_cub_metadata(root, "test", test), data_dir)
    assert _ids(split) == [_cub_id(s) for s in test] == list(split.metadata.image_ids)
    stored = cub.Cub2002011.data_sources(data_dir)["test"]
    by_id = {stored[i]["image_id"].decode(): stored[i] for i in range(len(stored))}
    for i, spec in enumerate(test):
        record = split[i]
        assert int(record["label"]) == spec[1] - 1 == split.metadata.class_labels[i]
        np.testing.assert_array_equal(record["image"], by_id[_cub_id(spec)]["image"])
    assert [r["image_id"] for r in split.__getitems__([1, 0])] == [
        split[1]["image_id"],
        split[0]["image_id"],
    ]
    # Smoke-run subsets and the eval pipeline take it like any WSOL split.
    assert len(subsets.spread_subset(split, 2)) == 2
    cfg = pipeline.PreprocessConfig(image_size=16, resize_size=20)
    row = pipeline.EvalPreprocess(cfg).map(split[0])
    assert row["num_boxes"] == 1


def test_cub_ids_of_both_official_splits_join_in_order(cub_data):
    root, data_dir = cub_data
    mixed = [CUB_SPECS[k] for k in (4, 0, 9, 2, 1)]  # train, test, train, test, train
    split = wsol_splits.reference_split(_cub_metadata(root, "mixed", mixed), data_dir)
    assert _ids(split) == [_cub_id(s) for s in mixed]
    train = wsol_splits.reference_split(
        _cub_metadata(root, "train", [s for s in CUB_SPECS if s[5]]), data_dir
    )
    assert len(train) == sum(s[5] for s in CUB_SPECS)


def test_cubv2_ids_are_listed_and_explained(cub_data):
    root, data_dir = cub_data
    v2 = ("001.Black_footed_Albatross/30107316117.jpg", 0, (56, 41), [(1, 2, 30, 20)])
    path = _cub_metadata(root, "val", CUB_SPECS[:2], edit={1: lambda row: list(v2)})
    with pytest.raises(downloads.MissingFilesError) as err:
        wsol_splits.reference_split(path, data_dir)
    assert err.value.missing == [v2[0]]
    assert isinstance(err.value, FileNotFoundError)
    assert "CUBV2" in str(err.value) and "CUB_200_2011.tgz" in str(err.value)


def test_verify_reports_boxes_sizes_and_labels_that_differ(cub_data):
    root, data_dir = cub_data
    specs = [s for s in CUB_SPECS if not s[5]]

    def shifted(row):  # one column more than the stored box
        ((x0, y0, x1, y1),) = row[3]
        return row[:3] + [[(x0, y0, x1 + 1, y1)]]

    def resized(row):
        return [row[0], row[1], (row[2][0] + 1, row[2][1]), row[3]]

    path = _cub_metadata(root, "bad", specs, edit={0: shifted, 2: resized})
    with pytest.raises(wsol_splits.SplitMismatchError) as err:
        wsol_splits.reference_split(path, data_dir)
    assert len(err.value.mismatches) == 2
    assert err.value.mismatches[0].startswith(f"{_cub_id(specs[0])}: boxes")
    assert "size" in err.value.mismatches[1]
    assert len(wsol_splits.reference_split(path, data_dir, verify=False)) == len(specs)

    relabelled = _cub_metadata(
        root, "relabelled", specs, edit={1: lambda row: [row[0], 7, row[2], row[3]]}
    )
    with pytest.raises(wsol_splits.SplitMismatchError, match="label 7 in the metadata"):
        wsol_splits.reference_split(relabelled, data_dir, verify=False)


def _ilsvrc_metadata(root: Path, folder: str, names, *, ids=None) -> Path:
    path = root / "metadata" / "ILSVRC" / folder
    wsol_io.write_metadata(
        path,
        wsol_io.WsolMetadata(
            image_ids=ids or [f"val/{n}" for n in names],
            class_labels=[ILSVRC_CLASSES.index(VAL[n][0]) for n in names],
            image_sizes=[VAL[n][1] for n in names],
            boxes=[np.array(VAL[n][3], np.int64)[::-1] for n in names],  # any box order
        ),
    )
    return path


def test_ilsvrc_test_ids_map_to_the_stored_file_names(ilsvrc_data):
    root, data_dir = ilsvrc_data
    names = sorted(VAL, reverse=True)
    split = wsol_splits.reference_split(_ilsvrc_metadata(root, "test", names), data_dir)
    assert _ids(split) == names
    assert split.metadata.image_ids[0] == f"val/{names[0]}"
    for i, name in enumerate(names):
        record = split[i]
        got = wsol_splits.inclusive_boxes(record["objects"]["bbox"], *record["image"].shape[:2])
        np.testing.assert_array_equal(got, np.array(VAL[name][3]))


def test_imagenetv2_and_training_ids_are_explained(ilsvrc_data):
    root, data_dir = ilsvrc_data
    names = sorted(VAL)[:3]
    ids = ["val2/0/0.jpeg", f"val/{names[1]}", "train/n01440764/n01440764_10026.JPEG"]
    path = _ilsvrc_metadata(root, "val", names, ids=ids)
    with pytest.raises(downloads.MissingFilesError) as err:
        wsol_splits.reference_split(path, data_dir)
    assert err.value.missing == [ids[0], ids[2]]
    message = str(err.value)
    assert "ImageNetV2" in message and "imagenetv2-threshold0.7.tar.gz" in message
    assert "`full` config" in message


def test_dataset_is_named_by_the_folder_or_given(ilsvrc_data, tmp_path):
    root, data_dir = ilsvrc_data
    source = _ilsvrc_metadata(root, "test", sorted(VAL))
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    for f in source.iterdir():
        (elsewhere / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ValueError, match="pass dataset="):
        wsol_splits.reference_split(elsewhere, data_dir)
    split = wsol_splits.reference_split(elsewhere, data_dir, dataset="ilsvrc2012_loc")
    assert _ids(split) == sorted(VAL)
    with pytest.raises(FileNotFoundError, match="camjax.data.prepare ilsvrc"):
        wsol_splits.reference_split(source, str(tmp_path / "nothing"))
