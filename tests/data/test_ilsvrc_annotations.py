"""Tests for `camjax.data.ilsvrc_annotations`: reading and checking both official annotation
forms and the synset list. Expected values are written out by hand from the formats."""

import logging

import numpy as np
import pytest

from camjax.data import downloads, ilsvrc_annotations
from tests.data.test_ilsvrc import tar_bytes

HEADER = "ImageId,PredictionString\n"
ROW = "ILSVRC2012_val_00000001,n01440764 1 2 3 4\n"


def _csv(tmp_path, text: str, encoding: str = "utf-8"):
    path = tmp_path / "LOC_val_solution.csv"
    path.write_text(text, encoding)
    return path


def test_csv_with_a_byte_order_mark_and_blank_lines_is_read(tmp_path):
    """A BOM (a file saved by a Windows editor) and blank lines do not matter."""
    got = ilsvrc_annotations.read_csv(_csv(tmp_path, HEADER + "\n" + ROW + "\n", "utf-8-sig"))
    assert list(got) == ["ILSVRC2012_val_00000001.JPEG"]
    (annotation,) = got.values()
    assert annotation.synset == "n01440764" and annotation.size is None
    np.testing.assert_array_equal(annotation.boxes, [[1.0, 2.0, 3.0, 4.0]])


def test_csv_with_another_header_is_refused(tmp_path):
    """Without the header check, another CSV (or one with no header) would lose its first row."""
    with pytest.raises(downloads.CorruptFileError, match="not ImageId,PredictionString"):
        ilsvrc_annotations.read_csv(_csv(tmp_path, "ImageId,Boxes\n" + ROW))


@pytest.mark.parametrize(
    "tokens",
    [
        "n01440764 1 2 3",  # a box short of a corner
        "n01440764 1 2 3 4 n01440764 5 6",  # a second box cut short
        "n01440764 1 x 3 4",  # not a number
    ],
)
def test_csv_errors_name_the_line(tmp_path, tokens):
    """Line 2 is the first row; the bad row after it is line 3."""
    text = HEADER + ROW + f"ILSVRC2012_val_00000002,{tokens}\n"
    with pytest.raises(downloads.CorruptFileError, match=r"LOC_val_solution\.csv, line 3: "):
        ilsvrc_annotations.read_csv(_csv(tmp_path, text))


def test_csv_with_no_row_or_a_malformed_synset_is_refused(tmp_path):
    with pytest.raises(downloads.CorruptFileError, match="holds no annotation"):
        ilsvrc_annotations.read_csv(_csv(tmp_path, HEADER))
    with pytest.raises(downloads.CorruptFileError, match="one synset"):
        ilsvrc_annotations.read_csv(_csv(tmp_path, HEADER + "ILSVRC2012_val_00000001,n123 1 2 3 4"))


def _xml_archive(tmp_path, members: dict[str, str]):
    path = tmp_path / "ILSVRC2012_bbox_val_v3.tgz"
    path.write_bytes(tar_bytes([(name, text.encode()) for name, text in members.items()], "w:gz"))
    return path


def _xml(size: str, objects: str) -> str:
    return f"<annotation><filename>ILSVRC2012_val_00000001</filename>{size}{objects}</annotation>"


SIZE = "<size><width>500</width><height>375</height><depth>3</depth></size>"
BOX = "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox>"


def test_xml_gives_the_stated_width_and_height_and_a_stripped_synset(tmp_path):
    """Pretty-printed files put whitespace around the synset; size is (width, height)."""
    obj = f"<object>\n  <name>\n    n01440764\n  </name>\n  {BOX}</object>"
    path = _xml_archive(tmp_path, {"val/ILSVRC2012_val_00000001.xml": _xml(SIZE, obj)})
    got = ilsvrc_annotations.read_xml_archive(path, "https://x")
    assert list(got) == ["ILSVRC2012_val_00000001.JPEG"]
    (annotation,) = got.values()
    assert annotation.synset == "n01440764" and annotation.size == (500, 375)
    np.testing.assert_array_equal(annotation.boxes, [[1.0, 2.0, 3.0, 4.0]])


@pytest.mark.parametrize(
    "xml, match",
    [
        (_xml(SIZE, f"<object>{BOX}</object>"), "not a valid annotation"),  # no <name>
        (
            _xml(
                "<size><height>375</height></size>", f"<object><name>n01440764</name>{BOX}</object>"
            ),
            "not a valid annotation",
        ),  # no width
        (_xml(SIZE, ""), "one synset"),  # no object
    ],
)
def test_incomplete_xml_is_corrupt(tmp_path, xml, match):
    path = _xml_archive(tmp_path, {"val/ILSVRC2012_val_00000001.xml": xml})
    with pytest.raises(downloads.CorruptFileError, match=match):
        ilsvrc_annotations.read_xml_archive(path, "https://x")


def test_xml_archive_with_no_annotation_is_refused(tmp_path):
    path = _xml_archive(tmp_path, {"val/README.txt": "hello"})
    with pytest.raises(downloads.CorruptFileError, match=r"holds no ILSVRC2012_val_\*\.xml"):
        ilsvrc_annotations.read_xml_archive(path, "https://x")


def test_synset_mapping_with_a_repeated_synset_is_refused_naming_it(tmp_path):
    path = tmp_path / "LOC_synset_mapping.txt"
    path.write_text("n01440764 tench\nn01443537 goldfish\nn01440764 tench\n")
    with pytest.raises(downloads.CorruptFileError) as err:
        ilsvrc_annotations.read_synset_mapping(path)
    assert str(err.value) == f"{path}: expected distinct synsets, one per line; got ['n01440764']."


def test_a_second_annotation_of_an_image_is_refused_not_swapped_in(tmp_path):
    """Two CSV rows, or two XML files, for one image: the second silently replaced the first."""
    again = "ILSVRC2012_val_00000001,n01440764 5 6 7 8\n"
    with pytest.raises(downloads.CorruptFileError) as err:
        ilsvrc_annotations.read_csv(_csv(tmp_path, HEADER + ROW + again))
    assert str(err.value).endswith(
        "LOC_val_solution.csv, line 3: a second row of ILSVRC2012_val_00000001."
    )
    obj = f"<object><name>n01440764</name>{BOX}</object>"
    members = {
        "val/ILSVRC2012_val_00000001.xml": _xml(SIZE, obj),
        "copy/ILSVRC2012_val_00000001.xml": _xml(SIZE, obj),
    }
    path = _xml_archive(tmp_path, members)
    with pytest.raises(downloads.CorruptFileError) as err:
        ilsvrc_annotations.read_xml_archive(path, "https://x")
    assert str(err.value) == f"{path} holds two annotations of ILSVRC2012_val_00000001.JPEG."


@pytest.mark.parametrize("box", ["nan 2 3 4", "1 2 inf 4", "1 -inf 3 4"])
def test_a_box_corner_that_is_not_finite_is_refused(tmp_path, box):
    """Comparisons with NaN are all false: without its own check a NaN corner passed the order
    checks and came out as a NaN box."""
    text = HEADER + f"ILSVRC2012_val_00000001,n01440764 {box}\n"
    with pytest.raises(downloads.CorruptFileError, match=r"line 2: invalid box among"):
        ilsvrc_annotations.read_csv(_csv(tmp_path, text))


def test_a_box_starting_at_the_bottom_edge_is_refused():
    """Rows as well as columns: a box whose top is past the last row lies outside."""
    below = ilsvrc_annotations.Annotation("n01440764", np.array([[0.0, 8.0, 3.0, 9.0]]), None)
    with pytest.raises(downloads.CorruptFileError, match="lies outside its 10x8 image"):
        ilsvrc_annotations.normalized_boxes("x", below, 8, 10)


def test_size_warning_compares_width_and_height_the_right_way(caplog):
    """The XML states (width, height): a 10x8 image matching it gives no warning."""
    box = np.array([[0.0, 0.0, 1.0, 1.0]])
    with caplog.at_level(logging.WARNING):
        ilsvrc_annotations.normalized_boxes(
            "a", ilsvrc_annotations.Annotation("n01440764", box, (10, 8)), 8, 10
        )
        assert "annotation says" not in caplog.text
        ilsvrc_annotations.normalized_boxes(
            "b", ilsvrc_annotations.Annotation("n01440764", box, (8, 10)), 8, 10
        )
    assert "b is 10x8 but its annotation says 8x10" in caplog.text
