"""BagCAMs (Zhu et al., ECCV 2022): a training-free localizer from the gradient of log(score).

The definition is the official code (zh460045050/BagCAMs `libs/cams/bagcams.py`), for one image,
target c and the layer's activations F (h, w, K):

    G = d log(y_c) / d F            y_c the raw logit (the classifier has no softmax)
    P = G * F                       (h, w, K): each position's "regional" contribution
    t_k = mean_m(P_mk) + 1          per channel: all regional localizers bagged into one
    M(m) = sum_k ReLU(t_k P_mk)     the ReLU inside the channel sum

then upsampled (bilinear, align_corners=False: explainer `resize='bilinear'`) and min-max
normalised. d log(y_c) = d y_c / y_c, finite even where y_c < 0 (the log itself is NaN there,
which autograd never evaluates); the "+1" makes the 1/y_c scale matter. A score function's
target differentiates log(fn(logits)) the same way.

Guided ReLUs: the official code clamps the gradient flowing back through every ReLU of the
backbone at zero (guided backprop). `guided=True` (the default, the official method) swaps
`flax.linen.relu` / `flax.nnx.relu` / `jax.nn.relu` for `guided_relu` (a `jax.custom_vjp`:
forward ReLU, backward max(g * 1[x > 0], 0)) while the model is traced. Only ReLUs between the
probed layer and the logits change the map, and only ReLUs the model calls by attribute
(`nn.relu(x)`, `nnx.relu(x)`, `jax.nn.relu(x)`, as camjax's models and most Flax code do) are
guided; a ReLU bound at import (`from jax.nn import relu`) or written as `jnp.maximum(x, 0)` is
not. At the layer feeding global average pooling and a linear head (the 'feature_map' of
camjax's networks) no ReLU lies downstream, so both settings give the closed form (tests):
G_mk = W_ck / (h w y_c), t_k = 1 + W_ck mean_m(F_mk) / (h w y_c). The paper's WSOL setting is
the ResNet50's layer3 with the ground-truth class.
"""

from __future__ import annotations

import contextlib

import flax.linen as nn
import flax.linen.activation
import jax
import jax.numpy as jnp
from flax import nnx

from camjax.explain.gradient import single_layer
from camjax.explain.probe import Probe
from camjax.explain.targets import Target, refuse_softmax_of_one_logit

SCORES = ("logit", "probability")


@jax.custom_vjp
def guided_relu(x: jax.Array) -> jax.Array:
    """ReLU whose backward pass keeps only positive gradients at positive inputs."""
    return jnp.maximum(x, 0)


def _guided_relu_fwd(x):
    return jnp.maximum(x, 0), x


def _guided_relu_bwd(x, g):
    return (jnp.maximum(jnp.where(x > 0, g, 0), 0).astype(g.dtype),)


guided_relu.defvjp(_guided_relu_fwd, _guided_relu_bwd)


@contextlib.contextmanager
def guided_relus():
    """While tracing inside: `nn.relu`, `nnx.relu` and `jax.nn.relu` are `guided_relu`.
    Patching the module attributes is the one way to reach a model's ReLUs without editing it;
    they are restored on exit, and the compiled program keeps the guided gradient."""
    saved = (nn.relu, flax.linen.activation.relu, nnx.relu, jax.nn.relu)
    nn.relu = flax.linen.activation.relu = nnx.relu = jax.nn.relu = guided_relu
    try:
        yield
    finally:
        nn.relu, flax.linen.activation.relu, nnx.relu, jax.nn.relu = saved


def bag_cams_map(acts: jax.Array, grads: jax.Array) -> jax.Array:
    """sum_k ReLU(t_k P_k), P = G * F, t_k = mean_xy(P_k) + 1: F (B, h, w, K) and the gradients
    of log(score) G (n, B, h, w, K) -> (B, n, h, w) float32."""
    p = grads * acts[None]
    t = jnp.mean(p, axis=(2, 3), keepdims=True) + 1.0
    return jnp.moveaxis(jnp.sum(jax.nn.relu(t * p), axis=-1), 0, 1)


def bag_cams(
    probe: Probe,
    variables,
    images,
    target: Target,
    key,
    guided: bool = True,
    score: str = "logit",
):
    """BagCAMs of the probed layer. score: 'logit' differentiates log(y_c) (the official code);
    'probability' log(softmax(y)_c) (class targets only). guided: guided ReLUs downstream."""
    del key
    single_layer(probe, "bag_cams")
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}; got {score!r}.")
    if score == "probability" and target.fn is not None:
        raise ValueError("score='probability' takes classes; pass score='logit' for a function.")

    def cotangents(logits):
        classes = target.classes(logits)
        if score == "probability":
            num_classes = logits.shape[-1]
            refuse_softmax_of_one_logit(num_classes, "score='probability'", "pass score='logit'")
            onehot = jax.nn.one_hot(classes.T, logits.shape[-1], dtype=logits.dtype)
            return onehot - jax.nn.softmax(logits)[None]
        values = target.scores(logits, classes)  # (B, n)
        return target.cotangents(logits) / values.T[..., None]

    with guided_relus() if guided else contextlib.nullcontext():
        logits, (acts,), (grads,) = probe.gradients(variables, images, cotangents)
    return logits, target.classes(logits), bag_cams_map(acts, grads)
