"""Datasets (tfds builders read as random-access sources) and the input pipeline."""

import functools
import hashlib
import importlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from array_record.python import array_record_module

from camjax import errors

# The datasets camjax builds: name -> "module:class". A dataset is one module whose class (a tfds
# builder) has the class methods `sources(data_dir, image_size, split_sizes)` (what
# `load_data_sources` returns) and, if prepared from files downloaded by hand, those of
# `manual.ManualBuilder` (`prepare`, `wsol_sources`, ...), plus one line here.
DATASETS = {
    "wsol_shapes": "camjax.data.wsol_shapes:WsolShapes",
    "cub_200_2011": "camjax.data.cub:Cub2002011",
    "ilsvrc2012_loc": "camjax.data.ilsvrc:Ilsvrc2012Loc",
    "openimages30k_wsol": "camjax.data.openimages:OpenImages30kWsol",
}


def dataset(name: str) -> type:
    """The class of a dataset of `DATASETS`, by its name or one of its `ALIASES` (`cub`, `CUB`).

    Raises:
      KeyError: not a camjax dataset.
    """
    if name in DATASETS:
        module, cls = DATASETS[name].split(":")
        return getattr(importlib.import_module(module), cls)
    for known in DATASETS:
        cls = dataset(known)
        if name in getattr(cls, "ALIASES", ()):
            return cls
    raise KeyError(f"{name!r} is not a camjax dataset; they are {', '.join(DATASETS)}.")


def load_data_sources(
    name: str,
    image_size: int,
    data_dir: str | None = None,
    split_sizes: Mapping[str, int] | None = None,
) -> Mapping[str, Sequence]:
    """Split name -> random-access source of decoded tfds examples (numpy dicts).

    A dataset of `DATASETS` gives its class's `sources`: 'wsol_shapes' is generated into data_dir
    on first use, split_sizes ({'num_train': n, ...}, 0 or missing = standard size) building a
    smaller variant of it. The datasets downloaded by hand are read as prepared (`python -m
    camjax.data.prepare {cub,ilsvrc,openimages}`; a FileNotFoundError says so otherwise), at
    their original image sizes, which the pipeline resizes to image_size; their splits are
    those of the WSOL protocol, `validation` disjoint from `train` and `test`
    (`ManualBuilder.wsol_sources`: CUB's is 5 images per class held out of the official train
    split, ILSVRC's 10 per class of the official validation set, whose rest is `test`).
    split_sizes may set 'validation_per_class' (0 = that default); a nonzero 'num_<split>'
    keeps that many examples spread evenly over the split, for smoke runs
    (`subsets.spread_subset`).

    Any other name is a tfds catalog dataset already prepared as ArrayRecord in data_dir
    (`catalog.load_catalog_sources`: caltech_birds2011, stanford_dogs, oxford_iiit_pet with
    their boxes and masks converted to camjax's convention, others generically); one with
    `train` and `test` splits but no `validation` split gets the last 10% of `train` as
    `validation` and keeps the rest as `train`.
    """
    for key, n in (split_sizes or {}).items():
        if n < 0:  # a negative count would spread an empty split
            raise ValueError(f"split size {key} must be >= 0 (0: the standard size); got {n}.")
    if name in DATASETS:
        return dataset(name).sources(data_dir, image_size, dict(split_sizes or {}))
    return _catalog_sources(name, data_dir, split_sizes)


def reopenable_sources(
    name: str,
    image_size: int,
    data_dir: str | None = None,
    split_sizes: Mapping[str, int] | None = None,
) -> Mapping[str, Sequence]:
    """`load_data_sources`, each split wrapped in a `ReopenableSource`, for grain's workers."""
    sources = load_data_sources(name, image_size, data_dir, split_sizes)
    sizes = dict(split_sizes or {})
    where = data_dir or "the tfds default data dir"
    return {
        split: ReopenableSource(
            functools.partial(_open_split, name, image_size, data_dir, sizes, split),
            source,
            what=f"the {split} split of {name} in {where}",
        )
        for split, source in sources.items()
    }


def _open_split(
    name: str, image_size: int, data_dir: str | None, sizes: dict[str, int], split: str
) -> Sequence:
    return load_data_sources(name, image_size, data_dir, sizes)[split]


class DataFilesError(RuntimeError):
    """A prepared dataset's files cannot be read (damaged, truncated, changed), or its data dir
    cannot be generated into."""


_PREPARE_AGAIN = (
    "Delete the dataset's folder in the data dir and rerun (wsol_shapes is generated again; "
    "the others: prepare them again)."
)


def refuse_unprepared_folder(builder: Any, rebuilt: str) -> None:
    """A one-line DataFilesError, before preparing, for a version folder without its
    dataset_info.json (half-copied, or made by hand), which tfds takes as prepared and skips,
    leaving it unreadable. `rebuilt` says what a rerun does once it is deleted. is_prepared is
    asked again: another process may have just renamed its finished copy into place."""
    if builder.data_path.exists() and not builder.is_prepared():
        raise DataFilesError(
            f"{builder.data_path} holds no prepared {builder.name} (no dataset_info.json: a "
            f"half-copied or damaged folder); delete it and rerun: {rebuilt}."
        )


FIRST_RECORDS = "first_records"  # builder metadata: split -> each shard's `record_digest`
_DIGEST = re.compile(r"[0-9a-f]{16}")


def record_digest(record: bytes) -> str:
    """A serialized example's fingerprint, as the shard checks compare them."""
    return hashlib.sha256(record).hexdigest()[:16]


def check_shards(builder: Any) -> None:
    """A one-line DataFilesError when a prepared tfds builder's ArrayRecord shards do not hold
    the examples its dataset_info.json lists: a shard swapped with another split's (the test
    split would read train images without an error), replaced, truncated or missing. Reads
    each shard's footer: milliseconds per shard. Where the builder's metadata keeps each
    shard's first record (`FIRST_RECORDS`, the hand-prepared datasets since 2026-12-05), that
    record is read and compared too, which catches shards of equal counts swapped or reordered
    as well. wsol_shapes has one shard per split and compares each split's first example with
    its rendering instead."""
    first_records = _first_records(builder)
    for split, info in builder.info.splits.items():
        if not info.file_instructions:  # camjax's datasets have no empty split
            raise DataFilesError(
                f"the dataset_info.json of {builder.data_path} lists no examples for the {split} "
                f"split: the prepared files are damaged or were changed. {_PREPARE_AGAIN}"
            )
        firsts = None if first_records is None else first_records[split]
        if firsts is not None and len(firsts) != len(info.file_instructions):
            raise DataFilesError(
                f"the {split} split of {builder.data_path} has {len(info.file_instructions)} "
                f"shards, where its metadata.json lists {len(firsts)}: the prepared files are "
                f"damaged or were changed. {_PREPARE_AGAIN}"
            )
        for i, shard in enumerate(info.file_instructions):
            _check_shard(split, shard, None if firsts is None else firsts[i])


def _first_records(builder: Any) -> dict[str, list[str]] | None:
    """The builder's `FIRST_RECORDS`, or None where it keeps none (wsol_shapes, a dataset
    prepared before them); a one-line DataFilesError when its metadata.json is damaged."""
    path = os.path.join(builder.data_path, "metadata.json")
    try:  # tfds reads metadata.json when the metadata is first used: here
        first_records = (getattr(builder.info, "metadata", None) or {}).get(FIRST_RECORDS)
    except (ValueError, TypeError, AttributeError, OSError) as e:
        raise DataFilesError(
            f"{path} does not read ({errors.first_line(e)}): the prepared files are damaged or "
            f"were changed. {_PREPARE_AGAIN}"
        ) from None
    if first_records is None:
        return None
    if not (
        isinstance(first_records, dict)
        and set(first_records) == set(builder.info.splits)
        and all(map(_is_digest_list, first_records.values()))
    ):
        raise DataFilesError(
            f"{path} holds no valid {FIRST_RECORDS!r} (a list of record digests per split): the "
            f"prepared files are damaged or were changed. {_PREPARE_AGAIN}"
        )
    return first_records


def _is_digest_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(d, str) and _DIGEST.fullmatch(d) for d in value
    )


def _check_shard(split: str, shard: Any, first: str | None) -> None:
    """`check_shards` for one shard: its record count, and its first record if `first`."""
    try:
        reader = array_record_module.ArrayRecordReader(shard.filename)
        try:
            count = reader.num_records()
            found = f"{count} examples"
            record = reader.read([0])[0] if first is not None and count else None
        finally:
            reader.close()
    except (RuntimeError, OSError) as e:  # array_record raises RuntimeError
        count, found, record = None, f"no readable examples ({errors.first_line(e)})", None
    if count != shard.examples_in_shard:
        raise DataFilesError(
            f"{shard.filename} of the {split} split holds {found}, where its dataset_info.json "
            f"lists {shard.examples_in_shard}: the prepared files are damaged or were changed. "
            f"{_PREPARE_AGAIN}"
        )
    if first is not None and record_digest(record) != first:
        raise DataFilesError(
            f"the first example in {shard.filename} of the {split} split is not the one "
            "prepared there: shards were swapped or reordered, or the file was changed. "
            f"{_PREPARE_AGAIN}"
        )


class ReopenableSource(Sequence):
    """A split's random-access source that pickles as the recipe for opening it again.

    grain's worker processes are spawned, and the pipeline, source included, is pickled to
    them. tfds sources do not survive that (a builder with a custom config refuses to be
    rebuilt under the same name) and open file readers should not travel anyway, so a worker
    unpickling this opens the split itself, from the prepared files.
    """

    def __init__(
        self, open_split: Callable[[], Sequence], source: Sequence | None = None, what: str = ""
    ):
        self._open_split, self._what = open_split, what
        self._source = open_split() if source is None else source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index):
        try:
            return self._source[index]
        except (RuntimeError, OSError) as e:  # array_record's readers raise RuntimeError
            raise DataFilesError(
                f"reading example {index} of {self._what} failed ({errors.first_line(e)}): its "
                f"prepared files are damaged or were changed. {_PREPARE_AGAIN}"
            ) from e

    def __getstate__(self) -> dict:
        return {"open_split": self._open_split, "what": self._what}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["open_split"], what=state.get("what", ""))


# Catalog datasets without a validation split hold out this fraction of train for it (the
# last records: tfds shuffles records when it writes them), never test.
_CATALOG_HOLDOUT = 0.1


def _catalog_sources(
    name: str, data_dir: str | None, split_sizes: Mapping[str, int] | None
) -> Mapping[str, Sequence]:
    """Any tfds catalog dataset already prepared as ArrayRecord in data_dir (`catalog.py`)."""
    from camjax.data import catalog, subsets

    try:
        sources = catalog.load_catalog_sources(name, data_dir)
    except catalog.UnknownDatasetError as err:
        raise ValueError(
            f"Unknown dataset {name!r}; camjax's datasets: {', '.join(DATASETS)}, or any tfds "
            f"catalog dataset prepared (as ArrayRecord) in data_dir (tfds: "
            f"{errors.first_line(err)})."
        ) from err
    if "validation" not in sources and {"train", "test"} <= set(sources):
        train = sources["train"]
        n = len(train)
        held = max(1, int(round(n * _CATALOG_HOLDOUT))) if n > 1 else 0
        sources["train"], sources["validation"] = train[: n - held], train[n - held :]
    sizes = dict(split_sizes or {})
    return {
        split: subsets.spread_subset(source, sizes.get(f"num_{split}", 0), split)
        for split, source in sources.items()
    }
