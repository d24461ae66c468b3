"""Tests for camjax/checkpoint.py: the run's saved config and the variables-only restore."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from camjax import checkpoint, experiment
from camjax.train import optim
from camjax.train import state as train_state
from configs import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A workdir holding one checkpoint (step 1) of an untrained tiny model, as train.py saves."""
    config = tiny.get_config()
    config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
    config.eval.num_gallery = 1
    workdir = str(tmp_path_factory.mktemp("run"))
    model = experiment.build_model(config)
    tx = optim.create_optimizer(config.optim, config.train.num_steps)
    state, _ = train_state.create_train_state(config, model, tx, experiment.make_mesh())
    manager = checkpoint.create_manager(workdir, 2)
    checkpoint.save(manager, 1, state, config)
    manager.wait_until_finished()
    manager.close()
    return config, workdir, state


def test_the_run_config_is_saved_beside_the_checkpoints(saved_run):
    config, workdir, _ = saved_run
    loaded = checkpoint.load_run_config(workdir)
    assert json.loads(loaded.to_json()) == json.loads(config.to_json())
    with pytest.raises(AttributeError):
        loaded.data.nmae = "typo"  # locked, as a config file's is


def test_differences_from_the_run_config_are_listed(saved_run):
    config, workdir, _ = saved_run
    assert checkpoint.run_config_differences(workdir, config) == ""
    other = config.copy_and_resolve_references()
    other.optim.learning_rate = 0.5
    other.eval.top_k = 3
    assert checkpoint.run_config_differences(workdir, other) == (
        "eval.top_k: run 5, given 3; optim.learning_rate: run 0.001, given 0.5"
    )


def test_missing_or_broken_run_config_is_a_clear_error(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match=r"no config.json in .*--config"):
        checkpoint.load_run_config(str(tmp_path))
    (tmp_path / "config.json").write_text('{"seed": ')
    with pytest.raises(checkpoint.CheckpointError, match=r"config.json is not valid JSON"):
        checkpoint.load_run_config(str(tmp_path))


def test_restore_variables_reads_the_model_variables_only(saved_run):
    config, workdir, state = saved_run
    replicated = experiment.replicated(experiment.make_mesh())
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        {"params": state.params, "batch_stats": {}},
    )
    manager = checkpoint.create_manager(workdir, 2)
    variables, step = checkpoint.restore_variables(manager, abstract, config)
    assert step == 1 and set(variables) == {"params", "batch_stats"}
    pairs = zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(state.params), strict=True)
    for got, want in pairs:
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    other = config.copy_and_resolve_references()
    other.model.width = 1 / 8
    with pytest.raises(checkpoint.CheckpointError, match=r"width: checkpoint 0.0625, config 0.125"):
        checkpoint.restore_variables(manager, abstract, other)
    manager.close()


def evaluate_cli(*args):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "evaluate.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_evaluate_needs_only_the_workdir(saved_run):
    config, workdir, _ = saved_run
    done = evaluate_cli(f"--workdir={workdir}")
    assert done.returncode == 0, done.stderr[-2000:]
    with open(os.path.join(workdir, "metrics.json")) as f:
        assert json.load(f)["test_at_val_threshold"]["num_images"] == config.data.num_test
    # An explicit --config is used and checked: its differences from the run's are listed.
    done = evaluate_cli(
        f"--workdir={workdir}",
        "--config=configs/tiny.py",
        f"--config.data.data_dir={config.data.data_dir}",
        "--config.eval.num_gallery=0",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "differs from the run's saved config: eval.num_gallery: run 1, given 0" in done.stderr
