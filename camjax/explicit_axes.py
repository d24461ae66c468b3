"""Arrays sharded on a mesh with Explicit axes, `jax.make_mesh`'s default.

With such axes, jax types each array with its sharding and asks every gather, reshape and
contraction whose output sharding it cannot infer to be given one (a ShardingTypeError
otherwise). The explainers, `camjax.cam`'s class CAMs, the WSOL quantisation and the
faithfulness sums run their programs with those axes Auto instead: XLA's partitioner places
the intermediate values, as on a mesh of Auto axes, and the outputs come back with the
shardings named here. The caller need not have set a mesh: the arrays' own mesh is used.
"""

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import PartitionSpec

REPLICATED = PartitionSpec()  # an output every device holds whole


def _sharding(x: Any) -> Any:
    """The sharding in x's type (an array's or tracer's); None where it has none."""
    return getattr(jax.typeof(x), "sharding", None)


def explicit_axes(x: Any) -> tuple[str, ...]:
    """The names of the Explicit axes of the mesh `x` (an array or tracer) is sharded on."""
    mesh = getattr(_sharding(x), "mesh", None)
    if mesh is None:
        return ()
    return tuple(
        name
        for name, kind in zip(mesh.axis_names, mesh.axis_types, strict=True)
        if kind == jax.sharding.AxisType.Explicit
    )


def batch_spec(x: Any, ndim: int) -> PartitionSpec:
    """The PartitionSpec of an ndim-dimensional output whose leading (batch) dimension is
    sharded as x's is, the others replicated."""
    spec = getattr(_sharding(x), "spec", None)
    return PartitionSpec(spec[0] if spec else None, *([None] * (ndim - 1)))


def with_auto_axes(fn: Callable, like: Any, out_sharding: Any, *args: Any) -> Any:
    """fn(*args), with the Explicit axes of `like`'s mesh made Auto inside it (jax's
    `auto_axes`), its outputs placed by `out_sharding` (PartitionSpecs, a prefix of the output
    tree); fn(*args) itself where `like` has none."""
    axes = explicit_axes(like)
    if not axes:
        return fn(*args)
    mesh = _sharding(like).mesh
    with jax.sharding.use_abstract_mesh(getattr(mesh, "abstract_mesh", mesh)):
        return jax.sharding.auto_axes(fn, axes=axes, out_sharding=out_sharding)(*args)
