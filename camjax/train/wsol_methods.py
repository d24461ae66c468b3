"""WSOL training methods as switches of the one train step (`config.method.name`).

The reference is clovaai/wsolevaluation (Choe et al., CVPR 2020), `wsol/method/*.py` and
`config.py`; its defaults are `configs/default.py`'s `config.method` fields.

- 'cam': plain training (Zhou et al., CVPR 2016).
- 'has', Hide-and-Seek (Singh & Lee, ICCV 2017): every `has_grid_size` x `has_grid_size` pixel
  cell of every training image is zeroed with probability `has_drop_rate` (the reference's
  cells are 4 px at 224; zero is the dataset mean after normalisation).
- 'cutmix' (Yun et al., ICCV 2019): with probability `cutmix_prob` per batch, one box of area
  ratio 1 - lambda, lambda ~ Beta(beta, beta), centred uniformly and clipped to the image, is
  pasted from a permutation of the batch; lambda is recomputed from the clipped box and the
  loss is lambda CE(y) + (1 - lambda) CE(y_perm).
- 'adl', Attention-based Dropout Layer (Choe & Shim, CVPR 2019): parameter-free layers inside
  the network (`camjax.models.layers.ADL`, built by `experiment.build_model`).
- 'acol', Adversarial Complementary Learning (Zhang et al., CVPR 2018): two classifier heads,
  the second reading the features with the first's region of the GT class erased at
  `acol_threshold` (`camjax.models.acol`); the model takes the labels, the loss is
  CE(A) + CE(B) (`acol_loss`) and the localization map is the model's 'class_maps'.

Every random draw comes from the step's key (`fold_in(run key, step)`), so a resumed run draws
what the uninterrupted run drew and ends bit-identical.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

METHODS = ("cam", "has", "cutmix", "adl", "acol")
# Methods whose model reads the labels in training (the region it erases is the GT class's).
TAKES_LABELS = ("acol",)


class Mixed(NamedTuple):
    """The labels a batch's loss uses: lam * CE(labels) + (1 - lam) * CE(other)."""

    other: jax.Array  # (B,) int
    lam: jax.Array  # () float32; 1.0 when nothing was mixed


def check_method(method: ml_collections.ConfigDict) -> None:
    """One-line ValueErrors for a method name or field the train step cannot use."""
    if method.name not in METHODS:
        raise ValueError(
            f"config.method.name must be one of {', '.join(METHODS)}; got {method.name!r}."
        )
    if method.name == "acol" and not 0 < method.acol_threshold <= 1:
        raise ValueError(
            f"config.method.acol_threshold must be in (0, 1] (a fraction of head A's min-max "
            f"normalised map; the reference's 0.7); got {method.acol_threshold}."
        )


def hide_and_seek(images: jax.Array, key: jax.Array, grid_size: int, drop_rate: float):
    """images (B, H, W, C) with each grid_size-pixel cell zeroed with probability drop_rate
    (the last row/column of cells is cut at the border, as the reference's loops)."""
    b, h, w, _ = images.shape
    cells = (b, -(-h // grid_size), -(-w // grid_size))
    keep = jax.random.uniform(key, cells) > drop_rate  # the reference drops when u <= rate
    keep = jnp.repeat(jnp.repeat(keep, grid_size, axis=1), grid_size, axis=2)[:, :h, :w]
    return images * keep[..., None].astype(images.dtype)


def cutmix_box(key: jax.Array, height: int, width: int, lam: jax.Array):
    """The reference's `rand_bbox`: side ratio sqrt(1 - lam) of each side (floored), centre
    uniform over the pixels, ends clipped to the image. Returns (y0, y1, x0, x1) int32."""
    ky, kx = jax.random.split(key)
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    cy = jax.random.randint(ky, (), 0, height)
    cx = jax.random.randint(kx, (), 0, width)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    return y0, y1, x0, x1


def cutmix(images: jax.Array, labels: jax.Array, key: jax.Array, beta: float, prob: float):
    """(mixed images, Mixed): one box per batch from a permutation of the batch."""
    k_apply, k_lam, k_perm, k_box = jax.random.split(key, 4)
    b, h, w, _ = images.shape
    apply = jax.random.uniform(k_apply) < prob
    lam = jax.random.beta(k_lam, beta, beta)
    perm = jax.random.permutation(k_perm, b)
    y0, y1, x0, x1 = cutmix_box(k_box, h, w, lam)
    ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    inside = apply & (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    mixed = jnp.where(inside[None, :, :, None], images[perm], images)
    area = ((y1 - y0) * (x1 - x0)).astype(jnp.float32)
    lam = jnp.where(apply, 1.0 - area / (h * w), 1.0)
    return mixed, Mixed(labels[perm], lam)


def augment(method: ml_collections.ConfigDict, images: jax.Array, labels: jax.Array, key):
    """The method's input transform of a normalised training batch -> (images, Mixed)."""
    unmixed = Mixed(labels, jnp.ones((), jnp.float32))
    if method.name == "has":
        return hide_and_seek(images, key, method.has_grid_size, method.has_drop_rate), unmixed
    if method.name == "cutmix" and method.cutmix_beta > 0:
        return cutmix(images, labels, key, method.cutmix_beta, method.cutmix_prob)
    return images, unmixed


def classification_loss(logits: jax.Array, labels: jax.Array, mixed: Mixed) -> jax.Array:
    """Per-example cross-entropy, lam-weighted between the two label sets (B,)."""
    ce = optax.softmax_cross_entropy_with_integer_labels
    return mixed.lam * ce(logits, labels) + (1.0 - mixed.lam) * ce(logits, mixed.other)


def acol_loss(logits: jax.Array, outputs: dict[str, jax.Array], labels: jax.Array) -> jax.Array:
    """ACoL's per-example loss CE(head A) + CE(head B) (the reference's `acol.get_loss`, before
    its batch mean). logits: head A's (B, C); outputs: the model's, with 'logits_b' (B, C)."""
    ce = optax.softmax_cross_entropy_with_integer_labels
    return ce(logits, labels) + ce(outputs["logits_b"], labels)
