"""Builds a dataset that starts from files downloaded by hand.

    python -m camjax.data.prepare {cub,ilsvrc,openimages} --manual_dir DIR \\
        [--data_dir DIR] [--skip_corrupt]

writes the tfds dataset (ArrayRecord) into `--data_dir` (default: `$TFDS_DATA_DIR` or
`~/tensorflow_datasets`), where `camjax.data` reads it. Nothing is downloaded. The dataset is
any of `camjax.data.DATASETS` with a `prepare` (`manual.ManualBuilder.prepare`), named by its
name or its alias.
"""

import sys
from collections.abc import Sequence

from absl import app, flags, logging

import camjax.data

_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Directory holding the downloaded files.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data directory (default: tfds's).")
_SKIP_CORRUPT = flags.DEFINE_bool(
    "skip_corrupt", False, "Skip and report undecodable images instead of stopping at the first."
)


def prepare_and_report(
    name: str, manual_dir: str, data_dir: str | None = None, skip_corrupt: bool = False
) -> int:
    """Prepares dataset `name`, prints its splits; returns the exit status (1: bad inputs)."""
    try:
        builder = camjax.data.dataset(name).prepare(
            manual_dir, data_dir, skip_corrupt=skip_corrupt, progress=True
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


def main(argv: Sequence[str]) -> int:
    preparable = [
        alias
        for name in camjax.data.DATASETS
        if hasattr(cls := camjax.data.dataset(name), "prepare")
        for alias in (name, *cls.ALIASES[:1])
    ]
    if len(argv) != 2 or argv[1] not in preparable or not _MANUAL_DIR.value:
        raise app.UsageError(f"usage: {argv[0]} {{{','.join(preparable)}}} --manual_dir DIR")
    # Progress at INFO, problems at WARNING.
    logging.set_verbosity(logging.INFO)
    return prepare_and_report(argv[1], _MANUAL_DIR.value, _DATA_DIR.value, _SKIP_CORRUPT.value)


if __name__ == "__main__":
    app.run(main)
