"""config.eval.method and config.eval.faithfulness in the evaluator: every metric of a tiny
trained run for methods other than CAM, and CAM's own path untouched."""

import dataclasses
import os
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from camjax import cam as cam_lib
from camjax import experiment, explain
from camjax.data import pipeline
from camjax.evaluation import evaluator as evaluator_lib
from camjax.evaluation import faithfulness as faith_lib
from camjax.evaluation import gallery, pointing, report
from camjax.evaluation import run as run_lib


@pytest.fixture(scope="module")
def trained(tiny_run):
    """The session's tiny run, read only: these tests write their pictures elsewhere."""
    config, workdir = tiny_run
    ev, variables, step = run_lib.restore_evaluator(config, workdir)
    return config, workdir, ev, variables, step


def method_config(config, method, faithfulness=True):
    c = config.copy_and_resolve_references()
    c.eval.method = method
    c.eval.faithfulness.enabled = faithfulness
    c.eval.faithfulness.step = 256  # 17 points per curve at 64 x 64: seconds on a CPU
    return c


# Whole evaluations with faithfulness, seconds each on a CPU: the full suite's. The fast lane
# evaluates CAM's faithfulness (its pointing game too) and another method's WSOL metrics and
# report below; the faithfulness section of a whole evaluation's results is the full suite's.
@pytest.mark.slow
@pytest.mark.parametrize("method", ["grad_cam", "eigen_cam", "eigen_grad_cam"])
def test_every_metric_of_another_method(trained, method, capsys):
    config, _, ev, variables, step = trained
    c = method_config(config, method)
    e = evaluator_lib.Evaluator(c, ev.model, ev.mesh, ev.protocol)
    results, _ = run_lib.evaluate_variables(e, variables, step)
    assert results["method"] == {
        "name": method,
        "layer": "feature_map",
        "options": explain.default_options()[method],
    }
    f = results["faithfulness"]["test"]
    assert f["num_images"] == config.data.num_test and f["num_nan_maps"] == 0
    assert 0 <= f["average_drop"] <= 100 and 0 <= f["increase_in_confidence"] <= 100
    for k in ("deletion_auc", "insertion_auc"):
        assert 0 <= f[k] <= 1
    assert 0 <= f["pointing_game"] <= 100
    test = results["wsol"]["test"]
    assert test["num_images"] == config.data.num_test and 0 <= test["pxap"] <= 100
    report.print_report(results)
    out = capsys.readouterr().out
    assert f"maps: {method}" in out and "Deletion AUC" in out


@pytest.fixture(scope="module")
def cam_faithfulness(trained):
    """(Evaluator, summary) of CAM's faithfulness over the first 11 test images (one batch of
    16: 5 padding rows), evaluated once for the tests that read it."""
    config, _, ev, variables, _ = trained
    e = evaluator_lib.Evaluator(method_config(config, "cam"), ev.model, ev.mesh, ev.protocol)
    source = experiment.data_sources(config)["test"]
    return e, e.evaluate_faithfulness(variables, source, 11).summary()


def test_cam_is_the_default_and_the_method_of_a_legacy_config(trained, cam_faithfulness):
    """A saved config without the new fields means CAM at 'feature_map', no faithfulness (the
    CAM path itself is the code it was; metrics.json and the gallery of the default config
    were compared byte for byte with main's on a tiny run)."""
    config, _, ev, variables, _ = trained
    assert (ev.method, ev.layer, ev.faithfulness) == ("cam", "feature_map", None)
    legacy = config.copy_and_resolve_references()
    del legacy.eval["method"], legacy.eval["layer"], legacy.eval["faithfulness"]
    e = evaluator_lib.Evaluator(legacy, ev.model, ev.mesh, ev.protocol)
    assert (e.method, e.layer, e.faithfulness) == ("cam", "feature_map", None)
    # CAM's faithfulness, through the explainer, on a ragged (padded) first 11 images.
    _, f = cam_faithfulness
    assert f["num_images"] == 11 and 0 <= f["deletion_auc"] <= 1
    assert 0 <= f["pointing_game"] <= 100


def test_gallery_draws_the_chosen_method(trained, tmp_path):
    config, _, ev, variables, _ = trained
    c = method_config(config, "xgrad_cam", faithfulness=False)
    source = experiment.data_sources(config)["test"]
    paths = gallery.write_gallery(c, ev.model, variables, source, 0.2, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["0000.png", "0001.png"]
    assert os.path.getsize(tmp_path / "gallery.png") > 0
    # More pictures asked for than the split holds: one per image it has.
    short = [source[0]]
    paths = gallery.write_gallery(c, ev.model, variables, short, 0.2, str(tmp_path / "short"))
    assert [os.path.basename(p) for p in paths] == ["0000.png"]
    # A later evaluation of fewer pictures, or none, leaves none of the earlier ones beside its
    # metrics (another method's 0001.png stayed); a file of the user's there is kept.
    (tmp_path / "gallery" / "notes.txt").write_text("mine")
    gallery.write_gallery(c, ev.model, variables, short, 0.2, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "gallery")) == ["0000.png", "notes.txt"]
    c.eval.num_gallery = 0
    gallery.write_gallery(c, ev.model, variables, source, 0.2, str(tmp_path))
    assert os.listdir(tmp_path / "gallery") == ["notes.txt"]
    assert not os.path.exists(tmp_path / "gallery.png")


def test_gallery_draws_untrusted_and_unnormalised_maps_without_stopping(
    trained, tmp_path, monkeypatch
):
    """box_from_scoremap refuses NaN and maps outside [0, 1]: the gallery, at the end of an
    evaluation, gives an untrusted map (NaN, class -1) no box and boxes a raw map as before."""
    config, _, ev, variables, _ = trained
    c = method_config(config, "cam", faithfulness=False)
    c.eval.cam_normalization = ""  # no normalisation: raw maps
    source = experiment.data_sources(config)["test"]
    top1_maps = gallery._top1_maps

    def one_untrusted(*args):
        maps, classes = top1_maps(*args)
        return maps.at[0].set(jnp.nan), classes.at[0].set(-1)

    monkeypatch.setattr(gallery, "_top1_maps", one_untrusted)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's cast of NaN to a colour, too
        paths = gallery.write_gallery(c, ev.model, variables, source, 0.2, str(tmp_path))
    assert len(paths) == 2 and os.path.getsize(tmp_path / "gallery.png") > 0


def test_unknown_method_is_a_config_error(trained):
    config, _, ev, *_ = trained
    c = method_config(config, "grad_kam")
    with pytest.raises(ValueError, match="config.eval.method must be one of"):
        evaluator_lib.Evaluator(c, ev.model, ev.mesh, ev.protocol)


def test_a_layer_given_to_cam_is_a_config_error_not_ignored(trained):
    """--config.eval.layer=conv5_3 with the default method scored CAM at feature_map anyway,
    and nothing in the report or metrics.json said so."""
    config, _, ev, *_ = trained
    c = method_config(config, "cam")
    c.eval.layer = "conv5_3"
    with pytest.raises(ValueError, match=r"config.eval.layer is 'conv5_3', but CAM reads the "):
        evaluator_lib.Evaluator(c, ev.model, ev.mesh, ev.protocol)


def test_a_negative_max_images_is_a_config_error(trained):
    """Not an evaluation over no image (which ended in a KeyError), nor a view of negative
    length."""
    config, _, ev, *_ = trained
    c = method_config(config, "cam")
    c.eval.max_images = -3
    with pytest.raises(ValueError, match=r"max_images must be an int >= 0 \(0: all\); got -3"):
        evaluator_lib.Evaluator(c, ev.model, ev.mesh, ev.protocol)


@pytest.mark.parametrize("field, value", [("iou_threshold", 5.0), ("batch_size", "16")])
def test_an_iou_threshold_or_batch_size_no_evaluation_takes_names_its_field(trained, field, value):
    """IoU 5 (a percentage where a fraction is meant) was refused as 'iou_thresholds must be
    percentages', a field not set; a hand-edited "16" failed inside a format string."""
    config, _, ev, *_ = trained
    values = method_config(config, "cam").to_dict()
    values["eval"][field] = value  # as a hand-edited config.json reads
    c = ml_collections.ConfigDict(values)
    with pytest.raises(ValueError, match=rf"^config.eval.{field} must be "):
        evaluator_lib.Evaluator(c, ev.model, ev.mesh, ev.protocol)


def test_the_chosen_methods_options_reach_its_maps(trained, tmp_path, capsys):
    """config.eval.options.<method> is what the evaluator's explainer and the gallery run."""
    config, _, ev, variables, step = trained
    source = experiment.data_sources(config)["test"]
    pxap, pictures = {}, {}
    for center in (False, True):
        c = method_config(config, "eigen_grad_cam", faithfulness=False)
        c.eval.options.eigen_grad_cam.center = center
        c.eval.options.eigen_cam.center = not center  # another method's: not read
        e = evaluator_lib.Evaluator(c, ev.model, ev.mesh, ev.protocol)
        assert e.options == {"center": center}
        results, _ = run_lib.evaluate_variables(e, variables, step)
        # The option is recorded: the two runs' metrics.json told them apart by nothing.
        assert results["method"] == {
            "name": "eigen_grad_cam",
            "layer": "feature_map",
            "options": {"center": center},
        }
        assert "faithfulness" not in results
        report.print_report(results)
        assert "maps: eigen_grad_cam" in capsys.readouterr().out
        pxap[center] = results["wsol"]["test"]["pxap"]
        out = tmp_path / str(center)
        gallery.write_gallery(c, ev.model, variables, source, 0.2, str(out))
        pictures[center] = (out / "gallery.png").read_bytes()
    # The centred and uncentred projections of G * A rank pixels differently (RESULTS.md: PxAP
    # 46.87 against 80.93 on the default run).
    assert pxap[False] != pxap[True] and pictures[False] != pictures[True]
    legacy = method_config(config, "eigen_grad_cam", faithfulness=False)
    del legacy.eval["options"]  # a run saved before the field existed: the method's defaults
    assert evaluator_lib.method_options(legacy) == {}
    renamed = method_config(config, "grad_cam", faithfulness=False)
    with renamed.eval.options.unlocked():
        renamed.eval.options.grad_cam = {"relu": False}  # an option's name in an older camjax
    with pytest.raises(ValueError, match=r"options.grad_cam has no option 'relu'; its options: "):
        evaluator_lib.Evaluator(renamed, ev.model, ev.mesh, ev.protocol)
    with renamed.eval.options.unlocked():
        renamed.eval.options.grad_cam = {"rectify": "no"}  # the explainer's own type check
    with pytest.raises(ValueError, match=r"options.grad_cam.rectify must be a bool like its "):
        evaluator_lib.Evaluator(renamed, ev.model, ev.mesh, ev.protocol)


def test_another_methods_maps_are_its_raw_maps_of_the_gt_class(trained):
    """With a method other than CAM, the maps every metric scores are the method's raw maps of
    each image's GT class at its layer's resolution, not normalised (the evaluator normalises
    them as CAM's). On this GAP network with a linear head, Grad-CAM's channel weights are the
    head's GT-class column over h * w and CAM is >= 0 (ReLU features, a non-negative head), so
    Grad-CAM is CAM / (h * w) exactly; CAM's minimum is above 0, so a min-max map differs."""
    config, _, ev, variables, _ = trained
    e = evaluator_lib.Evaluator(
        method_config(config, "grad_cam", faithfulness=False), ev.model, ev.mesh, ev.protocol
    )
    source = experiment.data_sources(config)["test"]
    rows = [pipeline.EvalPreprocess(e.prep).map(source[i]) for i in range(16)]
    batch = {
        "image": np.stack([r["image"] for r in rows]),
        "label": np.array([r["label"] for r in rows], np.int32),
    }
    logits, maps = jax.jit(e._cams)(variables, batch)

    images = pipeline.normalize_images(batch["image"], config.data.mean, config.data.std)
    want_logits, out = ev.model.apply(variables, images, train=False)
    features = np.asarray(out["feature_map"], np.float64)  # (B, h, w, K)
    kernel = np.asarray(variables["params"]["head"]["kernel"], np.float64)  # (K, C)
    cams = np.einsum("bhwk,kb->bhw", features, kernel[:, batch["label"]])
    assert cams.min() > 0 and len(set(batch["label"])) > 3
    h, w = cams.shape[1:]
    np.testing.assert_allclose(maps, cams / (h * w), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-6)


def test_faithfulness_settings_are_the_configs_and_an_unknown_target_is_refused(trained):
    """Each field of config.eval.faithfulness reaches its setting; disabled means None; a target
    other than 'predicted' or 'label' is a config error, not the label's maps."""
    c = method_config(trained[0], "cam")
    f = c.eval.faithfulness
    f.step, f.chunk, f.variant, f.score, f.tolerance = 8, 3, "torchcam", "logit", 7.5
    assert evaluator_lib.faithfulness_settings(c) == faith_lib.FaithfulnessSettings(
        step=8, chunk=3, variant="torchcam", score="logit", tolerance=7.5
    )
    f.enabled = False
    assert evaluator_lib.faithfulness_settings(c) is None
    f.enabled, f.target = True, "gt"
    with pytest.raises(ValueError, match=r"target must be 'predicted' or 'label'; got 'gt'"):
        evaluator_lib.faithfulness_settings(c)


def test_faithfulness_explains_the_predicted_class_and_points_with_the_gt_class(
    trained, cam_faithfulness
):
    """evaluate_faithfulness's sums over 11 images (5 padding rows) are batch_sums' (pinned in
    test_faithfulness.py) of maps made here: CAM (the head's column of the class over the
    feature map) of each image's top-1 class by numpy's argmax of the logits (the default
    target, 'predicted'), bilinear to the image and min-max, for Average Drop and Increase
    (the curves take the same maps and classes; left out here, they cost seconds); and the
    GT class's map for the pointing game against the union of the GT boxes."""
    config, _, ev, variables, _ = trained
    e, got = cam_faithfulness
    assert config.eval.faithfulness.target == "predicted"
    source = experiment.data_sources(config)["test"]
    n, size = 11, config.data.image_size
    rows = [pipeline.EvalPreprocess(e.prep).map(source[i]) for i in range(n)]
    images = pipeline.normalize_images(
        np.stack([r["image"] for r in rows]), config.data.mean, config.data.std
    )
    labels = np.array([r["label"] for r in rows], np.int32)
    logits, out = ev.model.apply(variables, images, train=False)
    classes = np.argmax(np.asarray(logits), -1)
    assert 0 < np.sum(classes == labels) < n  # the two classes' maps differ somewhere
    kernel = variables["params"]["head"]["kernel"]

    def maps_of(k):
        cams = cam_lib.cams_for_classes(out["feature_map"], kernel, k)
        return cam_lib.postprocess(cams, (size, size), method="bilinear", normalize="minmax")

    boxes = np.stack([r["boxes"] for r in rows])
    num_boxes = np.array([r["num_boxes"] for r in rows])
    want = faith_lib.FaithfulnessAccumulator(e.faithfulness)
    want.update(
        faith_lib.batch_sums(
            lambda x: ev.model.apply(variables, x, train=False)[0],
            images,
            maps_of(classes),
            classes,
            np.ones(n, bool),
            dataclasses.replace(e.faithfulness, deletion_insertion=False),
            point_maps=maps_of(labels),
            gt_masks=pointing.box_masks(boxes, num_boxes, size, size),
            labels=labels,
            num_classes=config.model.num_classes,
        )
    )
    want = want.summary()
    assert got["num_images"] == want["num_images"] == n and "deletion_auc" not in want
    for k, v in want.items():
        assert got[k] == (v if isinstance(v, str) else pytest.approx(v, rel=1e-5, abs=1e-6)), k


class TrainFlagCNN(nn.Module):
    """conv-ReLU, a pool, conv-ReLU, global average pooling, a linear head; takes `train`."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(6, (3, 3), name="conv2")(x))
        return nn.Dense(3, name="head")(x.mean((1, 2)))


def test_gallery_maps_are_config_evals_explainer_at_its_layer_resize_and_normalisation():
    """The gallery's top-1 maps are those of config.eval's method, layer, options, resize
    method and normalisation (none: raw maps), none of them the default, on a tiny CNN."""
    model = TrainFlagCNN()
    x = jax.random.normal(jax.random.key(1), (2, 16, 12, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    ev = {"method": "grad_cam", "layer": "conv2", "resize_method": "bilinear"}
    ev |= {"cam_normalization": "", "options": {"grad_cam": {"rectify": False}}}
    config = ml_collections.ConfigDict({"eval": ev})
    maps, classes = gallery._top1_maps(config, model, variables, x)
    want = explain.explainer(
        model,
        variables,
        "grad_cam",
        layer="conv2",
        resize="bilinear",
        normalize=False,
        apply_kwargs={"train": False},
        rectify=False,
    )(x)
    assert float(want.cams.min()) < 0  # rectify=False reached the map
    np.testing.assert_array_equal(classes, want.classes[:, 0])
    np.testing.assert_allclose(maps, want.cams[:, 0], rtol=1e-6, atol=1e-7)
