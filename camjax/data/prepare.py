"""Builds the datasets that start from files downloaded by hand.

    python -m camjax.data.prepare {cub,ilsvrc,openimages} --manual_dir DIR \\
        [--data_dir DIR] [--skip_corrupt]

writes the tfds dataset (ArrayRecord) into `--data_dir` (default: `$TFDS_DATA_DIR` or
`~/tensorflow_datasets`), where `camjax.data` reads it. Nothing is downloaded.

Interface of a dataset module. It exposes

    prepare(manual_dir: str, data_dir: str | None = None, *, skip_corrupt: bool = False,
            progress: bool = True) -> tfds.core.DatasetBuilder

which builds the dataset from the files in `manual_dir` into `data_dir` (None: the tfds
default) without any network access and returns the prepared builder, doing nothing when it is
already prepared. Missing or incomplete inputs raise a `FileNotFoundError` that lists each
missing file and where it comes from, before anything is written; an unreadable input raises a
`ValueError` naming the file, unless `skip_corrupt` is set, in which case the example is
skipped, logged, and listed in `builder.info.metadata['skipped_corrupt']`. `progress` shows a
tqdm bar over the examples. Extra keyword-only arguments with defaults are allowed.

A dataset plugs in with one line in `PREPARERS`; its module is imported only when used.
"""

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any


def _module_prepare(module: str) -> Callable[..., Any]:
    """The `prepare` function of `module`, imported on first call."""

    def prepare(*args: Any, **kwargs: Any) -> Any:
        return importlib.import_module(module).prepare(*args, **kwargs)

    prepare.__doc__ = f"{module}.prepare"
    return prepare


PREPARERS: dict[str, Callable[..., Any]] = {
    "cub": _module_prepare("camjax.data.cub"),
    "ilsvrc": _module_prepare("camjax.data.ilsvrc"),
    "openimages": _module_prepare("camjax.data.openimages"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (1: missing or unreadable inputs)."""
    parser = argparse.ArgumentParser(
        prog="python -m camjax.data.prepare",
        description="Build a tfds dataset from files downloaded by hand (no network access).",
    )
    parser.add_argument("dataset", choices=sorted(PREPARERS))
    parser.add_argument(
        "--manual_dir", required=True, help="directory holding the downloaded archives"
    )
    parser.add_argument(
        "--data_dir", default=None, help="tfds data directory (default: the tfds default)"
    )
    parser.add_argument(
        "--skip_corrupt",
        action="store_true",
        help="skip and report undecodable images instead of stopping at the first",
    )
    args = parser.parse_args(argv)
    # Our progress and summary, tfds's warnings only.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("camjax").setLevel(logging.INFO)

    try:
        builder = PREPARERS[args.dataset](
            args.manual_dir, args.data_dir, skip_corrupt=args.skip_corrupt, progress=True
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{name} {split.num_examples}" for name, split in builder.info.splits.items())
    skipped = builder.info.metadata.get("skipped_corrupt", []) if builder.info.metadata else []
    print(f"{builder.info.full_name} is ready in {builder.data_dir_root}: {sizes} examples.")
    if skipped:
        print(f"Skipped {len(skipped)} corrupt example(s): {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
