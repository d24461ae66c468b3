"""GoogLeNet-GAP, the CAM paper's GoogLeNet-GAP (deploy_googlenetCAM).

BVLC GoogLeNet (Inception v1 with LRN, no batch norm) through inception_4e (14x14x832 at 224;
pool4, inception 5a/5b and the auxiliary heads removed), then CAM_conv 3x3/pad 1/1024 with
groups=2 and bias init 1, ReLU, global average pooling and a linear classifier (no dropout).
Pooling rounds up as Caffe does, which is what keeps 224 -> 112 -> 56 -> 28 -> 14.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from camjax.models.layers import (
    check_images,
    conv_relu,
    gap_head,
    local_response_norm,
    max_pool_ceil,
    scaled_width,
)

# BVLC GoogLeNet's inception modules: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj).
INCEPTION_SPECS = {
    "inception_3a": (64, 96, 128, 16, 32, 32),
    "inception_3b": (128, 128, 192, 32, 96, 64),
    "inception_4a": (192, 96, 208, 16, 48, 64),
    "inception_4b": (160, 112, 224, 24, 64, 64),
    "inception_4c": (128, 128, 256, 24, 64, 64),
    "inception_4d": (112, 144, 288, 32, 64, 64),
    "inception_4e": (256, 160, 320, 32, 128, 128),
}


class Inception(nn.Module):
    """One inception module: four branches concatenated on channels in Caffe's order."""

    spec: tuple[int, int, int, int, int, int]
    width: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c1, r3, c3, r5, c5, cp = (scaled_width(c, self.width) for c in self.spec)
        dt = self.dtype
        b1 = conv_relu(x, c1, 1, "1x1", dt)
        b3 = conv_relu(conv_relu(x, r3, 1, "3x3_reduce", dt), c3, 3, "3x3", dt)
        b5 = conv_relu(conv_relu(x, r5, 1, "5x5_reduce", dt), c5, 5, "5x5", dt)
        pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        bp = conv_relu(pooled, cp, 1, "pool_proj", dt)
        return jnp.concatenate([b1, b3, b5, bp], axis=-1)


class GoogLeNetGAP(nn.Module):
    """GoogLeNet-GAP. `width` scales every channel count (1.0 is the paper's network).

    `groups` is CAM_conv's grouping (2 as released, 1 for the paper text). `dtype` is the compute
    dtype; parameters stay float32 and LRN runs in float32.
    """

    num_classes: int = 1000
    width: float = 1.0
    cam_features: int = 1024
    groups: int = 2
    dropout_rate: float = 0.0
    grouped_conv_impl: str = "split"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        """x: (B, H, W, 3) normalised float images -> (logits (B, num_classes) float32, outputs).

        outputs: 'feature_map' (B, ~H/16, ~W/16, cam_features) and 'pre_logits' (B, cam_features).
        """
        check_images(x, type(self).__name__)
        w = self.width
        x = x.astype(self.dtype)
        x = conv_relu(x, scaled_width(64, w), 7, "conv1_7x7_s2", self.dtype, stride=2)
        x = local_response_norm(max_pool_ceil(x, 3, 2))
        x = conv_relu(x, scaled_width(64, w), 1, "conv2_3x3_reduce", self.dtype)
        x = conv_relu(x, scaled_width(192, w), 3, "conv2_3x3", self.dtype)
        x = max_pool_ceil(local_response_norm(x), 3, 2)
        for name, spec in INCEPTION_SPECS.items():
            if name == "inception_4a":
                x = max_pool_ceil(x, 3, 2)
            x = Inception(spec, width=w, dtype=self.dtype, name=name)(x)
        return gap_head(
            x,
            train,
            num_classes=self.num_classes,
            features=scaled_width(self.cam_features, w, self.groups),
            groups=self.groups,
            dropout_rate=self.dropout_rate,
            grouped_conv_impl=self.grouped_conv_impl,
            dtype=self.dtype,
            cam_conv_bias_init=1.0,
        )


GoogLeNetGAPTiny = functools.partial(GoogLeNetGAP, width=1 / 16)
