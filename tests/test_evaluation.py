"""Tests for camjax/evaluation.py and the entry points' error paths, on the embedded dataset."""

import json
import os

import numpy as np
import pytest

from camjax import evaluation, experiment
from camjax.train import checkpoint, loop
from configs import googlenet_gap_imagenet, tiny, vgg16_gap_imagenet


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    config = tiny.get_config()
    config.data.data_dir = data_dir
    workdir = str(tmp_path_factory.mktemp("run"))
    loop.train_and_evaluate(config, workdir)
    return config, workdir


def test_run_evaluation_writes_metrics_and_gallery(trained):
    config, workdir = trained
    results = evaluation.run_evaluation(config, workdir)
    with open(os.path.join(workdir, "metrics.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(results))
    assert saved["step"] == config.train.num_steps
    tuned = saved["test_at_val_threshold"]
    assert tuned["num_images"] == config.data.num_test
    for key in ("top1_cls", "top5_cls", "top1_loc", "top5_loc", "gt_known_loc"):
        assert 0.0 <= tuned[key] <= 100.0
    # Localization correct implies GT-known correct; top-1 implies top-5.
    assert tuned["top1_loc"] <= tuned["top5_loc"] <= tuned["gt_known_loc"]
    assert saved["test_at_fixed_threshold"]["threshold"] == pytest.approx(0.2)
    # The chosen threshold is the validation split's best, reported on test.
    curve = saved["test_gt_known_loc_curve"]
    assert saved["test_gt_known_loc_oracle_max"] == pytest.approx(max(curve.values()))
    pictures = sorted(os.listdir(os.path.join(workdir, "gallery")))
    assert pictures == ["0000.png", "0001.png"]
    assert os.path.getsize(os.path.join(workdir, "gallery.png")) > 0


def test_evaluator_threshold_chosen_on_validation(trained):
    config, workdir = trained
    model = experiment.build_model(config)
    mesh = experiment.make_mesh()
    tx = loop.create_optimizer(config.optim, config.train.num_steps)
    manager = checkpoint.create_manager(workdir, 2)
    state = checkpoint.restore(manager, loop.abstract_train_state(config, model, tx, mesh), config)
    ev = evaluation.Evaluator(config, model, mesh)
    sources = experiment.data_sources(config)
    val = ev.evaluate({"params": state.params}, sources["validation"])
    again = ev.evaluate({"params": state.params}, sources["validation"])
    assert val.counts["n"] == config.data.num_validation
    for k in val.counts:
        np.testing.assert_array_equal(val.counts[k], again.counts[k])  # deterministic
    half = ev.evaluate({"params": state.params}, sources["validation"], max_images=5)
    assert half.counts["n"] == 5


def test_no_checkpoint_is_a_clear_error(tmp_path, data_dir):
    config = tiny.get_config()
    config.data.data_dir = data_dir
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        evaluation.run_evaluation(config, str(tmp_path))


def test_wrong_config_for_checkpoint_names_the_difference(trained):
    config, workdir = trained
    other = tiny.get_config()
    other.data.data_dir = config.data.data_dir
    other.model.width = 1 / 8
    with pytest.raises(checkpoint.CheckpointError, match=r"width: checkpoint 0.0625, config 0.125"):
        evaluation.run_evaluation(other, workdir)


def test_unknown_model_and_dataset_names(tmp_path):
    config = tiny.get_config()
    config.model.name = "resnet_gap"
    with pytest.raises(ValueError, match="Unknown model 'resnet_gap'"):
        experiment.build_model(config)
    config = tiny.get_config()
    config.data.name = "imagenet"
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'"):
        experiment.data_sources(config)
    config = tiny.get_config()
    config.model.output_stride = 32
    with pytest.raises(ValueError, match="output_stride must be 4, 8 or 16"):
        loop.train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("module", [vgg16_gap_imagenet, googlenet_gap_imagenet])
def test_full_size_configs_run_a_step_at_224(module, data_dir, tmp_path):
    """The paper-size networks and solvers build and step on the embedded data at 224."""
    config = module.get_config()
    config.data.data_dir = data_dir
    config.data.num_train, config.data.num_validation, config.data.num_test = 16, 8, 8
    config.data.batch_size = config.eval.batch_size = 8
    config.train.num_steps = 1
    config.train.eval_every_steps = 0
    config.eval.num_gallery = 1
    config.eval.threshold_grid_step = 0.25
    state = loop.train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 1
    assert state.params["cam_conv"]["kernel"].shape[-1] == 1024
    results = evaluation.run_evaluation(config, str(tmp_path))
    assert results["test_at_val_threshold"]["num_images"] == 8
