"""The reference WSOL evaluator's metadata splits, read as splits of the prepared datasets.

clovaai/wsolevaluation (Choe et al., CVPR 2020) fixes its splits in metadata folders,
`metadata/<CUB|ILSVRC>/<train|val|test>/` (`camjax.localization.wsol_io` reads them).
`reference_split` turns one into a random-access view of a prepared camjax dataset, the
examples named by `image_ids.txt` in that order, joined on `image_id`, so that a camjax model
is evaluated on exactly the reference's images (and its score maps can be written under the
reference's ids, `split.metadata.image_ids[i]`).

Ids, checked on the released files:

* CUB (`cub_200_2011`): the reference's ids are paths relative to the image folder,
  `001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg`, which is the `image_id`
  camjax stores. `metadata/CUB/test` (5,794 images) is the official test split and
  `metadata/CUB/train` (5,994) the official train split. `metadata/CUB/val` (1,000 images, 5 per
  class, ids like `001.Black_footed_Albatross/30107316117.jpg`) is CUBV2, images the reference
  collected from Flickr and ships as `CUBV2.tar` (its `dataset/prepare_cub.sh`), not in
  `CUB_200_2011.tgz`: joining it fails, listing the ids.
* ILSVRC (`ilsvrc2012_loc`): camjax stores the file name. `metadata/ILSVRC/test` ids are
  `val/ILSVRC2012_val_00000001.JPEG`, the 50,000 official validation images (split
  `validation` here); training ids are `train/<synset>/<file>` (the folder layout of the
  reference's `dataset/prepare_imagenet.sh`; split `train`, config `full`). `metadata/ILSVRC/val`
  (10,000 images, `val2/0/0.jpeg`) is ImageNetV2 (`imagenetv2-threshold0.7.tar.gz`, fetched by
  the reference's `dataset/prepare_evaluation_data.sh`), not in the official archives: joining
  it fails, saying so.

Labels: the reference's class indices are camjax's (CUB: class id - 1; ILSVRC: the index of the
synset in sorted order, image 1 is 65 in both), and the join checks that they agree on every
example. Boxes (`verify=True`, the default): the reference's `localization.txt` boxes are
inclusive original pixels `(x0, y0, x1, y1)`; camjax's are normalized `(ymin, xmin, ymax,
xmax)` with exclusive ends, so the stored box times the image size, rounded, minus one at the
ends, must give the same integers (compared per image as sets, in any order), and the image
sizes of `image_sizes.txt` must be the stored ones. Reading the ids reads every record of the
splits searched (images are not decoded, but their bytes are read): about 1 GB for CUB, 6 GB
for the ILSVRC validation split and the whole 140 GB training split for ILSVRC train ids.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from camjax.data import manual
from camjax.localization import wsol_io

_READ_BATCH = 256  # records per read
_REPO = "https://github.com/clovaai/wsolevaluation"

log = logging.getLogger(__name__)


class SplitMismatchError(ValueError):
    """The metadata and the prepared examples disagree; `mismatches` says where, per image."""

    def __init__(self, message: str, mismatches: list[str]):
        super().__init__(message)
        self.mismatches = mismatches


@dataclasses.dataclass(frozen=True)
class _Dataset:
    """How one camjax dataset answers to the reference's metadata of one benchmark."""

    name: str
    module: str
    configs: tuple[dict[str, bool], ...]  # `get_builder` keyword arguments, preferred first
    command: str
    to_ours: Callable[[str], tuple[str | None, str] | None]  # -> (split or None: any, our id)
    explain: Callable[[list[str], list[str]], str]  # (missing ids, prepared splits) -> why


def _cub_id(image_id: str) -> tuple[str | None, str]:
    return None, image_id


_CUBV2 = re.compile(r"[^/]+/\d+\.jpg")  # Flickr photo ids, where official files have names


def _cub_why(missing: list[str], splits: list[str]) -> str:
    if not any(_CUBV2.fullmatch(i) for i in missing):
        return ""
    return (
        "\nThe reference's CUB `val` split (train-fullsup, 5 images per class) is CUBV2: images "
        f"collected by the reference from Flickr and shipped as CUBV2.tar ({_REPO}, "
        "dataset/prepare_cub.sh), a separate download that is not in CUB_200_2011.tgz, so "
        "cub_200_2011 does not hold them. camjax's own `validation` split (cub.wsol_sources) is "
        "held out of the official train split instead."
    )


def _ilsvrc_id(image_id: str) -> tuple[str | None, str] | None:
    parts = image_id.split("/")
    if len(parts) == 2 and parts[0] == "val":
        return "validation", parts[1]
    if len(parts) == 3 and parts[0] == "train":
        return "train", parts[2]
    return None  # `val2/...`: ImageNetV2


def _ilsvrc_why(missing: list[str], splits: list[str]) -> str:
    why = ""
    if any(_ilsvrc_id(i) is None for i in missing):
        why += (
            "\nIds outside `val/` and `train/` (the reference's ILSVRC `val` split, `val2/...`) "
            "are ImageNetV2 images (imagenetv2-threshold0.7.tar.gz, fetched by the reference's "
            f"dataset/prepare_evaluation_data.sh, {_REPO}), a separate download that is not in "
            "the official ILSVRC 2012 archives, so ilsvrc2012_loc does not hold them. camjax's "
            "own `validation` split (ilsvrc.wsol_sources) is held out of the official "
            "validation set instead."
        )
    if "train" not in splits and any((_ilsvrc_id(i) or ("",))[0] == "train" for i in missing):
        why += (
            "\nTraining images need the `full` config: prepare it with ILSVRC2012_img_train.tar "
            "(python -m camjax.data.prepare ilsvrc --manual_dir DIR)."
        )
    return why


DATASETS = {
    "CUB": _Dataset(
        "cub_200_2011",
        "camjax.data.cub",
        ({"masks": True}, {"masks": False}),
        "python -m camjax.data.prepare cub --manual_dir DIR",
        _cub_id,
        _cub_why,
    ),
    "ILSVRC": _Dataset(
        "ilsvrc2012_loc",
        "camjax.data.ilsvrc",
        ({"train": True}, {"train": False}),
        "python -m camjax.data.prepare ilsvrc --manual_dir DIR",
        _ilsvrc_id,
        _ilsvrc_why,
    ),
}


class ReferenceSplit(manual.SplitView):
    """A `manual.SplitView` of the examples of a metadata split, with that `metadata`.

    `split[i]` is the prepared example of `metadata.image_ids[i]`.
    """

    def __init__(self, source: Sequence, indices: Sequence[int], metadata: wsol_io.WsolMetadata):
        super().__init__(source, indices)
        self.metadata = metadata


class _Chain(Sequence):
    """Several random-access sources one after the other (a split spread over prepared ones)."""

    def __init__(self, sources: Sequence[Sequence]):
        self.sources = list(sources)
        self.starts = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return k, i - int(self.starts[k])

    def __getitem__(self, i: int) -> Any:
        k, j = self._locate(int(i))
        return self.sources[k][j]

    def __getitems__(self, keys: Sequence[int]) -> list[Any]:
        return [self[k] for k in keys]


def reference_split(
    metadata_dir: str | os.PathLike,
    data_dir: str | None = None,
    *,
    dataset: str | None = None,
    verify: bool = True,
) -> ReferenceSplit:
    """The examples of a reference metadata split, in `image_ids.txt` order.

    Args:
      metadata_dir: a reference metadata folder, e.g. `wsolevaluation/metadata/CUB/test`.
      data_dir: tfds data directory of the prepared dataset; None for the tfds default.
      dataset: `CUB` or `ILSVRC` (or `cub_200_2011`, `ilsvrc2012_loc`); None takes the name
        of the metadata folder's parent.
      verify: also check the boxes and image sizes of the metadata against the examples.

    Returns:
      A random-access view (`len`, `[i]`, `__getitems__`) whose i-th record is the prepared
      example (as `load_data_sources` of the dataset gives it) of `metadata.image_ids[i]`.

    Raises:
      FileNotFoundError: the dataset is not prepared (the message says how), or
        (`manual.MissingFilesError`, `missing` the reference ids) ids that it does not hold,
        with why (CUBV2, ImageNetV2, training images without the `full` config).
      SplitMismatchError: labels, or with `verify` boxes or sizes, that differ.
      ValueError: an unknown dataset or a malformed metadata folder.
    """
    start = time.perf_counter()
    metadata = wsol_io.read_metadata(metadata_dir)
    spec = _dataset(Path(metadata_dir), dataset)
    builder = _prepared_builder(spec, data_dir)
    prepared = list(builder.info.splits)

    wanted: dict[str, list[int]] = {}  # our id -> positions in the metadata
    splits_named: set[str | None] = set()
    missing = []  # positions
    for position, image_id in enumerate(metadata.image_ids):
        ours = spec.to_ours(image_id)
        if ours is None or (ours[0] is not None and ours[0] not in prepared):
            missing.append(position)
            continue
        splits_named.add(ours[0])
        wanted.setdefault(ours[1], []).append(position)
    order = prepared if None in splits_named else [s for s in prepared if s in splits_named]

    found = {}  # our id -> (split, index, the fields _check reads)
    for split in order:
        if len(found) == len(wanted):
            break
        for index, record in _records_without_images(builder, split):
            our_id = _text(record["image_id"])
            if our_id in wanted and our_id not in found:
                # Only what the checks need: the skipped images are their undecoded bytes.
                fields = {k: record[k] for k in ("label", "height", "width")}
                fields["bbox"] = np.asarray(record["objects"]["bbox"], np.float32)
                found[our_id] = (split, index, fields)
    missing += [p for our_id, ps in wanted.items() if our_id not in found for p in ps]
    if missing:
        ids = [metadata.image_ids[p] for p in sorted(missing)]
        raise _missing_error(spec, builder, metadata_dir, ids, prepared)

    located = [None] * len(metadata)
    for our_id, positions in wanted.items():
        for p in positions:
            located[p] = found[our_id]
    _check(metadata, located, builder.info.features["label"].names, verify)

    used = [s for s in order if any(split == s for split, _, _ in found.values())]
    data = [builder.as_data_source(split) for split in used]
    offsets = dict(zip(used, np.cumsum([0] + [len(d) for d in data]).tolist(), strict=False))
    indices = [offsets[split] + i for split, i, _ in located]
    log.info(
        "%s: %d examples of %s joined in %.1f s.",
        metadata_dir,
        len(metadata),
        builder.info.full_name,
        time.perf_counter() - start,
    )
    source = data[0] if len(data) == 1 else _Chain(data)
    return ReferenceSplit(source, indices, metadata)


def _dataset(metadata_dir: Path, dataset: str | None) -> _Dataset:
    name = dataset or metadata_dir.resolve().parent.name
    for key, spec in DATASETS.items():
        if name in (key, spec.name):
            return spec
    known = ", ".join(f"{k} ({s.name})" for k, s in DATASETS.items())
    raise ValueError(
        f"Cannot tell the dataset of {metadata_dir} ({name!r}); pass dataset= one of {known}."
    )


def _prepared_builder(spec: _Dataset, data_dir: str | None) -> manual.ManualBuilder:
    module = importlib.import_module(spec.module)
    return manual.prepared_builder(
        (module.get_builder(data_dir, **config) for config in spec.configs),
        data_dir,
        spec.command,
        "DIR holding its archives (see the module doc of " + spec.module + ").",
    )


def _records_without_images(
    builder: tfds.core.DatasetBuilder, split: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, record) of a prepared split in order, its images and masks left undecoded."""
    skip = {
        k: tfds.decode.SkipDecoding()
        for k, f in builder.info.features.items()
        if isinstance(f, tfds.features.Image)
    }
    source = builder.as_data_source(split, decoders=skip)
    for first in range(0, len(source), _READ_BATCH):
        keys = list(range(first, min(first + _READ_BATCH, len(source))))
        yield from zip(keys, source.__getitems__(keys), strict=True)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _missing_error(
    spec: _Dataset,
    builder: tfds.core.DatasetBuilder,
    metadata_dir: str | os.PathLike,
    missing: list[str],
    prepared: list[str],
) -> manual.MissingFilesError:
    lines = [f"  {m}" for m in missing[: manual.MAX_LISTED]]
    if len(missing) > manual.MAX_LISTED:
        lines.append(f"  ... and {len(missing) - manual.MAX_LISTED} more")
    skipped = (builder.info.metadata or {}).get("skipped_corrupt", [])
    why = spec.explain(missing, prepared)
    if skipped:
        why += f"\n{len(skipped)} image(s) were skipped as corrupt when preparing: {skipped[:5]}."
    return manual.MissingFilesError(
        f"{len(missing)} image id(s) of {Path(metadata_dir) / wsol_io.IMAGE_IDS} are not in "
        f"{builder.info.full_name} (splits {', '.join(prepared)}) in {builder.data_dir_root}:\n"
        + "\n".join(lines)
        + why,
        missing,
    )


def _check(
    metadata: wsol_io.WsolMetadata, located: list[tuple], names: list[str], verify: bool
) -> None:
    """Labels always; with `verify`, image sizes and inclusive integer boxes."""
    problems = []
    for k, (image_id, (_, _, record)) in enumerate(zip(metadata.image_ids, located, strict=True)):
        label = int(record["label"])
        if label != metadata.class_labels[k]:
            name = names[label] if names and label < len(names) else label
            problems.append(
                f"{image_id}: label {metadata.class_labels[k]} in the metadata, {label} "
                f"({name}) prepared"
            )
        if not verify:
            continue
        height, width = int(record["height"]), int(record["width"])
        if metadata.image_sizes is not None:
            w, h = (int(v) for v in metadata.image_sizes[k])
            if (w, h) != (width, height):
                problems.append(
                    f"{image_id}: size {w}x{h} in the metadata, {width}x{height} prepared"
                )
        if metadata.boxes is not None:
            ours = inclusive_boxes(record["bbox"], height, width)
            theirs = metadata.boxes[k]
            if not np.array_equal(_sorted_rows(ours), _sorted_rows(theirs)):
                problems.append(
                    f"{image_id}: boxes (x0, y0, x1, y1) {theirs.tolist()} in the metadata, "
                    f"{ours.tolist()} prepared"
                )
    if problems:
        listing = "\n".join(f"  {p}" for p in problems[: manual.MAX_LISTED])
        more = len(problems) - manual.MAX_LISTED
        raise SplitMismatchError(
            f"{len(problems)} disagreement(s) between the metadata and the prepared examples:\n"
            + listing
            + (f"\n  ... and {more} more" if more > 0 else ""),
            problems,
        )


def inclusive_boxes(bbox: Any, height: int, width: int) -> np.ndarray:
    """camjax boxes -> the reference's: (K, 4) normalized (ymin, xmin, ymax, xmax), exclusive
    ends, of an image (height, width) -> (K, 4) int64 (x0, y0, x1, y1) inclusive pixels."""
    b = np.asarray(bbox, np.float64).reshape(-1, 4)
    px = np.rint(b * np.array([height, width, height, width], np.float64)).astype(np.int64)
    return np.stack([px[:, 1], px[:, 0], px[:, 3] - 1, px[:, 2] - 1], axis=-1)


def _sorted_rows(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.int64).reshape(-1, 4)
    return b[np.lexsort(b.T[::-1])]
