"""Tests for camjax.localization.wsol_io: the reference evaluator's metadata folders.

The tiny metadata folders are written as raw text in the line formats of the released
``wsolevaluation/metadata`` files (comma-separated, no final newline); the expected resized
boxes are worked out by hand in the comments.
"""

import os
from pathlib import Path

import numpy as np
import pytest

from camjax.localization import wsol_frame, wsol_io

# CUB style: one box per image. Sizes are (width, height).
CUB = {
    "image_ids.txt": "001.Albatross/a_0046.jpg\n001.Albatross/a_0002.jpg",
    "class_labels.txt": "001.Albatross/a_0046.jpg,0\n001.Albatross/a_0002.jpg,0",
    "image_sizes.txt": "001.Albatross/a_0046.jpg,500,335\n001.Albatross/a_0002.jpg,10,20",
    "localization.txt": "001.Albatross/a_0046.jpg,60,27,385,331\n001.Albatross/a_0002.jpg,1,2,4,3",
}

# ILSVRC style: several boxes per image, an image's lines need not be adjacent, and the other
# files list the ids in another order than image_ids.txt.
ILSVRC = {
    "image_ids.txt": "val2/0/0.jpeg\nval2/0/1.jpeg\nval2/7/2.jpeg",
    "class_labels.txt": "val2/7/2.jpeg,7\nval2/0/0.jpeg,0\nval2/0/1.jpeg,0",
    "image_sizes.txt": "val2/0/0.jpeg,500,375\nval2/0/1.jpeg,80,112\nval2/7/2.jpeg,224,224",
    "localization.txt": (
        "val2/0/0.jpeg,156,163,318,230\n"
        "val2/0/0.jpeg,23,12,101,259\n"
        "val2/0/1.jpeg,45,61,79,111\n"
        "val2/7/2.jpeg,0,0,223,223\n"
        "val2/0/0.jpeg,0,0,499,374"
    ),
}

# OpenImages style: mask paths; the ignore path only on an image's first line; empty sizes.
OPENIMAGES = {
    "image_ids.txt": "test/01226z/7af7.jpg\ntest/01226z/9736.jpg",
    "class_labels.txt": "test/01226z/7af7.jpg,0\ntest/01226z/9736.jpg,3",
    "image_sizes.txt": "",
    "localization.txt": (
        "test/01226z/7af7.jpg,test/01226z/7af7_m01226z_65.png,test/01226z/7af7_ignore.png\n"
        "test/01226z/7af7.jpg,test/01226z/7af7_m01226z_88.png,\n"
        "test/01226z/9736.jpg,test/01226z/9736_m01226z_9a.png,test/01226z/9736_ignore.png"
    ),
}


def _folder(root: Path, files: dict[str, str], **changes: str | None) -> Path:
    """Writes a metadata folder; ``changes`` replace (str) or leave out (None) files."""
    root.mkdir(parents=True, exist_ok=True)
    files = {**files, **{f"{k}.txt": v for k, v in changes.items()}}
    for name, text in files.items():
        if text is not None:
            (root / name).write_bytes(text.encode())
    return root


# ------------------------------------------------------------------------------ reading


def test_reads_boxes_in_image_id_order(tmp_path):
    meta = wsol_io.read_metadata(_folder(tmp_path, ILSVRC))
    assert meta.image_ids == ("val2/0/0.jpeg", "val2/0/1.jpeg", "val2/7/2.jpeg")
    np.testing.assert_array_equal(meta.class_labels, [0, 0, 7])
    np.testing.assert_array_equal(meta.image_sizes, [[500, 375], [80, 112], [224, 224]])
    np.testing.assert_array_equal(
        meta.boxes[0], [[156, 163, 318, 230], [23, 12, 101, 259], [0, 0, 499, 374]]
    )
    np.testing.assert_array_equal(meta.boxes[1], [[45, 61, 79, 111]])
    assert meta.mask_paths is None and meta.ignore_paths is None
    assert len(meta) == 3


def test_reads_mask_form(tmp_path):
    meta = wsol_io.read_metadata(_folder(tmp_path, OPENIMAGES))
    assert meta.boxes is None and meta.image_sizes is None
    assert meta.mask_paths == (
        ("test/01226z/7af7_m01226z_65.png", "test/01226z/7af7_m01226z_88.png"),
        ("test/01226z/9736_m01226z_9a.png",),
    )
    assert meta.ignore_paths == ("test/01226z/7af7_ignore.png", "test/01226z/9736_ignore.png")
    np.testing.assert_array_equal(meta.class_labels, [0, 3])
    with pytest.raises(ValueError, match="no boxes"):
        wsol_frame.resized_gt_boxes(meta)


def test_line_ends_and_missing_optional_parts(tmp_path):
    """A final newline, Windows and old Mac line ends read the same, as with the reference's
    open() (universal newlines)."""
    b = wsol_io.read_metadata(_folder(tmp_path / "b", CUB))
    for k, end in enumerate(["\n", "\r\n", "\r"]):
        variant = {name: text.replace("\n", end) + end for name, text in CUB.items()}
        a = wsol_io.read_metadata(_folder(tmp_path / str(k), variant))
        assert a.image_ids == b.image_ids
        np.testing.assert_array_equal(a.image_sizes, b.image_sizes)
        for x, y in zip(a.boxes, b.boxes, strict=True):
            np.testing.assert_array_equal(x, y)
    # No image_sizes.txt at all, and a train-style empty localization.txt.
    c = wsol_io.read_metadata(_folder(tmp_path / "c", CUB, image_sizes=None, localization=""))
    assert c.image_sizes is None and c.boxes is None and c.mask_paths is None


# ------------------------------------------------------------------------------ writing


@pytest.mark.parametrize("files", [CUB, ILSVRC, OPENIMAGES], ids=["cub", "ilsvrc", "openimages"])
def test_round_trip(tmp_path, files):
    meta = wsol_io.read_metadata(_folder(tmp_path / "src", files))
    wsol_io.write_metadata(tmp_path / "out", meta)
    again = wsol_io.read_metadata(tmp_path / "out")
    assert again.image_ids == meta.image_ids
    np.testing.assert_array_equal(again.class_labels, meta.class_labels)
    for field in ("image_sizes", "mask_paths", "ignore_paths"):
        np.testing.assert_equal(getattr(again, field), getattr(meta, field))
    assert (again.boxes is None) == (meta.boxes is None)
    for x, y in zip(again.boxes or (), meta.boxes or (), strict=True):
        np.testing.assert_array_equal(x, y)
    # Written in image-id order, an image's lines together, no stray temporary files.
    assert sorted(os.listdir(tmp_path / "out")) == sorted(files)
    if files is not ILSVRC:  # ILSVRC's fixture is deliberately out of order.
        for name, text in files.items():
            assert (tmp_path / "out" / name).read_text() == text


def test_writes_the_exact_line_formats(tmp_path):
    meta = wsol_io.WsolMetadata(
        image_ids=["b/1.jpg", "a/2.jpg"],
        class_labels=[3, 0],
        boxes=[[[1, 2, 3, 4], [0, 0, 9, 9]], np.array([[5, 6, 7, 8]], np.int32)],
        image_sizes=[(10, 20), (30, 40)],
    )
    wsol_io.write_metadata(tmp_path / "new" / "split", meta)
    read = lambda name: (tmp_path / "new" / "split" / name).read_text()
    assert read("image_ids.txt") == "b/1.jpg\na/2.jpg"
    assert read("class_labels.txt") == "b/1.jpg,3\na/2.jpg,0"
    assert read("image_sizes.txt") == "b/1.jpg,10,20\na/2.jpg,30,40"
    assert read("localization.txt") == "b/1.jpg,1,2,3,4\nb/1.jpg,0,0,9,9\na/2.jpg,5,6,7,8"

    masks = wsol_io.WsolMetadata(
        image_ids=["x.jpg"],
        class_labels=[1],
        mask_paths=[["x_m1.png", "x_m2.png"]],
        ignore_paths=["x_ignore.png"],
    )
    wsol_io.write_metadata(tmp_path / "masks", masks)
    assert (tmp_path / "masks" / "image_sizes.txt").read_text() == ""
    assert (tmp_path / "masks" / "localization.txt").read_text() == (
        "x.jpg,x_m1.png,x_ignore.png\nx.jpg,x_m2.png,"
    )


def test_metadata_write_is_atomic(tmp_path, monkeypatch):
    target = _folder(tmp_path, CUB)
    meta = wsol_io.read_metadata(target)
    meta.class_labels = np.array([5, 6])

    temporary = []

    def fail(src, dst):
        temporary.append(Path(src))
        raise OSError("disk full")

    monkeypatch.setattr(wsol_io.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        wsol_io.write_metadata(target, meta)
    assert sorted(os.listdir(target)) == sorted(CUB)
    assert (target / "class_labels.txt").read_text() == CUB["class_labels.txt"]
    # The temporary file sits beside its target under a hidden name of its own, so that no
    # reader takes it for a metadata file and a leftover of a killed write blocks no later one.
    with pytest.raises(OSError, match="disk full"):
        wsol_io.write_metadata(target, meta)
    first, again = temporary
    assert first.parent == target and first.name.startswith(".image_ids.txt.")
    assert first.suffix == ".tmp" and again != first


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "missing, hint",
    [
        ("image_ids", "<image_id>"),
        ("class_labels", "<image_id>,<label>"),
        ("localization", "<image_id>,<x0>,<y0>,<x1>,<y1>"),
    ],
)
def test_missing_file(tmp_path, missing, hint):
    root = _folder(tmp_path, CUB, **{missing: None})
    with pytest.raises(FileNotFoundError, match=f"{missing}.txt is missing") as err:
        wsol_io.read_metadata(root)
    assert hint in str(err.value)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        wsol_io.read_metadata(tmp_path / "nope")


@pytest.mark.parametrize(
    "changes, match",
    [
        (
            {"class_labels": "001.Albatross/a_0046.jpg,0\n001.Albatross/a_0002.jpg"},
            ":2: expected 2",
        ),
        ({"class_labels": "001.Albatross/a_0046.jpg,zero\n001.Albatross/a_0002.jpg,0"}, ":1: "),
        ({"image_sizes": "001.Albatross/a_0046.jpg,500\n"}, "image_sizes.txt:1: expected 3"),
        ({"image_sizes": "001.Albatross/a_0046.jpg,500,0\n"}, "image_sizes.txt:1: .*500x0 is not"),
        ({"image_sizes": "001.Albatross/a_0046.jpg,0,335\n"}, "image_sizes.txt:1: .*0x335 is not"),
        ({"localization": CUB["localization.txt"] + ",7"}, "localization.txt:2: expected 5"),
        ({"localization": "001.Albatross/a_0046.jpg,60.5,27,385,331"}, "localization.txt:1: "),
        ({"localization": "001.Albatross/a_0046.jpg,60,27\n"}, "localization.txt:1: expected 5"),
        ({"image_ids": "a.jpg\n\nb.jpg"}, "image_ids.txt:2: empty line"),
        ({"image_ids": "a,b.jpg"}, "image_ids.txt:1: image ids cannot hold commas"),
        ({"image_ids": ""}, "lists no image ids"),
    ],
)
def test_malformed_lines(tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        wsol_io.read_metadata(_folder(tmp_path, CUB, **changes))


def test_malformed_line_names_file_and_line(tmp_path):
    root = _folder(tmp_path, ILSVRC, localization=ILSVRC["localization.txt"].replace("45,", "4x,"))
    with pytest.raises(ValueError) as err:
        wsol_io.read_metadata(root)
    assert f"{root / 'localization.txt'}:3: a box coordinate must be an integer" in str(err.value)


def test_ids_must_agree_across_files(tmp_path):
    ids = CUB["image_ids.txt"]
    stranger = "999.Other/x.jpg"
    cases = [
        ({"class_labels": CUB["class_labels.txt"] + f"\n{stranger},1"}, "class_labels.txt:3"),
        ({"localization": CUB["localization.txt"] + f"\n{stranger},1,1,2,2"}, "localization.txt:3"),
        ({"image_sizes": CUB["image_sizes.txt"] + f"\n{stranger},5,5"}, "image_sizes.txt:3"),
    ]
    for k, (changes, where) in enumerate(cases):
        with pytest.raises(ValueError, match=f"{where}: image id '{stranger}' is not listed"):
            wsol_io.read_metadata(_folder(tmp_path / str(k), CUB, **changes))
    # The other way round: an image id without a label, a box or a size.
    extra = {"image_ids": ids + "\n001.Albatross/a_0099.jpg"}
    for k, name in enumerate(["class_labels", "localization", "image_sizes"]):
        changes = dict(extra)
        for other in ["class_labels", "localization", "image_sizes"]:
            if other != name:
                line = {"class_labels": ",0", "localization": ",1,1,2,2", "image_sizes": ",9,9"}
                changes[other] = CUB[f"{other}.txt"] + "\n001.Albatross/a_0099.jpg" + line[other]
        with pytest.raises(ValueError, match=f"{name}.txt has no line for 1 .*a_0099"):
            wsol_io.read_metadata(_folder(tmp_path / f"m{k}", CUB, **changes))


def test_repeated_ids(tmp_path):
    with pytest.raises(ValueError, match=r"image_ids.txt:3: .*'a.jpg' already appears on line 1"):
        wsol_io.read_metadata(_folder(tmp_path / "a", CUB, image_ids="a.jpg\nb.jpg\na.jpg"))
    labels = CUB["class_labels.txt"] + "\n001.Albatross/a_0046.jpg,4"
    with pytest.raises(ValueError, match="class_labels.txt:3: .*already appears on line 1"):
        wsol_io.read_metadata(_folder(tmp_path / "b", CUB, class_labels=labels))


@pytest.mark.parametrize(
    "box", ["385,27,60,331", "60,331,385,27", "-1,27,385,331", "60,-1,385,331"]
)
def test_bad_box_names_the_image(tmp_path, box):
    root = _folder(tmp_path, CUB, localization=f"001.Albatross/a_0002.jpg,{box}")
    with pytest.raises(ValueError, match=r"localization.txt:1: box .* of image '001.Albatr"):
        wsol_io.read_metadata(root)


@pytest.mark.parametrize(
    "localization, match",
    [
        ("x.jpg,x_m1.png,", "first line of image 'x.jpg' must name its ignore mask"),
        ("x.jpg,x_m1.png,x_i.png\nx.jpg,x_m2.png,x_i.png", ":2: image 'x.jpg' names its ignore"),
        ("x.jpg,,x_i.png", ":1: image 'x.jpg' has an empty mask path"),
        ("x.jpg,x_m1.png,x_i.png\nx.jpg,1,2,3,4", ":2: expected 3"),
        ("x.jpg,1,2,3", ":1: expected 5 fields .* or 3"),
    ],
)
def test_bad_mask_lines(tmp_path, localization, match):
    files = {"image_ids.txt": "x.jpg", "class_labels.txt": "x.jpg,0", "image_sizes.txt": ""}
    with pytest.raises(ValueError, match=match):
        wsol_io.read_metadata(_folder(tmp_path, files, localization=localization))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_ids": []}, "at least one image id"),
        ({"image_ids": ["a,b"]}, "comma or line break"),
        ({"image_ids": ["a", "a"]}, "repeat: 'a'"),
        ({"image_ids": ["a\rb"]}, "comma or line break"),  # \r ends a line when read back
        ({"image_ids": [""]}, "image id must be a non-empty string"),
        # The message names the id that repeats, not the first id.
        ({"image_ids": ["a", "b", "b"], "class_labels": [0, 0, 0]}, "repeat: 'b'"),
        ({"class_labels": [0, 1]}, "class_labels must be integers of shape"),
        ({"class_labels": [-1]}, "image 'a': class labels must be >= 0"),
        ({"class_labels": [0.0]}, "class_labels must be integers of shape"),
        # The message names the image whose label or size is wrong, not the first one.
        ({"image_ids": ["a", "b"], "class_labels": [0, -1]}, "image 'b': class labels"),
        (
            {"image_ids": ["a", "b"], "class_labels": [0, 0], "image_sizes": [(5, 5), (0, 5)]},
            "image 'b': image sizes must be positive",
        ),
        ({"boxes": [[[0, 0, 1.5, 2]]]}, "image 'a': boxes must be integer"),
        ({"boxes": [[[3, 0, 1, 2]]]}, r"box \(3, 0, 1, 2\) of image 'a'"),
        ({"boxes": [np.zeros((0, 4), int)]}, "image 'a': boxes must have shape"),
        ({"boxes": [[[0, 0, 1]]]}, "image 'a': boxes must have shape"),
        ({"boxes": []}, "boxes must have one entry per image id"),
        ({"image_sizes": [(0, 5)]}, "image 'a': image sizes must be positive"),
        ({"mask_paths": [["m.png"]]}, "give both or neither"),
        ({"mask_paths": [[]], "ignore_paths": ["i.png"]}, "image 'a': no mask path"),
        ({"mask_paths": [["m.png"]], "ignore_paths": []}, "ignore_paths must have one entry per"),
        # The ignore path is written on the image's first line too: checked like the masks.
        ({"mask_paths": [["m.png"]], "ignore_paths": ["i,png"]}, "mask path of image 'a'"),
        ({"mask_paths": [["m.png"]], "ignore_paths": [""]}, "mask path of image 'a' must be a"),
        (
            {"boxes": [[[0, 0, 1, 1]]], "mask_paths": [["m.png"]], "ignore_paths": ["i.png"]},
            "boxes or masks, not both",
        ),
    ],
)
def test_metadata_checks_its_fields(kwargs, match):
    fields = {"image_ids": ["a"], "class_labels": [0], **kwargs}
    with pytest.raises(ValueError, match=match):
        wsol_io.WsolMetadata(**fields)


def test_metadata_fields_are_int64_and_degenerate_boxes_are_boxes(tmp_path):
    """The documented dtypes: class labels, boxes and sizes come out int64 whatever integer type
    went in. A box with x0 == x1 or y0 == y1 is a one-pixel line in inclusive coordinates, which
    the reference reads as any box."""
    meta = wsol_io.WsolMetadata(
        image_ids=["a"],
        class_labels=np.array([2], np.int32),
        boxes=[np.array([[3, 4, 3, 9], [0, 5, 7, 5]], np.int16)],
        image_sizes=np.array([[10, 12]], np.uint16),
    )
    assert meta.class_labels.dtype == np.int64 and meta.image_sizes.dtype == np.int64
    assert meta.boxes[0].dtype == np.int64
    np.testing.assert_array_equal(meta.boxes[0], [[3, 4, 3, 9], [0, 5, 7, 5]])
    read = wsol_io.read_metadata(
        _folder(
            tmp_path,
            CUB,
            localization=CUB["localization.txt"] + "\n001.Albatross/a_0002.jpg,2,2,2,2",
        )
    )
    np.testing.assert_array_equal(read.boxes[1], [[1, 2, 4, 3], [2, 2, 2, 2]])


def test_box_dataset_name_is_the_reference_folder():
    """The reference's command line knows CUB and ILSVRC for boxes: ImageNet keeps ILSVRC, every
    other boxed dataset is written as CUB."""
    assert wsol_io.box_dataset_name("ilsvrc2012_loc") == "ILSVRC"
    for name in ["cub", "wsol_shapes", "caltech_birds2011"]:
        assert wsol_io.box_dataset_name(name) == "CUB"
    assert wsol_io.MASK_DATASET == "OpenImages"
