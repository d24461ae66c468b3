"""'bridging': Kim et al., "Bridging the Gap between Classification and Localization for
WSOL" (CVPR 2022), as a switch of the one train step (`wsol_methods`): plain CAM plus three loss
terms (`terms`, whose docstring gives the equations and every deviation from the official code)
and an attentive-dropout branch inside the network (`camjax.models.layers.AttentiveDrop`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from camjax.cam import divide_per_map

NORM_REGIONS = ("max_class", "target")  # bridging_norm_region's values


def check(method: ml_collections.ConfigDict, nonnegative_head: bool) -> None:
    """One-line ValueErrors for config.method's bridging fields and a head they cannot train
    (nonnegative_head: config.optim's)."""
    if nonnegative_head:
        # With ReLU features and class weights >= 0 every class cosine is >= 0: L_norm's
        # background (cosine < 0) is always empty, and the method loses half of its loss.
        raise ValueError(
            "config.method.name='bridging' needs signed class weights (its L_norm lowers the "
            "feature norm where the cosine to the class weights is negative), but "
            "config.optim.nonnegative_head is True (the default recipe's); set "
            "--config.optim.nonnegative_head=False, as configs/wsol_recipe.py does."
        )
    for field in (
        "bridging_sim_fg_threshold",
        "bridging_sim_bg_threshold",
        "bridging_drop_threshold",
        "bridging_drop_prob",
        "bridging_warmup_fraction",
    ):
        if not 0 <= method[field] <= 1:
            raise ValueError(f"config.method.{field} must be in [0, 1]; got {method[field]}.")
    for field in ("bridging_sim_weight", "bridging_norm_weight", "bridging_drop_weight"):
        if method[field] < 0:
            raise ValueError(f"config.method.{field} must be >= 0; got {method[field]}.")
    if method.bridging_norm_region not in NORM_REGIONS:
        raise ValueError(
            f"config.method.bridging_norm_region must be 'max_class' (the official code's CUB "
            f"rule) or 'target' (its ILSVRC rule); got {method.bridging_norm_region!r}."
        )


_HIGHEST = jax.lax.Precision.HIGHEST
_NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's eps
_MEAN_EPS = 1e-15  # the official code's eps in its min-max and its region means


class BridgingTerms(NamedTuple):
    """The per-example loss terms of 'bridging', each (B,) float32."""

    sim: jax.Array  # L_sim: background mean minus foreground mean of the target's cosine
    norm: jax.Array  # L_norm: mean norm where the class cosine is < 0 minus where it is > 0
    drop: jax.Array  # L_drop: mean |F - F_erased| (attentive-dropout consistency)


def _norm(x: jax.Array, axis: int) -> jax.Array:
    """Euclidean norm over axis whose gradient at a zero vector is 0, as torch's norm backward
    (jnp.linalg.norm's is NaN there; a ReLU feature map has zero vectors)."""
    squared = jnp.sum(jnp.square(x), axis=axis)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def cosine_maps(feature_map: jax.Array, kernel: jax.Array) -> jax.Array:
    """(B, h, w, K) features, (K, C) head kernel -> float32 (B, h, w, C): the cosine between
    each position's feature and each class's weight vector (both L2-normalised with
    F.normalize's eps 1e-12, as the official VggDrop/ResNetDrop compute 'sim')."""
    f = feature_map.astype(jnp.float32)
    w = kernel.astype(jnp.float32)
    f = f / jnp.maximum(_norm(f, -1), _NORMALIZE_EPS)[..., None]
    w = w / jnp.maximum(_norm(w, 0), _NORMALIZE_EPS)[None, :]
    return jnp.einsum("bhwk,kc->bhwc", f, w, precision=_HIGHEST)


def _minmax(maps: jax.Array) -> jax.Array:
    """(B, h, w) -> (m - min) / (max(m - min) + 1e-15) per image (the official code's
    `normalize_minmax`; a constant map becomes zeros)."""
    shifted = maps - jnp.min(maps, axis=(1, 2), keepdims=True)
    return divide_per_map(shifted, jnp.max(shifted, axis=(1, 2), keepdims=True) + _MEAN_EPS)


def _region_mean(values: jax.Array, region: jax.Array) -> jax.Array:
    """(B, h, w) values averaged over a boolean region per image -> (B,) (0 when it is empty)."""
    region = region.astype(jnp.float32)
    return jnp.sum(region * values, axis=(1, 2)) / (jnp.sum(region, axis=(1, 2)) + _MEAN_EPS)


def terms(
    feature_map: jax.Array,
    erased: jax.Array,
    kernel: jax.Array,
    labels: jax.Array,
    method: ml_collections.ConfigDict,
) -> BridgingTerms:
    """The three loss terms of Kim et al. (CVPR 2022) beyond cross-entropy, per example.

    feature_map: F, (B, h, w, K), the CAM layer (GAP's input); erased: F', the same layer of the
    attentive-dropout branch; kernel: W (K, C), the linear head; labels: c (B,) int.

    With s_k(x) = cos(F(x), w_k) (`cosine_maps`) and n(x) the per-image min-max normalised
    feature norm ||F(x)|| (`_minmax`; the feature-norm term of the paper's decomposition
    M_c(x) = ||w_c|| ||F(x)|| cos(F(x), w_c) of the CAM):

    - feature direction alignment, similarity term (the paper's L_sim):
      L_sim = mean_{x: n(x) < bg} s_c(x) - mean_{x: n(x) > fg} s_c(x),
      fg, bg = `bridging_sim_fg_threshold`, `bridging_sim_bg_threshold`: the class weight is
      pulled towards the features where the norm is high and pushed from where it is low;
    - feature direction alignment, norm term (the paper's L_norm):
      L_norm = mean_{x: r(x) < 0} n(x) - mean_{x: r(x) > 0} n(x), with r(x) = max_k s_k(x)
      (`bridging_norm_region` 'max_class', the official code's rule on CUB) or r = s_c
      ('target', its rule on ILSVRC): the norm grows where some class weight is aligned;
    - consistency with attentive dropout (the paper's L_drop):
      L_drop = mean_{x, k} |F(x)_k - F'(x)_k|, F' from the branch dropped by `AttentiveDrop`.

    The regions' indicators carry no gradient (comparisons); the gradient reaches the features
    through s, n and |F - F'|, and the head through s, as in the official code. Means over an
    empty region are 0 (a denominator + 1e-15, as the official code).

    Deviations from the official code (ejkim47/bridging-gap-wsol, `trainer._get_loss_alignment`,
    `wsol/method/drop.py`, `wsol/vgg.py`, `wsol/resnet.py`), each for a reason:
    - per example, so the train step can sum and log them like its other losses: the batch
      means of these (B,) terms are the official batch-mean terms exactly (every image has the
      same h x w x K elements, so L1Loss's mean over all of them is the mean of the per-image
      means);
    - the norm's gradient at a zero feature vector is 0 (`_norm`), torch's convention, where
      jnp's would be NaN;
    - the paper's equation numbers are not cited: its text could not be consulted where this
      was written, so the terms are named as the paper names them and pinned to the official
      code above, which is what the hyperparameters were tuned with.
    """
    f = feature_map.astype(jnp.float32)
    cosines = cosine_maps(f, kernel)  # (B, h, w, C)
    target = jnp.take_along_axis(cosines, labels[:, None, None, None], axis=-1)[..., 0]
    norm = _minmax(_norm(f, -1))
    sim = _region_mean(target, norm < method.bridging_sim_bg_threshold) - _region_mean(
        target, norm > method.bridging_sim_fg_threshold
    )
    region = target if method.bridging_norm_region == "target" else jnp.max(cosines, axis=-1)
    norm_term = _region_mean(norm, region < 0) - _region_mean(norm, region > 0)
    drop = jnp.mean(jnp.abs(f - erased.astype(jnp.float32)), axis=(1, 2, 3))
    return BridgingTerms(sim, norm_term, drop)


def loss(
    logits: jax.Array,
    outputs: dict[str, jax.Array],
    labels: jax.Array,
    kernel: jax.Array,
    method: ml_collections.ConfigDict,
    step: jax.Array,
    num_steps: int,
) -> jax.Array:
    """The per-example loss of 'bridging' (B,): CE + drop_weight L_drop, plus sim_weight L_sim
    + norm_weight L_norm once `step` (0-based) reaches `bridging_warmup_fraction` of num_steps
    (the official trainer's 20 warm epochs of 70 without the alignment terms).

    outputs: the model's, with 'feature_map' and 'feature_map_erased'; kernel: the head's."""
    parts = terms(outputs["feature_map"], outputs["feature_map_erased"], kernel, labels, method)
    aligned = jnp.where(step >= round(method.bridging_warmup_fraction * num_steps), 1.0, 0.0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return (
        ce
        + method.bridging_drop_weight * parts.drop
        + aligned
        * (method.bridging_sim_weight * parts.sim + method.bridging_norm_weight * parts.norm)
    )
