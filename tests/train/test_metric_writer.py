"""Tests for camjax/train/metric_writer.py: one record per step across resumes."""

import errno
import json
import os
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

from camjax.train import metric_writer
from camjax.train.metric_writer import MetricWriter, Progress


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

    # A damaged byte in a row: a 29-line UnicodeDecodeError, and the run could not resume.
    (tmp_path / "metrics.jsonl").rmdir()
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 2, "train/loss": 1.\xff}\n')
    with pytest.raises(OSError) as err:
        MetricWriter(str(tmp_path), start_step=3)
    assert str(err.value) == (
        f"cannot read and rewrite {tmp_path / 'metrics.jsonl'} (not UTF-8 text: damaged); "
        "restore or remove it, or train in another --workdir."
    )


def test_a_row_is_one_json_line_step_first_with_plain_json_numbers(tmp_path):
    """The documented line: {"step": s, **metrics} in the order given, numpy and jax scalars as
    JSON numbers, arrays as lists."""
    writer = MetricWriter(str(tmp_path))
    writer.write(
        np.int64(3),
        {
            "train/loss": np.float32(0.5),
            "val/top1_cls": jnp.asarray(25.0),
            "val/ious": np.array([0.25, 0.75]),
            "note": "x",
        },
    )
    writer.close()
    assert (tmp_path / "metrics.jsonl").read_text() == (
        '{"step": 3, "train/loss": 0.5, "val/top1_cls": 25.0, "val/ious": [0.25, 0.75], '
        '"note": "x"}\n'
    )


def test_has_row_needs_the_key_in_a_row_of_that_step(tmp_path):
    """What a resume asks before validating a step again: a train row of that step, or a val
    row of another, is no validation of it."""
    writer = MetricWriter(str(tmp_path))
    writer.write(2, {"train/loss": 1.0})
    writer.write(2, {"val/top1_cls": 50.0})
    writer.write(4, {"train/loss": 0.5})
    assert writer.has_row(2, "val/top1_cls") and writer.has_row(4, "train/loss")
    assert not writer.has_row(4, "val/top1_cls") and not writer.has_row(3, "train/loss")


def test_a_row_cut_just_before_its_newline_is_dropped_on_resume(tmp_path):
    """A kill can land between a row's JSON and its newline: the row is whole JSON but cut
    short, and keeping it would glue the next row onto its line."""
    MetricWriter(str(tmp_path)).write(1, {"a": 1})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "a": 2}')
    MetricWriter(str(tmp_path), start_step=2).write(2, {"a": 3})
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "a": 1}\n{"step": 2, "a": 3}\n'


def test_a_rewrite_that_fails_leaves_the_log_as_it_was(tmp_path, monkeypatch):
    """Dropping rows on resume writes a copy and renames it: a disk that fills during the
    rewrite costs no row of the log, leaves no copy, and the error names the log and the fix."""
    writer = MetricWriter(str(tmp_path))
    for step in (1, 2, 3):
        writer.write(step, {"train/loss": 1.0})
    before = (tmp_path / "metrics.jsonl").read_text()

    def full_on_rewrite(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)  # the real file: mode "w" empties it

        def writelines(lines):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

        if "w" in mode:
            f.writelines = writelines
        return f

    monkeypatch.setattr(metric_writer, "open", full_on_rewrite, raising=False)
    with pytest.raises(OSError) as err:
        MetricWriter(str(tmp_path), start_step=1)
    assert str(err.value) == (
        f"cannot read and rewrite {tmp_path / 'metrics.jsonl'} (No space left on device); free "
        "space there, or train in another --workdir."
    )
    assert (tmp_path / "metrics.jsonl").read_text() == before
    assert os.listdir(tmp_path) == ["metrics.jsonl"]


@pytest.mark.parametrize(
    "code, fix",
    [
        (errno.ENOSPC, "free space there"),
        (errno.EDQUOT, "free space there"),  # a quota is full, not the disk
        (errno.EPERM, "make it writable"),
        (errno.EROFS, "make it writable"),
    ],
)
def test_each_append_failure_is_one_line_naming_the_file_and_the_way_out(
    tmp_path, monkeypatch, code, fix
):
    writer = MetricWriter(str(tmp_path))

    def failing(path, mode="r", *args, **kwargs):
        raise OSError(code, os.strerror(code), path)

    monkeypatch.setattr(metric_writer, "open", failing, raising=False)
    with pytest.raises(OSError) as err:
        writer.write(1, {"train/loss": 1.0})
    assert str(err.value) == (
        f"could not append to {tmp_path / 'metrics.jsonl'} ({os.strerror(code)}); {fix} or "
        "train in another --workdir, then rerun: training resumes from its newest checkpoint, "
        "if any."
    )


SUMS = {"count": 8, "loss": 4.0, "top1": 3, "top5": 5}  # 8 images: loss 0.5, 37.5%, 62.5%


def test_the_bar_shows_the_step_reached_from_the_resumed_one_with_loss_and_top1(tmp_path):
    progress = Progress(str(tmp_path), start=3, num_steps=10, fixed_threshold=0.2)
    assert not progress.bar.disable and progress.bar.n == 3  # process 0's bar, from step 3
    progress.train(6, SUMS)
    # tqdm shows the postfix sorted by name.
    assert progress.bar.n == 6 and progress.bar.postfix == "acc=37.5, loss=0.500"
    progress.close()


def test_throughput_counts_only_the_time_since_the_clock_restarted(tmp_path, monkeypatch):
    """A row's images_per_sec leaves out what came before restart_clock (a validation, a
    checkpoint): 8 images in the 2 s after it, not in the 32 s since the start."""
    now = [100.0]
    monkeypatch.setattr(metric_writer, "time", types.SimpleNamespace(time=lambda: now[0]))
    progress = Progress(str(tmp_path), start=0, num_steps=10, fixed_threshold=0.2)
    now[0] = 130.0
    progress.restart_clock()
    now[0] = 132.0
    progress.train(2, SUMS)
    progress.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {
        "step": 2,
        "train/loss": 0.5,
        "train/top1_acc": 37.5,
        "train/top5_acc": 62.5,
        "train/images_per_sec": 4.0,
    }


def test_a_validation_is_a_row_and_a_line_under_the_bar(tmp_path, capsys):
    progress = Progress(str(tmp_path), start=0, num_steps=10, fixed_threshold=0.2)
    metrics = {
        "val/top1_cls": 61.3,
        "val/gt_known_loc": 48.04,
        "val/threshold": 0.35,
        "val/gt_known_loc_fixed": 40.96,
    }
    progress.validation(4, metrics)
    progress.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 4, **metrics}
    assert (
        "step 4: val top-1 cls 61.3%, GT-known loc 48.0% at its best CAM threshold 0.35, "
        "41.0% at 0.20\n"
    ) in capsys.readouterr().out


def test_tensorboard_gets_the_numbers_flushed_in_workdir_tensorboard(tmp_path, monkeypatch):
    """With tensorboardX installed (here a stand-in): each number of a row is a scalar at its
    step, flushed with the row; a failing event file is named in the one-line error."""
    made = []

    class SummaryWriter:
        def __init__(self, logdir):
            self.logdir, self.scalars, self.flushes, self.closed = logdir, [], 0, False
            self.full = False
            made.append(self)

        def add_scalar(self, key, value, step):
            if self.full:
                events = os.path.join(self.logdir, "events.out")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), events)
            self.scalars.append((key, value, step))

        def flush(self):
            self.flushes += 1

        def close(self):
            self.closed = True

    tensorboard_x = types.SimpleNamespace(SummaryWriter=SummaryWriter)
    monkeypatch.setitem(sys.modules, "tensorboardX", tensorboard_x)
    progress = Progress(str(tmp_path), start=0, num_steps=10, fixed_threshold=0.2)
    (tb,) = made
    assert tb.logdir == os.path.join(tmp_path, "tensorboard")
    progress.writer.write(2, {"train/loss": 0.5, "images": 8, "val/ious": [0.1], "note": "x"})
    assert tb.scalars == [("train/loss", 0.5, 2), ("images", 8, 2)] and tb.flushes == 1
    tb.full = True
    with pytest.raises(OSError) as err:
        progress.writer.write(3, {"train/loss": 0.25})
    assert str(err.value).startswith(
        f"could not append to {tmp_path / 'tensorboard' / 'events.out'} (No space left on device)"
    )
    progress.close()
    assert tb.closed
