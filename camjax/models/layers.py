"""Layers shared by the GAP networks: grouped CAM conv, Caffe pooling and LRN, batch norm, head.

Everything here keeps the parameter layout of the equivalent stock Flax layer, so weights converted
from Caffe or torchvision land in the same places whichever implementation runs.
"""

import functools
import inspect
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


# He (Kaiming) normal, fan-out, as torchvision initialises VGG and GoogLeNet convs: without batch
# norm, Flax's default LeCun init shrinks the signal by about 2x per ReLU layer and a 13-layer
# VGG trained from scratch does not leave chance level.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class PointwiseAsMatmul:
    """`lax.conv_general_dilated` with its 1x1 convolutions run as a matrix product (an
    `nn.Conv(conv_general_dilated_cls=...)`: flax makes one per call and calls it).

    A 1x1 convolution is a (pixels, C_in) x (C_in, C_out) product. Written as a `dot_general`,
    XLA on CPU runs ResNet50-CAM's eval forward pass 1.14x and its training gradient 1.38x as
    fast as with convolutions, the GoogLeNets' 1.00-1.08x (benchmarks/pointwise_conv.py, batch
    4 at 224). The values differ by float32 rounding (summation order; at that size the
    forward passes were bit-identical), and agree to 3e-14 in float64 (its --float64). A
    strided 1x1 reads every s-th pixel. Anything else (padding, input dilation, groups, a
    layout other than Flax's channels-last) is left to the convolution.
    """

    def __call__(self, lhs, rhs, window_strides, padding, lhs_dilation=None, **conv_kwargs):
        ndim = lhs.ndim
        channels_last = jax.lax.ConvDimensionNumbers(
            (0, ndim - 1, *range(1, ndim - 1)),
            (ndim - 1, ndim - 2, *range(ndim - 2)),
            (0, ndim - 1, *range(1, ndim - 1)),
        )
        kernel = rhs.shape[:-2]
        pointwise = (
            all(k == 1 for k in kernel)
            and all(d == 1 for d in lhs_dilation or ())
            and conv_kwargs.get("feature_group_count", 1) == 1
            and conv_kwargs.get("batch_group_count", 1) == 1
            and conv_kwargs.get("dimension_numbers") == channels_last
        )
        if pointwise and isinstance(padding, str):  # lax's reading, its errors included
            padding = jax.lax.padtype_to_pads(lhs.shape[1:-1], kernel, window_strides, padding)
        if not (pointwise and all(tuple(p) == (0, 0) for p in padding)):
            return jax.lax.conv_general_dilated(
                lhs, rhs, window_strides, padding, lhs_dilation, **conv_kwargs
            )
        pixels = lhs[(slice(None), *(slice(None, None, s) for s in window_strides))]
        return jax.lax.dot_general(
            pixels,
            rhs.reshape(rhs.shape[-2:]),
            (((ndim - 1,), (0,)), ((), ())),
            precision=conv_kwargs.get("precision"),
            preferred_element_type=conv_kwargs.get("preferred_element_type"),
        )


# nn.Conv, the same parameters and function; every camjax network builds its convs from it.
Conv = functools.partial(nn.Conv, conv_general_dilated_cls=PointwiseAsMatmul)


def scaled_width(channels: int, width: float, multiple: int = 1) -> int:
    """Channel count of a layer in a width-scaled network, rounded to a positive `multiple`."""
    return max(multiple, int(round(channels * width / multiple)) * multiple)


class GroupedConv(nn.Module):
    """A 2-D convolution with `groups` channel groups (Caffe's `group`, Flax's feature_group_count).

    The kernel has the stock `nn.Conv(feature_group_count=groups)` layout
    `(kh, kw, in_features // groups, features)`: output channels [g*F/G, (g+1)*F/G) read input
    channels [g*C/G, (g+1)*C/G). `impl='split'` computes one ordinary convolution per group and
    concatenates; `impl='xla'` uses feature_group_count. They compute the same function; 'split' is
    the default because XLA on CPU runs the backward pass of a grouped conv about 2x slower than the
    convolutions on the channel slices.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    padding: int = 1
    groups: int = 2
    impl: str = "split"
    use_bias: bool = True
    bias_init: nn.initializers.Initializer = nn.initializers.zeros
    kernel_init: nn.initializers.Initializer = conv_init
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        if in_features % self.groups or self.features % self.groups:
            raise ValueError(
                f"GroupedConv with groups={self.groups} needs input ({in_features}) and output "
                f"({self.features}) channels divisible by groups; change the width or groups."
            )
        if self.impl not in ("split", "xla"):
            raise ValueError(f"GroupedConv impl must be 'split' or 'xla', got {self.impl!r}.")
        kernel = self.param(
            "kernel",
            self.kernel_init,
            (*self.kernel_size, in_features // self.groups, self.features),
            jnp.float32,
        )
        kernel = kernel.astype(self.dtype)
        x = x.astype(self.dtype)
        pad = [(self.padding, self.padding)] * 2
        dims = ("NHWC", "HWIO", "NHWC")
        if self.impl == "xla" or self.groups == 1:
            y = jax.lax.conv_general_dilated(
                x, kernel, (1, 1), pad, dimension_numbers=dims, feature_group_count=self.groups
            )
        else:
            xs = jnp.split(x, self.groups, axis=-1)
            ks = jnp.split(kernel, self.groups, axis=-1)
            y = jnp.concatenate(
                [
                    jax.lax.conv_general_dilated(xg, kg, (1, 1), pad, dimension_numbers=dims)
                    for xg, kg in zip(xs, ks, strict=True)
                ],
                axis=-1,
            )
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


def max_pool_ceil(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
    """Max pooling with Caffe's output size `ceil((n + 2p - k) / s) + 1` (Caffe rounds up).

    x: (B, H, W, C). Extra right/bottom padding with -inf gives the ceil size; like Caffe, a last
    window that would start inside the right padding only is dropped.
    """

    def pads(n: int) -> tuple[int, int]:
        out = -(-(n + 2 * padding - window) // stride) + 1
        if padding and (out - 1) * stride >= n + padding:
            out -= 1
        extra = (out - 1) * stride + window - (n + 2 * padding)
        return padding, padding + max(0, extra)

    return nn.max_pool(
        x, (window, window), strides=(stride, stride), padding=(pads(x.shape[1]), pads(x.shape[2]))
    )


def local_response_norm(
    x: jax.Array, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> jax.Array:
    """Caffe's ACROSS_CHANNELS LRN: x / (k + alpha/size * sum of x^2 over `size` channels)^beta.

    x: (B, H, W, C). Computed in float32 whatever the input dtype: the power is ill-conditioned in
    bf16 and the op is memory bound anyway.
    """
    x32 = x.astype(jnp.float32)
    half = size // 2
    sq = jnp.pad(jnp.square(x32), ((0, 0), (0, 0), (0, 0), (half, size - 1 - half)))
    window_sum = jax.lax.reduce_window(sq, 0.0, jax.lax.add, (1, 1, 1, size), (1, 1, 1, 1), "VALID")
    return (x32 / (k + alpha / size * window_sum) ** beta).astype(x.dtype)


# Global pooling of the CAM head: "avg" is the CAM paper's GAP; "max" its GMP comparison
# (GoogLeNet-GMP: it classifies about as well, but its maps cover only the most discriminative
# part, so it localizes worse).
POOLINGS = ("avg", "max")


def global_pool(feature_map: jax.Array, pooling: str = "avg") -> jax.Array:
    """(B, h, w, K) -> (B, K) float32: the spatial mean (GAP) or max (GMP) of each channel."""
    if pooling not in POOLINGS:
        raise ValueError(f"model pooling must be one of {POOLINGS}; got {pooling!r}.")
    reduce = jnp.mean if pooling == "avg" else jnp.max
    return reduce(feature_map.astype(jnp.float32), axis=(1, 2))


class Tap(nn.Module):
    """The identity, as a module: it gives a value that no layer outputs (e.g. a ReLU applied as a
    function) a module path, so that `camjax.explain` can read it and its gradient by that path.
    It holds no parameters: adding one changes no checkpoint."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x


class ADL(nn.Module):
    """Attention-based Dropout Layer (Choe & Shim, CVPR 2019), as wsolevaluation's `ADL`.

    Parameter-free and active in training only. The self-attention map is the channel mean
    `a` of the input (B, h, w, C); per training batch one coin (probability `drop_rate`) picks
    either the drop mask `a < threshold * max_xy(a)` (per image), which hides the most
    discriminative region, or the importance map `sigmoid(a)`, and the input is multiplied by
    it. The coin comes from the 'adl' PRNG stream (one draw per layer and step, as the
    reference's `torch.rand([])`). At evaluation the layer is the identity.
    """

    RNG: ClassVar[str] = "adl"  # the PRNG stream it draws from (the train step provides it)

    drop_rate: float = 0.75
    threshold: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if not train:
            return x
        attention = jnp.mean(x.astype(jnp.float32), axis=-1, keepdims=True)
        peak = jnp.max(attention, axis=(1, 2), keepdims=True)
        drop_mask = (attention < self.threshold * peak).astype(jnp.float32)
        use_drop = jnp.floor(jax.random.uniform(self.make_rng(self.RNG)) + self.drop_rate)
        selected = use_drop * drop_mask + (1.0 - use_drop) * jax.nn.sigmoid(attention)
        return (x * selected).astype(x.dtype)


class AttentiveDrop(nn.Module):
    """Attentive dropout of Kim et al. (CVPR 2022, ejkim47/bridging-gap-wsol `AttentiveDrop`).

    Parameter-free; training only (it makes the second, erased branch of 'bridging'). The
    attention is the channel mean `a` of the input (B, h, w, C); every position where
    `a > threshold * max_xy(a)` (per image) is zeroed, independently with probability
    `drop_prob` (one uniform draw per position from the 'attentive_drop' PRNG stream, as the
    reference's `torch.rand_like`: dropped where the draw is <= drop_prob).
    """

    RNG: ClassVar[str] = "attentive_drop"  # the PRNG stream it draws from

    threshold: float = 0.8
    drop_prob: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        attention = jnp.mean(x.astype(jnp.float32), axis=-1, keepdims=True)
        peak = jnp.max(attention, axis=(1, 2), keepdims=True)
        draw = jax.random.uniform(self.make_rng(self.RNG), attention.shape)
        dropped = (attention > self.threshold * peak) & (draw <= self.drop_prob)
        return x * (~dropped).astype(x.dtype)


def takes_labels(model: nn.Module) -> bool:
    """Whether a network's `__call__` takes `labels` (those whose maps depend on the class they
    are made for, as ACoL's erasing does; evaluation passes the GT labels to them)."""
    return "labels" in inspect.signature(type(model).__call__).parameters


# The module path of every camjax GAP network's feature map (the CAM layer, GAP's input).
FEATURE_MAP = "feature_map"


def gap_head(
    net: nn.Module,
    x: jax.Array,
    train: bool,
    cam_conv_bias_init: float = 0.0,
    erased: jax.Array | None = None,
    adl: tuple[float, float] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The CAM head of GAP network `net`: CAM_conv (3x3, grouped) + ReLU -> global pooling ->
    dropout -> head, sized by net's fields (num_classes, cam_features scaled by width to a
    multiple of groups, groups, dropout_rate, grouped_conv_impl, dtype, pooling).

    Call it inside net's compact `__call__`: its layers become net's submodules `cam_conv` and
    `head`, so every GAP network has the same top-level parameter names.
    x: (B, h, w, C) -> (logits (B, num_classes) float32,
    {'feature_map': (B, h, w, features) in `dtype`, 'pre_logits': (B, features) float32}).
    The CAM of class c is `feature_map @ head.kernel[:, c]`. `pooling` "avg" (GAP) makes the
    logit the CAM's spatial mean plus the bias; "max" (GMP) pools by the maximum instead.
    erased: a second input like x (the attentive-dropout branch of 'bridging'); its
    CAM_conv + ReLU output, with the same weights, is added as 'feature_map_erased'.
    adl: (drop rate, threshold) of an ADL layer `adl_cam` between the feature map and the
    pooling (wsolevaluation's Inception-ADL has one after its last conv, before the classes);
    it acts in training only, so 'feature_map' is the map before it.
    """
    cam_conv = GroupedConv(
        scaled_width(net.cam_features, net.width, net.groups),
        groups=net.groups,
        impl=net.grouped_conv_impl,
        bias_init=nn.initializers.constant(cam_conv_bias_init),
        dtype=net.dtype,
        name="cam_conv",
    )
    feature_map = Tap(name=FEATURE_MAP)(nn.relu(cam_conv(x)))
    pooled = feature_map if adl is None else ADL(*adl, name="adl_cam")(feature_map, train)
    pre_logits = global_pool(pooled, net.pooling)
    h = nn.Dropout(net.dropout_rate, deterministic=not train)(pre_logits)
    logits = linear_head(net, h)
    outputs = {"feature_map": feature_map, "pre_logits": pre_logits}
    if erased is not None:
        outputs["feature_map_erased"] = nn.relu(cam_conv(erased))
    return logits, outputs


def linear_head(net: nn.Module, pooled: jax.Array) -> jax.Array:
    """The classifier `head` on the pooled features -> float32 logits. Its kernel starts from
    Flax's default (LeCun normal: std 1 / sqrt(fan-in), 0.031 for 1024 features) unless
    `net.head_init_std` is set: wsolevaluation's `initialize_weights` draws every nn.Linear
    from N(0, 0.01) with a zero bias, which its recipes then train at small learning rates."""
    std = net.head_init_std
    init = nn.linear.default_kernel_init if std is None else nn.initializers.normal(std)
    return nn.Dense(net.num_classes, dtype=jnp.float32, kernel_init=init, name="head")(pooled)


def check_images(x: jax.Array, model_name: str) -> None:
    """Raises a ValueError naming the expected layout unless x is a (B, H, W, 3) float batch."""
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(
            f"{model_name} expects images of shape (batch, height, width, 3) in NHWC layout; "
            f"got shape {tuple(x.shape)}."
        )


def caffe_conv(features: int, kernel: int, name: str, dtype: Dtype, stride: int = 1) -> nn.Conv:
    """Caffe's conv: square kernel, 'same' padding k // 2, He-initialised. Make it inside a
    compact `__call__` (it becomes the caller's submodule `name`); call it more than once to
    run the same weights on several inputs."""
    return Conv(
        features,
        (kernel, kernel),
        strides=stride,
        padding=kernel // 2,
        kernel_init=conv_init,
        dtype=dtype,
        name=name,
    )


def conv_relu(
    x: jax.Array, features: int, kernel: int, name: str, dtype: Dtype, stride: int = 1
) -> jax.Array:
    """Caffe's conv + ReLU pair (`caffe_conv`, then ReLU) on x; call inside a compact
    `__call__`: the conv becomes the caller's submodule `name`."""
    return nn.relu(caffe_conv(features, kernel, name, dtype, stride)(x))


def batch_norm(train: bool, epsilon: float, dtype: Dtype, name: str) -> nn.BatchNorm:
    """torch's BatchNorm2d in Flax, for torchvision-layout networks and their weights.

    torch momentum 0.1 is Flax momentum 0.9 (running = 0.9 running + 0.1 batch); the batch
    variance is computed in two passes (mean first), as torch does, rather than E[x^2] - E[x]^2.
    `train=True` normalises with the batch statistics and updates the `batch_stats` collection;
    `train=False` uses the running averages. Statistics are float32 whatever `dtype`.
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=epsilon,
        use_fast_variance=False,
        dtype=dtype,
        name=name,
    )
