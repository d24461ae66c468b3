"""Orbax checkpoints of the train state, with the model config beside them.

Orbax writes each step into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoint as the latest complete one; `latest_step()` only
sees complete ones. The model config is saved with every step so that restoring with a different
architecture fails with a message that says what differs, not an opaque shape error.
"""

import dataclasses
import os
import pathlib
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
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(model_fingerprint(config)),
        ),
    )


def restore(
    manager: ocp.CheckpointManager, abstract_state: Any, config, step: int | None = None
) -> Any:
    """Restores `step` (default: the latest complete one) into the shardings of abstract_state."""
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
    # The saved tree's top-level fields, read by the item's handler (a Checkpointer would also
    # look for, and warn about, step metadata that items do not have).
    state_dir = pathlib.Path(str(manager.directory)) / str(step) / "state"
    saved_fields = set(ocp.StandardCheckpointHandler().metadata(state_dir).keys())
    wanted = (
        {f.name: getattr(abstract_state, f.name) for f in dataclasses.fields(abstract_state)}
        if _is_state(abstract_state)
        else None
    )
    if wanted is not None and "batch_stats" in wanted and "batch_stats" not in saved_fields:
        # Written before the train state carried batch-norm statistics (2026-11-27): every
        # model then was BN-free, so its statistics are the empty collection.
        if jax.tree.leaves(wanted["batch_stats"]):
            raise CheckpointError(
                f"the checkpoint at step {step} in {manager.directory} has no batch-norm "
                "statistics but the model has batch norm; it was not written for this model."
            )
        legacy = {k: v for k, v in wanted.items() if k != "batch_stats"}
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(legacy))
        )["state"]
        return abstract_state.replace(**restored, batch_stats={})
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    )
    return restored["state"]


def _is_state(x: Any) -> bool:
    """A flax struct dataclass such as the loop's TrainState."""
    return dataclasses.is_dataclass(x) and hasattr(x, "replace")


def _differences(saved: dict, wanted: dict, prefix: str = "") -> str:
    out = []
    for k in sorted(saved.keys() | wanted.keys()):
        a, b = saved.get(k), wanted.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _differences(a, b, f"{prefix}{k}.")
            if inner:
                out.append(inner)
        elif a != b:
            out.append(f"{prefix}{k}: checkpoint {a!r}, config {b!r}")
    return "; ".join(out)
