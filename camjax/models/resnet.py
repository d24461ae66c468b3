"""ResNet50-CAM, the WSOL works' ResNet50 with a GAP head (clovaai/wsolevaluation's `ResNetCam`).

torchvision's ResNet50 (v1.5: the stride of a stage sits on the 3x3 conv of its first
bottleneck, and on the 1x1 projection shortcut) with layer4 at stride 1, so a 224x224 input gives
a 14x14 feature map (output stride 16) instead of 7x7. wsolevaluation's `large_feature_map`
also runs layer3 at stride 1 (28x28, output stride 8). It changes the strides only: no dilation
(unlike torchvision's `replace_stride_with_dilation`), and the parameters are unchanged, so
ImageNet weights load for every output stride. The CAM is read straight off layer4's 2048
channels: global average pooling and the linear classifier `head` (torchvision's `fc`); there is
no CAM_conv.

Batch norm follows torch: epsilon 1e-5 and running averages updated as
`running = 0.9 * running + 0.1 * batch` (torch momentum 0.1 is Flax momentum 0.9). `train=True`
normalises with the batch statistics and updates the `batch_stats` collection (apply with
`mutable=['batch_stats']`); `train=False` uses the running averages. One difference from torch:
Flax updates the running variance with the biased batch variance, torch with the unbiased one
(a factor n/(n-1), n = batch x height x width: 1.0002 for a batch of 32 on layer4's 14x14).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from camjax.models.acol import acol_head
from camjax.models.layers import (
    ADL,
    FEATURE_MAP,
    AttentiveDrop,
    Conv,
    Tap,
    batch_norm,
    check_images,
    conv_init,
    global_pool,
    linear_head,
    scaled_width,
)
from camjax.models.spg import SPGMap, conv3_relu, spg_head

# torchvision's ResNet50: bottlenecks per stage and each stage's bottleneck width ("planes").
RESNET50_STAGES = (3, 4, 6, 3)
# Blocks of each stage followed by an ADL layer in wsolevaluation's ResNet50-ADL (_ADL_POSITION).
ADL_BLOCKS = ((), (), (0,), (0, 2))
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = 4
# Strides of layer1..layer4 for each supported output stride.
STAGE_STRIDES = {32: (1, 2, 2, 2), 16: (1, 2, 2, 1), 8: (1, 2, 1, 1)}


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 x4 channels, plus the identity or a 1x1 projection (v1.5).

    Submodule names follow torchvision's keys (`conv1`, `bn1`, ..., `downsample_0` for
    `downsample.0`) so that converted weights land by name.
    """

    width: int
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = functools.partial(Conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype)
        bn = functools.partial(batch_norm, train, 1e-5, self.dtype)
        out_features = self.width * EXPANSION
        y = nn.relu(bn("bn1")(conv(self.width, (1, 1), name="conv1")(x)))
        y = conv(self.width, (3, 3), strides=self.strides, padding=1, name="conv2")(y)
        y = nn.relu(bn("bn2")(y))
        y = bn("bn3")(conv(out_features, (1, 1), name="conv3")(y))
        if self.strides != 1 or x.shape[-1] != out_features:
            x = conv(out_features, (1, 1), strides=self.strides, name="downsample_0")(x)
            x = bn("downsample_1")(x)
        return nn.relu(y + x)


class ResNet50CAM(nn.Module):
    """ResNet50-CAM. `width` scales every channel count (1.0 is torchvision's ResNet50).

    `output_stride` 16 is wsolevaluation's ResNetCam (layer4 at stride 1, 14x14 at 224), 8 its
    `large_feature_map=True` (layer3 too, 28x28), 32 torchvision's network (7x7). `dtype` is the
    compute dtype; parameters and batch statistics stay float32.
    """

    num_classes: int = 1000
    width: float = 1.0
    output_stride: int = 16
    dropout_rate: float = 0.0
    pooling: str = "avg"  # "max": global max pooling (GMP) instead of GAP
    head_init_std: float | None = None  # None: Flax Dense default; 0.01: wsolevaluation
    # (drop rate, threshold) of ADL layers where wsolevaluation's ResNet50-ADL has them (after
    # layer3's first block and layer4's first and last); None: no ADL.
    adl: tuple[float, float] | None = None
    # ACoL's erasing threshold: wsolevaluation's ResNetAcol, ACoL's two heads on layer4
    # (`camjax.models.acol`) instead of GAP + `head`; None: the CAM head.
    acol: float | None = None
    # (threshold, drop probability) of the attentive dropout of Kim et al. (CVPR 2022): in
    # training, a second branch forks after layer4's first block (as their ResNetDrop) through
    # layer4's other blocks ('feature_map_erased'); None: no branch ('bridging').
    attentive_drop: tuple[float, float] | None = None
    # SPG (`camjax.models.spg`): wsolevaluation's ResNetSpg, its side branches after layer3's
    # first and last blocks and a class-map top on layer4 in place of GAP + head ('spg').
    spg: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, labels: jax.Array | None = None):
        """x: (B, H, W, 3) normalised float images -> (logits (B, num_classes) float32, outputs).

        outputs: 'feature_map' (B, ~H/s, ~W/s, 2048 * width) for s = output_stride, in `dtype`,
        and 'pre_logits' (B, 2048 * width) float32. In training, apply with
        `mutable=['batch_stats']`. With `acol`, the outputs of `acol.acol_head` (labels (B,)
        int pick the class whose region is erased; None: head A's top-1 class); without it
        labels are ignored. With `attentive_drop` and train, also 'feature_map_erased', the
        layer4 output of the branch dropped after layer4's first block (batch norm runs on
        each branch with its own batch statistics, updating the running ones twice, as torch
        does when the reference calls the blocks twice). With `spg`, the outputs of
        `spg.spg_head`.
        """
        check_images(x, type(self).__name__)
        strides = STAGE_STRIDES.get(self.output_stride)
        if strides is None:
            raise ValueError(
                f"ResNet50CAM output_stride must be 8, 16 or 32, got {self.output_stride}."
            )
        x = _stem(self, x, train)
        erased = None  # the attentive-dropout branch, once forked: the same blocks run on it
        if self.spg:  # ResNetSpg's SPG_B_shared, run on both side branches of layer3
            b_width = scaled_width(1024, self.width)
            b_shared = SPGMap(b_width, self.dtype, name="head_b_shared")
        for stage, (blocks, planes, stride) in enumerate(
            zip(RESNET50_STAGES, STAGE_WIDTHS, strides, strict=True)
        ):
            for block in range(blocks):
                bottleneck = Bottleneck(
                    scaled_width(planes, self.width),
                    strides=stride if block == 0 else 1,
                    dtype=self.dtype,
                    name=f"layer{stage + 1}_{block}",
                )
                x = bottleneck(x, train)
                if erased is not None:
                    erased = bottleneck(erased, train)
                if self.adl is not None and block in ADL_BLOCKS[stage]:
                    x = ADL(*self.adl, name=f"adl{stage + 1}_{block}")(x, train)
                if self.attentive_drop is not None and train and (stage, block) == (3, 0):
                    erased = AttentiveDrop(*self.attentive_drop, name="attentive_drop")(x)
                if self.spg and (stage, block) == (2, 0):
                    b1 = b_shared(conv3_relu(b_width, "head_b1", self.dtype)(x))
                if self.spg and (stage, block) == (2, blocks - 1):
                    b2 = b_shared(conv3_relu(b_width, "head_b2", self.dtype)(x))
        if self.acol is not None:
            return acol_head(self, x, labels, conv_init)  # ResNetAcol's He fan-out init
        if self.spg:
            return spg_head(self, x, b1, b2, scaled_width(512, self.width))
        feature_map = Tap(name=FEATURE_MAP)(x)
        pre_logits = global_pool(feature_map, self.pooling)
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(pre_logits)
        logits = linear_head(self, h)
        outputs = {"feature_map": feature_map, "pre_logits": pre_logits}
        if erased is not None:
            outputs["feature_map_erased"] = erased
        return logits, outputs


def _stem(resnet: ResNet50CAM, x: jax.Array, train: bool) -> jax.Array:
    """conv1 7x7/2, bn1, ReLU and the 3x3/2 max pool: the input at stride 4 (called inside
    ResNet50CAM's compact __call__, so its layers are that module's 'conv1' and 'bn1')."""
    x = x.astype(resnet.dtype)
    x = Conv(
        scaled_width(64, resnet.width),
        (7, 7),
        strides=2,
        padding=3,
        use_bias=False,
        kernel_init=conv_init,
        dtype=resnet.dtype,
        name="conv1",
    )(x)
    x = nn.relu(batch_norm(train, 1e-5, resnet.dtype, "bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    return x


ResNet50CAMTiny = functools.partial(ResNet50CAM, width=1 / 16)
