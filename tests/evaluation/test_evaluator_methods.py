"""config.eval.method and config.eval.faithfulness in the evaluator: every metric of a tiny
trained run for methods other than CAM, and CAM's own path untouched."""

import os
import warnings

import jax.numpy as jnp
import ml_collections
import pytest

from camjax import experiment
from camjax.evaluation import evaluator as evaluator_lib
from camjax.evaluation import gallery, report
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
    assert results["method"] == {"name": method, "layer": "feature_map"}
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


def test_cam_is_the_default_and_the_method_of_a_legacy_config(trained):
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
    e = evaluator_lib.Evaluator(method_config(config, "cam"), ev.model, ev.mesh, ev.protocol)
    source = experiment.data_sources(config)["test"]
    f = e.evaluate_faithfulness(variables, source, 11).summary()
    assert f["num_images"] == 11 and 0 <= f["deletion_auc"] <= 1
    assert 0 <= f["pointing_game"] <= 100


def test_gallery_draws_the_chosen_method(trained, tmp_path):
    config, _, ev, variables, _ = trained
    c = method_config(config, "xgrad_cam", faithfulness=False)
    source = experiment.data_sources(config)["test"]
    paths = gallery.write_gallery(c, ev.model, variables, source, 0.2, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["0000.png", "0001.png"]
    assert os.path.getsize(tmp_path / "gallery.png") > 0


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


def test_a_negative_max_images_is_a_config_error(trained):
    """Not an evaluation over no image (which ended in a KeyError), nor a view of negative
    length."""
    config, _, ev, *_ = trained
    c = method_config(config, "cam")
    c.eval.max_images = -3
    with pytest.raises(ValueError, match=r"config.eval.max_images must be >= 0 \(0: all\); got -3"):
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
        assert results["method"] == {"name": "eigen_grad_cam", "layer": "feature_map"}
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
