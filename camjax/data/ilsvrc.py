"""ILSVRC 2012 CLS-LOC (ImageNet) as a tfds dataset with the validation boxes, built without TF.

The builder `ilsvrc2012_loc` reads the archives a user downloaded by hand, streaming their
members with `tarfile` (the 1,000 per-class tars inside the training tar are read in place,
nothing is extracted to disk or fetched from the network), and writes ArrayRecord files that
`Ilsvrc2012Loc.data_sources` reads by random access without TensorFlow.

Inputs, in the manual directory (`SOURCES` says where each comes from):

* `ILSVRC2012_img_val.tar` (always): 50,000 flat `ILSVRC2012_val_<8 digits>.JPEG`.
* The validation labels and boxes, in either official form (the XML archive wins if both are
  there): `ILSVRC2012_bbox_val_v3.tgz`, one PASCAL-VOC-style XML file per image
  (`val/ILSVRC2012_val_00000001.xml`: `size/width`, `size/height` and per `object` its synset
  `name` and `bndbox` `xmin ymin xmax ymax`), or Kaggle's `LOC_val_solution.csv`
  (`ImageId,PredictionString`, the string repeating `<synset> <xmin> <ymin> <xmax> <ymax>`).
* `ILSVRC2012_img_train.tar` (config `full` only): 1,000 tars `<synset>.tar`, each holding
  `<synset>_<k>.JPEG`.
* `LOC_synset_mapping.txt` (optional): Kaggle's list of the 1,000 synsets, one per line
  (`n01440764 tench, Tinca tinca`).

Configs: `full` (splits `train` and `validation`) and `validation` (the validation split
alone, for the many WSOL users who only evaluate: the training tar is 138 GB). Unless told
which with `train=`, `prepare` builds `full` when `ILSVRC2012_img_train.tar` is in the manual
directory and `validation` otherwise, and `data_sources` reads `full` if it is prepared
and `validation` otherwise.

Kaggle's copy (ImageNet Object Localization Challenge) has the images unpacked; the
validation tar can be made from them with
`tar -cf ILSVRC2012_img_val.tar -C ILSVRC/Data/CLS-LOC/val .` (member paths are ignored).

Class index: the position of the synset in the sorted list of the 1,000 synsets, the order of
torchvision's `ImageFolder` on the training folders and of `LOC_synset_mapping.txt` (index 65
is `n01751748`, sea snake, the class of validation image 1). The list comes from
`LOC_synset_mapping.txt` when present, else from the class tar names of the training tar,
else (config `validation`) from the synsets of the validation annotations, which name all
1,000 classes as every validation image is annotated (checked: the images of the tar and
the annotated images must be the same set). Sources present together must agree.

Examples (`validation` in image-name order; `train` class by class in class-index order,
within a class in archive order):

* `image`: the original file bytes, not re-encoded, decoded on read to (H, W, 3) uint8
  (greyscale JPEGs are repeated to 3 channels by tfds). Files that are not RGB or grey are
  stored instead as a lossless PNG of Pillow's RGB conversion: the 22 CMYK JPEGs of the
  training set (listed by tfds's `imagenet2012` builder, which re-encodes them as JPEG) would
  decode to 4 CMYK channels with tfds's PIL fallback. The one PNG named `.JPEG`
  (`n02105855_2933.JPEG`) is kept as it is if RGB or grey: tfds's decoders (OpenCV, else
  PIL) read a PNG whatever its name.
* `height`, `width`: int32, the size of the stored pixel grid.
* `label`: class index as above; the `ClassLabel` names are the synsets.
* `image_id`: the file name, `ILSVRC2012_val_00000001.JPEG` or `n01440764_10026.JPEG`.
* `objects/bbox`: float32 normalized `(ymin, xmin, ymax, xmax)` with exclusive ends, the
  convention of every camjax dataset (`ymax = y1 / H`, `y1` one past the last row); every box
  of a validation image (80,477 in all, up to 20 on one image), none in train.

Box convention of the sources: `xmin ymin xmax ymax` are 0-based pixel indices with inclusive
ends, `xmax` being the last column of the object. Evidence: in the official annotations,
as released by the reference WSOL evaluator (clovaai/wsolevaluation,
`metadata/ILSVRC/test/localization.txt` and `image_sizes.txt`, raw XML values: image 50,000
is `237,109,446,374` and `175,89,474,342` there and in its XML), `xmin` is 0 on 7,388 of the
80,477 boxes and `xmax` reaches `W - 1` on 6,086 but never `W` (likewise y with `H`); the
evaluator's `calculate_multiple_iou` counts `x1 - x0 + 1` columns, as the PASCAL VOC devkit,
whose format this is, does. Kaggle's CSV holds the same integers (its documented sample row,
image 8,726, `255 142 454 329` and `44 21 322 295`, matches that image's XML). So a source box
becomes the exclusive pixel box `(xmin, ymin, xmax + 1, ymax + 1)`, clipped to the image
(never needed on the official files), normalized by the decoded size. The ILSVRC devkit
excludes 1,762 validation images ("blacklist") from its own localization score; WSOL work
evaluates all 50,000, and so does this dataset.

Errors, raised before any example is written: `MissingFilesError` lists the files missing
from the manual directory and where to get them, or the members an archive lacks (a
truncated download: annotated images that are not in the validation tar, class tars that are
not in the training tar, images without annotations). `CorruptFileError` names an unreadable
archive or annotation file, and, while writing, an image that does not decode; with
`skip_corrupt=True` such an image is skipped, logged, counted and recorded in
`info.metadata['skipped_corrupt']`.

Writing: tfds's own writer (4.9.10) stages each split in memory and, beyond 1 GB, spills it
through TensorFlow's file API and sorts whole buckets in memory; the splits here are 6 GB and
140 GB. So the builder (a `manual.ManualBuilder`) writes its ArrayRecord shards itself,
streaming, in generation order.

WSOL splits (`Ilsvrc2012Loc.wsol_sources`, what `camjax.data.load_data_sources('ilsvrc2012_loc',
...)` gives): the protocol of Choe et al. (CVPR 2020) reports the official validation images as
its test set and picks CAM thresholds and hyperparameters on a disjoint set with boxes, its
"train-fullsup" of 10 images per class taken from ImageNetV2, a separate download. The training
images have no boxes here (their partial box release is another download), so the split with
boxes to choose on can only come from the official validation set, and then it must leave the
test set: `validation` is 10 images per class of the official validation set
(`VALIDATION_PER_CLASS`; per class those whose file name has the lowest SHA-256,
`subsets.holdout_per_class`, deterministic), the reference's budget of full supervision, and
`test` is the other 40,000 official validation images, never the whole 50,000. `train` is the
official training set (config `full` only). No image is in two splits, and nothing chosen on
`validation` sees a `test` image; the price is that `test` numbers are on a stratified 80% of
the images of published tables (a uniform draw per class, so an unbiased estimate of them, with
about 12% more sampling error).
"""

from __future__ import annotations

import dataclasses
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from camjax.data import downloads, manual
from camjax.data import ilsvrc_annotations as ann
from camjax.data.downloads import CorruptFileError

DATASET_NAME = "ilsvrc2012_loc"
TRAIN_ARCHIVE = "ILSVRC2012_img_train.tar"
VAL_ARCHIVE = "ILSVRC2012_img_val.tar"
BOXES_XML = "ILSVRC2012_bbox_val_v3.tgz"
BOXES_CSV = "LOC_val_solution.csv"
SYNSET_MAPPING = "LOC_synset_mapping.txt"
NUM_CLASSES = 1000

_IMAGENET = "https://image-net.org/challenges/LSVRC/2012/2012-downloads.php (log in first)"
_KAGGLE = "https://www.kaggle.com/competitions/imagenet-object-localization-challenge/data"
SOURCES = {
    TRAIN_ARCHIVE: f'"Training images (Task 1 & 2)", 138 GB, at {_IMAGENET}',
    VAL_ARCHIVE: f'"Validation images (all tasks)", 6.3 GB, at {_IMAGENET}',
    BOXES_XML: f'"Validation bounding box annotations (all tasks)" at {_IMAGENET}',
    BOXES_CSV: f"the ImageNet Object Localization Challenge on Kaggle, {_KAGGLE}",
    SYNSET_MAPPING: f"the ImageNet Object Localization Challenge on Kaggle, {_KAGGLE}",
}
# Size and image count of the official training tar, only to give its progress bar a total.
_OFFICIAL_TRAIN = (147_897_477_120, 1_281_167)

VALIDATION_PER_CLASS = 10  # held out of each class of validation: the reference's 10,000

log = logging.getLogger(__name__)

_DESCRIPTION = """\
ILSVRC 2012 classification-localization (ImageNet-1k): 1,281,167 training and 50,000
validation photographs of 1,000 WordNet synsets, one label each; every validation image has
the bounding boxes of its class's objects. Built from the official archives placed in the
manual directory; images are the original files.
"""

_CITATION = """\
@article{ILSVRC15,
  author = {Olga Russakovsky and Jia Deng and Hao Su and Jonathan Krause and Sanjeev Satheesh
            and Sean Ma and Zhiheng Huang and Andrej Karpathy and Aditya Khosla and Michael
            Bernstein and Alexander C. Berg and Li Fei-Fei},
  title = {{ImageNet Large Scale Visual Recognition Challenge}},
  journal = {International Journal of Computer Vision (IJCV)},
  year = {2015},
  volume = {115},
  number = {3},
  pages = {211-252},
}
"""


@dataclasses.dataclass(eq=False)
class IlsvrcConfig(tfds.core.BuilderConfig):
    """`train` adds the training split (needs `ILSVRC2012_img_train.tar`)."""

    train: bool = True


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything checked before writing: paths, classes, archive members, annotations."""

    paths: dict[str, Path]
    classes: list[str]
    val_members: list[tarfile.TarInfo]  # sorted by name
    annotations: dict[str, ann.Annotation]  # by image file name
    class_tars: list[tarfile.TarInfo]  # sorted by synset; empty without the train split


class Ilsvrc2012Loc(manual.ManualBuilder):
    """tfds builder for `ilsvrc2012_loc`; the first config (`full`) is the default."""

    name = DATASET_NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        IlsvrcConfig(name="full", description="Splits train and validation."),
        IlsvrcConfig(name="validation", description="The validation split only.", train=False),
    ]
    CONFIG_FLAG = "train"
    FLAG_INPUT = TRAIN_ARCHIVE
    ALIASES = ("ilsvrc", "ILSVRC")
    NUM_CLASSES = NUM_CLASSES
    OFFICIAL_TRAIN_IMAGES = 1_281_167
    HOLDOUT = ("validation", "test")  # validation: 10 per class, test: the other 40,000
    VALIDATION_PER_CLASS = VALIDATION_PER_CLASS
    PREPARE_COMMAND = "python -m camjax.data.prepare ilsvrc --manual_dir DIR"
    PREPARE_INPUTS = (
        f"DIR holding {VAL_ARCHIVE}, {BOXES_XML} or {BOXES_CSV}, and {TRAIN_ARCHIVE} for the "
        "train split."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = downloads.download_instructions(
        PREPARE_COMMAND,
        SOURCES,
        f"One of {BOXES_XML} and {BOXES_CSV} is needed; {TRAIN_ARCHIVE} only for the `full` "
        f"config; {SYNSET_MAPPING} is optional.",
    )

    def check_inputs(self, manual_dir: Path) -> None:
        manual_files(manual_dir, train=self.builder_config.train)

    @staticmethod
    def reference_id(image_id: str) -> tuple[str | None, str] | None:
        """A reference metadata id -> (our split, our `image_id`); None: not an official image.

        `val/ILSVRC2012_val_00000001.JPEG` is in `validation`, `train/<synset>/<file>` in
        `train`; `val2/...` (ImageNetV2) is in neither.
        """
        parts = image_id.split("/")
        if len(parts) == 2 and parts[0] == "val":
            return "validation", parts[1]
        if len(parts) == 3 and parts[0] == "train":
            return "train", parts[2]
        return None

    @classmethod
    def explain_missing(cls, missing: list[str]) -> str:
        """Why reference ids are not official images: the reference's `val` is ImageNetV2."""
        if all(cls.reference_id(i) is not None for i in missing):
            return ""
        return (
            "\nIds outside `val/` and `train/` (the reference's ILSVRC `val` split, `val2/...`) "
            "are ImageNetV2 images (imagenetv2-threshold0.7.tar.gz, fetched by the reference's "
            "dataset/prepare_evaluation_data.sh, https://github.com/clovaai/wsolevaluation), a "
            "separate download that is not in the official ILSVRC 2012 archives, so "
            "ilsvrc2012_loc does not hold them. camjax's own `validation` split "
            "(`wsol_sources`) is held out of the official validation set instead."
        )

    def _info(self) -> tfds.core.DatasetInfo:
        # Label names (the synsets) are found when preparing.
        return self._manual_info(
            description=_DESCRIPTION,
            homepage="https://image-net.org/challenges/LSVRC/2012/",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        plan = _make_plan(Path(dl_manager.manual_dir), train=self.builder_config.train)
        self.info.features["label"].names = plan.classes
        splits = {"validation": self._generate_examples(plan, "validation")}
        if self.builder_config.train:
            splits["train"] = self._generate_examples(plan, "train")
        return splits

    def _generate_examples(self, plan: _Plan, split: str) -> Iterator[tuple[str, dict]]:
        label = {synset: index for index, synset in enumerate(plan.classes)}
        if split == "validation":
            archive, images, total = VAL_ARCHIVE, _val_images(plan), len(plan.val_members)
        else:
            archive, images = TRAIN_ARCHIVE, _train_images(plan)
            size, count = _OFFICIAL_TRAIN
            total = count if plan.paths[TRAIN_ARCHIVE].stat().st_size == size else None
        items = self._skipping_corrupt(
            split,
            images,
            lambda item: item[0],
            lambda item: downloads.checked_image(f"{item[0]} (in {archive})", item[2]),
            total,
        )
        for (image_id, synset, _), (data, height, width) in items:
            boxes = np.zeros((0, 4), np.float32)
            if split == "validation":
                boxes = ann.normalized_boxes(image_id, plan.annotations[image_id], height, width)
            yield (
                image_id,
                {
                    "image": data,
                    "height": height,
                    "width": width,
                    "label": label[synset],
                    "image_id": image_id,
                    "objects": {"bbox": boxes},
                },
            )


def manual_files(manual_dir: Path, *, train: bool) -> dict[str, Path]:
    """Paths of the input files; raises `MissingFilesError` naming each one not there.

    Returns:
      {name: path} for `ILSVRC2012_img_val.tar`, the annotation file (the XML archive if
      both forms are there), `ILSVRC2012_img_train.tar` when `train`, and
      `LOC_synset_mapping.txt` when present.
    """
    needs = [(TRAIN_ARCHIVE,)] * train + [(VAL_ARCHIVE,), (BOXES_XML, BOXES_CSV)]
    hint = f"\nTo build the validation split alone, without {TRAIN_ARCHIVE}, pass train=False."
    dataset = f"{DATASET_NAME}/{'full' if train else 'validation'}"
    present = downloads.present_inputs(dataset, Path(manual_dir), needs, SOURCES, hint * train)
    paths = {VAL_ARCHIVE: present[VAL_ARCHIVE]}
    boxes = BOXES_XML if BOXES_XML in present else BOXES_CSV
    paths[boxes] = present[boxes]
    for name in ([TRAIN_ARCHIVE] if train else []) + [SYNSET_MAPPING]:
        if name in present:
            paths[name] = present[name]
    return paths


def _make_plan(manual_dir: Path, *, train: bool) -> _Plan:
    """Reads the indexes of every input and checks that they are complete and agree."""
    paths = manual_files(manual_dir, train=train)
    boxes_path = paths.get(BOXES_XML) or paths[BOXES_CSV]
    log.info("Reading %s.", boxes_path)
    annotations = (
        ann.read_xml_archive(boxes_path, SOURCES[BOXES_XML])
        if BOXES_XML in paths
        else ann.read_csv(boxes_path)
    )
    log.info("Indexing %s.", paths[VAL_ARCHIVE])
    val_members = sorted(_tar_files(paths[VAL_ARCHIVE]), key=lambda m: PurePosixPath(m.name).name)
    images = {PurePosixPath(m.name).name for m in val_members}
    _raise_if_missing(paths[VAL_ARCHIVE], sorted(set(annotations) - images))
    _raise_if_missing(boxes_path, sorted(images - set(annotations)))

    class_tars = _class_tars(paths[TRAIN_ARCHIVE]) if train else []
    tars = {_synset_of(m) for m in class_tars}
    val_synsets = {a.synset for a in annotations.values()}
    if SYNSET_MAPPING in paths:
        classes = ann.read_synset_mapping(paths[SYNSET_MAPPING])
        if train:
            _raise_if_missing(paths[TRAIN_ARCHIVE], [f"{s}.tar" for s in classes if s not in tars])
        unlisted = sorted((tars | val_synsets) - set(classes))
        if unlisted:
            raise CorruptFileError(
                f"{paths[SYNSET_MAPPING]} does not list the synsets "
                f"{unlisted[: downloads.MAX_LISTED]} of the other inputs."
            )
    elif train:
        classes = sorted(tars)
        # Every class has validation images, so a class tar they name is missing, and a class
        # tar they do not name would shift every later class's index.
        _raise_if_missing(paths[TRAIN_ARCHIVE], [f"{s}.tar" for s in sorted(val_synsets - tars)])
        unseen = sorted(tars - val_synsets)
        if unseen:
            raise CorruptFileError(
                f"{paths[TRAIN_ARCHIVE]} holds the class tars {unseen[: downloads.MAX_LISTED]}, "
                "whose synsets no validation image has; remove them, or add "
                f"{SYNSET_MAPPING} listing every class, these included."
            )
    else:
        classes = sorted(val_synsets)
    if len(classes) != NUM_CLASSES:
        log.warning("Found %d classes; ILSVRC 2012 has %d.", len(classes), NUM_CLASSES)
    counts = [len(a.boxes) for a in annotations.values()]
    log.info(
        "Validation: %d images, %d boxes, up to %d per image.",
        len(counts),
        sum(counts),
        max(counts),
    )
    return _Plan(paths, classes, val_members, annotations, class_tars)


def _class_tars(path: Path) -> list[tarfile.TarInfo]:
    """The `<synset>.tar` members of the training tar, sorted by synset."""
    log.info("Indexing %s.", path)
    class_tars = []
    for member in _tar_files(path):
        if member.name.endswith(".tar") and ann.SYNSET.fullmatch(_synset_of(member)):
            class_tars.append(member)
        else:
            log.warning("Ignoring %s in %s.", member.name, path)
    return sorted(class_tars, key=_synset_of)


def _synset_of(class_tar: tarfile.TarInfo) -> str:
    return PurePosixPath(class_tar.name).name.removesuffix(".tar")


def _raise_if_missing(path: Path, missing: list[str]) -> None:
    if missing:
        what = "item(s) missing that the other inputs name"
        raise downloads.incomplete_error(path, missing, _source(path), what=what)


def _tar_files(path: Path) -> list[tarfile.TarInfo]:
    """The regular members of an uncompressed tar whose data lies wholly inside the file.

    A truncated download loses its last members (tarfile stops at the cut with an error, and
    the member there is cut short): they are left out here, so that the checks against the
    other inputs list them as missing.
    """
    size, members = path.stat().st_size, []
    try:
        with tarfile.open(path, mode="r:") as tar:
            members.extend(m for m in tar if m.isfile())
    except (tarfile.TarError, EOFError) as err:
        if not members:
            raise CorruptFileError(
                f"{path} is not a readable tar archive ({err}); download it again from "
                f"{_source(path)}."
            ) from err
        log.warning("%s ends early (%s), after %s.", path, err, members[-1].name)
    complete = [m for m in members if m.offset_data + m.size <= size]
    if len(complete) < len(members):
        log.warning("%s is truncated inside %s.", path, members[len(complete)].name)
    return complete


def _val_images(plan: _Plan) -> Iterator[tuple[str, str, bytes]]:
    """(image id, synset, bytes) of the validation images in name order."""
    path, where = plan.paths[VAL_ARCHIVE], ""
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in plan.val_members:
                where = member.name
                image_id = PurePosixPath(member.name).name
                yield image_id, plan.annotations[image_id].synset, tar.extractfile(member).read()
    except (tarfile.TarError, EOFError) as err:
        raise downloads.damaged_archive_error(path, err, _source(path), where) from err


def _train_images(plan: _Plan) -> Iterator[tuple[str, str, bytes]]:
    """(image id, synset, bytes) of the training images, class tar by class tar, streamed."""
    path, where = plan.paths[TRAIN_ARCHIVE], ""
    try:
        with tarfile.open(path, mode="r:") as outer:
            for class_tar in plan.class_tars:
                where, synset = class_tar.name, _synset_of(class_tar)
                with tarfile.open(fileobj=outer.extractfile(class_tar), mode="r|") as inner:
                    for member in inner:
                        if member.isfile():
                            image_id = PurePosixPath(member.name).name
                            yield image_id, synset, inner.extractfile(member).read()
    except (tarfile.TarError, EOFError) as err:
        raise downloads.damaged_archive_error(path, err, _source(path), where) from err


def _source(path: Path) -> str:
    return SOURCES.get(path.name, "its source")
