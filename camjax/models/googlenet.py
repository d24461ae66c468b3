"""GoogLeNet-GAP, the CAM paper's GoogLeNet-GAP (deploy_googlenetCAM).

BVLC GoogLeNet (Inception v1 with LRN, no batch norm) through inception_4e (14x14x832 at 224;
pool4, inception 5a/5b and the auxiliary heads removed), then CAM_conv 3x3/pad 1/1024 with
groups=2 and bias init 1, ReLU, global average pooling and a linear classifier (no dropout).
Pooling rounds up as Caffe does, which is what keeps 224 -> 112 -> 56 -> 28 -> 14.

GoogLeNetGAPBN is the same cut of torchvision's `googlenet` instead, so that its ImageNet weights
load: every conv is torchvision's BasicConv2d (conv without bias, batch norm with epsilon 1e-3,
ReLU), there is no LRN, and the third inception branch uses a 3x3 conv where the paper has 5x5
(torchvision's known deviation, pytorch/vision issue 906: its weights were ported from
TensorFlow's Inception v1, which has the 3x3).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from camjax.models.layers import (
    ADL,
    Conv,
    batch_norm,
    check_images,
    conv_init,
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


# wsolevaluation's Inception-ADL (Inception v3) has ADL after the last module of its first
# inception stage (Mixed_5d, before the grid reduction), after the last module of its second
# (Mixed_6e, the last before its head) and after its head's last conv (before the classes). In
# GoogLeNet v1's cut the matching places are after inception_3b (before pool3), after
# inception_4e, and after CAM_conv + ReLU, before the pooling (`gap_head`'s `adl`).
ADL_POSITIONS = ("inception_3b", "inception_4e")


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
    pooling: str = "avg"  # "max": the paper's GoogLeNet-GMP comparison
    head_init_std: float | None = None  # None: Flax Dense default; 0.01: wsolevaluation
    # (drop rate, threshold) of ADL layers where wsolevaluation's Inception-ADL has them
    # (`ADL_POSITIONS`); None: no ADL (`config.method.name` 'adl').
    adl: tuple[float, float] | None = None
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
            if self.adl is not None and name in ADL_POSITIONS:
                x = ADL(*self.adl, name=f"adl_{name.removeprefix('inception_')}")(x, train)
        # CAM_conv's bias starts at 1, as in the released deploy_googlenetCAM.
        return gap_head(self, x, train, cam_conv_bias_init=1.0, adl=self.adl)


GoogLeNetGAPTiny = functools.partial(GoogLeNetGAP, width=1 / 16)

# torchvision's googlenet: the same inception widths, its own module names.
TORCHVISION_INCEPTIONS = {name.replace("_", ""): spec for name, spec in INCEPTION_SPECS.items()}


class BasicConv(nn.Module):
    """torchvision's BasicConv2d: conv (no bias) -> batch norm (epsilon 1e-3) -> ReLU.

    Submodules `conv` and `bn` as in torchvision; `train=True` normalises with and updates the
    batch statistics (layers.batch_norm).
    """

    features: int
    kernel: int
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=self.strides,
            padding=self.kernel // 2,
            use_bias=False,
            kernel_init=conv_init,
            dtype=self.dtype,
            name="conv",
        )(x)
        return nn.relu(batch_norm(train, 1e-3, self.dtype, "bn")(x))


class InceptionBN(nn.Module):
    """torchvision's Inception: branch1 1x1; branch2 1x1 -> 3x3; branch3 1x1 -> 3x3 (sic);
    branch4 3x3/1 max pool -> 1x1. Names mirror torchvision's keys (`branch2_1` for
    `branch2.1`; `branch4_1` because `branch4.0` is the pool)."""

    spec: tuple[int, int, int, int, int, int]
    width: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c1, r3, c3, r5, c5, cp = (scaled_width(c, self.width) for c in self.spec)
        conv = functools.partial(BasicConv, dtype=self.dtype)
        b1 = conv(c1, 1, name="branch1")(x, train)
        b2 = conv(c3, 3, name="branch2_1")(conv(r3, 1, name="branch2_0")(x, train), train)
        b3 = conv(c5, 3, name="branch3_1")(conv(r5, 1, name="branch3_0")(x, train), train)
        pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        b4 = conv(cp, 1, name="branch4_1")(pooled, train)
        return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class GoogLeNetGAPBN(nn.Module):
    """GoogLeNet-GAP on torchvision's googlenet layout (batch norm, no LRN) through inception4e.

    Then the same head as GoogLeNetGAP: CAM_conv 3x3/1024 (groups, bias init 1), ReLU, GAP and
    `head`. `transform_input=True` does what torchvision's pretrained googlenet does by default:
    it maps images normalised with the ImageNet mean/std to (x - 0.5) / 0.5 per channel, the
    normalisation its weights were trained with (equivalently, leave it False and normalise the
    data with mean = std = 0.5). In training, apply with `mutable=['batch_stats']`.
    """

    num_classes: int = 1000
    width: float = 1.0
    cam_features: int = 1024
    groups: int = 2
    dropout_rate: float = 0.0
    grouped_conv_impl: str = "split"
    pooling: str = "avg"  # "max": global max pooling (GMP) instead of GAP
    head_init_std: float | None = None  # None: Flax Dense default; 0.01: wsolevaluation
    transform_input: bool = False
    adl: tuple[float, float] | None = None  # as GoogLeNetGAP's
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        """x: (B, H, W, 3) normalised float images -> (logits (B, num_classes) float32, outputs).

        outputs: 'feature_map' (B, ~H/16, ~W/16, cam_features) and 'pre_logits' (B, cam_features).
        """
        check_images(x, type(self).__name__)
        if self.transform_input:
            mean = jnp.array([0.485, 0.456, 0.406])
            std = jnp.array([0.229, 0.224, 0.225])
            x = (x * std + mean - 0.5) / 0.5
        w = self.width
        conv = functools.partial(BasicConv, dtype=self.dtype)
        x = x.astype(self.dtype)
        x = conv(scaled_width(64, w), 7, strides=2, name="conv1")(x, train)
        x = max_pool_ceil(x, 3, 2)
        x = conv(scaled_width(64, w), 1, name="conv2")(x, train)
        x = conv(scaled_width(192, w), 3, name="conv3")(x, train)
        x = max_pool_ceil(x, 3, 2)
        for name, spec in TORCHVISION_INCEPTIONS.items():
            if name == "inception4a":
                x = max_pool_ceil(x, 3, 2)
            x = InceptionBN(spec, width=w, dtype=self.dtype, name=name)(x, train)
            if self.adl is not None and name.replace("inception", "inception_") in ADL_POSITIONS:
                x = ADL(*self.adl, name=f"adl_{name.removeprefix('inception')}")(x, train)
        # CAM_conv's bias starts at 1, as in the released deploy_googlenetCAM.
        return gap_head(self, x, train, cam_conv_bias_init=1.0, adl=self.adl)


GoogLeNetGAPBNTiny = functools.partial(GoogLeNetGAPBN, width=1 / 16)
