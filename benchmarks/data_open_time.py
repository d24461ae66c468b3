"""What camjax's checks of a prepared dataset's files cost when it opens.

    python benchmarks/data_open_time.py [--data_dir DIR] [--image_size 64] [--repeats 20]

`camjax.data.load_data_sources('wsol_shapes', ...)` with its checks (each shard's record count
against dataset_info.json, `data.check_shards`; each split's first example against its
rendering, `wsol_shapes._check_first_examples`) against the same call with both checks
replaced by no-ops, alternating in one process after a warm-up call of each; median of the
repeats. The dataset must be prepared in data_dir already (the quick start prepares the 64-px
one in tfds's default data dir). Also prints each shard's footer read alone.
"""

import argparse
import contextlib
import os
import statistics
import sys
import time

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


if __name__ == "__main__":
    main()
