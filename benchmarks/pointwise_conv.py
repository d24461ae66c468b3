"""camjax's convolutions (1x1 kernels as a matrix product) against stock `nn.Conv`.

    python benchmarks/pointwise_conv.py [--models resnet50_cam googlenet_gap_bn googlenet_gap]
        [--batch 4] [--size 224] [--width 1.0] [--repeats 10] [--smoke] [--float64]

Every camjax network builds its convolutions from `camjax.models.layers.Conv`, which runs a 1x1
kernel as a `dot_general` (`PointwiseAsMatmul` says why). This builds each network twice,
once with that `Conv` and once with stock `nn.Conv` in its place (the same parameters), and
times both in turn (`cam_throughput.time_interleaved`, median of --repeats rounds): the eval
forward pass, and a training step's gradient (train-mode batch norm, mean cross-entropy over
random labels). It prints milliseconds per call, the ratio stock / camjax (above 1: camjax
faster) and the largest difference between the two variants' logits and gradients relative
to the largest value: float32 rounding of two summation orders, which train-mode batch norm on
a few images amplifies to ~1e-2 in the gradients. --float64 says which side that is: each
variant's gradient against the same network's in float64, and the two float64 variants
against each other.
"""

import argparse
import contextlib
import os
import platform
import sys
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.cam_throughput import time_interleaved  # noqa: E402
from camjax.models import create_model, layers  # noqa: E402


@contextlib.contextmanager
def stock_convs():
    """While tracing inside this, camjax's networks build stock `nn.Conv`s: every loaded
    camjax.models module that holds `layers.Conv` under the name `Conv` holds nn.Conv."""
    users = [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("camjax.models.") and getattr(module, "Conv", None) is layers.Conv
    ]
    with contextlib.ExitStack() as stack:
        for module in users:
            stack.enter_context(mock.patch.object(module, "Conv", nn.Conv))
        yield


def programs(model):
    """(forward, gradient): jitted functions of (variables, images) and (variables, images,
    labels)."""

    def forward(variables, images):
        return model.apply(variables, images, train=False)[0]

    def loss(params, batch_stats, images, labels):
        logits = model.apply(
            {"params": params, "batch_stats": batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
        )[0][0]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def gradient(variables, images, labels):
        return jax.grad(loss)(variables["params"], variables.get("batch_stats", {}), images, labels)

    return jax.jit(forward), jax.jit(gradient)


def relative_difference(a, b) -> float:
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    top = max(float(jnp.abs(y).max()) for y in b)
    return max(float(jnp.abs(x - y).max()) for x, y in zip(a, b, strict=True)) / top


def measure(name: str, args) -> tuple[str, list[float]] | None:
    """Prints the model's two rows; with --float64, returns (name, the gradients' distances:
    stock float32 and camjax float32 from float64, and float64 camjax from float64 stock)."""
    model = create_model(name, num_classes=args.num_classes, width=args.width)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((args.batch, args.size, args.size, 3), np.float32))
    labels = jnp.asarray(rng.integers(0, args.num_classes, args.batch))
    variables = jax.jit(lambda k: model.init(k, images[:1], train=False))(jax.random.key(0))
    # Compiled here, the stock pair inside the patch: a compiled program keeps the
    # convolutions it was traced with.
    compiled = {}
    for variant in ("stock", "camjax"):
        with stock_convs() if variant == "stock" else contextlib.nullcontext():
            forward, gradient = programs(model)
            compiled[f"forward {variant}"] = (
                forward.lower(variables, images).compile(),
                (variables, images),
            )
            compiled[f"gradient {variant}"] = (
                gradient.lower(variables, images, labels).compile(),
                (variables, images, labels),
            )

    def synced(fn, *a):
        return lambda: jax.block_until_ready(fn(*a))

    calls = {label: synced(fn, *a) for label, (fn, a) in compiled.items()}
    timings = time_interleaved(calls, args.repeats)
    for program in ("forward", "gradient"):
        stock, ours = (compiled[f"{program} {v}"] for v in ("stock", "camjax"))
        difference = relative_difference(ours[0](*ours[1]), stock[0](*stock[1]))
        stock_s = timings[f"{program} stock"][1]
        ours_s = timings[f"{program} camjax"][1]
        print(
            f"| {name} | {program} | {stock_s * 1e3:.1f} | {ours_s * 1e3:.1f} | "
            f"{stock_s / ours_s:.2f}x | {difference:.1e} |"
        )
    if not args.float64:
        return None
    # Each float32 gradient's distance from the same network's in float64, and the two float64
    # variants' from each other: which side of a difference is rounding.
    model64 = create_model(name, num_classes=args.num_classes, width=args.width, dtype=jnp.float64)
    exact = {}
    for variant in ("stock", "camjax"):
        with stock_convs() if variant == "stock" else contextlib.nullcontext():
            gradient = programs(model64)[1]
            exact[variant] = gradient(
                jax.tree.map(lambda a: a.astype(jnp.float64), variables),
                images.astype(jnp.float64),
                labels,
            )
    distances = [
        relative_difference(
            compiled[f"gradient {variant}"][0](variables, images, labels), exact["stock"]
        )
        for variant in ("stock", "camjax")
    ]
    distances.append(relative_difference(exact["camjax"], exact["stock"]))
    return name, distances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["resnet50_cam", "googlenet_gap_bn", "googlenet_gap"]
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="batch 2, 64 px, width 1/16, 1 repeat")
    parser.add_argument(
        "--float64", action="store_true", help="also each gradient's distance from float64's"
    )
    args = parser.parse_args()
    if args.float64:
        jax.config.update("jax_enable_x64", True)
    if args.smoke:
        args.batch, args.size, args.width, args.num_classes, args.repeats = 2, 64, 0.0625, 10, 1
    print(
        f"batch {args.batch} at {args.size}x{args.size}, width {args.width}, float32, median of "
        f"{args.repeats}; {platform.machine()}, {os.cpu_count()} cores, "
        f"{jax.devices()[0].device_kind}; jax {jax.__version__}"
    )
    print("| model | program | stock nn.Conv ms | camjax Conv ms | stock / camjax | rel. diff |")
    print("|---|---|---|---|---|---|")
    distances = [measure(name, args) for name in args.models]
    if args.float64:
        print(
            "\n| model | stock float32 from float64 | camjax float32 from float64 | "
            "float64 camjax from stock |"
        )
        print("|---|---|---|---|")
        for name, (stock, ours, exact) in distances:
            print(f"| {name} | {stock:.1e} | {ours:.1e} | {exact:.1e} |")


if __name__ == "__main__":
    main()
