"""ArrayRecord files as the hand-prepared datasets write them (`manual.ManualBuilder`): one
record per chunk, as tfds writes them, and records reordered by key through a scratch file."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from array_record.python import array_record_module

_READ_BATCH = 256  # records per read when reordering


def writer(path: Path) -> array_record_module.ArrayRecordWriter:
    # One record per chunk, as tfds writes them, for fast random access.
    return array_record_module.ArrayRecordWriter(os.fspath(path), "group_size:1")


def in_key_order(
    records: Iterable[tuple[Any, bytes]], scratch: Path
) -> Iterator[tuple[Any, bytes]]:
    """The records sorted by key, staged in a scratch file so that memory holds only the keys."""
    keys = []
    try:
        out = writer(scratch)
        try:
            for key, record in records:
                out.write(record)
                keys.append(key)
        finally:
            out.close()
        order = sorted(range(len(keys)), key=keys.__getitem__)
        for a, b in itertools.pairwise(order):
            if keys[a] == keys[b]:
                raise ValueError(f"Two examples have the key {keys[a]!r}.")
        reader = array_record_module.ArrayRecordReader(
            os.fspath(scratch), "readahead_buffer_size:0"
        )
        try:
            for start in range(0, len(order), _READ_BATCH):
                batch = order[start : start + _READ_BATCH]
                yield from zip((keys[i] for i in batch), reader.read(batch), strict=True)
        finally:
            reader.close()
    finally:
        scratch.unlink(missing_ok=True)
