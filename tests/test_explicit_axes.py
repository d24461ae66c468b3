"""Tests for camjax.explicit_axes: which mesh axes count as Explicit. The programs run with
those axes made Auto are tested with their callers (test_cam.py, localization/test_wsol.py,
evaluation/test_faithfulness.py, explain/test_explain.py)."""

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from camjax import explicit_axes
from tests.meshes import on_mesh


def test_only_the_explicit_axes_of_an_arrays_mesh_are_named():
    """Auto axes are not named, on a mesh of Auto axes or beside an Explicit one; an array on
    no mesh has none."""
    x = np.zeros((8, 3), np.float32)
    assert explicit_axes.explicit_axes(x) == ()
    assert explicit_axes.explicit_axes(on_mesh(x)[0]) == ("data",)
    assert explicit_axes.explicit_axes(on_mesh(x, AxisType.Auto)[0]) == ()
    mixed = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit, AxisType.Auto))
    on_mixed = jax.device_put(x, NamedSharding(mixed, PartitionSpec("data")))
    assert explicit_axes.explicit_axes(on_mixed) == ("data",)
