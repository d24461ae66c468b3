"""ACoL's two adversarial classifiers (Zhang et al., "Adversarial Complementary Learning for
Weakly Supervised Object Localization", CVPR 2018), as clovaai/wsolevaluation trains them.

The reference is wsolevaluation's `wsol/method/acol.py` (`AcolBase`), `method/util.py`
(`get_attention`, `normalize_tensor`) and the `VggAcol`/`ResNetAcol` wrappers. Two classifier
heads read the same backbone features. Each is conv 3x3 -> ReLU -> conv 3x3 -> ReLU -> conv 1x1
to num_classes channels: a class map per class, whose spatial mean is the logit. Head A's map of
the erasing class (the GT label in training, the top-1 class of A when no label is given), min-max
normalised per image, marks the region A relies on; the features there (normalised map >=
`threshold`) are zeroed before head B, which must classify from what is left. The loss is
CE(A) + CE(B) (`camjax.train.wsol_methods`), and the localization map is the elementwise max of
the two heads' min-max-normalised class maps (`'class_maps'`).

Differences from the reference, each for a reason:
- A constant class map (max == min) normalises to zeros here; the reference divides by zero and
  gets NaN. Erasing is the same either way (NaN >= threshold is false: nothing is erased). The
  localization map of a class is 0 where either head's map of it is constant, where the
  reference's max holds that NaN; both evaluators turn such a map into the WSOL protocol's
  all-zero score map (the reference's `normalize_scoremap`, camjax's constant-map rule).
- Widths scale with the network's `width` (1024 at width 1), as every camjax head does.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from camjax.cam import class_maps_of, minmax_per_map
from camjax.models.layers import FEATURE_MAP, Conv, Tap, global_pool, scaled_width

# The reference's hidden width of both heads (512 * expansion in, 1024, 1024, num_classes out).
ACOL_FEATURES = 1024


def normalize_class_maps(maps: jax.Array) -> jax.Array:
    """(B, h, w, C) -> float32 (B, h, w, C): each image's map of each class min-max normalised
    over space to [0, 1] (the reference's `normalize_tensor`); a constant map becomes zeros."""
    return minmax_per_map(maps, constant=0.0)


def localization_map(maps_a: jax.Array, maps_b: jax.Array) -> jax.Array:
    """(B, h, w, C) float32: each class's max of both heads' min-max normalised maps, the
    reference's `torch.max(normalize_tensor(A), normalize_tensor(B))`; 0 where either head's map
    of the class is constant, which the reference's 0 / 0 makes NaN (the other head's map alone
    would score an image that the reference scores with an all-zero map)."""
    constant_a, constant_b = (jnp.ptp(m, axis=(1, 2), keepdims=True) == 0 for m in (maps_a, maps_b))
    both = jnp.maximum(normalize_class_maps(maps_a), normalize_class_maps(maps_b))
    return jnp.where(constant_a | constant_b, 0.0, both)


def erase_mask(class_maps_a: jax.Array, classes: jax.Array, threshold: float) -> jax.Array:
    """float32 (B, h, w, 1): 0 where head A's normalised map of the image's class is >=
    threshold (the region erased before head B), 1 elsewhere. No gradient flows through it
    (the reference detaches the attention; the comparison has none anyway)."""
    attention = normalize_class_maps(class_maps_of(class_maps_a, classes)[..., None])
    return jax.lax.stop_gradient((attention < threshold).astype(jnp.float32))


class ACoLClassifier(nn.Module):
    """One ACoL head: conv 3x3 (features) -> ReLU -> conv 3x3 (features) -> ReLU -> conv 1x1
    (num_classes). x: (B, h, w, K) -> class maps (B, h, w, num_classes) float32."""

    num_classes: int
    features: int = ACOL_FEATURES
    kernel_init: nn.initializers.Initializer = nn.initializers.xavier_uniform()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(Conv, kernel_init=self.kernel_init, dtype=self.dtype)
        x = nn.relu(conv(self.features, (3, 3), padding=1, name="conv1")(x))
        x = nn.relu(conv(self.features, (3, 3), padding=1, name="conv2")(x))
        return conv(self.num_classes, (1, 1), name="classes")(x).astype(jnp.float32)


def acol_head(
    net: nn.Module, x: jax.Array, labels: jax.Array | None, kernel_init
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """ACoL's heads on a network's backbone output, built as `net`'s submodules `head_a` and
    `head_b` (call it inside its compact `__call__`; the 'head' prefix puts them in the optimizer's
    new-layer group). kernel_init: the heads' conv init (the reference's: Xavier-uniform in
    VggAcol, He fan-out in ResNetAcol).

    net: a camjax network with fields num_classes, width, acol (the erasing threshold), pooling
    and dtype. x: (B, h, w, K), the heads' input, tapped as 'feature_map'; labels: (B,) int, or
    None to erase by head A's top-1 class. Returns (head A's logits (B, num_classes) float32,
    outputs): 'feature_map' x; 'pre_logits' its spatial mean (B, K) float32; 'class_maps'
    (B, h, w, num_classes) float32, the max of both heads' normalised maps (the localization
    map); 'class_maps_a' and 'class_maps_b' the raw maps; 'logits_b' (B, num_classes) float32;
    'erase_mask' (B, h, w, 1) float32, 0 where head B's input was erased.
    """
    feature_map = Tap(name=FEATURE_MAP)(x)
    features = scaled_width(ACOL_FEATURES, net.width)
    maps_a = ACoLClassifier(net.num_classes, features, kernel_init, net.dtype, name="head_a")(
        feature_map
    )
    logits_a = global_pool(maps_a, net.pooling)
    classes = jnp.argmax(logits_a, axis=-1) if labels is None else labels
    mask = erase_mask(maps_a, classes, net.acol)
    maps_b = ACoLClassifier(net.num_classes, features, kernel_init, net.dtype, name="head_b")(
        feature_map * mask.astype(feature_map.dtype)
    )
    return logits_a, {
        "feature_map": feature_map,
        "pre_logits": global_pool(feature_map),
        "class_maps": localization_map(maps_a, maps_b),
        "class_maps_a": maps_a,
        "class_maps_b": maps_b,
        "logits_b": global_pool(maps_b, net.pooling),
        "erase_mask": mask,
    }
