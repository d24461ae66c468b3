"""What camjax's checks of a prepared dataset's files cost when it opens.

    python benchmarks/data_open_time.py [--data_dir DIR] [--image_size 64] [--repeats 20]

`camjax.data.load_data_sources('wsol_shapes', ...)` with its checks (each shard's record count
against dataset_info.json, `data.check_shards`; each split's first example against its
rendering, `wsol_shapes._check_first_examples`) against the same call with both checks
replaced by no-ops, alternating in one process after a warm-up call of each; median of the
repeats. The dataset must be prepared in data_dir already (the quick start prepares the 64-px
one in tfds's default data dir). Also prints each shard's footer read alone, and what the
hand-prepared datasets' per-shard check costs with and without its first-record comparison
(`data.FIRST_RECORDS`), on a synthetic shard of ImageNet-sized records (110 kB, random bytes)
written to a temporary folder; the page cache is warm there, as it is for the footers.
"""

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from array_record.python import array_record_module  # noqa: E402

from camjax import data  # noqa: E402
from camjax.data import wsol_shapes  # noqa: E402


@contextlib.contextmanager
def checks_off():
    saved = wsol_shapes.check_shards, wsol_shapes._check_first_examples
    wsol_shapes.check_shards = wsol_shapes._check_first_examples = lambda *a: None
    try:
        yield
    finally:
        wsol_shapes.check_shards, wsol_shapes._check_first_examples = saved


def open_ms(args) -> float:
    start = time.perf_counter()
    data.load_data_sources("wsol_shapes", args.image_size, args.data_dir)
    return 1e3 * (time.perf_counter() - start)


def hand_prepared_shard_ms(repeats: int, records: int = 256, record_kb: int = 110):
    """Median ms of `data._check_shard` on one synthetic shard: counts only, then counts and
    the first record."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "shard.array_record-00000-of-00001")
        writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
        first = None
        for _ in range(records):
            record = os.urandom(record_kb * 1000)
            first = first or data.record_digest(record)
            writer.write(record)
        writer.close()
        shard = types.SimpleNamespace(filename=path, examples_in_shard=records)
        counts, firsts = [], []
        for i in range(repeats + 1):
            for times, digest in ((counts, None), (firsts, first)):
                start = time.perf_counter()
                data._check_shard("train", shard, digest)
                if i:
                    times.append(1e3 * (time.perf_counter() - start))
        size = os.path.getsize(path) / 1e6
    return size, statistics.median(counts), statistics.median(firsts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    checked, unchecked = [], []
    for i in range(args.repeats + 1):  # the first round warms both up and is not counted
        a = open_ms(args)
        with checks_off():
            b = open_ms(args)
        if i:
            checked.append(a)
            unchecked.append(b)
    with_checks, without = statistics.median(checked), statistics.median(unchecked)
    print(f"opening wsol_shapes {args.image_size} px, median of {args.repeats}:")
    print(f"  with the file checks    {with_checks:7.2f} ms")
    print(f"  without them (no-ops)   {without:7.2f} ms")
    print(f"  the checks' cost        {with_checks - without:7.2f} ms")
    builder = wsol_shapes.get_builder(args.image_size, args.data_dir)
    for split, info in builder.info.splits.items():
        for shard in info.file_instructions:
            start = time.perf_counter()
            reader = array_record_module.ArrayRecordReader(shard.filename)
            reader.num_records()
            reader.close()
            ms = 1e3 * (time.perf_counter() - start)
            size = os.path.getsize(shard.filename) / 1e6
            print(f"  footer of a {split} shard ({size:.1f} MB): {ms:.2f} ms")
    size, counts, firsts = hand_prepared_shard_ms(args.repeats)
    print(f"a hand-prepared shard ({size:.1f} MB of 110 kB records), median of {args.repeats}:")
    print(f"  record count only       {counts:7.2f} ms")
    print(f"  and its first record    {firsts:7.2f} ms")


if __name__ == "__main__":
    main()
