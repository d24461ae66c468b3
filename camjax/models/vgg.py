"""VGG16-GAP, the CAM paper's VGGnet-GAP (official deploy_vgg16CAM).

VGG16's conv1_1..conv5_3 with pool1..pool4 (pool5 and fc6-fc8 removed), then the GAP head:
CAM_conv 3x3/pad 1/1024 with groups=2, ReLU, global average pooling, dropout 0.5 and a linear
classifier. A 224x224 input gives a 14x14 CAM.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from camjax.models.acol import acol_head
from camjax.models.layers import (
    ADL,
    AttentiveDrop,
    caffe_conv,
    check_images,
    gap_head,
    scaled_width,
)
from camjax.models.spg import SPGMap, conv3_relu, spg_head

# (name, channels of each conv) per block; every block but the last ends in a 2x2/2 max pool.
VGG16_BLOCKS = (
    ("conv1", (64, 64)),
    ("conv2", (128, 128)),
    ("conv3", (256, 256, 256)),
    ("conv4", (512, 512, 512)),
    ("conv5", (512, 512, 512)),
)


class VGG16GAP(nn.Module):
    """VGG16-GAP. `width` scales every channel count (1.0 is the paper's network).

    `groups` is CAM_conv's grouping: 2 as in the released model, 1 for the paper text's variant.
    `dtype` is the compute dtype (e.g. bfloat16); parameters stay float32. `output_stride` 16 is
    the paper's pool1..pool4 (a 14x14 CAM at 224); 8 drops pool4 and 4 also pool3, keeping the
    parameters: the WSOL work's stride-1 last stage, and the way a small input (64 px) keeps the
    paper's CAM resolution (16x16 at stride 4). `num_blocks` 5 ends at conv5_3, as the paper;
    4 ends at conv4_3 (conv5's parameters do not exist), a shallower network for training from
    scratch.
    """

    num_classes: int = 1000
    width: float = 1.0
    cam_features: int = 1024
    groups: int = 2
    dropout_rate: float = 0.5
    grouped_conv_impl: str = "split"
    output_stride: int = 16
    pooling: str = "avg"  # "max": the paper's GMP comparison
    head_init_std: float | None = None  # None: Flax Dense default; 0.01: wsolevaluation
    # (drop rate, threshold) of ADL layers where wsolevaluation's VGG16-ADL has them (after
    # block 3's pool, after conv4_3 and conv5_3); None: no ADL (`config.method.name` 'adl').
    adl: tuple[float, float] | None = None
    num_blocks: int = 5  # conv blocks before the head: 5 is the paper's cut (conv5_3)
    # ACoL's erasing threshold: wsolevaluation's VggAcol (`camjax.models.acol`) replaces the GAP
    # head by ACoL's two heads; None: the GAP head (`config.method.name` 'acol').
    acol: float | None = None
    # (threshold, drop probability) of the attentive dropout of Kim et al. (CVPR 2022): in
    # training, a second branch forks after conv4_3 (as their VggDrop) through the rest of the
    # network ('feature_map_erased'); None: no branch (`config.method.name` 'bridging').
    attentive_drop: tuple[float, float] | None = None
    # SPG (`camjax.models.spg`): wsolevaluation's VggSpg, its side branches after conv4_3 (and
    # a 3x3 pool) and conv5_3 and a class-map top in place of the GAP head ('spg').
    spg: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, labels: jax.Array | None = None):
        """x: (B, H, W, 3) normalised float images -> (logits (B, num_classes) float32, outputs).

        outputs: 'feature_map' (B, H/s, W/s, cam_features) for s = output_stride and
        'pre_logits' (B, cam_features). With `acol`, the outputs of `acol.acol_head` instead
        (the feature map is then the heads' 512 * width channel input); labels (B,) int pick
        the class whose region is erased (None: head A's top-1 class). Without `acol` labels
        are ignored. With `attentive_drop` and train, also 'feature_map_erased', the feature
        map of the branch dropped after conv4_3. With `spg`, the outputs of `spg.spg_head`.
        """
        check_images(x, type(self).__name__)
        num_pools = _pools_before_head(self)
        x = x.astype(self.dtype)
        erased = None  # the attentive-dropout branch, once forked: the same layers run on it
        spg_width = scaled_width(512, self.width)
        if self.spg:  # VggSpg's SPG_B_shared, run on both side branches
            b_shared = SPGMap(spg_width, self.dtype, name="head_b_shared")

        def both(f, x, erased):
            return f(x), None if erased is None else f(erased)

        for i, (block, channels) in enumerate(VGG16_BLOCKS[: self.num_blocks]):
            for j, c in enumerate(channels):
                conv = caffe_conv(scaled_width(c, self.width), 3, f"{block}_{j + 1}", self.dtype)
                x, erased = both(lambda t, conv=conv: nn.relu(conv(t)), x, erased)
            if self.adl is not None and block in ("conv4", "conv5"):
                x = ADL(*self.adl, name=f"adl_{block}")(x, train)
            if self.attentive_drop is not None and train and block == "conv4":
                erased = AttentiveDrop(*self.attentive_drop, name="attentive_drop")(x)
            if self.spg and block == "conv4":
                if i < num_pools:  # VggSpg's pool after conv4_3 is 3x3 with padding 1
                    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
                b1 = b_shared(conv3_relu(spg_width, "head_b1", self.dtype)(x))
            elif self.acol is not None:
                # VggAcol ends every block in a 3x3 max pool (padding 1): stride 2 where the
                # CAM network pools, stride 1 in place of the pools output_stride drops.
                s = 2 if i < num_pools else 1
                x = nn.max_pool(x, (3, 3), strides=(s, s), padding=((1, 1), (1, 1)))
            elif i < num_pools:
                x, erased = both(lambda t: nn.max_pool(t, (2, 2), strides=(2, 2)), x, erased)
            if self.adl is not None and block == "conv3":
                x = ADL(*self.adl, name=f"adl_{block}")(x, train)
            if self.spg and block == "conv5":
                b2 = b_shared(conv3_relu(spg_width, "head_b2", self.dtype)(x))
        if self.spg:  # VggSpg's SPG_A_3: two more 3x3 convs before SPG_C and the class maps
            for k in (1, 2):
                x = conv3_relu(spg_width, f"head_a3_{k}", self.dtype)(x)
            return spg_head(self, x, b1, b2, spg_width)
        if self.acol is not None:
            # VggAcol smooths the features with a 3x3 average pool (zero padding counted, as
            # torch's avg_pool2d) before both heads, whose convs it Xavier-initialises.
            x = nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
            return acol_head(self, x, labels, nn.initializers.xavier_uniform())
        return gap_head(self, x, train, erased=erased)


def _pools_before_head(vgg: VGG16GAP) -> int:
    """How many 2x2 pools the configured network runs; one-line errors for settings that do
    not fit together."""
    num_pools = {2: 1, 4: 2, 8: 3, 16: 4}.get(vgg.output_stride)
    if num_pools is None:
        raise ValueError(f"VGG16GAP output_stride must be 2, 4, 8 or 16, got {vgg.output_stride}.")
    if not num_pools <= vgg.num_blocks <= len(VGG16_BLOCKS):
        raise ValueError(
            f"VGG16GAP num_blocks must be {num_pools}..{len(VGG16_BLOCKS)} at output_stride "
            f"{vgg.output_stride} (each pool follows a block), got {vgg.num_blocks}."
        )
    if vgg.attentive_drop is not None and vgg.num_blocks < 4:
        raise ValueError(
            f"VGG16GAP attentive_drop forks after conv4_3: num_blocks must be 4 or 5, got "
            f"{vgg.num_blocks}."
        )
    if vgg.spg and vgg.num_blocks != 5:
        raise ValueError(
            f"VGG16GAP spg reads conv4_3 and conv5_3: num_blocks must be 5, got {vgg.num_blocks}."
        )
    return num_pools


VGG16GAPTiny = functools.partial(VGG16GAP, width=1 / 16)
