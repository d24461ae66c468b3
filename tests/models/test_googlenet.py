"""Tests for camjax/models/googlenet.py: BVLC GoogLeNet through inception_4e + the GAP head."""

import jax
import jax.numpy as jnp

from camjax.models import GoogLeNetGAP, GoogLeNetGAPTiny

# BVLC GoogLeNet inception modules (input channels, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, proj).
INCEPTIONS = [
    (192, 64, 96, 128, 16, 32, 32),
    (256, 128, 128, 192, 32, 96, 64),
    (480, 192, 96, 208, 16, 48, 64),
    (512, 160, 112, 224, 24, 64, 64),
    (512, 128, 128, 256, 24, 64, 64),
    (512, 112, 144, 288, 32, 64, 64),
    (528, 256, 160, 320, 32, 128, 128),
]


def googlenet_gap_param_count_by_hand(num_classes=1000) -> int:
    total = 7 * 7 * 3 * 64 + 64  # conv1/7x7_s2
    total += 64 * 64 + 64  # conv2/3x3_reduce
    total += 9 * 64 * 192 + 192  # conv2/3x3
    for cin, c1, r3, c3, r5, c5, cp in INCEPTIONS:
        total += cin * c1 + c1
        total += cin * r3 + r3 + 9 * r3 * c3 + c3
        total += cin * r5 + r5 + 25 * r5 * c5 + c5
        total += cin * cp + cp
    total += 9 * (832 // 2) * 1024 + 1024  # CAM_conv, group 2
    total += 1024 * num_classes + num_classes  # head
    return total


def test_full_size_parameter_count_and_shapes():
    model = GoogLeNetGAP()
    x = jnp.zeros((2, 224, 224, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0, impl="rbg"), x[:1]))
    n = sum(p.size for p in jax.tree.leaves(variables["params"]))
    assert n == googlenet_gap_param_count_by_hand() == 8_345_896
    logits, out = jax.eval_shape(lambda v: model.apply(v, x), variables)
    assert logits.shape == (2, 1000)
    # Caffe's ceil-mode pooling keeps 224 -> 112 -> 56 -> 28 -> 14; inception_4e has 832 channels.
    assert out["feature_map"].shape == (2, 14, 14, 1024)
    assert variables["params"]["inception_4e"]["1x1"]["kernel"].shape == (1, 1, 528, 256)


def test_cam_conv_bias_starts_at_one():
    model = GoogLeNetGAPTiny(num_classes=4)
    v = jax.jit(model.init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, 64, 64, 3)))
    assert jnp.all(v["params"]["cam_conv"]["bias"] == 1.0)
    # Shapes only: compiling the forward pass as well doubled the test's time.
    logits, out = jax.eval_shape(model.apply, v, jnp.zeros((2, 64, 64, 3)))
    assert logits.shape == (2, 4) and out["feature_map"].shape[1:3] == (4, 4)
