"""Digests of a pytree's arrays, and their finiteness: what makes a checkpoint unable to lie.

orbax compresses arrays with no checksum, so a flipped bit restores as a changed value. Each
leaf's digest is a wrapping uint32 sum of its bit patterns times position-dependent odd
weights: a change to any one element always changes it (an odd weight is invertible mod 2^32),
two swapped elements almost always do, and random damage to many elements escapes it with
probability ~2^-32. It detects corruption, not tampering (not a cryptographic hash), and costs
one pass over the state on the device instead of a copy to the host
(benchmarks/checkpoint_verify.py: 1.6x faster than sha256 of a host copy on a 2-core CPU).
"""

from typing import Any

import jax
import jax.numpy as jnp

# Saved with the digests: a step whose digests were computed another way is not "corrupt".
DIGEST_FORMAT_KEY, DIGEST_FORMAT = "__format__", "uint32 sum of bits * (2i+1), v1"


def _bits(x: jax.Array) -> jax.Array:
    """x's bit patterns as a flat uint32 vector (dtypes of 1, 2, 4 or 8 bytes)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32).ravel()
    size = x.dtype.itemsize
    if size in (1, 2):
        unsigned = jnp.uint8 if size == 1 else jnp.uint16
        return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).ravel()
    return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()  # 8 bytes: two words each


def _digest(x: jax.Array) -> jax.Array:
    bits = _bits(x)
    weights = 2 * jnp.arange(bits.size, dtype=jnp.uint32) + 1
    return jnp.sum(bits * weights, dtype=jnp.uint32)


def _finite(x: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)


@jax.jit
def all_finite(tree: Any) -> jax.Array:
    """Whether every float array of `tree` is free of NaN and Inf (checked before a save)."""
    return jnp.all(jnp.stack([_finite(x) for x in jax.tree.leaves(tree)]))


_digest_leaves = jax.jit(lambda leaves: [_digest(x) for x in leaves])
# At restore, digests and finiteness in one compiled pass over the state.
_inspect_leaves = jax.jit(
    lambda leaves: ([_digest(x) for x in leaves], [_finite(x) for x in leaves])
)


def _leaves(tree: Any) -> tuple[list[str], list[jax.Array]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [path_name(p) for p, _ in flat], [jnp.asarray(x) for _, x in flat]


def _described(paths, leaves, sums) -> dict[str, list]:
    return {
        path: [int(s), str(x.dtype), list(x.shape)]
        for path, x, s in zip(paths, leaves, sums, strict=True)
    }


def tree_digests(tree: Any) -> dict[str, list]:
    """{'params/conv1_1/kernel': [digest, dtype, shape], ...} for every array leaf."""
    paths, leaves = _leaves(tree)
    return _described(paths, leaves, jax.device_get(_digest_leaves(leaves)))


def inspect_tree(tree: Any) -> tuple[dict[str, list], list[bool]]:
    """(tree_digests(tree), whether each leaf is finite), from one pass."""
    paths, leaves = _leaves(tree)
    sums, finite = jax.device_get(_inspect_leaves(leaves))
    return _described(paths, leaves, sums), [bool(f) for f in finite]


def path_name(keys: tuple) -> str:
    """'params/conv1_1/kernel' for a key path, the same for a TrainState field and a dict key."""
    names = []
    for k in keys:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                names.append(str(getattr(k, attr)))
                break
        else:
            names.append(str(k))
    return "/".join(names)
