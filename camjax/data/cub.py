"""CUB-200-2011 (Caltech-UCSD Birds) as a tfds dataset built from the official archives.

The builder `cub_200_2011` (named so as not to clash with the tfds catalog's
`caltech_birds2011`) reads the archives a user downloaded by hand, streaming their members
with `tarfile` (nothing is extracted to disk, nothing is fetched from the network), and writes
ArrayRecord files that `Cub2002011.data_sources` reads by random access without TensorFlow.

Inputs, in the manual directory (see `SOURCES` for where they come from):

* `CUB_200_2011.tgz` (required): `CUB_200_2011/images/<class dir>/<file>.jpg` and the text
  files `images.txt` (`<id> <path>`), `image_class_labels.txt` (`<id> <class id>`, 1-based),
  `train_test_split.txt` (`<id> <is_train>`), `bounding_boxes.txt` (`<id> <x> <y> <w> <h>`)
  and `classes.txt` (`<class id> <class dir>`).
* `segmentations.tgz` (optional): `segmentations/<class dir>/<file>.png`, grey masks.

Configs: `boxes` (images, labels, boxes) and `masks` (the same plus `mask`, needs
`segmentations.tgz`). A config rather than an optional feature, because tfds fixes the feature
set of a dataset; `prepare` picks `masks` when the segmentation archive is there.

Examples (splits `train`, 5,994 images, and `test`, 5,794, from `train_test_split.txt`; each
in `images.txt` order):

* `image`: the original JPEG bytes, not re-encoded, of an RGB or greyscale JPEG (tfds repeats
  greyscale to 3 channels); any other (a CMYK JPEG) as a lossless PNG of Pillow's RGB
  conversion, the pixels the reference's `convert('RGB')` reads (`downloads.checked_image`;
  OpenCV's own conversion rounds differently). Decoded on read to (H, W, 3) uint8.
* `height`, `width`: int32, the size of the stored pixel grid.
* `label`: 0-based class (`class id - 1`); `ClassLabel` names are the class dirs of
  `classes.txt` (`001.Black_footed_Albatross`).
* `image_id`: the path relative to `images/`, as in the reference WSOL evaluator's
  `metadata/CUB/*/image_ids.txt` (`200.Common_Yellowthroat/Common_Yellowthroat_0003_190521.jpg`),
  so its splits can be joined; `cub_id`: int32, the 1-based id of `images.txt`.
* `objects/bbox`: one float32 normalized `(ymin, xmin, ymax, xmax)` with exclusive ends, the
  convention of every camjax dataset (`ymax = y1 / H`, `y1` one past the last row).
* `mask` (config `masks`): (H, W, 1) uint8 in {0, 255}.

Box convention, checked against the reference WSOL evaluator (clovaai/wsolevaluation): its
`metadata/CUB/{train,test}/localization.txt` holds `(x, y, x + w, y + h)` of
`bounding_boxes.txt` (image 1, `60 27 325 304`, is `60,27,385,331`), and its
`calculate_multiple_iou` reads boxes as inclusive pixel corners (areas `x1 - x0 + 1`). The
numbers agree: over all 11,788 boxes `x` reaches 0 (73 boxes) and `x + w` reaches `W - 1` (156
boxes at the right edge) but never `W`, likewise for y. So `(x, y)` is the 0-based top-left
pixel and `x + w`, `y + h` the last column and row; stored exclusive ends are `x + w + 1` and
`y + h + 1` (clipped to the image), and the reference's inclusive box is the stored pixel box
minus one at the ends. (The tfds catalog builder stores `(x + w) / W`, one pixel smaller.)

Mask convention: a pixel is foreground when its grey value is above 0, the reading of the
WSOL works that use these masks: the reference's `get_mask` keeps `mask > 0.5` of the 0-255
values and CALM (naver-ai/calm, `util_cub_trait.py`) keeps `> 0` of the grey image. The masks
average several annotators, so intermediate greys are partial agreement; we binarize at the
original resolution.

Errors: missing archives or archive members raise `MissingFilesError` listing them before any
example is written; an undecodable image or mask raises `CorruptFileError` naming the member,
or with `skip_corrupt=True` is skipped, logged, counted, and recorded in the dataset's
`info.metadata['skipped_corrupt']`. Both errors, and the writer, are `camjax.data.manual`'s.

Writing: the examples come in archive order and are stored in `images.txt` order (the key is
the CUB id) by `manual.ManualBuilder`'s streaming writer, which needs no TensorFlow whatever
the split's size (tfds's own writer needs it past 1 GB).

WSOL splits (`Cub2002011.wsol_sources`, what `camjax.data.load_data_sources('cub_200_2011', ...)`
gives):
the protocol of Choe et al. (CVPR 2020) picks CAM thresholds and hyperparameters on a split
with boxes that is neither the test split nor, here, the training images. Its own CUB
validation set (1,000 images, 5 per class, "train-fullsup") is a separate download, so
`validation` is instead a held-out part of the official train split of the same size: per
class the 5 images (`validation_per_class`) whose `image_id` has the lowest SHA-256
(`subsets.holdout_per_class`, deterministic). `train` is the other 4,994 official train images
and `test` the official 5,794 test images, so no image is in two splits. Numbers on `test` are
comparable to the reference's; a model trained on `train` has seen 1,000 fewer images than one
trained on the whole official train split.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from camjax.data import downloads, manual
from camjax.data.downloads import CorruptFileError

DATASET_NAME = "cub_200_2011"
NUM_CLASSES = 200
IMAGES_ARCHIVE = "CUB_200_2011.tgz"
SEGMENTATIONS_ARCHIVE = "segmentations.tgz"
SOURCES = {
    IMAGES_ARCHIVE: "the CUB-200-2011 page https://www.vision.caltech.edu/datasets/cub_200_2011/ "
    "(https://data.caltech.edu/records/65de6-vp158)",
    SEGMENTATIONS_ARCHIVE: "the CUB-200-2011 page https://www.vision.caltech.edu/datasets/"
    "cub_200_2011/ (https://data.caltech.edu/records/w9d68-gec53)",
}
_ROOT = "CUB_200_2011"
_TEXT_FILES = (
    "images.txt",
    "image_class_labels.txt",
    "train_test_split.txt",
    "bounding_boxes.txt",
    "classes.txt",
)
VALIDATION_PER_CLASS = 5  # held out of each class of train: the reference's 1,000 images
_CUBV2 = re.compile(r"[^/]+/\d+\.jpg")  # Flickr photo ids, where official files have names

log = logging.getLogger(__name__)

_DESCRIPTION = """\
Caltech-UCSD Birds-200-2011: 11,788 photographs of 200 bird species, each with one species
label, one bounding box and (from a separate archive) a segmentation mask of the bird. Built
from the official archives placed in the manual directory; images are the original JPEGs (a
non-RGB one, CMYK, as a PNG of its RGB conversion).
"""

_CITATION = """\
@techreport{WahCUB_200_2011,
  title = {The Caltech-UCSD Birds-200-2011 Dataset},
  author = {Wah, C. and Branson, S. and Welinder, P. and Perona, P. and Belongie, S.},
  institution = {California Institute of Technology},
  number = {CNS-TR-2011-001},
  year = {2011},
}
"""


@dataclasses.dataclass(eq=False)
class CubConfig(tfds.core.BuilderConfig):
    """`masks` adds the binarized segmentation mask (needs `segmentations.tgz`)."""

    masks: bool = False


@dataclasses.dataclass(frozen=True)
class _Record:
    cub_id: int
    image_id: str
    label: int
    is_train: bool
    box: tuple[float, float, float, float]  # x, y, w, h as in bounding_boxes.txt


class Cub2002011(manual.ManualBuilder):
    """tfds builder for `cub_200_2011`; the first config (`boxes`) is the default."""

    name = DATASET_NAME
    VERSION = tfds.core.Version("1.0.1")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.0.1": "A non-RGB JPEG (CMYK) is stored as a PNG of Pillow's RGB conversion.",
    }
    BUILDER_CONFIGS = [
        CubConfig(name="boxes", description="Images, labels and boxes."),
        CubConfig(name="masks", description="Also the binarized segmentation mask.", masks=True),
    ]
    CONFIG_FLAG = "masks"
    FLAG_INPUT = SEGMENTATIONS_ARCHIVE
    ALIASES = ("cub", "CUB")
    NUM_CLASSES = NUM_CLASSES
    OFFICIAL_TRAIN_IMAGES = 5_994
    HOLDOUT = ("train", "train")  # validation: 5 per class of the official train split
    VALIDATION_PER_CLASS = VALIDATION_PER_CLASS
    PREPARE_COMMAND = "python -m camjax.data.prepare cub --manual_dir DIR"
    PREPARE_INPUTS = f"DIR holding {IMAGES_ARCHIVE} (and {SEGMENTATIONS_ARCHIVE} for masks)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = downloads.download_instructions(
        PREPARE_COMMAND, SOURCES, f"{SEGMENTATIONS_ARCHIVE} is only needed for the `masks` config."
    )

    ORDER_BY_KEY = True  # the CUB ids: images.txt order, whatever the archive order

    def _make_plan(self, manual_dir: Path) -> tuple[dict[str, Path], list[str], list[_Record]]:
        """Archive paths, class names and records; raises if anything needed is missing.

        A full pass over each archive (a compressed tar cannot seek), so the result is kept.
        """
        archives = archive_paths(manual_dir, masks=self.builder_config.masks)
        return (archives, *_read_index(archives))

    @classmethod
    def default_flag(cls, manual_dir: Path, data_dir: str | None) -> bool:
        """`masks` when `segmentations.tgz` is there, whatever is prepared."""
        del data_dir
        return (manual_dir / SEGMENTATIONS_ARCHIVE).is_file()

    @staticmethod
    def reference_id(image_id: str) -> tuple[str | None, str]:
        """A reference metadata id -> (split or None: any, our `image_id`): the same path."""
        return None, image_id

    @staticmethod
    def explain_missing(missing: list[str]) -> str:
        """Why reference ids are not here: the reference's `val` is CUBV2, not CUB-200-2011."""
        if not any(_CUBV2.fullmatch(i) for i in missing):
            return ""
        return (
            "\nThe reference's CUB `val` split (train-fullsup, 5 images per class) is CUBV2: "
            "images collected by the reference from Flickr and shipped as CUBV2.tar "
            "(https://github.com/clovaai/wsolevaluation, dataset/prepare_cub.sh), a separate "
            "download that is not in CUB_200_2011.tgz, so cub_200_2011 does not hold them. "
            "camjax's own `validation` split (`wsol_sources`) is held out of the official "
            "train split instead."
        )

    def _info(self) -> tfds.core.DatasetInfo:
        # Label names come from classes.txt when preparing.
        features = {"cub_id": np.int32}
        if self.builder_config.masks:
            features["mask"] = tfds.features.Image(shape=(None, None, 1), encoding_format="png")
        return self._manual_info(
            description=_DESCRIPTION,
            homepage="https://www.vision.caltech.edu/datasets/cub_200_2011/",
            citation=_CITATION,
            num_classes=NUM_CLASSES,
            features=features,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        archives, class_names, records = self.plan(Path(dl_manager.manual_dir))
        self.info.features["label"].names = class_names
        return {
            split: self._generate_examples(
                archives, split, [r for r in records if r.is_train == train]
            )
            for split, train in (("train", True), ("test", False))
        }

    def _generate_examples(
        self, archives: Mapping[str, Path], split: str, records: list[_Record]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        wanted = {f"{_ROOT}/images/{r.image_id}": r for r in records}
        with_masks = self.builder_config.masks
        masks = {}
        if with_masks:
            masks = dict(
                _iter_members(archives[SEGMENTATIONS_ARCHIVE], set(map(_mask_member, records)))
            )

        def encode(item: tuple[str, bytes]) -> dict[str, Any]:
            member, data = item
            mask_member = _mask_member(wanted[member])
            mask = (mask_member, masks[mask_member]) if with_masks else None
            return _encode_example(wanted[member], member, data, mask)

        for (member, _), example in self._skipping_corrupt(
            split,
            _iter_members(archives[IMAGES_ARCHIVE], wanted),
            lambda item: wanted[item[0]].image_id,
            encode,
            total=len(records),
        ):
            yield wanted[member].cub_id, example


def archive_paths(manual_dir: Path, *, masks: bool) -> dict[str, Path]:
    """The archives in `manual_dir`; raises `MissingFilesError` naming each one not there."""
    needs = [(IMAGES_ARCHIVE,)] + ([(SEGMENTATIONS_ARCHIVE,)] if masks else [])
    present = downloads.present_inputs(DATASET_NAME, manual_dir, needs, SOURCES)
    return {name: present[name] for (name,) in needs}


def _read_index(archives: Mapping[str, Path]) -> tuple[list[str], list[_Record]]:
    """Class names and the records in id order; checks that every member needed is there."""
    images = archives[IMAGES_ARCHIVE]
    text_members = [f"{_ROOT}/{name}" for name in _TEXT_FILES]
    log.info("Indexing %s.", images)
    members, texts, problem = _scan(images, set(text_members))
    _require_members(images, text_members, texts, problem)  # _check_members warns below
    class_names, records = _parse_tables({m.split("/")[-1]: texts[m] for m in text_members})
    _check_members(images, [f"{_ROOT}/images/{r.image_id}" for r in records], members, problem)
    if SEGMENTATIONS_ARCHIVE in archives:
        path = archives[SEGMENTATIONS_ARCHIVE]
        log.info("Indexing %s.", path)
        members, _, problem = _scan(path, set())
        _check_members(path, list(map(_mask_member, records)), members, problem)
    return class_names, records


def _check_members(
    archive: Path, needed: list[str], present: Collection[str], problem: str | None
) -> None:
    """`_require_members`, then, if the scan stopped early, one warning that nothing needed
    was lost: the archive's last check."""
    _require_members(archive, needed, present, problem)
    if problem:
        log.warning("%s; every member needed comes before that, going on.", problem)


def _require_members(
    archive: Path, needed: list[str], present: Collection[str], problem: str | None
) -> None:
    """Raises `MissingFilesError` listing the `needed` members not `present`.

    `problem` is why the scan of the archive stopped early (a truncated download), if it did.
    """
    missing = [m for m in needed if m not in present]
    if missing:
        why = f" ({problem})" if problem else ""
        raise downloads.incomplete_error(archive, missing, SOURCES[archive.name], why=why)


def _parse_tables(texts: Mapping[str, bytes]) -> tuple[list[str], list[_Record]]:
    """The five metadata tables -> class names (index = label) and records sorted by id."""
    tables = {name: _table(name, data) for name, data in texts.items()}
    classes = tables["classes.txt"]
    if sorted(classes) != list(range(1, NUM_CLASSES + 1)):
        raise CorruptFileError(f"classes.txt must list class ids 1..{NUM_CLASSES}.")
    class_names = [classes[i][0] for i in range(1, NUM_CLASSES + 1)]
    images = tables["images.txt"]
    for name in ("image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt"):
        absent = sorted(set(images) - set(tables[name]))
        if absent:
            raise CorruptFileError(
                f"{name} has no line for image id(s) {absent[: downloads.MAX_LISTED]}."
            )
    records = []
    for cub_id in sorted(images):
        try:
            image_id = images[cub_id][0]
            label = int(tables["image_class_labels.txt"][cub_id][0]) - 1
            is_train = int(tables["train_test_split.txt"][cub_id][0]) == 1
            x, y, w, h = map(float, tables["bounding_boxes.txt"][cub_id][:4])
        except (IndexError, ValueError) as err:
            raise CorruptFileError(f"Malformed metadata for image id {cub_id}: {err}") from err
        if not 0 <= label < NUM_CLASSES or image_id.split("/")[0] != class_names[label]:
            raise CorruptFileError(f"Image id {cub_id} ({image_id}) has class id {label + 1}.")
        records.append(_Record(cub_id, image_id, label, is_train, (x, y, w, h)))
    return class_names, records


def _table(name: str, data: bytes) -> dict[int, list[str]]:
    """`<int id> <fields...>` lines -> {id: fields}."""
    table = {}
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            key = int(fields[0])
        except ValueError as err:
            raise CorruptFileError(f"{name}, line {number}: {line!r} has no integer id.") from err
        if key in table or len(fields) < 2:
            raise CorruptFileError(f"{name}, line {number}: duplicate or empty {line!r}.")
        table[key] = fields[1:]
    return table


def _encode_example(
    record: _Record, member: str, data: bytes, mask: tuple[str, bytes] | None
) -> dict[str, Any]:
    """Checks and converts one image (and mask) to the builder's features."""
    image, height, width = downloads.checked_image(member, data)
    example = {
        "image": image,
        "height": height,
        "width": width,
        "label": record.label,
        "image_id": record.image_id,
        "cub_id": record.cub_id,
        "objects": {"bbox": _normalized_box(record, height, width)[None]},
    }
    if mask is not None:
        example["mask"] = _binary_mask(*mask, (width, height))
    return example


def _normalized_box(record: _Record, height: int, width: int) -> np.ndarray:
    """`bounding_boxes.txt` (x, y, w, h), inclusive of pixel x + w -> tfds (4,) float32."""
    x, y, w, h = record.box
    # The clip never binds on the official boxes (x + w <= W - 1); it keeps tfds's [0, 1].
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w + 1, width), min(y + h + 1, height)
    if not (x0 < x1 and y0 < y1):
        raise CorruptFileError(
            f"bounding_boxes.txt: box {record.box} of {record.image_id} "
            f"is outside its {width}x{height} image."
        )
    return np.array([y0 / height, x0 / width, y1 / height, x1 / width], np.float32)


def _binary_mask(member: str, data: bytes, size: tuple[int, int]) -> bytes:
    """Grey segmentation PNG -> PNG of uint8 {0, 255}, foreground where grey > 0."""
    grey = downloads.open_image(member, data).convert("L")
    if grey.size != size:
        raise CorruptFileError(
            f"{member} is {grey.size[0]}x{grey.size[1]} but its image is {size[0]}x{size[1]}."
        )
    return downloads.png_bytes((np.asarray(grey) > 0).astype(np.uint8) * 255)


def _mask_member(record: _Record) -> str:
    return f"segmentations/{record.image_id.rsplit('.', 1)[0]}.png"


def _iter_members(path: Path, wanted: Collection[str]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the members named in `wanted`, in archive order, reading no further."""
    left = set(wanted)
    if not left:
        return
    for name, data in downloads.iter_tar(path, left.__contains__, _source(path)):
        if data is not None:
            left.discard(name)
            yield name, data
            if not left:
                return


def _scan(path: Path, texts: Collection[str]) -> tuple[set[str], dict[str, bytes], str | None]:
    """Member names, the bytes of those in `texts`, and why reading stopped early if it did.

    A full pass, as a compressed tar cannot seek. A damaged archive yields what came before
    the damage, so that the error can say which members are lost.
    """
    names, found = set(), {}
    try:
        for name, data in downloads.iter_tar(path, texts.__contains__, _source(path)):
            names.add(name)
            if data is not None:
                found[name] = data
    except CorruptFileError as err:
        return names, found, f"damaged or truncated after {len(names)} members: {err.__cause__}"
    return names, found, None


def _source(path: Path) -> str:
    return SOURCES.get(path.name, "its source")
