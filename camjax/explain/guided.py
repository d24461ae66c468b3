"""Guided backprop without touching the model: a function's ReLUs swapped in its traced program.

`guided_relus(fn)` traces fn to a jaxpr and evaluates it equation by equation, binding each
primitive as `jax.core.eval_jaxpr` does, except that every call of `jax.nn.relu` (which
`flax.linen.relu` and `flax.nnx.relu` are, however the model names it: `nn.relu`,
`from jax.nn import relu`) becomes `guided_relu`, whose backward pass keeps only positive
gradients at positive inputs.
Nothing global changes, so no trace cache (a user's `jax.jit` helper, `nnx.jit`, `nn.remat`)
sees the guided ReLU outside this one evaluation, nor this evaluation their plain one.

What is reached: the top level, and the bodies of jit (`pjit` in older JAX), closed_call, remat
(`jax.checkpoint`), scan, while and cond, at any depth: flax's lifted `nn.jit`, `nn.remat`,
`nn.scan` and NNX's `nnx.jit`, `nnx.remat`, `nnx.scan` lower to these. What is not: the bodies of
custom_jvp and custom_vjp functions other than the ReLU itself (their rules refer to their own
bodies), and of any other primitive with a body (shard_map, custom_linear_solve, ...), which
are bound as they are. A ReLU written as `jnp.maximum(x, 0)` is a plain `max` in the jaxpr and
stays as it is: flax's norm layers clamp their variances the same way, and guiding those would
change their gradient, which guided backprop does not.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core


@jax.custom_vjp
def guided_relu(x: jax.Array) -> jax.Array:
    """ReLU whose backward pass keeps only positive gradients at positive inputs."""
    return jnp.maximum(x, 0)


def _guided_relu_fwd(x):
    return jnp.maximum(x, 0), x


def _guided_relu_bwd(x, g):
    return (jnp.maximum(jnp.where(x > 0, g, 0), 0).astype(g.dtype),)


guided_relu.defvjp(_guided_relu_fwd, _guided_relu_bwd)


def guided_relus(fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn, with every `jax.nn.relu` it computes (in the bodies listed above) a `guided_relu`.
    Takes and returns the same pytrees of arrays as fn; its forward values are fn's."""

    @functools.wraps(fn)
    def guided_fn(*args):
        closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
        outs = _eval(closed.jaxpr, closed.consts, jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(shapes), outs)

    return guided_fn


def is_relu(eqn: jex_core.JaxprEqn) -> bool:
    """Whether an equation is a call of `jax.nn.relu`: a custom_jvp call whose body is a single
    jit named 'relu' (the primitive is `jit` or `pjit`, by JAX version) computing max(x, 0)."""
    if eqn.primitive.name != "custom_jvp_call" or len(eqn.invars) != 1:
        return False
    body = _open(eqn.params["call_jaxpr"])
    if len(body.eqns) != 1 or body.eqns[0].params.get("name") != "relu":
        return False
    inner = body.eqns[0].params.get("jaxpr")
    inner = None if inner is None else _open(inner)
    if inner is None or len(inner.eqns) != 1:
        return False
    (op,) = inner.eqns
    x, zero = op.invars
    return (
        op.primitive is jax.lax.max_p
        and x is inner.invars[0]
        and isinstance(zero, jex_core.Literal)
        and not zero.val
    )


def _eval(jaxpr: jex_core.Jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
    """`jax.core.eval_jaxpr` with the ReLUs guided and the bodies it reaches evaluated alike."""
    env: dict[jex_core.Var, Any] = dict(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))

    def read(v):
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        with eqn.ctx.manager:
            outs = _RULES.get(eqn.primitive.name, _bind)(eqn, invals)
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _open(body: jex_core.Jaxpr | jex_core.ClosedJaxpr) -> jex_core.Jaxpr:
    return body.jaxpr if isinstance(body, jex_core.ClosedJaxpr) else body


def _eval_body(body: jex_core.Jaxpr | jex_core.ClosedJaxpr, *args: Any) -> list[Any]:
    """A primitive's body evaluated: a ClosedJaxpr (JAX 0.10's jit, scan, while and cond) or
    a Jaxpr without constants (their bodies in JAX 0.12, remat's in both)."""
    consts = body.consts if isinstance(body, jex_core.ClosedJaxpr) else ()
    return _eval(_open(body), consts, args)


def _bind(eqn: jex_core.JaxprEqn, invals: list[Any]) -> list[Any]:
    outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
    return outs if eqn.primitive.multiple_results else [outs]


def _custom_jvp(eqn, invals):
    return [guided_relu(*invals)] if is_relu(eqn) else _bind(eqn, invals)


def _inline(key: str) -> Callable:
    """A call's body evaluated in place: the same values inside the enclosing trace (the inner
    jit's own compilation, shardings and trace cache are not needed there)."""

    def rule(eqn, invals):
        return _eval_body(eqn.params[key], *invals)

    return rule


def _remat(eqn, invals):
    """The body under a new `jax.checkpoint` with the same policy, so that the backward pass
    still recomputes it rather than keeping its intermediates."""
    fn = jax.checkpoint(
        functools.partial(_eval_body, eqn.params["jaxpr"]),
        prevent_cse=eqn.params["prevent_cse"],
        policy=eqn.params["policy"],
    )
    return fn(*invals)


def _scan(eqn, invals):
    p = eqn.params
    if "ft_in" in p:  # JAX 0.12: the operands' trees, (consts, carry, xs)
        num_consts, num_carry = (len(part) for part in p["ft_in"].unpack()[:2])
    else:
        num_consts, num_carry = p["num_consts"], p["num_carry"]
    consts, carry, xs = _split(invals, num_consts, num_carry)

    def body(carry, x):
        outs = _eval_body(p["jaxpr"], *consts, *carry, *x)
        return outs[:num_carry], outs[num_carry:]

    carry, ys = jax.lax.scan(
        body, carry, xs, length=p["length"], reverse=p["reverse"], unroll=p["unroll"]
    )
    return [*carry, *ys]


def _while(eqn, invals):
    p = eqn.params
    cond_consts, body_consts, init = _split(invals, p["cond_nconsts"], p["body_nconsts"])
    return jax.lax.while_loop(
        lambda carry: _eval_body(p["cond_jaxpr"], *cond_consts, *carry)[0],
        lambda carry: _eval_body(p["body_jaxpr"], *body_consts, *carry),
        init,
    )


def _cond(eqn, invals):
    index, *operands = invals
    branches = [functools.partial(_eval_body, branch) for branch in eqn.params["branches"]]
    return jax.lax.switch(index, branches, *operands)


def _split(values: list[Any], *sizes: int) -> list[list[Any]]:
    """values cut into len(sizes) + 1 runs, the first ones of the given sizes."""
    cuts = [0]
    for size in sizes:
        cuts.append(cuts[-1] + size)
    return [values[a:b] for a, b in zip(cuts, [*cuts[1:], len(values)], strict=True)]


_RULES: dict[str, Callable[[jex_core.JaxprEqn, list[Any]], list[Any]]] = {
    "custom_jvp_call": _custom_jvp,
    "jit": _inline("jaxpr"),
    "pjit": _inline("jaxpr"),
    "closed_call": _inline("call_jaxpr"),
    "remat2": _remat,
    "checkpoint": _remat,
    "scan": _scan,
    "while": _while,
    "cond": _cond,
}
