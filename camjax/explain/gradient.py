"""The gradient methods: a layer's activations A and the gradients G of each target's score.

Shapes: A (B, h, w, K), G (n, B, h, w, K) for n targets per image (`Probe.gradients` gives both
from one forward and one batched backward pass); maps (B, n, h, w) float32, before any resize
or normalisation. The score differentiated is the target's logit (or a score function's
value), as in both peer libraries. Each `*_map` is the method's formula on arrays; the methods
registered in `camjax.explain` wrap them with the probe.

- Grad-CAM (Selvaraju et al., ICCV 2017): ReLU(sum_k mean_xy(G_k) A_k).
- Grad-CAM++ (Chattopadhyay et al., WACV 2018, eq. 19 with the exponential score, whose higher
  derivatives are powers of G): alpha = G^2 / (2 G^2 + sum_ab(A_ab) G^3), 0 where G = 0;
  ReLU(sum_k sum_xy(alpha ReLU(G_k)) A_k).
- Smooth Grad-CAM++ (Omeiza et al., 2019): Grad-CAM++ with G, G^2 and G^3 averaged over noisy
  copies of the input.
- XGrad-CAM (Fu et al., BMVC 2020): weights sum_xy(G_k A_k) / sum_xy(A_k).
- HiResCAM (Draelos & Carin, 2020): ReLU(sum_k G_k * A_k), elementwise, no spatial averaging.
- LayerCAM (Jiang et al., TIP 2021): ReLU(sum_k ReLU(G_k) * A_k); over several layers, every
  layer's map is scaled by tanh(2 M / max M) (the paper's scaling of its shallow layers, given
  to the deepest too, as TorchCAM does, so that the maps share one range) and the maps fused
  by their maximum.
- Eigen-Grad-CAM (pytorch-grad-cam's; no paper defines it): Eigen-CAM's projection of G * A
  instead of A, centred over positions as pytorch-grad-cam does (`center=False`: uncentred,
  as Eigen-CAM's paper projects A).

On a GAP network with a linear head (logit_c = mean_xy(A) . w_c + b_c), G_c = w_c / (h w) at
every position, so Grad-CAM before its ReLU and HiResCAM both equal CAM / (h w) there (tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from camjax.explain.activation import principal_projection
from camjax.explain.probe import Probe
from camjax.explain.targets import Target
from camjax.resize import resize_maps

_HIGHEST = jax.lax.Precision.HIGHEST
# Guards the division of XGrad-CAM against a zero denominator; the value of
# pytorch-grad-cam (1e-7), so maps agree where activations vanish.
EPS = 1e-7
# Grad-CAM++ adds 1e-6 to its denominator, as pytorch-grad-cam does (the paper has none).
PP_EPS = 1e-6


def weighted_sum(acts: jax.Array, weights: jax.Array) -> jax.Array:
    """sum_k weights[n, b, k] * acts[b, :, :, k]: A (B, h, w, K), weights (n, B, K) ->
    (B, n, h, w)."""
    return jnp.einsum("bhwk,nbk->bnhw", acts, weights, precision=_HIGHEST)


def grad_cam_map(acts: jax.Array, grads: jax.Array, rectify: bool = True) -> jax.Array:
    """rectify: the paper's ReLU of the weighted sum (False: the signed map). Not named `relu`:
    that is the explainer's own post-processing argument, which would take it."""
    maps = weighted_sum(acts, jnp.mean(grads, axis=(2, 3)))
    return jax.nn.relu(maps) if rectify else maps


def grad_cam_pp_weights(acts: jax.Array, g: jax.Array, g2: jax.Array, g3: jax.Array) -> jax.Array:
    """Grad-CAM++'s channel weights (n, B, K) from G and the (possibly averaged) G^2, G^3."""
    act_sum = jnp.sum(acts, axis=(1, 2))[None, :, None, None, :]
    alpha = g2 / (2 * g2 + act_sum * g3 + PP_EPS)
    alpha = jnp.where(g != 0, alpha, 0.0)
    return jnp.sum(alpha * jax.nn.relu(g), axis=(2, 3))


def grad_cam_pp_map(acts: jax.Array, grads: jax.Array) -> jax.Array:
    weights = grad_cam_pp_weights(acts, grads, grads**2, grads**3)
    return jax.nn.relu(weighted_sum(acts, weights))


def xgrad_cam_map(acts: jax.Array, grads: jax.Array) -> jax.Array:
    weights = jnp.sum(grads * acts, axis=(2, 3)) / (jnp.sum(acts, axis=(1, 2)) + EPS)
    return jax.nn.relu(weighted_sum(acts, weights))


def hires_cam_map(acts: jax.Array, grads: jax.Array, rectify: bool = True) -> jax.Array:
    """rectify: as grad_cam_map's."""
    maps = jnp.moveaxis(jnp.sum(grads * acts, axis=-1), 0, 1)
    return jax.nn.relu(maps) if rectify else maps


def layer_cam_map(acts: jax.Array, grads: jax.Array) -> jax.Array:
    return jax.nn.relu(jnp.moveaxis(jnp.sum(jax.nn.relu(grads) * acts, axis=-1), 0, 1))


def eigen_grad_cam_map(acts: jax.Array, grads: jax.Array, center: bool = True) -> jax.Array:
    """Eigen-Grad-CAM: Eigen-CAM's projection of G * A, one map per target (centred by
    default: its only definition, pytorch-grad-cam's)."""
    project = jax.vmap(jax.vmap(lambda x: principal_projection(x, center)))
    return jax.nn.relu(jnp.moveaxis(project(grads * acts), 0, 1))


def single_layer(probe: Probe, method: str) -> None:
    if len(probe.layers) != 1:
        raise ValueError(
            f"method {method!r} reads one layer; got {len(probe.layers)} "
            f"({', '.join(probe.layers)}). Only 'layer_cam' fuses several."
        )


def gradient_method(map_fn):
    """A registered method from a `map_fn(acts, grads, **options)`: one layer, one backward
    pass; the explainer's options go to map_fn."""

    def method(probe: Probe, variables, images, target: Target, key, **options):
        del key  # deterministic
        single_layer(probe, map_fn.__name__.removesuffix("_map"))
        logits, (acts,), (grads,) = probe.gradients(variables, images, target.cotangents)
        return logits, target.classes(logits), map_fn(acts, grads, **options)

    method.__doc__ = map_fn.__doc__
    method.map_fn = map_fn  # its options are map_fn's (`camjax.explain.default_options`)
    return method


def smooth_grad_cam_pp(
    probe: Probe, variables, images, target: Target, key, num_samples: int = 4, std: float = 0.3
):
    """Smooth Grad-CAM++: G, G^2, G^3 averaged over `num_samples` copies of the input with
    Gaussian noise of standard deviation `std` (in the model's input units; TorchCAM's defaults
    4 and 0.3); the activations are those of the clean input. The noise of image b depends on
    (key, b) only."""
    single_layer(probe, "smooth_grad_cam_pp")
    logits, (acts,) = probe.forward(variables, images)
    classes = target.classes(logits)
    fixed = Target(given=classes, fn=target.fn)  # the clean input's classes for every copy
    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(images.shape[0]))

    def noisy_grads(sample):
        noise = jax.vmap(
            lambda k: std * jax.random.normal(jax.random.fold_in(k, sample), images.shape[1:])
        )(keys)
        _, _, (g,) = probe.gradients(
            variables, images + noise.astype(images.dtype), fixed.cotangents
        )
        return g, g**2, g**3

    g, g2, g3 = jax.tree.map(
        lambda x: jnp.mean(x, axis=0), jax.lax.map(noisy_grads, jnp.arange(num_samples))
    )
    return logits, classes, jax.nn.relu(weighted_sum(acts, grad_cam_pp_weights(acts, g, g2, g3)))


def layer_cam(probe: Probe, variables, images, target: Target, key, gamma: float = 2.0):
    """LayerCAM of one layer, or of several fused (`fuse_layer_maps`)."""
    del key
    logits, acts, grads = probe.gradients(variables, images, target.cotangents)
    maps = [layer_cam_map(a, g) for a, g in zip(acts, grads, strict=True)]
    if len(maps) > 1:
        maps = fuse_layer_maps(maps, gamma)
    else:
        maps = maps[0]
    return logits, target.classes(logits), maps


def fuse_layer_maps(maps: list[jax.Array], gamma: float) -> jax.Array:
    """LayerCAM's fusion: per-layer maps (B, n, h_i, w_i) -> (B, n, H, W) at the largest size."""
    size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
    scaled = []
    for m in maps:
        peak = jnp.max(m, axis=(-2, -1), keepdims=True)
        m = jnp.tanh(gamma * m / jnp.where(peak > 0, peak, 1.0))
        scaled.append(resize_maps(m, size, method="bilinear") if m.shape[-2:] != size else m)
    return jnp.max(jnp.stack(scaled), axis=0)


grad_cam = gradient_method(grad_cam_map)
grad_cam_pp = gradient_method(grad_cam_pp_map)
xgrad_cam = gradient_method(xgrad_cam_map)
hires_cam = gradient_method(hires_cam_map)
eigen_grad_cam = gradient_method(eigen_grad_cam_map)
