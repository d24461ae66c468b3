"""Restoring a run's checkpoints (`checkpoint.py` writes them): the newest step that can be
trusted, verified before a single value of it is used.

A step is trusted when its metadata and digests read, its metadata matches its digest (steps
saved since 2026-12-07 have one), they name this step, this workdir's run
(`run_config.run_id`) and this config's model, dataset and seed (`checkpoint.model_fingerprint`),
and every array read back matches its digest and is finite. Any other step is logged with its
reason and skipped, never moved or deleted; when none is left the error lists every step's
reason.
"""

import logging
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp

from camjax import checkpoint, digests, distributed, errors, run_config

log = logging.getLogger(__name__)

_OTHER_CONFIG = "was trained with a different config"
UNREADABLE = "its arrays do not read"
_INCOMPLETE = "incomplete"  # the start of the reasons for metadata missing or not reading
_OTHER_RUN = "it was saved by another run"  # the start of the reasons naming another run id


def restore(manager: ocp.CheckpointManager, abstract_state: Any, config) -> Any:
    """The newest good step's whole train state, in the shardings of abstract_state.

    Steps are tried from the newest: one that is incomplete, was saved by another run, fails to
    read, fails its digests or holds a non-finite value is logged (one line, with the reason)
    and skipped, never touched.
    """

    def read(step: int) -> Any:
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        return manager.restore(step, args=args)["state"]

    return _restore_newest_good(manager, config, read)[0]


def restore_variables(
    manager: ocp.CheckpointManager, abstract_variables: dict[str, Any], config
) -> tuple[dict[str, Any], int]:
    """(model variables, step) of the newest good step: {'params': ..., 'batch_stats': ...} as
    `model.apply` takes them, restored into abstract_variables' shardings and verified as in
    `restore`. The optimizer state stays on disk, so evaluation needs no optimizer."""
    wanted = {k: v for k, v in abstract_variables.items() if jax.tree.leaves(v)}

    def read(step: int) -> Any:
        args = ocp.args.PyTreeRestore(
            item=wanted,
            restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
            partial_restore=True,
        )
        return manager.restore(step, args=ocp.args.Composite(state=args))["state"]

    restored, step = _restore_newest_good(manager, config, read)
    return {k: restored.get(k, v) for k, v in abstract_variables.items()}, step


def _restore_newest_good(
    manager: ocp.CheckpointManager, config, read: Callable[[int], Any]
) -> tuple[Any, int]:
    """(tree, step) of the newest step that reads, matches its digests and is finite. With
    none: a config error when no step matched the config and some named another, else a
    damage report listing every step's reason."""
    for attempt in range(3):
        found = _newest_good(manager, config, read, first=attempt == 0)
        if found is not None:
            return found
        checkpoint.retry_listing(manager.reload, str(manager.directory))
    if not manager.all_steps():
        raise checkpoint.CheckpointError(
            f"no checkpoint is left in {manager.directory}: its steps were removed while being "
            "read."
        )
    raise checkpoint.CheckpointError(
        f"the checkpoints in {manager.directory} were removed while being read, three times: "
        "a run still training there replaces them faster than they read; evaluate once it ends."
    )


def _newest_good(
    manager: ocp.CheckpointManager, config, read, first: bool
) -> tuple[Any, int] | None:
    """`_restore_newest_good`'s search over the steps listed now; None when one of them was
    removed while being read (the steps are listed again and searched anew), or when a listing
    after that (not `first`) finds none while the newest is renamed into place."""
    directory = str(manager.directory)
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps and not first:
        return None
    if not steps:
        raise checkpoint.CheckpointError(
            f"no checkpoint in {directory}; train first (train.py --workdir with the same "
            "directory) or point --workdir at a trained run."
        )
    rejected, config_matched = [], False
    run = run_config.run_id(os.path.dirname(directory))  # None: a workdir from before ids
    for step in steps:
        tree, reason, matched = _verified(manager, config, run, step, read)
        # A step removed while it was read fails to read; it never fails its digests or config.
        if reason.startswith((_INCOMPLETE, UNREADABLE)) and _superseded(manager, step, steps[0]):
            # Gone, or going: a run still training removes its old steps (keep_checkpoints)
            # once a newer one is complete. Not reported as damage.
            log.info(
                "Checkpoint step %d did not read and is gone or has a newer step beside it "
                "now; searching the steps on disk again.",
                step,
            )
            return None
        config_matched = config_matched or matched
        if not reason:
            if rejected:
                log.warning(
                    "Restored checkpoint step %d, the newest good one in %s.", step, directory
                )
            return tree, step
        rejected.append((step, reason))
        _log_skipped(step, directory, reason)
    raise _no_good_step(directory, rejected, config_matched)


def _log_skipped(step: int, directory: str, reason: str) -> None:
    if reason.startswith(_OTHER_CONFIG):
        log.warning("Skipped checkpoint step %d in %s: it %s.", step, directory, reason)
        return
    log.warning(
        "Skipped checkpoint step %d in %s: %s. Nothing was moved or deleted; once you have "
        "looked at it, remove it with: rm -r %s",
        step,
        directory,
        reason,
        os.path.join(directory, str(step)),
    )


def _no_good_step(
    directory: str, rejected: list[tuple[int, str]], config_matched: bool
) -> checkpoint.CheckpointError:
    """The error when every step was `rejected`: a config error when no step matched the config
    and some named another, else a damage report listing every step's reason."""
    other_config = [(step, reason) for step, reason in rejected if reason.startswith(_OTHER_CONFIG)]
    if other_config and not config_matched:
        # No step agrees with the config and some say it differs: the config is wrong, not
        # the checkpoints (the others' metadata did not read).
        step, reason = other_config[0]
        return checkpoint.CheckpointError(
            f"the checkpoint at step {step} in {directory} {reason}. Use the config the run was "
            "trained with (the run's config.json holds it, unless that file was edited since).",
            tuple(rejected),
        )
    step_runs = {
        re.search(r"run id '(\w+)'", r)[1] for _, r in rejected if r.startswith(_OTHER_RUN)
    }
    if len(step_runs) == 1 and all(r.startswith(_OTHER_RUN) for _, r in rejected):
        # Every step is of one other run: the workdir's run_id is what changed, not the steps.
        path = os.path.join(os.path.dirname(directory), run_config.RUN_ID)
        step_run = step_runs.pop()
        return checkpoint.CheckpointError(
            f"every step in {directory} was saved by run {step_run!r}, not the run {path} "
            f"names. If that file was overwritten, write the run back (echo {step_run} > "
            f"{path}) and rerun; if the steps were copied from another workdir, copy its "
            "run_id too. Nothing was moved or deleted.",
            tuple(rejected),
        )
    return checkpoint.CheckpointError(
        f"no good checkpoint in {directory}: {rejected_steps(rejected)}. Nothing was moved or "
        "deleted; remove the damaged steps (rm -r) and train again.",
        tuple(rejected),
    )


def _superseded(manager: ocp.CheckpointManager, step: int, newest_listed: int) -> bool:
    """Whether `step` failed to read because a run still training is removing it: its
    directory is gone, or a step newer than any listed before is now complete. Single-process
    only: hosts would each decide by their own timing, and their restores' collectives then
    pair up across different steps (multi-host, such a step is reported as damaged)."""
    if jax.process_count() > 1:
        return False
    if not os.path.isdir(os.path.join(str(manager.directory), str(step))):
        return True
    checkpoint.retry_listing(manager.reload, str(manager.directory))
    return max(manager.all_steps(), default=newest_listed) > newest_listed


def recorded(
    manager: ocp.CheckpointManager, run: str | None = None
) -> tuple[dict | None, int | None]:
    """(config, device count) that the newest step of `run` (None: any) recording them was
    trained with (its metadata, `checkpoint.step_meta`); None for either where no such step's
    metadata reads, matches its digest and holds it (steps saved before 2026-12-06). The
    arrays are the restore's to check; a step of another run says nothing of this run."""
    for step in sorted(manager.all_steps(), reverse=True):
        meta = _meta(manager, step)
        if meta is None or (run is not None and meta.get("run", run) != run):
            continue
        if isinstance(meta.get(checkpoint.RECORDED_CONFIG), dict):
            devices = meta.get(checkpoint.RECORDED_DEVICES)
            return meta[checkpoint.RECORDED_CONFIG], devices if isinstance(devices, int) else None
    return None, None


def recorded_at(manager: ocp.CheckpointManager, step: int) -> dict | None:
    """The config `step` recorded it was trained with (None: none recorded, or unreadable)."""
    config = (_meta(manager, step) or {}).get(checkpoint.RECORDED_CONFIG)
    return config if isinstance(config, dict) else None


def _meta(manager: ocp.CheckpointManager, step: int) -> dict | None:
    """`step`'s metadata, checked against its digest; None where it does not read or check (a
    damaged or vanished step: the restore reports it)."""
    try:
        items = ocp.args.Composite(meta=ocp.args.JsonRestore(), digests=ocp.args.JsonRestore())
        saved = manager.restore(step, args=items)
    except Exception:
        return None
    meta, sums = saved["meta"], saved["digests"]
    if not (isinstance(meta, dict) and isinstance(sums, dict)) or digests.meta_problem(meta, sums):
        return None
    return meta


def check_resumed_config(config, manager, workdir: str, resume_with_changes: bool) -> None:
    """Compares `config` with the run's: the config its newest step recorded, else config.json
    (read first: a damaged one stops the run here, not at its first save). A field that changes
    what training computes is a one-line error unless `resume_with_changes`: a run that went on
    under other values would be a mix that no config describes. A longer or shorter
    train.num_steps extends or ends the run, with a warning where the schedule follows it; the
    `run_config.BOOKKEEPING` fields change freely; another device count is said, since the
    sums' order changes with it."""
    saved_json = run_config.read_saved(workdir)
    saved, devices = recorded(manager, run_config.run_id(workdir))
    saved = saved_json if saved is None else saved
    # Neither: a run from before both were kept.
    training, num_steps, bookkeeping = (
        run_config.resume_differences(saved, config) if saved is not None else ("", "", "")
    )
    problem = ""
    if training and not resume_with_changes:
        problem = (
            f"the run in {workdir} was trained with another config ({training}): going on with "
            "this one would mix the two. Rerun with the run's values, or train in another "
            "workdir, or pass --resume_with_changes to go on under the new values (the steps "
            "saved from then on record them); nothing was moved or deleted."
        )
    elsewhere = f"process 0 found the run in {workdir} trained with another config."
    if problem := distributed.shared_problem(problem, elsewhere):
        raise run_config.RunConfigError(problem)
    if training:
        log.warning("Resuming with --resume_with_changes, under new values: %s.", training)
    bridging = config.get("method") is not None and config.method.name == "bridging"
    if num_steps and (config.optim.schedule == "cosine" or bridging):
        log.warning(
            "Resuming with %s: the learning-rate schedule%s spans num_steps, so the steps from "
            "here on follow another schedule than the steps before them.",
            num_steps,
            " (and Bridging's warm-up)" if bridging else "",
        )
    elif num_steps:
        log.info("Resuming with %s.", num_steps)
    if bookkeeping:
        log.info("Resuming with settings that do not change training: %s.", bookkeeping)
    if devices is not None and devices != jax.device_count():
        log.warning(
            "Resuming on %d devices a run whose last step trained on %d: the same batches and "
            "updates, summed in another order, so not bit-identical to an uninterrupted run.",
            jax.device_count(),
            devices,
        )


def saved_run(manager: ocp.CheckpointManager, step: int) -> str | None:
    """The run id a (verified) step recorded; None for a step saved before ids (2026-12-05)."""
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    return meta.get("run")


def rejected_steps(rejected) -> str:
    """'step 6: reason; step 4: reason' of `checkpoint.CheckpointError.rejected`."""
    return "; ".join(f"step {step}: {reason}" for step, reason in rejected)


def _verified(
    manager: ocp.CheckpointManager, config, run: str | None, step: int, read
) -> tuple[Any, str, bool]:
    """(restored tree, '', True) for a good `step` of the workdir's `run`, else (None, a
    one-line reason it cannot be trusted, whether its metadata matched the config). A step
    whose metadata names another model is rejected too; when no step matches, the caller
    reports a config error."""
    try:
        items = ocp.args.Composite(meta=ocp.args.JsonRestore(), digests=ocp.args.JsonRestore())
        saved = manager.restore(step, args=items)
        meta, saved_digests = saved["meta"], saved["digests"]
    except Exception as e:  # orbax and tensorstore raise many types for a damaged step
        return None, f"{_INCOMPLETE} or unreadable metadata ({errors.first_line(e)})", False
    if meta is None or saved_digests is None:
        return None, f"{_INCOMPLETE}: its metadata or digests are missing", False
    for name, value in (("metadata", meta), ("digests", saved_digests)):
        if not isinstance(value, dict):
            return None, f"its {name} is not an object ({type(value).__name__})", False
    if reason := digests.meta_problem(meta, saved_digests):
        return None, reason, False
    meta = dict(meta)
    # What a resume compares (`recorded`), not what decides whether the step restores.
    meta.pop(checkpoint.RECORDED_CONFIG, None)
    meta.pop(checkpoint.RECORDED_DEVICES, None)
    saved_step = meta.pop("step", step)  # absent in steps saved before the step was recorded
    if saved_step != step:
        reason = (
            f"it holds step {saved_step!r} in its metadata, not {step} (renamed or copied by hand?)"
        )
        return None, reason, False
    if reason := digests.saved_problem(saved_digests, step):
        return None, reason, False
    step_run = meta.pop("run", None)  # absent in steps saved before runs had ids (2026-12-05)
    if None not in (step_run, run) and step_run != run:
        reason = (
            f"{_OTHER_RUN} (run id {step_run!r}; this workdir's is {run!r}): "
            "copied in from another workdir? (to resume that run here, copy its run_id too)"
        )
        return None, reason, False
    # As saved: tuples are lists.
    expected = run_config.as_json(checkpoint.model_fingerprint(config))
    if "seed" not in meta:  # saved before the seed was recorded (2026-12-05)
        del expected["seed"]
    if meta != expected:
        return None, f"{_OTHER_CONFIG}: {run_config.compare(meta, expected)}", False
    try:
        tree = read(step)
        # orbax's partial restore (evaluation's) leaves an array its metadata does not list
        # as the abstract array it was asked for.
        if missing := [
            jax.tree_util.keystr(p, simple=True, separator="/")
            for p, x in jax.tree_util.tree_leaves_with_path(tree)
            if isinstance(x, jax.ShapeDtypeStruct)
        ]:
            return None, f"{UNREADABLE} ({missing[0]} is not in it)", True
        reason = digests.tree_problem(tree, saved_digests)
    except Exception as e:
        return None, f"{UNREADABLE} ({errors.first_line(e)})", True
    return (None, reason, True) if reason else (tree, "", True)
