"""Score-CAM, SS-CAM, IS-CAM, Ablation-CAM and BagCAMs: exact identities, chunking, targets, and
references written independently in numpy (a loop over images and channels, OpenCV / np.interp
for the upsampling, the model applied to one image at a time)."""

import functools

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax import explain
from camjax.explain import bagcams, perturbation
from camjax.explain.probe import Probe
from camjax.explain.targets import Target
from tests.explain import user_models


class Tap(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x


class Tiny(nn.Module):
    """conv-relu, a pool, conv-relu read at 'feature' (post-ReLU, GAP's input), GAP, linear;
    without `rectify`, 'feature' is the signed convolution."""

    width: int = 5
    num_classes: int = 4
    rectify: bool = True

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.Conv(self.width, (3, 3), name="conv2")(x)
        x = Tap(name="feature")(nn.relu(x) if self.rectify else x)
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


def numpy_init(model, images, scale=0.3, seed=0):
    """Random variables drawn in numpy: Flax's initialisers take seconds to compile here."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)
    return jax.tree.map(lambda s: (scale * rng.normal(size=s.shape)).astype(s.dtype), shapes)


@functools.cache
def tiny(width=5, rectify=True):
    model = Tiny(width=width, rectify=rectify)
    images = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 16, 16, 3)), jnp.float32)
    return model, numpy_init(model, images), images


def raw(method, width=5, layer="feature", rectify=True, **options):
    model, variables, _ = tiny(width, rectify)
    return explain.explainer(
        model, variables, method, layer=layer, size=None, normalize=False, **options
    )


def feature(model, variables, x):
    """The 'feature' layer's output, read with Flax's own capture (not camjax's probe)."""

    @jax.jit
    def capture(variables, x):
        _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
        return state["intermediates"]["feature"]["__call__"][0]

    return np.asarray(capture(variables, x))


def up_numpy(a, size, align_corners):
    """(h, w) -> (H, W): OpenCV INTER_LINEAR (half-pixel), or np.interp on corner-aligned grids."""
    if not align_corners:
        return cv2.resize(a, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    h, w = a.shape
    rows = np.stack([np.interp(np.linspace(0, w - 1, size[1]), np.arange(w), r) for r in a])
    return np.stack(
        [np.interp(np.linspace(0, h - 1, size[0]), np.arange(h), c) for c in rows.T], axis=1
    ).astype(np.float32)


def reference_score_family(
    classes,
    copies=1,
    copy=lambda mask, i, b, k: mask,
    weights="probability",
    normalize_masks="after",
    align_corners=False,
    combine="input",
    baseline=False,
    variables=None,
    rectify=True,
):
    """Score-CAM-style maps (B, n, ...) of Tiny (`variables`, default tiny()'s; `rectify`:
    its 'feature' after the ReLU or signed) by a loop over images, channels and copies;
    `baseline`: each score less the clean image's. A constant channel has no mask: the
    official code skips it (weights='probability'); the peers' 1e-8 on the range makes its
    mask zero, a black copy that still scores ('channel_softmax')."""
    model, default_variables, images = tiny(rectify=rectify)
    variables = default_variables if variables is None else variables
    apply = jax.jit(lambda x: model.apply(variables, x))
    images = np.asarray(images)
    size = images.shape[1:3]

    def softmax(z):
        return np.exp(z - z.max()) / np.exp(z - z.max()).sum()

    def score(x, c):  # the class score of one image x (H, W, 3)
        z = np.asarray(apply(x[None]))[0]
        return (softmax(z) if weights == "probability" else z)[c]

    eps = 1e-8 if weights == "channel_softmax" else 0.0  # the peers' only
    out = []
    for b, image in enumerate(images):
        acts = feature(model, variables, image[None])[0]
        kept = [k for k in range(acts.shape[-1]) if eps or np.ptp(acts[..., k]) > 0]
        maps = []
        for c in classes[b]:
            scores, ups = [], []
            for k in kept:
                a = acts[..., k]
                if normalize_masks == "before":
                    mask = up_numpy((a - a.min()) / (np.ptp(a) + eps), size, align_corners)
                else:
                    u = up_numpy(a, size, align_corners)
                    mask = (u - u.min()) / (np.ptp(u) + eps)
                copied = [score(copy(mask, i, b, k)[..., None] * image, c) for i in range(copies)]
                scores.append(sum(copied) / copies)
                ups.append(up_numpy(a, size, align_corners))
            scores = np.array(scores)
            if baseline:
                scores = scores - score(image, c)
            w = softmax(scores) if weights == "channel_softmax" else scores
            if combine == "input":
                m = np.einsum("k,khw->hw", w, np.stack(ups))
            else:
                m = np.einsum("k,hwk->hw", w, acts[..., kept])
            maps.append(np.maximum(m, 0))
        out.append(maps)
    return np.array(out)


def assert_maps_close(actual, expected, rtol=1e-4):
    expected = np.asarray(expected)
    scale = np.abs(expected).max(axis=(-2, -1), keepdims=True)
    assert np.all(scale > 0), "an all-zero map compares nothing (0 / 0 passes as NaN == NaN)"
    np.testing.assert_allclose(np.asarray(actual) / scale, expected / scale, atol=rtol)


PAPER = {}
TORCHCAM = dict(weights="channel_softmax", normalize_masks="before", combine="layer")
GRAD_CAM = dict(weights="channel_softmax", align_corners=True, combine="layer")


# Options no peer's defaults set: masks normalised before an align-corners upsampling, which
# also upsamples the map so.
OTHERS = dict(normalize_masks="before", align_corners=True)


@pytest.mark.parametrize(
    "options", [PAPER, TORCHCAM, GRAD_CAM, OTHERS], ids=["paper", "torchcam", "gc", "others"]
)
def test_score_cam_equals_a_numpy_loop_over_channels(options):
    out = raw("score_cam", top_k=2, **options)(tiny()[2])
    expected = reference_score_family(np.asarray(out.classes), **options)
    assert out.cams.shape == expected.shape
    assert_maps_close(out.cams, expected)


def test_score_cam_of_a_signed_layer_upsamples_the_sum_before_its_relu():
    """On a signed layer (Tiny's 'feature' before its ReLU) the map of the paper's defaults,
    combine='input', is ReLU(upsample(sum_k w_k A_k)): the ReLU after the upsampling, as in the
    official code. On a post-ReLU layer with probabilities as weights the sum is >= 0, so the
    other tests cannot tell a ReLU taken before the upsampling."""
    model, variables, images = tiny(rectify=False)
    assert feature(model, variables, images).min() < 0
    out = raw("score_cam", rectify=False)(images)
    expected = reference_score_family(np.asarray(out.classes), rectify=False)
    assert (expected == 0).any()
    assert_maps_close(out.cams, expected)


@pytest.mark.parametrize("options", [PAPER, TORCHCAM], ids=["paper", "torchcam"])
def test_a_constant_channel_is_skipped_by_the_paper_and_a_black_copy_for_the_peers(options):
    """Channel 0 of 'feature' made constant 0.5 (a zero kernel, bias 0.5): the paper's weights
    leave it out (its ReLU'd sum would shift the whole map by w_0 * 0.5); the peers' softmax
    weighs it by the score of the all-black copy its zero mask makes."""
    model, variables, images = tiny()
    params = jax.tree.map(np.array, variables["params"])
    params["conv2"]["kernel"][..., 0] = 0.0
    params["conv2"]["bias"][0] = 0.5
    variables = {"params": params}
    assert np.all(feature(model, variables, images)[..., 0] == 0.5)
    f = explain.explainer(
        model, variables, "score_cam", layer="feature", size=None, normalize=False, **options
    )
    out = f(images, targets=np.array([1, 2]))
    expected = reference_score_family([[1], [2]], variables=variables, **options)
    assert_maps_close(out.cams, expected)


def test_score_cam_baseline_subtracts_the_clean_images_score():
    """baseline=True weighs channel k by p_c(masked copy) - p_c(image). For the top classes
    every masked copy scores lower, an all-zero map after the ReLU; the lowest class's rise."""
    model, variables, images = tiny()
    lowest = np.argmin(np.asarray(jax.jit(model.apply)(variables, images)), axis=1)
    out = raw("score_cam", baseline=True)(images, targets=lowest)
    assert_maps_close(out.cams, reference_score_family(lowest[:, None], baseline=True))


def test_ss_cam_and_is_cam_equal_numpy_loops():
    key = jax.random.key(7)
    size = tiny()[2].shape[1:3]
    out = raw("ss_cam", num_samples=2, std=0.5, chunk_size=1, **TORCHCAM)(tiny()[2], key=key)

    noise = jax.jit(perturbation.ss_cam_noise, static_argnums=(4, 5))

    def noisy(mask, i, b, k):
        return mask + np.asarray(noise(key, b, i, k, size, 0.5))

    expected = reference_score_family(np.asarray(out.classes), 2, noisy, **TORCHCAM)
    assert_maps_close(out.cams, expected)
    # Those draws come from the code under test: they must differ by image, copy and channel.
    draws = [
        np.asarray(noise(key, *bik, size, 0.5))
        for bik in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    ]
    assert all(np.abs(d - draws[0]).min() > 0 for d in draws[1:])
    # every copy (2 draws x 5 channels) in one chunk gives the same maps
    every = raw("ss_cam", num_samples=2, std=0.5, chunk_size=10, **TORCHCAM)(tiny()[2], key=key)
    assert_maps_close(every.cams, out.cams, rtol=1e-6)
    n = 3
    paths = {
        "cumulative": [(i + 1) * (i + 2) / (2 * n) for i in range(n)],  # sum_{j<=i} j / N
        "linear": [(i + 1) / n for i in range(n)],
    }
    for path, scales in paths.items():
        is_cam = raw("is_cam", num_samples=n, **({"path": path} if path == "linear" else {}))
        out = is_cam(tiny()[2])
        expected = reference_score_family(
            np.asarray(out.classes), n, lambda mask, i, b, k, s=scales: s[i] * mask
        )
        assert_maps_close(out.cams, expected)


def test_ss_cam_noise_is_gaussian_of_the_given_std():
    """SS-CAM's noise is N(0, std^2) (the paper's, TorchCAM's): the numpy loop above and the
    parity test both read camjax's own draws, so their law is checked here, on 65536 draws:
    mean 0, standard deviation std, 68.3% within one std (a uniform law of that std: 57.7%)."""
    x = np.asarray(
        jax.jit(perturbation.ss_cam_noise, static_argnums=(4, 5))(
            jax.random.key(0), 1, 2, 3, (256, 256), 2.0
        )
    )
    assert abs(x.mean()) < 0.03 and abs(x.std() - 2.0) < 0.03
    assert abs(np.mean(np.abs(x) < 2.0) - 0.6827) < 0.01


@pytest.mark.parametrize("value", [0.0, -1.0, "grad_cam_rule"])
def test_ablation_cam_equals_numpy_and_the_gap_identity(value):
    """At GAP's input with a linear head, ablating channel k to `value` lowers logit c by
    exactly W_ck (mean(A_k) - value): the map is ReLU(sum_k W_ck (mean(A_k) - value) / y_c A_k).
    'grad_cam_rule' on a signed layer (Tiny without its last ReLU): the map of each image's
    value (its activations' minimum - 1e7, grad-cam's rule for a minimum other than 0; at that
    scale float32 maps cannot tell the minimum's part, which the next test pins)."""
    signed = value == "grad_cam_rule"
    model, variables, images = tiny(rectify=not signed)
    options = {"grad_cam_rule": True} if signed else {} if value == 0.0 else {"value": value}
    out = raw("ablation_cam", top_k=2, chunk_size=2, rectify=not signed, **options)(images)
    w, bias = (np.asarray(variables["params"]["head"][n], np.float64) for n in ("kernel", "bias"))
    expected = []
    for b, image in enumerate(np.asarray(images)):
        acts = feature(model, variables, image[None])[0].astype(np.float64)
        if signed:
            assert acts.min() < 0
            value = acts.min() - 1e7
        maps = []
        for c in np.asarray(out.classes)[b]:
            y = acts.mean((0, 1)) @ w[:, c] + bias[c]
            drops = []
            for k in range(acts.shape[-1]):
                ablated = acts.copy()
                ablated[..., k] = value
                drops.append(y - (ablated.mean((0, 1)) @ w[:, c] + bias[c]))
            gap = w[:, c] * (acts.mean((0, 1)) - value)
            np.testing.assert_allclose(drops, gap, rtol=1e-4, atol=1e-6)
            maps.append(np.maximum(np.einsum("k,hwk->hw", np.array(drops) / y, acts), 0))
        expected.append(maps)
    assert_maps_close(out.cams, np.array(expected))


def test_grad_cams_ablation_value_is_each_images_minimum_less_1e7_or_zero():
    acts = np.random.default_rng(0).normal(size=(3, 4, 4, 5)).astype(np.float32)
    acts[1] = np.maximum(acts[1], 0)  # a minimum of exactly 0: ablate to 0
    acts[2] += 3.0
    low = acts.min(axis=(1, 2, 3))
    np.testing.assert_array_equal(
        perturbation.grad_cam_ablation_value(jnp.asarray(acts)),
        np.float32([low[0] - 1e7, 0.0, low[2] - 1e7]),
    )


@pytest.mark.parametrize("layer", ["block0", "block0/fc2"])
def test_ablation_cam_of_vit_tokens_equals_ablating_in_the_full_forward_pass(layer):
    """logits_from on the patch tokens (class token kept) against the whole network run with
    channel k of the patch tokens zeroed by a delta; block0/fc2 has the residual stream around
    it, which must come from the images, not from the ablated layer."""
    model = user_models.TinyViT(num_classes=5, patch=4)
    images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 16, 3)), jnp.float32)
    variables = numpy_init(model, images)
    out = explain.explainer(
        model, variables, "ablation_cam", layer=layer, size=None, normalize=False
    )(images)
    probe = Probe(model, (layer,))
    logits, (tokens,) = jax.jit(probe.run)(variables, images)
    c = out.classes[:, 0]
    y = jnp.take_along_axis(logits, out.classes, 1)[:, 0]
    full = jax.jit(lambda delta: probe.run(variables, images, deltas=(delta,))[0])
    weights = []
    for k in range(tokens.shape[-1]):
        delta = jnp.zeros_like(tokens).at[:, 1:, k].set(-tokens[:, 1:, k])
        y_k = jnp.take_along_axis(full(delta), c[:, None], 1)
        weights.append((y - y_k[:, 0]) / y)
    acts = probe.to_grid(tokens, images.shape[1:3])
    expected = jax.nn.relu(jnp.einsum("bhwk,kb->bhw", acts, jnp.stack(weights)))
    assert out.cams.shape == (2, 1, 4, 4)
    assert_maps_close(out.cams[:, 0], expected)


def test_score_cam_of_a_single_channel_is_its_relu():
    model, variables, images = tiny(width=1)
    acts = feature(model, variables, images)
    expected = np.maximum(acts[..., 0], 0)[:, None]
    out = raw("score_cam", width=1, **TORCHCAM)(images)
    np.testing.assert_allclose(out.cams, expected, rtol=1e-6, atol=1e-7)
    # with a class probability as weight the map is that probability times ReLU(A)
    out = raw("score_cam", width=1, combine="layer")(images)
    for b in range(2):
        alive = expected[b] > 0
        ratio = np.asarray(out.cams[b])[alive] / expected[b][alive]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
        assert 0 < ratio[0] < 1


@pytest.mark.parametrize("method", ["score_cam", "is_cam", "ablation_cam"])
def test_chunk_size_does_not_change_the_maps(method):
    """SS-CAM's: in `test_ss_cam_and_is_cam_equal_numpy_loops` (its noise is slow to compile)."""
    options = {"num_samples": 2} if method == "is_cam" else {}
    one = raw(method, top_k=2, chunk_size=1, **options)(tiny()[2])
    every = raw(method, top_k=2, chunk_size=10, **options)(tiny()[2])
    assert_maps_close(one.cams, every.cams, rtol=1e-6)


def test_top_k_and_score_function_targets():
    model, variables, images = tiny()
    f = raw("score_cam", top_k=3, **TORCHCAM)
    top = f(images)
    np.testing.assert_array_equal(top.classes, np.argsort(-np.asarray(top.logits), 1)[:, :3])
    given = f(images, np.asarray(top.classes[:, ::-1]))
    np.testing.assert_allclose(given.cams, top.cams[:, ::-1], rtol=1e-6, atol=1e-7)
    c = 2
    # channel_softmax reads the logit: the score function z[:, c] is class c
    by_fn = f(images, lambda z: z[:, c])
    by_class = raw("score_cam", **TORCHCAM)(images, np.full(2, c))
    np.testing.assert_allclose(by_fn.cams, by_class.cams, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(by_fn.classes, -1)
    # the paper's weights read the probability: a function takes it as given
    g = raw("score_cam", combine="layer")
    by_fn = g(images, lambda z: jax.nn.softmax(z)[:, c])
    np.testing.assert_allclose(by_fn.cams, g(images, np.full(2, c)).cams, rtol=1e-5, atol=1e-7)


def test_bag_cams_closed_form_at_gaps_input():
    """G = W_c / (h w y_c), P = G A, t_k = 1 + W_ck mean(A_k) / (h w y_c), M = sum ReLU(t P)."""
    model, variables, images = tiny()
    acts = feature(model, variables, images)
    w = np.asarray(variables["params"]["head"]["kernel"])
    h, wd = acts.shape[1:3]

    def closed_form(b, g):  # M for a gradient g (K,), constant over positions
        return np.maximum((1 + g * acts[b].mean((0, 1))) * acts[b] * g, 0).sum(-1)

    for guided in (True, False):
        out = raw("bag_cams", top_k=2, guided=guided)(images)
        for b in range(2):
            for i, c in enumerate(np.asarray(out.classes)[b]):
                g = w[:, c] / (h * wd * float(out.logits[b, c]))
                assert_maps_close(out.cams[b, i], closed_form(b, g), rtol=1e-5)

    # score='probability': the gradient of log softmax(y)_c is (W_c - sum_j p_j W_j) / (h w).
    out = raw("bag_cams", top_k=2, score="probability")(images)
    for b in range(2):
        probs = np.asarray(jax.nn.softmax(out.logits[b]), np.float64)
        for i, c in enumerate(np.asarray(out.classes)[b]):
            g = (w[:, c] - w @ probs) / (h * wd)
            assert_maps_close(out.cams[b, i], closed_form(b, g), rtol=1e-5)
    # A negative logit keeps its sign in 1 / y_c.
    lowest = np.argmin(np.asarray(out.logits), axis=1)
    y = np.asarray(out.logits)[np.arange(2), lowest]
    assert (y < 0).all()
    out = raw("bag_cams")(images, targets=lowest)
    for b in range(2):
        g = w[:, lowest[b]] / (h * wd * y[b])
        assert_maps_close(out.cams[b, 0], closed_form(b, g), rtol=1e-5)
    # A score function's negative value too: log(fn) differentiates to grad(fn) / fn.
    by_fn = raw("bag_cams")(images, lambda z: jnp.take_along_axis(z, lowest[:, None], 1)[:, 0])
    assert_maps_close(by_fn.cams, out.cams, rtol=1e-5)


def test_bag_cams_map_takes_the_relu_of_t_times_p_where_t_is_negative():
    """M = sum_k ReLU(t_k P_k), t_k = mean_xy(P_k) + 1, in numpy on random F and G. With
    G = d log(y_c) / dF, a logit y_c near 0 makes |G| large and t_k < 0 for some channels,
    where ReLU(t P) != t ReLU(P); the closed form at GAP's input keeps t > 0."""
    rng = np.random.default_rng(2)
    f = rng.standard_normal((2, 3, 4, 5))  # (B, h, w, K)
    g = 3 * rng.standard_normal((2, 2, 3, 4, 5))  # (n, B, h, w, K)
    p = g * f[None]
    t = p.mean((2, 3), keepdims=True) + 1
    assert (t < 0).any() and (t > 0).any()
    expected = np.maximum(t * p, 0).sum(-1).transpose(1, 0, 2, 3)
    got = bagcams.bag_cams_map(jnp.asarray(f, jnp.float32), jnp.asarray(g, jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_guided_relu_clamps_gradients_through_downstream_relus():
    """At conv2's output (before its ReLU), the gradient of log(y_c) is
    1[z > 0] W_c / (h w y_c), guided: 1[z > 0] max(W_c, 0) / (h w y_c) (y_c > 0 here)."""
    model, variables, images = tiny()
    probe = Probe(model, ("conv2",))
    logits, (z,) = jax.jit(probe.forward)(variables, images)
    c = int(jnp.argmax(jnp.where(logits > 0, 1, 0).sum(0)))  # a class with positive logits
    assert (logits[:, c] > 0).all()
    target = Target(given=jnp.full((2, 1), c))
    w = variables["params"]["head"]["kernel"][:, c]
    scale = (z.shape[1] * z.shape[2] * logits[:, c])[:, None, None, None]
    assert (w < 0).any() and (w > 0).any()  # else guided and plain gradients would agree

    def log_score(logits):  # the cotangent of log(y_c): e_c / y_c, one target per image
        return (jax.nn.one_hot(c, logits.shape[-1]) / logits[:, c : c + 1])[None]

    for guided, kernel in ((False, w), (True, jnp.maximum(w, 0))):
        expected = jnp.where(z > 0, kernel, 0) / scale
        # The gradients themselves: BagCAMs' map zeroes a channel with a negative weight
        # either way (its P = G * z is <= 0 where z > 0), so the map alone cannot tell them.
        (grads,) = jax.jit(lambda v, x, g=guided: probe.gradients(v, x, log_score, g)[2])(
            variables, images
        )
        np.testing.assert_allclose(grads, expected[None], rtol=1e-5, atol=1e-7)
        cams = jax.jit(
            lambda v, x, g=guided: bagcams.bag_cams(probe, v, x, target, None, guided=g)[2]
        )(variables, images)
        np.testing.assert_allclose(cams, bagcams.bag_cams_map(z, expected[None]), rtol=1e-5)
    assert nn.relu is jax.nn.relu and isinstance(jax.nn.relu, jax.custom_jvp)  # nothing patched
