"""How often XLA's division by a per-map value differs from numpy's, and camjax's fix.

    python benchmarks/division_exactness.py [--maps 2000] [--size 7] [--seed 0]

Random float32 maps (N, size, size) are min-max normalised, (x - min) / (max - min), three
ways: numpy (correctly rounded, as the WSOL training methods' torch references), a plain jitted
jnp division (XLA may rewrite it into a product with the span's reciprocal), and
`camjax.cam.divide_per_map`. Prints, for each jitted way, the quotients that differ from
numpy's and the maps whose maximum is not exactly 1.0 (RESULTS.md, twenty-second session).
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from camjax.cam import divide_per_map


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=2000)
    parser.add_argument("--size", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shape = (args.maps, args.size, args.size)
    maps = np.random.default_rng(args.seed).normal(size=shape).astype(np.float32)
    shifted = maps - maps.min(axis=(1, 2), keepdims=True)
    span = shifted.max(axis=(1, 2), keepdims=True)
    reference = shifted / span
    ways = {"plain jnp division": lambda x, s: x / s, "divide_per_map": divide_per_map}
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {args.maps} maps of {shape[1:]}")
    for name, divide in ways.items():
        out = np.asarray(jax.jit(divide)(jnp.asarray(shifted), jnp.asarray(span)))
        off = int((out != reference).sum())
        peaks = int((out.max(axis=(1, 2)) != 1.0).sum())
        print(
            f"{name:>20}: {off} of {out.size} quotients differ from numpy's "
            f"({100 * off / out.size:.1f}%), {peaks} of {args.maps} maxima not 1.0"
        )


if __name__ == "__main__":
    main()
