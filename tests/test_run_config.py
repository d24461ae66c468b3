"""Tests for camjax/run_config.py: the run's config.json and config differences."""

import errno
import os

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


def test_a_resume_tells_training_changes_from_the_runs_length_and_its_bookkeeping():
    """resume_differences: (what changes training, train.num_steps, the BOOKKEEPING fields).
    Every bookkeeping field changed here (where the data is read from and how fast, logging,
    saving, validation, evaluation, the pretrained weights) is said only as bookkeeping, which
    a resume accepts; a data field beside them (the batch size) changes training."""
    config = tiny.get_config()
    saved = run_config.config_json(config)
    assert run_config.resume_differences(saved, config) == ("", "", "")
    other = config.copy_and_resolve_references()
    other.data.data_dir, other.data.num_threads, other.data.num_workers = "/data", 4, 2
    other.data.cache_train_gib, other.data.device_prefetch = 0.0, 1
    other.train.log_every_steps, other.train.checkpoint_every_steps = 1, 3
    other.train.eval_every_steps, other.train.keep_checkpoints = 2, 5
    other.eval.top_k, other.init.pretrained_dir = 3, "/w"
    other.train.num_steps = 12
    other.data.batch_size, other.optim.learning_rate = 32, 0.5
    assert run_config.resume_differences(saved, other) == (
        "data.batch_size: run 16, given 32; optim.learning_rate: run 0.001, given 0.5",
        "train.num_steps: run 6, given 12",
        "data.cache_train_gib: run 2.0, given 0.0; data.data_dir: run '', given '/data'; "
        "data.device_prefetch: run 2, given 1; data.num_threads: run 2, given 4; "
        "data.num_workers: run 0, given 2; eval.top_k: run 5, given 3; "
        "init.pretrained_dir: run '', given '/w'; train.checkpoint_every_steps: run 2, given 3; "
        "train.eval_every_steps: run 0, given 2; train.keep_checkpoints: run 2, given 5; "
        "train.log_every_steps: run 2, given 1",
    )


def test_a_run_id_whose_write_is_cut_short_still_holds_the_old_one(tmp_path, monkeypatch):
    """run_id is written beside itself and renamed into place: a write that never completes
    (here the rename fails, as a process killed before it leaves things) keeps the run's id
    whole, not a truncated file that stops every later save and resume."""
    workdir = str(tmp_path)
    run = run_config.start_run(workdir)

    def cut_short(src, dst):
        raise OSError(errno.EIO, os.strerror(errno.EIO), src, None, dst)

    monkeypatch.setattr(run_config.os, "replace", cut_short)
    with pytest.raises(run_config.RunConfigError, match=r"cannot write .*run_id \(Input/output"):
        run_config.start_run(workdir, run.id)
    monkeypatch.undo()
    assert run_config.read_run(workdir) == run


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
