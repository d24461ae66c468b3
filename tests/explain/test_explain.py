"""The explainer API on camjax's networks and on models a user brings (a CNN, a ViT)."""

import functools
import inspect
from typing import Any

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax import cam as cam_lib
from camjax import explain
from camjax.explain import gradient
from camjax.explain.probe import Probe
from camjax.explain.targets import Target
from camjax.models import create_model
from tests.explain import user_models
from tests.meshes import on_mesh

NUM_CLASSES = 6


@functools.cache
def gap_network(name="vgg16_gap_tiny", size=32):
    model = create_model(name, num_classes=NUM_CLASSES)
    images = jax.random.normal(jax.random.key(1), (3, size, size, 3))
    variables = jax.jit(model.init)(jax.random.key(0), images)  # eager: one compile per op
    return model, variables, images


def gradients(probe, variables, images, cotangents):
    """probe.gradients compiled: run eagerly, every op of the network compiles on its own."""
    return jax.jit(lambda v, x: probe.gradients(v, x, cotangents))(variables, images)


def test_grad_cam_and_hires_cam_equal_cam_over_hw_on_a_gap_network():
    """At GAP's input, d logit_c / d A = w_c / (h w) everywhere, so Grad-CAM before its ReLU
    and HiResCAM both equal CAM / (h w), to float32 rounding."""
    model, variables, images = gap_network()
    probe = Probe(model, ("feature_map",))
    classes = jnp.array([[0, 3], [5, 1], [2, 2]])
    target = Target(given=classes)
    logits, (acts,), (grads,) = gradients(probe, variables, images, target.cotangents)
    h, w = acts.shape[1:3]
    cams = explain.activation.cam_map(acts, variables["params"]["head"]["kernel"], classes)
    scale = float(jnp.max(jnp.abs(cams)))
    for maps in (
        gradient.grad_cam_map(acts, grads, rectify=False),
        gradient.hires_cam_map(acts, grads, rectify=False),
    ):
        np.testing.assert_allclose(maps * h * w, cams, atol=1e-5 * scale, rtol=0)
    # and the CAM's spatial mean plus the bias is the logit (the paper's identity)
    bias = variables["params"]["head"]["bias"]
    np.testing.assert_allclose(
        cams.mean(axis=(2, 3)) + bias[classes], jnp.take_along_axis(logits, classes, 1), atol=1e-5
    )


def float64_projection(x: np.ndarray, center: bool) -> np.ndarray:
    """Eigen-CAM's map of x (h, w, K) by float64 SVD: sigma_1 u_1 of the (h w, K) activations
    (centred over positions if `center`), oriented to correlate with the channel sum (centred
    alike)."""
    flat = x.reshape(-1, x.shape[-1])
    u, s, _ = np.linalg.svd(flat - flat.mean(0) if center else flat, full_matrices=False)
    projection = (u[:, 0] * s[0]).reshape(x.shape[:2])
    activity = x.sum(-1) - (x.sum(-1).mean() if center else 0.0)
    return projection * np.sign(np.sum(projection * activity))


def test_gradient_maps_are_their_papers_formulas_on_signed_activations():
    """Each gradient method's map function against its formula in float64 numpy, on random
    signed A (a pre-activation or token layer) and gradients that vary over positions, two
    targets per image. At GAP's input (the peer parity's fast lane) G is constant over space
    and A >= 0 after a ReLU, where a dropped final ReLU, XGrad-CAM's per-position weighting or
    Eigen-Grad-CAM's centring cannot show."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((2, 4, 5, 6)) + 0.5  # (B, h, w, K), channel sums > 0
    g = rng.standard_normal((2, 2, 4, 5, 6))  # (n, B, h, w, K)
    a32, g32 = jnp.asarray(a, jnp.float32), jnp.asarray(g, jnp.float32)

    def combine(weights):  # relu(sum_k w[n, b, k] A_k) -> (B, n, h, w)
        return np.maximum(np.einsum("bhwk,nbk->bnhw", a, weights), 0)

    act_sum = a.sum((1, 2))[None, :, None, None]
    alpha = np.where(g != 0, g**2 / (2 * g**2 + act_sum * g**3 + 1e-6), 0)  # eq. 19
    expected = {
        gradient.grad_cam_map: combine(g.mean((2, 3))),
        gradient.grad_cam_pp_map: combine((alpha * np.maximum(g, 0)).sum((2, 3))),
        gradient.xgrad_cam_map: combine((g * a).sum((2, 3)) / a.sum((1, 2))),
        gradient.hires_cam_map: np.maximum((g * a).sum(-1), 0).transpose(1, 0, 2, 3),
        gradient.layer_cam_map: np.maximum((np.maximum(g, 0) * a).sum(-1), 0).transpose(1, 0, 2, 3),
    }
    # Eigen-Grad-CAM: the projection of G * A centred over positions (its default,
    # pytorch-grad-cam's), then ReLU.
    eigen = [[float64_projection(g[n, b] * a[b], center=True) for n in range(2)] for b in range(2)]
    expected[gradient.eigen_grad_cam_map] = np.maximum(np.array(eigen), 0)
    for map_fn, want in expected.items():
        assert (want > 0).any() and (want == 0).any(), map_fn.__name__  # the ReLU acts
        got = np.asarray(jax.jit(map_fn)(a32, g32))
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, atol=1e-5 * scale, err_msg=map_fn.__name__)


@pytest.mark.parametrize("gamma", [2.0, 1.0])
def test_layer_cam_fusion_is_the_max_of_tanh_scaled_maps_by_hand(gamma):
    """LayerCAM's multi-layer fusion (Jiang et al., eq. 6) in numpy, without the peers (the
    parity test needs TorchCAM): each map over its own peak, tanh(gamma M / max M), resized
    bilinearly (OpenCV's INTER_LINEAR) to the largest layer's size, then the max over layers;
    an all-zero map stays zero. Two targets per image, each scaled by its own peak."""
    rng = np.random.default_rng(5)
    small = rng.uniform(0, 3, size=(2, 2, 4, 6)).astype(np.float32)
    large = rng.uniform(0, 0.5, size=(2, 2, 8, 12)).astype(np.float32)
    small[1, 0] = 0.0
    want = np.zeros((2, 2, 8, 12), np.float32)
    for b in range(2):
        for n in range(2):
            m = small[b, n] / (small[b, n].max() or 1.0)
            up = cv2.resize(np.tanh(gamma * m), (12, 8), interpolation=cv2.INTER_LINEAR)
            want[b, n] = np.maximum(up, np.tanh(gamma * large[b, n] / large[b, n].max()))
    got = gradient.fuse_layer_maps([jnp.asarray(small), jnp.asarray(large)], gamma=gamma)
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-6)


def test_every_method_option_reaches_the_method_through_the_explainer():
    """explainer(**options) passes each of them on: none may share a name with the explainer's
    own arguments, which would take it (as `relu` once did grad_cam's)."""
    own = set(inspect.signature(explain.explainer).parameters) - {"options"}
    for method, options in explain.default_options().items():
        assert not own & set(options), method
    model, variables, images = gap_network()
    kwargs = {"top_k": None, "size": None, "normalize": False}  # every class's raw map
    signed = explain.explainer(model, variables, "grad_cam", rectify=False, **kwargs)(images)
    rectified = explain.explainer(model, variables, "grad_cam", **kwargs)(images)
    assert float(signed.cams.min()) < 0
    np.testing.assert_array_equal(rectified.cams, jax.nn.relu(signed.cams))
    # top_k=None: every class, in class order (map c is class c's)
    np.testing.assert_array_equal(rectified.classes, np.tile(np.arange(NUM_CLASSES), (3, 1)))


def test_method_defaults_are_the_papers():
    """The defaults that set what a map is, as documented (each paper's, or its only peer's):
    a changed default changes every map made without the option, and the parity tests pass
    their options explicitly. chunk_size only changes speed and is left out."""
    paper = {"weights": "probability", "normalize_masks": "after", "align_corners": False}
    paper |= {"combine": "input", "baseline": False}
    expected = {
        "smooth_grad_cam_pp": {"num_samples": 4, "std": 0.3},
        "score_cam": paper,
        "ss_cam": paper | {"num_samples": 35, "std": 2.0},
        "is_cam": paper | {"num_samples": 10, "path": "cumulative"},
        "ablation_cam": {"value": 0.0, "grad_cam_rule": False},
        "layer_cam": {"gamma": 2.0},
        "eigen_cam": {"center": False},
        "eigen_grad_cam": {"center": True},
        "bag_cams": {"guided": True, "score": "logit"},
        "grad_cam": {"rectify": True},
        "hires_cam": {"rectify": True},
    }
    defaults = explain.default_options()
    for method, options in expected.items():
        assert {k: defaults[method][k] for k in options} == options, method


def test_cam_method_equals_cam_fn():
    """cam_fn's options are the explainer's: top_k up to every class, `method` its resize."""
    model, variables, images = gap_network()
    f = explain.explainer(model, variables, "cam", top_k=2, size=None, normalize=False)
    g = explain.cam_fn(model, variables, top_k=2, size=None, normalize=False)
    a, b = f(images), g(images)
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_array_equal(a.cams, b.cams)
    kwargs = dict(top_k=NUM_CLASSES, size=(20, 12), normalize=False, relu=True)
    a = explain.explainer(model, variables, "cam", resize="bilinear", **kwargs)(images)
    b = explain.cam_fn(model, variables, method="bilinear", **kwargs)(images)
    assert a.cams.shape == (3, NUM_CLASSES, 20, 12) and float(a.cams.min()) >= 0
    np.testing.assert_array_equal(a.cams, b.cams)


GRADIENT_METHODS = (
    "grad_cam",
    "grad_cam_pp",
    "smooth_grad_cam_pp",
    "xgrad_cam",
    "hires_cam",
    "layer_cam",
    "eigen_cam",
    "eigen_grad_cam",
)
PERTURBATION_METHODS = ("score_cam", "ss_cam", "is_cam", "ablation_cam", "bag_cams")


@pytest.mark.parametrize("method", GRADIENT_METHODS + PERTURBATION_METHODS)
def test_every_method_on_a_user_cnn_is_per_sample_and_traced_once(method):
    model = user_models.SmallCNN(num_classes=5)
    variables, images = user_models.init(model, size=16, batch=3)
    traces = []

    class Counting(user_models.SmallCNN):
        pass

    counting = Counting(num_classes=5)
    object.__setattr__(
        counting, "apply", lambda *a, **k: (traces.append(1), Counting.apply(counting, *a, **k))[1]
    )
    f = explain.explainer(counting, variables, method, layer="conv2", top_k=2)
    out = f(images)
    assert out.cams.shape == (3, 2, 16, 16) and out.classes.shape == (3, 2)
    assert np.isfinite(np.asarray(out.cams)).all()
    assert float(out.cams.min()) >= 0 and float(out.cams.max()) <= 1
    n = len(traces)
    changed = images.at[2].set(jax.random.normal(jax.random.key(9), images.shape[1:]))
    again = f(changed)
    assert len(traces) == n, "a second batch of the same shape must not retrace"
    np.testing.assert_array_equal(again.classes[:2], out.classes[:2])
    np.testing.assert_allclose(again.cams[:2], out.cams[:2], atol=1e-6)
    # One NaN pixel: that image's maps are flagged (normalisation would have made them zeros),
    # the others' are untouched.
    poisoned = f(images.at[1, 3, 3, 0].set(jnp.nan))
    np.testing.assert_array_equal(poisoned.classes[1], -1)
    assert np.isnan(np.asarray(poisoned.cams[1])).all()
    np.testing.assert_array_equal(poisoned.classes[::2], out.classes[::2])
    np.testing.assert_allclose(poisoned.cams[::2], out.cams[::2], atol=1e-6)


def test_targets_given_top_k_and_score_function_agree():
    model, variables, images = gap_network()
    f = explain.explainer(model, variables, "grad_cam", size=None, normalize=False)
    best = f(images)
    given = f(images, np.asarray(best.classes[:, 0]))
    np.testing.assert_array_equal(given.cams, best.cams)
    c = 4
    as_fn = f(images, lambda z: z[:, c])
    as_class = f(images, np.full((3,), c))
    np.testing.assert_allclose(as_fn.cams, as_class.cams, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(as_fn.classes, -1)
    top = explain.explainer(model, variables, "grad_cam", top_k=3)(images)
    order = np.argsort(-np.asarray(top.logits), axis=1)[:, :3]
    np.testing.assert_array_equal(top.classes, order)
    # Smooth Grad-CAM++'s noisy copies take the clean image's top class, not their own.
    smooth = explain.explainer(
        model, variables, "smooth_grad_cam_pp", size=None, normalize=False, std=5.0
    )
    key = jax.random.key(3)
    best = smooth(images, key=key)
    given = smooth(images, np.asarray(best.classes[:, 0]), key=key)
    np.testing.assert_array_equal(given.cams, best.cams)


def test_device_classes_out_of_range_are_flagged_host_classes_raise():
    model, variables, images = gap_network()
    f = explain.explainer(model, variables, "grad_cam")
    out = f(images, jnp.array([0, NUM_CLASSES, 2]))
    np.testing.assert_array_equal(out.classes[:, 0], [0, -1, 2])
    assert (
        np.isnan(np.asarray(out.cams[1])).all() and np.isfinite(np.asarray(out.cams)[[0, 2]]).all()
    )
    # Target flags them itself (the boundary class C too), not only the explainer's check.
    given = jnp.array([[0], [NUM_CLASSES - 1], [NUM_CLASSES], [-1]])
    classes = Target(given=given).classes(jnp.zeros((4, NUM_CLASSES)))
    np.testing.assert_array_equal(classes[:, 0], [0, NUM_CLASSES - 1, -1, -1])
    for host in (np.array([0, NUM_CLASSES, 2]), np.array([0, -1, 2])):
        with pytest.raises(ValueError, match=r"\[0, 5\]"):
            f(images, host)
    with pytest.raises(ValueError, match="top_k must be in"):
        explain.explainer(model, variables, "grad_cam", top_k=NUM_CLASSES + 1)(images)


def test_a_map_that_is_not_finite_is_flagged_not_normalised_to_zeros():
    """Ablation-CAM divides by the class score: a score of exactly 0 (here a zeroed classifier)
    makes its weights 0/0, as in pytorch-grad-cam; normalisation would show zeros."""
    model = user_models.SmallCNN(num_classes=5)
    variables, images = user_models.init(model, size=16, batch=2)
    zeroed = jax.tree.map(jnp.zeros_like, variables["params"]["classifier"])
    variables = {"params": {**variables["params"], "classifier": zeroed}}
    out = explain.explainer(model, variables, "ablation_cam", layer="conv2")(images)
    np.testing.assert_array_equal(out.classes, -1)
    assert np.isnan(np.asarray(out.cams)).all()
    # Logits that are not finite flag the map too, even where the map itself is finite (an
    # infinite bias leaves the gradient, and so Grad-CAM's map, as it was).
    variables, _ = user_models.init(model, size=16, batch=2)
    classifier = dict(variables["params"]["classifier"])
    classifier["bias"] = classifier["bias"].at[2].set(jnp.inf)
    variables = {"params": {**variables["params"], "classifier": classifier}}
    out = explain.explainer(model, variables, "grad_cam", layer="conv2")(images, np.array([0, 1]))
    np.testing.assert_array_equal(out.classes, -1)
    assert np.isnan(np.asarray(out.cams)).all()


@pytest.mark.parametrize(
    "method, layer, blank",
    [
        ("grad_cam", "side", True),
        ("grad_cam", "frozen", True),  # its gradient is zero: stop_gradient cuts the path
        ("ablation_cam", "side", True),
        ("ablation_cam", "frozen", False),  # a forward method: the path is there
        ("score_cam", "side", False),  # masks the input with the layer: any computed layer
        ("grad_cam", "conv1", False),
    ],
)
def test_a_layer_the_logits_do_not_depend_on_is_refused_where_its_map_would_be_blank(
    method, layer, blank
):
    model = user_models.SideBranch()
    images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    variables = model.init(jax.random.key(0), images[:1])
    f = explain.explainer(model, variables, method, layer=layer)
    if not blank:
        assert float(f(images).cams.max()) == 1.0
        return
    # A gradient's check also names the paths it cannot follow; a forward method's has none.
    how = r" \(or not differentiably: stop_gradient" if method == "grad_cam" else ""
    with pytest.raises(ValueError, match=f"do not depend on layer '{layer}'{how}.*; probe a layer"):
        f(images)


def test_unknown_layer_lists_the_module_paths():
    model, variables, images = gap_network()
    with pytest.raises(
        ValueError, match=r"no module at path 'conv9'.*conv5_3, cam_conv, feature_map"
    ):
        explain.explainer(model, variables, "grad_cam", layer="conv9")(images)
    with pytest.raises(ValueError, match="unknown method"):
        explain.explainer(model, variables, "gradcam")


# One method per way a probe touches its layer: reads it and adds a delta (gradients), reads it
# (the score family's masks), replaces it (Ablation-CAM), and two layers at once (LayerCAM).
PROBE_PATHS = {
    "grad_cam": "block/conv",
    "score_cam": "block/conv",
    "ablation_cam": "block/conv",
    "layer_cam": ("stem", "block/conv"),
}


def test_a_layer_inside_nn_remat_gives_the_plain_models_maps():
    """nn.remat traces its module in a scope of its own: a probe that kept the layer's output in
    a Python variable leaked a tracer out of it."""
    plain = user_models.Lifted("plain")
    variables, images = user_models.init(plain, size=12, batch=2)
    for method, layer in PROBE_PATHS.items():
        maps = [
            explain.explainer(model, variables, method, layer=layer, top_k=2)(images).cams
            for model in (plain, user_models.Lifted("remat"))
        ]
        assert float(jnp.ptp(maps[0])) > 0.5, method
        np.testing.assert_allclose(maps[1], maps[0], atol=1e-6, err_msg=method)


@pytest.mark.parametrize("norm", ["spectral", "weight"])
def test_a_layer_under_spectral_or_weight_norm(norm):
    """nn.SpectralNorm and nn.WeightNorm map every collection of the module they wrap: a probe
    passing its delta as a variable had it normalised (or failed on a missing PRNG)."""
    model = user_models.Normalized(norm)
    variables, images = user_models.init(model, size=12)
    if norm == "weight":  # its map_variables drops what the wrapped conv sows
        with pytest.raises(ValueError, match="'conv' of Normalized runs inside a lifted"):
            explain.explainer(model, variables, "grad_cam", layer="conv")(images)
    for layer in ("normed", "conv") if norm == "spectral" else ("normed",):
        grads = explain.explainer(model, variables, "hires_cam", layer=layer, size=None)(images)
        ablation = explain.explainer(model, variables, "ablation_cam", layer=layer)(images)
        assert float(jnp.ptp(grads.cams)) > 0.5 and float(jnp.ptp(ablation.cams)) > 0.5
    # HiResCAM before its ReLU, sum_k G_k A_k, against the gradient of the head by hand
    # (jitted: op by op, these took seconds to dispatch).
    capture = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=True))
    _, state = capture(variables, images)
    acts = state["intermediates"]["normed"]["__call__"][0]
    head = variables["params"]["head"]

    def class_scores(a):
        logits = jnp.mean(jax.nn.relu(a), axis=(1, 2)) @ head["kernel"] + head["bias"]
        return logits[jnp.arange(2), jnp.array([1, 3])].sum()

    expected = jnp.sum(jax.jit(jax.grad(class_scores))(acts) * acts, axis=-1)
    f = explain.explainer(
        model, variables, "hires_cam", layer="normed", rectify=False, size=None, normalize=False
    )
    np.testing.assert_allclose(f(images, [1, 3]).cams[:, 0], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "model, layer, message",
    [
        (user_models.Lifted("scan"), "block/conv", "'block/conv' of Lifted runs inside a lifted"),
        # Scanning the probe's collection too stacked the outputs: wrong maps, or JAX errors.
        (user_models.Lifted("scan_all"), "block/conv", "of Lifted runs inside a lifted"),
        (user_models.Lifted("vmap"), "block/conv", "of Lifted runs inside a lifted transform"),
        # The other branch lacks the probe's output: a multi-line TypeError from lax.cond.
        (user_models.Lifted("cond"), "block/conv", r"Lifted runs inside .* a cond's branch"),
        (user_models.SharedConv(), "shared", "'shared' is called more than once"),
        (user_models.ThroughMethod(), "encoder", "'encoder' of ThroughMethod is not called thr"),
        # nn.jit replays a cached trace, with the probe's first inputs.
        (user_models.Lifted("jit"), "block/conv", r"Lifted .*cached trace \(nn.jit\)"),
        # The logits (B, classes): no map to make of them.
        (
            user_models.SmallCNN(),
            "classifier",
            r"'classifier' must return one \(B, h, w, K\) or \(B, tokens, D\) array; got an "
            r"array of shape \(2, 5\)\. Probe",
        ),
    ],
)
def test_layers_a_probe_cannot_read_are_one_line_errors(model, layer, message):
    variables, images = user_models.init(model, size=12)
    for method in ("grad_cam", "score_cam"):
        with pytest.raises(ValueError, match=message):
            explain.explainer(model, variables, method, layer=layer)(images)


def test_a_models_own_error_is_raised_as_it_is():
    """The lifted-transform message replaces a vmap's out_axes error only when the model runs
    without the probe: this model's own vmap fails either way."""
    model = user_models.OwnVmapBug()
    variables, images = user_models.init(model, size=12)
    with pytest.raises(ValueError, match="out_axes") as error:
        explain.explainer(model, variables, layer="conv")(images)
    assert "lifted transform" not in str(error.value)


def test_logits_returned_in_a_mapping_or_an_output_object():
    variables, images = user_models.init(user_models.Outputs(), size=12)
    maps = [
        explain.explainer(user_models.Outputs(form), variables, layer="conv1")(images).cams
        for form in ("array", "mapping", "object")
    ]
    np.testing.assert_array_equal(maps[1], maps[0])
    np.testing.assert_array_equal(maps[2], maps[0])
    with pytest.raises(
        ValueError, match=r"Outputs must return logits \(B, classes\).*got .* \(2, 12"
    ):
        explain.explainer(user_models.Outputs("features"), variables, layer="conv1")(images)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="grad_cam", foo=1), r"method 'grad_cam' has no option 'foo'; its options: "),
        (dict(method="grad_cam", num_samples=4), "has no option 'num_samples'"),
        (dict(method="grad_cam", rectify="no"), "option 'rectify' of 'grad_cam' must be a bool"),
        (dict(method="smooth_grad_cam_pp", num_samples=0), r"must be an int >= 1 .* got 0"),
        (dict(method="smooth_grad_cam_pp", num_samples=4.5), r"must be an int >= 1 .* got 4.5"),
        (dict(method="ablation_cam", value="x"), "option 'value' of 'ablation_cam' must be a"),
        (dict(method="eigen_cam", layer=("conv1", "conv2")), "reads one layer; got 2"),
        (dict(method="layer_cam", layer=()), "layer must be a module path"),
        (dict(method="layer_cam", layer=("conv2", "conv2")), "layer names a module twice"),
        (dict(method="grad_cam", apply_kwargs={"train": [False]}), r"apply_kwargs\['train'\] mu"),
        (dict(method="grad_cam", layer=None), "layer must be a module path"),
        (dict(method="grad_cam", size=16), "size must be 'input', None"),
        (dict(method="grad_cam", size="layer"), "size must be 'input', None"),
        (dict(method="grad_cam", top_k=0), "top_k must be a positive int or None; got 0"),
        (dict(method="grad_cam", top_k=True), "top_k must be a positive int or None; got True"),
        (dict(method="grad_cam", rectify=1), "option 'rectify' of 'grad_cam' must be a bool"),
        (dict(method="smooth_grad_cam_pp", num_samples=True), r"must be an int >= 1 .* got True"),
        (dict(method="score_cam", weights=1), "option 'weights' of 'score_cam' must be a str"),
    ],
)
def test_bad_arguments_are_one_line_errors_before_anything_runs(kwargs, message):
    """Each of these was a deep traceback from JAX (an int size, a tuple of layers for
    Eigen-CAM), an error only at the first call naming an internal function (an unknown
    option), or a silent result (0 samples: all-zero maps; a string for a bool: taken as True)."""
    model = user_models.SmallCNN()
    variables, images = user_models.init(model)
    with pytest.raises(ValueError, match=message):
        explain.explainer(model, variables, layer=kwargs.pop("layer", "conv2"), **kwargs)


@pytest.mark.parametrize(
    "method, option, value, message",
    [
        ("ss_cam", "std", float("nan"), r"'std' of 'ss_cam' must be a finite float >= 0 .*nan"),
        ("smooth_grad_cam_pp", "std", -0.3, r"must be a finite float >= 0 like .* got -0.3"),
        ("layer_cam", "gamma", float("inf"), r"'gamma' of 'layer_cam' must be a finite float"),
        ("layer_cam", "gamma", -1.0, r"'gamma' of 'layer_cam' must be a finite float >= 0 .*-1.0"),
        ("ablation_cam", "value", float("nan"), r"'value' of 'ablation_cam' must be a finite"),
    ],
)
def test_float_options_that_are_not_finite_or_a_negative_scale_are_refused(
    method, option, value, message
):
    """ss_cam's std=nan gave finite, plausible maps and ablation_cam's value=nan acted as 0;
    a negative standard deviation or LayerCAM gain has no meaning. (A negative fill value,
    Ablation-CAM's, is a real choice and stays accepted.)"""
    with pytest.raises(ValueError, match=message):
        explain.check_options(method, {option: value})
    explain.check_options("ablation_cam", {"value": -1.5})
    explain.check_options("ss_cam", {"std": 0})


def test_variables_without_their_collections_and_a_key_that_is_not_one_are_one_line_errors():
    """Passing params for variables was flax's "collection is empty" from inside the model, and
    an int key a JAX error about key data."""
    model = user_models.SmallCNN()
    variables, images = user_models.init(model)
    with pytest.raises(ValueError, match=r"variables must be .*got \['classifier', 'conv1'.*Pass"):
        explain.explainer(model, variables["params"], layer="conv2")
    f = explain.explainer(model, variables, "ss_cam", layer="conv2", num_samples=2)
    with pytest.raises(ValueError, match="key must be a JAX PRNG key.*got 0"):
        f(images, key=0)
    assert f(images, key=jax.random.PRNGKey(0)).cams.shape == (2, 1, 16, 16)
    assert f(images, key=np.asarray(jax.random.PRNGKey(0))).cams.shape == (2, 1, 16, 16)
    # The default key is key 0, as documented.
    np.testing.assert_array_equal(f(images).cams, f(images, key=jax.random.key(0)).cams)


class TinyGrid(nn.Module):
    """A model on 4 x 4 grids of 16 features, NHWC."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="conv")(x))
        return nn.Dense(3)(x.mean(axis=(1, 2)))


def test_a_target_function_must_give_one_score_per_image_and_a_batch_is_not_empty():
    """A (B, k) or scalar score was summed by the gradient into a plausible map of another
    target (Score-CAM: a reshape error 14 frames deep); an empty batch: a ZeroDivisionError."""
    model = user_models.SmallCNN()
    variables, images = user_models.init(model)
    f = explain.explainer(model, variables, "grad_cam", layer="conv2")
    for bad in (lambda z: z[:, :3], lambda z: z.sum()):
        with pytest.raises(ValueError, match=r"one score per image, shape \(2,\); got"):
            f(images, bad)
    assert f(images, lambda z: z[:, 1] - z[:, 0]).cams.shape[:2] == (2, 1)
    with pytest.raises(ValueError, match="with batch >= 1"):
        f(images[:0])
    with pytest.raises(ValueError, match=r"got \(16, 16, 3\); for one image, pass images\[None\]"):
        f(images[0])
    # Four rows and more channels: an RGBA batch in NCHW, not an image of four rows.
    with pytest.raises(ValueError, match=r"look channels-first \(NCHW\)"):
        f(np.zeros((2, 4, 16, 16), np.float32))
    # A 4 x 4 NHWC grid of 16 channels is no NCHW image: the model's own input, explained.
    grid = TinyGrid()
    grid_vars = grid.init(jax.random.key(0), np.zeros((1, 4, 4, 16), np.float32))
    grid_f = explain.explainer(grid, grid_vars, "grad_cam", layer="conv")
    assert grid_f(np.ones((2, 4, 4, 16), np.float32)).cams.shape == (2, 1, 4, 4)


@pytest.mark.slow  # a ResNet50-CAM compile; VGG16-GAP's identity is in the fast lane
def test_resnet_feature_map_is_gap_input_too():
    """ResNet50-CAM names its feature map itself (the GoogLeNets share VGG's `gap_head`):
    Grad-CAM before ReLU there is CAM / (h w) as well."""
    model, variables, images = gap_network("resnet50_cam_tiny", size=32)
    probe = Probe(model, ("feature_map",))
    classes = jnp.array([[1], [2], [3]])
    _, (acts,), (grads,) = gradients(probe, variables, images, Target(given=classes).cotangents)
    cams = explain.activation.cam_map(acts, variables["params"]["head"]["kernel"], classes)
    h, w = acts.shape[1:3]
    grad_cam = gradient.grad_cam_map(acts, grads, rectify=False) * h * w
    np.testing.assert_allclose(grad_cam, cams, atol=1e-5 * float(jnp.max(jnp.abs(cams))))


def test_vit_tokens_on_the_patch_grid_class_token_dropped():
    model = user_models.TinyViT(num_classes=5, patch=4)
    variables, images = user_models.init(model, size=16, batch=2)
    f = explain.explainer(model, variables, "grad_cam", layer="block1", size=None, normalize=False)
    out = f(images)
    assert out.cams.shape == (2, 1, 4, 4)
    # the map is Grad-CAM's on the 16 patch tokens only
    probe = Probe(model, ("block1",))
    target = Target(given=out.classes)
    _, (acts,), (grads,) = gradients(probe, variables, images, target.cotangents)
    assert acts.shape == (2, 4, 4, 16)
    np.testing.assert_allclose(out.cams, gradient.grad_cam_map(acts, grads), rtol=1e-6)
    up = explain.explainer(model, variables, "layer_cam", layer="block1")(images)
    assert up.cams.shape == (2, 1, 16, 16)


def test_vit_tokens_of_a_non_square_image_on_its_patch_grid():
    """28 x 20 images in 4 x 4 patches: 7 x 5 patches and a class token. Before, the grid was
    the largest square, 6 x 6, with the class token read as a patch (and 35 tokens without it
    made 5 x 5, 10 patches dropped as a 'prefix')."""
    model = user_models.TinyViT(num_classes=5, patch=4)
    images = jax.random.normal(jax.random.key(1), (2, 28, 20, 3))
    variables = jax.jit(model.init)(jax.random.key(0), images)
    f = functools.partial(explain.explainer, model, variables, "grad_cam", layer="block1")
    out = f(size=None)(images)
    assert out.cams.shape == (2, 1, 7, 5)
    np.testing.assert_array_equal(out.cams, f(size=None, grid=(7, 5))(images).cams)
    probe = Probe(model, ("block1",))
    assert probe.grid_shape(35, (28, 20)) == (0, 7, 5)  # no class token
    assert probe.grid_shape(197, (224, 224)) == (1, 14, 14)  # ViT-B/16
    assert probe.grid_shape(261, (224, 224)) == (5, 16, 16)  # DINOv2-reg /14, 4 registers
    with pytest.raises(ValueError, match="cannot lay 50 tokens out as the patch grid of a 28x20"):
        probe.grid_shape(50, (28, 20))


def test_a_token_count_on_a_patch_grid_with_the_fewest_prefix_tokens():
    """grid_shape by hand. 32 tokens of a 32x64 image: 8 px patches make 4x8, and 10 px 'SAME'
    patches (ceil(32 / 10) x ceil(64 / 10)) 4x7 after 4 registers; exact patches win, then
    the fewest prefix tokens.
    30x30 in 4 px 'SAME' patches: ceil(30 / 4) = 8, 8x8 and a class token (no 'VALID' grid
    fits 65). A given grid takes exactly h * w tokens too (a ViT with no class token)."""
    probe = Probe(user_models.TinyViT(), ("block0",))
    assert probe.grid_shape(32, (32, 64)) == (0, 4, 8)
    assert probe.grid_shape(33, (32, 64)) == (1, 4, 8)
    assert probe.grid_shape(65, (30, 30)) == (1, 8, 8)
    # A class token and 4 registers on 32x64 in 8 px patches (37 tokens) were read as 7 px
    # patches' 4x9 and a class token, without a word: both are ViT layouts, so it is refused.
    with pytest.raises(ValueError, match=r"^37 tokens fit .* 32x64 image as 4x9 after 1 or 4x8 "):
        probe.grid_shape(37, (32, 64))
    assert probe.grid_shape(2 + 14 * 10, (224, 160)) == (2, 14, 10)  # DeiT-B/16
    assert probe.grid_shape(1 + 14 * 14, (230, 230)) == (1, 14, 14)  # 16 px 'VALID' patches
    # No fit is exact or after at most a class token: the fewest prefix tokens (14x14 after 2).
    assert probe.grid_shape(2 + 14 * 14, (230, 230)) == (2, 14, 14)
    # 17 px patches divide the height only (136 = 8 * 17, 261 = 15.35 * 17): 8x15 after 10 is
    # not exact, and 8x16 ('SAME') after 2 has fewer prefix tokens.
    assert probe.grid_shape(130, (136, 261)) == (2, 8, 16)
    # 14 px patches divide both (42x56 -> 3x4): exact wins even after 5 prefix tokens.
    assert probe.grid_shape(17, (42, 56)) == (5, 3, 4)
    given = Probe(user_models.TinyViT(), ("block0",), grid=(3, 5))
    assert given.grid_shape(15, (28, 20)) == (0, 3, 5)
    assert given.grid_shape(16, (28, 20)) == (1, 3, 5)
    with pytest.raises(ValueError, match="cannot lay 14 tokens out as a 3x5 grid"):
        given.grid_shape(14, (28, 20))


def test_a_vit_layout_is_found_or_refused_never_read_wrong():
    """The layouts ViTs make: a patch size dividing the image after a class token, DeiT's two
    or a class token and 4 registers; a rounded ('VALID') grid after none or a class token.
    The fewest-prefix rule read 16% of the 5-token exact layouts (2-32 patches a side) and
    the exact-first one some rounded layouts of a class token as another grid: two readings
    are now refused (a grid of 5 patches or fewer a side), one taken."""
    probe = Probe(user_models.TinyViT(), ("block0",))
    exact = [((h * p, w * p), (h, w), n) for n in (0, 1, 2, 5) for h in range(2, 17)
             for w in range(2, 17) for p in (8, 14, 16)]  # fmt: skip
    rounded = [((h * p + p // 2, w * p + p // 3), (h, w), n) for n in (0, 1) for h in range(2, 17)
               for w in range(2, 17) for p in (8, 14, 16)]  # fmt: skip
    wrong, refused = [], set()
    for size, (h, w), n in exact + rounded:
        if n > h + w:
            continue
        try:
            if probe.grid_shape(h * w + n, size) != (n, h, w):
                wrong.append((size, h, w, n))
        except ValueError:
            refused.add(min(h, w))
    assert wrong == [] and max(refused) <= 8


def test_tokens_to_the_grid_and_back_by_hand():
    """Two prefix tokens (a class token, a register) and a 2x3 grid, row by row: to_grid drops
    the prefix and gives float32; from_grid puts the patches back after the prefix it keeps,
    in the layer's dtype (bfloat16 here)."""
    probe = Probe(user_models.TinyViT(), ("block0",), grid=(2, 3))
    tokens = jnp.arange(8, dtype=jnp.bfloat16).reshape(1, 8, 1) * jnp.array([1, -1], jnp.bfloat16)
    grid = probe.to_grid(tokens, (8, 12))
    assert grid.dtype == jnp.float32
    np.testing.assert_array_equal(grid[0, ..., 0], [[2, 3, 4], [5, 6, 7]])
    np.testing.assert_array_equal(grid[0, ..., 1], [[-2, -3, -4], [-5, -6, -7]])
    back = probe.from_grid(grid * 10, tokens)
    assert back.dtype == jnp.bfloat16
    np.testing.assert_array_equal(back[0, :, 0], [0, 1, 20, 30, 40, 50, 60, 70])


def test_a_layer_under_nn_jit_first_traced_by_another_probe_is_named_not_missing():
    """An explainer on 'stem' traces the nn.jit block with its own probe; one on 'block/conv'
    then replays that trace, which neither calls nor sows the layer: the message says why
    (parameters, no trace), not that the model has no such module. A path that is not there
    under the same parent is still 'no module'."""
    jitted = nn.jit(user_models.ConvBlock)  # its own trace cache, whatever ran before

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(8, (3, 3), name="stem")(x))
            x, _ = jitted(name="block")(x)
            return nn.Dense(5, name="head")(jnp.mean(x, axis=(1, 2)))

    variables, images = user_models.init(Net(), size=8)
    f = functools.partial(explain.explainer, Net(), variables, "grad_cam")
    assert f(layer="stem")(images).cams.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="'block/conv' of Net has parameters but was not traced"):
        f(layer="block/conv")(images)
    with pytest.raises(ValueError, match="Net has no module at path 'block/nope'"):
        f(layer="block/nope")(images)


@pytest.mark.parametrize("array", [np.array, jnp.array])
def test_a_numpy_or_jax_size_is_taken(array):
    """size=np.array([7, 5]): before, numpy's "truth value of an array is ambiguous";
    jnp.array([7, 5]): "unhashable type", from the cache of compiled functions."""
    model = user_models.SmallCNN(num_classes=5)
    variables, images = user_models.init(model, size=16, batch=2)
    out = explain.explainer(model, variables, "grad_cam", layer="conv3", size=array([7, 5]))
    assert out(images).cams.shape == (2, 1, 7, 5)


def test_size_resize_normalize_and_relu_are_the_postprocessing_of_the_raw_maps():
    """The explainer's defaults (size 'input': (H, W) of a non-square image, bicubic, min-max,
    no ReLU) and each of its own options, against `camjax.cam.postprocess` of the raw maps.
    Each explainer differs from an earlier one in one option: its compiled function is new."""
    model = user_models.SmallCNN(num_classes=5)
    variables, _ = user_models.init(model, size=16, batch=2)
    images = jax.random.normal(jax.random.key(2), (2, 16, 12, 3))
    f = functools.partial(explain.explainer, model, variables, "grad_cam", layer="conv2")
    raw = f(size=None, normalize=False, rectify=False)(images).cams
    assert float(raw.min()) < 0 and raw.shape[-2:] == (8, 6)
    post = functools.partial(cam_lib.postprocess, raw)
    cases = [
        (dict(size=None, normalize=False, relu=True), jax.nn.relu(raw)),
        (dict(size=(20, 10), normalize=False), post((20, 10), normalize=False)),
        (
            dict(size=(20, 10), resize="bilinear", normalize=False),
            post((20, 10), method="bilinear", normalize=False),
        ),
        (dict(size=None), post(None)),
        ({}, post((16, 12))),
    ]
    for kwargs, want in cases:
        got = f(rectify=False, **kwargs)(images).cams
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=str(kwargs))


@pytest.mark.parametrize("channels", [1, 4])
def test_images_of_any_channel_count(channels):
    """Grayscale (MNIST-like) and 4-channel inputs: before, only 3 channels were taken."""
    model = user_models.SmallCNN(num_classes=5)
    images = jax.random.normal(jax.random.key(1), (2, 16, 16, channels))
    variables = jax.jit(model.init)(jax.random.key(0), images)
    for method in ("grad_cam", "score_cam"):
        out = explain.explainer(model, variables, method, layer="conv3")(images)
        assert out.cams.shape == (2, 1, 16, 16) and bool(jnp.all(jnp.isfinite(out.cams)))


def test_a_single_logit_softmax_is_refused_where_it_would_ignore_the_model():
    """A sigmoid head's one logit: its softmax is 1 for every masked copy, so Score-CAM's
    default weights were all equal whatever the head (and BagCAMs' 'probability' map blank)."""

    class Binary(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
            return nn.Dense(1, name="head")(x.mean((1, 2)))

    images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    variables = Binary().init(jax.random.key(0), images)
    f = functools.partial(explain.explainer, Binary(), variables, layer="conv")
    with pytest.raises(ValueError, match="one logit.*pass weights='channel_softmax', or a target"):
        f("score_cam")(images)
    with pytest.raises(ValueError, match="one logit.*score='probability'.*pass score='logit'"):
        f("bag_cams", score="probability")(images)
    flipped = jax.tree.map(lambda p: -p, variables)
    sigmoid = f("score_cam")(images, targets=lambda z: jax.nn.sigmoid(z[:, 0])).cams
    other = explain.explainer(Binary(), flipped, "score_cam", layer="conv")
    assert not np.allclose(sigmoid, other(images, targets=lambda z: jax.nn.sigmoid(z[:, 0])).cams)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_a_linen_model_in_training_mode_is_one_line_and_runs_with_its_eval_flag(batch_norm):
    """Batch norm updating its statistics, or dropout alone asking for a key (flax's
    InvalidRngError from inside the model): before, flax's own errors, which did not say that
    apply_kwargs turns training off."""

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = True):
            x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
            if batch_norm:
                x = nn.BatchNorm(use_running_average=not train, name="norm")(x)
            x = nn.Dropout(0.5, deterministic=not train)(x)
            return nn.Dense(3, name="head")(x.mean((1, 2)))

    images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    variables = Net().init(jax.random.key(0), images, train=False)
    said = "runs in training mode" if batch_norm else "draws random numbers"
    cause = "batch_stats" if batch_norm else "dropout"
    with pytest.raises(
        ValueError,
        match=rf'^Net {said} \(.*{cause}.*apply_kwargs=\{{"train": False\}}',
    ):
        explain.explainer(Net(), variables, "grad_cam", layer="conv")(images)
    f = explain.explainer(Net(), variables, "grad_cam", layer="conv", apply_kwargs={"train": False})
    assert f(images).cams.shape == (2, 1, 8, 8)


def test_a_model_that_samples_at_inference_is_not_told_it_is_in_training_mode():
    """A model drawing noise in every call was told to pass an eval-mode flag it lacks."""

    class Noisy(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
            x = x + 0.01 * jax.random.normal(self.make_rng("noise"), x.shape)
            return nn.Dense(3, name="head")(x.mean((1, 2)))

    images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    keys = {"params": jax.random.key(0), "noise": jax.random.key(1)}
    variables = Noisy().init(keys, images)
    with pytest.raises(
        ValueError,
        match=r'^Noisy draws random numbers \(.*"noise"\): if in training mode, .*at inference '
        r"needs a flag turning that off\.",
    ):
        explain.explainer(Noisy(), variables, "grad_cam", layer="conv")(images)


def test_a_linen_model_with_a_list_field_is_compiled_for_its_explainer():
    """Flax modules hash their fields, and a list does not hash: before, a TypeError from the
    explainer's cache. A tuple field is cached as before; both give the same maps."""

    class Net(nn.Module):
        features: Any

        @nn.compact
        def __call__(self, x):
            for i, features in enumerate(self.features):
                x = nn.relu(nn.Conv(features, (3, 3), name=f"conv{i}")(x))
            return nn.Dense(3, name="head")(x.mean((1, 2)))

    images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    variables = Net([4, 8]).init(jax.random.key(0), images)
    listed = explain.explainer(Net([4, 8]), variables, "grad_cam", layer="conv1")(images)
    tupled = explain.explainer(Net((4, 8)), variables, "grad_cam", layer="conv1")(images)
    np.testing.assert_array_equal(listed.cams, tupled.cams)


def test_layer_cam_fuses_layers_at_the_finest_resolution():
    model = user_models.SmallCNN(num_classes=5)
    variables, images = user_models.init(model, size=16, batch=2)
    fused = explain.explainer(model, variables, "layer_cam", layer=("conv1", "conv3"), size=None)(
        images
    )
    assert fused.cams.shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="reads one layer"):
        explain.explainer(model, variables, "grad_cam", layer=("conv1", "conv3"))(images)


def test_the_compiled_function_is_shared_between_explainers():
    model, variables, images = gap_network()
    explain._compiled.cache_clear()
    explain.explainer(model, variables, "xgrad_cam")(images)
    other = jax.tree.map(lambda x: x * 1.5, variables)
    explain.explainer(model, other, "xgrad_cam")(images)
    info = explain._compiled.cache_info()
    assert info.misses == 1 and info.hits == 1


def test_eigen_cam_is_oriented_and_class_agnostic():
    model, variables, images = gap_network()
    out = explain.explainer(model, variables, "eigen_cam", top_k=2, size=None, normalize=False)(
        images
    )
    np.testing.assert_array_equal(out.cams[:, 0], out.cams[:, 1])
    # Jitted: op by op, the forward pass and the projections took seconds to dispatch.
    acts = jax.jit(Probe(model, ("feature_map",)).forward)(variables, images)[1][0]
    project = jax.jit(jax.vmap(explain.activation.principal_projection))
    p, flipped = project(acts), project(-acts)  # -acts reverses the activity
    assert np.all(
        np.sum(
            np.asarray(p) * np.asarray(acts.sum(-1) - acts.sum(-1).mean((1, 2), keepdims=True)),
            (1, 2),
        )
        >= 0
    )
    assert flipped.shape == p.shape
    # The explainer's map is that projection's ReLU, uncentred by default (the paper's O V_1);
    # `center=True` reaches it (they differ on these activations).
    np.testing.assert_allclose(out.cams[:, 0], jax.nn.relu(p), rtol=1e-5, atol=1e-6)
    centred = explain.explainer(
        model, variables, "eigen_cam", size=None, normalize=False, center=True
    )(images)
    want = jax.nn.relu(
        jax.jit(jax.vmap(lambda a: explain.activation.principal_projection(a, True)))(acts)
    )
    np.testing.assert_allclose(centred.cams[:, 0], want, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(want) - np.asarray(jax.nn.relu(p))).max() > 1e-3


def test_uncentred_eigen_cam_of_a_relu_layer_is_never_all_zero():
    """Post-ReLU activations: a small object, very active in one channel, on a large background
    that holds more of the energy in others. The uncentred projection is the background's
    component, >= 0 everywhere; oriented by the centred channel sum (the object is above its
    mean) it came out <= 0 everywhere, an all-zero map after Eigen-CAM's ReLU."""
    rng = np.random.default_rng(3)
    x = np.zeros((32, 7, 7, 8))
    x[..., 1] = rng.uniform(1.3, 1.7, (32, 7, 7))  # background: one channel of ~1.5
    x[:, 3:5, 3:5, :] = 0.0
    x[:, 3:5, 3:5, 0] = rng.uniform(3.5, 4.5, (32, 2, 2))  # the object: one channel of ~4
    maps = np.asarray(jax.vmap(explain.activation.principal_projection)(jnp.asarray(x)))
    assert np.all(maps.max(axis=(1, 2)) > 0)
    assert np.all(maps >= -1e-5 * np.abs(maps).max())


@pytest.mark.parametrize("center", [False, True])
def test_eigen_cam_of_a_layernorm_output_has_a_stable_sign(center):
    """A LayerNorm's output sums to ~0 over channels at every position, so the channel sum that
    orients the projection is rounding noise: a 1e-6 change of the input flipped the whole map
    (a TinyViT's norm1). There the largest entry is made positive, as float64's SVD with
    scikit-learn's svd_flip convention does."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 6, 16)) * rng.uniform(0.2, 3.0, 16)
    x = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)  # a LayerNorm, gamma 1
    flat = x.reshape(36, 16)
    u, s, _ = np.linalg.svd(flat - flat.mean(0) if center else flat, full_matrices=False)
    ref = u[:, 0] * s[0]
    ref = (ref * np.sign(ref[np.argmax(np.abs(ref))])).reshape(6, 6)
    for noise in (0.0, 1e-6, -1e-6):
        noisy = jnp.asarray(x + noise * rng.standard_normal(x.shape), jnp.float32)
        ours = explain.activation.principal_projection(noisy, center)
        np.testing.assert_allclose(ours, ref, atol=2e-4 * np.abs(ref).max())


def spectrum_matrix(rng, eigenvalues):
    """A symmetric PSD float64 matrix with these eigenvalues and a random eigenbasis."""
    q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return (q * np.asarray(eigenvalues, np.float64)) @ q.T


@pytest.mark.parametrize(
    "top", [(1.0, 0.5), (1.0, 1 - 1e-3), (1.0, 1 - 1e-5), (1.0, 1.0), (1.0, 0.0)]
)
def test_top_eigenvector_is_float64_eighs(top):
    """Repeated squaring gives float64 eigh's top eigenvector to float32 precision, down to a
    gap of 1e-5 of the largest eigenvalue; a repeated top eigenvalue gives a unit vector of
    its eigenspace; the zero matrix gives zeros."""
    rng = np.random.default_rng(0)
    n = 40
    values = np.concatenate([top, rng.uniform(0, 0.4, n - 2)]) * 1e3
    gram = spectrum_matrix(rng, values)
    v = np.asarray(explain.activation.top_eigenvector(jnp.asarray(gram, jnp.float32)), np.float64)
    _, vectors = np.linalg.eigh(gram)
    if top[1] == 1.0:  # the top eigenspace is the span of the last two eigenvectors
        np.testing.assert_allclose(np.linalg.norm(vectors[:, -2:].T @ v), 1.0, atol=1e-6)
    else:
        np.testing.assert_allclose(abs(vectors[:, -1] @ v), 1.0, atol=1e-6)
    zero = explain.activation.top_eigenvector(jnp.zeros((n, n)))
    np.testing.assert_array_equal(zero, np.zeros(n))


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("shape", [(4, 5, 64), (8, 8, 12)])  # h w <= K, and h w > K
def test_principal_projection_is_float64_svds(shape, center):
    """Both Gram matrices (positions x positions, channels x channels) give the float64 SVD's
    sigma u = O V_1 of the activations O (the paper's), or of O centred over positions,
    oriented to correlate with the channel sum."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape) * rng.uniform(0.1, 2.0, shape[-1]) + 0.5
    ref = float64_projection(x, center)
    ours = explain.activation.principal_projection(jnp.asarray(x, jnp.float32), center)
    np.testing.assert_allclose(ours, ref, atol=1e-5 * np.abs(ref).max())
    other = explain.activation.principal_projection(jnp.asarray(x, jnp.float32), not center)
    assert np.abs(np.asarray(other) - ref).max() > 1e-2 * np.abs(ref).max()


def test_an_int64_device_class_is_range_checked_before_it_is_narrowed():
    """Under x64, 2**32 + 3 cast to int32 first would wrap to the real class 3 and give its
    plausible map; it is out of range, so it is flagged like any other."""
    model = user_models.SmallCNN(num_classes=NUM_CLASSES)
    variables, images = user_models.init(model, size=8, batch=3)
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        given = jnp.array([[3], [2**32 + 3], [-(2**32) + 3]], jnp.int64)
        classes = Target(given=given).classes(jnp.zeros((3, NUM_CLASSES)))
        np.testing.assert_array_equal(classes[:, 0], [3, -1, -1])
        out = explain.explainer(model, variables, "grad_cam", layer="conv2")(images, given)
        np.testing.assert_array_equal(out.classes[:, 0], [3, -1, -1])
        assert np.isnan(np.asarray(out.cams[1:])).all() and np.isfinite(out.cams[0]).all()
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit", "Explicit, under set_mesh"])
def test_a_sharded_batch_gives_the_maps_of_the_unsharded_batch(axis_type):
    """On a mesh of Auto or Explicit axes (jax.make_mesh's default), with the mesh set or not.
    Explicit axes raised a ShardingTypeError (in CAM's gather of class weights, Score-CAM's
    reshapes); the methods now run with them Auto and the maps keep the batch's sharding.
    Every method was checked this way once (benchmarks/RESULTS.md); three kinds run here."""
    model = user_models.SmallCNN(num_classes=5)
    variables, images = user_models.init(model, size=16, batch=8)
    kind = getattr(jax.sharding.AxisType, axis_type.split(",")[0])
    sharded, mesh = on_mesh(images, kind)
    methods = (("cam", {"head": "classifier"}), ("grad_cam_pp", {}), ("score_cam", {}))
    for method, options in methods:
        f = explain.explainer(model, variables, method, layer="conv3", top_k=2, **options)
        want = f(images)
        if axis_type.endswith("set_mesh"):
            with jax.set_mesh(mesh):
                got = f(sharded)
        else:
            got = f(sharded)
        np.testing.assert_array_equal(got.classes, want.classes)
        np.testing.assert_allclose(got.cams, want.cams, atol=1e-5)
        assert got.cams.sharding.spec[0] == "data", method
