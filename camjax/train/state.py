"""The train state: what a step changes, created directly sharded, restorable from its shapes.

Training builds it (`create_train_state`), checkpoints save and restore it, and evaluation needs
only its `variables`; the loop that advances it is `camjax.train.loop`.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp

from camjax import experiment


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


def root_key(config) -> jax.Array:
    """The run's PRNG key. config.rng_impl 'rbg' compiles parameter init several times faster
    than 'threefry2x32' on CPU (a VGG16 init: seconds instead of tens of seconds); its streams are
    deterministic on a given backend, which is all that resuming needs."""
    return jax.random.key(config.seed, impl=config.rng_impl)


def _state_initializer(config, model, tx):
    def init(rng: jax.Array) -> TrainState:
        variables = experiment.init_variables(config, model, rng)
        params, batch_stats = variables["params"], variables["batch_stats"]
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), batch_stats)

    return init


def create_train_state(config, model, tx, mesh) -> tuple[TrainState, Any]:
    """Initialises the state directly replicated on the mesh. Returns (state, state shardings)."""
    init = _state_initializer(config, model, tx)
    shardings = state_shardings(abstract_train_state(config, model, tx, mesh))
    rng = jax.random.fold_in(root_key(config), 0)
    return jax.jit(init, out_shardings=shardings)(rng), shardings


def state_shardings(abstract: Any) -> Any:
    """The shardings of an abstract train state (`abstract_train_state`), for the jitted step."""
    return jax.tree.map(lambda leaf: leaf.sharding, abstract)


def abstract_train_state(config, model, tx, mesh) -> Any:
    """Shapes, dtypes and shardings of the train state, without computing it (for restores)."""
    abstract = jax.eval_shape(_state_initializer(config, model, tx), root_key(config))
    return experiment.replicated_shapes(abstract, mesh)


def load_pretrained(state: TrainState, directory: str) -> TrainState:
    """The state with the converted weights in `directory` (torch_import) merged into its fresh
    variables; the optimizer state is all zeros at step 0, so it needs no change."""
    from camjax.models import torch_import  # orbax only; torch is not needed to load

    merged = torch_import.init_from_pretrained(state.variables, directory)
    return state.replace(params=merged["params"], batch_stats=merged.get("batch_stats", {}))
