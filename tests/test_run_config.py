"""Tests for camjax/run_config.py: the run's config.json and config differences."""

import pytest

from camjax import run_config
from configs import tiny


def test_a_saved_config_loads_locked_with_tuples_back(tmp_path):
    config = tiny.get_config()
    run_config.save(str(tmp_path), config)
    loaded = run_config.load(str(tmp_path))
    assert loaded.to_dict() == config.to_dict()  # tuples, not JSON's lists
    with pytest.raises(AttributeError):
        loaded.data.nmae = "typo"  # locked, as a config file's is


def test_differences_from_the_run_config_are_listed(tmp_path):
    config, workdir = tiny.get_config(), str(tmp_path)
    run_config.save(workdir, config)
    assert run_config.differences(workdir, config) == ""
    other = config.copy_and_resolve_references()
    other.optim.learning_rate = 0.5
    other.eval.top_k = 3
    assert run_config.differences(workdir, other) == (
        "eval.top_k: run 5, given 3; optim.learning_rate: run 0.001, given 0.5"
    )
    # Fields one side lacks (a run saved by an older camjax): named, a section not dumped.
    with other.unlocked():
        del other.eval["options"], other.eval["top_k"]
        other.eval.new_field = 1
    assert run_config.differences(workdir, other) == (
        "eval.new_field: given 1, run has not; eval.options: run has it, given has not; "
        "eval.top_k: run 5, given has not; optim.learning_rate: run 0.001, given 0.5"
    )


def test_missing_or_broken_run_config_is_a_clear_error(tmp_path):
    with pytest.raises(run_config.RunConfigError, match=r"no config.json in .*--config"):
        run_config.load(str(tmp_path))
    (tmp_path / "config.json").write_text('{"seed": ')
    with pytest.raises(run_config.RunConfigError, match=r"config.json is not valid JSON"):
        run_config.load(str(tmp_path))
