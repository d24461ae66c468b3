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
- 'bridging', Kim et al., "Bridging the Gap between Classification and Localization for
  WSOL" (CVPR 2022): plain CAM plus three loss terms and an attentive-dropout branch inside
  the network (`camjax.train.bridging`; the branch built by `experiment.build_model`).
- 'spg', Self-Produced Guidance (Zhang et al., ECCV 2018): side branches of the network
  (`camjax.models.spg`) trained with BCE on masks with an ignore label (`spg_loss`); the
  localization map is the model's 'class_maps'.

Every random draw comes from the step's key (`fold_in(run key, step)`), so a resumed run draws
what the uninterrupted run drew and ends bit-identical.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from camjax import cam
from camjax.models.layers import ADL, AttentiveDrop
from camjax.resize import resize_maps
from camjax.train import bridging

METHODS = ("cam", "has", "cutmix", "adl", "acol", "bridging", "spg")


class Mixed(NamedTuple):
    """The labels a batch's loss uses: lam * CE(labels) + (1 - lam) * CE(other)."""

    other: jax.Array  # (B,) int
    lam: jax.Array  # () float32; 1.0 when nothing was mixed


def check_method(method: ml_collections.ConfigDict, nonnegative_head: bool = False) -> None:
    """One-line ValueErrors for a method name or field the train step cannot use
    (nonnegative_head: config.optim's)."""
    if method.name not in METHODS:
        raise ValueError(
            f"config.method.name must be one of {', '.join(METHODS)}; got {method.name!r}."
        )
    if method.name == "has" and method.has_grid_size < 1:
        raise ValueError(
            f"config.method.has_grid_size must be >= 1 pixel (the side of a hidden cell); got "
            f"{method.has_grid_size}. For no hiding, train with config.method.name='cam'."
        )
    if method.name == "acol" and not 0 < method.acol_threshold <= 1:
        raise ValueError(
            f"config.method.acol_threshold must be in (0, 1] (a fraction of head A's min-max "
            f"normalised map; the reference's 0.7); got {method.acol_threshold}."
        )
    if method.name == "bridging":
        bridging.check(method, nonnegative_head)
    if method.name == "spg":
        _check_spg(method)


def hide_and_seek(images: jax.Array, key: jax.Array, grid_size: int, drop_rate: float):
    """images (B, H, W, C) with each grid_size-pixel cell zeroed with probability drop_rate
    (the last row/column of cells is cut at the border, as the reference's loops). Hidden
    cells tile the whole image at any aspect ratio: the reference's loops index the height
    with the width's counter and end both at the height, so on non-square images it hides
    less (25% of an 8 x 12 image instead of ~50%); every recipe's crops are square."""
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


# ----------------------------------------------------------------------------------------------
# The train step's two hooks: what a method draws before the forward pass, and its loss.

# fold_in(run key, stream) keys of the methods' draws (stream 1 is dropout's, in the loop).
_STREAMS = {"has": 2, "cutmix": 2, "adl": 3, "bridging": 4}
# The PRNG stream each in-network method's layer draws from.
_RNG_COLLECTIONS = {"adl": ADL.RNG, "bridging": AttentiveDrop.RNG}


def step_inputs(
    method: ml_collections.ConfigDict,
    images: jax.Array,
    labels: jax.Array,
    run_key: jax.Array,
    step: jax.Array,
) -> tuple[jax.Array, Mixed | None, dict[str, jax.Array]]:
    """One training step's draws of the method -> (images, Mixed or None, model rngs).

    Input transforms (HaS, CutMix) change the normalised images and say how to mix the loss;
    in-network methods (ADL, Bridging's attentive dropout) get their rng collection. Every key
    is fold_in(fold_in(run_key, the method's stream), step), so a resumed run draws the same.
    """
    if method.name not in _STREAMS:
        return images, None, {}
    key = jax.random.fold_in(jax.random.fold_in(run_key, _STREAMS[method.name]), step)
    if method.name in _RNG_COLLECTIONS:
        return images, None, {_RNG_COLLECTIONS[method.name]: key}
    images, mixed = augment(method, images, labels, key)
    return images, mixed, {}


def per_example_loss(
    method: ml_collections.ConfigDict,
    logits: jax.Array,
    outputs: dict[str, jax.Array],
    labels: jax.Array,
    *,
    mixed: Mixed | None,
    params: dict,
    step: jax.Array,
    num_steps: int,
    image_size: tuple[int, int],
) -> jax.Array:
    """The method's training loss per example (B,); plain cross-entropy for CAM and ADL.

    params: the model's, for Bridging's head kernel (its gradient flows through the loss);
    image_size: the input's (H, W), the size SPG scores its side maps at."""
    if mixed is not None:
        return classification_loss(logits, labels, mixed)
    if method.name == "acol":
        return acol_loss(logits, outputs, labels)
    if method.name == "bridging":
        kernel = params["head"]["kernel"]
        return bridging.loss(logits, outputs, labels, kernel, method, step, num_steps)
    if method.name == "spg":
        return spg_loss(logits, outputs, labels, method, image_size)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


# ----------------------------------------------------------------------------------------------
# Self-produced guidance (Zhang et al., ECCV 2018).

# (high, low) threshold fields of SPG's three masks, in the reference's order.
SPG_THRESHOLDS = (
    ("spg_threshold_1h", "spg_threshold_1l"),
    ("spg_threshold_2h", "spg_threshold_2l"),
    ("spg_threshold_3h", "spg_threshold_3l"),
)


def _check_spg(method: ml_collections.ConfigDict) -> None:
    for high, low in SPG_THRESHOLDS:
        if not 0 <= method[low] <= method[high] <= 1:
            raise ValueError(
                f"config.method.{low} and {high} must satisfy 0 <= low <= high <= 1; got "
                f"{method[low]} and {method[high]}."
            )
    if not 0 < method.spg_fallback_fraction <= 1:
        raise ValueError(
            f"config.method.spg_fallback_fraction must be in (0, 1]; got "
            f"{method.spg_fallback_fraction}."
        )


def spg_mask(
    attention: jax.Array, high: float, low: float, min_foreground: int, fallback: float
) -> jax.Array:
    """The reference's `get_mask` (B, H, W) -> float32 (B, H, W) targets: 1 (foreground) where
    attention > high, or, in an image with fewer than `min_foreground` such pixels, where it
    is > fallback x its maximum; then 0 (background) where attention < low (overriding);
    255 (ignored) elsewhere."""
    foreground = attention > high
    few = jnp.sum(foreground, axis=(1, 2), keepdims=True) < min_foreground
    peak = jnp.max(attention, axis=(1, 2), keepdims=True)
    foreground = jnp.where(few, attention > fallback * peak, foreground)
    mask = jnp.where(foreground, 1.0, 255.0)
    return jnp.where(attention < low, 0.0, mask)


def spg_bce(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """The reference's `loss_attention`: BCE-with-logits averaged over every pixel of the batch
    whose target is not 255, as per-example shares (B,) whose batch mean is that average
    (image i's share: B x its pixels' BCE sum / the batch's count of such pixels). A batch
    with no such pixel adds 0 (the reference's mean over none is NaN)."""
    valid = (mask < 255).astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(logits, jnp.where(mask < 255, mask, 0.0))
    per_image = jnp.sum(valid * bce, axis=(1, 2))
    return logits.shape[0] * per_image / jnp.maximum(jnp.sum(valid), 1.0)


def spg_loss(
    logits: jax.Array,
    outputs: dict[str, jax.Array],
    labels: jax.Array,
    method: ml_collections.ConfigDict,
    size: tuple[int, int],
) -> jax.Array:
    """SPG's per-example loss (B,), the reference's `spg.get_loss`: CE + three BCE terms on the
    side maps upsampled (bilinear, torch's align_corners=False = OpenCV's INTER_LINEAR) to the
    input size `size` (the reference's fixed 224 x 224):

    - B2 against the mask (thresholds 1h/1l) of the min-max normalised class map of the label;
    - B1 against the mask (2h/2l) of sigmoid(B2);
    - C against the mask (3h/3l) of the mean of sigmoid(B1) and sigmoid(B2).

    The masks carry no gradient (comparisons; the reference detaches the attention maps).
    outputs: the model's 'class_maps' (B, h, w, C) and 'spg_b1', 'spg_b2', 'spg_c'
    (B, h', w', 1) logit maps.

    Deviations from the reference, each for a reason: the maps are upsampled to the input
    size, not a fixed 224 (the same at 224); `spg_min_foreground` counts pixels at that size;
    the BCE terms are per-example shares (`spg_bce`) and a batch with no target pixel adds 0
    instead of NaN. A constant class map normalises to NaN, as the reference's division by a
    zero span, so all of that image's first mask is ignored there too.
    """

    def up(maps):  # (B, h, w) -> (B, H, W) float32
        return resize_maps(maps.astype(jnp.float32), size, method="bilinear")

    attention = cam.minmax_per_map(up(cam.class_maps_of(outputs["class_maps"], labels)), jnp.nan)
    b1, b2, c = (up(outputs[k][..., 0]) for k in ("spg_b1", "spg_b2", "spg_c"))
    guides = (
        attention,
        jax.nn.sigmoid(b2),
        (jax.nn.sigmoid(b1) + jax.nn.sigmoid(b2)) / 2,
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    for side, guide, (high, low) in zip((b2, b1, c), guides, SPG_THRESHOLDS, strict=True):
        mask = spg_mask(
            jax.lax.stop_gradient(guide),
            method[high],
            method[low],
            method.spg_min_foreground,
            method.spg_fallback_fraction,
        )
        loss = loss + spg_bce(side, mask)
    return loss
