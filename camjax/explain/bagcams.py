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
backbone at zero (guided backprop). `guided=True` (the default, the official method) computes
the gradient through the model's traced program with every `jax.nn.relu` call (`nn.relu`,
`nnx.relu`, `jax.nn.relu`, however bound) replaced by `guided_relu` (forward ReLU, backward
max(g * 1[x > 0], 0)), inside jit, remat, scan, while and cond bodies too; the model and the
ReLU functions stay as they are (`camjax.explain.guided`). Only ReLUs between the probed layer
and the logits change the map; a ReLU written as `jnp.maximum(x, 0)`, or inside a custom_jvp or
custom_vjp function of the model's own, is not guided. At the layer feeding global average
pooling and a linear head (the 'feature_map' of camjax's networks) no ReLU lies downstream, so
both settings give the closed form (tests): G_mk = W_ck / (h w y_c),
t_k = 1 + W_ck mean_m(F_mk) / (h w y_c). The paper's WSOL setting is
the ResNet50's layer3 with the ground-truth class.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from camjax.explain.gradient import single_layer
from camjax.explain.probe import Probe
from camjax.explain.targets import Target, refuse_softmax_of_one_logit

SCORES = ("logit", "probability")


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

    logits, (acts,), (grads,) = probe.gradients(variables, images, cotangents, guided=guided)
    return logits, target.classes(logits), bag_cams_map(acts, grads)
