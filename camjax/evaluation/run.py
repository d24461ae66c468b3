"""What evaluate.py runs: restore a trained run, evaluate both splits, write the results.

`run_evaluation(config, workdir)` restores the latest checkpoint (parameters and batch
statistics only), picks the CAM threshold on the validation split (never on test, as the WSOL
protocol does), reports the test split at that threshold and at the paper's fixed 0.2, writes
metrics.json and a gallery. `evaluate_variables` is the same without files, for scripts that
evaluate variables they hold (benchmarks/method_table.py).
"""

import functools
import json
import logging
import math
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from camjax import (
    checkpoint,
    checkpoint_restore,
    distributed,
    errors,
    experiment,
    explain,
    run_config,
)
from camjax.evaluation.evaluator import Evaluator
from camjax.evaluation.gallery import write_gallery
from camjax.evaluation.protocol import wsol_protocol

log = logging.getLogger(__name__)

# Fields that change training but that an evaluation may choose: which split it reads and how
# many images it has, the compute dtype, the grouped-conv implementation.
EVALUATION_CHOICES = (
    *(f"data.{split}_split" for split in ("train", "val", "test")),
    *(f"data.num_{split}" for split in ("train", "validation", "test")),
    "model.dtype",
    "model.grouped_conv_impl",
)


def restore_evaluator(
    config: ml_collections.ConfigDict, workdir: str
) -> tuple[Evaluator, dict[str, Any], int]:
    """An `Evaluator` for config (with its WSOL protocol) and workdir's latest checkpoint:
    (evaluator, model variables replicated on the mesh, the checkpoint's step)."""
    protocol = wsol_protocol(config)  # config errors before any restoring or data
    mesh = experiment.make_mesh()
    model = experiment.build_model(config)
    shapes = jax.eval_shape(
        lambda rng: experiment.init_variables(config, model, rng), jax.random.key(0)
    )
    abstract = experiment.replicated_shapes(shapes, mesh)
    if not os.path.isdir(checkpoint.checkpoint_dir(workdir)):  # the manager would make it
        why = "no checkpoints folder" if os.path.exists(workdir) else "no such directory"
        raise checkpoint.CheckpointError(
            f"no checkpoint in {workdir} ({why}); train first (train.py --workdir with the same "
            "directory) or point --workdir at a trained run."
        )
    # Closed however the restore ends: a notebook caller keeps no orbax threads.
    with checkpoint.create_manager(workdir, config.train.keep_checkpoints) as manager:
        variables, step = checkpoint_restore.restore_variables(manager, abstract, config)
        trained = checkpoint_restore.recorded_at(manager, step)
    # config.json can be ahead of the steps (a run killed between writing it and committing a
    # step after --resume_with_changes) or edited: the numbers would not be the step's.
    differences = trained and run_config.resume_differences(trained, config, EVALUATION_CHOICES)[0]
    if differences:
        log.warning(
            "Checkpoint step %d was trained with other values than this evaluation's (%s): "
            "the numbers below are of this config.",
            step,
            differences,
        )
    if not variables["batch_stats"]:
        del variables["batch_stats"]
    return Evaluator(config, model, mesh, protocol), variables, step


def run_evaluation(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Restores the latest checkpoint in workdir, evaluates, writes metrics.json and a gallery."""
    experiment.check_writable(workdir)  # before the work whose results it would hold
    evaluator, variables, step = restore_evaluator(config, workdir)
    results, chosen = evaluate_variables(evaluator, variables, step)
    distributed.run_together(
        lambda: _write_results(config, evaluator, variables, results, chosen, workdir),
        functools.partial(_write_problem, workdir),
        f"process 0 could not write the results in {workdir} (its error says why).",
        # Process 0 alone writes; the others wait for it: an export may follow (evaluate.py).
        here=jax.process_index() == 0,
    )
    return results


def _write_results(config, evaluator, variables, results, chosen: float, workdir: str) -> None:
    """metrics.json (written aside and renamed: never a truncated file; strict JSON, a value
    that is not finite as null: the pointing game of no counted image) and the gallery."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.json")
    with open(path + ".tmp", "w") as f:
        json.dump(_nan_as_none(results), f, indent=2, allow_nan=False)
    os.replace(path + ".tmp", path)
    sources = experiment.data_sources(config, experiment.EVALUATION_SPLITS)
    write_gallery(
        config, evaluator.model, variables, sources[config.data.test_split], chosen, workdir
    )


def _nan_as_none(value: Any) -> Any:
    """value with every float that is not finite as None (JSON's null)."""
    if isinstance(value, dict):
        return {k: _nan_as_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_as_none(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _write_problem(workdir: str, e: OSError) -> str:
    return (
        f"{errors.cannot_write(e, workdir)}; make room, or remove what is in the way, then rerun "
        "evaluate.py (the checkpoints are untouched)."
    )


def evaluate_variables(
    evaluator: Evaluator, variables: dict[str, Any], step: int
) -> tuple[dict[str, Any], float]:
    """run_evaluation's results for these variables, written nowhere: (results, the CAM
    threshold chosen on validation)."""
    config = evaluator.config
    protocol = evaluator.protocol
    sources = experiment.data_sources(config, experiment.EVALUATION_SPLITS)
    val_source, test_source = sources[config.data.val_split], sources[config.data.test_split]
    max_images = config.eval.max_images

    if protocol is None:
        val = evaluator.evaluate(variables, val_source, max_images)
        test = evaluator.evaluate(variables, test_source, max_images)
    else:
        val, val_wsol = evaluator.evaluate_wsol(variables, val_source, max_images)
        chosen_v1 = (
            float(protocol.thresholds[val_wsol.best_indices()[0]]) if protocol.boxes else None
        )
        test, test_wsol = evaluator.evaluate_wsol(variables, test_source, max_images, chosen_v1)
    chosen = val.best_threshold()
    k = evaluator.top_k
    rates = test.rates()
    results = {
        "step": step,
        "model": config.model.name,
        "dataset": config.data.name,
        "iou_threshold": config.eval.iou_threshold,
        "top_k": k,
        "test_at_val_threshold": test.summary(chosen, k),
        "test_at_fixed_threshold": test.summary(config.eval.fixed_threshold, k),
        "val_at_val_threshold": val.summary(chosen, k),
        "test_gt_known_loc_oracle_max": 100 * float(np.max(rates["gt_known"])),
        "test_gt_known_loc_curve": {
            key: 100 * float(r)
            for key, r in zip(_threshold_keys(test.thresholds), rates["gt_known"], strict=True)
        },
    }
    if protocol is not None:
        results["wsol"] = {
            "protocol": protocol.to_dict(),
            "val": val_wsol.summary(),
            "test": test_wsol.summary(val_wsol),
        }
    if evaluator.method != "cam":  # with every option's value: the maps depend on them
        options = {**explain.default_options()[evaluator.method], **evaluator.options}
        results["method"] = {"name": evaluator.method, "layer": evaluator.layer, "options": options}
    if evaluator.faithfulness is not None:
        n = config.eval.faithfulness.max_images or max_images
        acc = evaluator.evaluate_faithfulness(variables, test_source, n)
        results["faithfulness"] = {
            "test": acc.summary(),
            "settings": config.eval.faithfulness.to_dict(),
        }
    return results, chosen


def _threshold_keys(thresholds: np.ndarray) -> list[str]:
    """Each threshold with 3 decimals, or as many more as a grid finer than 0.001 needs for a
    key per threshold (`threshold_grid` rounds them to 6 decimals: 6 always do)."""
    digits = 3
    while len({f"{t:.{digits}f}" for t in thresholds}) < len(set(thresholds.tolist())):
        digits += 1
    return [f"{t:.{digits}f}" for t in thresholds]
