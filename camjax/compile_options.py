"""XLA compile options of camjax's top-level programs on jaxlib 0.10's CPU backend.

jaxlib 0.10 hands a CPU program's convolutions and matrix products to YNNPACK fusions by
default. On the 2-core dev box (AMD EPYC, AVX-512) those took 0.99 to 1.54 times as long as
XLA's own Eigen kernels for camjax's networks' forward passes (`python
benchmarks/cpu_kernels.py`, benchmarks/RESULTS.md, thirty-third session); on jaxlib 0.12 they
did not lose (0.95x). The option that turns the fusions off is per program (`jax.jit(...,
compiler_options=...)`), and jax takes it on a top-level jit only, so a function that may also
run inside a user's trace keeps a plain jit for that case (`jit` below, the explainer's).
"""

import importlib.metadata

import jax
import jax.numpy as jnp

# An empty list of fusion types: no YNNPACK fusion, XLA's Eigen kernels instead.
EIGEN_KERNELS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def _jaxlib_below(major: int, minor: int) -> bool:
    installed = importlib.metadata.version("jaxlib").split(".")[:2]
    return tuple(int(part) for part in installed) < (major, minor)


def cpu_compiler_options() -> dict[str, str] | None:
    """`compiler_options` for a top-level `jax.jit`: Eigen convolutions on jaxlib 0.10 when the
    default backend is the CPU; None (XLA's defaults) elsewhere, including jaxlib 0.11, which
    was not measured."""
    if jax.default_backend() != "cpu" or not _jaxlib_below(0, 11):
        return None
    return dict(EIGEN_KERNELS)


def _inside_a_trace(args, kwargs) -> bool:
    """Whether a call is traced: an argument is a tracer (a user's jit, vmap or grad), or jax is
    staging a program now, which the arguments alone cannot tell (a user's jitted function that
    passes arrays it closed over): an array made while staging comes back as a tracer (an
    empty iota: no host-to-device transfer, which a user's `jax.transfer_guard` may refuse)."""
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs))):
        return True
    return isinstance(jax.lax.iota(jnp.int8, 0), jax.core.Tracer)


class jit:  # noqa: N801 (used as jax.jit is)
    """`jax.jit(fn, **jit_kwargs)` that compiles with `cpu_compiler_options` when called outside
    a trace, and runs the plain jit inside a user's jit, scan, vmap or grad, where jax refuses
    a nested jit's compiler options."""

    def __init__(self, fn, **jit_kwargs):
        self._plain = jax.jit(fn, **jit_kwargs)
        options = cpu_compiler_options()
        self._top_level = (
            self._plain if options is None else jax.jit(fn, compiler_options=options, **jit_kwargs)
        )

    def _for(self, args, kwargs):
        if self._top_level is self._plain or _inside_a_trace(args, kwargs):
            return self._plain
        return self._top_level

    def __call__(self, *args, **kwargs):
        return self._for(args, kwargs)(*args, **kwargs)

    def eval_shape(self, *args, **kwargs):
        return self._for(args, kwargs).eval_shape(*args, **kwargs)
