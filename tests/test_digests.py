"""Tests for camjax/digests.py: per-array digests and finiteness."""

import jax
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


def _reference_digest(a: np.ndarray) -> int:
    """The documented formula in plain numpy: the elements' bit patterns as unsigned integers
    of their own width (bool as 0/1), times the odd weights 2i+1, summed mod 2^32."""
    a = np.asarray(a).ravel()
    bits = a.astype(np.uint64) if a.dtype == bool else a.view(f"u{a.dtype.itemsize}")
    weights = 2 * np.arange(bits.size, dtype=np.uint64) + 1
    return int(np.sum(bits.astype(np.uint64) * weights) % 2**32)


def test_a_digest_is_the_sum_of_bit_patterns_times_odd_weights_that_its_format_names():
    """Saved digests are compared with ones computed by a later camjax: the formula must stay
    the one the saved format string names, or every older checkpoint reads as corrupt. The
    bits are the elements' bit patterns, not their values (a value cast would lose fractions
    and bfloat16 ulps)."""
    assert digests.DIGEST_FORMAT == "uint32 sum of bits * (2i+1), v1"
    assert digests.tree_digests({"x": jnp.ones(1, jnp.float32)})["x"][0] == 0x3F800000
    assert digests.tree_digests({"x": jnp.array([-1, 2], jnp.int8)})["x"][0] == 255 + 3 * 2
    assert digests.tree_digests({"x": jnp.array([True, False, True])})["x"][0] == 1 + 5
    arrays = [
        np.array([1.0, -2.0, 0.5, 3.25], np.float32),
        np.linspace(-3, 3, 7).astype(jnp.bfloat16),
        np.array([-1, 7, 2**31 - 1], np.int32),
        np.arange(300).astype(np.uint8).reshape(20, 15),
    ]
    for a in arrays:
        assert digests.tree_digests({"x": jnp.asarray(a)})["x"][0] == _reference_digest(a), a.dtype


def test_flipping_the_top_bit_of_any_one_element_changes_the_digest():
    """Odd weights are what makes any single change visible: with an even weight w, a flip of
    bit 31 adds 2^31 * w = 0 mod 2^32 (a sign flip of a float32)."""
    a = np.arange(1.0, 9.0, dtype=np.float32)
    base = digests.tree_digests({"x": jnp.asarray(a)})["x"][0]
    for i in range(a.size):
        flipped = a.copy()
        flipped.view(np.uint32)[i] ^= np.uint32(0x80000000)
        assert digests.tree_digests({"x": jnp.asarray(flipped)})["x"][0] != base, i


def test_a_bfloat16_ulp_changes_the_digest():
    """2-byte floats are digested by their bits: one ulp of 1.0 is invisible to a value cast."""
    a = np.ones(4, jnp.bfloat16)
    base = digests.tree_digests({"x": jnp.asarray(a)})["x"][0]
    for i in range(a.size):
        up = a.copy()
        up.view(np.uint16)[i] += 1
        assert digests.tree_digests({"x": jnp.asarray(up)})["x"][0] != base, i


def test_a_typed_prng_key_is_digested_by_its_key_data():
    """A train state may hold new-style PRNG keys; their key data (threefry: two uint32 words,
    key(1) is [0, 1]) is what is digested: 0 * 1 + 1 * 3."""
    got = digests.tree_digests({"rng": jax.random.key(1)})["rng"]
    assert got[0] == 3 and got[2] == []
    assert digests.tree_digests({"rng": jax.random.key(2)})["rng"][0] == 6


def test_digests_are_named_by_slash_paths_with_the_array_shape():
    """The names and descriptions are saved on disk and compared at every later restore: the
    simple '/'-joined path of each leaf (no brackets or quotes), its dtype and its shape."""
    tree = {"params": {"conv1_1": {"kernel": jnp.zeros((2, 3, 5))}}, "opt": [jnp.zeros(4)]}
    got = digests.tree_digests(tree)
    assert sorted(got) == ["opt/0", "params/conv1_1/kernel"]
    assert got["params/conv1_1/kernel"][1:] == ["float32", [2, 3, 5]]
    assert got["opt/0"][1:] == ["float32", [4]]


def test_saved_digests_of_another_format_or_step_cannot_verify_a_step():
    """The metadata beside a step's arrays must name this format and this step; steps saved
    before the step was recorded (no '__step__') still verify."""
    fmt, at = digests.DIGEST_FORMAT_KEY, digests.STEP_KEY
    good = {fmt: digests.DIGEST_FORMAT, at: 2}
    assert digests.saved_problem(good, 2) == ""
    assert digests.saved_problem({fmt: digests.DIGEST_FORMAT}, 2) == ""
    other = digests.saved_problem({fmt: "crc32, v0", at: 2}, 2)
    assert other.startswith("its digests are of another format ('crc32, v0', not ")
    assert "cannot be verified" in other
    for saved_step in (1, 3):  # an older or a newer step's digests copied in
        assert digests.saved_problem({**good, at: saved_step}, 2) == (
            f"it holds step {saved_step} in its digests, not 2 (renamed or copied by hand?)"
        )


def test_tree_problem_names_the_first_array_that_differs_or_is_not_finite():
    """One line per restored tree: an array without a saved digest, one whose digest, dtype or
    shape differs (zeros of int32 and float32 share their bits), or the first non-finite one
    in path order."""
    x = jnp.zeros(3)
    saved = {"a": [0, "float32", [3]], "b": [0, "float32", [3]]}
    assert digests.tree_problem({"a": x, "b": x}, saved) == ""
    assert digests.tree_problem({"a": x, "c": x}, saved) == "c has no saved digest"
    assert digests.tree_problem({"a": x, "b": jnp.zeros(3, jnp.int32)}, saved) == (
        "b does not match its saved digest (the file is corrupt)"
    )
    assert digests.tree_problem({"a": x, "b": jnp.zeros((1, 3))}, saved).startswith("b does not")
    nan = x.at[1].set(jnp.nan)
    nan_saved = {k: [_reference_digest(np.asarray(nan)), "float32", [3]] for k in "ab"}
    assert digests.tree_problem({"a": nan, "b": nan}, nan_saved) == "a holds NaN or Inf"
