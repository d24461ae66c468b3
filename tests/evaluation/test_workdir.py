"""Evaluation checks its workdir and outputs before any work: nothing is computed for nowhere."""

import os
import subprocess
import sys

import pytest

from camjax import run_config
from camjax.evaluation import run as run_lib
from configs import tiny

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_an_unwritable_workdir_fails_before_restoring(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    # Without the check this would fail later, on the missing checkpoint.
    with pytest.raises(PermissionError, match=r"a_file/run is not a writable directory"):
        run_lib.run_evaluation(tiny.get_config(), str(blocker / "run"))


def test_an_export_evaluate_py_would_refuse_is_refused_before_evaluating(tmp_path):
    """--export_dir at 64x64 (the reference scores 224x224 maps only): before, the refusal
    came after a whole evaluation, its report and metrics.json."""
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    run_config.save(workdir, tiny.get_config())  # no checkpoint: evaluating would fail too
    out = subprocess.run(
        [sys.executable, "evaluate.py", f"--workdir={workdir}", f"--export_dir={tmp_path}/x"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1
    assert "--config.eval.wsol.eval_size=224" in out.stderr.strip().splitlines()[-1]
    assert os.listdir(workdir) == ["config.json"]


def test_a_workdir_that_is_a_file_is_said(tmp_path):
    path = tmp_path / "run"
    path.write_text("")
    with pytest.raises(run_config.RunConfigError, match=r"run is a file, not a run's directory"):
        run_config.load(str(path))
