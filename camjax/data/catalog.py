"""Datasets of the tfds catalog that the user has already prepared, read by name without TF.

`load_catalog_sources('caltech_birds2011', data_dir)` opens a catalog dataset where tfds
prepared it (`<data_dir>/<name>/[<config>/]<version>/`), never downloading or preparing it, and
returns random-access sources whose examples look like every camjax dataset's: `image`
(H, W, 3) uint8, `label` int, `objects` {'bbox': (n, 4) float32 normalized (ymin, xmin, ymax,
xmax) with exclusive ends (`ymax = y1 / H`, `y1` one past the last row)} and, where the dataset
has one, `mask` (H, W, 1) uint8 in {0, 255}; the named datasets also give `image_id` (bytes).
Each source maps the catalog's own examples lazily, one read at a time (a grain `MapDataset`).

Reading needs ArrayRecord files: camjax reads through `builder.as_data_source()` without
TensorFlow, and tfds's random access has no TFRecord reader. `tfds build` writes TFRecord unless
told `--file_format=array_record`; a dataset already prepared as TFRecord converts in place with
`tfds convert_format` (TensorFlow needed for that once; see `_use_array_record`).

The adapters, one per dataset (`ADAPTERS`, keyed by the tfds name; others take `generic_adapter`).
The box conventions below are read from the builders' source (tensorflow_datasets 4.9.10,
`image_classification/caltech_birds.py`, `datasets/stanford_dogs/` and `datasets/oxford_iiit_pet/`
`*_dataset_builder.py`):

* `caltech_birds2011` (CUB-200-2011; 0.1.0 to 0.2.0 alike): `bbox` is one box built from
  `bounding_boxes.txt` as `(y / H, x / W, (y + h) / H, (x + w) / W)` with H, W the size of the
  segmentation mask (the image's), each clipped to at most 1. `x + w` is the last column of the
  bird, not one past it (`camjax.data.cub` gives the evidence: it reaches W - 1, never W), so
  the ends move one pixel out: `xmax + 1 / W`, `ymax + 1 / H`, clipped to 1 (never binding on the
  official boxes). `label` is the class id of `classes.txt` minus one; `segmentation_mask` is the
  grey PNG of `segmentations.tgz` as read by OpenCV, binarized at > 0 (annotators' average:
  any agreement is foreground). Label, box, mask and `image_id` (the path under `images/`, from
  `image/filename`) are then those of camjax's own `cub_200_2011`.
* `stanford_dogs` (0.2.0): `objects/bbox` holds every box of the image's XML annotation as
  `(ymin / height, xmin / width, ymax / height, xmax / width)`, the XML's own `size`, clipped to
  at most 1. The annotations are ImageNet's (the dataset is built from ImageNet's images and
  boxes; the files name `ImageNet database` and share ILSVRC's PASCAL-VOC-style layout), whose
  `xmax`, `ymax` are the last column and row (`camjax.data.ilsvrc` gives the evidence on the
  ILSVRC files), so the ends move one pixel out as for the birds. `image_id` is
  `<synset>-<breed>/<file>.jpg`, the form of the dataset's file lists.
* `oxford_iiit_pet` (4.0.0; 3.2.0 the same without `head_bbox`): no box of the animal. The only
  box, `head_bbox`, is the head's, and is all zeros on the test split (its images have no XML).
  The object comes from `segmentation_mask`, the trimap of `annotations/trimaps/`, kept as stored:
  1 = pet, 2 = background, 3 = the "not classified" band the annotators drew along the pet's
  outline. The outline lies in that band, so by default (`border_is_pet=True`) the mask is
  pet + band, the smallest annotated region sure to hold the whole animal, and the box is its
  tight box (exclusive ends), over every animal the trimap marks. `border_is_pet=False` keeps
  the pet pixels only (a box up to the band's width smaller on each side).
* Anything else (`generic_adapter`): the image and label of `info.supervised_keys` (else
  `image`, `label`), a greyscale image repeated to 3 channels, and the boxes of `objects/bbox`
  (else a top-level `bbox`, else none) taken as they are, that is assumed normalized with
  exclusive ends. That holds for tfds's `coco` (`(x + w) / W` of continuous coordinates); tfds's
  `voc` stores VOC's 1-based `xmin / W`, so there the starts are one pixel late. A dataset
  without boxes trains, but its box metrics are meaningless (logged). No mask is guessed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

log = logging.getLogger(__name__)

Example = dict[str, Any]
ExampleMap = Callable[[Mapping[str, Any]], Example]
# A dataset's info -> its per-example map; raises ValueError if the features do not fit.
AdapterFactory = Callable[[tfds.core.DatasetInfo], ExampleMap]

_ARRAY_RECORD = tfds.core.FileFormat.ARRAY_RECORD
_PET, _BORDER = 1, 3  # oxford_iiit_pet trimap values (2 is background)
_HAND_PREPARED = "`python -m camjax.data.prepare {cub,ilsvrc}` (cub_200_2011, ilsvrc2012_loc)"


class UnknownDatasetError(ValueError):
    """A name that is neither in the installed tfds catalog nor prepared in the data dir."""


def load_catalog_sources(
    name: str,
    data_dir: str | None = None,
    *,
    splits: Sequence[str] | Mapping[str, str] | None = None,
    adapter: AdapterFactory | None = None,
) -> dict[str, grain.MapDataset]:
    """Random-access sources of a tfds catalog dataset prepared (as ArrayRecord) in data_dir.

    Args:
      name: tfds name, optionally with config and version (`oxford_iiit_pet:3.2.0`); without a
        version, the version of the installed tfds's code.
      data_dir: tfds data directory; None for the tfds default (`$TFDS_DATA_DIR` or
        `~/tensorflow_datasets`).
      splits: split names to read (None: all), or {camjax split: tfds split spec}, e.g.
        `{'train': 'train[:90%]', 'validation': 'train[90%:]', 'test': 'test'}`.
      adapter: factory of the per-example map; default `ADAPTERS[builder.name]`, else
        `generic_adapter`. E.g. `functools.partial(oxford_pet_adapter, border_is_pet=False)`.

    Returns:
      split -> grain `MapDataset` of camjax examples (module doc), in the tfds record order.

    Raises:
      FileNotFoundError: not prepared there (the message says how to prepare it, and names
        other versions prepared there).
      UnknownDatasetError (a ValueError): neither in the tfds catalog nor prepared in data_dir.
      ValueError: an unknown split, a dataset stored without ArrayRecord files (the message
        gives the conversion command), or features the adapter cannot read.
    """
    builder = _prepared_builder(name, data_dir)
    _use_array_record(builder)
    fn = (adapter or ADAPTERS.get(builder.name, generic_adapter))(builder.info)
    return {
        split: grain.MapDataset.source(builder.as_data_source(spec, file_format=_ARRAY_RECORD)).map(
            fn
        )
        for split, spec in _split_specs(builder, splits).items()
    }


def _prepared_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """The builder of `name` in data_dir if prepared there; builds nothing, downloads nothing."""
    try:
        # The catalog's code builder (its current version) or, for a name without code or with
        # a version, a read-only builder from the prepared files; neither touches the network.
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise UnknownDatasetError(
            f"{name!r} is neither in the installed tfds catalog nor prepared in "
            f"{data_dir or 'the tfds default data dir'}: {err}"
        ) from err
    except AssertionError as err:
        # tfds's answer to a version that is neither in its code nor prepared in data_dir.
        raise _not_prepared(tfds.builder(name.split(":")[0], data_dir=data_dir), name) from err
    if not builder.is_prepared():
        raise _not_prepared(builder, builder.info.full_name)
    return builder


def _not_prepared(builder: tfds.core.DatasetBuilder, requested: str) -> FileNotFoundError:
    """The error for `requested` (a variant of `builder`'s dataset) missing from its data dir."""
    root = builder.data_dir_root
    versions = _prepared_versions(builder.data_path.parent)
    hint = ""
    if versions:
        listed = ", ".join(f"'{builder.name}:{v}'" for v in versions)
        hint = f" Prepared there, to read by naming them: {listed}."
    return FileNotFoundError(
        f"{requested} is not prepared in {root}.{hint} camjax reads catalog datasets as prepared "
        "and never downloads them. Prepare it where there is network access and TensorFlow, as "
        "ArrayRecord:\n"
        f"  tfds build {builder.name} --data_dir={root} --file_format=array_record\n"
        f"and copy {Path(root) / builder.name} here. CUB-200-2011 and ILSVRC 2012 can instead be "
        f"built here without TensorFlow from the archives downloaded by hand: {_HAND_PREPARED}."
    )


def _prepared_versions(folder: Path) -> list[str]:
    """The versions prepared in a dataset's (or config's) folder, newest first."""
    if not Path(folder).is_dir():
        return []
    found = [
        tfds.core.Version(p.name)
        for p in Path(folder).iterdir()
        if tfds.core.Version.is_valid(p.name) and (p / "dataset_info.json").is_file()
    ]
    return [str(v) for v in sorted(found, reverse=True)]


def _use_array_record(builder: tfds.core.DatasetBuilder) -> None:
    """Makes the builder read its ArrayRecord files; ValueError (how to convert) if none."""
    info = builder.info
    # A dataset converted in place lists ArrayRecord as an alternative format. tfds 4.9.10
    # restores that field into a code builder's proto but not into `available_file_formats()`,
    # which `as_data_source` checks, so read both and select the format ourselves.
    formats = {f.value for f in info.available_file_formats()}
    formats |= set(info.as_proto.alternative_file_formats)
    on_disk = any(Path(builder.data_path).glob(f"*.{_ARRAY_RECORD.file_suffix}-*"))
    if _ARRAY_RECORD.value in formats and on_disk:
        if info.file_format != _ARRAY_RECORD:
            info.set_file_format(_ARRAY_RECORD, override=True, override_if_initialized=True)
        return
    stored = ", ".join(sorted(formats)) or "tfrecord (the tfds default)"
    found = "" if on_disk else " and no ArrayRecord file is there"
    raise ValueError(
        f"{builder.info.full_name} in {builder.data_path} is stored as {stored}{found}. "
        "camjax reads datasets without TensorFlow by random access "
        "(`builder.as_data_source()`), which needs ArrayRecord. Convert it once where TensorFlow "
        "is installed:\n"
        f"  tfds convert_format --dataset_version_dir={builder.data_path} "
        "--out_file_format=array_record\n"
        "which writes ArrayRecord shards next to the existing ones and adds the format to "
        "dataset_info.json, or prepare it again with `tfds build ... --file_format=array_record`."
    )


def _split_specs(
    builder: tfds.core.DatasetBuilder, splits: Sequence[str] | Mapping[str, str] | None
) -> dict[str, str]:
    """{camjax split: tfds split spec}; each split named in a spec must exist (or be tfds's
    `all`, every split together)."""
    available = list(builder.info.splits)
    if splits is None:
        return {s: s for s in available}
    specs = dict(splits) if isinstance(splits, Mapping) else {s: s for s in splits}
    for spec in specs.values():
        for part in spec.split("+"):
            if part.split("[")[0].strip() not in [*available, "all"]:
                raise ValueError(
                    f"{builder.info.full_name} has no split {part!r}; its splits: {available}."
                )
    return specs


def _require(info: tfds.core.DatasetInfo, *keys: str) -> None:
    missing = [k for k in keys if k not in info.features]
    if missing:
        raise ValueError(
            f"{info.full_name} has no feature(s) {missing} (it has {sorted(info.features)}): "
            "a version this adapter does not read. Pass `adapter=catalog.generic_adapter` or "
            "your own."
        )


def caltech_birds_adapter(info: tfds.core.DatasetInfo) -> ExampleMap:
    """`caltech_birds2011`: `bbox` ends moved out one pixel, mask > 0 (module doc)."""
    _require(info, "image", "label", "bbox")
    return functools.partial(_birds_example, masks="segmentation_mask" in info.features)


def stanford_dogs_adapter(info: tfds.core.DatasetInfo) -> ExampleMap:
    """`stanford_dogs`: every `objects/bbox`, ends moved out one pixel (module doc)."""
    _require(info, "image", "label", "objects")
    return _dogs_example


def oxford_pet_adapter(info: tfds.core.DatasetInfo, *, border_is_pet: bool = True) -> ExampleMap:
    """`oxford_iiit_pet`: mask and box from the trimap, its border band counted as pet or not."""
    _require(info, "image", "label", "segmentation_mask")
    return functools.partial(_pet_example, border_is_pet=border_is_pet)


def generic_adapter(info: tfds.core.DatasetInfo) -> ExampleMap:
    """Any classification dataset: supervised image and label, boxes taken as stored."""
    keys = info.supervised_keys
    if not (isinstance(keys, tuple) and len(keys) == 2 and all(k in info.features for k in keys)):
        keys = ("image", "label")
    image_key, label_key = keys
    _require(info, image_key, label_key)
    image, label = info.features[image_key], info.features[label_key]
    if not isinstance(image, tfds.features.Image) or image.shape[-1] not in (1, 3):
        raise ValueError(f"{info.full_name}: {image_key!r} is not an RGB or grey image: {image}.")
    if not isinstance(label, tfds.features.ClassLabel):
        raise ValueError(f"{info.full_name}: {label_key!r} is not a class label: {label}.")
    box_key = _box_key(info.features)
    if box_key is None:
        log.warning(
            "%s has no `objects/bbox` or `bbox`: its examples get no boxes, so box metrics on it "
            "mean nothing.",
            info.full_name,
        )
    return functools.partial(
        _generic_example, image_key=image_key, label_key=label_key, box_key=box_key
    )


def _box_key(features: tfds.features.FeaturesDict) -> str | None:
    """'objects' if `objects/bbox` is a box sequence, else 'bbox' if a top-level box, else None."""
    objects = features["objects"] if "objects" in features else None
    if isinstance(objects, tfds.features.Sequence):
        inner = objects.feature
        if isinstance(inner, tfds.features.FeaturesDict) and "bbox" in inner:
            if isinstance(inner["bbox"], tfds.features.BBoxFeature):
                return "objects"
    if "bbox" in features and isinstance(features["bbox"], tfds.features.BBoxFeature):
        return "bbox"
    return None


ADAPTERS: dict[str, AdapterFactory] = {
    "caltech_birds2011": caltech_birds_adapter,
    "stanford_dogs": stanford_dogs_adapter,
    "oxford_iiit_pet": oxford_pet_adapter,
}


def _birds_example(ex: Mapping[str, Any], *, masks: bool) -> Example:
    image = ex["image"]
    out = {
        "image": image,
        "label": int(ex["label"]),
        "objects": {"bbox": _last_pixel_to_exclusive(ex["bbox"], *image.shape[:2])},
        "image_id": _tail(ex["image/filename"]),
    }
    if masks:
        out["mask"] = _binary(np.asarray(ex["segmentation_mask"]) > 0)
    return out


def _dogs_example(ex: Mapping[str, Any]) -> Example:
    image = ex["image"]
    return {
        "image": image,
        "label": int(ex["label"]),
        "objects": {"bbox": _last_pixel_to_exclusive(ex["objects"]["bbox"], *image.shape[:2])},
        "image_id": _tail(ex["image/filename"]),
    }


def _pet_example(ex: Mapping[str, Any], *, border_is_pet: bool) -> Example:
    trimap = np.asarray(ex["segmentation_mask"])[..., 0]
    pet = trimap == _PET
    if border_is_pet:
        pet |= trimap == _BORDER
    out = {
        "image": ex["image"],
        "label": int(ex["label"]),
        "objects": {"bbox": _mask_box(pet)},
        "mask": _binary(pet[..., None]),
    }
    if "file_name" in ex:
        out["image_id"] = ex["file_name"]
    return out


def _generic_example(
    ex: Mapping[str, Any], *, image_key: str, label_key: str, box_key: str | None
) -> Example:
    image = np.asarray(ex[image_key])
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if box_key == "objects":
        boxes = ex["objects"]["bbox"]
    elif box_key == "bbox":
        boxes = ex["bbox"]
    else:
        boxes = ()
    return {
        "image": image,
        "label": int(ex[label_key]),
        "objects": {"bbox": np.asarray(boxes, np.float32).reshape(-1, 4)},
    }


def _last_pixel_to_exclusive(boxes: Any, height: int, width: int) -> np.ndarray:
    """(n, 4) normalized boxes whose ends are the last row/column -> ends one past it, (n, 4)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    b[:, 2:] = np.minimum(b[:, 2:] + [1.0 / height, 1.0 / width], 1.0)
    return b.astype(np.float32)


def _mask_box(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (1, 4) float32 normalized tight box, exclusive ends; (0, 4) if empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return np.zeros((0, 4), np.float32)
    h, w = mask.shape
    return np.array(
        [[rows[0] / h, cols[0] / w, (rows[-1] + 1) / h, (cols[-1] + 1) / w]], np.float32
    )


def _binary(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * np.uint8(255)


def _tail(path: bytes | str) -> bytes:
    """`.../<class dir>/<file>` (either separator) -> b'<class dir>/<file>'."""
    text = path.decode() if isinstance(path, bytes) else path
    return "/".join(text.replace("\\", "/").split("/")[-2:]).encode()
