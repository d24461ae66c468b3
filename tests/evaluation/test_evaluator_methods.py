"""config.eval.method and config.eval.faithfulness in the evaluator: every metric of a tiny
trained run for methods other than CAM, and CAM's own path untouched."""

import json
import os

import pytest

from camjax.evaluation import evaluator as evaluator_lib
from camjax.evaluation import report
from camjax.train import loop
from configs import tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = tiny.get_config()
    config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
    workdir = str(tmp_path_factory.mktemp("run"))
    loop.train_and_evaluate(config, workdir)
    ev, variables, step = evaluator_lib.restore_evaluator(config, workdir)
    return config, workdir, ev, variables, step


def method_config(config, method, faithfulness=True):
    c = config.copy_and_resolve_references()
    c.eval.method = method
    c.eval.faithfulness.enabled = faithfulness
    c.eval.faithfulness.step = 256  # 17 points per curve at 64 x 64: seconds on a CPU
    return c


@pytest.mark.parametrize("method", ["grad_cam", "eigen_cam"])
def test_every_metric_of_another_method(trained, method, capsys):
    config, _, ev, variables, step = trained
    c = method_config(config, method)
    e = evaluator_lib.Evaluator(c, ev.model, ev.mesh, ev.protocol)
    results, _ = evaluator_lib.evaluate_variables(e, variables, step)
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


def test_cam_path_and_its_results_without_the_new_fields(trained):
    """method 'cam' is the config default and the same as a saved config without the field;
    enabling faithfulness adds a section and changes nothing else."""
    config, _, ev, variables, step = trained
    base, _ = evaluator_lib.evaluate_variables(ev, variables, step)
    legacy = config.copy_and_resolve_references()
    del legacy.eval["method"], legacy.eval["layer"], legacy.eval["faithfulness"]
    e = evaluator_lib.Evaluator(legacy, ev.model, ev.mesh, ev.protocol)
    assert evaluator_lib.evaluate_variables(e, variables, step)[0] == base
    e = evaluator_lib.Evaluator(method_config(config, "cam"), ev.model, ev.mesh, ev.protocol)
    with_faith, _ = evaluator_lib.evaluate_variables(e, variables, step)
    assert with_faith.pop("faithfulness")["test"]["num_images"] == config.data.num_test
    assert with_faith == base and "method" not in base


def test_run_evaluation_draws_the_chosen_method(trained, tmp_path):
    config, workdir, *_ = trained
    c = method_config(config, "layer_cam", faithfulness=False)
    for name in ("checkpoints", "config.json"):
        src = os.path.join(workdir, name)
        if os.path.exists(src):
            os.symlink(src, tmp_path / name)
    results = evaluator_lib.run_evaluation(c, str(tmp_path))
    assert results["method"]["name"] == "layer_cam" and "faithfulness" not in results
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f) == json.loads(json.dumps(results))
    assert sorted(os.listdir(tmp_path / "gallery")) == ["0000.png", "0001.png"]


def test_unknown_method_is_a_config_error(trained):
    config, _, ev, *_ = trained
    c = method_config(config, "grad_kam")
    with pytest.raises(ValueError, match="config.eval.method must be one of"):
        evaluator_lib.Evaluator(c, ev.model, ev.mesh, ev.protocol)
