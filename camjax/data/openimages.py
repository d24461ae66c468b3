"""OpenImages30k, the WSOL benchmark of Choe et al. (CVPR 2020), as a tfds dataset.

The builder `openimages30k_wsol` reads the zip archives and the metadata folder of the
reference WSOL evaluator (clovaai/wsolevaluation) by random access (nothing is extracted or
fetched) and writes ArrayRecord files that `OpenImages30kWsol.data_sources` reads without TF.

OpenImages30k is 100 classes of Open Images V5: 29,819 "train" images (image-level labels
only), 2,500 "val" and 5,000 "test" images with instance segmentation masks, drawn from the
Open Images splits of the same names. The reference's `train-fullsup` split is its `val`.

Inputs, in the manual directory (`SOURCES` says where each comes from), as the reference's
`dataset/prepare_openimages.sh` and `dataset/prepare_evaluation_data.sh` download them (both
unzip into `dataset/OpenImages`, so member paths are relative to the OpenImages root; a single
leading folder, such as `OpenImages/`, is also accepted):

* `OpenImages_images.zip`: `train/<class>/<image>.jpg`, `val/...` and `test/...`.
* `OpenImages_annotations.zip`: the masks of val and test, `<split>/<class>/<image>_m<class>_
  <8 hex digits>.png`, one per instance, and `<split>/<class>/<image>_ignore.png`, one per
  image.
* `OpenImages30k_eval.zip` (optional, instead of both for config `evaluation`): the val and
  test images with their masks side by side, as the reference's README shows the unzipped
  folder (its contents are not otherwise documented; members are looked up by path, so any
  archive holding the paths the metadata names will do).
* `metadata/OpenImages/{train,val,test}/`: the reference repository's metadata folders
  (`image_ids.txt`, `class_labels.txt`, `localization.txt`; their `image_sizes.txt` are empty),
  as `camjax.localization.wsol_io.read_metadata` reads them; copy the repository's `metadata`
  folder into the manual directory. They fix the splits, the order, the labels and the mask
  paths (`val/01226z/32fdab44f6e415f1.jpg,val/01226z/32fdab44f6e415f1_m01226z_7dab3053.png,
  val/01226z/32fdab44f6e415f1_ignore.png`; an image's later masks leave the last field empty).

Facts checked on the released metadata: 29,819 / 2,500 / 5,000 ids, all `.jpg`, no id in two
splits; labels 0..99, each the class folder of its ids (`01226z`, read as the Open Images
class id `/m/01226z` without its prefix) and in sorted folder order; 3,854 val and 7,632 test
instance masks, up to 62 on one image; every mask named as above within its image's folder.

Configs: `full` (splits `train`, `validation`, `test`) and `evaluation` (`validation` and
`test` only). `prepare` builds `full` when `OpenImages_images.zip` is in the manual directory
and `evaluation` otherwise; `data_sources` reads `full` if it is prepared.

Examples (each split in `image_ids.txt` order; `validation` is the reference's `val`):

* `image`: the original file bytes, decoded on read to (H, W, 3) uint8. Files that are not RGB
  or grey JPEG/PNG are stored as a lossless PNG of Pillow's RGB conversion (a CMYK JPEG would
  decode to 4 channels with tfds's PIL fallback).
* `height`, `width`: int32, the size of the stored pixel grid.
* `label`: the reference's class index; the `ClassLabel` names are the class folders.
* `image_id`: as in `image_ids.txt` (`val/01226z/32fdab44f6e415f1.jpg`), the reference's key
  (also of its score-map files, `camjax.localization.wsol_frame.scoremap_path`).
* `objects/bbox`: always empty. OpenImages30k has masks, not boxes: its metric is PxAP; box
  metrics (MaxBoxAcc, top-1 loc) are not defined on it and count no GT box.
* `mask`: (h, w, 1) uint8, 255 on the foreground (the union of the image's instance masks),
  0 elsewhere: the convention of every camjax dataset.
* `ignore_mask`: (h, w, 1) uint8, 255 on the pixels PxAP ignores, 0 elsewhere.

Masks, as the reference's `evaluation.get_mask` and `MaskEvaluator` read them: each PNG is read
as OpenCV's greyscale (`cv2.IMREAD_GRAYSCALE`, which drops alpha and weighs R, G, B; the
masks of the reference's `test_data/test_masks` are 1-bit, RGB and RGBA PNGs), here with
OpenCV too, and a pixel is set where its grey value is above 0.5, i.e. above 0. The
foreground is the union of the instance masks. The ignored pixels are those of the ignore mask
that are not foreground: the foreground wins (`ignore_box_mask and not mask_all_instances`).
`MaskEvaluator` scores pixels of value 1 (foreground) as positives and 0 as negatives, and
skips 255 (ignored). To get the reference's mask at the evaluation size, resize both stored
masks with nearest neighbour and set `255` where `ignore_mask` and `1` where `mask`.

The reference resizes each PNG on its own to 224 x 224 with OpenCV's nearest neighbour before
thresholding. Nearest neighbour picks the same source pixel for every mask of one size, so
thresholding and combining first, at that size, and resizing the result gives the same mask:
when all of an image's masks have one size, the stored masks keep that size (normally the
image's; PxAP is then exactly the reference's). When they differ, each is first resized to the
image's size by OpenCV's nearest neighbour (logged: PxAP may then differ from the reference's on
that image). `train` images have no masks: theirs are 1 x 1, background with the pixel ignored,
so PxAP counts nothing there.

Errors, raised before any example is written: `MissingFilesError` lists the inputs missing from
the manual directory, or the members that the metadata names but no archive holds, each with
where to get it. `CorruptFileError` names an unreadable archive or metadata file and, while
writing, an image or mask that does not decode; with `skip_corrupt=True` such an example is
skipped, logged, counted and recorded in `info.metadata['skipped_corrupt']`.

WSOL splits (`wsol_sources`, no `HOLDOUT`): the reference's own, `train`, `validation` (its
`val`, to choose thresholds and hyperparameters on) and `test`, disjoint as released.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tensorflow_datasets as tfds

from camjax.data import downloads, manual
from camjax.data.downloads import CorruptFileError, MissingFilesError
from camjax.localization import wsol_io

DATASET_NAME = "openimages30k_wsol"
NUM_CLASSES = 100
IMAGES_ARCHIVE = "OpenImages_images.zip"
MASKS_ARCHIVE = "OpenImages_annotations.zip"
EVAL_ARCHIVE = "OpenImages30k_eval.zip"
METADATA_DIR = "metadata/OpenImages"
# tfds split -> the reference's split folder (of image ids, metadata and archive members).
SPLIT_FOLDERS = {"train": "train", "validation": "val", "test": "test"}

_REPO = "https://github.com/clovaai/wsolevaluation"
# Also zipfile's errors for a compression it lacks (Deflate64) and for an encrypted member.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError)
SOURCES = {
    IMAGES_ARCHIVE: f"the OpenImages30k images of {_REPO} (README, OpenImages section: "
    "https://drive.google.com/open?id=1oOb4WQ-lb8SYppHEg3lWnpHk1X8WVO4e, or the OneDrive link "
    "in dataset/prepare_openimages.sh)",
    MASKS_ARCHIVE: f"the OpenImages30k masks of {_REPO} (README, OpenImages section: "
    "https://drive.google.com/open?id=1eu1YvcZlsEalhXTS_5Ni5tkImCliIPie, or the OneDrive link "
    "in dataset/prepare_openimages.sh)",
    EVAL_ARCHIVE: f"the evaluation images and masks of {_REPO} (the OneDrive link in "
    "dataset/prepare_evaluation_data.sh)",
    METADATA_DIR: f"the folder metadata/OpenImages of {_REPO} (copy the repository's "
    "metadata folder into the manual directory)",
}
_ARCHIVES = (IMAGES_ARCHIVE, MASKS_ARCHIVE, EVAL_ARCHIVE)  # lookup preference
_REQUIRED_METADATA = (wsol_io.IMAGE_IDS, wsol_io.CLASS_LABELS, wsol_io.LOCALIZATION)

log = logging.getLogger(__name__)

_DESCRIPTION = """\
OpenImages30k: 100 classes of Open Images V5 curated as a weakly-supervised object
localization benchmark by Choe et al. (CVPR 2020): 29,819 training images with class labels,
2,500 validation and 5,000 test images with instance masks and ignore regions. Built from the
archives and metadata of clovaai/wsolevaluation placed in the manual directory.
"""

_CITATION = """\
@inproceedings{choe2020cvpr,
  title = {Evaluating Weakly Supervised Object Localization Methods Right},
  author = {Choe, Junsuk and Oh, Seong Joon and Lee, Seungho and Chun, Sanghyuk and
            Akata, Zeynep and Shim, Hyunjung},
  booktitle = {Conference on Computer Vision and Pattern Recognition (CVPR)},
  year = {2020},
}
"""


@dataclasses.dataclass(eq=False)
class OpenImagesConfig(tfds.core.BuilderConfig):
    """`train` adds the training split (needs `OpenImages_images.zip`)."""

    train: bool = True


@dataclasses.dataclass(frozen=True)
class _Item:
    image_id: str  # also the image's member path
    label: int
    masks: tuple[str, ...]  # member paths of the instance masks; () in train
    ignore: str | None


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything checked before writing: archives, where each member is, classes, splits."""

    archives: dict[str, Path]
    members: dict[str, tuple[str, str]]  # member path -> (archive name, name in the zip)
    classes: list[str]
    splits: dict[str, list[_Item]]


class OpenImages30kWsol(manual.ManualBuilder):
    """tfds builder for `openimages30k_wsol`; the first config (`full`) is the default."""

    name = DATASET_NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        OpenImagesConfig(name="full", description="Splits train, validation and test."),
        OpenImagesConfig(
            name="evaluation", description="Splits validation and test only.", train=False
        ),
    ]
    CONFIG_FLAG = "train"
    FLAG_INPUT = IMAGES_ARCHIVE
    ALIASES = ("openimages",)
    NUM_CLASSES = NUM_CLASSES
    OFFICIAL_TRAIN_IMAGES = 29_819
    PREPARE_COMMAND = "python -m camjax.data.prepare openimages --manual_dir DIR"
    PREPARE_INPUTS = (
        f"DIR holding {IMAGES_ARCHIVE} (or {EVAL_ARCHIVE} for validation and test only), "
        f"{MASKS_ARCHIVE} and {METADATA_DIR} of {_REPO}."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = downloads.download_instructions(
        PREPARE_COMMAND,
        SOURCES,
        f"{IMAGES_ARCHIVE} is needed for the `full` config; {EVAL_ARCHIVE} can replace it and "
        f"{MASKS_ARCHIVE} for the `evaluation` config.",
    )

    def _make_plan(self, manual_dir: Path) -> _Plan:
        """Reads the metadata and the zip indexes; raises if anything needed is missing."""
        return _plan_inputs(manual_dir, train=self.builder_config.train)

    def _info(self) -> tfds.core.DatasetInfo:
        # Label names (the class folders) come from the metadata when preparing.
        mask = tfds.features.Image(shape=(None, None, 1), encoding_format="png")
        return self._manual_info(
            description=_DESCRIPTION,
            homepage=_REPO,
            citation=_CITATION,
            features={"mask": mask, "ignore_mask": mask},
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        plan = self.plan(Path(dl_manager.manual_dir))
        self.info.features["label"].names = plan.classes
        return {split: self._generate_examples(plan, split) for split in plan.splits}

    def _generate_examples(self, plan: _Plan, split: str) -> Iterator[tuple[str, dict]]:
        items = plan.splits[split]
        with contextlib.ExitStack() as stack:
            zips = {
                name: stack.enter_context(_open_zip(path)) for name, path in plan.archives.items()
            }

            def read(member: str) -> tuple[str, bytes]:
                archive, name = plan.members[member]
                where = f"{name} (in {archive})"
                try:
                    return where, zips[archive].read(name)
                except _ZIP_ERRORS as err:
                    raise CorruptFileError(
                        f"Cannot read {where}: {err}; download it again from {SOURCES[archive]}."
                    ) from err

            encode = functools.partial(_encode_example, read=read)
            for item, example in self._skipping_corrupt(
                split, items, lambda item: item.image_id, encode, len(items)
            ):
                yield item.image_id, example


# --------------------------------------------------------------------------------------------
# Planning: inputs present, metadata read, every member found.


def _plan_inputs(manual_dir: Path, *, train: bool) -> _Plan:
    """Reads the metadata and the archives' indexes and checks that nothing needed is missing."""
    splits = [s for s in SPLIT_FOLDERS if train or s != "train"]
    archives = _archive_paths(manual_dir, train=train, splits=splits)
    metadata = {split: _read_split_metadata(manual_dir, split) for split in splits}
    members = {}
    for name in _ARCHIVES:  # the first archive holding a path wins
        if name in archives:
            for path, zip_name in _zip_index(archives[name]).items():
                members.setdefault(path, (name, zip_name))

    classes, items = _classes_and_items(metadata)
    missing: dict[str, list[str]] = {}
    for split_items in items.values():
        for item in split_items:
            for member in filter(None, (item.image_id, *item.masks, item.ignore)):
                if member not in members:
                    kind = "image" if member == item.image_id else "mask"
                    missing.setdefault(kind, []).append(member)
    if missing:
        _raise_missing_members(missing, archives)
    counts = ", ".join(f"{split} {len(v)}" for split, v in items.items())
    log.info("OpenImages30k: %s images of %d classes.", counts, len(classes))
    return _Plan(archives, members, classes, items)


def _archive_paths(manual_dir: Path, *, train: bool, splits: list[str]) -> dict[str, Path]:
    """The archives present; raises `MissingFilesError` naming what is missing and its source."""
    needs = [(IMAGES_ARCHIVE,) if train else (IMAGES_ARCHIVE, EVAL_ARCHIVE)]
    if not (manual_dir / EVAL_ARCHIVE).is_file():
        needs.append((MASKS_ARCHIVE,))
    folders = []
    for split in splits:
        folder = f"{METADATA_DIR}/{SPLIT_FOLDERS[split]}"
        absent = [n for n in _REQUIRED_METADATA if not (manual_dir / folder / n).is_file()]
        # A whole folder missing is one line; otherwise the files it lacks.
        paths = [f"{folder}/"] if len(absent) == len(_REQUIRED_METADATA) else []
        folders += [(p, SOURCES[METADATA_DIR]) for p in paths or [f"{folder}/{n}" for n in absent]]
    hint = "\nTo build the validation and test splits alone, pass train=False."
    hint = hint if train and not (manual_dir / IMAGES_ARCHIVE).is_file() else ""
    dataset = f"{DATASET_NAME}/{'full' if train else 'evaluation'}"
    archives = {n: s for n, s in SOURCES.items() if n in _ARCHIVES}
    present = downloads.present_inputs(dataset, manual_dir, needs, archives, hint, folders)
    return {n: present[n] for n in _ARCHIVES if n in present}


def _read_split_metadata(manual_dir: Path, split: str) -> wsol_io.WsolMetadata:
    folder = manual_dir / METADATA_DIR / SPLIT_FOLDERS[split]
    try:
        metadata = wsol_io.read_metadata(folder)
    except ValueError as err:
        raise CorruptFileError(f"Malformed metadata in {folder}: {err}") from err
    if split != "train" and metadata.mask_paths is None:
        raise CorruptFileError(
            f"{folder / wsol_io.LOCALIZATION} must list the masks of every image "
            "(<image_id>,<mask_path>,<ignore_path> lines)."
        )
    return metadata


def _classes_and_items(
    metadata: dict[str, wsol_io.WsolMetadata],
) -> tuple[list[str], dict[str, list[_Item]]]:
    """Class names (index = label, from the ids' class folders) and each split's items."""
    folders: dict[int, set[str]] = {}
    items = {}
    for split, meta in metadata.items():
        items[split] = []
        masks = meta.mask_paths if split != "train" else None
        for k, (image_id, label) in enumerate(zip(meta.image_ids, meta.class_labels, strict=True)):
            parts = image_id.split("/")
            if len(parts) < 2:
                raise CorruptFileError(
                    f"{METADATA_DIR}/{SPLIT_FOLDERS[split]}: image id {image_id!r} has no class "
                    "folder (expected <split>/<class>/<image>.jpg)."
                )
            folders.setdefault(int(label), set()).add(parts[-2])
            annotation = (masks[k], meta.ignore_paths[k]) if masks else ((), None)
            items[split].append(_Item(image_id, int(label), *annotation))
    ambiguous = {label: sorted(f) for label, f in folders.items() if len(f) > 1}
    if ambiguous:
        raise CorruptFileError(f"Labels with ids in several class folders: {ambiguous}.")
    labels = sorted(folders)
    if labels != list(range(len(labels))):
        absent = sorted(set(range(labels[-1] + 1)) - set(labels))
        raise CorruptFileError(f"No image has the labels {absent[: downloads.MAX_LISTED]}.")
    if len(labels) != NUM_CLASSES:
        log.warning("Found %d classes; OpenImages30k has %d.", len(labels), NUM_CLASSES)
    return [next(iter(folders[label])) for label in labels], items


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except _ZIP_ERRORS as err:
        raise downloads.damaged_archive_error(path, err, SOURCES[path.name]) from err


def _zip_index(path: Path) -> dict[str, str]:
    """{path relative to the OpenImages root: name in the zip} of the files of a zip.

    A leading `./`, and one leading folder above `train/`, `val/` or `test/` (a zip made of the
    `OpenImages` folder itself), are dropped.
    """
    log.info("Indexing %s.", path)
    roots = set(SPLIT_FOLDERS.values())
    index = {}
    with _open_zip(path) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            parts = info.filename.removeprefix("./").split("/")
            if len(parts) > 2 and parts[0] not in roots and parts[1] in roots:
                parts = parts[1:]
            index.setdefault("/".join(parts), info.filename)
    return index


def _raise_missing_members(missing: dict[str, list[str]], archives: dict[str, Path]) -> None:
    """`MissingFilesError` listing the images and masks that no archive present holds: the
    archives are incomplete (a truncated download or another release)."""
    names, lines = [], []
    for kind, archive in (("image", IMAGES_ARCHIVE), ("mask", MASKS_ARCHIVE)):
        if kind not in missing:
            continue
        # The evaluation archive holds validation and test files, no train image.
        val_test = any(not m.startswith("train/") for m in missing[kind])
        held = [n for n in (archive, EVAL_ARCHIVE) if n in archives and (val_test or n == archive)]
        names += missing[kind]
        lines.append(
            f"{len(missing[kind])} {kind}(s) that {METADATA_DIR} names are not in "
            f"{' or '.join(held)}:"
        )
        lines.append(downloads.listing(missing[kind]))
        lines += [f"Download {n} again from {SOURCES[n]}." for n in held]
    raise MissingFilesError(
        f"Cannot prepare {DATASET_NAME}: the archives are incomplete.\n" + "\n".join(lines), names
    )


# --------------------------------------------------------------------------------------------
# One example.


def _encode_example(item: _Item, read: Callable[[str], tuple[str, bytes]]) -> dict[str, Any]:
    """Reads, checks and converts one image and its masks to the builder's features."""
    where, data = read(item.image_id)
    stored, height, width = downloads.checked_image(where, data)
    if item.masks:
        grey = [_grey(*read(m)) for m in item.masks]
        ignore = _grey(*read(item.ignore))
        mask, ignored = _reference_masks(item.image_id, grey, ignore, (height, width))
    else:
        # No annotation: one background pixel, ignored, so that PxAP counts nothing.
        mask, ignored = np.zeros((1, 1), np.uint8), np.ones((1, 1), bool)
    return {
        "image": stored,
        "height": height,
        "width": width,
        "label": item.label,
        "image_id": item.image_id,
        "objects": {"bbox": np.zeros((0, 4), np.float32)},
        "mask": downloads.png_bytes(mask.astype(np.uint8) * 255),
        "ignore_mask": downloads.png_bytes(ignored.astype(np.uint8) * 255),
    }


def _reference_masks(
    image_id: str, instances: list[np.ndarray], ignore: np.ndarray, image_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Grey instance masks and ignore mask -> (foreground, ignored) (h, w) bool, disjoint, by
    `get_mask`'s rule (module doc); masks of several sizes are first resized to `image_hw`."""
    shapes = {m.shape for m in [*instances, ignore]}
    if len(shapes) > 1:
        log.warning(
            "The masks of %s differ in size (%s, height x width); each is resized to its "
            "%dx%d image.",
            image_id,
            sorted(shapes),
            image_hw[1],
            image_hw[0],
        )
        size = (image_hw[1], image_hw[0])
        instances = [cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in instances]
        ignore = cv2.resize(ignore, size, interpolation=cv2.INTER_NEAREST)
    elif shapes != {image_hw}:
        log.info(
            "The masks of %s are %s, their image %s; not resized.", image_id, *shapes, image_hw
        )
    foreground = np.any(np.stack(instances) > 0.5, axis=0)
    return foreground, (ignore > 0.5) & ~foreground


def _grey(where: str, data: bytes) -> np.ndarray:
    """A mask PNG read as the reference reads it: OpenCV greyscale (H, W) uint8."""
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) if data else None
    if grey is None:
        raise CorruptFileError(f"{where} cannot be decoded as an image.")
    return grey
