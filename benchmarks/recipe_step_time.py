"""Per-step time of the default recipe's train step under config overrides, side by side.

    python benchmarks/recipe_step_time.py [--steps 8] [--repeats 2] \
        "" "model.num_blocks=4" "model.num_blocks=4 model.output_stride=2"

Each argument is one variant: space-separated `section.field=value` overrides of
configs/default.py ("" is the default). The variants run in one process, interleaved
`--repeats` times, so a loaded machine slows them alike and their ratios stay comparable.
Each is the training loop's jitted, donated step (`loop.jit_train_step`) on one fixed random
batch of `data.batch_size` uint8 images (no input pipeline): median of `--steps` steps after
the compile. Prints ms per step and images/s for each run.
"""

import argparse
import ast
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from camjax import experiment  # noqa: E402
from camjax.train import loop, optim  # noqa: E402
from camjax.train import state as train_state  # noqa: E402
from configs import default  # noqa: E402


def variant_config(overrides: str):
    config = default.get_config()
    for item in overrides.split():
        path, value = item.split("=", 1)
        section, field = path.split(".")
        config[section][field] = ast.literal_eval(value)
    return config


def step_seconds(config, steps: int) -> float:
    """Median seconds of one train step of `config` (after a compile + first call)."""
    mesh = experiment.make_mesh()
    model = experiment.build_model(config)
    tx = optim.create_optimizer(config.optim, config.train.num_steps)
    state, shardings = train_state.create_train_state(config, model, tx, mesh)
    step = loop.jit_train_step(config, model, tx, shardings, mesh)
    rng = np.random.default_rng(0)
    b, s = config.data.batch_size, config.data.image_size
    batch = jax.device_put(
        {
            "image": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
            "label": rng.integers(0, config.model.num_classes, (b,), dtype=np.int32),
        },
        experiment.data_sharding(mesh),
    )
    sums = jax.device_put(loop.zero_sums(), experiment.replicated(mesh))
    state, sums = step(state, sums, batch)
    jax.block_until_ready(sums)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, sums = step(state, sums, batch)
        jax.block_until_ready(sums)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    for _ in range(args.repeats):
        for overrides in args.variants:
            config = variant_config(overrides)
            t = step_seconds(config, args.steps)
            label = overrides or "default"
            print(f"{label:<45} {t * 1e3:8.1f} ms/step {config.data.batch_size / t:7.1f} img/s")


if __name__ == "__main__":
    main()
