"""SPG (issue 14): its masks and losses against a numpy reading of wsolevaluation's
`wsol/method/spg.py`, and its branches where VggSpg and ResNetSpg read them."""

import functools

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax import experiment
from camjax.models import ResNet50CAMTiny, VGG16GAPTiny
from camjax.models.spg import SPGMap
from camjax.train import wsol_methods
from tests.train.test_loop import tiny_config


def spg_config(**fields):
    config = tiny_config("unused")
    config.method.name = "spg"
    config.method.update(fields)
    return config


def reference_mask(attention, high, low, min_foreground=30, fallback=0.7):
    """get_mask with mask_fg's per-image loop and mask_bg, in numpy."""
    mask = np.full(attention.shape, 255.0)
    for i, a in enumerate(attention):
        fg = a > high
        if fg.sum() < min_foreground:
            fg = a > a.max() * fallback
        mask[i][fg] = 1.0
    mask[attention < low] = 0.0
    return mask


def reference_bce(logits, mask):
    """loss_attention: BCEWithLogits over the batch's pixels whose target is not 255."""
    x, y = logits[mask < 255], mask[mask < 255]
    return np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x))))


def test_masks_and_bce_match_the_reference():
    rng = np.random.default_rng(0)
    attention = rng.uniform(size=(3, 16, 16)).astype(np.float32)
    attention[1] *= 0.6  # under 30 pixels above 0.7: the 0.7 x max fallback
    attention[2] = 0.004  # all background
    mask = np.asarray(wsol_methods.spg_mask(jnp.asarray(attention), 0.7, 0.01, 30, 0.7))
    want = reference_mask(attention, 0.7, 0.01)
    np.testing.assert_array_equal(mask, want)
    assert (mask[1] == 1).sum() > 0 and np.all(mask[2] == 0)
    logits = rng.normal(size=(3, 16, 16)).astype(np.float32)
    shares = wsol_methods.spg_bce(jnp.asarray(logits), jnp.asarray(mask))
    assert shares.shape == (3,)
    np.testing.assert_allclose(np.mean(shares), reference_bce(logits, want), rtol=1e-6)
    nothing = jnp.full((3, 16, 16), 255.0)
    np.testing.assert_array_equal(wsol_methods.spg_bce(jnp.asarray(logits), nothing), 0.0)


def test_masks_at_the_thresholds_edges_match_the_reference():
    """Where random maps never land: values equal to high, low and the fallback's 0.7 x max
    (the reference's comparisons are strict), and an image with exactly 30 foreground pixels
    (not 'fewer than 30': no fallback) beside one with 29."""
    attention = np.full((3, 16, 16), 0.3, np.float32)
    attention[0, :2] = 0.7  # == high: not foreground, so the fallback (0.7 x max 1.0) runs
    attention[0, 2, :3] = 1.0
    attention[0, 3, :3] = 0.01  # == low: not background
    attention[0, 4, :3] = 0.005
    for i, count in ((1, 30), (2, 29)):  # 0.65: foreground only by the fallback
        pixels = attention[i].reshape(-1)
        pixels[:count], pixels[40:45] = 0.9, 0.65
        pixels[50:55] = np.float32(0.7) * np.float32(0.9)  # == the fallback's 0.7 x max
    mask = np.asarray(wsol_methods.spg_mask(jnp.asarray(attention), 0.7, 0.01, 30, 0.7))
    np.testing.assert_array_equal(mask, reference_mask(attention, 0.7, 0.01))
    assert np.all(mask[0, :2] == 255) and np.all(mask[0, 3, :3] == 255)
    assert (mask[1] == 1).sum() == 30 and (mask[2] == 1).sum() == 29 + 5


@pytest.mark.parametrize("changed", [False, True], ids=["defaults", "changed"])
def test_spg_loss_matches_the_reference_get_loss(changed):
    """changed: other spg_min_foreground and spg_fallback_fraction (which every mask reads),
    and image 1's class map constant: its attention is 0 / 0 as in the reference, so its first
    mask is ignored whole."""
    rng = np.random.default_rng(1)
    b, h, c, size = 2, 4, 3, 32
    outputs = {
        "class_maps": rng.normal(size=(b, h, h, c)).astype(np.float32),
        "spg_b1": rng.normal(size=(b, h, h, 1)).astype(np.float32),
        "spg_b2": rng.normal(size=(b, h, h, 1)).astype(np.float32),
        "spg_c": rng.normal(size=(b, h, h, 1)).astype(np.float32),
    }
    logits = rng.normal(size=(b, c)).astype(np.float32)
    labels = np.array([2, 0])
    fields = dict(spg_min_foreground=300, spg_fallback_fraction=0.5) if changed else {}
    if changed:
        outputs["class_maps"][1, :, :, 0] = 0.25
    method = spg_config(**fields).method
    mask = functools.partial(
        reference_mask,
        min_foreground=method.spg_min_foreground,
        fallback=method.spg_fallback_fraction,
    )
    loss = jax.jit(lambda *args: wsol_methods.spg_loss(*args, method, (32, 32)))  # as in a step
    got = loss(jnp.asarray(logits), outputs, jnp.asarray(labels))

    def up(maps):  # nn.Upsample(bilinear, align_corners=False) = cv2.INTER_LINEAR upsampling
        return np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR) for m in maps])

    def sigmoid(x):
        return 1 / (1 + np.exp(-x))

    attention = up(outputs["class_maps"][np.arange(b), :, :, labels])
    lo, hi = attention.min(axis=(1, 2), keepdims=True), attention.max(axis=(1, 2), keepdims=True)
    with np.errstate(invalid="ignore"):  # 0 / 0 for a constant map, as the reference
        attention = (attention - lo) / (hi - lo)
    b1, b2, cc = (up(outputs[k][..., 0]) for k in ("spg_b1", "spg_b2", "spg_c"))
    z = logits - logits.max(axis=1, keepdims=True)
    ce = np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(b), labels])
    want = (
        ce
        + reference_bce(b2, mask(attention, 0.7, 0.01))
        + reference_bce(b1, mask(sigmoid(b2), 0.5, 0.05))
        + reference_bce(cc, mask((sigmoid(b1) + sigmoid(b2)) / 2, 0.7, 0.1))
    )
    if changed:
        assert np.all(mask(attention, 0.7, 0.01)[1] == 255)
    np.testing.assert_allclose(np.mean(got), want, rtol=1e-5)


def test_vgg_spg_reads_its_branches_after_conv4_and_conv5():
    """At output stride 16, B1 reads conv4_3 after VggSpg's 3x3/2 pool, B2 conv5_3, both
    through the one shared branch; the logits are the class maps' spatial means."""
    model = VGG16GAPTiny(num_classes=5, output_stride=16, spg=True)
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.key(1, impl="rbg"), images)
    params = variables["params"]

    @jax.jit
    def forward(v, x):
        return model.apply(v, x, capture_intermediates=True, mutable=["intermediates"])

    (logits, out), state = forward(variables, images)
    seen = state["intermediates"]
    conv4 = jax.nn.relu(seen["conv4_3"]["__call__"][0])
    pooled = jax.lax.reduce_window(
        conv4, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )
    conv5 = jax.nn.relu(seen["conv5_3"]["__call__"][0])
    shared = SPGMap(32)

    def branch(x, name):
        x = jax.nn.relu(
            jax.lax.conv_general_dilated(
                x,
                params[name]["kernel"],
                (1, 1),
                "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            + params[name]["bias"]
        )
        return shared.apply({"params": params["head_b_shared"]}, x)

    np.testing.assert_allclose(out["spg_b1"], branch(pooled, "head_b1"), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["spg_b2"], branch(conv5, "head_b2"), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits, out["class_maps"].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    assert out["spg_b1"].shape == out["class_maps"].shape[:3] + (1,) == (2, 2, 2, 1)


def test_resnet_spg_branches_sit_on_layer3():
    model = ResNet50CAMTiny(num_classes=5, spg=True)
    images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(1), images)
    params = variables["params"]
    assert params["head_b1"]["kernel"].shape == (3, 3, 64, 64)  # layer3: 1024 x 1/16 channels
    assert params["head_c"]["Conv_0"]["kernel"].shape == (3, 3, 128, 32)  # layer4 -> 512 / 16
    (logits, out), _ = jax.eval_shape(
        lambda v, x: model.apply(v, x, True, mutable=["batch_stats"]), variables, images
    )
    assert logits.shape == (2, 5) and out["class_maps"].shape == (2, 4, 4, 5)


def test_bad_spg_configs_fail_in_one_line():
    with pytest.raises(ValueError, match="spg_threshold_2l and spg_threshold_2h must satisfy"):
        wsol_methods.check_method(spg_config(spg_threshold_2l=0.9).method)
    with pytest.raises(ValueError, match="spg_fallback_fraction must be in"):
        wsol_methods.check_method(spg_config(spg_fallback_fraction=0.0).method)
    config = spg_config()
    config.model.dropout_rate = 0.5
    with pytest.raises(ValueError, match="dropout_rate=0"):
        experiment.build_model(config)
    with pytest.raises(ValueError, match="spg reads conv4_3 and conv5_3"):
        VGG16GAPTiny(num_blocks=4, output_stride=4, spg=True).init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3))
        )
