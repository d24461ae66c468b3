"""Orbax checkpoints of a run: the train state per step, and the config beside them.

This module writes them; `checkpoint_restore` reads them back: training the whole state,
evaluation only the model variables.

Orbax writes each step into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoint as the latest complete one; `latest_step()` only
sees complete ones. The model config is saved with every step so that restoring with a different
architecture fails with a message that says what differs, not an opaque shape error; the whole
run config is kept in workdir/config.json so that `evaluate.py --workdir DIR` needs nothing else.

A save that cannot complete (a full disk, a quota, an I/O error) stops training with a one-line
CheckpointError naming the step, the reason and the step a rerun resumes from: a disk too full
for the step is seen before anything is written, and a write that fails in orbax's background
threads all the same is reported at the next save or at the end of the run.
"""

import contextlib
import gc
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from camjax import digests, distributed, errors, run_config

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint is missing or does not match the config; `rejected`: (step, reason) of every
    step skipped, when no step was good."""

    def __init__(self, message: str, rejected: tuple[tuple[int, str], ...] = ()):
        super().__init__(message)
        self.rejected = rejected


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def create_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
    """A manager over workdir/checkpoints keeping the `keep` newest steps. A directory that
    cannot be listed is a one-line CheckpointError."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    handlers = ocp.handlers.DefaultCheckpointHandlerRegistry()
    handlers.add(None, ocp.args.PyTreeSave, _state_writer())  # reading stays orbax's default
    directory = checkpoint_dir(workdir)

    def manager() -> ocp.CheckpointManager:
        return ocp.CheckpointManager(directory, options=options, handler_registry=handlers)

    try:
        # Multi-host, the constructor waits at a named barrier that must be met once: no retry.
        return retry_listing(manager, directory) if jax.process_count() == 1 else manager()
    except OSError as e:
        reason = e.strerror or errors.first_line(e)
        raise CheckpointError(
            f"cannot read the checkpoints in {directory} ({reason}); fix the directory's "
            "permissions or choose another --workdir."
        ) from None


@contextlib.contextmanager
def closed_on_error(manager: ocp.CheckpointManager) -> Iterator[None]:
    """Closes `manager` if the block fails, where the caller closes it only on success: a
    library or notebook caller whose run stops early keeps no orbax threads."""
    try:
        yield
    except BaseException:
        manager.close()
        raise


def retry_listing(list_steps: Callable[[], Any], directory: str) -> Any:
    """list_steps() (orbax listing the step directories), again when it fails because a step
    disappeared: orbax lists the steps, then reads each one's metadata, and a run still
    training removes its old steps in between. Single-process only (see the callers)."""
    for _ in range(3):
        try:
            return list_steps()
        except (FileNotFoundError, NotADirectoryError):  # orbax raises either
            pass
    raise CheckpointError(
        f"the checkpoints in {directory} changed while being listed, three times: a run still "
        "training there replaces them faster than they list; evaluate once it ends."
    )


def _state_writer() -> ocp.PyTreeCheckpointHandler:
    """orbax's pytree writer with its default type handlers, except that a replicated array is
    written whole by one replica instead of in one slice per device.

    Off GPUs orbax defaults to replica-parallel writing: every replicated array is cut into one
    slice per device, and each slice shape is a separately compiled op. On a process's first
    save of ResNet50-CAM that is ~200 compilations, 10 s of the 2-core CPU (the tiny recipe
    test alone: 44.2 s before, 31.9 s after), for a copy one host makes at memory speed. Whole-array
    writing is orbax's default on GPUs; the step reads back the same either way.
    """
    whole = ocp.type_handlers.ArrayHandler(use_replica_parallel=False)
    handlers = [
        (t, whole if t is jax.Array else ocp.type_handlers.get_type_handler(t))
        for t in ocp.type_handlers.supported_types()
    ]
    registry = ocp.type_handlers.create_type_handler_registry(*handlers)
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


RECORDED_CONFIG, RECORDED_DEVICES = "config", "devices"  # in a step's metadata (`step_meta`)


def model_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What must match between a checkpoint and the config that restores it."""
    fields = config.model.to_dict()
    # Compute dtype, the grouped-conv implementation and the head's initial draw do not change
    # the parameters' shapes or meaning.
    for k in ("dtype", "grouped_conv_impl", "head_init_std"):
        fields.pop(k, None)
    # WSOL methods whose heads replace the GAP head ('acol', 'spg') change the parameters; the
    # others, and runs saved before config.method existed, keep the fingerprint they had.
    method = config.get("method")
    if method is not None and method.name in ("acol", "spg"):
        fields["wsol_method"] = method.name
    # The seed tells runs of one recipe apart (a seed sweep's sibling runs): a step copied in
    # from another of them is another run's, which digests and the architecture cannot see.
    return {"model": fields, "dataset": config.data.name, "seed": config.seed}


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    config,
    run: run_config.Run | None = None,
) -> None:
    """Saves `state` as `step` (asynchronously), with the digest of every array inside the same
    atomic step directory, and the run's config beside the checkpoints. run: this training's
    hold on its run (`run_config.start_run`), whose id the step records; None records none.

    The save in flight, if any, completes first (orbax's own save waits for it too): one that
    failed, a disk without room for this step, or a workdir that another training has taken
    since (its run_id) raises a one-line CheckpointError and nothing of this step is written.
    """
    wait(manager)
    _check_free_space(manager, step, state)
    workdir = os.path.dirname(str(manager.directory))
    if run is not None:
        _check_run(workdir, step, run)
    meta = step_meta(config, step, run and run.id)
    try:
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(state),
                meta=ocp.args.JsonSave(meta),
                digests=ocp.args.JsonSave(digests.step_digests(state, step, meta)),
            ),
        )
    except Exception as e:
        if not (reason := errors.os_reason(e)):
            raise  # not the disk or the filesystem: a bug, which keeps its traceback
        last = newest_complete_step(manager)
        raise CheckpointError(_failed_save_message(manager, step, reason, last)) from e
    run_config.save(workdir, config)


def _check_run(workdir: str, step: int, run: run_config.Run) -> None:
    """A one-line CheckpointError, on every process, when workdir/run_id is no longer this
    training's: another training started or resumed in the same workdir (or the file was
    overwritten), and their steps would mix. A run_id removed meanwhile is written again."""
    path, problem = os.path.join(workdir, run_config.RUN_ID), ""
    if jax.process_index() == 0:
        try:
            problem = _run_problem(workdir, step, run, run_config.read_run(workdir))
        except run_config.RunConfigError as e:
            problem = str(e)
    elsewhere = f"process 0 cannot use {path} (its error says why)"
    if problem := distributed.shared_problem(problem, elsewhere):
        raise CheckpointError(problem)


def _run_problem(workdir: str, step: int, run: run_config.Run, found: run_config.Run | None) -> str:
    """Why process 0 cannot save `step` of `run` when workdir/run_id holds `found`; '' when
    it can (a missing run_id is written again first)."""
    path = os.path.join(workdir, run_config.RUN_ID)
    if found is None:
        return run_config.try_write_run(workdir, run)
    if found.id != run.id:
        return (
            f"{path} names run {found.id!r}, not this run's {run.id!r}; nothing of step {step} "
            f"was written. If another training started in {workdir}, let one of them go on; if "
            f"the file was overwritten, write this run back (echo {run.id} > {path}) and rerun."
        )
    if found.owner != run.owner:
        return (
            f"another training resumed this run in {workdir} since this one started (its token "
            f"in {path}); nothing of step {step} was written, and this one stops: let the other "
            "go on, or stop it and rerun."
        )
    return ""


def step_meta(config: ml_collections.ConfigDict, step: int, run: str | None) -> dict[str, Any]:
    """A step's metadata: the model fingerprint, the step itself (a step directory renamed or
    copied by hand is caught when restored, not reported under another step's number), the
    run's id (a step copied in from another run's workdir is caught even when that run shared
    this one's model, dataset and seed, e.g. a learning-rate sweep's sibling), and the whole
    config and device count it was trained with, which a resume compares with its own (the
    fingerprint alone lets a step restore; the rest says whether training would go on as it
    was)."""
    meta = {
        **model_fingerprint(config),
        "step": int(step),
        RECORDED_CONFIG: run_config.config_json(config),
        RECORDED_DEVICES: jax.device_count(),
    }
    return meta if run is None else {**meta, "run": run}


def wait(manager: ocp.CheckpointManager) -> None:
    """Blocks until the save in flight, if any, is complete. One that failed in orbax's
    background threads raises a one-line CheckpointError naming its step, the reason (the
    operating system's, e.g. "No space left on device", when there is one), the directory and
    the newest complete step, and leaves the manager closed: the run stops there, and a second
    wait (or close) returns quietly."""
    # orbax lists a step from the moment its save is queued, so the newest is the one in flight.
    in_flight = manager.latest_step()
    # Called in a `finally` as another error propagates (a config.json that cannot be written),
    # that error becomes the __context__ of orbax's: it keeps its traceback (`_raised_by_camjax`
    # reads it to print its one line).
    propagating = sys.exc_info()[1]
    try:
        manager.wait_until_finished()
        return
    except Exception as e:  # orbax re-raises the background save's error, of any type
        # orbax keeps the error in more than one place and raises it again at the next save or
        # at close, over whatever the caller raises then. Closing the manager waits for its
        # checkpointer's thread and takes the copies, so the failure is reported once.
        with contextlib.suppress(Exception):
            manager.close()
        if not (reason := errors.os_reason(e)):
            raise  # not the disk or the filesystem: a bug, which keeps its traceback (as in save)
        last = newest_complete_step(manager)
        if last == in_flight:  # saved; deleting an old step failed
            oldest = min(manager.all_steps())  # what orbax could not remove is still there
            message = (
                f"checkpoint step {in_flight} was saved in {manager.directory}, but removing an "
                f"older step failed ({reason}); remove the steps beyond keep_checkpoints by hand "
                f"(the oldest: rm -r {os.path.join(str(manager.directory), str(oldest))}), then "
                f"rerun: it resumes from step {in_flight}."
            )
        else:
            message = _failed_save_message(manager, in_flight, reason, last)
        # The tracebacks hold the frames of orbax's abandoned writes, and through them their
        # asyncio tasks: dropped here and collected below, the tasks log "exception was never
        # retrieved" before the one-line error, not after it or at interpreter shutdown (as
        # "ImportError: sys.meta_path is None"). orbax has logged the traceback itself.
        for link in errors.exception_chain(e):
            if link is propagating:
                break
            link.__traceback__ = None
        cause = e
    gc.collect()
    raise CheckpointError(message) from cause


def close(manager: ocp.CheckpointManager, finished: bool) -> None:
    """Training's end: the async save in flight completes (or is abandoned whole), then the
    manager closes. If the save failed while the run was stopping on another error (not
    `finished`), that error says why the run stopped and stays the one raised; the lost step
    is logged in one line."""
    try:
        wait(manager)
    except CheckpointError as e:
        if finished:
            raise
        log.warning("%s", e)
    finally:
        manager.close()


def newest_complete_step(manager: ocp.CheckpointManager) -> int | None:
    """The newest complete step on disk, once no save is in flight (after `wait`). Read from
    the directory: orbax's own list drops the old steps a save would delete on completion,
    and a failed save never deletes them."""
    manager.reload()
    steps = manager.all_steps()
    return max(steps) if steps else None


def last_saved(manager: ocp.CheckpointManager) -> int | None:
    """The newest complete step on disk once any save in flight has finished or failed: a save
    counts when it is done, not when it is queued (a full disk fails it in the background).
    Steps saved by this run were checked finite first; an earlier one was verified on resume."""
    try:
        wait(manager)
    except CheckpointError as e:
        log.warning("%s", e)  # the error being raised says why the run stops; this, what it lost
    return newest_complete_step(manager)


def _failed_save_message(
    manager: ocp.CheckpointManager, step: int | None, reason: str, last: int | None
) -> str:
    return (
        f"saving checkpoint step {step} in {manager.directory} failed ({reason}); the earlier "
        f"steps are intact. Fix the cause (a full disk: free space there or train in another "
        f"--workdir), then rerun: {_resumes(last)}."
    )


def _resumes(last: int | None) -> str:
    """Where a rerun starts, given the newest complete step."""
    if last is None:
        return "no step was saved yet, so it starts over"
    return f"it resumes from step {last}, the newest complete one"


# A step takes about its arrays' bytes on disk, plus metadata. Measured on the default model
# (81 arrays, 0.48 MB) and ResNet50-CAM (433 arrays, 192 MB) with trained-like values: the
# arrays' OCDBT files are 0.93-0.98 of their nbytes (zstd gains little on trained floats), and
# each array adds 1.3-1.7 kB of metadata (its entries in _METADATA, _sharding and the digests).
_METADATA_BYTES_PER_ARRAY = 2048
# The files and directories of a step each end in a partly used 4 KiB block, and the first save
# also writes config.json (~5 kB). There are ~20 besides OCDBT's data files, whose number varies
# with the writes' timing: 8 to ~30 for the tests' tiny model, the most on a loaded machine
# (a step of 1.06 MB idle took 1.17 MB there). 256 KiB holds 64 such blocks; the estimate is
# then 1.31x the default model's step as `du` counts it (0.91 MB for 0.69 MB), 1.21x the tiny
# model's and 1.08x ResNet50-CAM's: an overestimate refuses a save only on a disk that full.
_STEP_SLACK_BYTES = 256 * 1024


def step_bytes(state: Any) -> int:
    """The disk space a save of `state` needs, slightly overestimated (see above): the global
    bytes of its arrays, whichever processes hold them, plus metadata."""
    leaves = jax.tree.leaves(state)
    arrays = sum(getattr(x, "nbytes", 8) for x in leaves)  # 8: a Python scalar leaf
    return arrays + _METADATA_BYTES_PER_ARRAY * len(leaves) + _STEP_SLACK_BYTES


def _check_free_space(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
    """A one-line CheckpointError, before anything is written, when the checkpoint directory's
    filesystem cannot hold `step`. Call it with no save in flight: that one's files count.

    A write that runs out of space fails in orbax's background threads with a page of
    tracebacks, and only at the next save; this says it at once, with the numbers. Process 0
    measures and every process decides on its figure: a process that went on alone would wait
    in orbax's save barrier for good.
    """
    directory = str(manager.directory)
    needed = step_bytes(state)
    leftover = os.path.join(directory, f"{step}.orbax-checkpoint-tmp")
    free, stuck = 0.0, ""
    if jax.process_index() == 0:
        # A half-written copy of this step from an earlier run: orbax removes it before the
        # write, in its background threads, where a failure to remove it (its permissions)
        # left the process waiting out orbax's 300 s timeouts after the error. Removed here,
        # before the free space is measured.
        try:
            if os.path.islink(leftover) or os.path.isfile(leftover):
                os.unlink(leftover)
            else:
                shutil.rmtree(leftover)
        except FileNotFoundError:
            pass
        except OSError as e:
            stuck = e.strerror or errors.first_line(e)
        free = -1.0 if stuck else shutil.disk_usage(directory).free
    if jax.process_count() > 1:
        # float32: jax's arrays hold no int64 by default; its 24-bit mantissa is exact enough.
        free = float(multihost_utils.broadcast_one_to_all(np.float32(free)))
    if free < 0:
        raise CheckpointError(
            f"a half-written copy of checkpoint step {step} from an earlier run, {leftover}, "
            f"cannot be removed ({stuck or 'on process 0'}); nothing of step {step} was "
            "written. Remove it by hand, then rerun: "
            f"{_resumes(newest_complete_step(manager))}."
        )
    if free >= needed:
        return
    # orbax deletes an old step only once a new one is complete, so a lower keep_checkpoints
    # frees nothing before this save: removing the oldest step by hand does.
    # (Never the only step: it is what a rerun resumes from.)
    last = newest_complete_step(manager)  # reloads the list of steps from the directory
    steps = sorted(manager.all_steps())
    oldest = (
        f" (e.g. the oldest step: rm -r {os.path.join(directory, str(steps[0]))})"
        if len(steps) > 1
        else ""
    )
    raise CheckpointError(
        f"not enough disk space to save checkpoint step {step}: it needs about "
        f"{_megabytes(needed)} and {_megabytes(free)} are free in {directory}; nothing of it "
        f"was written. Free space there{oldest} or train in another --workdir, then rerun: "
        f"{_resumes(last)}."
    )


def _megabytes(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"  # one unit for needed and free, so that they compare at a glance
