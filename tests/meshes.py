"""Arrays on a mesh of the session's 8 CPU devices, for the tests of sharded inputs."""

import jax


def on_mesh(x, axis_type=jax.sharding.AxisType.Explicit):
    """(x with its leading dimension split over the 8 devices, the mesh): one axis 'data' of
    `axis_type` (Explicit: jax.make_mesh's default)."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    spec = jax.sharding.PartitionSpec("data", *([None] * (x.ndim - 1)))
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, spec)), mesh
