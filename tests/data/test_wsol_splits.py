"""Tests for `wsol_splits.reference_split` on the fake CUB and ILSVRC archives of their tests,
with metadata folders written in the reference's format (`wsol_io.write_metadata`)."""

from pathlib import Path

import numpy as np
import pytest
from tensorflow_datasets.core import shuffle as tfds_shuffle

from camjax.data import cub, downloads, ilsvrc, manual, pipeline, subsets, wsol_splits
from camjax.localization import wsol_io
from tests.data.test_cub import SPECS as CUB_SPECS
from tests.data.test_cub import _jpeg as _cub_jpeg
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


def test_a_label_mismatch_names_the_prepared_class(cub_data):
    """The class name beside the prepared label is what tells a user which of two label
    conventions is off; the bare index says nothing more than the metadata's own number."""
    root, data_dir = cub_data
    specs = [s for s in CUB_SPECS if not s[5]]
    path = _cub_metadata(root, "renamed", specs, edit={1: lambda row: [row[0], 7, row[2], row[3]]})
    with pytest.raises(wsol_splits.SplitMismatchError) as err:
        wsol_splits.reference_split(path, data_dir, verify=False)
    # specs[1] is class id 2 of the fake classes.txt: label 1, its class folder's name.
    assert specs[1][1] == 2
    assert err.value.mismatches == [
        f"{_cub_id(specs[1])}: label 7 in the metadata, 1 (002.Laysan_Albatross) prepared"
    ]


def test_disagreements_past_the_listing_limit_are_counted_not_listed(cub_data, monkeypatch):
    """The message lists downloads.MAX_LISTED disagreements and counts the rest (a whole
    wrong split would otherwise print thousands of lines); `mismatches` keeps them all."""
    root, data_dir = cub_data
    specs = [s for s in CUB_SPECS if not s[5]]
    relabel = {k: (lambda row: [row[0], 9, row[2], row[3]]) for k in range(3)}
    path = _cub_metadata(root, "relabel3", specs, edit=relabel)
    monkeypatch.setattr(downloads, "MAX_LISTED", 2)
    with pytest.raises(wsol_splits.SplitMismatchError) as err:
        wsol_splits.reference_split(path, data_dir, verify=False)
    lines = str(err.value).splitlines()
    assert lines[0] == "3 disagreement(s) between the metadata and the prepared examples:"
    assert lines[1:] == [f"  {m}" for m in err.value.mismatches[:2]] + ["  ... and 1 more"]
    assert [m.split(":")[0] for m in err.value.mismatches] == [_cub_id(s) for s in specs[:3]]

    monkeypatch.setattr(downloads, "MAX_LISTED", 3)  # exactly at the limit: all, no count
    with pytest.raises(wsol_splits.SplitMismatchError) as err:
        wsol_splits.reference_split(path, data_dir, verify=False)
    assert str(err.value).splitlines()[1:] == [f"  {m}" for m in err.value.mismatches]


def test_missing_ids_past_the_listing_limit_are_counted_not_listed(cub_data, monkeypatch):
    """As for disagreements: the reference's whole CUBV2 `val` (1,000 ids) is listed up to
    downloads.MAX_LISTED ids and counted past it; `missing` keeps every id."""
    root, data_dir = cub_data
    v2 = [f"001.Black_footed_Albatross/{30107316117 + k}.jpg" for k in range(3)]
    edits = {k: (lambda row, k=k: [v2[k], 0, (56, 41), [(1, 2, 30, 20)]]) for k in range(3)}
    path = _cub_metadata(root, "val3", CUB_SPECS[:4], edit=edits)
    monkeypatch.setattr(downloads, "MAX_LISTED", 2)
    with pytest.raises(downloads.MissingFilesError) as err:
        wsol_splits.reference_split(path, data_dir)
    assert err.value.missing == v2
    lines = str(err.value).splitlines()
    assert lines[1:4] == [f"  {v2[0]}", f"  {v2[1]}", "  ... and 1 more"]
    assert v2[2] not in str(err.value)

    monkeypatch.setattr(downloads, "MAX_LISTED", 3)  # exactly at the limit: all, no count
    with pytest.raises(downloads.MissingFilesError) as err:
        wsol_splits.reference_split(path, data_dir)
    lines = str(err.value).splitlines()
    assert lines[1:4] == [f"  {i}" for i in v2]
    assert "more" not in str(err.value)


def test_ids_of_images_skipped_as_corrupt_are_explained(tmp_path):
    """An image skipped when preparing (skip_corrupt=True) is missing from the join like any
    other; the error says it was skipped, so the fix (a good copy of it, prepare again) is
    plain rather than a search for a wrong id."""
    truncated = CUB_SPECS[2]  # a test image
    member = f"CUB_200_2011/images/{_cub_id(truncated)}"
    jpeg = _cub_jpeg(truncated)
    manual_dir = write_archives(
        tmp_path / "manual", replace={member: jpeg[: len(jpeg) // 2]}, segmentations=False
    )
    data_dir = str(tmp_path / "tfds")
    cub.Cub2002011.prepare(str(manual_dir), data_dir, skip_corrupt=True, progress=False)
    test = [s for s in CUB_SPECS if not s[5]]
    path = _cub_metadata(tmp_path, "test", test)
    with pytest.raises(downloads.MissingFilesError) as err:
        wsol_splits.reference_split(path, data_dir)
    assert err.value.missing == [_cub_id(truncated)]
    assert f"1 image(s) were skipped as corrupt when preparing: ['{_cub_id(truncated)}']" in str(
        err.value
    )


def test_reading_stops_at_the_split_that_completes_the_join(cub_data, monkeypatch):
    """CUB ids name no split, so every prepared split may be searched, each read whole; once
    all ids are found the rest are not read (half of CUB's 1 GB for either official split,
    whichever split the builder lists first)."""
    root, data_dir = cub_data
    read = []
    records = subsets.records_without_images

    def counted(builder, split):
        read.append(split)
        return records(builder, split)

    monkeypatch.setattr(subsets, "records_without_images", counted)
    for split, specs in (
        ("train", [s for s in CUB_SPECS if s[5]]),
        ("test", [s for s in CUB_SPECS if not s[5]]),
    ):
        read.clear()
        wsol_splits.reference_split(_cub_metadata(root, f"only_{split}", specs), data_dir)
        assert read[-1] == split and read.count(split) == 1
