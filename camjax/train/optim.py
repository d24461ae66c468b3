"""The optimizer: SGD with momentum (or AdamW), weight decay, a schedule, per-group lr multipliers.

The CAM recipe fine-tunes a pretrained backbone while the new layers (CAM_conv and the head) learn
faster (x10 in the WSOL recipe); Caffe solvers also give biases x2. Both are multipliers on the
schedule for groups of parameters, built with optax.multi_transform.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import optax
from flax import traverse_util

NEW_LAYERS = ("cam_conv", "head")  # default config.optim.new_layers


def learning_rate_schedule(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """cfg: config.optim. 'step' decays by decay_factor at the steps `decay_at` lists, or
    else every decay_steps; 'cosine' to zero.

    Both start with `warmup_steps` of linear warm-up from zero.
    """
    base = cfg.learning_rate
    if cfg.schedule == "step":
        boundaries = range(cfg.decay_steps, num_steps, cfg.decay_steps) if cfg.decay_steps else ()
        # Configs saved before decay_at existed lack it.
        boundaries = cfg.get("decay_at") or boundaries
        main = optax.piecewise_constant_schedule(base, {b: cfg.decay_factor for b in boundaries})
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(base, max(1, num_steps - cfg.warmup_steps))
    elif cfg.schedule == "constant":
        main = optax.constant_schedule(base)
    else:
        raise ValueError(
            f"config.optim.schedule must be 'step', 'cosine' or 'constant'; got {cfg.schedule!r}."
        )
    if not cfg.warmup_steps:
        return main
    warmup = optax.linear_schedule(0.0, base, cfg.warmup_steps)
    if cfg.schedule == "step":
        # The step boundaries count from step 0, not from the end of the warm-up.
        return lambda step: jax.numpy.where(step < cfg.warmup_steps, warmup(step), main(step))
    return optax.join_schedules([warmup, main], [cfg.warmup_steps])


def parameter_groups(params: Mapping[str, Any], new_layers: Sequence[str] = NEW_LAYERS) -> Any:
    """A pytree like params labelling each leaf '{new|backbone}_{kernel|bias}'.

    new_layers: top-level parameter names, or prefixes of them ("layer4" covers "layer4_0",
    "layer4_1", ...), that form the fast-learning group (`new_layer_lr_mult`)."""
    flat = traverse_util.flatten_dict(params)
    prefixes = tuple(new_layers)
    labels = {
        path: ("new" if path[0].startswith(prefixes) else "backbone")
        + ("_bias" if path[-1] == "bias" else "_kernel")
        for path in flat
    }
    return traverse_util.unflatten_dict(labels)


def create_optimizer(
    cfg: ml_collections.ConfigDict, num_steps: int
) -> optax.GradientTransformation:
    """cfg: config.optim -> the optimizer over a camjax model's params.

    Weight decay applies to every parameter but biases (kernels and batch-norm scales; the
    Caffe CAM models decay no bias), or with `decay_biases` to every parameter, as torch's SGD
    and AdamW decay them (the WSOL recipes: wsolevaluation's solver).
    """
    schedule = learning_rate_schedule(cfg, num_steps)
    mults = {
        "backbone_kernel": 1.0,
        "backbone_bias": cfg.bias_lr_mult,
        "new_kernel": cfg.new_layer_lr_mult,
        "new_bias": cfg.new_layer_lr_mult * cfg.bias_lr_mult,
    }

    def group(mult: float, decay: float) -> optax.GradientTransformation:
        lr = lambda step: mult * schedule(step)  # noqa: E731
        if cfg.name == "sgd":
            return optax.chain(
                optax.add_decayed_weights(decay),
                optax.sgd(lr, momentum=cfg.momentum, nesterov=cfg.nesterov),
            )
        if cfg.name == "adamw":
            return optax.adamw(lr, b1=cfg.momentum, weight_decay=decay)
        raise ValueError(f"config.optim.name must be 'sgd' or 'adamw'; got {cfg.name!r}.")

    decay_biases = cfg.get("decay_biases", False)  # configs saved before the field lack it
    tx = optax.multi_transform(
        {
            name: group(
                mult, 0.0 if name.endswith("bias") and not decay_biases else cfg.weight_decay
            )
            for name, mult in mults.items()
        },
        lambda params: _checked_groups(params, cfg),
    )
    if cfg.get("nonnegative_head", False):  # configs saved before the field lack it
        tx = optax.chain(tx, optax.masked(optax.keep_params_nonnegative(), _head_kernel))
    if cfg.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
    return tx


def _checked_groups(params: Mapping[str, Any], cfg: ml_collections.ConfigDict) -> Any:
    """`parameter_groups`; a one-line ValueError when new layers are to learn faster and the
    names match none of the model's layers (a typo there trained every layer at one rate)."""
    new_layers = tuple(cfg.get("new_layers", NEW_LAYERS))
    labels = parameter_groups(params, new_layers)
    if cfg.new_layer_lr_mult != 1 and not any(
        label.startswith("new") for label in jax.tree.leaves(labels)
    ):
        raise ValueError(
            f"config.optim.new_layers {list(new_layers)} names none of the model's layers "
            f"({', '.join(sorted(params))}), so new_layer_lr_mult would apply to nothing; name "
            "them (or their prefixes), or set new_layer_lr_mult=1."
        )
    return labels


def _head_kernel(params: Mapping[str, Any]) -> Any:
    """True at the classifier's weights (the kernel of the top-level module `head`), the class
    weights w_k^c of the CAM: `nonnegative_head` keeps them >= 0, so that each class's CAM
    sums evidence for the class and none against it."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({p: p[0] == "head" and p[-1] == "kernel" for p in flat})
