"""ACoL (issue 14): the heads against a numpy reading of wsolevaluation's AcolBase, its loss,
its training resuming bit-identically, and the WSOL evaluator and gallery scoring its maps."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax import checkpoint, experiment
from camjax.data import pipeline
from camjax.evaluation import run as run_lib
from camjax.models import ResNet50CAMTiny, VGG16GAPTiny
from camjax.models.acol import ACoLClassifier, erase_mask, localization_map
from camjax.train import loop, wsol_methods
from tests.train.test_loop import assert_resume_from_step_ends_equal, tiny_config


def minmax(maps):
    """The reference's normalize_tensor over the spatial axes of (..., h, w) maps."""
    lo = maps.min(axis=(-2, -1), keepdims=True)
    hi = maps.max(axis=(-2, -1), keepdims=True)
    return (maps - lo) / (hi - lo)


@pytest.fixture(scope="module")
def vgg_acol():
    model = VGG16GAPTiny(num_classes=5, output_stride=4, acol=0.7)
    images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.key(1, impl="rbg"), images)
    return model, variables, images


def test_head_b_reads_the_features_outside_head_a_region_of_the_label(vgg_acol):
    model, variables, images = vgg_acol
    labels = jnp.array([0, 3, 1, 4])
    logits, out = jax.jit(model.apply)(variables, images, labels=labels)
    maps_a = np.asarray(out["class_maps_a"])  # (B, h, w, C)
    feature = np.asarray(out["feature_map"])
    attention = minmax(maps_a[np.arange(4), :, :, np.asarray(labels)])  # (B, h, w)
    keep = (attention < 0.7).astype(np.float32)
    assert 0 < keep.mean() < 1, "the test needs some erased and some kept positions"
    np.testing.assert_array_equal(out["erase_mask"][..., 0], keep)
    # Head B, run alone on the numpy-erased features, gives the model's head-B maps.
    head_b = ACoLClassifier(5, features=64, name="head_b")
    maps_b = head_b.apply({"params": variables["params"]["head_b"]}, feature * keep[..., None])
    np.testing.assert_allclose(out["class_maps_b"], maps_b, rtol=1e-5, atol=1e-5)
    # Logits are the maps' spatial means; the localization map the max of both, normalised.
    np.testing.assert_allclose(logits, maps_a.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["logits_b"], maps_b.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    both = np.maximum(
        minmax(maps_a.transpose(0, 3, 1, 2)), minmax(np.asarray(maps_b).transpose(0, 3, 1, 2))
    )
    np.testing.assert_allclose(out["class_maps"], both.transpose(0, 2, 3, 1), atol=1e-6)


def test_erasing_at_threshold_one_takes_each_maps_peak_and_a_constant_map_keeps_all():
    """The reference erases where normalize_tensor(map) >= threshold (torch.ge), its division
    exact: at 1.0 exactly the peak of every map (a jitted reciprocal product missed ~12% of
    them), and a constant map (0 / 0 = NaN, never >= t) is not erased."""
    maps = np.random.default_rng(0).normal(size=(64, 7, 7, 3)).astype(np.float32)
    classes = np.arange(64) % 3
    erase = jax.jit(erase_mask, static_argnums=2)
    mask = np.asarray(erase(jnp.asarray(maps), jnp.asarray(classes), 1.0))[..., 0]
    own = maps[np.arange(64), :, :, classes]
    np.testing.assert_array_equal(mask == 0, own == own.max(axis=(1, 2), keepdims=True))
    flat = np.asarray(erase(jnp.zeros((2, 5, 5, 3)), jnp.array([0, 2]), 0.7))
    np.testing.assert_array_equal(flat, 1.0)


def test_a_class_map_constant_in_either_head_localizes_nothing_as_the_reference():
    """The reference's max of both normalised maps is NaN for a class whose map is constant in
    either head (normalize_tensor's 0 / 0; torch.max keeps a NaN), and its evaluation scores a
    NaN map as all zeros: camjax's map is 0 there, not the other head's map, and elsewhere the
    max of both."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 5, 5, 4)).astype(np.float32)
    a[0, :, :, 1] = 2.0  # image 0: head A's map of class 1 is constant (a dead head)
    b[1, :, :, 2] = 0.0  # image 1: head B's of class 2
    a[2, :, :, 3] = b[2, :, :, 3] = -1.0  # image 2: both heads' of class 3
    ours = np.asarray(jax.jit(localization_map)(a, b))
    with np.errstate(invalid="ignore"):
        both = np.maximum(minmax(a.transpose(0, 3, 1, 2)), minmax(b.transpose(0, 3, 1, 2)))
    reference = both.transpose(0, 2, 3, 1)
    nan = np.isnan(reference)
    assert nan[0, ..., 1].all() and nan[1, ..., 2].all() and nan[2, ..., 3].all()
    assert nan.sum() == 3 * 25
    np.testing.assert_array_equal(ours[nan], 0.0)
    np.testing.assert_allclose(ours[~nan], reference[~nan], atol=1e-6)


def test_without_labels_head_a_top1_class_is_erased(vgg_acol):
    model, variables, images = vgg_acol
    apply = jax.jit(model.apply)
    logits, unlabelled = apply(variables, images)
    top1 = jnp.argmax(logits, axis=-1)
    _, labelled = apply(variables, images, labels=top1)
    jax.tree.map(np.testing.assert_array_equal, unlabelled, labelled)
    _, other = apply(variables, images, labels=(top1 + 1) % 5)
    assert not np.array_equal(other["erase_mask"], labelled["erase_mask"])


def test_resnet_acol_heads_sit_on_layer4_and_train_with_batch_norm():
    """Shapes only (traced, not compiled: a tiny ResNet50 takes long to compile on 2 cores)."""
    model = ResNet50CAMTiny(num_classes=5, acol=0.7)
    images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(1), images)
    assert {"head_a", "head_b"} <= set(variables["params"]) and "head" not in variables["params"]
    labels = jax.ShapeDtypeStruct((2,), jnp.int32)
    (logits, out), _ = jax.eval_shape(
        lambda v, x, y: model.apply(v, x, True, y, mutable=["batch_stats"]),
        variables,
        images,
        labels,
    )
    assert logits.shape == out["logits_b"].shape == (2, 5)
    assert out["feature_map"].shape == (2, 4, 4, 128)  # layer4 at output stride 16
    assert out["class_maps"].shape == (2, 4, 4, 5)


def test_acol_loss_is_the_sum_of_both_heads_cross_entropies():
    rng = np.random.default_rng(0)
    logits_a, logits_b = rng.normal(size=(2, 3, 4)).astype(np.float32)
    labels = np.array([0, 3, 2])

    def ce(z, y):
        z = z - z.max(axis=1, keepdims=True)
        return np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]

    np.testing.assert_allclose(
        wsol_methods.acol_loss(jnp.asarray(logits_a), {"logits_b": logits_b}, labels),
        ce(logits_a, labels) + ce(logits_b, labels),
        rtol=1e-6,
    )


def test_bad_acol_configs_fail_in_one_line():
    config = tiny_config("unused")
    config.method.name = "acol"
    for bad in (1.5, 0.0):  # 0 would erase every position
        config.method.acol_threshold = bad
        with pytest.raises(ValueError, match="config.method.acol_threshold must be in"):
            wsol_methods.check_method(config.method)
    config.method.acol_threshold = 0.7
    config.model.dropout_rate = 0.5
    with pytest.raises(ValueError, match="dropout_rate=0"):
        experiment.build_model(config)
    config.model.dropout_rate = 0.0
    config.model.name = "googlenet_gap_tiny"
    with pytest.raises(ValueError, match="'acol' needs a model with its layers"):
        experiment.build_model(config)


@pytest.fixture(scope="module")
def acol_run(tmp_path_factory):
    """The tiny config trained 4 steps with ACoL, checkpoints at steps 2 and 4."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    config = tiny_config(data_dir, num_steps=4, checkpoint_every_steps=2)
    config.method.name = "acol"
    config.eval.num_gallery = 2
    workdir = tmp_path_factory.mktemp("acol") / "straight"
    return config, workdir, loop.train_and_evaluate(config, str(workdir))


@pytest.mark.slow
def test_acol_run_resumes_bit_identically(acol_run):
    config, straight_dir, straight = acol_run
    assert_resume_from_step_ends_equal(config, straight_dir, straight, resume_step=2)


@pytest.mark.slow
def test_evaluation_scores_the_gt_class_map_of_acol(acol_run, tmp_path):
    """The WSOL evaluator's maps of a class-map model are its 'class_maps' of the GT class
    (with the GT labels erasing, as the reference evaluates), and evaluate.py's path writes
    the protocol's metrics and a gallery from them."""
    config, straight_dir, state = acol_run
    workdir = tmp_path / "run"
    shutil.copytree(straight_dir, workdir)
    ev, variables, step = run_lib.restore_evaluator(config, str(workdir))
    assert step == 4
    batch = {
        "image": jax.random.randint(jax.random.key(0), (16, 64, 64, 3), 0, 256).astype(jnp.uint8),
        "label": jnp.arange(16) % 10,
    }
    logits, cams = jax.jit(ev._cams)(variables, batch)
    images = pipeline.normalize_images(batch["image"], config.data.mean, config.data.std)
    _, out = jax.jit(ev.model.apply)(variables, images, labels=batch["label"])
    expected = np.asarray(out["class_maps"])[np.arange(16), :, :, np.arange(16) % 10]
    np.testing.assert_allclose(cams, expected, atol=1e-5)
    plain = config.copy_and_resolve_references()
    plain.method.name = "cam"
    with pytest.raises(checkpoint.CheckpointError, match="model.wsol_method"):
        run_lib.restore_evaluator(plain, str(workdir))
    results = run_lib.run_evaluation(config, str(workdir))
    wsol = results["wsol"]["test"]
    assert 0 <= wsol["max_box_acc_v2"] <= 100 and 0 <= wsol["pxap"] <= 100
    assert json.load(open(workdir / "metrics.json"))["step"] == 4
    assert os.path.exists(workdir / "gallery" / "0001.png")
