"""The multi-host path for real: train.py as 2 jax.distributed processes on localhost.

Each process has 4 forced CPU devices, so the 2-process mesh has the 8 devices of the
1-process runs of test_loop.py, and the same global batch of 16; cross-process collectives are
jax's CPU ones (gloo). Compared with one process: final parameters, logs and checkpoints
written once, the checkpoint restored by a 1-process run, and a SIGKILLed run resumed.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from camjax import checkpoint, checkpoint_restore, experiment, run_config
from camjax.train import optim
from camjax.train import state as train_state
from tests.xla_flags import subprocess_xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 6
# SGD: its update is linear in the gradient, so a wrong or partial gradient shows as a large
# difference (Adam's division by the gradient's scale amplifies rounding instead).
OVERRIDES = ["--config.optim.name=sgd", "--config.optim.learning_rate=0.05"]

pytestmark = pytest.mark.slow  # five real training runs, two of them 2-process: ~3 minutes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _cmd(workdir: str, data_dir: str, steps: int, driver: str | None = None) -> list[str]:
    return [
        sys.executable,
        *(["-c", driver] if driver else [os.path.join(REPO, "train.py")]),
        f"--config={os.path.join(REPO, 'configs/tiny.py')}",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        f"--config.train.num_steps={steps}",
        "--config.train.checkpoint_every_steps=1",
        "--config.train.log_every_steps=1",
        "--config.train.eval_every_steps=0",
        *OVERRIDES,
    ]


def _env(devices: int, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": subprocess_xla_flags(devices),
        **extra,
    }


def run_one(workdir: str, data_dir: str, steps: int = STEPS) -> str:
    """train.py as one process with 8 CPU devices; returns its log."""
    out = subprocess.run(
        _cmd(workdir, data_dir, steps), env=_env(8), cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stderr


def start_two(
    workdir: str,
    data_dir: str,
    logs: str,
    steps: int = STEPS,
    driver: str | None = None,
    **extra_env: str,
) -> list:
    """train.py as processes 0 and 1 of a jax.distributed job on localhost, 4 CPU devices each
    (through `driver`, Python code that runs train.py, if given), with `extra_env` added to their
    environment; their stdout and stderr go to logs/process_<i>.log."""
    os.makedirs(logs, exist_ok=True)
    address = f"localhost:{_free_port()}"
    procs = []
    for i in range(2):
        env = _env(
            4,
            JAX_COORDINATOR_ADDRESS=address,
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(i),
            # jax's default for CPU devices already; named so the test states what it runs on.
            JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
            **extra_env,
        )
        with open(os.path.join(logs, f"process_{i}.log"), "w") as log:
            procs.append(
                subprocess.Popen(
                    _cmd(workdir, data_dir, steps, driver),
                    env=env,
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs


def wait_all(procs: list, logs: str, timeout: float = 600, returncode: int = 0) -> list[str]:
    """Each process's log once all have exited, every one with `returncode`."""
    for p in procs:
        p.wait(timeout=timeout)
    texts = [open(os.path.join(logs, f"process_{i}.log")).read() for i in range(len(procs))]
    for p, text in zip(procs, texts, strict=True):
        assert p.returncode == returncode, text[-3000:]
    return texts


def wait_for_step(workdir: str, procs: list, step: int, timeout: float = 300) -> None:
    """Returns once workdir holds a checkpoint of `step` or later, or a process has ended."""
    ckpts = checkpoint.checkpoint_dir(workdir)
    deadline = time.time() + timeout
    while time.time() < deadline and all(p.poll() is None for p in procs):
        done = [int(d) for d in os.listdir(ckpts) if d.isdigit()] if os.path.isdir(ckpts) else []
        if done and max(done) >= step:
            return
        time.sleep(0.05)


def wait_for_line(procs: list, logs: str, line: str, timeout: float = 120) -> None:
    """Returns once every process's log holds `line`; fails if a process ends first or the
    wait times out."""
    paths = [os.path.join(logs, f"process_{i}.log") for i in range(len(procs))]
    deadline = time.time() + timeout
    while not all(line in open(path).read() for path in paths):
        ended = [p.returncode for p in procs if p.poll() is not None]
        assert not ended and time.time() < deadline, [open(p).read()[-3000:] for p in paths]
        time.sleep(0.05)


def last_lines(procs: list, logs: str, returncode: int, timeout: float = 240) -> list[str]:
    """Each process's last log line once all have exited with `returncode` (all killed if the
    wait times out), none of them having printed a traceback."""
    try:
        texts = wait_all(procs, logs, timeout=timeout, returncode=returncode)
    finally:
        for p in procs:
            p.kill()
    assert all("Traceback" not in text for text in texts)
    return [text.strip().splitlines()[-1] for text in texts]


def run_two(workdir: str, data_dir: str, logs: str, steps: int = STEPS) -> list[str]:
    return wait_all(start_two(workdir, data_dir, logs, steps), logs)


def restore(workdir: str):
    """The workdir's newest good train state, restored (digests verified) onto this test
    process's 8-device mesh, as a 1-process run restores it."""
    config = run_config.load(workdir)
    model = experiment.build_model(config)
    tx = optim.create_optimizer(config.optim, config.train.num_steps)
    abstract = train_state.abstract_train_state(config, model, tx, experiment.make_mesh())
    with checkpoint.create_manager(workdir, config.train.keep_checkpoints) as manager:
        return checkpoint_restore.restore(manager, abstract, config)


def metric_rows(workdir: str) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 1-process and one uninterrupted 2-process run of STEPS steps."""
    root = tmp_path_factory.mktemp("multihost")
    data_dir = str(root / "tfds")
    one, two = str(root / "one"), str(root / "two")
    # The 1-process run prepares the dataset, so the two processes only read it.
    one_log = run_one(one, data_dir)
    two_logs = run_two(two, data_dir, str(root / "logs_two"))
    return {
        "root": root,
        "data_dir": data_dir,
        "one": one,
        "two": two,
        "one_log": one_log,
        "two_logs": two_logs,
    }


def test_two_processes_train_as_one(runs):
    """Same final parameters as one process, up to the order of the gradient all-reduce.

    The two runs see the same examples, crops and flips in the same rows of the same 8
    devices, so each device's partial gradient is bit-identical; only the cross-device sum
    differs (gloo across processes, XLA's in-process all-reduce in one), by float32 rounding.
    Measured: max |difference| 1.5e-8 where SGD moved parameters by up to 2.8e-2 in 6 steps
    (not bit-exact: the sum order differs). The tolerance, 1e-4 of the largest movement (2.8e-6),
    is ~200 times that and far below what one wrong or missing row of the batch (1/16 of the
    gradient, ~1e-3) would change.
    """
    one, two = restore(runs["one"]), restore(runs["two"])
    assert int(one.step) == int(two.step) == STEPS
    config = run_config.load(runs["one"])
    init, _ = train_state.create_train_state(
        config,
        experiment.build_model(config),
        optim.create_optimizer(config.optim, STEPS),
        experiment.make_mesh(),
    )
    moved = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(a0))))
        for a, a0 in zip(jax.tree.leaves(one.params), jax.tree.leaves(init.params), strict=True)
    )
    assert moved > 0  # training moved the parameters: the comparison is not vacuous
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-4 * moved)
    losses = [[r["train/loss"] for r in metric_rows(runs[k])] for k in ("one", "two")]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


def test_each_process_reads_only_its_rows(runs):
    """Each process logs the block of each global batch it reads (tests/data/test_pipeline.py
    checks that it reads exactly those rows); together they cover the batch of one process."""
    assert "Process 0 of 1 reads rows [0, 16) of each global train batch of 16." in runs["one_log"]
    for i, log in enumerate(runs["two_logs"]):
        assert f"Process {i} of 2 reads rows [{8 * i}, {8 * i + 8}) of each global" in log


def test_logs_metrics_and_checkpoints_are_written_once(runs):
    two = runs["two"]
    assert sorted(os.listdir(two)) == ["checkpoints", "config.json", "metrics.jsonl", "run_id"]
    # One row per step: a second writer would have doubled them.
    assert [r["step"] for r in metric_rows(two)] == list(range(1, STEPS + 1))
    assert sorted(os.listdir(checkpoint.checkpoint_dir(two))) == [str(STEPS - 1), str(STEPS)]
    # Each process drew a run id at the first save; the saved steps record process 0's.
    meta = os.path.join(checkpoint.checkpoint_dir(two), str(STEPS), "meta", "metadata")
    assert json.load(open(meta))["run"] == run_config.run_id(two)
    assert json.load(open(os.path.join(two, "config.json")))["train"]["num_steps"] == STEPS


def test_one_process_resumes_the_two_process_checkpoint(runs):
    workdir = str(runs["root"] / "two_then_one")
    shutil.copytree(runs["two"], workdir)
    log = run_one(workdir, runs["data_dir"], steps=STEPS + 2)
    assert f"Resumed from the checkpoint at step {STEPS}." in log
    assert int(restore(workdir).step) == STEPS + 2
    assert [r["step"] for r in metric_rows(workdir)] == list(range(1, STEPS + 3))


def test_killed_process_then_restart_of_both_resumes_bit_identically(runs):
    """SIGKILL process 1 mid-run, then process 0 (a job's scheduler stops the rest of the job);
    restart both: the result is the uninterrupted 2-process run's, bit for bit (same devices,
    same all-reduce, same batches from the resumed step)."""
    workdir, logs = str(runs["root"] / "killed"), str(runs["root"] / "logs_killed")
    procs = start_two(workdir, runs["data_dir"], logs)
    wait_for_step(workdir, procs, 2)
    assert all(p.poll() is None for p in procs), "the run ended before it could be killed"
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    time.sleep(1)  # process 0 runs on without its peer for a moment (it blocks or fails)
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()
    interrupted = restore(workdir)
    assert 2 <= int(interrupted.step) < STEPS
    run_two(workdir, runs["data_dir"], logs)
    resumed, straight = restore(workdir), restore(runs["two"])
    assert int(resumed.step) == int(straight.step) == STEPS
    jax.tree.map(np.testing.assert_array_equal, resumed, straight)
    # The steps redone after the resume are logged once, with the straight run's losses.
    rows = [[(r["step"], r["train/loss"]) for r in metric_rows(d)] for d in (workdir, runs["two"])]
    assert rows[0] == rows[1]


def test_an_unwritable_workdir_stops_every_process(runs, tmp_path):
    """Process 0 cannot write the workdir: both processes stop at once with one line, process 1
    too (it would otherwise wait in its first collective for a process that has exited)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    logs = str(tmp_path / "logs")
    procs = start_two(str(blocker / "run"), runs["data_dir"], logs)
    texts = wait_all(procs, logs, timeout=300, returncode=1)
    assert "a_file/run is not a writable directory" in texts[0]
    assert "process 1: process 0 cannot write" in texts[1]
    assert all("Traceback" not in text for text in texts)


def test_a_run_id_that_cannot_be_written_stops_every_process(runs, tmp_path):
    """Process 0 cannot write workdir/run_id (a directory is in its place) at the run's start:
    both processes stop with one line, as for an unwritable workdir."""
    workdir = tmp_path / "run"
    (workdir / "run_id").mkdir(parents=True)
    logs = str(tmp_path / "logs")
    procs = start_two(str(workdir), runs["data_dir"], logs)
    texts = wait_all(procs, logs, timeout=300, returncode=1)
    assert "run/run_id (Is a directory); remove what is there (rm -r)" in texts[0]
    assert "process 1: process 0 cannot write" in texts[1]
    assert all("Traceback" not in text for text in texts)


def test_a_metrics_log_process_0_cannot_reread_stops_every_process(runs, tmp_path):
    """Process 0 rereads metrics.jsonl at the start (a directory is in its place): both
    processes stop with one line each. Before, process 1 failed 30 s later in gloo's
    DEADLINE_EXCEEDED, with no reason in its log."""
    workdir = tmp_path / "run"
    (workdir / "metrics.jsonl").mkdir(parents=True)
    logs = str(tmp_path / "logs")
    procs = start_two(str(workdir), runs["data_dir"], logs)
    texts = wait_all(procs, logs, timeout=300, returncode=1)
    lasts = [text.strip().splitlines()[-1] for text in texts]
    assert "cannot read and rewrite" in lasts[0] and "metrics.jsonl (Is a directory)" in lasts[0]
    assert lasts[1].startswith("error: process 1: process 0 cannot use ")
    assert all("Traceback" not in text for text in texts)


# evaluate.py --export_dir (the run's own flags otherwise) whose process 1 finds its disk full
# at the second batch of score maps.
EXPORT_FULL_ON_PROCESS_1 = """
import errno, os, runpy, sys
from camjax.localization import wsol_frame
if os.environ["JAX_PROCESS_ID"] == "1":
    save, calls = wsol_frame.save_scoremaps, []
    def full_disk(root, *args, **kwargs):
        calls.append(root)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", os.path.join(root, "x.npy"))
        return save(root, *args, **kwargs)
    wsol_frame.save_scoremaps = full_disk
sys.argv[0] = "evaluate.py"
sys.argv += [f"--export_dir={os.environ['EXPORT_DIR']}", "--config.eval.wsol.eval_size=224",
             "--config.eval.batch_size=8", "--config.eval.max_images=20"]
runpy.run_path("evaluate.py", run_name="__main__")
"""


def test_an_export_that_one_process_cannot_write_stops_every_process(runs, tmp_path, monkeypatch):
    """Each process writes its rows' score maps; process 1's write failure stops both at that
    batch with one line each. Before, process 0 went on into the next batch's collective."""
    workdir, logs = str(tmp_path / "run"), str(tmp_path / "logs")
    shutil.copytree(runs["two"], workdir)
    monkeypatch.setenv("EXPORT_DIR", str(tmp_path / "export"))
    procs = start_two(workdir, runs["data_dir"], logs, driver=EXPORT_FULL_ON_PROCESS_1)
    lasts = last_lines(procs, logs, returncode=1)
    assert lasts[0].startswith("error: process 0: another process could not write its part")
    assert lasts[1].startswith("error: process 1: cannot write ") and (
        "x.npy (No space left on device); make room, or remove what is in the way, then export "
        "again" in lasts[1]
    )


def test_ctrl_c_on_one_process_stops_every_process_at_one_step(runs, tmp_path):
    """Hosts get Ctrl-C at different moments (here only process 0 gets it): every process
    stops before the same step, with exit code 130 and one line, and nothing hangs. Before,
    process 0 stopped alone and process 1 waited in its next collective for good."""
    workdir, logs = str(tmp_path / "run"), str(tmp_path / "logs")
    procs = start_two(workdir, runs["data_dir"], logs, steps=200)
    wait_for_step(workdir, procs, 2)
    assert all(p.poll() is None for p in procs), "the run ended before Ctrl-C"
    procs[0].send_signal(signal.SIGINT)
    try:
        texts = wait_all(procs, logs, timeout=120, returncode=130)
    finally:
        for p in procs:
            p.kill()
    stopped = [re.findall(r"stopped by Ctrl-C before step (\d+)", text) for text in texts]
    assert stopped[0] and stopped[0] == stopped[1], stopped
    assert all("Traceback" not in text for text in texts)


@pytest.mark.parametrize("service", ["jax", "off"])
def test_sigterm_on_one_process_saves_one_step_on_every_process(runs, tmp_path, service):
    """A preemption notice that reaches one host (here process 1): every process saves the
    same step, then stops with exit code 143 and one line, and that step restores. jax's
    preemption service (jax.distributed starts it) catches the SIGTERM and picks the step;
    with the service off, camjax's handler catches it and the processes agree at a step they
    all sync at. Before, the service caught the SIGTERM and training went on to the end."""
    workdir, logs = str(tmp_path / "run"), str(tmp_path / "logs")
    env = {} if service == "jax" else {"JAX_ENABLE_PREEMPTION_SERVICE": "false"}
    procs = start_two(workdir, runs["data_dir"], logs, steps=200, **env)
    wait_for_step(workdir, procs, 2)
    assert all(p.poll() is None for p in procs), "the run ended before SIGTERM"
    procs[1].send_signal(signal.SIGTERM)
    lines = last_lines(procs, logs, returncode=143, timeout=120)
    stopped = [
        re.findall(
            r"stopped by SIGTERM after step (\d+); the newest checkpoint is step (\d+)", line
        )
        for line in lines
    ]
    assert stopped[0] and stopped[0] == stopped[1] and stopped[0][0][0] == stopped[0][0][1], lines
    assert int(restore(workdir).step) == int(stopped[0][0][0])


# train.py validating every 2 steps in two batches, whose process 1 gets a SIGTERM in the first
# validation's first batch.
VALIDATION_GETS_SIGTERM_ON_PROCESS_1 = """
import os, runpy, signal, sys
from camjax.evaluation import evaluator
counts, sent = evaluator.Evaluator._paper_counts, []
def counts_with_sigterm(*args):
    if os.environ["JAX_PROCESS_ID"] == "1" and not sent:
        sent.append(os.kill(os.getpid(), signal.SIGTERM))
    return counts(*args)
evaluator.Evaluator._paper_counts = counts_with_sigterm
sys.argv = ["train.py", *[a for a in sys.argv[1:] if "eval_every_steps" not in a]]
sys.argv += ["--config.train.eval_every_steps=2", "--config.eval.batch_size=8"]
runpy.run_path("train.py", run_name="__main__")
"""


def test_sigterm_during_a_validation_stops_every_process_at_its_step(runs, tmp_path):
    """A SIGTERM to one host while the processes validate step 2: every process stops there,
    between two batches, with step 2 saved and its validation left to the rerun. Before, the
    validation ran to its end, however long, and the processes saved and stopped a step later.
    With jax's preemption service off, the processes agree at every batch (deterministic);
    with it on (the default), they do through the same check the training steps use, and the
    notice reaches the other process asynchronously (test_sigterm_on_one_process...[jax])."""
    workdir, logs = str(tmp_path / "run"), str(tmp_path / "logs")
    env = {"JAX_ENABLE_PREEMPTION_SERVICE": "false"}
    driver = VALIDATION_GETS_SIGTERM_ON_PROCESS_1
    procs = start_two(workdir, runs["data_dir"], logs, steps=200, driver=driver, **env)
    lines = last_lines(procs, logs, returncode=143, timeout=120)
    stopped = [re.findall(r"stopped by SIGTERM after step (\d+)", line) for line in lines]
    assert stopped == [["2"], ["2"]], lines
    assert int(restore(workdir).step) == 2
    assert not [r for r in metric_rows(workdir) if "val/top1_cls" in r]


# evaluate.py that says when jax.distributed is up on its process and then waits there, as in
# a long evaluation, for the test's SIGTERM (a scheduler stopping the job). Each process
# killing itself as soon as its own initialize returned was racy: process 0, which runs the
# coordination service, could go while process 1 was still connecting to it, and process 1
# then waited in jax's start-up for its timeout (2 of 199 tries under load, scratch).
EVALUATE_WAITS_FOR_SIGTERM = """
import runpy, signal, sys
from camjax import distributed
initialize = distributed.initialize
def initialize_then_wait(*args, **kwargs):
    started = initialize(*args, **kwargs)
    print("jax.distributed is up", flush=True)
    signal.pause()  # returns only if a handler caught the SIGTERM: the evaluation then runs
    return started
distributed.initialize = initialize_then_wait
sys.argv[0] = "evaluate.py"
runpy.run_path("evaluate.py", run_name="__main__")
"""


def test_sigterm_stops_a_multi_host_evaluation_at_once(runs, tmp_path):
    """An evaluation has nothing to save: SIGTERM ends it as on one host. Before, jax's
    preemption service caught the signal and the evaluation ran on (to the scheduler's
    SIGKILL, seconds to minutes later)."""
    workdir, logs = str(tmp_path / "run"), str(tmp_path / "logs")
    shutil.copytree(runs["two"], workdir)
    procs = start_two(workdir, runs["data_dir"], logs, driver=EVALUATE_WAITS_FOR_SIGTERM)
    try:
        wait_for_line(procs, logs, "jax.distributed is up")
        for p in reversed(procs):  # process 0, which runs the coordination service, last
            p.send_signal(signal.SIGTERM)
        texts = wait_all(procs, logs, timeout=120, returncode=-signal.SIGTERM)
    finally:
        for p in procs:
            p.kill()
    assert all("GT-known" not in text for text in texts)  # no report was printed


# train.py whose process 1 would read another run's id in workdir/run_id (a disk not shared,
# or a file replaced between the processes' reads).
OTHER_RUN_ID_ON_PROCESS_1 = """
import os, runpy, sys
from camjax import run_config
if os.environ["JAX_PROCESS_ID"] == "1":
    run_config.read_run = lambda workdir: run_config.Run("0" * 16, "0" * 16)
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


def test_processes_that_would_read_different_run_ids_resume_as_one(runs, tmp_path):
    """Only process 0 reads workdir/run_id on a resume; every process takes its id. Read by each
    process, process 1 would skip every step as another run's while process 0 restores one,
    and the job would stop or hang in the restore's collectives."""
    workdir, logs = str(tmp_path / "run"), str(tmp_path / "logs")
    shutil.copytree(runs["two"], workdir)
    procs = start_two(workdir, runs["data_dir"], logs, STEPS + 1, OTHER_RUN_ID_ON_PROCESS_1)
    try:
        texts = wait_all(procs, logs, timeout=300)
    finally:
        for p in procs:
            p.kill()
    for text in texts:
        assert f"Resumed from the checkpoint at step {STEPS}." in text
    assert int(restore(workdir).step) == STEPS + 1
    meta = os.path.join(checkpoint.checkpoint_dir(workdir), str(STEPS + 1), "meta", "metadata")
    assert json.load(open(meta))["run"] == run_config.run_id(runs["two"])


# train.py whose process 0 finds its disk full when it appends the third metrics row.
METRICS_FULL_ON_PROCESS_0 = """
import builtins, errno, os, runpy, sys
from camjax.train import metric_writer
if os.environ["JAX_PROCESS_ID"] == "0":
    appends = []
    def full_disk_open(path, mode="r", *args, **kwargs):
        if str(path).endswith("metrics.jsonl") and mode == "a":
            appends.append(path)
            if len(appends) >= 3:
                raise OSError(errno.ENOSPC, "No space left on device", path)
        return builtins.open(path, mode, *args, **kwargs)
    metric_writer.open = full_disk_open
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


def test_a_metrics_row_process_0_cannot_write_stops_every_process(runs, tmp_path):
    """Only process 0 appends metrics.jsonl: its failure stops both processes at that step with
    one line each. Before, process 1 waited in its next collective until jax's shutdown barrier
    aborted both, 5 minutes later, with no reason in its log."""
    workdir, logs = str(tmp_path / "run"), str(tmp_path / "logs")
    procs = start_two(workdir, runs["data_dir"], logs, driver=METRICS_FULL_ON_PROCESS_0)
    lasts = last_lines(procs, logs, returncode=1)
    assert lasts[0].startswith("error: process 0: could not append to ")
    assert (
        "metrics.jsonl (No space left on device); free space there or train in another "
        "--workdir, then rerun: training resumes from its newest checkpoint, if any." in lasts[0]
    )
    assert lasts[1].startswith("error: process 1: process 0 could not append to ")


# train.py whose process 0 finds its disk full (only process 0 measures it).
FULL_DISK_ON_PROCESS_0 = """
import os, runpy, shutil, sys
if os.environ["JAX_PROCESS_ID"] == "0":
    disk_usage = shutil.disk_usage
    shutil.disk_usage = lambda path: disk_usage(path)._replace(free=0)
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


def test_a_disk_too_full_for_a_step_stops_every_process(runs, tmp_path):
    """Process 0 finds no room for the first step: both processes stop at it with process 0's
    one line, process 1 too (it would otherwise wait for good in orbax's save barrier)."""
    workdir, logs = str(tmp_path / "run"), str(tmp_path / "logs")
    procs = start_two(workdir, runs["data_dir"], logs, driver=FULL_DISK_ON_PROCESS_0)
    try:
        texts = wait_all(procs, logs, timeout=300, returncode=1)
    finally:
        for p in procs:
            p.kill()
    for i, text in enumerate(texts):
        assert "Traceback" not in text
        last = text.strip().splitlines()[-1]
        assert last.startswith(
            f"error: process {i}: not enough disk space to save checkpoint step 1: it needs "
        )
        assert " and 0.0 MB are free in " in last and "so it starts over" in last
    assert os.listdir(checkpoint.checkpoint_dir(workdir)) == []
