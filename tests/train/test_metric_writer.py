"""Tests for camjax/train/metric_writer.py: one record per step across resumes."""

import errno
import json
import os

import pytest

from camjax.train.metric_writer import MetricWriter


def steps(path):
    return [json.loads(line)["step"] for line in open(path)]


def test_a_resume_drops_the_rows_it_is_about_to_write_again(tmp_path):
    writer = MetricWriter(str(tmp_path))
    for step in range(1, 7):
        writer.write(step, {"train/loss": 1.0 / step})
    writer.write(4, {"val/top1_cls": 50.0})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "train/lo')  # a line cut short by a kill
    # Training restored the checkpoint at step 4: steps 5 and 6 are redone.
    writer = MetricWriter(str(tmp_path), start_step=4)
    assert steps(tmp_path / "metrics.jsonl") == [1, 2, 3, 4, 4]
    for step in (5, 6):
        writer.write(step, {"train/loss": 0.0})
    assert steps(tmp_path / "metrics.jsonl") == [1, 2, 3, 4, 4, 5, 6]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_a_fresh_run_keeps_nothing_and_a_finished_one_everything(tmp_path):
    MetricWriter(str(tmp_path)).write(3, {"a": 1})
    MetricWriter(str(tmp_path), start_step=3).write(3, {"b": 2})
    assert steps(tmp_path / "metrics.jsonl") == [3, 3]
    MetricWriter(str(tmp_path), start_step=0)  # a run started over: its old rows go
    assert steps(tmp_path / "metrics.jsonl") == []


def test_a_full_disk_is_one_line_naming_the_file_and_the_way_out(tmp_path, monkeypatch):
    from camjax.train import metric_writer

    writer = MetricWriter(str(tmp_path))

    def full_disk(path, mode="r", *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(metric_writer, "open", full_disk, raising=False)
    with pytest.raises(OSError) as err:
        writer.write(1, {"train/loss": 1.0})
    assert str(err.value) == (
        f"could not append to {tmp_path / 'metrics.jsonl'} (No space left on device); free "
        "space there or train in another --workdir, then rerun: training resumes from its "
        "newest checkpoint, if any."
    )

    def read_only(path, mode="r", *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(metric_writer, "open", read_only, raising=False)
    with pytest.raises(OSError, match=r"\(Permission denied\); make it writable or train in"):
        writer.write(1, {"train/loss": 1.0})

    def io_error(path, mode="r", *args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO), path)

    monkeypatch.setattr(metric_writer, "open", io_error, raising=False)
    with pytest.raises(OSError, match=r"\(Input/output error\); fix the cause or train in"):
        writer.write(1, {"train/loss": 1.0})


def test_a_log_that_cannot_be_reread_at_the_start_is_one_line(tmp_path):
    """A resume rereads metrics.jsonl to drop the rows it writes again; a directory in its place
    (or any read failure) is one line naming it, on every process of a multi-host job."""
    (tmp_path / "metrics.jsonl").mkdir()
    with pytest.raises(OSError) as err:
        MetricWriter(str(tmp_path), start_step=3)
    assert str(err.value) == (
        f"cannot read and rewrite {tmp_path / 'metrics.jsonl'} (Is a directory); restore or "
        "remove it, or train in another --workdir."
    )
