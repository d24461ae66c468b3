"""SPG's self-produced-guidance branches (Zhang et al., "Self-produced Guidance for
Weakly-supervised Object Localization", ECCV 2018), as clovaai/wsolevaluation trains them.

The reference is wsolevaluation's `VggSpg`/`ResNetSpg` (`wsol/vgg.py`, `wsol/resnet.py`) and
`wsol/method/spg.py`. The backbone ends in a 1x1 convolution to one class map per class
('class_maps', whose spatial mean is the logit: `head_classes`); three one-channel logit maps
are read along the way: B1 after the first of two late stages (VGG: conv4_3 and its pool;
ResNet: layer3's first block), B2 after the second (VGG: conv5_3; ResNet: layer3's last block),
through their own 3x3 conv + ReLU and a 3x3 conv + ReLU + 1x1 conv shared between the two
(`head_b_shared`), and C on the last features (3x3 conv + ReLU + 1x1 conv). The losses that
train B1, B2 and C from masks of each other's maps are `camjax.train.wsol_methods.spg_loss`.
Evaluation scores the class map of the GT class, as the reference's `return_cam`.

Every new layer is Xavier-uniform initialised, as the reference's `initialize_weights(...,
'xavier')`; camjax keeps its He init for the backbone, whose layers the reference re-inits
the same way but then loads from ImageNet weights in its recipes. Widths scale with `width`.

Where camjax differs: VGG's conv4/conv5 keep their names (`conv4_1`..`conv5_3`, so converted
ImageNet weights land as the reference's SPG_A_1/SPG_A_2 renaming makes them); the new layers
are named `head_*`, which puts them in the optimizer's new-layer group (`config.optim.
new_layers`), as the reference's VGG solver does (the VGG solver also puts conv4/conv5 there,
its ResNet solver keeps the new layers at the backbone's rate: set new_layers to match). The
pool before B1 follows `output_stride` (VggSpg's 3x3/2 pool at 16, none at 8, its
`large_feature_map`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from camjax.models.layers import FEATURE_MAP, Conv, Tap, global_pool

spg_init = nn.initializers.xavier_uniform()


class SPGMap(nn.Module):
    """conv 3x3 (features) + ReLU -> conv 1x1 to one channel: (B, h, w, K) -> float32 logits
    (B, h, w, 1) (the reference's SPG_B_shared and SPG_C)."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = Conv(self.features, (3, 3), padding=1, kernel_init=spg_init, dtype=self.dtype)
        x = nn.relu(conv(x))
        out = Conv(1, (1, 1), kernel_init=spg_init, dtype=self.dtype, name="logits")(x)
        return out.astype(jnp.float32)


def conv3_relu(features: int, name: str, dtype: Any):
    """A Xavier-initialised 3x3 conv + ReLU, made inside a compact `__call__` as submodule
    `name` (SPG_B_1a, SPG_B_2a and VGG's SPG_A_3 layers)."""
    conv = Conv(features, (3, 3), padding=1, kernel_init=spg_init, dtype=dtype, name=name)
    return lambda x: nn.relu(conv(x))


def spg_head(
    net: nn.Module, x: jax.Array, b1: jax.Array, b2: jax.Array, c_features: int
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SPG's top, inside `net`'s compact `__call__`: C and the 1x1 class maps on x.

    x: (B, h, w, K) the last features (tapped as 'feature_map'); b1, b2: (B, h, w, 1) float32
    logit maps already read by the network. Returns (logits (B, num_classes) float32, the
    spatial mean (or max, with `pooling` 'max') of the class maps; outputs): 'feature_map',
    'pre_logits' (B, K) float32, 'class_maps' (B, h, w, num_classes) float32, 'spg_b1',
    'spg_b2', 'spg_c' (B, h, w, 1) float32 logit maps.
    """
    feature_map = Tap(name=FEATURE_MAP)(x)
    c = SPGMap(c_features, net.dtype, name="head_c")(feature_map)
    head = Conv(net.num_classes, (1, 1), kernel_init=spg_init, dtype=net.dtype, name="head_classes")
    class_maps = head(feature_map).astype(jnp.float32)
    logits = global_pool(class_maps, net.pooling)
    return logits, {
        "feature_map": feature_map,
        "pre_logits": global_pool(feature_map),
        "class_maps": class_maps,
        "spg_b1": b1,
        "spg_b2": b2,
        "spg_c": c,
    }
