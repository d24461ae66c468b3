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


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(b'{"seed": \xff}'), "is not valid JSON"),
        (lambda p: p.write_text("[]"), "holds a JSON list, not a config's object"),
        (lambda p: p.write_text("null"), "holds a JSON NoneType"),
        (lambda p: p.mkdir(), "cannot read .* \\(Is a directory\\)"),
        (lambda p: p.write_text('{"seed": 0}'), "has no 'data' section: it is not the config"),
    ],
    ids=["not_utf8", "a_list", "null", "a_directory", "no_sections"],
)
def test_a_damaged_run_config_is_one_line_for_load_and_differences(tmp_path, damage, message):
    """One flipped byte, a JSON value that is no object, a directory in its place, an object
    without a run's sections: RunConfigError, never a traceback from deeper in."""
    damage(tmp_path / "config.json")
    with pytest.raises(run_config.RunConfigError, match=message):
        run_config.load(str(tmp_path))
    if "section" not in message:  # the comparison with a given config reads the file too
        with pytest.raises(run_config.RunConfigError, match=message):
            run_config.differences(str(tmp_path), tiny.get_config())


def test_a_hand_edited_field_of_the_wrong_type_is_one_line(tmp_path):
    """config.json's "width": "abc" reached the network's first call as a TypeError; the
    model's declared field types catch it when the model is built."""
    import json

    from camjax import experiment

    run_config.save(str(tmp_path), tiny.get_config())
    path = tmp_path / "config.json"
    values = json.loads(path.read_text())
    values["model"]["width"] = "abc"
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match=r"config.model.width must be a float .*got 'abc'"):
        experiment.build_model(run_config.load(str(tmp_path)))


def test_a_config_that_cannot_be_saved_is_one_line(tmp_path):
    """Written at every checkpoint save; a failure is a RunConfigError (every process of a
    multi-host job raises it), and a config.json damaged since the run started is named."""
    (tmp_path / "config.json.tmp").mkdir()
    with pytest.raises(run_config.RunConfigError, match=r"cannot write .*config\.json\.tmp \(Is a"):
        run_config.save(str(tmp_path), tiny.get_config())
    (tmp_path / "config.json.tmp").rmdir()
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(run_config.RunConfigError, match=r"config\.json is not valid JSON"):
        run_config.save(str(tmp_path), tiny.get_config())
