"""Random-access views of part of a split: the WSOL splits that the prepared data does not
hold as such (`ManualBuilder.wsol_sources`), and the smaller splits of smoke runs.

`SplitView` stays hand-written: grain's `MapDataset` selects only regular slices (`ds[a:b:c]`),
and an index map over `MapDataset.range` would wrap an index out of range silently where this
raises `IndexError`.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from camjax.data.downloads import MAX_LISTED

_READ_BATCH = 256  # records per read of the labels

log = logging.getLogger(__name__)


class SplitView(Sequence):
    """Records `indices` of a random-access source, in that order.

    `len`, `view[i]` (negative too) and `view.__getitems__(keys)` (grain's and tfds's batched
    read) as a tfds data source has them, so `grain.MapDataset.source(view)` works.
    """

    def __init__(self, source: Sequence, indices: Sequence[int]):
        self.source = source
        self.indices = np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.source[int(self.indices[i])]  # numpy raises IndexError out of range

    def __getitems__(self, keys: Sequence[int]) -> list[Any]:
        return _getitems(self.source, [int(self.indices[k]) for k in keys])

    def __repr__(self) -> str:
        return f"SplitView({self.source!r}, {len(self)} of {len(self.source)} records)"


def _getitems(source: Sequence, keys: list[int]) -> list[Any]:
    if hasattr(source, "__getitems__"):
        return list(source.__getitems__(keys))
    return [source[k] for k in keys]


def spread_subset(source: Sequence, n: int, split: str = "") -> Sequence:
    """`n` records spread evenly over `source` (indices `floor(i * len / n)`); all for n = 0.

    For smoke runs: a class-ordered split keeps most classes, unlike a prefix. `split`: the
    split's name, for the message when it is too short (set by `num_<split>`).
    """
    if not n:
        return source
    if n > len(source) and not split:
        raise ValueError(f"asked for {n} examples of a source of {len(source)}.")
    if n > len(source):
        raise ValueError(
            f"num_{split} is {n} but the {split} split holds {len(source)} examples; set "
            f"config.data.num_{split} to at most {len(source)} (0: the whole split)."
        )
    picked = np.arange(n, dtype=np.int64) * len(source) // n
    if isinstance(source, SplitView):
        return SplitView(source.source, source.indices[picked])
    return SplitView(source, picked)


def records_without_images(
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
        yield from zip(keys, _getitems(source, keys), strict=True)


def holdout_per_class(
    builder: tfds.core.DatasetBuilder, split: str, per_class: int
) -> tuple[SplitView, SplitView]:
    """(held out, rest) views of a prepared split: per class, `per_class` records held out.

    Within a class the records held out are those whose `image_id` has the lowest SHA-256:
    a fixed pseudo-random draw that depends on nothing but the ids (not on record order, numpy
    or the machine), and that nests (the 5 per class are among the 10). A class with no more
    than `per_class` records is held out whole (logged). Both views keep record order. Reads
    the labels and ids of the split once (images are not decoded).
    """
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1; got {per_class}.")
    start = time.perf_counter()
    labels, ids = [], []
    for _, record in records_without_images(builder, split):
        labels.append(int(record["label"]))
        ids.append(record["image_id"])
    held, rest = _held_out_indices(np.asarray(labels, np.int64), ids, per_class)
    whole = sorted(c for c, n in collections.Counter(labels).items() if n <= per_class)
    if whole:
        log.warning(
            "%s/%s: the classes (labels) %s have %d records or fewer; each is held out whole.",
            builder.name,
            split,
            whole[:MAX_LISTED],
            per_class,
        )
    log.info(
        "%s/%s: held out %d of %d records in %.1f s.",
        builder.name,
        split,
        len(held),
        len(labels),
        time.perf_counter() - start,
    )
    data = builder.as_data_source(split)
    return SplitView(data, held), SplitView(data, rest)


def _held_out_indices(
    labels: np.ndarray, ids: Sequence[str | bytes], per_class: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the `per_class` indices whose ids hash lowest; (held out, rest), ascending."""
    digests = [hashlib.sha256(i if isinstance(i, bytes) else i.encode()).digest() for i in ids]
    order = sorted(range(len(ids)), key=lambda i: (labels[i], digests[i]))
    taken = collections.Counter()
    held = np.zeros(len(ids), bool)
    for i in order:
        if taken[labels[i]] < per_class:
            taken[labels[i]] += 1
            held[i] = True
    return np.flatnonzero(held), np.flatnonzero(~held)
