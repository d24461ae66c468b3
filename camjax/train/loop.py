"""The training loop: a pure jitted step over a data-parallel mesh, checkpointed and resumable.

`train_and_evaluate(config, workdir)` trains `config.train.num_steps` steps. Parameters are
replicated and the batch is split over the mesh's 'data' axis; XLA inserts the gradient
all-reduce. The step is donated, host transfers happen only at log/eval/checkpoint steps, and
a run restarted in the same workdir resumes from the latest complete checkpoint and ends with
bit-identical parameters to an uninterrupted run (same data order, same dropout keys).
"""

import logging
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from camjax import experiment
from camjax.data import pipeline
from camjax.evaluation import evaluator
from camjax.train import checkpoint
from camjax.train.metric_writer import MetricWriter
from camjax.train.optim import create_optimizer

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: step counter, parameters, optimizer state and the running
    batch-norm statistics ({} for models without batch norm), all arrays."""

    step: jax.Array
    params: Any
    opt_state: Any
    batch_stats: Any

    @property
    def variables(self) -> dict[str, Any]:
        """The flax variables for `model.apply` in evaluation."""
        return model_variables(self.params, self.batch_stats)


def model_variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    return variables


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or parameters; the last good checkpoint is kept."""


def root_key(config) -> jax.Array:
    """The run's PRNG key. config.rng_impl 'rbg' compiles parameter init several times faster
    than 'threefry2x32' on CPU (a VGG16 init: seconds instead of tens of seconds); its streams are
    deterministic on a given backend, which is all that resuming needs."""
    return jax.random.key(config.seed, impl=config.rng_impl)


def _state_initializer(config, model, tx):
    size = config.data.image_size

    def init(rng: jax.Array) -> TrainState:
        variables = model.init({"params": rng}, jnp.zeros((1, size, size, 3)), train=False)
        params = variables["params"]
        batch_stats = variables.get("batch_stats", {})
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), batch_stats)

    return init


def create_train_state(config, model, tx, mesh) -> tuple[TrainState, Any]:
    """Initialises the state directly replicated on the mesh. Returns (state, state shardings)."""
    init = _state_initializer(config, model, tx)
    rng = jax.random.fold_in(root_key(config), 0)
    shardings = jax.tree.map(lambda _: experiment.replicated(mesh), jax.eval_shape(init, rng))
    return jax.jit(init, out_shardings=shardings)(rng), shardings


def abstract_train_state(config, model, tx, mesh) -> Any:
    """Shapes, dtypes and shardings of the train state, without computing it (for restores)."""
    abstract = jax.eval_shape(_state_initializer(config, model, tx), root_key(config))
    sharding = experiment.replicated(mesh)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract
    )


def load_pretrained(state: TrainState, directory: str) -> TrainState:
    """The state with the converted weights in `directory` (torch_import) merged into its fresh
    variables; the optimizer state is all zeros at step 0, so it needs no change."""
    from camjax.models import torch_import  # orbax only; torch is not needed to load

    merged = torch_import.init_from_pretrained(state.variables, directory)
    return state.replace(params=merged["params"], batch_stats=merged.get("batch_stats", {}))


def make_train_step(config, model, tx):
    """(state, metric_sums, batch) -> (state, metric_sums): one SGD step, metrics summed on device.

    metric_sums accumulate loss, correct top-1/top-5 and example counts between log steps, so
    the host reads a handful of scalars every log_every_steps steps and never in between.
    """
    mean, std = config.data.mean, config.data.std
    base_key = jax.random.fold_in(root_key(config), 1)
    k = min(5, config.model.num_classes)

    def step(state: TrainState, sums: dict[str, jax.Array], batch: dict[str, jax.Array]):
        images = pipeline.normalize_images(batch["image"], mean, std)
        labels = batch["label"]
        dropout_key = jax.random.fold_in(base_key, state.step)

        def loss_fn(params):
            variables = model_variables(params, state.batch_stats)
            rngs = {"dropout": dropout_key}
            if state.batch_stats:
                # Batch statistics of the whole global batch: under jit the mean over the
                # sharded batch axis is one all-reduce, so batch norm is synchronised.
                (logits, _), updated = model.apply(
                    variables, images, train=True, rngs=rngs, mutable=["batch_stats"]
                )
                batch_stats = updated["batch_stats"]
            else:
                logits, _ = model.apply(variables, images, train=True, rngs=rngs)
                batch_stats = state.batch_stats
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            return jnp.mean(loss), (loss, logits, batch_stats)

        (_, (losses, logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        _, top = jax.lax.top_k(logits, k)
        new_sums = {
            "loss": sums["loss"] + jnp.sum(losses),
            "top1": sums["top1"] + jnp.sum(top[:, 0] == labels),
            "top5": sums["top5"] + jnp.sum(jnp.any(top == labels[:, None], axis=-1)),
            "count": sums["count"] + labels.shape[0],
            "steps": sums["steps"] + 1,
        }
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


def zero_sums() -> dict[str, jax.Array]:
    return {
        "loss": jnp.zeros((), jnp.float32),
        "top1": jnp.zeros((), jnp.int32),
        "top5": jnp.zeros((), jnp.int32),
        "count": jnp.zeros((), jnp.int32),
        "steps": jnp.zeros((), jnp.int32),
    }


def _train_metrics(host_sums: dict[str, Any], seconds: float) -> dict[str, float]:
    n = host_sums["count"]
    return {
        "train/loss": host_sums["loss"] / n,
        "train/top1_acc": 100 * host_sums["top1"] / n,
        "train/top5_acc": 100 * host_sums["top5"] / n,
        "train/images_per_sec": n / seconds,
    }


def _val_metrics(val, fixed_threshold: float, top_k: int) -> dict[str, Any]:
    """Validation summary at the split's best CAM threshold, plus GT-known loc at the fixed one."""
    summary = val.summary(val.best_threshold(), top_k)
    fixed = val.summary(fixed_threshold, top_k)["gt_known_loc"]
    return {f"val/{k}": v for k, v in summary.items()} | {"val/gt_known_loc_fixed": fixed}


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (resuming from workdir's latest checkpoint if any); returns the final state."""
    num_steps = config.train.num_steps
    if num_steps <= 0:
        raise ValueError(f"config.train.num_steps must be positive; got {num_steps}.")
    mesh = experiment.make_mesh()
    experiment.check_batch_size(config.data.batch_size, mesh, "config.data.batch_size")
    model = experiment.build_model(config)
    tx = create_optimizer(config.optim, num_steps)
    prep = experiment.preprocess_config(config)
    batch_sharding = experiment.data_sharding(mesh)
    replicated = experiment.replicated(mesh)

    # Model and checkpoint problems surface before any data is generated or read.
    manager = checkpoint.create_manager(workdir, config.train.keep_checkpoints)
    state, state_shardings = create_train_state(config, model, tx, mesh)
    if manager.latest_step() is None and config.init.pretrained_dir:
        state = load_pretrained(state, config.init.pretrained_dir)
    if manager.latest_step() is not None:
        state = checkpoint.restore(manager, abstract_train_state(config, model, tx, mesh), config)
        log.warning("Resumed from the checkpoint at step %d.", int(state.step))
    start = int(state.step)
    sources = experiment.data_sources(config)

    step_fn = jit_train_step(config, model, tx, state_shardings, mesh)
    val_eval = evaluator.Evaluator(config, model, mesh)
    writer = MetricWriter(workdir)
    train_ds = pipeline.train_dataset(
        sources[config.data.train_split], prep, config.data.batch_size, config.seed
    )
    d = config.data
    batches = pipeline.train_iterator(
        train_ds, start, batch_sharding, d.num_threads, d.device_prefetch, d.num_workers
    )
    sums = jax.device_put(zero_sums(), replicated)
    bar = tqdm.tqdm(total=num_steps, initial=start, desc="train", disable=jax.process_index() != 0)
    t0, last_good = time.time(), manager.latest_step()
    try:
        for step in range(start + 1, num_steps + 1):
            state, sums = step_fn(state, sums, next(batches))
            is_last = step == num_steps
            do_log = step % config.train.log_every_steps == 0 or is_last
            do_save = step % config.train.checkpoint_every_steps == 0 or is_last
            every = config.train.eval_every_steps
            do_eval = bool(every) and (step % every == 0 or is_last)
            if not (do_log or do_save or do_eval):
                continue
            host_sums = jax.device_get(sums)
            if not np.isfinite(host_sums["loss"]) or (do_save and not _all_finite(state.variables)):
                raise NonFiniteLossError(
                    f"non-finite loss or parameters by step {step}; stopped without saving "
                    f"them. The last good checkpoint is step {last_good} in "
                    f"{checkpoint.checkpoint_dir(workdir)}. Lower config.optim.learning_rate or "
                    "set config.optim.grad_clip_norm, then rerun (training resumes from that "
                    "checkpoint)."
                )
            if do_log and host_sums["count"]:
                metrics = _train_metrics(host_sums, time.time() - t0)
                writer.write(step, metrics)
                bar.set_postfix(
                    loss=f"{metrics['train/loss']:.3f}", acc=f"{metrics['train/top1_acc']:.1f}"
                )
                bar.update(step - bar.n)
                sums = jax.device_put(zero_sums(), replicated)
            if do_eval:
                val = val_eval.evaluate(
                    state.variables, sources[config.data.val_split], config.eval.max_images
                )
                metrics = _val_metrics(val, config.eval.fixed_threshold, val_eval.top_k)
                writer.write(step, metrics)
                bar.write(
                    f"step {step}: val top-1 cls {metrics['val/top1_cls']:.1f}%, GT-known loc "
                    f"{metrics['val/gt_known_loc']:.1f}% at its best CAM threshold "
                    f"{metrics['val/threshold']:.2f}, {metrics['val/gt_known_loc_fixed']:.1f}% at "
                    f"{config.eval.fixed_threshold:.2f}"
                )
            if do_save:
                checkpoint.save(manager, step, state, config)
                last_good = step
            if do_log:
                t0 = time.time()  # throughput excludes evaluation and checkpointing
    finally:
        # An async save in flight completes (or is abandoned whole) before we leave.
        batches.close()  # stops the input readers (worker processes, shared memory) now
        bar.close()
        manager.wait_until_finished()
        manager.close()
        writer.close()
    return state
