"""benchmarks/wsol_methods_table.py: its jobs, their flags, the resume and the markdown table,
with a stand-in for train.py + evaluate.py; then one real run at toy size (slow)."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import main_job, wsol_methods_table


def _metrics(top1_cls: float) -> dict:
    return {
        "test_at_val_threshold": {"top1_cls": top1_cls, "top1_loc": top1_cls / 2},
        "wsol": {"test": {"max_box_acc": 50.0, "max_box_acc_v2": 40.0, "pxap": 30.0}},
    }


def test_every_method_and_seed_runs_once_and_gets_a_row(tmp_path, monkeypatch, capsys):
    jobs = []

    def fake_run_job(workdir, flags):
        jobs.append((workdir, flags))
        seed = int(flags[-1].rpartition("=")[2])
        os.makedirs(workdir)
        with open(os.path.join(workdir, "metrics.json"), "w") as f:
            json.dump(_metrics(10.0 + seed), f)
        return {"train.py": 1.0, "evaluate.py": 1.0, "metrics": _metrics(10.0 + seed)}

    monkeypatch.setattr(main_job, "run_job", fake_run_job)
    argv = ["--workdir", str(tmp_path), "--methods", "cam", "acol", "--seeds", "0", "1"]
    wsol_methods_table.main([*argv, "--steps", "300"])
    # Seed-major, so a run cut short holds whole seeds; the default recipe's warm-up of 100 in
    # 1,200 steps scales to 25 in 300.
    assert [os.path.relpath(w, tmp_path) for w, _ in jobs] == [
        "cam/seed0",
        "acol/seed0",
        "cam/seed1",
        "acol/seed1",
    ]
    flags = jobs[1][1]
    assert "--config.method.name=acol" in flags and flags[-1] == "--config.seed=0"
    assert "--config.train.num_steps=300" in flags and "--config.optim.warmup_steps=25" in flags
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[0].split(" | ")[2:] == [
        "top-1 cls",
        "MaxBoxAcc",
        "MaxBoxAccV2",
        "PxAP",
        "top-1 loc |",
    ]
    assert rows[1:] == [
        "| cam | 2 | 10.5 (10.0..11.0) | 50.0 (50.0..50.0) | 40.0 (40.0..40.0) | "
        "30.0 (30.0..30.0) | 5.2 (5.0..5.5) |",
        "| acol | 2 | 10.5 (10.0..11.0) | 50.0 (50.0..50.0) | 40.0 (40.0..40.0) | "
        "30.0 (30.0..30.0) | 5.2 (5.0..5.5) |",
    ]
    # A second call reads the finished jobs instead of training again.
    wsol_methods_table.main([*argv, "--steps", "300"])
    assert len(jobs) == 4


def test_bridging_without_a_signed_head_is_refused_before_any_job(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(main_job, "run_job", lambda *_: pytest.fail("a job ran"))
    with pytest.raises(SystemExit):
        wsol_methods_table.main(["--workdir", str(tmp_path), "--methods", "cam", "bridging"])
    assert "bridging needs a signed head" in capsys.readouterr().err
    signed = wsol_methods_table.signed_head
    assert signed("configs/default.py", ["--config.optim.nonnegative_head=False"])
    assert signed("configs/default.py", ["--noconfig.optim.nonnegative_head"])
    assert not signed(
        "configs/default.py",
        ["--noconfig.optim.nonnegative_head", "--config.optim.nonnegative_head=True"],
    )


@pytest.mark.slow
def test_the_script_trains_and_tabulates_a_method(tmp_path):
    """train.py and evaluate.py for real, 2 steps of configs/tiny.py, one method (not CAM, so
    the method flag reaches train.py), one seed: each job is two processes, ~35 s on 2 cores."""
    argv = ["--workdir", str(tmp_path / "runs"), "--config", "configs/tiny.py", "--steps", "2"]
    argv += ["--methods", "has", "--seeds", "0"]
    script = os.path.join(main_job.REPO, "benchmarks", "wsol_methods_table.py")
    out = subprocess.run(
        [sys.executable, script, *argv], check=True, capture_output=True, text=True
    ).stdout
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ")]
    assert [row[0] for row in rows[1:]] == ["| has"]
    for row in rows[1:]:
        assert all(0 <= float(cell.strip(" |")) <= 100 for cell in row[2:])
