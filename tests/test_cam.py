"""Tests for camjax/cam.py: the GAP identity, batching, top-k/all agreement, errors, retracing."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax import cam as cam_lib
from camjax import explain
from camjax.models import VGG16GAPTiny
from tests.meshes import on_mesh

NUM_CLASSES = 7


@pytest.fixture(scope="module")
def model_and_vars():
    model = VGG16GAPTiny(num_classes=NUM_CLASSES)
    images = jax.random.normal(jax.random.key(0), (4, 48, 48, 3))
    # Jitted: op by op, the network's init and apply took seconds to dispatch.
    variables = jax.jit(model.init)(jax.random.key(1, impl="rbg"), images[:1])
    # A random non-zero head bias, so the identity test sees the bias term.
    variables["params"]["head"]["bias"] = jax.random.normal(jax.random.key(2), (NUM_CLASSES,))
    logits, out = jax.jit(model.apply)(variables, images)
    return model, variables, images, logits, out["feature_map"]


def test_gap_identity_every_class(model_and_vars):
    """mean_xy CAM_c + b_c == logit_c for every class of every image."""
    _, variables, _, logits, fmap = model_and_vars
    kernel = variables["params"]["head"]["kernel"]
    bias = variables["params"]["head"]["bias"]
    cams = cam_lib.cams_all_classes(fmap, kernel)
    assert cams.shape == (4, NUM_CLASSES, 3, 3)
    np.testing.assert_allclose(jnp.mean(cams, axis=(2, 3)) + bias, logits, rtol=1e-5, atol=1e-5)


def test_per_class_top_k_and_all_agree(model_and_vars):
    _, variables, _, logits, fmap = model_and_vars
    kernel = variables["params"]["head"]["kernel"]
    all_cams = cam_lib.cams_all_classes(fmap, kernel)
    classes = jnp.array([0, 3, 6, 2])
    one = cam_lib.cams_for_classes(fmap, kernel, classes)
    np.testing.assert_allclose(one, all_cams[jnp.arange(4), classes], rtol=1e-5, atol=1e-7)
    top, top_classes = cam_lib.cams_top_k(fmap, kernel, logits, 3)
    np.testing.assert_array_equal(top_classes, jnp.argsort(-logits, axis=1)[:, :3])
    np.testing.assert_allclose(
        top, jnp.take_along_axis(all_cams, top_classes[..., None, None], 1), rtol=1e-5, atol=1e-7
    )
    many = cam_lib.cams_for_classes(fmap, kernel, top_classes)
    np.testing.assert_allclose(many, top, rtol=1e-5, atol=1e-7)


def test_class_cams_of_a_batch_sharded_on_a_mesh_with_explicit_axes():
    """jax.make_mesh's default axes raised a ShardingTypeError in the gather of each image's
    class weights; the CAMs now equal the unsharded batch's and keep its sharding."""
    rng = np.random.default_rng(0)
    fmap = rng.normal(size=(8, 3, 3, 6)).astype(np.float32)
    kernel = rng.normal(size=(6, 5)).astype(np.float32)
    logits = rng.normal(size=(8, 5)).astype(np.float32)
    classes = np.arange(8) % 5
    class_maps = rng.normal(size=(8, 3, 3, 5)).astype(np.float32)
    on = lambda x: on_mesh(x)[0]  # noqa: E731
    for got, want in (
        (cam_lib.cams_for_classes(on(fmap), kernel, on(classes)),
         cam_lib.cams_for_classes(fmap, kernel, classes)),
        (cam_lib.cams_top_k(on(fmap), kernel, on(logits), 2)[0],
         cam_lib.cams_top_k(fmap, kernel, logits, 2)[0]),
        (jax.jit(cam_lib.class_maps_of)(on(class_maps), on(classes)),
         cam_lib.class_maps_of(class_maps, classes)),
    ):  # fmt: skip
        np.testing.assert_array_equal(got, want)
        assert got.sharding.spec[0] == "data"


def test_vmap_equals_per_example_loop(model_and_vars):
    _, variables, _, _, fmap = model_and_vars
    kernel = variables["params"]["head"]["kernel"]
    classes = jnp.array([1, 1, 5, 0])
    batched = cam_lib.cams_for_classes(fmap, kernel, classes)
    vmapped = jax.vmap(lambda f, c: cam_lib.cams_for_classes(f[None], kernel, c[None])[0])(
        fmap, classes
    )
    loop = np.stack(
        [
            np.einsum("hwk,k->hw", np.asarray(fmap[i]), np.asarray(kernel[:, c]))
            for i, c in enumerate(np.asarray(classes))
        ]
    )
    np.testing.assert_allclose(batched, loop, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batched, vmapped, rtol=1e-6, atol=1e-7)


def test_divide_per_map_rounds_as_numpy_and_torch_do():
    """The training methods' min-max (ACoL, SPG, Bridging) divide by a per-map span as their
    references do; jitted, a plain division comes out an ulp off in ~24% of these quotients."""
    maps = np.random.default_rng(0).normal(size=(500, 7, 7)).astype(np.float32)
    shifted = maps - maps.min(axis=(1, 2), keepdims=True)
    span = shifted.max(axis=(1, 2), keepdims=True)
    out = np.asarray(jax.jit(cam_lib.divide_per_map)(shifted, span))
    np.testing.assert_array_equal(out, shifted / span)
    assert np.all(out.max(axis=(1, 2)) == 1.0)
    maps[0] = 0.25  # a constant map: the constant asked for
    minmax = jax.jit(cam_lib.minmax_per_map, static_argnums=1)
    out = np.asarray(minmax(maps, 0.0))
    np.testing.assert_array_equal(out[1:], shifted[1:] / span[1:])
    np.testing.assert_array_equal(out[0], 0.0)
    assert np.all(np.isnan(np.asarray(minmax(maps, np.nan))[0]))


def test_the_evaluations_normalisations_divide_as_numpy_does():
    """normalize_minmax (the WSOL protocol's, as the reference's normalize_scoremap) and
    normalize_max divide by the map's span or peak, not by XLA's product with its reciprocal
    (an ulp off in ~24% of these quotients), jitted and batched as the evaluation runs them."""
    maps = np.random.default_rng(1).normal(size=(500, 7, 9)).astype(np.float32)
    shifted = maps - maps.min(axis=(1, 2), keepdims=True)
    out = np.asarray(jax.jit(cam_lib.normalize_minmax)(maps))
    np.testing.assert_array_equal(out, shifted / shifted.max(axis=(1, 2), keepdims=True))
    positive = np.abs(maps)
    out = np.asarray(jax.jit(cam_lib.normalize_max)(positive))
    np.testing.assert_array_equal(out, positive / positive.max(axis=(1, 2), keepdims=True))


def test_normalize_minmax_degenerate_maps_become_zero():
    maps = jnp.stack(
        [
            jnp.full((4, 4), 3.0),  # constant
            jnp.arange(16.0).reshape(4, 4).at[0, 0].set(jnp.nan),  # NaN
            jnp.arange(16.0).reshape(4, 4).at[1, 1].set(jnp.inf),  # inf
            jnp.arange(16.0).reshape(4, 4) - 8,
        ]
    )
    out = cam_lib.normalize_minmax(maps)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[:3], 0.0)
    np.testing.assert_allclose(out[3], np.arange(16.0).reshape(4, 4) / 15)


def test_constant_maps_resized_in_float32_normalize_to_zero_as_in_the_reference():
    """A constant 14x14 CAM upsampled bicubic to 224 keeps a few-ulp float32 ripple; the
    reference (float64 cv2.resize of the float32 CAM) keeps it exactly constant and zeroes it.
    normalize_minmax must zero it too, at any magnitude, yet keep a small real span."""
    rng = np.random.default_rng(0)
    values = (rng.standard_normal(60) * 10.0 ** rng.uniform(-20, 20, 60)).astype(np.float32)
    values = np.concatenate([values, np.float32([0.0, 1.0, -3.0, 7.3e-3, 1e30, -1e-30])])
    maps = np.broadcast_to(values[:, None, None], (values.size, 14, 14))
    up = cam_lib.postprocess(jnp.asarray(maps), (224, 224), normalize=False)
    rippled = np.asarray(up.max((1, 2)) > up.min((1, 2)))
    assert rippled.sum() > values.size // 2  # the float32 resize does ripple...
    for m in maps[rippled][:5]:  # ...where the reference's float64 resize does not.
        ref = cv2.resize(m.astype(np.float64), (224, 224), interpolation=cv2.INTER_CUBIC)
        assert ref.min() == ref.max()
    np.testing.assert_array_equal(cam_lib.postprocess(jnp.asarray(maps), (224, 224)), 0.0)
    bilinear = cam_lib.postprocess(jnp.asarray(maps), (224, 224), method="bilinear")
    np.testing.assert_array_equal(bilinear, 0.0)
    positive = values > 0
    out = cam_lib.postprocess(jnp.asarray(maps[positive]), (224, 224), normalize="max")
    np.testing.assert_array_equal(out, 1.0)  # a positive constant over its max

    # A real span of 1e-3 or 1e-5 of the magnitude is kept and normalised as the reference does.
    ramp = np.linspace(0, 1, 14 * 14, dtype=np.float64).reshape(14, 14)
    for magnitude, rel in [(1.0, 1e-3), (1e6, 1e-3), (-5e-8, 1e-3), (3.0, 1e-5)]:
        m = np.float32(magnitude) * (1 + np.float32(rel) * ramp.astype(np.float32))
        ours = np.asarray(cam_lib.postprocess(jnp.asarray(m[None]), (224, 224)))[0]
        ref = cv2.resize(m.astype(np.float64), (224, 224), interpolation=cv2.INTER_CUBIC)
        ref = (ref - ref.min()) / (ref.max() - ref.min())
        assert ours.min() == 0.0 and ours.max() == 1.0
        # Within the float32 ripple, a few ulps of the magnitude, relative to the span.
        np.testing.assert_allclose(ours, ref, atol=8 * np.finfo(np.float32).eps / rel)


def test_normalize_max_is_the_papers_fraction_of_the_max():
    """normalize_max keeps a map's floor (min-max would stretch it to 0) and clips negatives."""
    ramp = jnp.arange(16.0).reshape(4, 4)
    maps = jnp.stack([ramp + 16, ramp - 8, jnp.full((4, 4), -2.0), ramp.at[0, 0].set(jnp.nan)])
    out = np.asarray(cam_lib.normalize_max(maps))
    np.testing.assert_allclose(out[0], (np.arange(16.0).reshape(4, 4) + 16) / 31)
    np.testing.assert_allclose(out[1], np.maximum(np.arange(16.0).reshape(4, 4) - 8, 0) / 7)
    np.testing.assert_array_equal(out[2:], 0.0)  # no positive value; a NaN
    # The paper's 20%-of-max threshold keeps every pixel of the first map, min-max only 80%.
    assert (out[0] >= 0.2).all() and (cam_lib.normalize_minmax(maps[0]) >= 0.2).mean() < 0.85
    via = cam_lib.postprocess(maps, None, normalize="max")
    np.testing.assert_array_equal(via, out)
    with pytest.raises(ValueError, match="normalize must be"):
        cam_lib.postprocess(maps, None, normalize="l2")


def test_postprocess_relu_resize_normalize():
    cams = jnp.array([[[-1.0, 0.0], [2.0, 4.0]]])
    assert cam_lib.postprocess(cams, (2, 2), normalize=False, relu=True).min() == 0.0
    up = cam_lib.postprocess(cams, (8, 8), method="bilinear")
    assert up.shape == (1, 8, 8)
    assert float(up.min()) == 0.0 and float(up.max()) == 1.0


def test_postprocess_applies_relu_before_resizing():
    """ReLU, then resize (the documented order, Grad-CAM's): a negative pixel next to a
    positive one adds nothing to the upsampled map, where ReLU after the resize would leave
    the positive pixel's interpolated values dragged down. Expected: float32 cv2.resize of
    the ReLU'd map."""
    cams = np.float32([[[-4.0, 1.0, 3.0], [2.0, -1.0, 0.5]]])
    want = cv2.resize(np.maximum(cams[0], 0), (12, 8), interpolation=cv2.INTER_LINEAR)
    got = cam_lib.postprocess(
        jnp.asarray(cams), (8, 12), method="bilinear", normalize=False, relu=True
    )
    np.testing.assert_allclose(got[0], want, rtol=0, atol=1e-6)


def test_cam_fn_top_k_classes_all_and_identity(model_and_vars):
    model, variables, images, logits, fmap = model_and_vars
    f = explain.cam_fn(model, variables, top_k=2, size=None, normalize=False)
    out = f(images)
    np.testing.assert_allclose(out.logits, logits, rtol=1e-5, atol=1e-5)
    assert out.cams.shape == (4, 2, 3, 3) and out.classes.shape == (4, 2)
    bias = variables["params"]["head"]["bias"]
    np.testing.assert_allclose(
        out.cams.mean(axis=(2, 3)) + bias[out.classes],
        jnp.take_along_axis(logits, out.classes, 1),
        rtol=1e-5,
        atol=1e-5,
    )
    given = f(images, jnp.array([4, 4, 4, 4]))
    assert given.cams.shape == (4, 1, 3, 3) and np.all(given.classes == 4)
    every = explain.cam_fn(model, variables, top_k=None)(images)
    assert every.cams.shape == (4, NUM_CLASSES, 48, 48)
    assert float(every.cams.min()) >= 0.0 and float(every.cams.max()) <= 1.0


def test_cam_fn_compiles_once_per_shape(model_and_vars):
    model, variables, images, _, _ = model_and_vars
    traces = []
    orig_apply = model.apply

    class Counting(type(model)):
        pass

    counting = Counting(num_classes=NUM_CLASSES, width=model.width)
    del orig_apply

    def apply(*args, **kwargs):
        traces.append(1)
        return Counting.apply(counting, *args, **kwargs)

    object.__setattr__(counting, "apply", apply)
    f = explain.cam_fn(counting, variables)
    for seed in range(3):
        f(images + seed)
    assert len(traces) == 1
    f(images[:2])  # a new batch size is a new shape: exactly one more trace
    f(images[:2] * 2)
    assert len(traces) == 2


@pytest.mark.parametrize(
    ("fmap_shape", "kernel_shape", "classes", "match"),
    [
        ((2, 3, 3), (8, NUM_CLASSES), [0, 1], r"\(batch, height, width, channels\)"),
        ((2, 3, 3, 5), (8, NUM_CLASSES), [0, 1], r"channels=5"),
        ((2, 3, 3, 8), (8, NUM_CLASSES), [0, 7], r"\[0, 6\]"),
        ((2, 3, 3, 8), (8, NUM_CLASSES), [0, -1], r"\[0, 6\]"),
        ((2, 3, 3, 8), (8, NUM_CLASSES), [0, 1, 2], r"shape \(2,\) or \(2, n\)"),
        ((2, 3, 3, 8), (8, NUM_CLASSES), [0.0, 1.0], "integers"),
    ],
)
def test_bad_inputs_name_the_expected_shape_or_range(fmap_shape, kernel_shape, classes, match):
    with pytest.raises(ValueError, match=match):
        cam_lib.cams_for_classes(jnp.zeros(fmap_shape), jnp.zeros(kernel_shape), jnp.array(classes))


def test_top_k_and_cam_fn_errors(model_and_vars):
    model, variables, images, logits, fmap = model_and_vars
    kernel = variables["params"]["head"]["kernel"]
    with pytest.raises(ValueError, match=r"k must be in \[1, 7\]"):
        cam_lib.cams_top_k(fmap, kernel, logits, 8)
    with pytest.raises(ValueError, match="logits must have shape"):
        cam_lib.cams_top_k(fmap, kernel, logits[:, :3], 2)
    with pytest.raises(ValueError, match="top_k"):
        explain.cam_fn(model, variables, top_k=0)
    f = explain.cam_fn(model, variables)
    with pytest.raises(ValueError, match=r"\(batch, height, width, channels\)"):
        f(images[..., 0])
    with pytest.raises(ValueError, match=r"look channels-first \(NCHW\).*transpose\(0, 2, 3, 1\)"):
        f(images.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match=r"\[0, 6\]"):
        f(images, np.array([0, 1, 2, 9]))
    with pytest.raises(ValueError, match="head"):
        explain.cam_fn(model, {"params": {}})


def test_cam_fn_rejects_what_the_models_do_not_take(model_and_vars):
    model, variables, images, _, _ = model_and_vars
    f = explain.cam_fn(model, variables)
    pixels = np.zeros((2, 48, 48, 3), np.uint8)
    with pytest.raises(ValueError, match=r"floating point, normalised .*got dtype uint8"):
        f(pixels)
    with pytest.raises(ValueError, match="got dtype bool"):
        f(pixels.astype(bool))
    with pytest.raises(ValueError, match=r"an array \(numpy or jax\), not a list"):
        f([np.asarray(images[0])])
    for bad in ("5", 2.0, True):
        with pytest.raises(ValueError, match=r"top_k must be an int in \[1, 7\] or None"):
            explain.cam_fn(model, variables, top_k=bad)
    # Classes as a Python list are fine: they are only indices.
    out = f(images, [0, 1, 2, 3])
    np.testing.assert_array_equal(out.classes[:, 0], [0, 1, 2, 3])


def test_out_of_range_classes_under_a_callers_jit_are_flagged_not_zero(model_and_vars):
    """Under jit the indices cannot be checked: the map is NaN and the class -1 (clamp and
    flag), never a plausible all-zero or clamped-class map."""
    model, variables, images, _, fmap = model_and_vars
    kernel = variables["params"]["head"]["kernel"]
    f = explain.cam_fn(model, variables)
    out = jax.jit(f)(images, jnp.array([0, NUM_CLASSES, -1, 3]))
    np.testing.assert_array_equal(out.classes[:, 0], [0, -1, -1, 3])
    cams, good = np.asarray(out.cams), [0, 3]
    assert np.isnan(cams[1:3]).all() and np.isfinite(cams[good]).all()
    np.testing.assert_array_equal(cams[good], np.asarray(f(images, jnp.arange(4)).cams)[good])
    raw = np.asarray(jax.jit(cam_lib.cams_for_classes)(fmap, kernel, jnp.array([0, 99, 2, 3])))
    assert np.isnan(raw[1]).all() and np.isfinite(raw[[0, 2, 3]]).all()


def test_the_first_index_past_the_last_class_is_flagged_under_a_callers_jit():
    """Indices C and -1, one past either end (an off-by-one label, a 'background' class C),
    are clamped for the gather: they must give NaN maps, not class C - 1's or class 0's map.
    The in-range rows equal the einsum of the feature map with the class's kernel column."""
    rng = np.random.default_rng(4)
    fmap = rng.normal(size=(4, 3, 2, 6)).astype(np.float32)
    kernel = rng.normal(size=(6, 5)).astype(np.float32)
    classes = jnp.array([4, 5, -1, 0])
    cams = np.asarray(jax.jit(cam_lib.cams_for_classes)(fmap, kernel, classes))
    assert np.isnan(cams[1:3]).all()
    for i, c in ((0, 4), (3, 0)):
        np.testing.assert_allclose(cams[i], fmap[i] @ kernel[:, c], rtol=1e-5, atol=1e-6)
    maps = jax.jit(cam_lib.class_maps_of)(jnp.asarray(fmap[..., :5]), classes)
    assert np.isnan(np.asarray(maps)[1:3]).all()


@pytest.mark.parametrize("normalize", ["minmax", "max"])
def test_every_normalised_map_peaks_at_exactly_one(normalize):
    """XLA divides by a per-map scalar as a product with its reciprocal, which left the peak of
    ~15% of maps an ulp below 1 (jax 0.10, CPU); the reference's `cam /= cam.max()` puts it at
    exactly 1, the top quantisation level."""
    rng = np.random.default_rng(0)
    scale = 10.0 ** rng.uniform(-3, 3, (256, 1, 1))
    maps = (rng.standard_normal((256, 14, 14)) * scale).astype(np.float32)
    out = np.asarray(cam_lib.postprocess(jnp.asarray(maps), (64, 64), normalize=normalize))
    np.testing.assert_array_equal(out.max(axis=(1, 2)), 1.0)
    assert out.min() >= 0.0
