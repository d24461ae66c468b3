"""Does the input pipeline keep up? Training on decoded JPEGs against a device-resident batch.

    python benchmarks/train_input.py [--model vgg16_gap|googlenet_gap] [--batch 16]
        [--width 1.0] [--dtype float32|bfloat16] [--threads <cores>] [--workers 0]
        [--device_prefetch 2] [--steps 10] [--num_images 1024]

(the GPU run in benchmarks/device_run.sh: --batch 128 --dtype bfloat16 --steps 30
--num_images 2048 --workers 16)

Writes input_pipeline.py's CUB-like stand-in for the official archive (500x375 / 375x500 JPEG
photographs), prepares it with `camjax.data.cub.prepare` as a user would, and runs the training
loop's jitted, donated step with the CUB recipe's input (`configs/cam_vgg16_cub.py`: decode,
resize 256, random crop 224, flip, uint8 batches normalised on device), timing in one process:

* synthetic: every step on the same batch, already on the devices (the step's own rate);
* input only: the train iterator alone (`--threads` grain threads, or `--workers` worker
  processes; decoding, augmentation, the copy to the devices with `--device_prefetch` batches
  in flight), no step;
* real: the step fed by the train iterator, as `train.py` runs it.

Issue #5's goal is real within 10% of synthetic: the input never starves the chip. Each rate is
measured over --steps steps after 3 warm-up steps (compiles, reader start-up). Paste the
table, with the date, machine and command, into benchmarks/RESULTS.md.
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from input_pipeline import write_cub_archive  # noqa: E402

from camjax import data as camjax_data  # noqa: E402
from camjax import experiment  # noqa: E402
from camjax.data import cub, pipeline  # noqa: E402
from camjax.train import loop, optim  # noqa: E402
from camjax.train import state as train_state  # noqa: E402
from configs import cam_vgg16_cub  # noqa: E402

WARMUP_STEPS = 3


def recipe_config(args):
    """The CUB recipe with the benchmark's model, width, dtype, batch and reader threads."""
    config = cam_vgg16_cub.get_config()
    model = config.model
    model.name, model.width, model.dtype = args.model, args.width, args.dtype
    if args.model == "googlenet_gap":
        del model["output_stride"], model["num_blocks"]  # VGG16-GAP fields
        model.groups = 2
    config.data.batch_size = args.batch
    config.data.num_threads = args.threads
    config.data.num_workers = args.workers
    config.data.device_prefetch = args.device_prefetch
    return config


def rate(run_steps, steps: int, batch: int) -> float:
    """Images/s of `run_steps(n)`, which runs n steps and returns once their results exist."""
    run_steps(WARMUP_STEPS)
    start = time.perf_counter()
    run_steps(steps)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16_gap", choices=["vgg16_gap", "googlenet_gap"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0: threads)")
    parser.add_argument("--device_prefetch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--num_images", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = recipe_config(args)
    mesh = experiment.make_mesh()
    experiment.check_batch_size(args.batch, mesh, "--batch")
    model = experiment.build_model(config)
    tx = optim.create_optimizer(config.optim, config.train.num_steps)
    state, shardings = train_state.create_train_state(config, model, tx, mesh)
    step = loop.jit_train_step(config, model, tx, shardings, mesh)
    carry = {"state": state, "sums": jax.device_put(loop.zero_sums(), experiment.replicated(mesh))}

    def train(batches):
        def run_steps(n):
            for _ in range(n):
                carry["state"], carry["sums"] = step(carry["state"], carry["sums"], next(batches))
            jax.block_until_ready(carry["sums"])

        return run_steps

    def read(batches):
        def run_steps(n):
            for _ in range(n):
                batch = next(batches)
            jax.block_until_ready(batch)

        return run_steps

    prep = experiment.preprocess_config(config)
    with tempfile.TemporaryDirectory() as tmp:
        manual, data_dir = Path(tmp) / "manual", str(Path(tmp) / "tfds")
        manual.mkdir()
        write_cub_archive(manual, args.num_images, args.seed)
        cub.Cub2002011.prepare(str(manual), data_dir, progress=False)
        source = camjax_data.reopenable_sources(  # worker processes reopen it
            "cub_200_2011", prep.image_size, data_dir, {"validation_per_class": 1}
        )["train"]
        dataset = pipeline.train_dataset(source, prep, args.batch, args.seed)

        sharding = experiment.data_sharding(mesh)

        def iterator():
            d = config.data
            return pipeline.train_iterator(
                dataset, 0, sharding, d.num_threads, d.device_prefetch, d.num_workers
            )

        fixed = pipeline.shard_batch(dataset[0], sharding)  # step 0's batch, read once
        synthetic = rate(train(iter(lambda: fixed, None)), args.steps, args.batch)
        input_only = rate(read(iterator()), args.steps, args.batch)
        real = rate(train(iterator()), args.steps, args.batch)

    print(
        f"{args.model} width {args.width}, batch {args.batch} at {prep.image_size}x"
        f"{prep.image_size}, {args.dtype}; {len(source)} CUB-like JPEGs (500x375), "
        f"{f'{args.workers} worker processes' if args.workers else f'{args.threads} threads'}, "
        f"device prefetch {args.device_prefetch}; "
        f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on "
        f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    )
    print("| case | images/s | step ms |")
    print("|---|---|---|")
    for name, images_s in [
        ("synthetic (one device-resident batch)", synthetic),
        ("input only (no step)", input_only),
        ("real JPEGs through the train iterator", real),
    ]:
        print(f"| {name} | {images_s:,.1f} | {1e3 * args.batch / images_s:.1f} |")
    print(f"\nreal / synthetic: {real / synthetic:.3f} (goal >= 0.90)")


if __name__ == "__main__":
    main()
