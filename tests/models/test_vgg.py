"""Tests for camjax/models/vgg.py: the deploy_vgg16CAM structure, shapes, parameter count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax.models import VGG16GAP, VGG16GAPTiny, create_model


def count_params(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


def vgg16_gap_param_count_by_hand(num_classes=1000, groups=2) -> int:
    """From the layer list of deploy_vgg16CAM: 13 3x3 convs, CAM_conv (grouped), the head."""
    convs = [
        (3, 64),
        (64, 64),
        (64, 128),
        (128, 128),
        (128, 256),
        (256, 256),
        (256, 256),
        (256, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
    ]
    total = sum(9 * cin * cout + cout for cin, cout in convs)
    total += 9 * (512 // groups) * 1024 + 1024  # CAM_conv
    total += 1024 * num_classes + num_classes  # CAM_fc / head
    return total


@pytest.mark.parametrize("groups", [1, 2])
def test_full_size_parameter_count_and_shapes(groups):
    model = VGG16GAP(groups=groups)
    x = jnp.zeros((2, 224, 224, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0, impl="rbg"), x[:1]))
    assert count_params(variables["params"]) == vgg16_gap_param_count_by_hand(groups=groups)
    assert vgg16_gap_param_count_by_hand() == 18_100_008
    logits, out = jax.eval_shape(lambda v: model.apply(v, x), variables)
    assert logits.shape == (2, 1000)
    assert out["feature_map"].shape == (2, 14, 14, 1024)  # the paper's 14x14 CAM at 224
    assert out["pre_logits"].shape == (2, 1024)
    # Top-level names: CAM_conv and the classifier `head`.
    assert {"cam_conv", "head", "conv1_1", "conv5_3"} <= set(variables["params"])


def test_output_stride_8_keeps_params_and_doubles_map():
    x = jnp.zeros((1, 64, 64, 3))
    m16, m8 = VGG16GAPTiny(num_classes=5), VGG16GAPTiny(num_classes=5, output_stride=8)
    # Shapes only: jax.eval_shape computes nothing (op by op, this test took seconds).
    v = jax.eval_shape(m16.init, jax.random.key(0, impl="rbg"), x)
    assert count_params(v) == count_params(jax.eval_shape(m8.init, jax.random.key(0), x))
    assert jax.eval_shape(m16.apply, v, x)[1]["feature_map"].shape[1:3] == (4, 4)
    assert jax.eval_shape(m8.apply, v, x)[1]["feature_map"].shape[1:3] == (8, 8)


def test_dropout_only_in_training_and_bf16_compute():
    model = VGG16GAPTiny(num_classes=3, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0, impl="rbg"), (2, 32, 32, 3))
    v = jax.jit(model.init)(jax.random.key(1, impl="rbg"), x)  # jitted: op by op took seconds
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v))  # params stay float32
    apply = jax.jit(model.apply, static_argnames="train")
    logits, out = apply(v, x)
    assert logits.dtype == jnp.float32 and out["feature_map"].dtype == jnp.bfloat16
    a = apply(v, x, train=True, rngs={"dropout": jax.random.key(2)})[0]
    b = apply(v, x, train=True, rngs={"dropout": jax.random.key(3)})[0]
    assert not np.allclose(a, b)  # dropout active in training
    np.testing.assert_array_equal(apply(v, x)[0], apply(v, x)[0])


def test_bad_input_shape_is_a_clear_error():
    model = create_model("vgg16_gap_tiny", num_classes=3)
    with pytest.raises(ValueError, match=r"\(batch, height, width, 3\)"):
        model.init(jax.random.key(0, impl="rbg"), jnp.zeros((1, 3, 32, 32)))


def test_unknown_model_name_lists_models():
    with pytest.raises(ValueError, match="vgg16_gap"):
        create_model("vgg19_gap")


def test_output_stride_2_keeps_only_pool1():
    x = jnp.zeros((1, 64, 64, 3))
    model = VGG16GAPTiny(num_classes=5, output_stride=2)
    v = model.init(jax.random.key(0, impl="rbg"), x)
    assert model.apply(v, x)[1]["feature_map"].shape[1:3] == (32, 32)


def test_num_blocks_4_ends_at_conv4_3():
    """num_blocks=4 drops conv5 (its parameters do not exist), keeps the map's stride, and its
    CAM head reads conv4_3's channels; a pool without a block before it is an error."""
    x = jnp.zeros((1, 64, 64, 3))
    model = VGG16GAPTiny(num_classes=5, output_stride=4, num_blocks=4)
    v = jax.eval_shape(lambda: model.init(jax.random.key(0, impl="rbg"), x))
    assert "conv4_3" in v["params"] and not any(k.startswith("conv5") for k in v["params"])
    assert v["params"]["cam_conv"]["kernel"].shape[2] == 32 // 2  # conv4_3's 32 channels, 2 groups
    assert jax.eval_shape(model.apply, v, x)[1]["feature_map"].shape[1:3] == (16, 16)
    with pytest.raises(ValueError, match="num_blocks must be 4..5 at output_stride 16"):
        VGG16GAPTiny(num_blocks=3).init(jax.random.key(0, impl="rbg"), x)


# GoogLeNet's head is VGG's `gap_head`; its compile (~5 s on 2 cores) runs in the full suite.
# ResNet50-CAM builds its own head.
@pytest.mark.parametrize(
    "name",
    [
        "vgg16_gap_tiny",
        pytest.param("googlenet_gap_tiny", marks=pytest.mark.slow),
        "resnet50_cam_tiny",
    ],
)
def test_gmp_head_pools_the_feature_map_by_its_max(name):
    """pooling='max' (the paper's GMP): pre_logits are the spatial max, the logits the head of
    them, and the parameters those of the GAP network."""
    x = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3))
    gap, gmp = create_model(name, num_classes=5), create_model(name, num_classes=5, pooling="max")
    # Jitted: eager op-by-op dispatch of these networks costs several times their compile.
    v = jax.jit(gap.init)(jax.random.key(0, impl="rbg"), x)
    assert jax.tree.structure(v) == jax.tree.structure(
        jax.eval_shape(gmp.init, jax.random.key(0), x)
    )

    @jax.jit  # one program for both heads: XLA shares their trunk instead of compiling it twice
    def both_heads(v, x):
        return gmp.apply(v, x), gap.apply(v, x)

    (logits, out), (gap_logits, gap_out) = both_heads(v, x)
    fm = np.asarray(out["feature_map"], np.float32)
    np.testing.assert_array_equal(out["pre_logits"], fm.max(axis=(1, 2)))
    head = v["params"]["head"]
    np.testing.assert_allclose(
        logits, out["pre_logits"] @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(gap_out["pre_logits"], fm.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    assert not np.allclose(logits, gap_logits)


def test_unknown_pooling_is_a_clear_error():
    # Traced only: the error comes at the pooling, after every conv; running them eagerly
    # took seconds.
    with pytest.raises(ValueError, match="pooling must be one of"):
        jax.eval_shape(
            VGG16GAPTiny(pooling="sum").init, jax.random.key(0), jnp.zeros((1, 64, 64, 3))
        )
