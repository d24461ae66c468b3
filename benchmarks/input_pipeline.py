"""Input pipeline speed for the CUB recipe: images/s per CPU core, and what 16 workers give.

    python benchmarks/input_pipeline.py [--num_images 2048] [--threads 1 2] [--batch 32]

Writes a CUB-like stand-in for the official archive (`CUB_200_2011.tgz` layout; JPEG photos
of CUB's typical size, 500x375 or 375x500, quality 90, smooth colour fields with objects and
texture so they compress like photographs), prepares it with `camjax.data.cub.prepare` as a
user would, and reads the train split through the recipe's pipeline
(`configs/cam_vgg16_cub.py`: decode, resize 256x256, random crop 224, flip, batch). Times:

* per stage on one thread: reading + JPEG decoding (`source[i]`), and the train preprocessing;
* the whole grain pipeline (`pipeline.train_dataset` + `to_iter_dataset`) with each
  `--threads` count, images/s.

The per-core rate times 16 is the estimate for a 16-core accelerator host; compare it with the
training step rates in benchmarks/RESULTS.md (issue #5's H200 baseline: 4,232 to 8,100
images/s for VGG16-GAP).
"""

import argparse
import io
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import grain  # noqa: E402

from camjax import data as camjax_data  # noqa: E402
from camjax import experiment  # noqa: E402
from camjax.data import cub, pipeline  # noqa: E402
from configs import cam_vgg16_cub  # noqa: E402


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


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=2048)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = cam_vgg16_cub.get_config()
    prep = experiment.preprocess_config(config)
    with tempfile.TemporaryDirectory() as tmp:
        manual, data_dir = Path(tmp) / "manual", str(Path(tmp) / "tfds")
        manual.mkdir()
        start = time.perf_counter()
        write_cub_archive(manual, args.num_images, args.seed)
        cub.prepare(str(manual), data_dir, progress=False)
        setup_s = time.perf_counter() - start
        sources = camjax_data.load_data_sources(
            "cub_200_2011", prep.image_size, data_dir, {"validation_per_class": 1}
        )
        source = sources["train"]
        n = len(source)
        print(
            f"{n} CUB-like train images (500x375 JPEG q90), recipe {config.data.resize_size} -> "
            f"{config.data.image_size}; {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores; archive + prepare {setup_s:.1f} s"
        )
        source[0]  # open the files
        decode = rate(lambda i: source[i % n], n)
        decoded = [source[i] for i in range(min(n, 64))]
        augment = pipeline.TrainPreprocess(prep)
        rng = np.random.default_rng(0)
        preprocess = rate(lambda i: augment.random_map(decoded[i % len(decoded)], rng), 256)
        print(f"one thread: read + decode {decode:.0f} images/s, preprocess {preprocess:.0f}")
        print("| reader threads | images/s | images/s per thread |")
        print("|---|---|---|")
        for threads in args.threads:
            ds = pipeline.train_dataset(source, prep, args.batch, args.seed)
            it = ds.to_iter_dataset(
                grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)
            )
            batches = iter(it)
            next(batches)  # start the readers
            steps = max(4, 2 * n // args.batch)
            start = time.perf_counter()
            for _ in range(steps):
                next(batches)
            images_s = steps * args.batch / (time.perf_counter() - start)
            print(f"| {threads} | {images_s:.0f} | {images_s / threads:.0f} |")


if __name__ == "__main__":
    main()
