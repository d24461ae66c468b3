"""What the datasets built from hand-downloaded archives share (`cub`, `ilsvrc`, `openimages`).

* Errors: `MissingFilesError` (inputs, or members of them, that are not there) and
  `CorruptFileError` (an input that cannot be read), with the messages that list what is missing
  and where to get it (`missing_files_error`, `incomplete_error`).
* `iter_tar`: the files of a tar archive, compressed or not, in one streamed pass.
* `open_image`, `checked_image` and `png_bytes`: images decoded to catch damage (the error
  names the file), stored as they are or, if not RGB or grey JPEG/PNG, as a lossless RGB PNG.
* `ManualBuilder`: the tfds builder base: ArrayRecord by default, the features every dataset
  here has (`_manual_info`), the skip-corrupt bookkeeping
  (`info.metadata['skipped_corrupt']`), and a streaming ArrayRecord writer in place of tfds's.
  tfds 4.9.10 stages a split in memory and, past 1 GB, spills it through TensorFlow's file API,
  which this TF-free install lacks; the writer here writes shards as the examples come, in
  generation order or (`ORDER_BY_KEY`) in key order through a scratch file.
* `prepare_dataset` and `prepared_builder`: the bodies of each module's `prepare` and loaders;
  `configured_builder`, `prepare_config` and `prepared_config` the same for a builder whose two
  configs one boolean argument picks (`ManualBuilder.CONFIG_FLAG`: `masks`, `train`).
* `SplitView`, `holdout_per_class` and `spread_subset`: random-access views of part of a split,
  for the WSOL splits that the prepared data does not hold as such (see each module's
  `wsol_sources`).
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import hashlib
import io
import itertools
import logging
import os
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from PIL import Image
from tensorflow_datasets.core import example_serializer
from tqdm import tqdm

FILE_FORMAT = "array_record"
SHARD_BYTES = 1 << 30  # ArrayRecord shard size, before the shard's own overhead
MAX_LISTED = 20  # missing items listed by name in an error; the rest are counted
_READ_BATCH = 256  # records per read when reordering or reading labels

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
B = TypeVar("B", bound="ManualBuilder")


class MissingFilesError(FileNotFoundError):
    """Files, or archive members, that preparing needs; `missing` lists them."""

    def __init__(self, message: str, missing: list[str]):
        super().__init__(message)
        self.missing = missing


class CorruptFileError(ValueError):
    """A file that cannot be read: an archive, a metadata or annotation file, an image, a mask."""


def _listing(missing: Sequence[str]) -> str:
    """One indented line per name, the first `MAX_LISTED` of them, then how many more."""
    lines = [f"  {m}" for m in missing[:MAX_LISTED]]
    if len(missing) > MAX_LISTED:
        lines.append(f"  ... and {len(missing) - MAX_LISTED} more")
    return "\n".join(lines)


def missing_files_error(
    dataset: str, manual_dir: Path, missing: list[str], lines: list[str], hint: str = ""
) -> MissingFilesError:
    """Files absent from the manual directory; `lines` say where each comes from."""
    return MissingFilesError(
        f"Cannot prepare {dataset}: {len(missing)} file(s) missing from the manual directory "
        f"{manual_dir}:\n" + "\n".join(lines) + "\nPlace them there unchanged (no extraction "
        "needed) and run again." + hint,
        missing,
    )


def incomplete_error(
    path: Path, missing: list[str], source: str, *, why: str = "", what: str = "member(s) missing"
) -> MissingFilesError:
    """An input that lacks `missing` (a truncated download); `why`, if known, says where it ends."""
    return MissingFilesError(
        f"{path} is incomplete{why}: {len(missing)} {what}:\n{_listing(missing)}\n"
        f"Download {path.name} again from {source}.",
        missing,
    )


def download_instructions(command: str, sources: Mapping[str, str], note: str) -> str:
    """A builder's `MANUAL_DOWNLOAD_INSTRUCTIONS`: each input and its source, then `note`."""
    return "\n".join(
        [f"Place these, unchanged, in the manual directory ({command}):"]
        + [f"  {name}: from {source}" for name, source in sources.items()]
        + [note]
    )


def damaged_archive_error(
    path: Path, err: Exception, source: str, member: str = ""
) -> CorruptFileError:
    """An archive that tarfile cannot read on (at `member`, if known); `source` to get it again."""
    where = f"{member} in {path}" if member else str(path)
    return CorruptFileError(
        f"Cannot read {where} ({err}): the archive is damaged or truncated; download it again "
        f"from {source}."
    )


def iter_tar(
    path: Path, wanted: Callable[[str], bool], source: str
) -> Iterator[tuple[str, bytes | None]]:
    """(name, bytes if `wanted(name)` else None) of each regular member, in one streamed pass.

    Names lose a leading `./`. A damaged archive raises `CorruptFileError` (whose `__cause__`
    is tarfile's error) after yielding the members before the damage.
    """
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if member.isfile():
                    name = member.name.removeprefix("./")
                    yield name, tar.extractfile(member).read() if wanted(name) else None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise damaged_archive_error(path, err, source) from err


@contextlib.contextmanager
def _decoding(where: str) -> Iterator[None]:
    """Turns Pillow's errors on a damaged or unknown image into a `CorruptFileError`."""
    try:
        yield
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptFileError(f"{where} cannot be decoded: {err}") from err


def open_image(where: str, data: bytes) -> Image.Image:
    """The image in `data`, fully decoded so that truncated or garbled files fail here.

    Raises:
      CorruptFileError: it does not decode; the message names it by `where`.
    """
    with _decoding(where):
        image = Image.open(io.BytesIO(data))
        image.load()
    return image


def checked_image(where: str, data: bytes) -> tuple[bytes, int, int]:
    """Decodes an image, named by `where`, to catch damage -> (bytes to store, height, width).

    RGB and grey JPEGs and PNGs are stored as they are; anything else (CMYK JPEGs) as a
    lossless PNG of Pillow's RGB conversion, which tfds decodes to 3 channels (its PIL fallback
    would give a CMYK JPEG 4).

    Raises:
      CorruptFileError: it does not decode; the message names it by `where`.
    """
    with _decoding(where), Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if image.format in ("JPEG", "MPO", "PNG") and image.mode in ("RGB", "L"):
            # Decoding at 1/8 scale still reads every byte, more cheaply.
            image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
            image.load()
            return data, height, width
        log.info("%s is a %s %s; storing it as an RGB PNG.", where, image.mode, image.format)
        rgb = image.convert("RGB")
    return png_bytes(np.asarray(rgb)), height, width


def png_bytes(array: np.ndarray) -> bytes:
    """Lossless PNG of (H, W) or (H, W, 3) uint8."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """tfds builder base of the hand-downloaded datasets.

    Subclasses generate `(key, example)` pairs as usual; `ORDER_BY_KEY` makes the records
    follow the keys (as tfds's writer does with `disable_shuffling`) rather than generation
    order. `_skipping_corrupt` wraps the decoding of each input, `_manual_info` builds `_info`.
    For `configured_builder`, `prepare_config` and `prepared_config` a subclass also sets
    `CONFIG_FLAG`, `PREPARE_COMMAND` and `PREPARE_INPUTS` and defines `check_inputs`.
    """

    ORDER_BY_KEY: ClassVar[bool] = False
    # The boolean field that tells the two builder configs apart, which is also the keyword of
    # the module's functions (`masks`, `train`).
    CONFIG_FLAG: ClassVar[str] = ""
    # For `prepared_config`'s error: the command that prepares the dataset, and its inputs.
    PREPARE_COMMAND: ClassVar[str] = ""
    PREPARE_INPUTS: ClassVar[str] = ""

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
        or key order with `ORDER_BY_KEY`); `metadata` holds `skipped_corrupt`.
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
        """Raises `MissingFilesError` if an input in `manual_dir` is missing (`prepare_config`).

        Runs before tfds writes anything; a builder may keep what it reads to write from.
        """
        raise NotImplementedError

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
        bar = tqdm(
            total=total, desc=f"{self.name} {split}", unit=" images", disable=not self._progress
        )
        with bar:
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
        records = (
            (key, serializer.serialize_example(features.encode_example(example)))
            for key, example in examples
        )
        if self.ORDER_BY_KEY:
            records = _in_key_order(records, template.data_dir / f"{name}.unordered")
        parts, lengths, num_bytes, shard_bytes, writer = [], [], 0, 0, None
        try:
            for _, record in records:
                if writer is None:
                    # Shard names hold the shard count, known only at the end: rename then.
                    parts.append(template.data_dir / f"{name}.part{len(parts)}")
                    writer = _writer(parts[-1])
                    lengths.append(0)
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


def _writer(path: Path) -> array_record_module.ArrayRecordWriter:
    # One record per chunk, as tfds writes them, for fast random access.
    return array_record_module.ArrayRecordWriter(os.fspath(path), "group_size:1")


def _in_key_order(
    records: Iterable[tuple[Any, bytes]], scratch: Path
) -> Iterator[tuple[Any, bytes]]:
    """The records sorted by key, staged in a scratch file so that memory holds only the keys."""
    keys = []
    try:
        writer = _writer(scratch)
        try:
            for key, record in records:
                writer.write(record)
                keys.append(key)
        finally:
            writer.close()
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


def prepare_dataset(
    make_builder: Callable[[], B], manual_dir: Path, check_inputs: Callable[[B], Any]
) -> B:
    """Prepares `make_builder()` from `manual_dir`, unless prepared; returns the prepared builder.

    `check_inputs(builder)` raises if an input is missing; it runs before tfds writes anything.
    """
    builder = make_builder()
    if builder.is_prepared():
        log.info("%s is already prepared in %s.", builder.info.full_name, builder.data_dir_root)
        return builder
    check_inputs(builder)
    config = tfds.download.DownloadConfig(manual_dir=str(manual_dir), try_download_gcs=False)
    try:
        # tfds writes into an `incomplete.*` directory renamed into place at the end.
        builder.download_and_prepare(file_format=FILE_FORMAT, download_config=config)
    except OSError:
        # Losing that rename race to another process is fine once its copy exists.
        if not builder.data_path.exists():
            raise
        builder = make_builder()
    skipped = builder.info.metadata.get("skipped_corrupt", [])
    if skipped:
        log.warning("Skipped %d corrupt image(s): %s", len(skipped), ", ".join(skipped))
    return builder


def prepared_builder(
    builders: Iterable[ManualBuilder], data_dir: str | None, command: str, inputs: str
) -> ManualBuilder:
    """The first of `builders` (configs in order of preference) that is prepared.

    Raises:
      FileNotFoundError: none is; the message gives the `command` that prepares it, with
        `--data_dir`, and the `inputs` it needs.
    """
    builder = None
    for builder in builders:
        if builder.is_prepared():
            return builder
    where = f" --data_dir {data_dir}" if data_dir else ""
    raise FileNotFoundError(
        f"{builder.name} is not prepared in {builder.data_dir_root}. Prepare it with "
        f"`{command}{where}`, {inputs}"
    )


def configured_builder(
    cls: type[B],
    data_dir: str | None,
    flag: bool,
    *,
    skip_corrupt: bool = False,
    progress: bool = False,
) -> B:
    """The builder of the config of `cls` whose `CONFIG_FLAG` field is `flag`, in `data_dir`.

    `data_dir` None is the tfds default.
    """
    (config,) = [c for c in cls.BUILDER_CONFIGS if getattr(c, cls.CONFIG_FLAG) == flag]
    return cls(config=config.name, data_dir=data_dir, skip_corrupt=skip_corrupt, progress=progress)


def prepare_config(
    cls: type[B],
    manual_dir: str | Path,
    data_dir: str | None,
    flag: bool,
    *,
    skip_corrupt: bool,
    progress: bool,
) -> B:
    """`prepare_dataset` of `configured_builder(cls, data_dir, flag, ...)`; see `check_inputs`."""
    directory = Path(manual_dir)
    return prepare_dataset(
        lambda: configured_builder(
            cls, data_dir, flag, skip_corrupt=skip_corrupt, progress=progress
        ),
        directory,
        lambda builder: builder.check_inputs(directory),
    )


def prepared_config(cls: type[B], data_dir: str | None, flag: bool | None) -> B:
    """`prepared_builder` of config `flag` of `cls`; None: flag True if it is prepared, else False.

    Raises:
      FileNotFoundError: not prepared; the message gives `cls.PREPARE_COMMAND`.
    """
    return prepared_builder(
        (
            configured_builder(cls, data_dir, f)
            for f in ((True, False) if flag is None else (flag,))
        ),
        data_dir,
        cls.PREPARE_COMMAND,
        cls.PREPARE_INPUTS,
    )


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


def spread_subset(source: Sequence, n: int) -> Sequence:
    """`n` records spread evenly over `source` (indices `floor(i * len / n)`); all for n = 0.

    For smoke runs: a class-ordered split keeps most classes, unlike a prefix.
    """
    if not n:
        return source
    if n > len(source):
        raise ValueError(f"Asked for {n} examples of a split of {len(source)}.")
    picked = np.arange(n, dtype=np.int64) * len(source) // n
    if isinstance(source, SplitView):
        return SplitView(source.source, source.indices[picked])
    return SplitView(source, picked)


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
    features = builder.info.features
    skip = {
        k: tfds.decode.SkipDecoding()
        for k, f in features.items()
        if isinstance(f, tfds.features.Image)
    }
    source = builder.as_data_source(split, decoders=skip)
    labels, ids = [], []
    for first in range(0, len(source), _READ_BATCH):
        for record in _getitems(source, list(range(first, min(first + _READ_BATCH, len(source))))):
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
