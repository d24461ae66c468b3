"""The training loop: a pure jitted step over a data-parallel mesh, checkpointed and resumable.

`train_and_evaluate(config, workdir)` trains `config.train.num_steps` steps. Parameters are
replicated and the batch is split over the mesh's 'data' axis; XLA inserts the gradient
all-reduce. The step is donated, host transfers happen only at log/eval/checkpoint steps, and
a run restarted in the same workdir resumes from the latest complete checkpoint and ends with
bit-identical parameters to an uninterrupted run (same data order, same dropout keys).
"""

import functools
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from camjax import checkpoint, checkpoint_restore, digests, experiment, run_config
from camjax.data import pipeline
from camjax.evaluation import evaluator
from camjax.models.layers import takes_labels
from camjax.train import wsol_methods
from camjax.train.interrupts import StopRequest
from camjax.train.metric_writer import Progress
from camjax.train.optim import create_optimizer
from camjax.train.state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    load_pretrained,
    model_variables,
    root_key,
    state_shardings,
)

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or parameters; the last good checkpoint is kept."""


def make_train_step(config, model, tx):
    """(state, metric_sums, batch) -> (state, metric_sums): one SGD step, metrics summed on device.

    metric_sums accumulate loss, correct top-1/top-5 and example counts between log steps, so
    the host reads a handful of scalars every log_every_steps steps and never in between.
    """
    mean, std = config.data.mean, config.data.std
    base_key = jax.random.fold_in(root_key(config), 1)
    method = config.method
    wsol_methods.check_method(method, config.optim.get("nonnegative_head", False))
    reads_labels = takes_labels(model)

    def step(state: TrainState, sums: dict[str, jax.Array], batch: dict[str, jax.Array]):
        labels = batch["label"]
        images, mixed, rngs = wsol_methods.step_inputs(
            method,
            pipeline.normalize_images(batch["image"], mean, std),
            labels,
            root_key(config),  # the methods draw from its streams 2-4; dropout from 1
            state.step,
        )
        rngs = {"dropout": jax.random.fold_in(base_key, state.step), **rngs}
        # The GT labels go to a network that reads them (ACoL erases the labelled class's
        # region), the same test as the evaluator's.
        kwargs = {"labels": labels} if reads_labels else {}

        def loss_fn(params):
            logits, outputs, batch_stats = _apply_for_training(
                model, params, state.batch_stats, images, rngs, kwargs
            )
            loss = wsol_methods.per_example_loss(
                method,
                logits,
                outputs,
                labels,
                mixed=mixed,
                params=params,
                step=state.step,
                num_steps=config.train.num_steps,
                image_size=images.shape[1:3],
            )
            return jnp.mean(loss), (loss, logits, batch_stats)

        (_, (losses, logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_sums = _add_step_metrics(sums, losses, logits, labels, config.model.num_classes)
        return TrainState(state.step + 1, params, opt_state, batch_stats), new_sums

    return step


def jit_train_step(config, model, tx, state_shardings: Any, mesh) -> Any:
    """The train step jitted as training runs it: state and metric sums donated, the new state
    keeping `state_shardings`, the sums replicated. Call it as step(state, sums, batch)."""
    return jax.jit(
        make_train_step(config, model, tx),
        donate_argnums=(0, 1),
        out_shardings=(state_shardings, experiment.replicated(mesh)),
    )


def _apply_for_training(model, params, batch_stats, images, rngs, kwargs):
    """model.apply in training mode -> (logits, outputs, batch_stats after the batch)."""
    variables = model_variables(params, batch_stats)
    if not batch_stats:
        logits, outputs = model.apply(variables, images, train=True, rngs=rngs, **kwargs)
        return logits, outputs, batch_stats
    # Batch statistics of the whole global batch: under jit the mean over the sharded batch
    # axis is one all-reduce, so batch norm is synchronised.
    (logits, outputs), updated = model.apply(
        variables, images, train=True, rngs=rngs, mutable=["batch_stats"], **kwargs
    )
    return logits, outputs, updated["batch_stats"]


def _add_step_metrics(sums, losses, logits, labels, num_classes: int) -> dict[str, jax.Array]:
    """Metric sums plus one step's: loss, top-1/top-5 hits, counts, out-of-range labels."""
    _, top = jax.lax.top_k(logits, min(5, num_classes))
    outside = (labels < 0) | (labels >= num_classes)
    return {
        "bad_labels": sums["bad_labels"] + jnp.sum(outside),
        "min_label": jnp.minimum(sums["min_label"], jnp.min(labels)),
        "max_label": jnp.maximum(sums["max_label"], jnp.max(labels)),
        "loss": sums["loss"] + jnp.sum(losses),
        "top1": sums["top1"] + jnp.sum(top[:, 0] == labels),
        "top5": sums["top5"] + jnp.sum(jnp.any(top == labels[:, None], axis=-1)),
        "count": sums["count"] + labels.shape[0],
        "steps": sums["steps"] + 1,
    }


def zero_sums() -> dict[str, jax.Array]:
    names = ("bad_labels", "min_label", "max_label", "loss", "top1", "top5", "count", "steps")
    return {k: jnp.zeros((), jnp.float32 if k == "loss" else jnp.int32) for k in names}


def _zero_sums_on(mesh) -> dict[str, jax.Array]:
    """Fresh metric sums, replicated (new arrays each time: the step donates them)."""
    return jax.device_put(zero_sums(), experiment.replicated(mesh))


def _val_metrics(val, fixed_threshold: float, top_k: int) -> dict[str, Any]:
    """Validation summary at the split's best CAM threshold, plus GT-known loc at the fixed one."""
    summary = val.summary(val.best_threshold(), top_k)
    fixed = val.summary(fixed_threshold, top_k)["gt_known_loc"]
    return {f"val/{k}": v for k, v in summary.items()} | {"val/gt_known_loc_fixed": fixed}


def _check_sums(host_sums: dict[str, Any], step: int, config, manager) -> None:
    """Stops the run, before anything is saved, on labels the head cannot take or a NaN loss."""
    if host_sums["bad_labels"]:
        n, low, high = config.model.num_classes, host_sums["min_label"], host_sums["max_label"]
        raise ValueError(
            f"the training data has the label {low}; labels are class indices 0 to {n - 1}: "
            "relabel or leave out the images without a class."
            if low < 0  # a larger head would not help
            else f"the training data has labels up to {high} but config.model.num_classes is "
            f"{n}; set it to the dataset's number of classes."
        )
    if not np.isfinite(host_sums["loss"]):
        raise NonFiniteLossError(_non_finite_message(step, manager))


def _non_finite_message(step: int, manager) -> str:
    last = checkpoint.last_saved(manager)
    good = (
        f"The last good checkpoint (finite and verified) is step {last} in {manager.directory}."
        if last is not None
        else "No checkpoint was saved yet."
    )
    rerun = "training resumes from that checkpoint" if last is not None else "it starts over"
    return (
        f"non-finite loss or parameters by step {step}; stopped without saving them. {good} "
        "Lower config.optim.learning_rate or set config.optim.grad_clip_norm, then rerun "
        f"({rerun})."
    )


def _initial_state(config, model, tx, mesh, manager, workdir: str, resume_with_changes: bool):
    """(state, its shardings, the run's id): the newest good checkpoint's state, or a fresh one
    (with the pretrained weights, if any) and a new run id. A resume never computes the fresh
    state: that would cost the init's compile and, for a moment, twice the state's memory."""
    if manager.latest_step() is None:
        state, shardings = create_train_state(config, model, tx, mesh)
        if config.init.pretrained_dir:
            state = load_pretrained(state, config.init.pretrained_dir)
        return state, shardings, run_config.start_run(workdir)
    # Traced first, as the fresh state is: a model or data config that cannot build a state
    # says so itself, not as a change that --resume_with_changes would accept.
    abstract = abstract_train_state(config, model, tx, mesh)
    shardings = state_shardings(abstract)
    checkpoint_restore.check_resumed_config(config, manager, workdir, resume_with_changes)
    try:
        state = checkpoint_restore.restore(manager, abstract, config)
    except checkpoint.CheckpointError as e:
        unreadable = e.rejected and all(
            reason.startswith(checkpoint_restore.UNREADABLE) for _, reason in e.rejected
        )
        optim = unreadable and run_config.differences(workdir, config, "optim")
        if not optim:
            raise
        # Another optimizer (or clipping) builds another optimizer state, which no step fits.
        raise checkpoint.CheckpointError(
            f"no step in {checkpoint.checkpoint_dir(workdir)} reads into the state this config "
            f"builds, and its optimizer differs from the run's ({optim}). Resume with the "
            "config the run was trained with (its config.json), or train in another workdir; "
            "nothing was moved or deleted. The steps: "
            f"{checkpoint_restore.rejected_steps(e.rejected)}",
            e.rejected,
        ) from None
    restored = int(state.step)
    log.info("Resumed from the checkpoint at step %d.", restored)
    if restored >= config.train.num_steps:
        log.warning(
            "Nothing to train: the checkpoint is at step %d, config.train.num_steps is %d.",
            restored,
            config.train.num_steps,
        )
    if newer := [s for s in manager.all_steps() if s > restored]:
        # Saving again at those steps would replace them; a person decides what to remove.
        ckpts = checkpoint.checkpoint_dir(workdir)
        raise checkpoint.CheckpointError(
            f"the newer steps {newer} in {ckpts} were rejected (see the warnings above); "
            f"resuming from step {restored} would save over them. Look at them, remove them "
            f"(rm -r {' '.join(os.path.join(ckpts, str(s)) for s in newer)}), then rerun."
        )
    return state, shardings, _resumed_run(manager, workdir, restored)


def _resumed_run(manager, workdir: str, restored: int) -> run_config.Run:
    """A resumed run's hold on its workdir (`run_config.start_run`, a new owner token) under
    the run's id: the workdir's; where its run_id is gone, the restored step's (else a
    sibling's steps would be taken from then on); for a run from before ids (2026-12-05), a new
    one, which its old steps do not contradict."""
    run = run_config.run_id(workdir)
    if run is None:
        run = checkpoint_restore.saved_run(manager, restored)
        if run is not None:
            log.warning(
                "%s was missing; it is written again with run id %s, from checkpoint step %d.",
                os.path.join(workdir, run_config.RUN_ID),
                run,
                restored,
            )
    return run_config.start_run(workdir, run)


def _train_batches(config, source, start: int, mesh):
    """The sharded training batches from step start + 1 on (the step-indexed data order)."""
    d = config.data
    prep = experiment.preprocess_config(config)
    if d.batch_size > len(source):
        log.warning(
            "config.data.batch_size %d is larger than the train split (%d examples): each "
            "batch repeats examples, drawn from about %d epochs.",
            d.batch_size,
            len(source),
            -(-d.batch_size // max(len(source), 1)),
        )
    if d.num_workers == 0 and d.cache_train_gib > 0:
        source = pipeline.in_memory_train_source(
            source, prep, d.cache_train_gib * 2**30, d.num_threads
        )
    train_ds = pipeline.train_dataset(source, prep, d.batch_size, config.seed)
    return pipeline.train_iterator(
        train_ds,
        start,
        experiment.data_sharding(mesh),
        d.num_threads,
        d.device_prefetch,
        d.num_workers,
    )


def _check_before_any_work(config: ml_collections.ConfigDict, mesh, workdir: str) -> None:
    """One-line errors, before anything is written, for settings a run cannot use (a batch
    size the devices do not divide, validation's settings, which its Evaluator checks again
    later, the train counts) and for a workdir that cannot be written (a save that cannot create
    its step directory fails in orbax's background thread, whose process then never exits)."""
    experiment.check_batch_size(config.data.batch_size, mesh, "config.data.batch_size")
    experiment.check_eval_config(config.eval, mesh)
    experiment.check_train_config(config.train)
    for directory in (workdir, checkpoint.checkpoint_dir(workdir)):
        experiment.check_writable(directory)


def _step_kinds(train_config, step: int, stop: StopRequest) -> tuple[bool, bool, bool, bool]:
    """(log, save, evaluate, stop) after `step`. The last step does the first three (evaluation
    if on); a SIGTERM makes a step one that logs and saves, then stops, leaving its validation
    to the rerun (a scheduler waits seconds, not minutes: `_validate` stops for it too)."""
    t = train_config
    is_last = step == t.num_steps
    kinds = (
        step % t.log_every_steps == 0 or is_last,
        step % t.checkpoint_every_steps == 0 or is_last,
        _validation_due(t, step),
    )
    # Called at every step (jax's service counts the checks); the last step saves anyway, so a
    # SIGTERM there stops early only to leave a due validation to the rerun.
    if stop.preempted(agreed=any(kinds)) and (kinds[2] or not is_last):
        return True, True, False, True
    return (*kinds, False)


def _validation_due(train_config, step: int) -> bool:
    """Whether a periodic validation follows `step` (the last step's too, if any is on)."""
    every = train_config.eval_every_steps
    return bool(every) and step > 0 and (step % every == 0 or step == train_config.num_steps)


def _validation_owed(train_config, step: int, progress: Progress) -> bool:
    """Whether the run resumes at a step whose periodic validation is due but not in
    metrics.jsonl: a SIGTERM saved the step and left it to the rerun."""
    return _validation_due(train_config, step) and not progress.writer.has_row(step, "val/top1_cls")


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, resume_with_changes: bool = False
) -> TrainState:
    """Trains (resuming from workdir's latest checkpoint if any); returns the final state.

    A resume whose config changes what training computes is refused unless
    `resume_with_changes` (`checkpoint_restore.check_resumed_config`)."""
    mesh = experiment.make_mesh()
    _check_before_any_work(config, mesh, workdir)
    num_steps = config.train.num_steps
    model = experiment.build_model(config)
    tx = create_optimizer(config.optim, num_steps)

    # Model and checkpoint problems surface before any data is generated or read.
    manager = checkpoint.create_manager(workdir, config.train.keep_checkpoints)
    with checkpoint.closed_on_error(manager):  # a refused resume, a missing split
        state, state_shardings, run = _initial_state(
            config, model, tx, mesh, manager, workdir, resume_with_changes
        )
        sources = experiment.data_sources(config)
        step_fn = jit_train_step(config, model, tx, state_shardings, mesh)
        val_eval = evaluator.Evaluator(config, model, mesh)
        start = int(state.step)
    with StopRequest() as stop:  # before the input workers, which ignore its signals
        batches, progress, finished = None, None, False
        try:
            batches = _train_batches(config, sources[config.data.train_split], start, mesh)
            progress = Progress(workdir, start, num_steps, config.eval.fixed_threshold)
            validate = functools.partial(
                _validate, val_eval, sources[config.data.val_split], manager, progress, stop, run
            )
            if _validation_owed(config.train, start, progress) and not validate(state, start):
                stop.raise_preempted(start, manager)
            sums = _zero_sums_on(mesh)
            for step in range(start + 1, num_steps + 1):
                stop.raise_if_requested(step, manager)
                state, sums = step_fn(state, sums, stop.next_batch(batches, step, manager))
                do_log, do_save, do_eval, preempted = _step_kinds(config.train, step, stop)
                # The first step is checked too: labels the head cannot take stop the run.
                if not (do_log or do_save or do_eval or step == start + 1):
                    continue
                host_sums = jax.device_get(sums)
                _check_sums(host_sums, step, config, manager)
                if do_log and host_sums["count"]:
                    progress.train(step, host_sums)
                    sums = _zero_sums_on(mesh)
                if do_eval and not validate(state, step):
                    do_save = preempted = True  # the rerun validates the saved step first
                if do_save:
                    _save_finite(manager, step, state, config, run)
                if preempted:
                    stop.raise_preempted(step, manager)
                if do_log:
                    progress.restart_clock()
                if step < num_steps:  # a step every process reaches, the last one excepted
                    stop.raise_if_requested(step + 1, manager, agreed=True)
            finished = True
        finally:
            _close_run(manager, finished, batches, progress)  # under the signal handlers
    return state


def _close_run(manager, finished: bool, batches, progress: Progress | None) -> None:
    """The save in flight completes first (a scheduler's SIGKILL follows its SIGTERM, and
    slow input workers can take grain's 25 s to stop), then the input readers (worker
    processes, shared memory) and the logs are closed, those that were opened."""
    try:
        checkpoint.close(manager, finished)
    finally:
        for opened in (batches, progress):
            if opened is not None:
                opened.close()


def _save_finite(manager, step: int, state: TrainState, config, run: run_config.Run) -> None:
    """Saves `step`, checked finite first: a diverged state is never written."""
    if not digests.all_finite(state):
        raise NonFiniteLossError(_non_finite_message(step, manager))
    checkpoint.save(manager, step, state, config, run)


def _validate(
    val_eval: evaluator.Evaluator,
    split,
    manager,
    progress: Progress,
    stop: StopRequest,
    run: run_config.Run,
    state: TrainState,
    step: int,
) -> bool:
    """The periodic validation of `state` on `split`: its metrics (`_val_metrics`) logged.
    False: a SIGTERM stopped it between two batches, and nothing was logged (a scheduler kills
    seconds after its SIGTERM, and a validation can take minutes). Another error (its data:
    more GT boxes than data.max_boxes) saves the step first: the fixed rerun validates it."""
    config = val_eval.config
    try:
        val = val_eval.evaluate(
            state.variables, split, config.eval.max_images, stop=lambda: stop.preempted(True)
        )
    except evaluator.EvaluationStopped:
        return False
    except evaluator.NonFiniteOutputError:
        # Finite parameters whose outputs overflow: the run diverged as surely.
        raise NonFiniteLossError(_non_finite_message(step, manager)) from None
    except Exception:
        # One process alone (its own reader's error) would wait in the save's collectives.
        if jax.process_count() == 1 and manager.latest_step() != step:
            try:
                _save_finite(manager, step, state, config, run)
            except Exception as e:  # the validation's error stays the one raised
                log.warning("Step %d was not saved before the validation's error: %s", step, e)
        raise
    progress.validation(step, _val_metrics(val, config.eval.fixed_threshold, val_eval.top_k))
    return True
