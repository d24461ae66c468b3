"""What a map explains: given classes per image, the top-k predicted ones, or any score function.

A `Target` is resolved against the logits of the unperturbed images, inside the compiled
program: `classes(logits)` gives the (B, n) class of each map (-1 for a score function),
`cotangents(logits)` the gradient of each of the n scores with respect to the logits (what a
gradient method back-propagates), and `scores(logits, classes)` the scores themselves for any
logits of the same images (what a perturbation method reads off its masked forward passes).
Every score is a function of one sample's logits only, so maps stay independent per sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

ScoreFn = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Target:
    """given: int (B, n) classes; else `fn` (logits (B, C) -> (B,) scores, one map per image);
    else the `top_k` best-scoring classes, best first (None: every class, in class order)."""

    given: jax.Array | None = None
    top_k: int | None = 1
    fn: ScoreFn | None = None

    def classes(self, logits: jax.Array) -> jax.Array:
        """(B, n) int32: the class of each map; -1 for a score function."""
        batch, num_classes = logits.shape
        if self.given is not None:
            # Range-checked in the given dtype: narrowing an int64 class first would wrap
            # 2**32 + 3 to the real class 3 (a plausible map); out of range becomes -1.
            given = self.given
            in_range = (given >= 0) & (given < num_classes)
            return jnp.where(in_range, given, -1).astype(jnp.int32)
        if self.fn is not None:
            return jnp.full((batch, 1), -1, jnp.int32)
        if self.top_k is None:
            return jnp.broadcast_to(jnp.arange(num_classes, dtype=jnp.int32), (batch, num_classes))
        if self.top_k > num_classes:
            raise ValueError(
                f"top_k must be in [1, {num_classes}] (the classes); got {self.top_k}."
            )
        return jax.lax.top_k(logits, self.top_k)[1].astype(jnp.int32)

    def cotangents(self, logits: jax.Array) -> jax.Array:
        """(n, B, C): d score / d logits of each of the n scores of every image."""
        if self.fn is not None:
            return jax.grad(lambda z: jnp.sum(self.fn(z)))(logits)[None]
        classes = self.classes(logits)
        return jax.nn.one_hot(classes.T, logits.shape[-1], dtype=logits.dtype)

    def scores(self, logits: jax.Array, classes: jax.Array) -> jax.Array:
        """Scores of the targets. logits (B, ..., C) of perturbed copies of image b; classes
        (B, n) from `classes`. Returns (B, ..., n): the logit of each class (out-of-range
        classes read class 0, and are flagged by the caller), or fn's value."""
        if self.fn is not None:
            flat = logits.reshape(-1, logits.shape[-1])
            return self.fn(flat).reshape(*logits.shape[:-1], 1)
        index = jnp.clip(classes, 0, logits.shape[-1] - 1)
        index = index.reshape(index.shape[0], *([1] * (logits.ndim - 2)), index.shape[1])
        return jnp.take_along_axis(
            logits, jnp.broadcast_to(index, (*logits.shape[:-1], index.shape[-1])), axis=-1
        )


def refuse_softmax_of_one_logit(num_classes: int, option: str, fix: str) -> None:
    """A softmax over one logit (a sigmoid head) is 1 whatever the model computes: a method
    that reads or differentiates it would give maps that ignore the model, so it is refused."""
    if num_classes == 1:
        raise ValueError(
            f"the model has one logit, whose softmax is 1 for every input, so {option} "
            f"ignores the model; {fix}."
        )
