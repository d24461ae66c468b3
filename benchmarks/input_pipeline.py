"""Input pipeline speed for the CUB recipe: images/s per reader thread and per worker process.

    python benchmarks/input_pipeline.py [--dataset cub_like|wsol_shapes] [--num_images 2048]
        [--threads 1 2] [--workers 2] [--batch 32]

Writes a CUB-like stand-in for the official archive (`CUB_200_2011.tgz` layout; JPEG photos
of CUB's typical size, 500x375 or 375x500, quality 90, smooth colour fields with objects and
texture so they compress like photographs), prepares it with `camjax.data.cub.prepare` as a
user would, and reads the train split through the recipe's pipeline
(`configs/cam_vgg16_cub.py`: decode, resize 256x256, random crop 224, flip, batch). Times:

* per stage on one thread: reading + JPEG decoding (`source[i]`), and the train preprocessing;
* the whole host pipeline (`pipeline.train_dataset` + `pipeline.host_batches`, what training
  reads) with each `--threads` count of reader threads (`config.data.num_threads`) and each
  `--workers` count of worker processes (`config.data.num_workers`), images/s after every
  reader has delivered its first batch, and this process's CPU per batch (threads only: worker
  processes' CPU is not counted);
* the same with the train split read into memory first (`pipeline.in_memory_train_source`,
  what training does with threads when `config.data.cache_train_gib` holds the split), after
  its one-time read.

Threads share the GIL for the Python part of each example; worker processes do not.
`--dataset wsol_shapes` reads the embedded dataset at 64 px instead, where decoding and
resizing are cheap, so the GIL's ceiling on threads shows even on a 2-core machine. Compare
the rates with the training step rates in benchmarks/RESULTS.md (issue #5's H200 baseline:
4,232 to 8,100 images/s for VGG16-GAP).
"""

import argparse
import io
import os
import platform
import resource
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from camjax import data as camjax_data  # noqa: E402
from camjax import experiment  # noqa: E402
from camjax.data import cub, pipeline  # noqa: E402
from configs import cam_vgg16_cub, default  # noqa: E402


def photo(rng: np.random.Generator, width: int, height: int) -> bytes:
    """A JPEG that compresses like a photograph: smooth colour field, an object, fine texture."""
    coarse = rng.uniform(0, 255, (height // 32 + 2, width // 32 + 2, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[:height, :width]
    cx, cy, r = width * rng.uniform(0.3, 0.7), height * rng.uniform(0.3, 0.7), height / 4
    bird = ((xx - cx) ** 2 + ((yy - cy) * 1.5) ** 2) < r**2
    field[bird] = field[bird] * 0.4 + rng.uniform(0, 255, 3) * 0.6
    field += rng.normal(0, 6, field.shape)  # feathers, leaves: high-frequency detail
    out = io.BytesIO()
    Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def write_cub_archive(directory: Path, num_images: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tables = {k: [] for k in ("images", "image_class_labels", "train_test_split", "bounding_boxes")}
    members = {}
    for i in range(1, num_images + 1):
        width, height = (500, 375) if rng.random() < 0.75 else (375, 500)
        label = 1 + (i % 200)
        path = f"{label:03d}.Class_{label}/Bird_{i:05d}.jpg"
        members[f"CUB_200_2011/images/{path}"] = photo(rng, width, height)
        tables["images"].append(f"{i} {path}")
        tables["image_class_labels"].append(f"{i} {label}")
        tables["train_test_split"].append(f"{i} {int(i % 10 != 0)}")  # 10% test
        tables["bounding_boxes"].append(f"{i} 10.0 20.0 {width / 2:.1f} {height / 2:.1f}")
    classes = [f"{k} {k:03d}.Class_{k}" for k in range(1, 201)]
    for name, lines in [*tables.items(), ("classes", classes)]:
        members[f"CUB_200_2011/{name}.txt"] = ("\n".join(lines) + "\n").encode()
    with tarfile.open(directory / cub.IMAGES_ARCHIVE, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def prepared_source(dataset: str, num_images: int, seed: int, tmp: str):
    """(train source, preprocessing, description) of a freshly prepared dataset in tmp."""
    start = time.perf_counter()
    if dataset == "wsol_shapes":  # the embedded dataset at 64 px: little C work per example
        config = default.get_config()
        config.data.data_dir = tmp
        config.data.num_train = num_images
        config.data.num_validation = config.data.num_test = 8
        source = experiment.data_sources(config)["train"]
        what = "wsol_shapes train images (64x64 PNG)"
    else:
        config = cam_vgg16_cub.get_config()
        manual, data_dir = Path(tmp) / "manual", str(Path(tmp) / "tfds")
        manual.mkdir()
        write_cub_archive(manual, num_images, seed)
        cub.Cub2002011.prepare(str(manual), data_dir, progress=False)
        source = camjax_data.reopenable_sources(  # worker processes reopen them
            "cub_200_2011", config.data.image_size, data_dir, {"validation_per_class": 1}
        )["train"]
        what = "CUB-like train images (500x375 JPEG q90)"
    description = (
        f"{len(source)} {what}, recipe {config.data.resize_size} -> {config.data.image_size}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; prepared in "
        f"{time.perf_counter() - start:.1f} s"
    )
    return source, experiment.preprocess_config(config), description


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cub_like", choices=["cub_like", "wsol_shapes"])
    parser.add_argument("--num_images", type=int, default=2048)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workers", type=int, nargs="*", default=[2], help="worker processes")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        source, prep, description = prepared_source(args.dataset, args.num_images, args.seed, tmp)
        n = len(source)
        print(description)
        source[0]  # open the files
        decode = rate(lambda i: source[i % n], n)
        decoded = [source[i] for i in range(min(n, 64))]
        augment = pipeline.TrainPreprocess(prep)
        rng = np.random.default_rng(0)
        preprocess = rate(lambda i: augment.random_map(decoded[i % len(decoded)], rng), 256)
        print(f"one thread: read + decode {decode:.0f} images/s, preprocess {preprocess:.0f}")
        start, cpu = time.perf_counter(), cpu_seconds()
        in_memory = pipeline.in_memory_train_source(source, prep, float("inf"), max(args.threads))
        print(
            f"read into memory: {time.perf_counter() - start:.1f} s, "
            f"{cpu_seconds() - cpu:.1f} s of CPU ({max(args.threads)} threads)"
        )
        print("| readers | images/s | images/s per reader | CPU ms per batch |")
        print("|---|---|---|---|")
        readers = [(t, 0, False) for t in args.threads] + [(1, w, False) for w in args.workers]
        readers += [(t, 0, True) for t in args.threads]
        for threads, workers, memory in readers:
            split = in_memory if memory else source
            ds = pipeline.train_dataset(split, prep, args.batch, args.seed)
            batches = iter(pipeline.host_batches(ds, threads, workers))
            # Each reader computes whole batches: wait until every reader has delivered one,
            # then time at least 4 batches per reader. (Timing fewer than the readers hold in
            # flight measured the read-ahead: 16 threads "read" 25,101 images/s on an H200 host.)
            readers_n = max(threads, workers)
            for _ in range(readers_n + 1):
                next(batches)
            steps = max(4 * readers_n, 2 * n // args.batch)
            start, cpu = time.perf_counter(), cpu_seconds()
            for _ in range(steps):
                next(batches)
            images_s = steps * args.batch / (time.perf_counter() - start)
            cpu_ms = "-" if workers else f"{1e3 * (cpu_seconds() - cpu) / steps:.1f}"
            name = f"{workers} worker processes" if workers else f"{threads} threads"
            name += ", in memory" if memory else ""
            print(f"| {name} | {images_s:.0f} | {images_s / (workers or threads):.0f} | {cpu_ms} |")


if __name__ == "__main__":
    main()
