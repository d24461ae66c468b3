"""Orbax checkpoints of a run: the train state per step, and the config beside them.

Training saves and restores the whole state; evaluation restores only the model variables.

Orbax writes each step into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoint as the latest complete one; `latest_step()` only
sees complete ones. The model config is saved with every step so that restoring with a different
architecture fails with a message that says what differs, not an opaque shape error; the whole
run config is kept in workdir/config.json so that `evaluate.py --workdir DIR` needs nothing else.
"""

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
    """A checkpoint is missing or does not match the config."""


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def create_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
    """A manager over workdir/checkpoints keeping the `keep` newest steps."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def model_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What must match between a checkpoint and the config that restores it."""
    fields = config.model.to_dict()
    # Compute dtype and the grouped-conv implementation do not change the parameters.
    for k in ("dtype", "grouped_conv_impl"):
        fields.pop(k, None)
    return {"model": fields, "dataset": config.data.name}


def save(manager: ocp.CheckpointManager, step: int, state: Any, config) -> None:
    """Saves `state` as `step` (asynchronously) and the run's config beside the checkpoints."""
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(model_fingerprint(config)),
        ),
    )
    save_run_config(os.path.dirname(str(manager.directory)), config)


def restore(
    manager: ocp.CheckpointManager, abstract_state: Any, config, step: int | None = None
) -> Any:
    """Restores `step` (default: the latest complete one) into the shardings of abstract_state."""
    step = _checked_step(manager, config, step)
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    )
    return restored["state"]


def restore_variables(
    manager: ocp.CheckpointManager, abstract_variables: dict[str, Any], config
) -> tuple[dict[str, Any], int]:
    """(model variables, step) of the latest checkpoint: {'params': ..., 'batch_stats': ...} as
    `model.apply` takes them, restored into abstract_variables' shardings. The optimizer state
    stays on disk, so evaluation needs no optimizer."""
    step = _checked_step(manager, config, None)
    wanted = {k: v for k, v in abstract_variables.items() if jax.tree.leaves(v)}
    args = ocp.args.PyTreeRestore(
        item=wanted,
        restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
        partial_restore=True,
    )
    restored = manager.restore(step, args=ocp.args.Composite(state=args))["state"]
    return {k: restored.get(k, v) for k, v in abstract_variables.items()}, step


def _checked_step(manager: ocp.CheckpointManager, config, step: int | None) -> int:
    """`step` (default: the latest complete one), after checking it was saved for this model."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(
            f"no checkpoint in {manager.directory}; train first (train.py --workdir with the same "
            "directory) or point --workdir at a trained run."
        )
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    expected = model_fingerprint(config)
    if meta != expected:
        diffs = _differences(meta, expected)
        raise CheckpointError(
            f"the checkpoint at step {step} in {manager.directory} was trained with a different "
            f"config: {diffs}. Use the config the run was trained with."
        )
    return step


# The run's config, written beside its checkpoints so that evaluation needs only the workdir.
RUN_CONFIG = "config.json"


def _config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as JSON values (tuples become lists), for saving and comparing."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def save_run_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes workdir/config.json (process 0, atomically) when it is missing or differs, so it
    is always the config of the newest checkpoint."""
    path = os.path.join(workdir, RUN_CONFIG)
    values = _config_json(config)
    if jax.process_index() != 0 or (os.path.exists(path) and _read_json(path) == values):
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run in workdir was trained with (locked: unknown fields are errors)."""
    path = os.path.join(workdir, RUN_CONFIG)
    if not os.path.exists(path):
        raise CheckpointError(
            f"no {RUN_CONFIG} in {workdir}: it is written at a run's first checkpoint. Train "
            "there first, or pass --config with the config the run was trained with."
        )
    config = ml_collections.ConfigDict(_read_json(path))
    config.lock()
    return config


def run_config_differences(workdir: str, config: ml_collections.ConfigDict) -> str:
    """Where `config` differs from the run's saved config, as 'section.field: run A, given B;
    ...' ('' when they agree or the run saved none)."""
    path = os.path.join(workdir, RUN_CONFIG)
    if not os.path.exists(path):
        return ""
    return _differences(_read_json(path), _config_json(config), labels=("run", "given"))


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); restore or delete it.") from None


def _differences(
    saved: dict, wanted: dict, prefix: str = "", labels: tuple[str, str] = ("checkpoint", "config")
) -> str:
    out = []
    for k in sorted(saved.keys() | wanted.keys()):
        a, b = saved.get(k), wanted.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _differences(a, b, f"{prefix}{k}.", labels)
            if inner:
                out.append(inner)
        elif a != b:
            out.append(f"{prefix}{k}: {labels[0]} {a!r}, {labels[1]} {b!r}")
    return "; ".join(out)
