"""The largest training batch that fits in a card's memory, per model, from XLA's own accounting.

    python benchmarks/max_batch.py [--models vgg16_gap googlenet_gap resnet50_cam]
        [--memory_gib 80] [--size 224] [--dtype bfloat16] [--width 1.0] [--multiple 8]
        [--verify]

For each model (built from its ILSVRC config: configs/vgg16_gap_imagenet.py,
googlenet_gap_imagenet.py, cam_resnet50_ilsvrc.py), compiles the training loop's jitted,
donated step for abstract batches (no batch or state is allocated; GPU autotuning
allocates scratch while compiling) and reads the program's device memory
from XLA's buffer assignment (`compiled.memory_analysis()`: arguments + outputs - donated
aliases + temporaries + code; its `peak_memory_in_bytes`, where present, leaves out the
temporaries on CPU). The need grows about linearly with the batch, so two compiles give a
first estimate and a bisection over multiples of --multiple settles the largest batch within
the budget in a few more.

The budget is --memory_gib, by default what JAX's allocator may hold on the first device
(`memory_stats()['bytes_limit']`; XLA_PYTHON_CLIENT_MEM_FRACTION sets it, 0.75 of the card
unless set): run on an H100 80GB with XLA_PYTHON_CLIENT_MEM_FRACTION=.95 for that card's
answer, or pass another card's budget on a larger one. Each model's row is printed as soon as it
is known; with --verify one real step then runs at that batch and the row is printed again
with the allocator's peak (or the error, if the step does not fit after all). Paste
the table, with the date, machine and command, into benchmarks/RESULTS.md.
"""

import argparse
import importlib
import math
import os
import platform
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from camjax import experiment  # noqa: E402
from camjax.train import loop, optim  # noqa: E402
from camjax.train import state as train_state  # noqa: E402

CONFIGS = {
    "vgg16_gap": "configs.vgg16_gap_imagenet",
    "googlenet_gap": "configs.googlenet_gap_imagenet",
    "resnet50_cam": "configs.cam_resnet50_ilsvrc",
}
GIB = 2**30
MAX_BATCH = 2**20  # past this the need is not growing with the batch: stop searching


def compiled_bytes(compiled) -> int:
    """Device bytes a compiled program needs, from XLA's buffer assignment."""
    stats = compiled.memory_analysis()
    stats = stats[0] if isinstance(stats, list) else stats
    return int(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes
        + stats.generated_code_size_in_bytes
    )


def largest_fitting(
    need: Callable[[int], int], budget: int, multiple: int, start: int
) -> tuple[int, dict[int, int]]:
    """The largest batch b (a multiple of `multiple`) with need(b) <= budget, and every need
    evaluated on the way ({batch: bytes}); (0, needs) when not even `multiple` fits.

    need(b) is close to linear in b, so each next batch tried is the line's guess through the
    two nearest batches evaluated, kept strictly inside the bracket (largest that fits,
    smallest that does not), or bisection where the guess falls outside it. A line that is
    exact needs four evaluations: `start`, `2 * start`, the guess, and the guess + `multiple`.
    """
    needs: dict[int, int] = {}
    lo, hi = 0, None  # the largest batch known to fit (0: none) and the smallest known not to
    batch = max(multiple, start - start % multiple)
    while hi is None or hi - lo > multiple:
        if batch > MAX_BATCH:
            raise ValueError(
                f"the need still fits the budget at batch {lo}: it does not grow with the batch."
            )
        needs[batch] = need(batch)
        if needs[batch] <= budget:
            lo = batch
        else:
            hi = batch
        if hi is not None and hi - lo <= multiple:
            break
        batch = _next_batch(needs, budget, multiple, lo, hi)
    return lo, needs


def _next_batch(needs: dict[int, int], budget: int, multiple: int, lo: int, hi: int | None) -> int:
    top = 8 * max(lo, multiple) if hi is None else hi - multiple  # never jump more than 8x
    if len(needs) >= 2:
        (b0, n0), (b1, n1) = sorted(needs.items(), key=lambda kv: abs(kv[1] - budget))[:2]
        if b0 != b1 and n1 != n0:
            guess = int(b0 + (budget - n0) * (b1 - b0) / (n1 - n0))
            guess -= guess % multiple
            if lo < guess <= top:
                return guess
            if guess > top and hi is None:
                return top
            if guess == lo:
                return lo + multiple  # the line says lo is the largest: check the next batch
    if hi is None:
        return max(2 * lo, multiple)
    mid = (lo + hi) // 2
    return max(lo + multiple, mid - mid % multiple)


def model_config(name: str, args):
    config = importlib.import_module(CONFIGS[name]).get_config()
    config.data.image_size = args.size
    config.model.width = args.width
    config.model.dtype = args.dtype
    return config


def step_for(config, mesh):
    """(jitted train step, abstract state, abstract metric sums) for a config; no allocation."""
    model = experiment.build_model(config)
    tx = optim.create_optimizer(config.optim, config.train.num_steps)
    replicated = experiment.replicated(mesh)
    abstract_state = train_state.abstract_train_state(config, model, tx, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, abstract_state)
    step = loop.jit_train_step(config, model, tx, shardings, mesh)
    sums = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), loop.zero_sums()
    )
    return step, abstract_state, sums


def abstract_batch(batch: int, size: int, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    sharding = experiment.data_sharding(mesh)
    return {
        "image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8, sharding=sharding),
        "label": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=sharding),
    }


def verify(config, mesh, batch: int) -> int | None:
    """Runs one real step at `batch`; returns the allocator's peak bytes (None if unreported)."""
    model = experiment.build_model(config)
    tx = optim.create_optimizer(config.optim, config.train.num_steps)
    state, shardings = train_state.create_train_state(config, model, tx, mesh)
    step = loop.jit_train_step(config, model, tx, shardings, mesh)
    size = config.data.image_size
    sharding = experiment.data_sharding(mesh)
    batch_arrays = {
        "image": jax.device_put(jnp.zeros((batch, size, size, 3), jnp.uint8), sharding),
        "label": jax.device_put(jnp.zeros((batch,), jnp.int32), sharding),
    }
    sums = jax.device_put(loop.zero_sums(), experiment.replicated(mesh))
    jax.block_until_ready(step(state, sums, batch_arrays))
    return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--memory_gib", type=float, default=0.0, help="0: the device's limit")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--multiple", type=int, default=8)
    parser.add_argument("--start", type=int, default=128, help="the first batch compiled")
    parser.add_argument("--verify", action="store_true")
    args = parser.parse_args()

    mesh = experiment.make_mesh()
    multiple = math.lcm(args.multiple, mesh.size)  # every device gets the same rows
    limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    budget = int(args.memory_gib * GIB) if args.memory_gib else limit
    if not budget:
        parser.error(f"{jax.devices()[0].platform} reports no memory limit: pass --memory_gib.")
    print(
        f"budget {budget / GIB:.2f} GiB per device, {args.size}x{args.size}, {args.dtype}, width "
        f"{args.width}, batches in multiples of {multiple}; {platform.machine()}, jax "
        f"{jax.__version__} on {jax.device_count()} x {jax.devices()[0].device_kind}"
    )
    print("| model | largest batch | predicted GiB | next batch GiB | compiles | peak GiB run |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        config = model_config(name, args)
        step, state, sums = step_for(config, mesh)

        def need(batch, step=step, state=state, sums=sums):
            lowered = step.lower(state, sums, abstract_batch(batch, args.size, mesh))
            return compiled_bytes(lowered.compile())

        best, needs = largest_fitting(need, budget, multiple, args.start)
        above = min((b for b in needs if b > best), default=None)
        row = (
            f"| {name} | {best} | {needs.get(best, 0) / GIB:.2f} | "
            f"{'-' if above is None else f'{needs[above] / GIB:.2f} ({above})'} | {len(needs)} |"
        )
        print(row + " - |", flush=True)  # the prediction survives a failed verification
        if args.verify and best:
            try:
                peak = verify(config, mesh, best)
                ran = "- (not reported)" if peak is None else f"{peak / GIB:.2f}"
            except jax.errors.JaxRuntimeError as e:  # out of memory: the prediction was wrong
                ran = f"failed: {str(e).splitlines()[0][:80]}"
            print(f"{row} {ran} |")


if __name__ == "__main__":
    main()
