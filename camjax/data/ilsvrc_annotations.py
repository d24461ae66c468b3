"""The ILSVRC 2012 validation annotations (`ilsvrc`), read and checked.

Either official form: the XML archive `ILSVRC2012_bbox_val_v3.tgz` (`read_xml_archive`, one
PASCAL-VOC-style file per image) or Kaggle's `LOC_val_solution.csv` (`read_csv`), and the
optional synset list `LOC_synset_mapping.txt`. Boxes are 0-based pixel indices with inclusive
ends (evidence in `ilsvrc`'s module doc); `normalized_boxes` turns them into camjax's
normalized boxes with exclusive ends.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from camjax.data import downloads
from camjax.data.downloads import CorruptFileError

SYNSET = re.compile(r"n\d{8}")
_VAL_XML_PATH = re.compile(r"(?:.*/)?(ILSVRC2012_val_\d{8})\.xml")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Annotation:
    """One validation image's annotation: its synset and boxes, as the sources give them."""

    synset: str
    boxes: np.ndarray  # (K, 4) float64 (xmin, ymin, xmax, ymax), 0-based, inclusive ends
    size: tuple[int, int] | None  # (width, height) the XML states; None from the CSV


def read_xml_archive(path: Path, source: str) -> dict[str, Annotation]:
    """`ILSVRC2012_bbox_val_v3.tgz` -> {image file name: annotation}."""
    annotations = {}
    for name, data in downloads.iter_tar(path, _VAL_XML_PATH.fullmatch, source):
        if data is not None:
            image = f"{_VAL_XML_PATH.fullmatch(name)[1]}.JPEG"
            if image in annotations:  # one would silently replace the other
                raise CorruptFileError(f"{path} holds two annotations of {image}.")
            annotations[image] = _parse_xml(f"{name} in {path}", data)
    if not annotations:
        raise CorruptFileError(f"{path} holds no ILSVRC2012_val_*.xml file.")
    return annotations


def _parse_xml(where: str, data: bytes) -> Annotation:
    """One PASCAL-VOC-style annotation -> its synset, boxes and stated size."""
    try:
        root = ET.fromstring(data)
        size = (int(root.findtext("size/width")), int(root.findtext("size/height")))
        synsets, boxes = [], []
        for obj in root.iter("object"):
            synsets.append(obj.findtext("name").strip())
            boxes.append(
                [float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            )
    except (ET.ParseError, TypeError, ValueError, AttributeError) as err:
        raise CorruptFileError(f"{where} is not a valid annotation: {err}") from err
    return _annotation(where, synsets, boxes, size)


def read_csv(path: Path) -> dict[str, Annotation]:
    """`LOC_val_solution.csv` -> {image file name: annotation}."""
    annotations = {}
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header != ["ImageId", "PredictionString"]:
            raise CorruptFileError(f"{path}: the header is {header}, not ImageId,PredictionString.")
        for line, row in enumerate(rows, 2):
            where = f"{path}, line {line}"
            if not row:
                continue
            tokens = row[1].split() if len(row) == 2 else []
            if not tokens or len(tokens) % 5:
                raise CorruptFileError(f"{where}: expected ImageId,<synset xmin ymin xmax ymax>...")
            try:
                boxes = [
                    [float(t) for t in tokens[i + 1 : i + 5]] for i in range(0, len(tokens), 5)
                ]
            except ValueError as err:
                raise CorruptFileError(f"{where}: {err}") from err
            image = f"{row[0]}.JPEG"
            if image in annotations:  # one row would silently replace the other
                raise CorruptFileError(f"{where}: a second row of {row[0]}.")
            annotations[image] = _annotation(where, tokens[::5], boxes, None)
    if not annotations:
        raise CorruptFileError(f"{path} holds no annotation.")
    return annotations


def _annotation(
    where: str, synsets: list[str], boxes: list[list[float]], size: tuple[int, int] | None
) -> Annotation:
    """Checks one image's boxes: one synset, in-order corners, not left of or above 0."""
    if len(set(synsets)) != 1 or not SYNSET.fullmatch(synsets[0]):
        raise CorruptFileError(
            f"{where}: expected boxes of one synset, got {sorted(set(synsets))}."
        )
    b = np.array(boxes, np.float64).reshape(-1, 4)
    if not np.isfinite(b).all() or np.any(b[:, :2] < 0) or np.any(b[:, 2:] < b[:, :2]):
        raise CorruptFileError(f"{where}: invalid box among {b.tolist()}.")
    return Annotation(synsets[0], b, size)


def read_synset_mapping(path: Path) -> list[str]:
    """`LOC_synset_mapping.txt` -> the sorted synsets (first field of each line)."""
    synsets = [line.split()[0] for line in path.read_text("utf-8").splitlines() if line.strip()]
    bad = [s for s in synsets if not SYNSET.fullmatch(s)]
    bad += sorted(s for s, n in collections.Counter(synsets).items() if n > 1 and s not in bad)
    if bad:
        raise CorruptFileError(f"{path}: expected distinct synsets, one per line; got {bad[:5]}.")
    return sorted(synsets)


def normalized_boxes(image_id: str, annotation: Annotation, height: int, width: int) -> np.ndarray:
    """Inclusive 0-based source boxes -> (K, 4) float32 normalized (ymin, xmin, ymax, xmax).

    The exclusive ends are `xmax + 1` and `ymax + 1`, clipped to the image.
    """
    if annotation.size is not None and annotation.size != (width, height):
        log.warning(
            "%s is %dx%d but its annotation says %dx%d; boxes are scaled by the image.",
            image_id,
            width,
            height,
            *annotation.size,
        )
    x0, y0, x1, y1 = annotation.boxes.T
    if np.any(x1 >= width) or np.any(y1 >= height):
        log.warning("A box of %s ends outside its %dx%d image; clipped.", image_id, width, height)
    x1, y1 = np.minimum(x1 + 1, width), np.minimum(y1 + 1, height)
    if np.any(x0 >= x1) or np.any(y0 >= y1):
        raise CorruptFileError(f"A box of {image_id} lies outside its {width}x{height} image.")
    return np.stack([y0 / height, x0 / width, y1 / height, x1 / width], -1).astype(np.float32)
