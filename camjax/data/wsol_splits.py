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

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

import camjax.data
from camjax.data import downloads, manual, subsets
from camjax.localization import wsol_io

log = logging.getLogger(__name__)


class SplitMismatchError(ValueError):
    """The metadata and the prepared examples disagree; `mismatches` says where, per image."""

    def __init__(self, message: str, mismatches: list[str]):
        super().__init__(message)
        self.mismatches = mismatches


class ReferenceSplit(subsets.SplitView):
    """A `subsets.SplitView` of the examples of a metadata split, with that `metadata`.

    `split[i]` is the prepared example of `metadata.image_ids[i]`.
    """

    def __init__(self, source: Sequence, indices: Sequence[int], metadata: wsol_io.WsolMetadata):
        super().__init__(source, indices)
        self.metadata = metadata


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
        (`downloads.MissingFilesError`, `missing` the reference ids) ids that it does not hold,
        with why (CUBV2, ImageNetV2, training images without the `full` config).
      SplitMismatchError: labels, or with `verify` boxes or sizes, that differ.
      ValueError: an unknown dataset or a malformed metadata folder.
    """
    start = time.perf_counter()
    metadata = wsol_io.read_metadata(metadata_dir)
    cls = _dataset(Path(metadata_dir), dataset)
    builder = cls.prepared(data_dir)
    located = _locate(cls, builder, metadata, metadata_dir)
    _check(metadata, located, builder.info.features["label"].names, verify)

    used = [s for s in builder.info.splits if any(split == s for split, _, _ in located)]
    data = [grain.MapDataset.source(builder.as_data_source(split)) for split in used]
    offsets = dict(zip(used, np.cumsum([0] + [len(d) for d in data]).tolist(), strict=False))
    indices = [offsets[split] + i for split, i, _ in located]
    log.info(
        "%s: %d examples of %s joined in %.1f s.",
        metadata_dir,
        len(metadata),
        builder.info.full_name,
        time.perf_counter() - start,
    )
    return ReferenceSplit(grain.MapDataset.concatenate(data), indices, metadata)


def _locate(
    cls: type[manual.ManualBuilder],
    builder: manual.ManualBuilder,
    metadata: wsol_io.WsolMetadata,
    metadata_dir: str | os.PathLike,
) -> list[tuple[str, int, dict[str, Any]]]:
    """Per metadata image: (split, index, the fields `_check` reads) of its prepared example.

    Raises:
      downloads.MissingFilesError: ids that the prepared splits do not hold, with why.
    """
    prepared = list(builder.info.splits)
    ours: list[str | None] = []  # per position, our id; None: not in a prepared split
    splits_named: set[str | None] = set()
    for image_id in metadata.image_ids:
        split_and_id = cls.reference_id(image_id)
        if split_and_id is None or split_and_id[0] not in (None, *prepared):
            ours.append(None)
            continue
        splits_named.add(split_and_id[0])
        ours.append(split_and_id[1])
    wanted = set(ours) - {None}
    order = prepared if None in splits_named else [s for s in prepared if s in splits_named]

    found = {}  # our id -> (split, index, the fields _check reads)
    for split in order:
        if len(found) == len(wanted):
            break
        for index, record in subsets.records_without_images(builder, split):
            our_id = _text(record["image_id"])
            if our_id in wanted and our_id not in found:
                # Only what the checks need: the skipped images are their undecoded bytes.
                fields = {k: record[k] for k in ("label", "height", "width")}
                fields["bbox"] = np.asarray(record["objects"]["bbox"], np.float32)
                found[our_id] = (split, index, fields)
    missing = [i for i, o in zip(metadata.image_ids, ours, strict=True) if o not in found]
    if missing:
        raise _missing_error(cls, builder, metadata_dir, missing, prepared)
    return [found[o] for o in ours]


def _dataset(metadata_dir: Path, dataset: str | None) -> type[manual.ManualBuilder]:
    """The dataset named `dataset`, else by the metadata folder's parent (`CUB`, `ILSVRC`)."""
    name = dataset or metadata_dir.resolve().parent.name
    try:
        cls = camjax.data.dataset(name)
    except KeyError:
        cls = None
    if not hasattr(cls, "reference_id"):
        known = [n for n in camjax.data.DATASETS if hasattr(camjax.data.dataset(n), "reference_id")]
        raise ValueError(
            f"Cannot tell the dataset of {metadata_dir} ({name!r}); pass dataset= one of "
            f"{', '.join(known)} (or the reference's folder names, e.g. CUB)."
        )
    return cls


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _missing_error(
    cls: type[manual.ManualBuilder],
    builder: tfds.core.DatasetBuilder,
    metadata_dir: str | os.PathLike,
    missing: list[str],
    prepared: list[str],
) -> downloads.MissingFilesError:
    lines = [f"  {m}" for m in missing[: downloads.MAX_LISTED]]
    if len(missing) > downloads.MAX_LISTED:
        lines.append(f"  ... and {len(missing) - downloads.MAX_LISTED} more")
    skipped = (builder.info.metadata or {}).get("skipped_corrupt", [])
    why = cls.explain_missing(missing)
    absent = {(cls.reference_id(i) or (None,))[0] for i in missing} - {None, *prepared}
    if absent and cls.CONFIG_FLAG:
        (config,) = [c.name for c in cls.BUILDER_CONFIGS if getattr(c, cls.CONFIG_FLAG)]
        why += (
            f"\nImages of {', '.join(sorted(absent))} need the `{config}` config: prepare it "
            f"({cls.PREPARE_COMMAND}), {cls.PREPARE_INPUTS}"
        )
    if skipped:
        why += f"\n{len(skipped)} image(s) were skipped as corrupt when preparing: {skipped[:5]}."
    return downloads.MissingFilesError(
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
        listing = "\n".join(f"  {p}" for p in problems[: downloads.MAX_LISTED])
        more = len(problems) - downloads.MAX_LISTED
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
