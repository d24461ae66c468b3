"""Tests for benchmarks/torch_models.py: the PyTorch twins compute camjax's networks.

The framework comparisons in benchmarks/ compare like with like only if each twin is its
camjax network layer for layer: same parameter count at any width, and, with camjax's variables
copied in, the same logits and feature maps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks.torch_models import TORCH_MODELS, load_camjax_variables  # noqa: E402
from camjax.models import create_model  # noqa: E402

NUM_CLASSES = 10


def _abstract_variables(model, size: int):
    x = jnp.zeros((1, size, size, 3))
    return jax.eval_shape(lambda: model.init(jax.random.key(0, impl="rbg"), x))


def _random_variables(model, size: int, rng: np.random.Generator):
    """He-scaled random kernels and random (not zero, as camjax initialises them) biases, so a
    bias copied to the wrong place shows. Drawn with numpy: compiling model.init costs seconds."""

    def draw(leaf):
        fan_in = np.prod(leaf.shape[:-1]) if leaf.ndim > 1 else 1
        scale = np.sqrt(2 / fan_in) if leaf.ndim > 1 else 0.1
        return (scale * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree.map(draw, _abstract_variables(model, size))


@pytest.mark.parametrize(
    "name, width, groups",
    [
        ("vgg16_gap", 1.0, 2),
        ("googlenet_gap", 1.0, 2),
        # 0.3 makes scaled_width round (76.8 -> 77, CAM_conv 307.2 -> 308 for groups 2).
        ("vgg16_gap", 0.3, 2),
        # GoogLeNet at 0.3 has 249 channels after inception_4e: only groups 1 divides them.
        ("googlenet_gap", 0.3, 1),
    ],
)
def test_twin_has_camjax_parameter_count(name, width, groups):
    model = create_model(name, num_classes=1000, width=width, groups=groups)
    with torch.device("meta"):  # shapes only: full-width twins without allocating weights
        twin = TORCH_MODELS[name](width, 1000, groups)
    params = _abstract_variables(model, 64)["params"]
    assert sum(p.numel() for p in twin.parameters()) == sum(p.size for p in jax.tree.leaves(params))


@pytest.mark.parametrize(
    # Both GroupedConv impls share the kernel layout the copy relies on; both nets, one head.
    "name, impl",
    [("vgg16_gap", "split"), ("vgg16_gap", "xla"), ("googlenet_gap", "split")],
)
def test_twin_with_camjax_weights_computes_the_same(name, impl):
    model = create_model(
        name, num_classes=NUM_CLASSES, width=1 / 16, groups=2, grouped_conv_impl=impl
    )
    rng = np.random.default_rng(0)
    # At 96 px GoogLeNet's ceil-mode pools give 48 -> 24 -> 12 -> 6 where floor mode would give
    # 23 -> 11 -> 5: every pool has a partial last window, as at 224. Pixels at Caffe's scale
    # (mean-subtracted 0..255): at unit scale LRN's denominator is 1 + 1e-4 and the comparison
    # could not see its parameters.
    x = (64 * rng.standard_normal((2, 96, 96, 3))).astype(np.float32)
    variables = _random_variables(model, 96, rng)
    logits, out = jax.jit(model.apply)(variables, x)
    fmap = np.asarray(out["feature_map"]).transpose(0, 3, 1, 2)  # NHWC -> NCHW
    assert fmap.max() > 0  # live ReLUs: the comparison is not of zeros

    twin = load_camjax_variables(TORCH_MODELS[name](1 / 16, NUM_CLASSES, 2), variables)
    with torch.no_grad():
        t_logits, t_fmap = twin.eval()(torch.from_numpy(x).permute(0, 3, 1, 2))
    assert t_fmap.shape == fmap.shape
    for got, want in ((t_fmap, fmap), (t_logits, np.asarray(logits))):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
