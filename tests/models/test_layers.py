"""Tests for camjax/models/layers.py: convolutions, Caffe pooling and LRN vs direct formulas."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax.models import create_model
from camjax.models.layers import (
    Conv,
    GroupedConv,
    local_response_norm,
    max_pool_ceil,
    takes_labels,
)


@pytest.mark.parametrize(
    "options",
    [
        {"kernel_size": (1, 1)},
        {"kernel_size": (1, 1), "strides": 2},  # odd input: the last row and column are read
        {"kernel_size": (1, 1), "strides": 2, "padding": "VALID"},
        {"kernel_size": (1, 1), "strides": (1, 2), "padding": 0},
        {"kernel_size": (1, 1), "padding": "same"},  # lax's reading of the name
        # Left to the convolution:
        {"kernel_size": (1, 1), "padding": 1},
        {"kernel_size": (1, 1), "feature_group_count": 2},
        {"kernel_size": (1, 1), "input_dilation": 2, "padding": 0},
        {"kernel_size": (1, 1), "kernel_dilation": 2},
        {"kernel_size": (3, 3), "padding": 1},
        {"kernel_size": (3, 3), "strides": 2},
    ],
)
def test_conv_computes_stock_nn_conv(options):
    """camjax's Conv (1x1 kernels as a matrix product) is nn.Conv: the same parameters, output
    and gradients, to float32 rounding."""
    x = jax.random.normal(jax.random.key(0), (2, 7, 9, 8))
    ours, stock = Conv(6, **options), nn.Conv(6, **options)
    variables = stock.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(
        jnp.shape, variables
    )

    def loss(module, variables, x):
        return jnp.sum(jnp.sin(module.apply(variables, x)))

    np.testing.assert_allclose(
        ours.apply(variables, x), stock.apply(variables, x), rtol=1e-6, atol=1e-6
    )
    for a, b in zip(
        jax.tree.leaves(jax.grad(loss, argnums=(1, 2))(ours, variables, x)),
        jax.tree.leaves(jax.grad(loss, argnums=(1, 2))(stock, variables, x)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_conv_keeps_the_precision_and_lax_errors_of_nn_conv():
    x = jnp.zeros((1, 4, 4, 3))
    conv = Conv(2, (1, 1), precision=jax.lax.Precision.HIGHEST)
    variables = conv.init(jax.random.key(0), x)
    (product,) = [
        e
        for e in jax.make_jaxpr(conv.apply)(variables, x).eqns
        if e.primitive.name == "dot_general"
    ]
    assert product.params["precision"] == (jax.lax.Precision.HIGHEST,) * 2
    for module in (Conv, nn.Conv):
        with pytest.raises(RuntimeError, match="Unrecognized padding type"):
            module(2, (1, 1), padding="bogus").init(jax.random.key(0), x)


def _equations(jaxpr):
    """Every equation of a jaxpr, those of its sub-jaxprs (jit, custom_vjp, cond...) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
                    yield from _equations(getattr(sub, "jaxpr", sub))


@pytest.mark.parametrize(
    "name, heads",
    [
        ("resnet50_cam", {}),
        ("resnet50_cam", {"acol": 0.6}),
        ("resnet50_cam", {"spg": True}),
        ("vgg16_gap", {"acol": 0.6}),
        ("vgg16_gap", {"spg": True}),
        ("googlenet_gap", {}),
        ("googlenet_gap_bn", {}),
    ],
)
def test_networks_run_their_1x1_convolutions_as_matrix_products(name, heads):
    """Every 1x1 convolution of the networks and WSOL heads that have them takes the faster
    path (XLA on CPU: benchmarks/pointwise_conv.py); only the larger kernels stay convolutions."""
    model = create_model(name, num_classes=10, width=0.0625, **heads)
    x = jnp.zeros((2, 64, 64, 3))
    labels = {"labels": jnp.zeros(2, jnp.int32)} if takes_labels(model) else {}
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, **labels))
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, **labels))(variables).jaxpr
    equations = list(_equations(jaxpr))
    kernels = [
        e.invars[1].aval.shape[:2] for e in equations if e.primitive.name == "conv_general_dilated"
    ]
    pixel_products = [
        e for e in equations if e.primitive.name == "dot_general" and e.invars[0].aval.ndim == 4
    ]
    assert kernels and (1, 1) not in kernels and pixel_products


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_grouped_conv_split_equals_xla_feature_groups(groups):
    x = jax.random.normal(jax.random.key(0), (2, 7, 9, 8))
    split = GroupedConv(12, groups=groups, impl="split")
    xla = GroupedConv(12, groups=groups, impl="xla")
    params = split.init(jax.random.key(1), x)
    # Same parameter layout as nn.Conv(feature_group_count=groups).
    assert params["params"]["kernel"].shape == (3, 3, 8 // groups, 12)
    np.testing.assert_allclose(split.apply(params, x), xla.apply(params, x), rtol=1e-5, atol=1e-5)


def test_grouped_conv_groups_do_not_mix():
    """Output group g depends only on input group g (Caffe's group semantics)."""
    conv = GroupedConv(4, groups=2)
    x = jax.random.normal(jax.random.key(0), (1, 5, 5, 6))
    params = conv.init(jax.random.key(1), x)
    x2 = x.at[..., 3:].set(0.0)  # change only the second input group
    y, y2 = conv.apply(params, x), conv.apply(params, x2)
    np.testing.assert_array_equal(y[..., :2], y2[..., :2])
    assert not np.allclose(y[..., 2:], y2[..., 2:])


def test_grouped_conv_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="divisible by groups"):
        GroupedConv(4, groups=2).init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))


@pytest.mark.parametrize(
    ("n", "k", "s", "p", "expected"),
    [
        (112, 3, 2, 0, 56),
        (56, 3, 2, 0, 28),
        (28, 3, 2, 0, 14),
        (7, 3, 2, 0, 3),
        (8, 3, 2, 1, 5),
        (6, 2, 2, 0, 3),
    ],
)
def test_max_pool_ceil_matches_caffe_output_size(n, k, s, p, expected):
    x = jax.random.normal(jax.random.key(0), (1, n, n, 2))
    y = max_pool_ceil(x, k, s, p)
    assert y.shape == (1, expected, expected, 2)
    # Values: the max over each window clipped to the image (Caffe ignores the overhang).
    xn = np.asarray(x)
    for i in range(expected):
        for j in range(expected):
            y0, x0 = i * s - p, j * s - p
            win = xn[0, max(y0, 0) : y0 + k, max(x0, 0) : x0 + k]
            np.testing.assert_allclose(y[0, i, j], win.max(axis=(0, 1)))


def test_lrn_matches_caffe_formula():
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 7)) * 10
    y = local_response_norm(x, size=5, alpha=1e-4, beta=0.75)
    xn = np.asarray(x, np.float64)
    ref = np.empty_like(xn)
    for c in range(7):
        lo, hi = max(0, c - 2), min(7, c + 3)
        scale = 1 + 1e-4 / 5 * np.sum(xn[..., lo:hi] ** 2, axis=-1)
        ref[..., c] = xn[..., c] / scale**0.75
    np.testing.assert_allclose(y, ref, rtol=1e-5)


# The GoogLeNets share VGG's `gap_head`; ResNet50-CAM's init compiles for ~10 s.
@pytest.mark.parametrize(
    "name", ["vgg16_gap_tiny", pytest.param("resnet50_cam_tiny", marks=pytest.mark.slow)]
)
def test_head_init_std_draws_the_classifier_as_wsolevaluation(name):
    """The recipes' head_init_std=0.01 is wsolevaluation's N(0, 0.01) with a zero bias (Flax's
    LeCun default started the logits 2-3x larger); left unset, Flax's default stays."""
    images = jnp.zeros((1, 32, 32, 3))
    kernels = {}
    for std in (None, 0.01):
        model = create_model(name, num_classes=500, head_init_std=std)
        head = jax.jit(model.init)(jax.random.key(0), images)["params"]["head"]
        np.testing.assert_array_equal(head["bias"], 0.0)
        kernels[std] = np.asarray(head["kernel"])
    fan_in = kernels[None].shape[0]
    assert np.std(kernels[0.01]) == pytest.approx(0.01, rel=0.05)
    # LeCun normal, truncated at 2 sigma: std 1 / sqrt(fan_in).
    assert np.std(kernels[None]) == pytest.approx(fan_in**-0.5, rel=0.05)
