"""The tfds builder base of the datasets built from hand-downloaded archives, and their API.

`ManualBuilder` is both the tfds builder base (`cub`, `ilsvrc`, `openimages`) and, through its
class methods, the dataset that `camjax.data.DATASETS` names: `prepare`, `prepared`,
`data_sources`, `wsol_sources` and the registry's `sources`, written once for all of them.

As a builder: ArrayRecord by default, the features every dataset here has (`_manual_info`),
the skip-corrupt bookkeeping (`info.metadata['skipped_corrupt']`), and a streaming ArrayRecord
writer in place of tfds's, which keeps each shard's first record for the checks at opening
(`data.check_shards`). tfds 4.9.10 stages a split in memory and, past 1 GB, spills it
through TensorFlow's file API, which this TF-free install lacks; the writer here writes shards
as the examples come, in generation order or (`ORDER_BY_KEY`) in key order through a scratch
file (`array_records`). The inputs are read with `downloads`; the WSOL splits are `subsets`
of the prepared ones.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer
from tqdm import tqdm

from camjax import data
from camjax.data import array_records, subsets
from camjax.data.downloads import CorruptFileError

FILE_FORMAT = "array_record"
SHARD_BYTES = 1 << 30  # ArrayRecord shard size, before the shard's own overhead

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
B = TypeVar("B", bound="ManualBuilder")


class ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """tfds builder base of the hand-downloaded datasets, and the dataset behind its name.

    As a builder: subclasses generate `(key, example)` pairs as usual; `ORDER_BY_KEY` makes the
    records follow the keys (as tfds's writer does with `disable_shuffling`) rather than
    generation order. `_skipping_corrupt` wraps the decoding of each input, `_manual_info`
    builds `_info`, `check_inputs` fails before anything is written.

    As a dataset (class methods, what `camjax.data.DATASETS` names): `prepare` it from the
    manual directory, open the `prepared` builder, read its `data_sources` or its
    `wsol_sources`, and `sources`, the registry's entry point. A builder with two configs
    names their boolean field in `CONFIG_FLAG` (`masks`, `train`), which is then the keyword
    argument of those methods; None there means the True config if prepared, else the False.
    """

    ORDER_BY_KEY: ClassVar[bool] = False
    CONFIG_FLAG: ClassVar[str] = ""
    # The input file whose presence makes `prepare` pick the True config.
    FLAG_INPUT: ClassVar[str] = ""
    # For `prepared`'s error: the command that prepares the dataset, and its inputs.
    PREPARE_COMMAND: ClassVar[str] = ""
    PREPARE_INPUTS: ClassVar[str] = ""
    # Other names of the dataset: the prepare command's, the reference's metadata folder's.
    ALIASES: ClassVar[tuple[str, ...]] = ()
    NUM_CLASSES: ClassVar[int | None] = None
    # WSOL `validation` split: (prepared split it is held out of, name of the rest of that
    # split), `VALIDATION_PER_CLASS` images per class; None: the dataset has its own.
    HOLDOUT: ClassVar[tuple[str, str] | None] = None
    VALIDATION_PER_CLASS: ClassVar[int] = 0
    OFFICIAL_TRAIN_IMAGES: ClassVar[int] = 0  # in the official train split, for recipes
    SPLIT_SIZES: ClassVar[tuple[str, ...]] = (
        "num_train",
        "num_validation",
        "num_test",
        "validation_per_class",
    )

    def __init__(
        self,
        *,
        file_format: str | None = FILE_FORMAT,
        skip_corrupt: bool = False,
        progress: bool = False,
        **kwargs: Any,
    ):
        # Random access (`as_data_source`) needs ArrayRecord rather than tfds's TFRecord.
        super().__init__(file_format=file_format, **kwargs)
        self._skip_corrupt = skip_corrupt
        self._progress = progress
        self._plans: dict[Path, Any] = {}

    def _manual_info(
        self,
        *,
        description: str,
        homepage: str,
        citation: str,
        num_classes: int | None = None,
        features: Mapping[str, Any] | None = None,
    ) -> tfds.core.DatasetInfo:
        """The `_info` of a dataset here: the features they all have, then `features`.

        `image` (bytes as stored, 3 channels on decode), `height` and `width` (int32), `label`
        (`num_classes` classes, or None: as many as the names set when preparing), `image_id`
        and `objects/bbox`. Records are read in the order they were written (generation order,
        or key order with `ORDER_BY_KEY`); `metadata` holds `skipped_corrupt` and `FIRST_RECORDS`.
        """
        return self.dataset_info_from_configs(
            description=description,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "height": np.int32,
                    "width": np.int32,
                    # Names found when preparing are stored with the dataset.
                    "label": tfds.features.ClassLabel(num_classes=num_classes),
                    "image_id": tfds.features.Text(),
                    "objects": tfds.features.Sequence({"bbox": tfds.features.BBoxFeature()}),
                    **(features or {}),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=homepage,
            # Records stay in the order the writer gives them (see `ORDER_BY_KEY`).
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
            citation=citation,
        )

    def check_inputs(self, manual_dir: Path) -> None:
        """Raises `MissingFilesError` if an input in `manual_dir` is missing (`prepare`).

        Runs before tfds writes anything: by default it makes the `plan`, kept to write from.
        """
        self.plan(manual_dir)

    def plan(self, manual_dir: Path) -> Any:
        """`_make_plan(manual_dir)`, made once per folder (reading archive indexes is slow)."""
        key = Path(manual_dir).resolve()
        if key not in self._plans:
            self._plans[key] = self._make_plan(Path(manual_dir))
        return self._plans[key]

    def _make_plan(self, manual_dir: Path) -> Any:
        """What writing needs from the inputs (paths, indexes), checked complete: raises
        `MissingFilesError` or `CorruptFileError` otherwise. None: nothing to check."""
        del manual_dir

    @classmethod
    def configured(
        cls: type[B],
        data_dir: str | None = None,
        *,
        skip_corrupt: bool = False,
        progress: bool = False,
        **config: bool,
    ) -> B:
        """The builder in `data_dir` (None: the tfds default) of the config `config` picks.

        `config` is `{CONFIG_FLAG: bool}` (default True), empty for a builder without configs.
        """
        kwargs = {"data_dir": data_dir, "skip_corrupt": skip_corrupt, "progress": progress}
        flag = cls._flag(config)
        if cls.CONFIG_FLAG:
            flag = True if flag is None else flag
            (name,) = [c.name for c in cls.BUILDER_CONFIGS if getattr(c, cls.CONFIG_FLAG) == flag]
            kwargs["config"] = name
        return cls(**kwargs)

    @classmethod
    def _flag(cls, config: Mapping[str, bool | None]) -> bool | None:
        """The flag given (None: not given); any other keyword, a misspelt flag, a TypeError."""
        unknown = sorted(set(config) - {cls.CONFIG_FLAG})
        if unknown:
            only = f"; only {cls.CONFIG_FLAG}" if cls.CONFIG_FLAG else ""
            raise TypeError(f"{cls.name} takes no config argument {unknown}{only}.")
        return config.get(cls.CONFIG_FLAG)

    @classmethod
    def default_flag(cls, manual_dir: Path, data_dir: str | None) -> bool:
        """`prepare`'s config when not told: True if prepared or `FLAG_INPUT` is there."""
        return cls.configured(data_dir).is_prepared() or (manual_dir / cls.FLAG_INPUT).is_file()

    @classmethod
    def prepare(
        cls: type[B],
        manual_dir: str | Path,
        data_dir: str | None = None,
        *,
        skip_corrupt: bool = False,
        progress: bool = True,
        **config: bool | None,
    ) -> B:
        """Builds the dataset from the files in `manual_dir`; a no-op if already prepared.

        Args:
          manual_dir: directory holding the files listed in the dataset's module doc.
          data_dir: tfds data directory to write to; None for the tfds default.
          skip_corrupt: skip (and log, count, record) examples whose image or mask cannot be
            decoded, instead of raising `CorruptFileError`.
          progress: show a progress bar over the examples of each split.
          config: `{CONFIG_FLAG: bool or None}`; None (or absent) picks `default_flag`.

        Returns:
          The prepared builder; `builder.info.metadata['skipped_corrupt']` lists skipped ids.
        """
        manual_dir = Path(manual_dir)
        flag = cls._flag(config)
        if cls.CONFIG_FLAG:
            config = {
                cls.CONFIG_FLAG: cls.default_flag(manual_dir, data_dir) if flag is None else flag
            }
        options = {"skip_corrupt": skip_corrupt, "progress": progress, **config}
        builder = cls.configured(data_dir, **options)
        if builder.is_prepared():
            log.info("%s is already prepared in %s.", builder.info.full_name, builder.data_dir_root)
            return builder
        data.refuse_unprepared_folder(builder, f"it is built again from {manual_dir}")
        builder.check_inputs(manual_dir)
        download = tfds.download.DownloadConfig(manual_dir=str(manual_dir), try_download_gcs=False)
        try:
            # tfds writes into an `incomplete.*` directory renamed into place at the end.
            builder.download_and_prepare(file_format=FILE_FORMAT, download_config=download)
        except OSError:
            # Losing that rename race to another process is fine once its copy exists.
            if not builder.data_path.exists():
                raise
            builder = cls.configured(data_dir, **options)
        skipped = builder.info.metadata.get("skipped_corrupt", [])
        if skipped:
            log.warning("Skipped %d corrupt image(s): %s", len(skipped), ", ".join(skipped))
        return builder

    @classmethod
    def prepared(cls: type[B], data_dir: str | None = None, **config: bool | None) -> B:
        """The prepared builder of the config `config` picks (module doc: None tries both).

        Raises:
          FileNotFoundError: not prepared; the message gives `PREPARE_COMMAND`.
        """
        flag = cls._flag(config)
        other_versions = set()
        for f in (True, False) if flag is None and cls.CONFIG_FLAG else (flag,):
            builder = cls.configured(data_dir, **({cls.CONFIG_FLAG: f} if cls.CONFIG_FLAG else {}))
            if builder.is_prepared():
                data.check_shards(builder)
                return builder
            other_versions |= _other_prepared_versions(builder)
        where = f" --data_dir {data_dir}" if data_dir else ""
        held = ""
        if other_versions:  # a camjax that changes what a dataset stores bumps its version
            held = ", ".join(sorted(other_versions))
            held = f" (it holds version {held} of it; this camjax reads {builder.version})"
        raise FileNotFoundError(
            f"{builder.name} is not prepared in {builder.data_dir_root}{held}. Prepare it with "
            f"`{cls.PREPARE_COMMAND}{where}`, {cls.PREPARE_INPUTS}"
        )

    @classmethod
    def data_sources(cls, data_dir: str | None = None, **config: bool | None) -> dict[str, Any]:
        """Split -> tfds `ArrayRecordDataSource` of the prepared splits (`prepared`).

        `source[i]` is a dict with `image` (H, W, 3) uint8, `height`, `width`, `label`,
        `image_id` (bytes), `objects` {'bbox': (K, 4) float32 normalized (ymin, xmin, ymax,
        xmax), exclusive ends} and the dataset's own features (its module doc).
        """
        return dict(cls.prepared(data_dir, **config).as_data_source())

    @classmethod
    def wsol_sources(
        cls, data_dir: str | None = None, *, validation_per_class: int = 0, **config: bool | None
    ) -> dict[str, Sequence]:
        """The WSOL splits `train`, `validation` and `test` of the prepared dataset.

        `validation` is `validation_per_class` (0: `VALIDATION_PER_CLASS`) records per class of
        the split `HOLDOUT` names (`subsets.holdout_per_class`), and the rest of that split is
        the split `HOLDOUT` names second, both in record order; without `HOLDOUT` the dataset's
        own splits, and `validation_per_class` must be 0.

        Raises:
          FileNotFoundError: not prepared; the message gives the command that prepares it.
        """
        builder = cls.prepared(data_dir, **config)
        splits = dict(builder.as_data_source())
        if cls.HOLDOUT is None:
            if validation_per_class:
                raise ValueError(
                    f"{cls.name} has the reference's own validation split; validation_per_class "
                    f"does not apply (got {validation_per_class})."
                )
            return splits
        held_from, rest = cls.HOLDOUT
        per_class = validation_per_class or cls.VALIDATION_PER_CLASS
        held, others = subsets.holdout_per_class(builder, held_from, per_class)
        del splits[held_from]
        splits.update({"validation": held, rest: others})
        return {s: splits[s] for s in ("train", "validation", "test") if s in splits}

    @classmethod
    def train_images(cls) -> int:
        """Images of the whole WSOL `train` split: the official ones less those held out."""
        held = cls.HOLDOUT is not None and cls.HOLDOUT[0] == "train"
        return cls.OFFICIAL_TRAIN_IMAGES - (
            cls.VALIDATION_PER_CLASS * cls.NUM_CLASSES if held else 0
        )

    @classmethod
    def sources(
        cls, data_dir: str | None, image_size: int, split_sizes: Mapping[str, int]
    ) -> dict[str, Sequence]:
        """The registry's entry point (`camjax.data.load_data_sources`): `wsol_sources`.

        `split_sizes` may set `validation_per_class` (0: the default) and, nonzero,
        `num_<split>`: that many examples spread over the split (`subsets.spread_subset`).
        Images keep their size (`image_size` is the pipeline's).
        """
        del image_size
        sizes = dict(split_sizes)
        unknown = sorted(set(sizes) - set(cls.SPLIT_SIZES))
        if unknown:
            raise ValueError(
                f"Unknown split_sizes {unknown} for {cls.name}; known: {cls.SPLIT_SIZES}."
            )
        per_class = sizes.pop("validation_per_class", 0)
        return {
            split: subsets.spread_subset(source, sizes.get(f"num_{split}", 0), split)
            for split, source in cls.wsol_sources(data_dir, validation_per_class=per_class).items()
        }

    def _skipping_corrupt(
        self,
        split: str,
        items: Iterable[T],
        name: Callable[[T], str],
        decode: Callable[[T], R],
        total: int | None,
    ) -> Iterator[tuple[T, R]]:
        """(item, decode(item)) per item, with a progress bar over the split.

        A `CorruptFileError` from `decode` propagates or, with `skip_corrupt`, skips the item:
        logged, counted on the bar and listed by `name(item)` in `info.metadata`.
        """
        skipped = self.info.metadata["skipped_corrupt"]
        with tqdm(
            total=total, desc=f"{self.name} {split}", unit=" images", disable=not self._progress
        ) as bar:
            for item in items:
                bar.update(1)
                try:
                    decoded = decode(item)
                except CorruptFileError as err:
                    if not self._skip_corrupt:
                        raise
                    log.warning("Skipping %s: %s", name(item), err)
                    skipped.append(name(item))
                    bar.set_postfix(skipped=len(skipped))
                    continue
                yield item, decoded

    def _download_and_prepare(
        self,
        dl_manager: tfds.download.DownloadManager,
        download_config: tfds.download.DownloadConfig,
    ) -> None:
        # Replaces tfds's writer, which needs TensorFlow for splits over 1 GB (module doc).
        self.info.metadata["skipped_corrupt"] = []
        self.info.metadata[data.FIRST_RECORDS] = {}
        limit = download_config.max_examples_per_split
        infos = [
            self._write_split(name, itertools.islice(examples, limit))
            for name, examples in self._split_generators(dl_manager).items()
        ]
        self.info.set_splits(tfds.core.SplitDict(infos))

    def _write_split(self, name: str, examples: Iterable[tuple[Any, dict]]) -> tfds.core.SplitInfo:
        """Serializes the examples into ArrayRecord shards of about `SHARD_BYTES`."""
        features = self.info.features
        serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
        template = self._get_filename_template(split_name=name)

        def encoded(key: Any, example: dict) -> bytes:
            try:
                return serializer.serialize_example(features.encode_example(example))
            except (ValueError, TypeError) as e:  # tfds's message spans a line per feature
                raise ValueError(
                    f"example {key!r} of the {name} split cannot be stored: "
                    f"{' '.join(str(e).split())} Fix it in the inputs, then prepare again."
                ) from None

        records = ((key, encoded(key, example)) for key, example in examples)
        if self.ORDER_BY_KEY:
            records = array_records.in_key_order(records, template.data_dir / f"{name}.unordered")
        parts, lengths, num_bytes, shard_bytes, writer = [], [], 0, 0, None
        # Each shard's first record, compared at opening (`data.check_shards`: swapped shards).
        firsts = self.info.metadata[data.FIRST_RECORDS][name] = []
        try:
            for _, record in records:
                if writer is None:
                    # Shard names hold the shard count, known only at the end: rename then.
                    parts.append(template.data_dir / f"{name}.part{len(parts)}")
                    writer = array_records.writer(parts[-1])
                    lengths.append(0)
                    firsts.append(data.record_digest(record))
                    shard_bytes = 0
                writer.write(record)
                lengths[-1] += 1
                shard_bytes += len(record)
                num_bytes += len(record)
                if shard_bytes >= SHARD_BYTES:
                    writer.close()
                    writer = None
        finally:
            if writer is not None:
                writer.close()
        if not lengths:
            raise CorruptFileError(f"No example of split {name} could be written.")
        for part, path in zip(parts, template.sharded_filepaths(len(parts)), strict=True):
            part.rename(path)
        log.info("Wrote %s: %d examples in %d shards.", name, sum(lengths), len(lengths))
        return tfds.core.SplitInfo(
            name=name, shard_lengths=lengths, num_bytes=num_bytes, filename_template=template
        )


def _other_prepared_versions(builder: tfds.core.DatasetBuilder) -> set[str]:
    """The versions of `builder`'s dataset and config prepared beside its own folder."""
    parent = builder.data_path.parent
    if not parent.exists():
        return set()
    own = str(builder.version)
    return {
        folder.name
        for folder in parent.iterdir()
        if folder.name != own and (folder / "dataset_info.json").exists()
    }
