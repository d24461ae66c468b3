"""Every explainer method on a batch sharded over a mesh of Explicit axes (jax.make_mesh's
default), against the same batch unsharded: same classes, maps within float32 rounding, maps
sharded as the batch is; without a mesh set and under jax.set_mesh.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/explicit_mesh_check.py

The model is the tests' small Flax CNN (tests/explain/user_models.py) at 16 px, a batch of 8,
the layer conv3 (CAM: with its head, classifier). Prints one line per method with the largest
absolute difference of the maps, and exits 1 if a method fails or its classes differ.
"""

import os
import sys

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the tests' models, run as `python benchmarks/...` from anywhere

from camjax import explain  # noqa: E402
from tests.explain.user_models import SmallCNN, init  # noqa: E402


def main() -> int:
    if jax.device_count() < 8:
        sys.exit("needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
    model = SmallCNN()
    variables, _ = init(model, size=16, batch=8)
    images = jax.random.normal(jax.random.key(3), (8, 16, 16, 3))
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    sharded = jax.device_put(images, NamedSharding(mesh, PartitionSpec("data")))
    failed = []
    for method in explain.METHODS:
        options = {"head": "classifier"} if method == "cam" else {}
        f = explain.explainer(model, variables, method, layer="conv3", **options)
        want = f(images)
        try:
            got = f(sharded)
            with jax.set_mesh(mesh):
                under_mesh = f(sharded)
        except Exception as e:  # a method that fails is reported, and the others still run
            print(f"{method}: FAILED, {type(e).__name__}: {str(e)[:200]}")
            failed.append(method)
            continue
        same = all(np.array_equal(o.classes, want.classes) for o in (got, under_mesh))
        diff = max(float(np.max(np.abs(np.asarray(o.cams) - want.cams))) for o in (got, under_mesh))
        print(f"{method}: max |diff| {diff:.2e}, classes equal {same}, {got.cams.sharding.spec}")
        if not same:
            failed.append(method)
    print(f"{len(explain.METHODS) - len(failed)} of {len(explain.METHODS)} methods agree")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
