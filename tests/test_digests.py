"""Tests for camjax/digests.py: per-array digests and finiteness."""

import jax.numpy as jnp
import numpy as np

from camjax import digests


def test_digests_see_every_element_and_dtype():
    x = jnp.arange(1000, dtype=jnp.float32)
    base = digests.tree_digests({"x": x})["x"]
    assert base[1:] == ["float32", [1000]]
    for i in (0, 1, 511, 999):
        flipped = x.at[i].set(jnp.nextafter(x[i], jnp.float32(np.inf)))  # one ulp, one element
        assert digests.tree_digests({"x": flipped})["x"][0] != base[0]
    swapped = x.at[0].set(x[1]).at[1].set(x[0])  # same values, other order
    assert digests.tree_digests({"x": swapped})["x"][0] != base[0]
    for dtype in (jnp.bfloat16, jnp.int32, jnp.uint8, jnp.bool_):
        assert len(digests.tree_digests({"y": jnp.ones(3, dtype)})["y"]) == 3


def test_all_finite_sees_a_nan_or_inf_in_any_float_leaf():
    tree = {"a": jnp.ones(3), "b": {"c": jnp.arange(4), "d": jnp.zeros(2, jnp.bfloat16)}}
    assert bool(digests.all_finite(tree))
    for bad in (jnp.nan, jnp.inf):
        assert not bool(digests.all_finite({**tree, "a": jnp.ones(3).at[1].set(bad)}))
