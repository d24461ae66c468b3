"""Tests for camjax/train: the real loop on the embedded dataset, sharding, resume, NaN, errors."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from etils import epath

from camjax import checkpoint, checkpoint_restore, cli, experiment, run_config
from camjax.evaluation import evaluator
from camjax.train import interrupts, loop, metric_writer, optim
from camjax.train import state as train_state
from configs import tiny
from tests import saved_steps
from tests.xla_flags import subprocess_xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def tiny_config(data_dir, **train):
    config = tiny.get_config()
    config.data.data_dir = data_dir
    for k, v in train.items():
        config.train[k] = v
    return config


def assert_resume_from_step_ends_equal(config, straight_dir, straight, resume_step: int):
    """Copies a finished run without its checkpoints after `resume_step`, resumes the copy
    from there and asserts its final parameters equal the straight run's, bit for bit."""
    resumed_dir = straight_dir.parent / f"{straight_dir.name}_resumed"
    shutil.copytree(straight_dir, resumed_dir)
    later = [
        s for s in os.listdir(resumed_dir / "checkpoints") if s.isdigit() and int(s) > resume_step
    ]
    assert later, f"the run saved no checkpoint after step {resume_step}: nothing to resume"
    for step in later:
        shutil.rmtree(resumed_dir / "checkpoints" / step)
    resumed = loop.train_and_evaluate(config, str(resumed_dir))
    jax.tree.map(
        np.testing.assert_array_equal,
        jax.device_get(straight.params),
        jax.device_get(resumed.params),
    )


def saved_params(workdir, step=None):
    with ocp.CheckpointManager(checkpoint.checkpoint_dir(workdir)) as manager:
        step = manager.latest_step() if step is None else step
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, restored["state"]["params"]


@pytest.mark.slow  # two training runs, end to end
def test_one_device_and_eight_devices_train_the_same(data_dir, tmp_path, monkeypatch):
    assert jax.device_count() == 8
    config = tiny_config(data_dir, num_steps=3)
    # SGD: its update is linear in the gradient, so a wrongly scaled or partial gradient shows
    # (Adam's division by the gradient's scale would hide the one and amplify rounding).
    config.optim.name, config.optim.learning_rate = "sgd", 0.05
    eight = loop.train_and_evaluate(config, str(tmp_path / "eight"))
    monkeypatch.setattr(
        experiment, "make_mesh", lambda: experiment.Mesh(jax.devices()[:1], ("data",))
    )
    one = loop.train_and_evaluate(config, str(tmp_path / "one"))
    assert len(eight.params["head"]["kernel"].sharding.device_set) == 8
    assert len(one.params["head"]["kernel"].sharding.device_set) == 1
    init, _ = train_state.create_train_state(
        config,
        experiment.build_model(config),
        optim.create_optimizer(config.optim, 3),
        experiment.make_mesh(),
    )

    def same_update(a, b, a0):
        a, b, a0 = (np.asarray(x) for x in (a, b, a0))
        moved = float(np.max(np.abs(b - a0)))
        assert moved > 0  # training moved it: the comparison is not vacuous
        # Equal up to float32 summation order, measured against how far training moved it.
        np.testing.assert_allclose(a - a0, b - a0, rtol=1e-3, atol=1e-3 * moved)

    jax.tree.map(same_update, eight.params, one.params, init.params)
    losses = [
        [json.loads(line)["train/loss"] for line in open(tmp_path / run / "metrics.jsonl")]
        for run in ("eight", "one")
    ]
    assert len(losses[0]) >= 2
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_logs_jsonl_and_checkpoints(tiny_run):
    _, workdir = tiny_run  # configs/tiny.py trained to its end, shared with other tests
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [x["step"] for x in lines] == [2, 4, 6]
    assert all(np.isfinite(x["train/loss"]) for x in lines)
    with ocp.CheckpointManager(checkpoint.checkpoint_dir(workdir)) as manager:
        assert manager.all_steps() == [4, 6]  # keep_checkpoints = 2


def _train_cmd(workdir, data_dir, steps, *overrides, driver=None):
    """train.py (or `driver`, Python code that runs it) on configs/tiny.py, logging and saving
    every step, then `overrides`."""
    return [
        sys.executable,
        *(["-c", driver] if driver else [os.path.join(REPO, "train.py")]),
        "--config",
        os.path.join(REPO, "configs/tiny.py"),
        "--workdir",
        workdir,
        f"--config.data.data_dir={data_dir}",
        f"--config.train.num_steps={steps}",
        "--config.train.checkpoint_every_steps=1",
        "--config.train.log_every_steps=1",
        *overrides,
    ]


KILL_STEPS = 12
# Validation every 4 steps: a stopped run's rerun must also leave the straight run's val rows;
# in two batches, for a SIGTERM to come between them.
KILL_EVAL = ("--config.train.eval_every_steps=4", "--config.eval.batch_size=8")


@pytest.fixture(scope="module")
def straight_run(data_dir, tmp_path_factory):
    """train.py run to KILL_STEPS uninterrupted: what a stopped and resumed run must end as."""
    straight = str(tmp_path_factory.mktemp("straight") / "run")
    env = {**os.environ, "XLA_FLAGS": subprocess_xla_flags()}
    subprocess.run(
        _train_cmd(straight, data_dir, KILL_STEPS, *KILL_EVAL),
        check=True,
        env=env,
        cwd=REPO,
        capture_output=True,
    )
    return straight


def start_and_wait_for(cmd, done) -> subprocess.Popen:
    """train.py started as `cmd`, once done() is true (asserted still running then)."""
    env = {**os.environ, "XLA_FLAGS": subprocess_xla_flags()}
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not done():
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be stopped"
    return proc


def assert_rerun_ends_as_straight(workdir, straight, data_dir, driver=None):
    """Reruns the stopped run to its end (through `driver`, if given): the parameters and
    metric rows of the straight run."""
    env = {**os.environ, "XLA_FLAGS": subprocess_xla_flags()}
    rerun = subprocess.run(
        _train_cmd(workdir, data_dir, KILL_STEPS, *KILL_EVAL, driver=driver),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    s1, p1 = saved_params(straight)
    s2, p2 = saved_params(workdir)
    assert s1 == s2 == KILL_STEPS
    jax.tree.map(np.testing.assert_array_equal, p1, p2)
    # The steps redone after the resume are logged once: the same rows as the straight run.
    rows = [metric_rows(d) for d in (straight, workdir)]
    assert rows[0] == rows[1]


def steps_saved(workdir) -> list[int]:
    ckpts = checkpoint.checkpoint_dir(workdir)
    return sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) if os.path.isdir(ckpts) else []


@pytest.mark.slow
def test_killed_run_resumes_bit_identically(data_dir, straight_run, tmp_path):
    """SIGKILL a real training process mid-run, rerun it, compare with an uninterrupted run."""
    killed = str(tmp_path / "killed")
    cmd = _train_cmd(killed, data_dir, KILL_STEPS, *KILL_EVAL)
    proc = start_and_wait_for(cmd, lambda: max(steps_saved(killed), default=0) >= 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at, _ = saved_params(killed)
    assert 0 < interrupted_at < KILL_STEPS
    assert_rerun_ends_as_straight(killed, straight_run, data_dir)


def metric_rows(workdir) -> list[list]:
    """(step, kind) of each metrics.jsonl row; kind 'val' or 'train'."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = [json.loads(line) for line in open(path)]
    return [[r["step"], "val" if "val/top1_cls" in r else "train"] for r in rows]


# train.py sent a SIGTERM, as a scheduler sends it, at a chosen point: SIGTERM_AT=N as step N
# has been taken (before its save), "val" in the first validation's first batch (a second
# batch counted exits 1), or "close" while the finished run waits for its last save.
SIGTERM_DRIVER = """
import os, runpy, signal, sys
from camjax import checkpoint
from camjax.evaluation import evaluator
from camjax.train import loop
where = os.environ["SIGTERM_AT"]
def sigterm():
    os.kill(os.getpid(), signal.SIGTERM)
if where == "val":
    counts, batches = evaluator.Evaluator._paper_counts, []
    def counts_with_sigterm(*args):
        batches.append(args)
        if len(batches) == 2:
            sys.exit("the validation went on after the SIGTERM")
        sigterm()
        return counts(*args)
    evaluator.Evaluator._paper_counts = counts_with_sigterm
elif where == "close":
    close = checkpoint.close
    def close_after_sigterm(*args):
        sigterm()
        return close(*args)
    checkpoint.close = close_after_sigterm
else:
    kinds = loop._step_kinds
    def kinds_after_sigterm(train_config, step, stop):
        if step == int(where):
            sigterm()
        return kinds(train_config, step, stop)
    loop._step_kinds = kinds_after_sigterm
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("sigterm_at", ["4", "val"])
def test_sigterm_saves_the_step_reached_and_the_rerun_ends_bit_identically(
    data_dir, straight_run, tmp_path, monkeypatch, sigterm_at
):
    """A scheduler's SIGTERM (preemption, a time limit, a pod's eviction) at step 4, where a
    validation is due but no checkpoint, or during that validation: the step is saved, the run
    stops with one line and exit code 143, and the rerun validates step 4 first and ends as the
    uninterrupted run, though a second SIGTERM comes while it waits for its last save. Before,
    the process died at once and lost every step since the last checkpoint (and the last save,
    when SIGTERM came at the end); then, a validation ran to its end first, however long."""
    workdir = str(tmp_path / "preempted")
    env = {**os.environ, "XLA_FLAGS": subprocess_xla_flags(), "SIGTERM_AT": sigterm_at}
    no_save_due = "--config.train.checkpoint_every_steps=99"
    cmd = _train_cmd(workdir, data_dir, KILL_STEPS, *KILL_EVAL, no_save_due, driver=SIGTERM_DRIVER)
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 143, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last == (
        "stopped by SIGTERM after step 4; the newest checkpoint is step 4 in "
        f"{checkpoint.checkpoint_dir(workdir)} (rerun to resume)."
    )
    assert steps_saved(workdir) == [4] and "Traceback" not in out.stderr
    # Every step's train row is written; step 4's validation is left to the rerun.
    assert metric_rows(workdir) == [[s, "train"] for s in range(1, 5)]
    if sigterm_at == "4":  # the same files either way: one rerun checks what they resume to
        monkeypatch.setenv("SIGTERM_AT", "close")
        assert_rerun_ends_as_straight(workdir, straight_run, data_dir, driver=SIGTERM_DRIVER)


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (an orphan's may wait for a reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _ignores_sigterm(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        ignored = next(line for line in f if line.startswith("SigIgn:")).split()[1]
    return bool(int(ignored, 16) & (1 << (signal.SIGTERM - 1)))


@pytest.mark.slow
def test_input_workers_exit_when_their_training_process_is_killed(data_dir, tmp_path):
    """The input workers ignore SIGTERM (the group's signal is training's to handle), so
    after a SIGKILL of the training process alone they outlived it (minutes, holding memory
    and its output pipes) until a SIGKILL found them; now they exit within seconds."""
    workdir = str(tmp_path / "run")
    cmd = _train_cmd(workdir, data_dir, 400, "--config.data.num_workers=2")
    proc = start_and_wait_for(cmd, lambda: metric_rows(workdir))
    workers = [
        int(pid)
        for pid in subprocess.run(
            ["pgrep", "-P", str(proc.pid), "-f", "spawn_main"], capture_output=True, text=True
        ).stdout.split()
    ]
    assert len(workers) == 2 and all(map(_ignores_sigterm, workers))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(map(_running, workers)):
        time.sleep(0.1)
    assert not any(map(_running, workers)), "an orphaned input worker still runs"


@pytest.mark.parametrize("flag, error", [("terminated", "SIGTERM"), ("requested", "Ctrl-C")])
def test_input_workers_killed_by_a_signal_being_handled_end_in_its_stop(tmp_path, flag, error):
    """A group's signal can reach the input workers as they start, before they ignore it:
    their death (grain's RuntimeError) then ends the run as the signal asks, in one line; an
    error with no signal behind it stays as it is."""

    def dead_workers():
        raise RuntimeError("Worker process was terminated unexpectedly with exit code -15.")
        yield

    with interrupts.StopRequest() as stop, checkpoint.create_manager(str(tmp_path), 1) as manager:
        with pytest.raises(RuntimeError, match="terminated unexpectedly"):
            stop.next_batch(dead_workers(), 1, manager)
        setattr(stop, flag, True)
        kind = (
            interrupts.TrainingPreempted if flag == "terminated" else interrupts.TrainingInterrupted
        )
        with pytest.raises(kind, match=f"stopped by {error} before step 1; nothing was saved yet"):
            stop.next_batch(dead_workers(), 1, manager)


@pytest.mark.parametrize("eval_every", [0, 2])
def test_a_sigterm_at_the_last_step_stops_early_only_to_leave_its_validation(eval_every):
    """The last step is saved anyway: a SIGTERM there ends the run as usual, unless the
    step's validation is due, which the rerun then does."""

    class Terminated:
        def preempted(self, agreed):
            return True

    config = tiny_config("unused", eval_every_steps=eval_every)  # 6 steps
    log, save, evaluate, stop = loop._step_kinds(config.train, 6, Terminated())
    assert (log, save, evaluate) == (True, True, False) and stop == bool(eval_every)
    assert loop._step_kinds(config.train, 5, Terminated()) == (True, True, False, True)


@pytest.fixture(scope="module")
def two_step_run(data_dir, tmp_path_factory):
    """A tiny run trained for 2 steps, checkpointed at both: (config, workdir, final state).
    Tests resume copies of it (`resumable`) instead of each training its own."""
    config = tiny_config(data_dir, num_steps=2, checkpoint_every_steps=1)
    workdir = str(tmp_path_factory.mktemp("two_steps") / "run")
    return config, workdir, loop.train_and_evaluate(config, workdir)


@pytest.fixture
def resumable(two_step_run, tmp_path):
    """A copy of the 2-step run for the test to resume or damage: (its config, workdir)."""
    config, pristine, _ = two_step_run
    workdir = str(tmp_path / "run")
    shutil.copytree(pristine, workdir)
    return config.copy_and_resolve_references(), workdir


@pytest.mark.slow  # eight steps; the fast lane's overflow and damaged-step tests stop alike
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(resumable):
    config, workdir = resumable
    config.train.num_steps, config.train.checkpoint_every_steps = 8, 2  # tiny's: no save at 3
    config.optim.learning_rate = 1e30
    config.optim.schedule = "constant"
    with pytest.raises(
        loop.NonFiniteLossError, match=r"last good checkpoint \(finite and verified\) is step 2"
    ):
        loop.train_and_evaluate(config, workdir, resume_with_changes=True)
    step, params = saved_params(workdir)
    assert step == 2
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def test_outputs_that_overflow_at_validation_stop_training_as_a_non_finite_loss(
    resumable, monkeypatch
):
    """Validation during training with finite parameters whose outputs overflow: the run stops
    as on a NaN loss, keeping the last good checkpoint (the step being validated is not saved)."""
    config, workdir = resumable
    config.train.num_steps, config.train.eval_every_steps = 4, 4

    def overflow(*args, **kwargs):
        raise evaluator.NonFiniteOutputError("the network's logits ... hold NaN or Inf")

    monkeypatch.setattr(evaluator.Evaluator, "evaluate", overflow)
    with pytest.raises(
        loop.NonFiniteLossError, match=r"by step 4; .* last good checkpoint .* is step 3"
    ):
        loop.train_and_evaluate(config, workdir)
    assert saved_params(workdir)[0] == 3


def test_non_finite_before_any_save_says_a_rerun_starts_over(tmp_path):
    manager = checkpoint.create_manager(str(tmp_path), 2)
    message = loop._non_finite_message(3, manager)
    manager.close()
    assert "No checkpoint was saved yet." in message and message.endswith("(it starts over).")


def flip_a_byte(step_dir):
    """Flips a byte in the middle of the largest array file of a step."""
    data_file = max(
        (os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs),
        key=os.path.getsize,
    )
    with open(data_file, "r+b") as f:
        f.seek(os.path.getsize(data_file) // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0xFF]))


def test_a_damaged_newest_step_stops_training_until_a_person_removes_it(resumable):
    """Resuming from the newest good step would save over the rejected newer one: training
    says so and moves nothing; once it is removed, training resumes from the good step, and
    a later non-finite loss names that step, not the damaged one."""
    config, workdir = resumable
    damaged = os.path.join(checkpoint.checkpoint_dir(workdir), "2")
    flip_a_byte(damaged)
    config.train.num_steps = 4
    with pytest.raises(checkpoint.CheckpointError, match=r"newer steps \[2\] .*\(rm -r .*/2\)"):
        loop.train_and_evaluate(config, workdir)
    assert os.path.isdir(damaged)
    shutil.rmtree(damaged)
    config.optim.learning_rate, config.optim.schedule = 1e30, "constant"
    config.train.checkpoint_every_steps = 100  # no save between the resume and the NaN
    with pytest.raises(loop.NonFiniteLossError, match=r"\(finite and verified\) is step 1 "):
        loop.train_and_evaluate(config, workdir, resume_with_changes=True)


@pytest.mark.parametrize(
    "field, value",
    [("keep_checkpoints", 0), ("checkpoint_every_steps", 0), ("log_every_steps", -1)],
)
def test_counts_a_run_cannot_use_fail_before_anything_is_saved_or_deleted(resumable, field, value):
    """keep_checkpoints=0 would have orbax delete every step of the run at the next save."""
    config, workdir = resumable
    config.train.num_steps = 4
    config.train[field] = value
    with pytest.raises(ValueError, match=rf"config.train.{field} must be a positive int"):
        loop.train_and_evaluate(config, workdir)
    assert sorted(os.listdir(checkpoint.checkpoint_dir(workdir))) == ["1", "2"]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("data.batch_size", 0, "must be a positive int"),
        ("data.batch_size", -16, "must be a positive int"),
        ("eval.batch_size", 0, "must be a positive int"),
        ("eval.iou_threshold", 5.0, r"must be a fraction in \[0, 1\]"),
        ("eval.max_images", -1, "must be an int >= 0"),
    ],
)
def test_settings_no_run_can_use_fail_before_anything_is_written(
    data_dir, tmp_path, field, value, message
):
    """-16 divided the devices, and 0 went on to a grain traceback (data) or to a division by
    zero at the first validation, after training (eval); validation's other settings were
    checked only after the run_id was written."""
    config = tiny_config(data_dir, num_steps=2)
    section, name = field.split(".")
    config[section][name] = value
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=rf"config.{field} {message}"):
        loop.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_a_resume_with_a_config_no_state_can_be_built_from_names_the_field(resumable):
    """Said as on a fresh run, before the resume's comparison with the run's config (which
    asked for --resume_with_changes, after which the same config failed anyway)."""
    config, workdir = resumable
    config.data.std = (0.2, 0.2)
    with pytest.raises(ValueError, match=r"config.data.std must be 3 numbers"):
        loop.train_and_evaluate(config, workdir)


def disk_blocks(directory) -> int:
    """The bytes of the filesystem blocks that a directory tree takes, as `du` counts them."""
    paths = [r for r, _, _ in os.walk(directory)]
    paths += [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
    return sum(os.stat(p).st_blocks * 512 for p in paths)


def error_line(capsys, run) -> str:
    """The line train.py prints for the error `run()` raises: camjax's own, in one line."""
    with pytest.raises(SystemExit) as stop, cli.user_errors():
        run()
    assert stop.value.code == 1
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_disk_too_full_for_the_next_step_stops_before_writing_it(resumable, capsys, monkeypatch):
    """Step 3 fits, step 4 would not: the run stops in one line that names the step, the space
    needed and free, the fixes and the step a rerun resumes from; nothing of step 4 is written,
    and a rerun with room resumes from step 3."""
    monkeypatch.delenv("CAMJAX_TRACEBACK", raising=False)
    config, workdir = resumable
    config.train.num_steps = 4
    real_disk_usage = shutil.disk_usage
    calls = []

    def disk_usage(path):
        calls.append(path)
        usage = real_disk_usage(path)
        return usage if len(calls) == 1 else usage._replace(free=40_000)

    monkeypatch.setattr(checkpoint.shutil, "disk_usage", disk_usage)
    line = error_line(capsys, lambda: loop.train_and_evaluate(config, workdir))
    ckpts = checkpoint.checkpoint_dir(workdir)
    needed, free = re.fullmatch(
        rf"error: not enough disk space to save checkpoint step 4: it needs about (\S+) MB and "
        rf"(\S+) MB are free in {re.escape(ckpts)}; nothing of it was written\. Free space "
        rf"there \(e\.g\. the oldest step: rm -r {re.escape(os.path.join(ckpts, '2'))}\) or "
        r"train in another --workdir, then rerun: it resumes from step 3, the newest complete "
        r"one\. \(CAMJAX_TRACEBACK=1 shows where\)",
        line,
    ).groups()
    assert calls == [ckpts, ckpts] and free == "0.0"
    assert sorted(os.listdir(ckpts)) == ["2", "3"]
    # The estimate bounds the size of the step before, as the filesystem counts it (MB, rounded).
    assert float(needed) * 1e6 >= disk_blocks(os.path.join(ckpts, "3")) - 0.05e6
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", real_disk_usage)
    assert int(loop.train_and_evaluate(config, workdir).step) == 4
    assert sorted(os.listdir(ckpts)) == ["3", "4"]


def fail_writes_of_step(monkeypatch, ckpts: str, step: int, error) -> None:
    """orbax's JSON writes into `step`'s directory raise error(path), in its background thread."""
    write_text = epath.gpath.PosixGPath.write_text
    prefix = os.path.join(ckpts, f"{step}.orbax-checkpoint-tmp") + os.sep

    def failing(path, *args, **kwargs):
        if str(path).startswith(prefix):
            raise error(str(path))
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(epath.gpath.PosixGPath, "write_text", failing)


def disk_full(path: str) -> OSError:
    """The error a write into a full disk raises."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


@pytest.mark.parametrize(
    "num_steps",
    [4, pytest.param(5, marks=pytest.mark.slow)],  # the fast lane fails the last save
    ids=["at_the_end", "at_the_next_save"],
)
def test_a_save_failing_inside_orbax_is_one_line_and_a_rerun_resumes(
    resumable, capsys, caplog, monkeypatch, num_steps
):
    """The disk fills while orbax writes step 4: its JSON files fail with ENOSPC in orbax's
    background thread, as a real full disk fails them. The run stops, at the end or at the next
    save, with one line naming step 4, the reason and the step a rerun resumes from; step 3 is
    intact, and a rerun resumes from it and replaces step 4's half-written directory."""
    monkeypatch.delenv("CAMJAX_TRACEBACK", raising=False)
    config, workdir = resumable
    config.train.num_steps = num_steps
    ckpts = checkpoint.checkpoint_dir(workdir)
    write_text = epath.gpath.PosixGPath.write_text
    fail_writes_of_step(monkeypatch, ckpts, 4, disk_full)
    line = error_line(capsys, lambda: loop.train_and_evaluate(config, workdir))
    assert line == (
        f"error: saving checkpoint step 4 in {ckpts} failed (No space left on device); the "
        "earlier steps are intact. Fix the cause (a full disk: free space there or train in "
        "another --workdir), then rerun: it resumes from step 3, the newest complete one. "
        "(CAMJAX_TRACEBACK=1 shows where)"
    )
    assert sorted(os.listdir(ckpts)) == ["2", "3", "4.orbax-checkpoint-tmp"]
    monkeypatch.setattr(epath.gpath.PosixGPath, "write_text", write_text)
    caplog.clear()
    caplog.set_level("INFO", logger="camjax")
    assert int(loop.train_and_evaluate(config, workdir).step) == num_steps
    assert "Resumed from the checkpoint at step 3." in caplog.text
    # The leftover directory is removed before the step is saved again.
    assert sorted(os.listdir(ckpts)) == [str(num_steps - 1), str(num_steps)]


def test_a_step_lost_in_orbax_threads_is_not_counted_as_saved_and_is_logged(
    tmp_path, monkeypatch, caplog
):
    """`last_saved`, which a stop for a NaN loss or a signal reports: step 2's save fails in
    orbax's background threads (ENOSPC on its JSON writes), so the newest saved step is 1, and
    the lost step is logged in one line (the error the run stops with is about something
    else)."""
    config, state = tiny.get_config(), {"w": jnp.arange(3.0)}
    manager = checkpoint.create_manager(str(tmp_path), 3)
    ckpts = checkpoint.checkpoint_dir(str(tmp_path))
    checkpoint.save(manager, 1, state, config)
    checkpoint.wait(manager)
    fail_writes_of_step(monkeypatch, ckpts, 2, disk_full)
    checkpoint.save(manager, 2, state, config)
    with caplog.at_level("WARNING", logger="camjax"):
        assert checkpoint.last_saved(manager) == 1
    manager.close()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("camjax")] == [
        f"saving checkpoint step 2 in {ckpts} failed (No space left on device); the earlier "
        "steps are intact. Fix the cause (a full disk: free space there or train in another "
        "--workdir), then rerun: it resumes from step 1, the newest complete one."
    ]


def test_a_leftover_copy_of_a_step_that_cannot_be_removed_is_one_line(
    resumable, capsys, monkeypatch
):
    """A half-written copy of the step to save, left by an earlier run, that cannot be removed
    (its permissions): one line naming it, before anything is written; removed, the rerun
    goes on (orbax's own removal failed in its threads and kept the process 300 s)."""
    monkeypatch.delenv("CAMJAX_TRACEBACK", raising=False)
    config, workdir = resumable
    config.train.num_steps = 4
    ckpts = checkpoint.checkpoint_dir(workdir)
    leftover = os.path.join(ckpts, "4.orbax-checkpoint-tmp")
    os.makedirs(os.path.join(leftover, "state"))
    rmtree = shutil.rmtree

    def cannot_remove(path, *args, **kwargs):
        if str(path) != leftover:
            return rmtree(path, *args, **kwargs)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(shutil, "rmtree", cannot_remove)
    line = error_line(capsys, lambda: loop.train_and_evaluate(config, workdir))
    assert line == (
        f"error: a half-written copy of checkpoint step 4 from an earlier run, {leftover}, "
        "cannot be removed (Permission denied); nothing of step 4 was written. Remove it by "
        "hand, then rerun: it resumes from step 3, the newest complete one. "
        "(CAMJAX_TRACEBACK=1 shows where)"
    )
    assert sorted(os.listdir(ckpts)) == ["2", "3", "4.orbax-checkpoint-tmp"]
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    assert int(loop.train_and_evaluate(config, workdir).step) == 4
    assert sorted(os.listdir(ckpts)) == ["3", "4"]


def test_a_failed_removal_of_an_old_step_or_a_bug_in_a_write_is_said_as_it_is(
    resumable, capsys, monkeypatch
):
    """Background failures other than a write into a full disk: a step saved but an older one
    not removable says so (not "saving failed"); an error that is no OS error is a bug and keeps
    its type and traceback."""
    monkeypatch.delenv("CAMJAX_TRACEBACK", raising=False)
    config, workdir = resumable
    config.train.num_steps = 4
    ckpts = checkpoint.checkpoint_dir(workdir)

    def cannot_remove(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(epath.gpath.PosixGPath, "rmtree", cannot_remove)
    line = error_line(capsys, lambda: loop.train_and_evaluate(config, workdir))
    # Step 3 was saved and removing step 1 failed; the run stopped at step 4's save.
    assert line == (
        f"error: checkpoint step 3 was saved in {ckpts}, but removing an older step failed "
        "(Permission denied); remove the steps beyond keep_checkpoints by hand (the oldest: "
        f"rm -r {os.path.join(ckpts, '1')}), then rerun: it resumes from step 3. "
        "(CAMJAX_TRACEBACK=1 shows where)"
    )
    assert sorted(os.listdir(ckpts)) == ["1", "2", "3"]
    monkeypatch.undo()
    fail_writes_of_step(monkeypatch, ckpts, 5, lambda path: TypeError("a bug in a write"))
    config.train.num_steps = 5
    with pytest.raises(TypeError, match="a bug in a write"), cli.user_errors():
        loop.train_and_evaluate(config, workdir)


def test_a_step_directory_copied_under_another_number_is_never_reported_as_it(resumable):
    """Step 1's directory copied over step 2's (its digests all match its own files): evaluation
    skips it and says step 1; training names the mismatch and moves nothing."""
    from camjax.evaluation import run as run_lib

    config, workdir = resumable
    ckpts = checkpoint.checkpoint_dir(workdir)
    shutil.rmtree(os.path.join(ckpts, "2"))
    shutil.copytree(os.path.join(ckpts, "1"), os.path.join(ckpts, "2"))
    _, _, step = run_lib.restore_evaluator(config, workdir)
    assert step == 1
    config.train.num_steps = 4
    with pytest.raises(checkpoint.CheckpointError, match=r"newer steps \[2\]"):
        loop.train_and_evaluate(config, workdir)
    assert sorted(os.listdir(ckpts)) == ["1", "2"]


def test_damaged_metadata_of_one_step_skips_that_step_only(resumable, caplog):
    from camjax.evaluation import run as run_lib

    config, workdir = resumable
    meta = os.path.join(checkpoint.checkpoint_dir(workdir), "2", "meta", "metadata")
    with open(meta) as f:
        fields = json.load(f)
    fields["model"]["width"] = 2 * fields["model"]["width"]
    with open(meta, "w") as f:
        json.dump(fields, f)
    assert run_lib.restore_evaluator(config, workdir)[2] == 1
    assert "Skipped checkpoint step 2" in caplog.text
    assert "its metadata does not match its saved digest (the file is corrupt)" in caplog.text


def test_a_resume_that_changes_training_is_refused_unless_asked_and_recorded(resumable, caplog):
    """A resume under another learning rate went on with a warning, and config.json then said
    the new rate for the whole run: a mix that no config describes."""
    config, workdir = resumable
    ckpts = checkpoint.checkpoint_dir(workdir)
    config.train.num_steps = 3
    config.optim.learning_rate *= 10
    config.train.log_every_steps = 5  # changes no computation: not named
    with pytest.raises(
        run_config.RunConfigError,
        match=r"trained with another config \(optim.learning_rate: run .*\): going on with "
        r"this one would mix the two\. .*--resume_with_changes",
    ) as refused:
        loop.train_and_evaluate(config, workdir)
    assert "log_every_steps" not in str(refused.value)
    assert sorted(os.listdir(ckpts)) == ["1", "2"]
    # Asked: the run goes on under the new rate, which its next step records. A device count
    # other than the step's is said (here the step's record is edited: the test has 8 devices).
    saved_steps.edit_meta(
        os.path.join(ckpts, "2"), lambda meta: meta.update({checkpoint.RECORDED_DEVICES: 1})
    )
    loop.train_and_evaluate(config, workdir, resume_with_changes=True)
    assert "under new values: optim.learning_rate" in caplog.text
    assert "Resuming on 8 devices a run whose last step trained on 1" in caplog.text
    assert "train.num_steps: run 2, given 3: the learning-rate schedule spans" in caplog.text
    with ocp.CheckpointManager(ckpts) as manager:
        recorded, devices = checkpoint_restore.recorded(manager)
    assert manager.latest_step() == 3 and devices == 8
    assert recorded["optim"]["learning_rate"] == config.optim.learning_rate


def test_a_flipped_bit_in_a_steps_recorded_config_is_damage_not_another_config(resumable, caplog):
    """One bit of step 2's recorded learning rate flipped (0.003 read for 0.001 in an outside
    fault injection): the resume refused the true config as another one, and following its
    advice trained on at the flipped value. The metadata has a digest now: the step is damage,
    and the resume compares with step 1's record."""
    config, workdir = resumable
    ckpts = checkpoint.checkpoint_dir(workdir)
    meta_file = os.path.join(ckpts, "2", "meta", "metadata")
    with open(meta_file, "rb") as f:
        data = f.read()
    rate = json.dumps(config.optim.learning_rate).encode()  # e.g. 0.001, whose last digit's
    flipped = rate[:-1] + bytes([rate[-1] ^ 0b10])  # bit 1 flipped reads 0.003
    assert data.count(b'"learning_rate": ' + rate) == 1
    with open(meta_file, "wb") as f:
        f.write(data.replace(b'"learning_rate": ' + rate, b'"learning_rate": ' + flipped))
    with ocp.CheckpointManager(ckpts) as manager:
        recorded, _ = checkpoint_restore.recorded(manager)
    assert recorded["optim"]["learning_rate"] == config.optim.learning_rate  # step 1's
    config.train.num_steps = 3
    with pytest.raises(checkpoint.CheckpointError, match=r"^the newer steps \[2\] in .* rejected"):
        loop.train_and_evaluate(config, workdir)
    assert "step 2 in" in caplog.text
    assert "its metadata does not match its saved digest (the file is corrupt)" in caplog.text
    assert "another config" not in caplog.text
    assert steps_saved(workdir) == [1, 2]


def test_a_resume_reads_no_config_from_another_runs_step(resumable):
    """A step copied in from another run (a sweep's sibling, another learning rate) says
    nothing of this run's config: the resume names the step, as before the steps recorded
    their config, not a config difference."""
    config, workdir = resumable

    def another_runs(meta):
        meta["run"] = "0" * 16
        meta[checkpoint.RECORDED_CONFIG]["optim"]["learning_rate"] = 0.5

    saved_steps.edit_meta(os.path.join(checkpoint.checkpoint_dir(workdir), "2"), another_runs)
    config.train.num_steps = 3
    with pytest.raises(checkpoint.CheckpointError, match=r"the newer steps \[2\] .* rejected"):
        loop.train_and_evaluate(config, workdir)


def test_an_overwritten_run_id_is_said_with_the_run_to_write_back_not_as_damage(resumable):
    """Every step of one run and a run_id naming another: the error said to remove the
    'damaged' steps, every good checkpoint of the run (an outside fault injection)."""
    config, workdir = resumable
    path = os.path.join(workdir, run_config.RUN_ID)
    ours = run_config.read_run(workdir).id
    with open(path, "w") as f:
        f.write("0123456789abcdef\n")
    config.train.num_steps = 3
    said = (
        f"every step in {checkpoint.checkpoint_dir(workdir)} was saved by run '{ours}', not the "
        f"run {path} names. If that file was overwritten, write the run back (echo {ours} > "
        f"{path}) and rerun"
    )
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(said)):
        loop.train_and_evaluate(config, workdir)
    assert steps_saved(workdir) == [1, 2]


def test_a_resume_compares_with_the_steps_record_when_config_json_is_gone(resumable):
    config, workdir = resumable
    os.remove(os.path.join(workdir, run_config.RUN_CONFIG))
    config.method.name = "cutmix"
    with pytest.raises(
        run_config.RunConfigError, match=r"\(method.name: run 'cam', given 'cutmix'\)"
    ):
        loop.train_and_evaluate(config, workdir)


def test_resuming_with_another_optimizer_names_the_config_not_damage(resumable, caplog):
    """Refused before any step is read: the steps' skips advised removing good steps."""
    config, workdir = resumable
    config.train.num_steps = 4
    config.optim.name = "sgd" if config.optim.name != "sgd" else "adam"
    with pytest.raises(run_config.RunConfigError, match=r"another config \(optim.name: run"):
        loop.train_and_evaluate(config, workdir)
    assert "Skipped checkpoint" not in caplog.text
    # Even when asked to go on, no step reads into another optimizer's state.
    with pytest.raises(
        checkpoint.CheckpointError, match=r"optimizer differs from the run's \(optim.name"
    ):
        loop.train_and_evaluate(config, workdir, resume_with_changes=True)


def test_damaged_steps_are_reported_as_damage_whatever_else_the_config_changes(resumable):
    """Only an optimizer difference with unreadable steps is reported as a config problem."""
    config, workdir = resumable
    for step in ("1", "2"):
        flip_a_byte(os.path.join(checkpoint.checkpoint_dir(workdir), step))
    config.train.num_steps = 4
    with pytest.raises(checkpoint.CheckpointError, match=r"no good checkpoint .* does not match"):
        loop.train_and_evaluate(config, workdir)


def test_unusable_checkpoint_directory_or_run_config_fail_at_start(resumable):
    """A save that cannot create its directory hangs orbax's background thread for good; a
    damaged config.json used to surface only at the first save, after training."""
    config, workdir = resumable
    config.train.num_steps = 4
    with open(os.path.join(workdir, "config.json"), "r+") as f:
        f.truncate(10)
    with pytest.raises(run_config.RunConfigError, match=r"config.json is not valid JSON"):
        loop.train_and_evaluate(config, workdir)
    assert sorted(os.listdir(checkpoint.checkpoint_dir(workdir))) == ["1", "2"]  # no step trained
    fresh = os.path.join(workdir, "fresh")
    os.makedirs(fresh)
    with open(os.path.join(fresh, "checkpoints"), "w") as f:
        f.write("a file where the checkpoints go")
    with pytest.raises(PermissionError, match=r"checkpoints is not a writable directory"):
        loop.train_and_evaluate(config, fresh)


def test_resume_after_completion_is_a_no_op(two_step_run, resumable):
    _, _, first = two_step_run
    config, workdir = resumable
    second = loop.train_and_evaluate(config, workdir)
    assert int(second.step) == 2
    jax.tree.map(np.testing.assert_array_equal, first.params, second.params)


def test_a_resumed_run_keeps_its_id_and_a_lost_run_id_is_written_again(resumable, caplog):
    """The run id is drawn at the run's start; a resume whose workdir lost its run_id takes it
    back from the restored step, instead of saving id-less steps from then on."""
    config, workdir = resumable
    run = run_config.run_id(workdir)
    assert run is not None
    os.remove(os.path.join(workdir, run_config.RUN_ID))
    config.train.num_steps = 3
    with caplog.at_level("WARNING", logger="camjax"):
        loop.train_and_evaluate(config, workdir)
    assert run_config.run_id(workdir) == run
    assert f"run_id was missing; it is written again with run id {run}, from checkpoint step 2" in (
        caplog.text
    )
    meta = os.path.join(checkpoint.checkpoint_dir(workdir), "3", "meta", "metadata")
    assert json.load(open(meta))["run"] == run


class BatchNormNet(nn.Module):
    """The smallest network with batch norm that the train step takes: conv, BN, GAP, head."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn1")(x)
        return nn.Dense(self.num_classes, name="head")(nn.relu(x).mean(axis=(1, 2))), {}


def test_a_train_step_is_one_sgd_step_on_the_batch_mean_loss_as_worked_by_hand():
    """make_train_step on a batch-norm net against the step done by hand: images normalised as
    (x / 255 - mean) / std, p - lr * grad of the batch's mean cross-entropy (not its sum), the
    batch-norm statistics of the batch in training mode, the step counter + 1; the metric sums
    (summed loss, top-1/top-5 hits, count, out-of-range labels) and train_metrics' means and
    percentages of them. The labels come from the net's own ranking, rank 1, 5 and 10, so
    that top-1, top-5 and misses each show."""
    config = tiny.get_config()
    config.model.num_classes = 10
    config.optim.update(
        name="sgd",
        learning_rate=0.5,
        momentum=0.0,
        weight_decay=0.0,
        schedule="constant",
        warmup_steps=0,
        nonnegative_head=False,
    )
    model = BatchNormNet()
    tx = optim.create_optimizer(config.optim, 10)
    variables = model.init(jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))
    params, stats = variables["params"], variables["batch_stats"]
    state = train_state.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), stats)
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    x = ((images / 255.0 - np.array(config.data.mean)) / np.array(config.data.std)).astype(
        np.float32
    )

    def apply(p):
        variables = {"params": p, "batch_stats": stats}
        return model.apply(variables, x, train=True, mutable=["batch_stats"])

    (logits, _), want_stats = apply(params)
    ranking = np.argsort(-np.asarray(logits), axis=-1)
    labels = np.concatenate([ranking[:3, 0], ranking[3:5, 4], ranking[5:, 9]]).astype(np.int32)

    def mean_loss(p):
        (z, _), _ = apply(p)
        return jnp.mean(jax.nn.logsumexp(z, axis=-1) - z[jnp.arange(8), labels])

    want_params = jax.tree.map(lambda p, g: p - 0.5 * g, params, jax.grad(mean_loss)(params))
    step = jax.jit(loop.make_train_step(config, model, tx))
    new, sums = step(state, loop.zero_sums(), {"image": images, "label": labels})

    assert int(new.step) == 1
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        new.params,
        want_params,
    )
    assert not np.allclose(new.batch_stats["bn1"]["mean"], stats["bn1"]["mean"])
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        new.batch_stats,
        want_stats["batch_stats"],
    )
    z = np.asarray(logits, np.float64)
    losses = np.log(np.exp(z).sum(-1)) - z[np.arange(8), labels]
    sums = jax.device_get(sums)
    assert (sums["top1"], sums["top5"], sums["count"], sums["bad_labels"]) == (3, 5, 8, 0)
    np.testing.assert_allclose(sums["loss"], losses.sum(), rtol=1e-5)
    logged = metric_writer.train_metrics(sums, seconds=2.0)
    want = {"loss": losses.mean(), "top1_acc": 37.5, "top5_acc": 62.5, "images_per_sec": 4.0}
    np.testing.assert_allclose([logged[f"train/{k}"] for k in want], list(want.values()), 1e-5)
    # Labels the head cannot take are counted: below 0 and from num_classes up.
    labels = np.array([-1, 10, 9, 0, 0, 0, 0, 0], np.int32)
    _, sums = step(state, loop.zero_sums(), {"image": images, "label": labels})
    assert [int(sums[k]) for k in ("bad_labels", "min_label", "max_label")] == [2, -1, 10]


class DropoutNet(nn.Module):
    """A network without batch norm whose only randomness is dropout (as VGG16-GAP's 0.5)."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(16, name="fc")(x.mean(axis=(1, 2)))
        h = nn.Dropout(0.5, deterministic=not train)(h)
        return nn.Dense(self.num_classes, name="head")(h), {}


def test_dropout_is_on_in_a_train_step_and_draws_a_new_mask_at_each_step():
    """The train step runs the net in training mode: the step differs from the one by hand
    without dropout; it repeats itself exactly from the same state, but a later step draws
    another mask (the same state and batch at step 1 move the parameters elsewhere)."""
    config = tiny.get_config()
    config.model.num_classes = 10
    config.optim.update(name="sgd", momentum=0.0, weight_decay=0.0, schedule="constant")
    config.optim.nonnegative_head = False
    model = DropoutNet()
    tx = optim.create_optimizer(config.optim, 10)
    params = model.init(jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))["params"]
    state = train_state.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), {})
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    batch = {"image": images, "label": np.arange(8, dtype=np.int32)}
    step = jax.jit(loop.make_train_step(config, model, tx))

    def head_after(state):
        return np.asarray(step(state, loop.zero_sums(), batch)[0].params["head"]["kernel"])

    x = (images / 255.0 - np.array(config.data.mean)) / np.array(config.data.std)

    def mean_loss(p):
        z, _ = model.apply({"params": p}, x.astype(np.float32), train=False)
        return jnp.mean(jax.nn.logsumexp(z, axis=-1) - z[jnp.arange(8), batch["label"]])

    lr = config.optim.learning_rate
    without_dropout = params["head"]["kernel"] - lr * jax.grad(mean_loss)(params)["head"]["kernel"]
    first = head_after(state)
    assert not np.allclose(first, without_dropout, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(first, head_after(state))
    assert not np.array_equal(first, head_after(state.replace(step=jnp.ones((), jnp.int32))))


def test_validation_rows_are_at_the_best_threshold_plus_gt_known_at_the_fixed_one():
    """The logged val/ metrics are the split's summary at its best CAM threshold (GT-known
    loc 8 of 10 images at 0.5), and val/gt_known_loc_fixed the GT-known loc at
    config.eval.fixed_threshold (5 of 10 at 0.25)."""
    from camjax.localization.boxes import LocalizationAccumulator

    val = LocalizationAccumulator(np.array([0.0, 0.25, 0.5, 0.75]), np.array([0.5, 1.0]))
    val.counts = {
        "n": np.int64(10),
        "top1_cls": np.int64(6),
        "topk_cls": np.int64(9),
        "top1_loc": np.array([1, 3, 4, 2]),
        "topk_loc": np.array([2, 4, 7, 3]),
        "gt_known": np.array([2, 5, 8, 3]),
        "center_box": np.array([1, 2, 3, 4]),
    }
    got = loop._val_metrics(val, fixed_threshold=0.25, top_k=5)
    want = {"threshold": 0.5, "gt_known_loc": 80.0, "top1_loc": 40.0, "top5_loc": 70.0}
    assert {k: got[f"val/{k}"] for k in want} == pytest.approx(want)
    assert (got["val/top1_cls"], got["val/top5_cls"]) == pytest.approx((60.0, 90.0))
    assert got["val/gt_known_loc_fixed"] == pytest.approx(50.0)


def test_each_log_row_sums_the_steps_since_the_last_and_the_last_step_still_trains(
    data_dir, tmp_path, monkeypatch
):
    """Logs every 2 steps and at the last, step 5: each row sums the examples of the steps
    since the previous row, from the first step on (batch 16: 32, 32, then 16). The schedule
    spans the run's num_steps: the last step still moves the parameters (a cosine built for
    fewer steps is at 0 there)."""
    config = tiny_config(data_dir, num_steps=5, checkpoint_every_steps=1)
    counts = []
    train = metric_writer.Progress.train

    def recording(self, step, host_sums):
        counts.append((step, int(host_sums["count"])))
        train(self, step, host_sums)

    monkeypatch.setattr(metric_writer.Progress, "train", recording)
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(config, workdir)
    assert counts == [(2, 32), (4, 32), (5, 16)]
    (_, before), (_, last) = saved_params(workdir, 4), saved_params(workdir, 5)
    assert not np.array_equal(before["head"]["kernel"], last["head"]["kernel"])


def test_pretrained_weights_and_batch_norm_statistics_replace_the_fresh_ones(tmp_path):
    """load_pretrained puts every saved leaf in place, the batch-norm statistics (ResNet50's
    and the BN GoogLeNet's running mean and variance) as well as the parameters; leaves not
    saved (the new head, here also bn1's scale and bias) stay fresh. The state's `variables`,
    what evaluation applies, carry those statistics."""
    from camjax.models import torch_import

    model = BatchNormNet()
    fresh = model.init(jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=fresh["params"]["conv1"]["kernel"].shape).astype(np.float32)
    mean, var = rng.normal(size=4).astype(np.float32), rng.uniform(1, 2, 4).astype(np.float32)
    saved = {
        "params": {"conv1": {"kernel": kernel}},
        "batch_stats": {"bn1": {"mean": mean, "var": var}},
    }
    torch_import.save_pretrained(str(tmp_path / "pretrained"), saved, {"model": "test"})
    state = train_state.TrainState(
        jnp.zeros((), jnp.int32), fresh["params"], {}, fresh["batch_stats"]
    )
    loaded = train_state.load_pretrained(state, str(tmp_path / "pretrained"))
    np.testing.assert_array_equal(loaded.params["conv1"]["kernel"], kernel)
    np.testing.assert_array_equal(loaded.batch_stats["bn1"]["mean"], mean)
    np.testing.assert_array_equal(loaded.batch_stats["bn1"]["var"], var)
    for leaf in (("conv1", "bias"), ("bn1", "scale"), ("bn1", "bias"), ("head", "kernel")):
        np.testing.assert_array_equal(
            loaded.params[leaf[0]][leaf[1]], fresh["params"][leaf[0]][leaf[1]]
        )
    # Evaluation applies state.variables: the statistics go with the parameters.
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)
    want, _ = model.apply({"params": loaded.params, "batch_stats": saved["batch_stats"]}, x)
    np.testing.assert_array_equal(model.apply(loaded.variables, x)[0], want)


@pytest.mark.slow  # three training runs, end to end
def test_run_starts_from_pretrained_weights_and_resume_ignores_them(data_dir, tmp_path):
    """config.init.pretrained_dir replaces the backbone at the start; new layers stay fresh."""
    from camjax.models import torch_import

    config = tiny_config(data_dir, num_steps=1, checkpoint_every_steps=1)
    model = experiment.build_model(config)
    tx = optim.create_optimizer(config.optim, 1)
    mesh = experiment.make_mesh()
    fresh, _ = train_state.create_train_state(config, model, tx, mesh)
    # "Pretrained": another seed's backbone, as torch_import would save it (no new layers).
    # Made by the same jitted init (the seed is its argument), so it compiles once.
    other_seed = config.copy_and_resolve_references()
    other_seed.seed = 7
    other, _ = train_state.create_train_state(other_seed, model, tx, mesh)
    backbone = {k: v for k, v in other.params.items() if k not in ("cam_conv", "head")}
    pretrained_dir = str(tmp_path / "pretrained")
    torch_import.save_pretrained(pretrained_dir, {"params": backbone}, {"model": "test"})

    state = train_state.load_pretrained(fresh, pretrained_dir)
    for name, leaves in state.params.items():
        source = backbone[name] if name in backbone else fresh.params[name]
        for got, want in zip(jax.tree.leaves(leaves), jax.tree.leaves(source), strict=True):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
            assert got.sharding == jax.tree.leaves(fresh.params)[0].sharding

    config.init.pretrained_dir = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="torch_import"):
        loop.train_and_evaluate(config, str(tmp_path / "run"))
    config.init.pretrained_dir = pretrained_dir
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(config, workdir)
    _, params = saved_params(workdir)
    trained = np.asarray(params["conv1_1"]["kernel"])
    # One small step from the pretrained kernel, far from the fresh one.
    from_pretrained = np.abs(trained - np.asarray(backbone["conv1_1"]["kernel"])).max()
    from_fresh = np.abs(trained - np.asarray(fresh.params["conv1_1"]["kernel"])).max()
    assert from_pretrained < 0.1 * from_fresh
    # A resumed run restores its checkpoint and never reads pretrained_dir again.
    config.init.pretrained_dir = str(tmp_path / "missing")
    config.train.num_steps = 2
    state = loop.train_and_evaluate(config, workdir)
    assert int(state.step) == 2


def test_labels_beyond_the_head_stop_at_the_first_step(data_dir, tmp_path, monkeypatch):
    """Checked after step 1, though no log, save or validation is due before step 6; nothing
    is saved."""
    config = tiny_config(data_dir, num_steps=6, log_every_steps=100, checkpoint_every_steps=100)
    config.model.num_classes = 5  # wsol_shapes has 10
    taken = []
    kinds = loop._step_kinds

    def recording(train_config, step, stop):
        taken.append(step)
        return kinds(train_config, step, stop)

    monkeypatch.setattr(loop, "_step_kinds", recording)
    with pytest.raises(ValueError, match=r"labels up to 9 but config.model.num_classes is 5"):
        loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert taken == [1]
    assert os.listdir(checkpoint.checkpoint_dir(str(tmp_path / "run"))) == []


def test_an_unwritable_workdir_fails_before_any_work(data_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(
        PermissionError, match=r"a_file/run is not a writable directory .*--workdir"
    ):
        loop.train_and_evaluate(tiny_config(data_dir), str(blocker / "run"))
    if os.geteuid() != 0:  # root writes anywhere: permissions cannot be tested as root
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(PermissionError, match="is not a writable directory"):
            loop.train_and_evaluate(tiny_config(data_dir), str(locked))


@pytest.mark.slow
def test_ctrl_c_mid_save_stops_cleanly_with_a_verified_checkpoint(data_dir, tmp_path):
    """SIGINT while saves are in flight (one per step): the run stops within seconds with a
    one-line message and exit code 130, and the newest step on disk restores, complete and
    verified."""
    workdir = str(tmp_path / "run")
    cmd = _train_cmd(workdir, data_dir, 400)
    proc = start_and_wait_for(cmd, lambda: max(steps_saved(workdir), default=0) >= 2)
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert time.time() - sent < 20, "Ctrl-C did not stop training within seconds"
    assert proc.returncode == 130, stderr[-2000:]
    assert "stopped by Ctrl-C before step" in stderr and "Exception ignored" not in stderr
    # The newest step restores verified (resuming from it is test_killed_run_resumes_...).
    config = tiny_config(data_dir)
    model, mesh = experiment.build_model(config), experiment.make_mesh()
    tx = optim.create_optimizer(config.optim, 400)
    manager = checkpoint.create_manager(workdir, 2)
    restored = checkpoint_restore.restore(
        manager, train_state.abstract_train_state(config, model, tx, mesh), config
    )
    manager.close()
    assert 2 <= int(restored.step) < 400


@pytest.mark.parametrize("split_size", [6, 16])
def test_a_batch_larger_than_the_train_split_is_said(monkeypatch, caplog, split_size):
    """Each batch then holds repeats of the examples (from several epochs): allowed, said; a
    batch as large as the split is not."""
    config = tiny_config("unused")
    config.data.batch_size, config.data.cache_train_gib = 16, 0
    monkeypatch.setattr(loop.pipeline, "train_dataset", lambda *args: None)
    monkeypatch.setattr(loop.pipeline, "train_iterator", lambda *args: iter(()))
    with caplog.at_level("WARNING", logger="camjax"):
        loop._train_batches(config, list(range(split_size)), 0, experiment.make_mesh())
    said = [r.getMessage() for r in caplog.records if "train split" in r.getMessage()]
    expected = {
        6: [
            "config.data.batch_size 16 is larger than the train split (6 examples): each batch "
            "repeats examples, drawn from about 3 epochs."
        ],
        16: [],
    }
    assert said == expected[split_size]


class NoSignal:
    """A StopRequest that no signal reached, recording the `agreed` of each check."""

    def __init__(self):
        self.agreed = []

    def preempted(self, agreed):
        self.agreed.append(agreed)
        return False


def test_each_step_logs_saves_and_validates_at_its_intervals_and_the_last_step_does_all():
    """10 steps, logging every 3, saving every 4, validating every 4: multiples of each, plus
    step 10 for all three (it is no multiple of any); every step checks for a SIGTERM, agreed
    where the step does anything."""
    config = tiny_config(
        "unused", num_steps=10, log_every_steps=3, checkpoint_every_steps=4, eval_every_steps=4
    )
    stop = NoSignal()
    got = [loop._step_kinds(config.train, step, stop) for step in range(1, 11)]
    log = [3, 6, 9, 10]
    save = evaluate = [4, 8, 10]
    want = [(s in log, s in save, s in evaluate, False) for s in range(1, 11)]
    assert got == want
    assert stop.agreed == [s in log or s in save or s in evaluate for s in range(1, 11)]


def test_validation_is_due_at_each_multiple_and_the_last_step_never_at_step_0_or_when_off():
    config = tiny_config("unused", num_steps=10, eval_every_steps=4)
    assert [s for s in range(0, 12) if loop._validation_due(config.train, s)] == [4, 8, 10]
    config.train.eval_every_steps = 5
    assert [s for s in range(0, 11) if loop._validation_due(config.train, s)] == [5, 10]
    config.train.eval_every_steps = 0
    assert not any(loop._validation_due(config.train, s) for s in range(0, 11))


def test_a_validation_is_owed_at_a_due_step_whose_row_metrics_jsonl_lacks(tmp_path):
    """A resume at step 4 (validating every 4) owes step 4's validation unless metrics.jsonl
    has its val/ row; a train row of step 4 does not count, and a step not due owes nothing."""
    config = tiny_config("unused", num_steps=10, eval_every_steps=4)
    workdir = str(tmp_path)
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 4, "train/loss": 1.0}) + "\n")
        f.write(json.dumps({"step": 3, "val/top1_cls": 50.0}) + "\n")
    progress = metric_writer.Progress(workdir, 4, 10, 0.5)
    try:
        assert loop._validation_owed(config.train, 4, progress)
        assert not loop._validation_owed(config.train, 3, progress)
        assert not loop._validation_owed(config.train, 0, progress)
        progress.writer.write(4, {"val/top1_cls": 50.0})
        assert not loop._validation_owed(config.train, 4, progress)
    finally:
        progress.close()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_steps", 0, "config.train.num_steps must be a positive int; got 0."),
        ("log_every_steps", True, "config.train.log_every_steps must be a positive int; got True"),
        ("eval_every_steps", -1, r"config.train.eval_every_steps must be an int >= 0 .*got -1"),
        ("eval_every_steps", True, r"config.train.eval_every_steps must be an int >= 0 .*True"),
    ],
)
def test_train_counts_no_run_can_use_are_refused_before_any_work(tmp_path, field, value, message):
    config = tiny_config("unused")
    config.train[field] = value
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        loop._check_before_any_work(config, experiment.make_mesh(), str(workdir))
    assert not workdir.exists()


def test_the_smallest_usable_train_counts_pass_the_checks(tmp_path):
    """1 for each count, 0 for eval_every_steps (no validation during training)."""
    config = tiny_config(
        "unused",
        num_steps=1,
        keep_checkpoints=1,
        checkpoint_every_steps=1,
        log_every_steps=1,
        eval_every_steps=0,
    )
    loop._check_before_any_work(config, experiment.make_mesh(), str(tmp_path / "run"))
    assert os.path.isdir(checkpoint.checkpoint_dir(str(tmp_path / "run")))


def host_sums_with(bad_labels=0, loss=1.0):
    return {"bad_labels": bad_labels, "min_label": 0, "max_label": 10, "loss": loss, "count": 16}


def test_a_single_label_beyond_the_head_or_a_non_finite_loss_sum_stops_the_run(tmp_path):
    config = tiny_config("unused")
    config.model.num_classes = 10
    with checkpoint.create_manager(str(tmp_path), 1) as manager:
        loop._check_sums(host_sums_with(), 3, config, manager)
        with pytest.raises(ValueError, match=r"labels up to 10 but config.model.num_classes is 10"):
            loop._check_sums(host_sums_with(bad_labels=1), 3, config, manager)
        for loss in (np.nan, np.inf):
            with pytest.raises(loop.NonFiniteLossError, match=r"by step 3; .*saved yet"):
                loop._check_sums(host_sums_with(loss=np.float32(loss)), 3, config, manager)


def test_a_state_with_a_nan_is_never_saved(tmp_path):
    state = train_state.TrainState(jnp.ones((), jnp.int32), {"w": jnp.array([1.0, np.nan])}, {}, {})
    with checkpoint.create_manager(str(tmp_path), 1) as manager:
        with pytest.raises(loop.NonFiniteLossError, match=r"by step 1; stopped without saving"):
            loop._save_finite(manager, 1, state, tiny_config("unused"), None)
        assert manager.all_steps() == []


def test_the_train_split_is_cached_in_memory_only_without_input_workers(monkeypatch):
    """config.data.cache_train_gib caches in the training process (threads only); with
    num_workers > 0 the workers read the source themselves."""
    config = tiny_config("unused")
    cached = []
    monkeypatch.setattr(
        loop.pipeline, "in_memory_train_source", lambda source, *args: cached.append(args)
    )
    monkeypatch.setattr(loop.pipeline, "train_dataset", lambda *args: None)
    monkeypatch.setattr(loop.pipeline, "train_iterator", lambda *args: iter(()))
    config.data.cache_train_gib, config.data.num_workers = 1, 2
    loop._train_batches(config, list(range(64)), 0, experiment.make_mesh())
    assert cached == []
    config.data.num_workers = 0
    loop._train_batches(config, list(range(64)), 0, experiment.make_mesh())
    assert cached == [(experiment.preprocess_config(config), 2**30, config.data.num_threads)]


def stopped_validation(*args, **kwargs):
    raise evaluator.EvaluationStopped


def test_a_validation_a_sigterm_stopped_saves_its_step_and_the_rerun_owes_it_first(
    resumable, monkeypatch
):
    """Step 3's validation (every 3 steps), stopped between batches by a SIGTERM: step 3 is
    saved though no save is due, the run stops after it, and a rerun validates step 3 before
    any training, stopping again (no step trained) when that validation is stopped too."""
    config, workdir = resumable
    config.train.num_steps, config.train.eval_every_steps = 4, 3
    config.train.checkpoint_every_steps = config.train.log_every_steps = 100
    monkeypatch.setattr(evaluator.Evaluator, "evaluate", stopped_validation)
    ckpts = checkpoint.checkpoint_dir(workdir)
    after_3 = f"stopped by SIGTERM after step 3; the newest checkpoint is step 3 in {ckpts} "
    with pytest.raises(interrupts.TrainingPreempted, match=re.escape(after_3)):
        loop.train_and_evaluate(config, workdir)
    assert steps_saved(workdir) == [2, 3]
    with pytest.raises(interrupts.TrainingPreempted, match=re.escape(after_3)):
        loop.train_and_evaluate(config, workdir)
    assert steps_saved(workdir) == [2, 3]
    assert metric_rows(workdir) == [[2, "train"]]


def test_a_validation_failing_on_its_data_saves_the_step_and_the_fixed_rerun_validates_it(
    resumable, monkeypatch
):
    """Step 3's validation meets an image of more GT boxes than data.max_boxes: the error was
    raised before step 3 was saved, so the fix lost every step since the last save, and the
    fix (a larger max_boxes, which training never reads) was refused as another config."""
    config, workdir = resumable
    config.train.num_steps, config.train.eval_every_steps = 4, 3
    config.train.checkpoint_every_steps = config.train.log_every_steps = 100
    config.data.max_boxes = 0  # the tiny dataset's images have one box or more
    with pytest.raises(ValueError, match="boxes but data.max_boxes is 0; raise config.data.max"):
        loop.train_and_evaluate(config, workdir)
    assert steps_saved(workdir) == [2, 3]
    # Unfixed, the rerun's owed validation of step 3 fails alike: no second save of the step
    # (whose checks could raise in the error's place), the same error.
    with pytest.raises(ValueError, match="boxes but data.max_boxes is 0; raise config.data.max"):
        loop.train_and_evaluate(config, workdir)
    assert steps_saved(workdir) == [2, 3]
    config.data.max_boxes = 4
    loop.train_and_evaluate(config, workdir)
    assert steps_saved(workdir) == [3, 4]  # keep_checkpoints 2
    validated = [row for row in metric_rows(workdir) if row[1] == "val"]
    assert validated == [[3, "val"], [4, "val"]]


def signal_at_step(monkeypatch, signum, at: int) -> None:
    """The process receives `signum` as step `at` has been taken, as in SIGTERM_DRIVER."""
    kinds = loop._step_kinds

    def kinds_after_signal(train_config, step, stop):
        if step == at:
            os.kill(os.getpid(), signum)
        return kinds(train_config, step, stop)

    monkeypatch.setattr(loop, "_step_kinds", kinds_after_signal)


def signalled_during_step_3(resumable, monkeypatch, signum, num_steps: int):
    """The resumable run (step 2 saved) set to train to `num_steps`, logging and saving only at
    its last step, with `signum` received during step 3: (config, workdir, checkpoint dir)."""
    config, workdir = resumable
    config.train.num_steps = num_steps
    config.train.checkpoint_every_steps = config.train.log_every_steps = 100
    signal_at_step(monkeypatch, signum, 3)
    return config, workdir, checkpoint.checkpoint_dir(workdir)


def test_a_sigterm_logs_and_saves_the_step_taken_then_stops(resumable, monkeypatch):
    config, workdir, ckpts = signalled_during_step_3(resumable, monkeypatch, signal.SIGTERM, 4)
    with pytest.raises(
        interrupts.TrainingPreempted,
        match=re.escape(f"after step 3; the newest checkpoint is step 3 in {ckpts} "),
    ):
        loop.train_and_evaluate(config, workdir)
    assert steps_saved(workdir) == [2, 3]
    assert metric_rows(workdir) == [[2, "train"], [3, "train"]]


def test_ctrl_c_stops_before_the_next_step_keeping_what_was_saved(resumable, monkeypatch):
    """Ctrl-C during step 3 stops before step 4, saving nothing more."""
    config, workdir, ckpts = signalled_during_step_3(resumable, monkeypatch, signal.SIGINT, 4)
    with pytest.raises(
        interrupts.TrainingInterrupted,
        match=re.escape(f"Ctrl-C before step 4; the newest checkpoint is step 2 in {ckpts} "),
    ):
        loop.train_and_evaluate(config, workdir)
    assert steps_saved(workdir) == [1, 2]


def test_ctrl_c_during_the_last_step_lets_the_run_end(resumable, monkeypatch):
    config, workdir, _ = signalled_during_step_3(resumable, monkeypatch, signal.SIGINT, 3)
    try:
        assert int(loop.train_and_evaluate(config, workdir).step) == 3
    except interrupts.TrainingInterrupted as stopped:
        pytest.fail(f"the finished run was stopped: {stopped}")
    assert steps_saved(workdir) == [2, 3]


def test_damaged_steps_are_damage_though_the_resume_also_changes_the_learning_rate(resumable):
    """A learning rate builds the same optimizer state: steps that do not match their digests
    are reported as damaged, not as read into another optimizer's state."""
    config, workdir = resumable
    for step in ("1", "2"):
        flip_a_byte(os.path.join(checkpoint.checkpoint_dir(workdir), step))
    config.train.num_steps = 4
    config.optim.learning_rate *= 2
    with pytest.raises(checkpoint.CheckpointError, match=r"no good checkpoint") as error:
        loop.train_and_evaluate(config, workdir, resume_with_changes=True)
    assert "does not match" in str(error.value) and "optimizer differs" not in str(error.value)


def test_a_fresh_state_takes_the_pretrained_weights(tmp_path):
    from camjax.models import torch_import

    config = tiny_config("unused")
    model = BatchNormNet()
    kernel = np.random.default_rng(0).normal(size=(3, 3, 3, 4)).astype(np.float32)
    config.init.pretrained_dir = str(tmp_path / "pretrained")
    torch_import.save_pretrained(
        config.init.pretrained_dir, {"params": {"conv1": {"kernel": kernel}}}, {"model": "test"}
    )
    workdir = str(tmp_path / "run")
    with checkpoint.create_manager(workdir, 1) as manager:
        state, _, _ = loop._initial_state(
            config, model, optax.sgd(0.1), experiment.make_mesh(), manager, workdir, False
        )
    np.testing.assert_array_equal(state.params["conv1"]["kernel"], kernel)


class UnreadInput:
    """A training input that must be closed and never read."""

    def __init__(self):
        self.closed = 0

    def __next__(self):
        raise AssertionError("a batch was read")

    def close(self):
        self.closed += 1


def test_a_resume_with_nothing_to_train_says_so_and_closes_its_input(
    resumable, monkeypatch, caplog
):
    config, workdir = resumable
    batches = UnreadInput()
    monkeypatch.setattr(loop, "_train_batches", lambda *args: batches)
    with caplog.at_level("WARNING", logger="camjax"):
        assert int(loop.train_and_evaluate(config, workdir).step) == 2
    assert "Nothing to train: the checkpoint is at step 2, config.train.num_steps is 2." in (
        caplog.text
    )
    assert batches.closed == 1


def test_a_save_lost_while_the_run_stops_on_another_error_leaves_that_error_raised(
    resumable, monkeypatch, caplog
):
    """The disk fills: step 3's save fails in orbax's threads, then step 4's metrics row
    cannot be written. The run stops with the metrics error; the lost step is logged."""
    config, workdir = resumable
    config.train.num_steps = 4
    config.train.checkpoint_every_steps = config.train.log_every_steps = 1
    ckpts = checkpoint.checkpoint_dir(workdir)
    fail_writes_of_step(monkeypatch, ckpts, 3, disk_full)
    train = metric_writer.Progress.train

    def full_at_4(self, step, host_sums):
        if step == 4:
            raise disk_full("metrics.jsonl")
        train(self, step, host_sums)

    monkeypatch.setattr(metric_writer.Progress, "train", full_at_4)
    with caplog.at_level("WARNING", logger="camjax"):
        with pytest.raises(OSError, match="metrics.jsonl") as error:
            loop.train_and_evaluate(config, workdir)
    assert not isinstance(error.value, checkpoint.CheckpointError)
    assert f"saving checkpoint step 3 in {ckpts} failed (No space left on device)" in caplog.text


def test_the_logged_throughput_leaves_out_the_time_spent_saving(resumable, monkeypatch):
    """Each save takes 1000 s on the clock the metrics read: step 4's row (16 images since
    step 3's row and save) still counts only the step's own time, not step 3's save."""
    import time as real_time
    from types import SimpleNamespace

    config, workdir = resumable
    config.train.num_steps = 4
    config.train.checkpoint_every_steps = config.train.log_every_steps = 1
    offset = [0.0]
    clock = SimpleNamespace(time=lambda: real_time.time() + offset[0])
    monkeypatch.setattr(metric_writer, "time", clock)
    save = loop._save_finite

    def slow_save(*args):
        save(*args)
        offset[0] += 1000.0

    monkeypatch.setattr(loop, "_save_finite", slow_save)
    loop.train_and_evaluate(config, workdir)
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [2, 3, 4]
    assert rows[2]["train/images_per_sec"] > 16 / 100


def test_a_negative_training_label_is_said_as_negative_not_as_a_head_too_small(tmp_path):
    """Labels -1 and 3 with a 10-class head: the error must not blame num_classes (it said
    "labels up to 3 but config.model.num_classes is 10; set it to the dataset's number of
    classes", advice that changes nothing)."""
    sums = loop._add_step_metrics(
        loop.zero_sums(), jnp.zeros(2), jnp.zeros((2, 10)), jnp.array([-1, 3]), 10
    )
    config = tiny_config("unused")
    config.model.num_classes = 10
    with checkpoint.create_manager(str(tmp_path), 1) as manager:
        with pytest.raises(ValueError) as error:
            loop._check_sums(jax.device_get(sums), 1, config, manager)
    assert str(error.value) == (
        "the training data has the label -1; labels are class indices 0 to 9: relabel or "
        "leave out the images without a class."
    )


def test_a_metrics_log_that_cannot_be_opened_closes_the_input_already_started(
    resumable, monkeypatch
):
    """The training input (with num_workers, its worker processes) starts before metrics.jsonl
    is opened; a metrics.jsonl that cannot be read stops the run, and the input must be closed
    as on every other stop."""
    config, workdir = resumable
    batches = UnreadInput()
    monkeypatch.setattr(loop, "_train_batches", lambda *args: batches)
    os.remove(os.path.join(workdir, "metrics.jsonl"))
    os.mkdir(os.path.join(workdir, "metrics.jsonl"))
    with pytest.raises(OSError, match="metrics.jsonl"):
        loop.train_and_evaluate(config, workdir)
    assert batches.closed == 1


def count_manager_closes(monkeypatch) -> list[int]:
    """Each checkpoint manager the code under test creates adds a count of its closes."""
    closes = []
    create = checkpoint.create_manager

    def counted(*args):
        manager = create(*args)
        closes.append(0)
        index, close = len(closes) - 1, manager.close

        def close_counted():
            closes[index] += 1
            close()

        manager.close = close_counted
        return manager

    monkeypatch.setattr(checkpoint, "create_manager", counted)
    return closes


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("optim.learning_rate", 1.0, run_config.RunConfigError),  # a refused resume
        ("data.test_split", "tset", ValueError),  # a split the dataset lacks
    ],
)
def test_a_run_that_stops_before_training_closes_its_checkpoint_manager(
    resumable, monkeypatch, field, value, error
):
    """A library or notebook caller whose run is refused keeps no orbax threads: the manager
    was left open when the resume or the data failed before the training's own `try`."""
    config, workdir = resumable
    group, name = field.split(".")
    config[group][name] = value
    closes = count_manager_closes(monkeypatch)
    with pytest.raises(error):
        loop.train_and_evaluate(config, workdir)
    assert closes == [1]


def test_an_evaluation_without_a_checkpoint_closes_its_checkpoint_manager(tmp_path, monkeypatch):
    from camjax.evaluation import run as run_lib

    os.makedirs(checkpoint.checkpoint_dir(str(tmp_path)))  # empty: restoring fails
    closes = count_manager_closes(monkeypatch)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint in "):
        run_lib.restore_evaluator(tiny_config("unused"), str(tmp_path))
    assert closes == [1]


def test_evaluating_a_mistyped_workdir_says_so_and_creates_nothing(tmp_path):
    """A mistyped --workdir: 'no config.json, train there first'; with --config given, the
    manager then created WORKDIR/checkpoints before finding no step in it."""
    from camjax.evaluation import run as run_lib

    missing = str(tmp_path / "runz")
    with pytest.raises(run_config.RunConfigError, match=r"runz does not exist; pass --workdir"):
        run_config.load(missing)
    with pytest.raises(checkpoint.CheckpointError, match=r"runz \(no such directory\); train"):
        run_lib.restore_evaluator(tiny_config("unused"), missing)
    with pytest.raises(checkpoint.CheckpointError, match=r"\(no checkpoints folder\); train"):
        run_lib.restore_evaluator(tiny_config("unused"), str(tmp_path))
    assert os.listdir(tmp_path) == []
