"""'bridging' (Kim et al., CVPR 2022; issue 14): the attentive dropout and the loss terms against
hand-written numpy readings of the official code, the erased branch inside the networks, the
warm-up, and the reference hyperparameters of the recipes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from camjax.models import ResNet50CAMTiny, VGG16GAPTiny
from camjax.models.layers import AttentiveDrop
from camjax.train import bridging, wsol_methods
from configs import cam_resnet50_cub, cam_vgg16_ilsvrc
from tests.train.test_loop import tiny_config


def method_config(**fields):
    method = tiny_config("unused").method
    method.name = "bridging"
    method.update(fields)
    return method


def test_attentive_drop_matches_the_reference_given_the_draws():
    x = jax.random.normal(jax.random.key(0), (3, 6, 6, 4)) + 0.5
    layer = AttentiveDrop(threshold=0.3, drop_prob=0.5)
    key = jax.random.key(7)
    out = np.asarray(layer.apply({}, x, rngs={"attentive_drop": key}))
    # The draws the layer made: flax folds the module's path into the stream, as ADL's test.
    draw = np.asarray(
        layer.apply(
            {},
            method=lambda m: jax.random.uniform(m.make_rng("attentive_drop"), (3, 6, 6, 1)),
            rngs={"attentive_drop": key},
        )
    )
    # drop.py's AttentiveDrop.forward in numpy (NHWC): drop above threshold x max where the
    # uniform draw is <= drop_prob.
    m_avg = np.asarray(x).mean(axis=-1, keepdims=True)
    thres = m_avg.max(axis=(1, 2), keepdims=True) * 0.3
    mask = np.where(m_avg > thres, 0.0, 1.0)
    mask = np.where(draw <= 0.5, mask, 1.0)
    np.testing.assert_array_equal(out, np.asarray(x) * mask)
    above = m_avg > thres
    assert 0 < (mask[above] == 0).mean() < 1, "some positions above the threshold are kept"
    assert np.all(mask[~above] == 1)
    # drop.py's comparison is strict: at threshold 1 nothing is above the maximum
    at_peak = AttentiveDrop(threshold=1.0, drop_prob=1.0)
    np.testing.assert_array_equal(at_peak.apply({}, x, rngs={"attentive_drop": key}), x)


def reference_terms(feature, erased, kernel, labels, fg, bg, region):
    """trainer._get_loss_alignment and the L1 consistency of the official code in numpy, per
    image (NHWC features, Flax (K, C) kernel); eps as the official code."""
    b = len(labels)
    norm = np.sqrt((feature**2).sum(-1))  # (B, h, w)
    shifted = norm - norm.reshape(b, -1).min(1)[:, None, None]
    norm_mm = (shifted / (shifted.reshape(b, -1).max(1)[:, None, None] + 1e-15)).reshape(b, -1)
    f_hat = feature / np.maximum(norm, 1e-12)[..., None]
    w_hat = kernel / np.maximum(np.sqrt((kernel**2).sum(0)), 1e-12)[None]
    sim = np.einsum("bhwk,kc->bchw", f_hat, w_hat).reshape(b, kernel.shape[1], -1)
    s_t = sim[np.arange(b), labels]
    sim_fg, sim_bg = (norm_mm > fg).astype(float), (norm_mm < bg).astype(float)
    l_sim = (sim_bg * s_t).sum(1) / (sim_bg.sum(1) + 1e-15) - (sim_fg * s_t).sum(1) / (
        sim_fg.sum(1) + 1e-15
    )
    r = s_t if region == "target" else sim.max(1)
    n_fg, n_bg = (r > 0).astype(float), (r < 0).astype(float)
    l_norm = (n_bg * norm_mm).sum(1) / (n_bg.sum(1) + 1e-15) - (n_fg * norm_mm).sum(1) / (
        n_fg.sum(1) + 1e-15
    )
    l_drop = np.abs(feature - erased).reshape(b, -1).mean(1)
    return l_sim, l_norm, l_drop


@pytest.mark.parametrize("region", ["max_class", "target"])
def test_loss_terms_match_a_numpy_reading_of_the_official_code(region):
    rng = np.random.default_rng(0)
    feature = np.maximum(rng.normal(size=(3, 4, 5, 6)), 0).astype(np.float32)  # ReLU'd
    feature[0, 0, 0] = 0  # a zero feature vector: its norm is 0, its cosines 0
    erased = feature * (rng.uniform(size=(3, 4, 5, 1)) > 0.3)
    kernel = rng.normal(size=(6, 4)).astype(np.float32)
    labels = np.array([0, 3, 1])
    method = method_config(bridging_norm_region=region)
    # Jitted, as the train step runs them (op by op they took seconds to dispatch).
    terms = jax.jit(lambda f, k, y: bridging.terms(f, erased, k, y, method))(
        feature, kernel, jnp.asarray(labels)
    )
    expected = reference_terms(feature, erased, kernel, labels, 0.6, 0.1, region)
    for got, want in zip(terms, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(terms.sim) != 0) and np.all(np.asarray(terms.norm) != 0)

    def total(f, k):
        return sum(jnp.sum(t) for t in bridging.terms(f, erased, k, labels, method))

    grads = jax.jit(jax.grad(total, argnums=(0, 1)))(jnp.asarray(feature), jnp.asarray(kernel))
    assert all(np.all(np.isfinite(g)) for g in grads), "finite at the zero feature vector"
    assert np.any(np.asarray(grads[1]) != 0), "the head is aligned too"


def test_a_dead_image_and_the_thresholds_edges_match_the_official_code():
    """A dead image (all-zero ReLU features) matches the official code's terms (its 1e-15 in the
    min-max is not pinned: under jit XLA turns the empty region's 0 * NaN into 0), and the
    similarity thresholds at the normalised norm's ends: the official comparisons are strict,
    so bg 0 and fg 1 leave both regions empty (L_sim = 0), each map's peak exactly 1."""
    rng = np.random.default_rng(3)
    feature = np.maximum(rng.normal(size=(3, 4, 5, 6)), 0).astype(np.float32)
    feature[1] = 0
    erased = feature * 0.5
    kernel = rng.normal(size=(6, 4)).astype(np.float32)
    labels = np.array([2, 0, 3])
    for fg, bg in ((0.6, 0.1), (1.0, 0.0)):
        method = method_config(bridging_sim_fg_threshold=fg, bridging_sim_bg_threshold=bg)
        terms = jax.jit(lambda f, k, y, m=method: bridging.terms(f, erased, k, y, m))(
            feature, kernel, jnp.asarray(labels)
        )
        expected = reference_terms(feature, erased, kernel, labels, fg, bg, "max_class")
        for got, want in zip(terms, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        if (fg, bg) == (1.0, 0.0):
            np.testing.assert_array_equal(terms.sim, 0.0)


def test_the_alignment_terms_start_after_the_warm_up():
    rng = np.random.default_rng(1)
    outputs = {
        "feature_map": np.maximum(rng.normal(size=(2, 3, 3, 4)), 0).astype(np.float32),
        "feature_map_erased": np.maximum(rng.normal(size=(2, 3, 3, 4)), 0).astype(np.float32),
    }
    kernel = rng.normal(size=(4, 5)).astype(np.float32)
    logits, labels = jnp.asarray(rng.normal(size=(2, 5)), jnp.float32), jnp.array([1, 4])
    method = method_config(bridging_warmup_fraction=0.25)  # warm for steps 0..24 of 100
    terms = jax.jit(lambda *args: bridging.terms(*args, method))(
        outputs["feature_map"], outputs["feature_map_erased"], kernel, labels
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    warm = ce + 3.0 * terms.drop
    # The step is traced, as in a train step.
    loss = jax.jit(lambda *args: bridging.loss(*args[:4], method, args[4], 100))
    for step, want in ((24, warm), (25, warm + 0.5 * terms.sim + 0.15 * terms.norm)):
        got = loss(logits, outputs, labels, kernel, jnp.int32(step))
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_the_dropout_consistency_trains_both_branches():
    """The reference's L1Loss(feature, feature_erased) back-propagates into both branches:
    d L_drop / dF = sign(F - F') / (h w K), and its negative for F'."""
    rng = np.random.default_rng(2)
    f, erased = (rng.uniform(size=(2, 3, 3, 4)).astype(np.float32) for _ in range(2))
    kernel = rng.normal(size=(4, 5)).astype(np.float32)

    def drop(a, b):
        return jnp.sum(bridging.terms(a, b, kernel, jnp.array([1, 4]), method_config()).drop)

    grad_f, grad_erased = jax.jit(jax.grad(drop, (0, 1)))(f, erased)
    np.testing.assert_allclose(grad_f, np.sign(f - erased) / 36, rtol=1e-6)
    np.testing.assert_allclose(grad_erased, -np.sign(f - erased) / 36, rtol=1e-6)


def test_the_erased_branch_runs_the_network_after_the_fork():
    """With drop probability 0 nothing is dropped: the erased branch, the same layers on the
    same input, equals the feature map exactly; at probability 1 the fork's own output is
    ReLU(conv4_3) less its attentive region; at evaluation there is no branch."""
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = None  # the branch has no parameters: one initialisation serves every model
    for prob, same in ((0.0, True), (1.0, False)):
        model = VGG16GAPTiny(
            num_classes=5, output_stride=4, dropout_rate=0.0, attentive_drop=(0.8, prob)
        )
        variables = variables or jax.jit(model.init)(jax.random.key(1, impl="rbg"), images)
        train = jax.jit(lambda v, x, k, m=model: m.apply(v, x, True, rngs={"attentive_drop": k}))
        _, out = train(variables, images, jax.random.key(2))
        assert out["feature_map_erased"].shape == out["feature_map"].shape == (2, 8, 8, 64)
        assert np.array_equal(out["feature_map_erased"], out["feature_map"]) == same
    # The fork reads conv4_3 after its ReLU (VggDrop's 'D' after the block, before a pool):
    # at drop probability 1 it zeroes exactly the positions above 0.8 x the channel mean's max.
    model = VGG16GAPTiny(
        num_classes=5, output_stride=4, dropout_rate=0.0, attentive_drop=(0.8, 1.0)
    )
    _, state = jax.jit(
        lambda v, x, k: model.apply(
            v,
            x,
            True,
            rngs={"attentive_drop": k},
            capture_intermediates=True,
            mutable=["intermediates"],
        )
    )(variables, images, jax.random.key(2))
    seen = state["intermediates"]
    conv4_3 = np.maximum(np.asarray(seen["conv4_3"]["__call__"][0]), 0)
    mean = conv4_3.mean(axis=-1, keepdims=True)
    kept = mean <= 0.8 * mean.max(axis=(1, 2), keepdims=True)
    np.testing.assert_array_equal(seen["attentive_drop"]["__call__"][0], conv4_3 * kept)
    _, evaluated = jax.eval_shape(model.apply, variables, images)
    assert "feature_map_erased" not in evaluated
    with pytest.raises(ValueError, match="attentive_drop forks after conv4_3"):
        VGG16GAPTiny(num_blocks=3, output_stride=4, attentive_drop=(0.8, 0.5)).init(
            jax.random.key(0), images
        )
    resnet = ResNet50CAMTiny(num_classes=5, attentive_drop=(0.8, 0.25))
    shapes = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    variables = jax.eval_shape(resnet.init, jax.random.key(1), shapes)
    _, out = jax.eval_shape(
        lambda v, x: resnet.apply(
            v, x, True, rngs={"attentive_drop": jax.random.key(2)}, mutable=["batch_stats"]
        )[0],
        variables,
        shapes,
    )
    assert out["feature_map_erased"].shape == out["feature_map"].shape == (2, 4, 4, 128)


def test_bad_bridging_configs_fail_in_one_line_and_recipes_hold_the_reference_values():
    with pytest.raises(ValueError, match="config.method.bridging_drop_prob must be in"):
        wsol_methods.check_method(method_config(bridging_drop_prob=1.5))
    with pytest.raises(ValueError, match="config.method.bridging_norm_weight must be >= 0"):
        wsol_methods.check_method(method_config(bridging_norm_weight=-1.0))
    with pytest.raises(ValueError, match="bridging_norm_region must be 'max_class'"):
        wsol_methods.check_method(method_config(bridging_norm_region="cub"))
    # The default recipe's non-negative head leaves L_norm no background to lower.
    with pytest.raises(ValueError, match="set --config.optim.nonnegative_head=False"):
        wsol_methods.check_method(method_config(), nonnegative_head=True)
    wsol_methods.check_method(method_config(), nonnegative_head=False)
    resnet_cub = cam_resnet50_cub.get_config("tiny").method
    assert (resnet_cub.bridging_sim_fg_threshold, resnet_cub.bridging_drop_prob) == (0.4, 0.25)
    assert resnet_cub.bridging_norm_region == "max_class"
    vgg_ilsvrc = cam_vgg16_ilsvrc.get_config("tiny").method
    assert (vgg_ilsvrc.bridging_sim_fg_threshold, vgg_ilsvrc.bridging_norm_region) == (
        0.6,
        "target",
    )
