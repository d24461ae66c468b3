"""Tests for camjax/data/pipeline.py on the embedded dataset: determinism, resume, eval padding."""

import os
import pickle
import signal
import types

import grain
import jax
import numpy as np
import pytest
from PIL import Image

from camjax import data as camjax_data
from camjax import experiment
from camjax.data import pipeline, wsol_shapes
from camjax.data.shapes import example_rng, render_example
from camjax.train import loop
from configs import default

SIZES = {"num_train": 40, "num_validation": 10, "num_test": 11}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def sources(data_dir):
    return wsol_shapes.WsolShapes.sources(data_dir, 64, SIZES)


@pytest.fixture(scope="module")
def reopenable(data_dir, sources):
    return camjax_data.reopenable_sources("wsol_shapes", 64, data_dir, SIZES)


PREP = pipeline.PreprocessConfig(image_size=64, resize_size=73, max_boxes=2)


@pytest.mark.parametrize("height, width", [(500, 333), (300, 256), (375, 500), (96, 96)])
def test_images_resize_width_first_as_the_reference_pillow_does(height, width):
    """wsolevaluation resizes with torchvision's Resize of a PIL image on Pillow 7.0.0, whose
    bilinear resize always runs the width pass, then the height pass on the rounded uint8
    result. Pillow 13 runs the height first for tall images (500 x 333 here: 1 level apart on
    ~20% of the pixels), so camjax makes the two passes itself. Two tall sizes, a wide one and a
    square one."""
    image = np.random.default_rng(height).integers(0, 256, (height, width, 3), np.uint8)
    for size in (224, 256):
        width_first = Image.fromarray(image).resize((size, height), Image.BILINEAR)
        width_first = np.asarray(width_first.resize((size, size), Image.BILINEAR))
        np.testing.assert_array_equal(pipeline._resize(image, size), width_first)
    one_call = np.asarray(Image.fromarray(image).resize((224, 224), Image.BILINEAR))
    if height > width:  # what the two calls are for, on the locked Pillow
        assert not np.array_equal(one_call, pipeline._resize(image, 224))


def test_train_batches_are_a_pure_function_of_step(sources):
    ds = pipeline.train_dataset(sources["train"], PREP, global_batch_size=8, seed=3)
    again = pipeline.train_dataset(sources["train"], PREP, global_batch_size=8, seed=3)
    other_seed = pipeline.train_dataset(sources["train"], PREP, global_batch_size=8, seed=4)
    for step in (0, 4, 7):  # 5 steps per epoch: 7 is in the second epoch
        a, b = ds[step], again[step]
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
        assert a["image"].shape == (8, 64, 64, 3) and a["image"].dtype == np.uint8
    assert not np.array_equal(ds[0]["image"], other_seed[0]["image"])
    # Each epoch sees every training example once, in a fresh order.
    labels_epoch = np.concatenate([ds[s]["label"] for s in range(5)])
    expected = sorted(int(sources["train"][i]["label"]) for i in range(40))
    assert sorted(labels_epoch.tolist()) == expected


@pytest.mark.parametrize("device_prefetch", [0, 3])
def test_resumed_iterator_reads_the_same_batches(sources, device_prefetch):
    ds = pipeline.train_dataset(sources["train"], PREP, global_batch_size=8, seed=0)
    sharding = experiment.data_sharding(experiment.make_mesh())
    iterator = pipeline.train_iterator(ds, 0, sharding, 2, device_prefetch)
    full = [b for _, b in zip(range(6), iterator, strict=False)]
    resumed = pipeline.train_iterator(ds, 4, sharding, 2, 2)
    for expected in full[4:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], expected["image"])
    assert full[0]["image"].sharding == sharding and len(jax.devices()) == 8


def test_train_iterator_yields_the_batch_of_each_step_from_the_start_step(sources):
    """The device batch of step s is `ds[s]`, image and label: an iterator started one batch
    late (or one dropping a field) still resumes bit-identically to itself, so the resume test
    above cannot see it."""
    ds = pipeline.train_dataset(sources["train"], PREP, global_batch_size=8, seed=1)
    sharding = experiment.data_sharding(experiment.make_mesh())
    for start in (0, 3):
        iterator = pipeline.train_iterator(ds, start, sharding, 2, 1)
        for step in (start, start + 1):
            got, expected = next(iterator), ds[step]
            assert sorted(got) == ["image", "label"]
            for k in ("image", "label"):
                np.testing.assert_array_equal(np.asarray(got[k]), expected[k])
        iterator.close()


class _CountingSource:
    """A source that records which examples it was asked for."""

    def __init__(self, source):
        self.source, self.read = source, []

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        self.read.append(int(i))
        return self.source[i]


@pytest.mark.parametrize("hosts", [2, 4])
def test_each_host_reads_only_its_rows_of_the_one_host_batch(sources, monkeypatch, hosts):
    """Host h's batch is rows [h*B/n, (h+1)*B/n) of the one-host batch, crops and flips
    included (the augmentation is keyed by global position), and it reads no other example."""
    steps = (0, 6)  # 6 is in the second epoch
    one_source = _CountingSource(sources["train"])
    one_host = pipeline.train_dataset(one_source, PREP, global_batch_size=8, seed=3)
    expected = [one_host[s] for s in steps]
    monkeypatch.setattr(jax, "process_count", lambda: hosts)
    per_host, read = 8 // hosts, []
    for host in range(hosts):
        monkeypatch.setattr(jax, "process_index", lambda host=host: host)
        source = _CountingSource(sources["train"])
        ds = pipeline.train_dataset(source, PREP, global_batch_size=8, seed=3)
        for s, full in zip(steps, expected, strict=True):
            batch, rows = ds[s], slice(host * per_host, (host + 1) * per_host)
            for k in ("image", "label"):
                np.testing.assert_array_equal(batch[k], full[k][rows])
        read.append(source.read)
    # The hosts' reads split the one host's reads: every example read once, by one host.
    assert sorted(sum(read, [])) == sorted(one_source.read)
    assert len(one_source.read) == len(steps) * 8


def test_batches_that_do_not_split_over_the_hosts_are_refused(sources, monkeypatch):
    """8 rows over 3 hosts: without the check each host would read 2 rows and a step would
    see 6 examples, not the configured 8."""
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    with pytest.raises(ValueError, match="batch size 8 must be divisible by the number of hosts"):
        pipeline.train_dataset(sources["train"], PREP, global_batch_size=8, seed=0)
    with pytest.raises(ValueError, match="eval batch size 8 must be divisible"):
        next(pipeline.eval_batches(sources["test"], PREP, global_batch_size=8, num_threads=0))


def test_in_memory_train_source_gives_the_batches_read_from_disk(sources):
    decoded = 40 * 73 * 73 * 3  # the split at resize_size, uint8 RGB
    in_memory = pipeline.in_memory_train_source(sources["train"], PREP, decoded, num_threads=2)
    assert len(in_memory) == 40 and in_memory[0]["image"].shape == (73, 73, 3)
    from_disk = pipeline.train_dataset(sources["train"], PREP, global_batch_size=8, seed=5)
    from_memory = pipeline.train_dataset(in_memory, PREP, global_batch_size=8, seed=5)
    for step in (0, 6):  # 6 is in the second epoch
        a, b = from_disk[step], from_memory[step]
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    # A split larger than the limit is read from disk.
    too_big = pipeline.in_memory_train_source(sources["train"], PREP, decoded - 1, num_threads=2)
    assert too_big is sources["train"]


def test_training_reads_the_split_into_memory_only_with_threads(sources, monkeypatch):
    calls = []
    monkeypatch.setattr(
        pipeline, "in_memory_train_source", lambda source, *args: calls.append(args) or source
    )
    config = default.get_config()
    mesh = experiment.make_mesh()
    loop._train_batches(config, sources["train"], 0, mesh).close()
    assert len(calls) == 1 and calls[0][1] == config.data.cache_train_gib * 2**30
    config.data.cache_train_gib = 0
    loop._train_batches(config, sources["train"], 0, mesh).close()
    config.data.cache_train_gib, config.data.num_workers = 2.0, 2
    loop._train_batches(config, sources["train"], 0, mesh).close()
    assert len(calls) == 1


def test_eval_batches_pad_and_keep_order_and_boxes(sources):
    batches = list(pipeline.eval_batches(sources["test"], PREP, global_batch_size=8, num_threads=2))
    assert len(batches) == 2
    valid = np.concatenate([b["valid"] for b in batches])
    assert valid.sum() == 11 and valid[:11].all()
    index = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(index, np.arange(16))
    for i in (0, 5, 10):
        row = {k: np.concatenate([b[k] for b in batches])[i] for k in batches[0]}
        truth = render_example(example_rng(0, "test", i), 64)
        np.testing.assert_array_equal(row["image"], truth["image"])
        assert row["num_boxes"] == 1
        np.testing.assert_allclose(row["boxes"][0], truth["box"], atol=1e-4)
        np.testing.assert_array_equal(row["boxes"][1], 0)


@pytest.mark.parametrize("hosts", [2, 4])
def test_each_host_reads_its_rows_of_each_eval_batch(sources, monkeypatch, hosts):
    """Host h's eval batch b holds rows [b*B + h*B/n, b*B + (h+1)*B/n) of the split, padded past
    its end: the evaluation's gather puts the hosts' rows back in split order."""
    one_host = list(pipeline.eval_batches(sources["test"], PREP, 8, num_threads=0))
    monkeypatch.setattr(jax, "process_count", lambda: hosts)
    per_host = 8 // hosts
    for host in range(hosts):
        monkeypatch.setattr(jax, "process_index", lambda host=host: host)
        batches = list(pipeline.eval_batches(sources["test"], PREP, 8, num_threads=0))
        assert len(batches) == 2  # 11 rows: two global batches of 8
        for b, batch in enumerate(batches):
            index = b * 8 + host * per_host + np.arange(per_host)
            np.testing.assert_array_equal(batch["index"], index)
            np.testing.assert_array_equal(batch["valid"], index < 11)
            assert batch["image"].shape == (per_host, 64, 64, 3)
            rows = index - b * 8
            np.testing.assert_array_equal(batch["image"], one_host[b]["image"][rows])


def test_eval_preprocess_scales_boxes_and_keeps_the_image_id():
    """A non-square original: the image resized to S x S as PIL's bilinear does, the boxes in
    pixels of the S x S image, the original (height, width), and the image id that names the
    exported score map (without it the export falls back to index names)."""
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    example = {
        "image": image,
        "label": 5,
        "objects": {"bbox": [[0.1, 0.25, 0.6, 1.0]]},  # (ymin, xmin, ymax, xmax)
        "image_id": b"001.Bird/a_0001.jpg",
    }
    row = pipeline.EvalPreprocess(PREP).map(example)
    resized = np.asarray(Image.fromarray(image).resize((64, 64), Image.BILINEAR))
    np.testing.assert_array_equal(row["image"], resized)
    np.testing.assert_allclose(row["boxes"], [[16.0, 6.4, 64.0, 38.4], [0, 0, 0, 0]], rtol=1e-6)
    assert row["num_boxes"] == 1 and row["label"] == 5
    np.testing.assert_array_equal(row["original_size"], [30, 40])
    assert row["image_id"] == b"001.Bird/a_0001.jpg"
    del example["image_id"]
    assert "image_id" not in pipeline.EvalPreprocess(PREP).map(example)


def test_train_preprocess_crops_and_flips():
    rng = np.random.default_rng(0)
    image = np.arange(73 * 73 * 3, dtype=np.int64).reshape(73, 73, 3).astype(np.uint8)
    out = pipeline.TrainPreprocess(PREP).random_map({"image": image, "label": 3}, rng)
    assert out["image"].shape == (64, 64, 3) and out["label"] == 3


def test_train_crops_are_windows_at_every_offset_flipped_left_right_half_the_time():
    """Each pixel holds its (row, column): the output must be an S x S window of the input,
    at an offset in [0, R - S] (both ends reached), mirrored only left-right and only
    sometimes, channels untouched."""
    s, r = 4, 7
    rows, cols = np.meshgrid(np.arange(r), np.arange(r), indexing="ij")
    image = np.stack([rows, cols, np.full((r, r), 9)], axis=-1).astype(np.uint8)
    prep = pipeline.TrainPreprocess(pipeline.PreprocessConfig(image_size=s, resize_size=r))
    offsets, flips = set(), []
    for seed in range(64):
        out = prep.random_map({"image": image, "label": 0}, np.random.default_rng(seed))["image"]
        y, x = int(out[0, 0, 0]), int(out[0, :, 1].min())
        flipped = bool(out[0, 0, 1] > out[0, -1, 1])
        window = image[y : y + s, x : x + s]
        np.testing.assert_array_equal(out, window[:, ::-1] if flipped else window)
        offsets.update({("y", y), ("x", x)})
        flips.append(flipped)
    assert offsets == {(axis, o) for axis in "yx" for o in range(r - s + 1)}
    assert 16 < sum(flips) < 48


def test_pixel_boxes_convert_and_reject_overflow():
    boxes, n = pipeline.pixel_boxes([[0.25, 0.5, 0.75, 1.0]], 64, 32, 2)
    assert n == 1
    np.testing.assert_array_equal(boxes[0], [16, 16, 32, 48])
    with pytest.raises(ValueError, match="max_boxes"):
        pipeline.pixel_boxes(np.zeros((3, 4)), 64, 64, 2)


def test_normalize_images():
    x = np.full((1, 2, 2, 3), 255, np.uint8)
    out = pipeline.normalize_images(x, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    np.testing.assert_allclose(out[0, 0, 0], [2.0, 1.0, 0.5])


def test_normalize_images_per_channel():
    """Channel c is shifted by mean[c] and scaled by std[c] (R, G, B in that order), for every
    value: with one value and one mean for all channels a channel mix-up went unseen."""
    x = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(1, 2, 3, 3) * 14
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = (x.astype(np.float64) / 255 - np.array(mean)) / np.array(std)
    out = pipeline.normalize_images(x, mean, std)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_read_ahead_keeps_order_and_draws_ahead():
    drawn = []

    def items():
        for i in range(5):
            drawn.append(i)
            yield i

    it = pipeline.read_ahead(items(), 2)
    assert next(it) == 0 and drawn == [0, 1, 2]  # two more already drawn (on the devices)
    assert list(it) == [1, 2, 3, 4]
    assert list(pipeline.read_ahead(iter(range(3)), 0)) == [0, 1, 2]
    assert list(pipeline.read_ahead(iter(range(2)), 5)) == [0, 1]
    with pytest.raises(ValueError, match="device_prefetch"):
        pipeline.read_ahead(iter([]), -1)


def test_closing_read_ahead_closes_what_it_reads():
    """train_iterator stops its readers (threads, worker processes) through this: closing the
    read-ahead must close the iterator it draws from, even while someone else holds it."""
    closed = []

    def items():
        try:
            yield from range(10)
        finally:
            closed.append(True)

    source = items()
    it = pipeline.read_ahead(source, 2)
    assert next(it) == 0 and not closed
    it.close()
    assert closed == [True]


def test_reopenable_source_pickles_as_the_recipe_for_opening_it(reopenable, sources):
    payload = pickle.dumps(reopenable["test"])
    assert len(payload) < 2_000  # the recipe, not the data or open readers
    reopened = pickle.loads(payload)
    assert len(reopened) == len(sources["test"]) == 11
    for i in (0, 10):
        np.testing.assert_array_equal(reopened[i]["image"], sources["test"][i]["image"])


def test_a_negative_worker_count_is_refused(reopenable):
    ds = pipeline.train_dataset(reopenable["train"], PREP, global_batch_size=8, seed=0)
    sharding = experiment.data_sharding(experiment.make_mesh())
    with pytest.raises(ValueError, match="num_workers"):
        pipeline.train_iterator(ds, 0, sharding, 2, num_workers=-1)


# grain starts worker processes (seconds each): the three tests that read through them are the
# full suite's; the fast lane reads with threads.
@pytest.mark.slow
def test_worker_processes_read_the_batches_threads_read(reopenable):
    ds = pipeline.train_dataset(reopenable["train"], PREP, global_batch_size=8, seed=0)
    sharding = experiment.data_sharding(experiment.make_mesh())
    threads = pipeline.train_iterator(ds, 3, sharding, 2, num_workers=0)
    workers = pipeline.train_iterator(ds, 3, sharding, 2, num_workers=2)
    for _ in range(6):  # two epochs' boundary included (5 steps per epoch)
        a, b = next(threads), next(workers)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def _shared_memory_mappings() -> list[tuple[int, int]]:
    """This process's mappings of POSIX shared memory segments: (start, end) addresses."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5].startswith("/dev/shm/"):
                start, end = (int(address, 16) for address in fields[0].split("-"))
                ranges.append((start, end))
    return ranges


@pytest.mark.slow  # worker processes, as above
@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's /proc")
def test_batches_on_the_mesh_do_not_alias_the_workers_shared_memory(reopenable):
    """Workers hand batches over in shared memory, which a CPU device's array aliased: the
    batches alive at exit kept their segments for Python's resource tracker, which warned of
    "leaked shared_memory objects" after every run with workers."""
    ds = pipeline.train_dataset(reopenable["train"], PREP, global_batch_size=8, seed=0)
    sharding = experiment.data_sharding(experiment.make_mesh())
    batches = pipeline.train_iterator(ds, 0, sharding, 2, num_workers=2)
    held = [next(batches) for _ in range(4)]  # as a training loop holds its last batches
    mappings = _shared_memory_mappings()
    addresses = [
        shard.data.unsafe_buffer_pointer()
        for batch in held
        for array in batch.values()
        for shard in array.addressable_shards
    ]
    batches.close()
    assert len(addresses) == 4 * 2 * len(jax.devices())
    assert not [a for a in addresses for lo, hi in mappings if lo <= a < hi]


def _worker_view(_) -> np.ndarray:
    """JAX_PLATFORMS (8 bytes) and whether SIGINT and SIGTERM are ignored, as a worker sees them."""
    platforms = os.environ.get("JAX_PLATFORMS", "").ljust(8).encode()
    ignored = [signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM)]
    return np.concatenate([np.frombuffer(platforms, np.uint8), np.array(ignored, np.uint8)])


@pytest.mark.slow  # worker processes, as above
def test_worker_processes_keep_jax_off_accelerators_and_leave_signals_to_training(monkeypatch):
    """A terminal's Ctrl-C and a scheduler's SIGTERM reach the whole process group: workers
    they killed failed the next batch (RuntimeError, a traceback) before training could save
    the step it reached and stop."""
    monkeypatch.setenv("JAX_PLATFORMS", "")  # what a GPU host's workers would inherit
    ds = grain.MapDataset.range(2).map(_worker_view).batch(1)
    batches = list(pipeline.host_batches(ds, 1, num_workers=1))
    assert len(batches) == 2
    assert bytes(batches[0][0][:8]).strip() == b"cpu"
    assert list(batches[0][0][8:]) == [1, 1]
    # This process's handlers are untouched.
    assert signal.getsignal(signal.SIGTERM) != signal.SIG_IGN


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("image_size", -64, "image_size must be a positive int; got -64"),
        ("mean", (0.5, 0.5), r"mean must be 3 numbers, one per RGB channel"),
        ("std", (0.2, 0.2, 0.0), r"std must be 3 numbers, one per RGB channel and each > 0"),
    ],
)
def test_data_values_no_pipeline_can_use_are_one_line(field, value, message):
    """Before, a negative size failed in the model's init and a wrong-length mean in the
    broadcast of the first step, under tracebacks of 30 to 100 lines."""
    from camjax import experiment
    from configs import tiny

    config = tiny.get_config()
    config.data[field] = value
    with pytest.raises(ValueError, match=message):
        experiment.preprocess_config(config)
    with pytest.raises(ValueError, match=message):
        experiment.init_variables(config, experiment.build_model(tiny.get_config()), None)


def _numbered_source(n: int, same_image: bool = False) -> list[dict]:
    """n examples labelled 0..n-1; image i is 4 x 4 of value i, or all the same image whose
    pixels hold their (row, column) when `same_image`."""
    rows, cols = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    coords = np.stack([rows, cols, cols], axis=-1).astype(np.uint8)
    return [
        {"image": coords if same_image else np.full((4, 4, 3), i, np.uint8), "label": i}
        for i in range(n)
    ]


def test_each_epoch_is_a_fresh_permutation_of_the_source():
    """Epoch e holds every example once, not in source order, and not in epoch e-1's order."""
    cfg = pipeline.PreprocessConfig(image_size=4, resize_size=4)
    ds = pipeline.train_dataset(_numbered_source(16), cfg, global_batch_size=4, seed=0)
    epochs = [np.concatenate([ds[s]["label"] for s in range(e * 4, e * 4 + 4)]) for e in range(3)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(16))
    assert not np.array_equal(epochs[0], np.arange(16))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])


def test_the_seed_reaches_the_crops_and_flips_not_only_the_order():
    """With every example the same image, only the augmentation can tell two seeds apart."""
    cfg = pipeline.PreprocessConfig(image_size=2, resize_size=4)
    source = _numbered_source(8, same_image=True)
    a, b = (
        pipeline.train_dataset(source, cfg, global_batch_size=8, seed=seed)[0]["image"]
        for seed in (0, 1)
    )
    assert not np.array_equal(a, b)


def test_train_iterator_keeps_device_prefetch_batches_on_the_mesh(sources, monkeypatch):
    """After the first batch is returned, `device_prefetch` more are already sharded."""
    sharded = []
    shard_batch = pipeline.shard_batch
    monkeypatch.setattr(
        pipeline,
        "shard_batch",
        lambda batch, sharding: sharded.append(1) or shard_batch(batch, sharding),
    )
    ds = pipeline.train_dataset(sources["train"], PREP, global_batch_size=8, seed=0)
    sharding = experiment.data_sharding(experiment.make_mesh())
    for device_prefetch in (0, 3):
        sharded.clear()
        iterator = pipeline.train_iterator(ds, 0, sharding, 2, device_prefetch)
        next(iterator)
        assert len(sharded) == 1 + device_prefetch
        iterator.close()


class _HostBatches:
    """host_batches' stand-in: yields `batches`, records whether it was closed. It holds the
    reader it returns, as grain's threads hold theirs, so only closing it closes it."""

    def __init__(self, batches):
        self.batches, self.closed, self.args, self.reader = batches, False, None, None

    def __call__(self, ds, num_threads, num_workers=0):
        self.args = (num_threads, num_workers)
        self.reader = self.generate()
        return self.reader

    def generate(self):
        try:
            yield from self.batches
        finally:
            self.closed = True


def test_closing_the_train_iterator_stops_its_readers(monkeypatch):
    """Closing the device iterator closes the host reader (its threads or worker processes)."""
    readers = _HostBatches([{"label": np.arange(8, dtype=np.int32)}] * 5)
    monkeypatch.setattr(pipeline, "host_batches", readers)
    sharding = experiment.data_sharding(experiment.make_mesh())
    iterator = pipeline.train_iterator(grain.MapDataset.range(5), 0, sharding, 2, 1, num_workers=3)
    np.testing.assert_array_equal(next(iterator)["label"], np.arange(8))
    assert readers.args == (2, 3) and not readers.closed
    iterator.close()
    assert readers.closed


def test_worker_batches_are_copied_before_they_go_on_cpu_devices(monkeypatch):
    """A CPU device's array would alias the worker's shared memory: what `shard_batch` gets
    from workers holds the same values in memory of its own."""
    label = np.arange(8, dtype=np.int32)
    monkeypatch.setattr(pipeline, "host_batches", _HostBatches([{"label": label}]))
    given = []
    monkeypatch.setattr(pipeline, "shard_batch", lambda batch, sharding: given.append(batch))
    sharding = experiment.data_sharding(experiment.make_mesh())
    assert sharding.mesh.devices.flat[0].platform == "cpu"
    list(pipeline.train_iterator(grain.MapDataset.range(1), 0, sharding, 2, 0, num_workers=2))
    np.testing.assert_array_equal(given[0]["label"], label)
    assert not np.shares_memory(given[0]["label"], label)


class _ReadPlan:
    """A dataset that records how host_batches reads it instead of reading it."""

    def __init__(self):
        self.read_options, self.mp = None, None

    def to_iter_dataset(self, read_options):
        self.read_options = read_options
        return self

    def mp_prefetch(self, options, worker_init_fn=None):
        self.mp = (options, worker_init_fn)
        return "workers"


@pytest.mark.parametrize("num_workers", [1, 3])
def test_host_batches_with_workers_reads_in_that_many_single_threaded_processes(
    monkeypatch, num_workers
):
    """Worker processes (one thread each, `_init_worker` run in each), absl flags marked
    parsed for them first; no worker processes and `num_threads` threads with 0 workers."""
    parsed = []
    monkeypatch.setattr(pipeline, "_mark_absl_flags_parsed", lambda: parsed.append(1))
    plan = _ReadPlan()
    assert pipeline.host_batches(plan, 6, num_workers=num_workers) == "workers"
    assert plan.read_options.num_threads == 1
    options, init = plan.mp
    assert options.num_workers == num_workers and init is pipeline._init_worker
    assert parsed == [1]
    plan = _ReadPlan()
    assert pipeline.host_batches(plan, 6) is plan
    assert plan.read_options.num_threads == 6 and plan.mp is None and parsed == [1]


def test_a_worker_ignores_interrupts_uses_the_cpu_and_exits_with_its_parent(monkeypatch):
    """_init_worker, run here with the pipeline's os, signal, threading and time stubbed (the
    modules themselves untouched, which other threads use): JAX_PLATFORMS=cpu even where it
    was set otherwise, SIGINT and SIGTERM ignored, and a daemon thread that exits the worker
    once its parent is gone (os.getppid changes), not before."""
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    handlers, threads, slept = {}, [], []

    class Thread:
        def __init__(self, target, daemon, name):
            self.target, self.daemon, self.started = target, daemon, False
            threads.append(self)

        def start(self):
            self.started = True

    class Exited(Exception):
        pass

    def exit_(code):
        raise Exited(code)

    parents = iter([100, 100, 100, 1])
    stub_os = types.SimpleNamespace(environ=os.environ, getppid=lambda: next(parents), _exit=exit_)
    stub_signal = types.SimpleNamespace(
        signal=lambda s, h: handlers.__setitem__(s, h),
        SIGINT=signal.SIGINT,
        SIGTERM=signal.SIGTERM,
        SIG_IGN=signal.SIG_IGN,
    )
    monkeypatch.setattr(pipeline, "os", stub_os)
    monkeypatch.setattr(pipeline, "signal", stub_signal)
    monkeypatch.setattr(pipeline, "threading", types.SimpleNamespace(Thread=Thread))
    monkeypatch.setattr(pipeline, "time", types.SimpleNamespace(sleep=slept.append))
    pipeline._init_worker(0, 2)
    assert os.environ["JAX_PLATFORMS"] == "cpu"
    assert handlers == {signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN}
    (thread,) = threads
    assert thread.daemon and thread.started
    with pytest.raises(Exited):
        thread.target()
    assert len(slept) == 2


class _Flags:
    def __init__(self, parsed):
        self.parsed, self.marked = parsed, 0

    def is_parsed(self):
        return self.parsed

    def mark_as_parsed(self):
        self.parsed, self.marked = True, self.marked + 1


def test_absl_flags_are_marked_parsed_only_when_nothing_parsed_them(monkeypatch):
    for parsed, marked in ((False, 1), (True, 0)):
        fake = _Flags(parsed)
        monkeypatch.setattr(pipeline.flags, "FLAGS", fake)
        pipeline._mark_absl_flags_parsed()
        assert fake.parsed and fake.marked == marked
