"""XLA's CPU kernels for camjax's networks: the default (YNNPACK fusions) against Eigen.

    python benchmarks/cpu_kernels.py [--models vgg16_gap resnet50_cam googlenet_gap_bn]
        [--batch 8 32] [--size 224] [--width 1.0] [--repeats 5] [--smoke]

`camjax.compile_options.cpu_compiler_options` compiles camjax's top-level explainer programs
without jaxlib 0.10's YNNPACK fusions, so that XLA's Eigen kernels run their convolutions and
matrix products. This compiles each network's eval forward pass both ways in one process (XLA's
defaults, and `compile_options.EIGEN_KERNELS` on any jaxlib, to measure where the policy does
not apply too), times them in turn (`cam_throughput.time_interleaved`, median of --repeats
rounds) and prints milliseconds per call, the ratio default / Eigen (above 1: Eigen faster) and
the largest difference of the logits relative to the largest logit (float32 rounding of two
kernels). The header says whether camjax's explainer uses the Eigen kernels here.
"""

import argparse
import os
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.cam_throughput import time_interleaved  # noqa: E402
from camjax import compile_options  # noqa: E402
from camjax.models import create_model  # noqa: E402


def measure(name: str, batch: int, args) -> None:
    """Prints the model's row at `batch` images."""
    model = create_model(name, num_classes=args.num_classes, width=args.width)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((batch, args.size, args.size, 3), np.float32))
    variables = jax.jit(lambda k: model.init(k, images[:1], train=False))(jax.random.key(0))

    def forward(variables, images):
        return model.apply(variables, images, train=False)[0]

    jits = {
        "default": jax.jit(forward),
        "eigen": jax.jit(forward, compiler_options=compile_options.EIGEN_KERNELS),
    }
    compiled = {k: f.lower(variables, images).compile() for k, f in jits.items()}
    calls = {
        k: (lambda f=f: jax.block_until_ready(f(variables, images))) for k, f in compiled.items()
    }
    timings = time_interleaved(calls, args.repeats)
    default, eigen = (compiled[k](variables, images) for k in ("default", "eigen"))
    difference = float(jnp.abs(eigen - default).max() / jnp.abs(default).max())
    default_s, eigen_s = timings["default"][1], timings["eigen"][1]
    print(
        f"| {name} | {batch} | {default_s * 1e3:.1f} | {eigen_s * 1e3:.1f} | "
        f"{default_s / eigen_s:.2f}x | {difference:.1e} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["vgg16_gap", "resnet50_cam", "googlenet_gap_bn"]
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="batch 2, 64 px, width 1/16, 1 repeat")
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.size, args.width, args.num_classes, args.repeats = [2], 64, 0.0625, 10, 1
    applied = compile_options.cpu_compiler_options() is not None
    print(
        f"{args.size}x{args.size}, width {args.width}, float32, eval forward pass, median of "
        f"{args.repeats}; {platform.machine()}, {os.cpu_count()} cores, "
        f"{jax.devices()[0].device_kind}; jax {jax.__version__}"
        + f"; camjax's explainer uses {'Eigen' if applied else 'the defaults'} here"
    )
    print("| model | batch | default ms | Eigen ms | default / Eigen | rel. diff |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        for batch in args.batch:
            measure(name, batch, args)


if __name__ == "__main__":
    main()
