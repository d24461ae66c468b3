"""Metadata folders of the reference WSOL evaluator (clovaai/wsolevaluation, Choe et al.).

This module reads and writes the reference's metadata folders (CVPR 2020), so that camjax can
evaluate a reference benchmark split (CUB, ILSVRC, OpenImages) with ``camjax.localization.wsol``
and the reference's ``evaluation.py`` can evaluate camjax CAMs or a camjax split. The facts
below were read from the reference's ``data_loaders.py``, ``evaluation.py`` and the released
``metadata/`` folders.

**Metadata folder** (``metadata/<dataset>/<split>/``, e.g. ``metadata/CUB/test``): four UTF-8
text files, one record per line, fields separated by commas (every comma splits, so ids cannot
hold one). The reference opens them with Python's universal newlines and strips nothing but the
line ends; the released files use ``\\n`` and have no final newline. Its readers keep dicts
keyed by image id, so only ``image_ids.txt`` fixes an order: the evaluation order, kept here.

* ``image_ids.txt``: ``<image_id>``, the image path relative to the dataset root
  (``val2/0/0.jpeg``).
* ``class_labels.txt``: ``<image_id>,<label>``, an integer class index.
* ``image_sizes.txt``: ``<image_id>,<width>,<height>`` of the original image. Needed to resize
  boxes; empty for OpenImages, whose masks are resized without it.
* ``localization.txt``, one of two forms:

  - boxes (CUB, ILSVRC): ``<image_id>,<x0>,<y0>,<x1>,<y1>``, integers in the original
    image's pixels, one line per box (the ImageNetV2 val split has up to 259 boxes for one image);
  - masks (OpenImages): ``<image_id>,<mask_path>,<ignore_path>``, one line per instance mask;
    the image's first line names its ignore mask and its later lines leave that field empty.
    Paths are relative to ``<mask_root>/OpenImages``.

  Train splits ship an empty ``localization.txt``.

The GT boxes at the evaluation size, the score maps and the masks that go with these folders
are in ``camjax.localization.wsol_frame``.
"""

import dataclasses
import os
import re
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

IMAGE_IDS = "image_ids.txt"
CLASS_LABELS = "class_labels.txt"
IMAGE_SIZES = "image_sizes.txt"
LOCALIZATION = "localization.txt"

_CONTENTS = {
    IMAGE_IDS: "one image id per line, in evaluation order: <image_id>",
    CLASS_LABELS: "one line per image: <image_id>,<label>",
    IMAGE_SIZES: "one line per image: <image_id>,<width>,<height>",
    LOCALIZATION: (
        "one line per box, <image_id>,<x0>,<y0>,<x1>,<y1>, or one line per mask, "
        "<image_id>,<mask_path>,<ignore_path>"
    ),
}
_BOX_FIELDS = 5
_MASK_FIELDS = 3
_INT = re.compile(r"-?[0-9]+")


# --------------------------------------------------------------------------------------------
# The metadata of one split.


@dataclasses.dataclass(eq=False)
class WsolMetadata:
    """The metadata of one split, aligned with ``image_ids``.

    Attributes:
      image_ids: N ids in evaluation order (image paths relative to the dataset root).
      class_labels: (N,) int64 class indices.
      boxes: None, or N int64 arrays (K_i >= 1, 4) of ``(x0, y0, x1, y1)`` inclusive pixel
        coordinates of the original image, in file order.
      image_sizes: None, or (N, 2) int64 ``(width, height)`` of the original images: the
        file's order, mind it is not camjax's (height, width).
      mask_paths: None, or N tuples (>= 1) of instance mask paths (OpenImages).
      ignore_paths: None, or N ignore-mask paths; given exactly when ``mask_paths`` is.

    Build one from parallel lists to write a camjax split with ``write_metadata``; the fields
    are converted and checked on construction.
    """

    image_ids: tuple[str, ...]
    class_labels: np.ndarray
    boxes: tuple[np.ndarray, ...] | None = None
    image_sizes: np.ndarray | None = None
    mask_paths: tuple[tuple[str, ...], ...] | None = None
    ignore_paths: tuple[str, ...] | None = None

    def __post_init__(self):
        self.image_ids = tuple(self.image_ids)
        n = len(self.image_ids)
        if n == 0:
            raise ValueError("a split needs at least one image id.")
        for image_id in self.image_ids:
            check_field(image_id, "image id")
        if len(set(self.image_ids)) != n:
            raise ValueError(f"image ids repeat: {first_repeat(self.image_ids)!r}.")

        self.class_labels = _int_array(self.class_labels, "class_labels", (n,))
        if np.any(self.class_labels < 0):
            bad = self.image_ids[int(np.argmax(self.class_labels < 0))]
            raise ValueError(f"image {bad!r}: class labels must be >= 0.")

        if self.boxes is not None:
            self.boxes = tuple(self.boxes)
            _check_len(self.boxes, n, "boxes")
            self.boxes = tuple(
                _checked_boxes(b, image_id)
                for b, image_id in zip(self.boxes, self.image_ids, strict=True)
            )
        if self.image_sizes is not None:
            self.image_sizes = _int_array(self.image_sizes, "image_sizes", (n, 2))
            if np.any(self.image_sizes <= 0):
                bad = self.image_ids[int(np.argmax(np.any(self.image_sizes <= 0, axis=1)))]
                raise ValueError(f"image {bad!r}: image sizes must be positive.")

        if (self.mask_paths is None) != (self.ignore_paths is None):
            raise ValueError("mask_paths and ignore_paths go together: give both or neither.")
        if self.mask_paths is not None:
            if self.boxes is not None:
                raise ValueError("localization holds boxes or masks, not both.")
            self.mask_paths = tuple(tuple(p) for p in self.mask_paths)
            self.ignore_paths = tuple(self.ignore_paths)
            _check_len(self.mask_paths, n, "mask_paths")
            _check_len(self.ignore_paths, n, "ignore_paths")
            for image_id, masks, ignore in zip(
                self.image_ids, self.mask_paths, self.ignore_paths, strict=True
            ):
                if not masks:
                    raise ValueError(f"image {image_id!r}: no mask path.")
                for path in (*masks, ignore):
                    check_field(path, f"mask path of image {image_id!r}")

    def __len__(self) -> int:
        return len(self.image_ids)


def check_field(text: str, what: str) -> None:
    """A value must survive the reference's line and comma splitting unchanged."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"{what} must be a non-empty string, got {text!r}.")
    if any(c in text for c in ",\n\r"):
        raise ValueError(f"{what} {text!r} holds a comma or line break, which the format splits.")


def first_repeat(items: Sequence[str]) -> str:
    """The first item seen a second time (items must repeat one)."""
    seen = set()
    return next(item for item in items if item in seen or seen.add(item))  # add() is None


def _check_len(items: Sequence, n: int, name: str) -> None:
    if len(items) != n:
        raise ValueError(f"{name} must have one entry per image id ({n}), got {len(items)}.")


def _int_array(values, name: str, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(values)
    if a.shape != shape or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be integers of shape {shape}, got {a.dtype} {a.shape}.")
    return a.astype(np.int64)


def _checked_boxes(boxes, image_id: str) -> np.ndarray:
    b = np.asarray(boxes)
    if b.ndim != 2 or b.shape[0] == 0 or b.shape[1] != 4:
        raise ValueError(f"image {image_id!r}: boxes must have shape (K >= 1, 4), got {b.shape}.")
    # The files hold integers (the reference parses them with int()); fractions would be lost.
    if not np.issubdtype(b.dtype, np.integer):
        raise ValueError(f"image {image_id!r}: boxes must be integer pixels, got {b.dtype}.")
    for box in b:
        _check_box(box, image_id)
    return b.astype(np.int64)


def _check_box(box, image_id: str, where: str = "") -> None:
    x0, y0, x1, y1 = (int(c) for c in box)
    if min(x0, y0) < 0 or x1 < x0 or y1 < y0:
        raise ValueError(
            f"{where}box {(x0, y0, x1, y1)} of image {image_id!r} must be (x0, y0, x1, y1) with "
            "0 <= x0 <= x1 and 0 <= y0 <= y1."
        )


# --------------------------------------------------------------------------------------------
# Reading.


def _lines(path: Path, required: bool = True) -> list[tuple[int, str]]:
    """(1-based line number, line) of a metadata file; [] for a missing optional file.

    Like the reference's ``open()``, this reads with universal newlines: ``\\n``, ``\\r\\n``
    and ``\\r`` all end a line."""
    if not path.is_file():
        if not required:
            return []
        raise FileNotFoundError(
            f"{path} is missing; it should hold {_CONTENTS[path.name]} "
            "(the format of clovaai/wsolevaluation's metadata folders)."
        )
    text = path.read_text(encoding="utf-8")
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":  # A final newline ends the last line; it does not start another.
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line:
            raise ValueError(f"{path}:{number}: empty line.")
    return list(enumerate(lines, start=1))


def _split(path: Path, number: int, line: str, count: int) -> list[str]:
    fields = line.split(",")
    if len(fields) != count:
        raise ValueError(
            f"{path}:{number}: expected {count} comma-separated fields "
            f"({_CONTENTS[path.name]}), got {line!r}."
        )
    return fields


def _parse_int(path: Path, number: int, text: str, what: str) -> int:
    if not _INT.fullmatch(text):
        raise ValueError(f"{path}:{number}: {what} must be an integer, got {text!r}.")
    return int(text)


def _check_known(path: Path, number: int, image_id: str, known: dict[str, int]) -> None:
    if image_id not in known:
        raise ValueError(f"{path}:{number}: image id {image_id!r} is not listed in {IMAGE_IDS}.")


def _check_covered(path: Path, image_ids: Sequence[str], found) -> None:
    missing = [i for i in image_ids if i not in found]
    if missing:
        raise ValueError(
            f"{path} has no line for {len(missing)} image id(s) of {IMAGE_IDS}, "
            f"e.g. {missing[0]!r}."
        )


def _read_per_image(
    path: Path,
    count: int,
    known: dict[str, int] | None = None,
    parse: Callable[[int, list[str]], object] | None = None,
    required: bool = True,
) -> dict:
    """{image id: parse(line number, fields after the id)} of a one-line-per-image file; for
    image_ids.txt (count 1, known None) {image id: line number}, in file order."""
    values, first_line = {}, {}
    for number, line in _lines(path, required):
        if count == 1 and "," in line:
            raise ValueError(f"{path}:{number}: image ids cannot hold commas: {line!r}.")
        image_id, *rest = _split(path, number, line, count)
        if known is not None:
            _check_known(path, number, image_id, known)
        if image_id in first_line:
            raise ValueError(
                f"{path}:{number}: image id {image_id!r} already appears on line "
                f"{first_line[image_id]}."
            )
        first_line[image_id] = number
        values[image_id] = parse(number, rest) if parse else number
    return values


def read_metadata(metadata_dir: str | os.PathLike) -> WsolMetadata:
    """Reads a reference metadata folder, e.g. ``wsolevaluation/metadata/ILSVRC/val``.

    ``image_ids.txt``, ``class_labels.txt`` and ``localization.txt`` must exist (the last may
    be empty, as for train splits); a missing or empty ``image_sizes.txt`` gives
    ``image_sizes=None``. The localization form follows the first line: 5 fields are a box,
    3 fields a mask (whose mask path is not a number). Every id of the other files must be in
    ``image_ids.txt``, and every image id needs a class label and, where the file is not
    empty, a size and a localization.

    Raises:
      FileNotFoundError: a required file is missing (the message says what it should hold).
      ValueError: a malformed line (file and line number), an id that is unknown, repeated
        or left out, or a box breaking ``0 <= x0 <= x1, 0 <= y0 <= y1`` (naming the image id).
    """
    root = Path(metadata_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"metadata folder {root} does not exist.")
    image_ids = tuple(_read_per_image(root / IMAGE_IDS, 1))
    if not image_ids:
        raise ValueError(f"{root / IMAGE_IDS} lists no image ids.")
    known = {image_id: k for k, image_id in enumerate(image_ids)}

    labels_path = root / CLASS_LABELS

    def parse_label(number, fields):
        return _parse_int(labels_path, number, fields[0], "the class label")

    labels = _read_per_image(labels_path, 2, known, parse_label)
    _check_covered(labels_path, image_ids, labels)

    sizes_path = root / IMAGE_SIZES

    def parse_size(number, fields):
        w, h = (_parse_int(sizes_path, number, f, "an image size") for f in fields)
        if w <= 0 or h <= 0:
            raise ValueError(f"{sizes_path}:{number}: image size {w}x{h} is not positive.")
        return w, h

    sizes = _read_per_image(sizes_path, 3, known, parse_size, required=False)
    if sizes:
        _check_covered(sizes_path, image_ids, sizes)

    boxes, masks, ignores = _read_localization(root / LOCALIZATION, image_ids, known)
    return WsolMetadata(
        image_ids=image_ids,
        class_labels=np.array([labels[i] for i in image_ids], np.int64),
        boxes=boxes,
        image_sizes=np.array([sizes[i] for i in image_ids], np.int64) if sizes else None,
        mask_paths=masks,
        ignore_paths=ignores,
    )


def _localization_form(path: Path, first_line: str) -> int:
    """The field count of the file's form, from its first line."""
    fields = first_line.split(",")
    if len(fields) == _BOX_FIELDS:
        return _BOX_FIELDS
    # A number where the mask path should be is a box line that lost fields, not a mask.
    if len(fields) == _MASK_FIELDS and not _INT.fullmatch(fields[1]):
        return _MASK_FIELDS
    raise ValueError(
        f"{path}:1: expected {_BOX_FIELDS} fields (<image_id>,<x0>,<y0>,<x1>,<y1>) or "
        f"{_MASK_FIELDS} (<image_id>,<mask_path>,<ignore_path>), got {first_line!r}."
    )


def _read_localization(path: Path, image_ids: tuple[str, ...], known: dict[str, int]):
    """(boxes, mask_paths, ignore_paths) aligned with image_ids; all None for an empty file."""
    lines = _lines(path)
    if not lines:
        return None, None, None
    count = _localization_form(path, lines[0][1])
    entries: dict[str, list] = {}
    ignores: dict[str, str] = {}
    for number, line in lines:
        image_id, *rest = _split(path, number, line, count)
        _check_known(path, number, image_id, known)
        if count == _BOX_FIELDS:
            box = [_parse_int(path, number, f, "a box coordinate") for f in rest]
            _check_box(box, image_id, where=f"{path}:{number}: ")
            entries.setdefault(image_id, []).append(box)
            continue
        mask, ignore = rest
        if not mask:
            raise ValueError(f"{path}:{number}: image {image_id!r} has an empty mask path.")
        # The reference keeps the ignore path of an image's first line and asserts that later
        # lines leave it empty; without one its mask loader would read the mask root itself.
        if image_id not in entries and not ignore:
            raise ValueError(
                f"{path}:{number}: the first line of image {image_id!r} must name its ignore mask."
            )
        if image_id in entries and ignore:
            raise ValueError(
                f"{path}:{number}: image {image_id!r} names its ignore mask again; only its "
                "first line may."
            )
        entries.setdefault(image_id, []).append(mask)
        if ignore:
            ignores[image_id] = ignore
    _check_covered(path, image_ids, entries)
    if count == _BOX_FIELDS:
        return tuple(np.asarray(entries[i], np.int64) for i in image_ids), None, None
    return None, tuple(tuple(entries[i]) for i in image_ids), tuple(ignores[i] for i in image_ids)


# --------------------------------------------------------------------------------------------
# Writing.


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Writes a file under a temporary name in its folder, then renames it into place.

    ``os.replace`` is atomic within a file system, so a reader (or a crash) sees the old file
    or the complete new one, never a partial one. The temporary name starts with a dot and
    ends in ``.tmp`` so that it never looks like a score map or a metadata file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        # "xb" creates the file with the usual umask permissions (mkstemp would make it 0600).
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # The data must be on disk before the name points to it.
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_metadata(metadata_dir: str | os.PathLike, metadata: WsolMetadata) -> None:
    """Writes the four files of a reference metadata folder (created if needed).

    Lines follow ``metadata.image_ids``; an image's boxes or masks are consecutive lines.
    Missing parts give empty files, as in the released folders: ``image_sizes.txt`` without
    sizes (the reference's box evaluator needs them, its mask evaluator does not), and
    ``localization.txt`` without boxes or masks. Each file is written atomically.

    The reference's command line reads ``<metadata_root>/<dataset>/<split>`` and picks its
    evaluator by the dataset name (``CUB`` or ``ILSVRC``: boxes, ``OpenImages``: masks), so
    write box splits under a ``CUB`` or ``ILSVRC`` folder for it.
    """
    root = Path(metadata_dir)
    ids = metadata.image_ids
    labels = [f"{i},{label}" for i, label in zip(ids, metadata.class_labels, strict=True)]
    sizes = []
    if metadata.image_sizes is not None:
        sizes = [f"{i},{w},{h}" for i, (w, h) in zip(ids, metadata.image_sizes, strict=True)]
    localization = []
    if metadata.boxes is not None:
        for image_id, boxes in zip(ids, metadata.boxes, strict=True):
            localization += [f"{image_id},{x0},{y0},{x1},{y1}" for x0, y0, x1, y1 in boxes]
    if metadata.mask_paths is not None:
        for image_id, masks, ignore in zip(
            ids, metadata.mask_paths, metadata.ignore_paths, strict=True
        ):
            localization += [
                f"{image_id},{m},{ignore if k == 0 else ''}" for k, m in enumerate(masks)
            ]
    files = {IMAGE_IDS: ids, CLASS_LABELS: labels, IMAGE_SIZES: sizes, LOCALIZATION: localization}
    for name, lines in files.items():
        # No final newline, as the released files; the reference reads either.
        data = "\n".join(lines).encode("utf-8")
        atomic_write(root / name, lambda f, data=data: f.write(data))


MASK_DATASET = "OpenImages"  # the only dataset name for which the reference scores masks


def box_dataset_name(dataset: str) -> str:
    """The dataset name under which the reference's command line scores our box metadata.

    It accepts CUB, ILSVRC and OpenImages (masks) and runs the same box evaluator for the first
    two, so ImageNet keeps its name and every other boxed dataset (wsol_shapes, catalog ones)
    is written as CUB: `--dataset_name CUB` then scores it with no renaming.
    """
    return "ILSVRC" if dataset == "ilsvrc2012_loc" else "CUB"
