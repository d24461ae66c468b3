"""Input pipeline: tfds sources read with grain, the paper's preprocessing, mesh-sharded batches.

Train: resize to `resize_size`, random crop `image_size`, random horizontal flip (the CAM / WSOL
recipe: resize 256, crop 224, flip). Eval: resize to `image_size`, boxes scaled with the image.
Batches hold uint8 images; normalisation happens on device (`normalize_images`) so the host
moves a quarter of the bytes.

Every random choice is a function of (seed, example position), and the train dataset is a
random-access grain MapDataset, so a run resumed at step s reads exactly the batches an
uninterrupted run reads from step s on, without replaying the earlier ones.
"""

import collections
import dataclasses
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from jax.sharding import NamedSharding
from PIL import Image

Batch = dict[str, np.ndarray]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Sizes for the two preprocessing modes (pixels)."""

    image_size: int
    resize_size: int
    max_boxes: int = 4


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """(h, w, 3) uint8 -> (size, size, 3): PIL's bilinear filter, as torchvision's Resize of a
    PIL image in wsolevaluation's transforms, the width pass first, then the height. Pillow 7.0.0
    (the reference's pin) always runs them in that order; Pillow 13 runs the height first for
    some taller-than-wide sizes (333 x 500 or 256 x 300 to 224), and the uint8 image between
    the passes rounds differently: 1 level apart on ~20% of those pixels. Two calls keep the
    order."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    resized = Image.fromarray(image)
    if width != size:
        resized = resized.resize((size, height), Image.BILINEAR)
    if height != size:
        resized = resized.resize((size, size), Image.BILINEAR)
    return np.asarray(resized)


def pixel_boxes(tfds_boxes: Any, height: int, width: int, max_boxes: int) -> tuple[np.ndarray, int]:
    """tfds boxes (n, 4) normalised (ymin, xmin, ymax, xmax) -> padded pixel boxes.

    Returns (boxes float32 (max_boxes, 4) as (x0, y0, x1, y1) with exclusive x1/y1, count n).
    Padding rows are zeros; callers mask them with the count. More than max_boxes boxes is an
    error rather than a silent truncation.
    """
    b = np.asarray(tfds_boxes, np.float32).reshape(-1, 4)
    if len(b) > max_boxes:
        raise ValueError(
            f"an example has {len(b)} boxes but data.max_boxes is {max_boxes}; raise "
            "config.data.max_boxes."
        )
    out = np.zeros((max_boxes, 4), np.float32)
    out[: len(b)] = b[:, [1, 0, 3, 2]] * np.array([width, height, width, height], np.float32)
    return out, len(b)


def _object_boxes(example: dict[str, Any]) -> Any:
    objects = example.get("objects", {})
    return objects["bbox"] if isinstance(objects, dict) else [o["bbox"] for o in objects]


def _resized_train_row(example: dict[str, Any], resize_size: int) -> Batch:
    """The deterministic half of the train preprocessing: the image resized, the label int32."""
    image = _resize(np.asarray(example["image"]), resize_size)
    return {"image": image, "label": np.int32(example["label"])}


class TrainPreprocess(grain.transforms.RandomMap):
    """Decoded tfds example -> {'image': uint8 (S, S, 3), 'label': int32}: resize, crop, flip."""

    def __init__(self, cfg: PreprocessConfig):
        self.cfg = cfg

    def random_map(self, example: dict[str, Any], rng: np.random.Generator) -> Batch:
        s, r = self.cfg.image_size, self.cfg.resize_size
        row = _resized_train_row(example, r)  # a no-op on `in_memory_train_source`'s rows
        y, x = rng.integers(0, r - s + 1, size=2)
        image = row["image"][y : y + s, x : x + s]
        if rng.random() < 0.5:
            image = image[:, ::-1]
        return {"image": np.ascontiguousarray(image), "label": row["label"]}


class EvalPreprocess(grain.transforms.Map):
    """Decoded tfds example -> image resized to S x S, label, pixel boxes at S x S, box count,
    original (height, width), and the dataset's image id where it has one."""

    def __init__(self, cfg: PreprocessConfig):
        self.cfg = cfg

    def map(self, example: dict[str, Any]) -> Batch:
        s = self.cfg.image_size
        image = np.asarray(example["image"])
        # tfds boxes are relative to the image, so they follow the resize by construction.
        boxes, n = pixel_boxes(_object_boxes(example), s, s, self.cfg.max_boxes)
        return {
            "image": _resize(image, s),
            "label": np.int32(example["label"]),
            "boxes": boxes,
            "num_boxes": np.int32(n),
            # (height, width) before resizing: the WSOL protocol resizes GT boxes from there.
            "original_size": np.array(image.shape[:2], np.int32),
            **({"image_id": example["image_id"]} if "image_id" in example else {}),
        }


def in_memory_train_source(
    source: Sequence, cfg: PreprocessConfig, max_bytes: float, num_threads: int
) -> Sequence:
    """The train split decoded and resized once into host memory, or `source` if it would not
    fit in `max_bytes` (at uint8 RGB).

    Without it every epoch decodes every image again: on wsol_shapes the tfds read and PNG
    decode are ~0.45 of the ~1 ms of host CPU an example costs, and on a 2-core machine that
    CPU is taken from the train step. Each row is what `TrainPreprocess` computes before its
    random crop (`_resized_train_row`, which then has nothing to do), so the batches are
    bit-identical to those read from `source`.
    """
    r = cfg.resize_size
    size = len(source) * r * r * 3
    if size > max_bytes:
        log.info(
            "The train split (%.2f GiB decoded) is read from disk every epoch: it exceeds "
            "config.data.cache_train_gib.",
            size / 2**30,
        )
        return source
    start = time.perf_counter()
    rows = (
        grain.MapDataset.source(source)
        .map(functools.partial(_resized_train_row, resize_size=r))
        .to_iter_dataset(
            grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * max(1, num_threads))
        )
    )
    rows = list(rows)
    log.info(
        "Read the train split into memory: %d images, %.0f MiB, %.1f s.",
        len(rows),
        size / 2**20,
        time.perf_counter() - start,
    )
    return rows


def train_dataset(
    source: Sequence, cfg: PreprocessConfig, global_batch_size: int, seed: int
) -> grain.MapDataset:
    """An infinite random-access dataset of this host's train batches; index = training step.

    Each epoch is a fresh permutation of the source. Host h of n reads rows [h*B/n, (h+1)*B/n)
    of every global batch of B and nothing else, and `shard_batch` puts them at those rows of
    the global array: with any number of hosts the step sees the same examples, crops and flips
    in the same rows as on one host.
    """
    hosts, host = jax.process_count(), jax.process_index()
    if global_batch_size % hosts:
        raise ValueError(
            f"batch size {global_batch_size} must be divisible by the number of hosts ({hosts})."
        )
    per_host = global_batch_size // hosts
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
    # The augmentation's rng is keyed by the position in the dataset it maps, so it maps the
    # global example order, before the host split; and batching before the split gives each
    # host a contiguous block of each global batch. Both are lazy: a host reads and augments
    # only its own rows.
    ds = ds.random_map(TrainPreprocess(cfg), seed=seed)
    ds = ds.batch(per_host, drop_remainder=True)[host::hosts]
    log.info(
        "Process %d of %d reads rows [%d, %d) of each global train batch of %d.",
        host,
        hosts,
        host * per_host,
        (host + 1) * per_host,
        global_batch_size,
    )
    return ds


def train_iterator(
    ds: grain.MapDataset,
    start_step: int,
    sharding: NamedSharding,
    num_threads: int,
    device_prefetch: int = 2,
    num_workers: int = 0,
) -> Iterator[dict[str, jax.Array]]:
    """Device batches for steps start_step, start_step + 1, ..., read ahead on the host
    (`host_batches`). `device_prefetch` batches beyond the one returned are already on the
    mesh, so their host-to-device copies overlap the steps before them."""
    batches = iter(host_batches(ds[start_step:], num_threads, num_workers))
    # Worker processes hand over their batches in shared memory, which a CPU device's array
    # would alias rather than copy: the arrays still alive at exit then kept the segments
    # ("resource_tracker: ... leaked shared_memory objects" after every run). A host copy
    # frees each segment once its batch is on the mesh; other devices copy anyway.
    copy = num_workers > 0 and sharding.mesh.devices.flat[0].platform == "cpu"

    def device_batches():
        try:
            for batch in batches:
                if copy:
                    batch = {k: np.array(v) for k, v in batch.items()}
                yield shard_batch(batch, sharding)
        finally:  # stop the readers, and free the shared memory of the batches they hold
            batches.close()

    return read_ahead(device_batches(), device_prefetch)


def host_batches(ds: grain.MapDataset, num_threads: int, num_workers: int = 0) -> grain.IterDataset:
    """The batches of `ds` in order, computed ahead by threads or by worker processes.

    num_workers = 0: `num_threads` grain threads of this process decode and augment. Their
    Python work holds the GIL (about 0.4 ms per example on the 2-core dev box), which caps
    threads at a few thousand images/s however many cores there are. num_workers > 0 spawns
    that many grain worker processes instead (one thread each; the sources must pickle, as
    `experiment.data_sources`'s do): the same batches in the same order.
    """
    if num_workers < 0:
        raise ValueError(f"config.data.num_workers must be >= 0; got {num_workers}.")
    threads = 1 if num_workers else num_threads
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * max(1, threads))
    )
    if num_workers:
        _mark_absl_flags_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2),
            worker_init_fn=_init_worker,
        )
    return it


def _init_worker(worker_index: int, worker_count: int) -> None:
    del worker_index, worker_count
    # Workers import jax with the pipeline; should anything there start a backend, it must be
    # the CPU: a GPU client would preallocate most of the card in every worker.
    os.environ["JAX_PLATFORMS"] = "cpu"
    # A terminal's Ctrl-C and a scheduler's SIGTERM reach the whole process group: a worker
    # they killed would fail the training process's next batch before it could save and stop
    # (train/interrupts.py). The training process stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # So a worker whose training process died without stopping it (SIGKILL) exits by itself.
    parent = os.getppid()

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True, name="camjax-parent-watch").start()


def _mark_absl_flags_parsed() -> None:
    # grain's worker processes read absl flags, which raise when unparsed: outside an absl app
    # (tests, notebooks, benchmarks) nothing parses them, and their defaults are what we want.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def read_ahead(items: Iterator[Any], size: int) -> Iterator[Any]:
    """Yields `items` in order, keeping `size` further items already drawn from the iterator.

    Closing the returned generator closes `items` (when it can be closed)."""
    if size < 0:
        raise ValueError(f"config.data.device_prefetch must be >= 0; got {size}.")

    def generate():
        queue = collections.deque()
        try:
            for item in items:
                queue.append(item)
                if len(queue) > size:
                    yield queue.popleft()
            while queue:
                yield queue.popleft()
        finally:  # closing this closes `items` too
            if hasattr(items, "close"):
                items.close()

    return generate()


def eval_batches(
    source: Sequence,
    cfg: PreprocessConfig,
    global_batch_size: int,
    num_threads: int,
    preprocess: grain.transforms.Map | None = None,
) -> Iterator[Batch]:
    """This host's eval batches in source order; the last batch is padded, `valid` marks real rows.

    Every batch has the same shape, so the evaluation step compiles once. preprocess maps an
    example to a row (default `EvalPreprocess(cfg)`); evaluations that need more of the example
    (e.g. a GT mask) pass their own.
    """
    hosts, host = jax.process_count(), jax.process_index()
    if global_batch_size % hosts:
        raise ValueError(
            f"eval batch size {global_batch_size} must be divisible by the number of hosts "
            f"({hosts})."
        )
    per_host = global_batch_size // hosts
    n = len(source)
    num_batches = -(-n // global_batch_size)
    # Host h takes rows [h*per_host, (h+1)*per_host) of each global batch.
    indices = np.arange(num_batches * global_batch_size).reshape(num_batches, hosts, per_host)
    indices = indices[:, host].reshape(-1)
    ds = grain.MapDataset.source(source).map(preprocess or EvalPreprocess(cfg))
    rows = grain.MapDataset.range(len(indices)).map(lambda i: _padded_row(ds, int(indices[i]), n))
    it = rows.batch(per_host).to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * max(1, num_threads))
    )
    yield from it


def _padded_row(ds: grain.MapDataset, index: int, n: int) -> Batch:
    row = dict(ds[min(index, n - 1)])
    row["valid"] = np.bool_(index < n)
    row["index"] = np.int32(index)
    return row


def shard_batch(host_batch: Batch, sharding: NamedSharding) -> dict[str, jax.Array]:
    """Puts this host's part of a global batch on the mesh, split over the 'data' axis."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in host_batch.items()
    }


def normalize_images(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """uint8 (B, H, W, 3) -> float32 (x / 255 - mean) / std, on device; mean, std in [0, 1]."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
