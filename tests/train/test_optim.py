"""Tests for camjax/train/optim.py against updates worked out by hand in numpy.

`test_optimizer_groups_and_schedules` checks the groups' labels and multipliers with plain
SGD; the others pin what it leaves at zero or off: warm-up, cosine decay, weight decay,
momentum, Nesterov, AdamW, clipping and the non-negative head's mask.
"""

import math

import jax
import ml_collections
import numpy as np
import optax
import pytest

from camjax.train import optim
from configs import tiny


def test_optimizer_groups_and_schedules():
    config = tiny.get_config().optim
    config.schedule, config.decay_steps, config.learning_rate = "step", 10, 1.0
    schedule = optim.learning_rate_schedule(config, 30)
    assert [float(schedule(s)) for s in (0, 9, 10, 25)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    config.decay_at, config.decay_factor = (4, 20), 0.2  # points replace the period
    schedule = optim.learning_rate_schedule(config, 30)
    assert [float(schedule(s)) for s in (3, 4, 19, 20)] == pytest.approx([1.0, 0.2, 0.2, 0.04])
    config.decay_at, config.decay_factor = (), 0.1
    labels = optim.parameter_groups(
        {"conv1_1": {"kernel": 0, "bias": 0}, "cam_conv": {"kernel": 0}, "head": {"bias": 0}}
    )
    assert labels == {
        "conv1_1": {"kernel": "backbone_kernel", "bias": "backbone_bias"},
        "cam_conv": {"kernel": "new_kernel"},
        "head": {"bias": "new_bias"},
    }
    # ResNet50's recipe: layer4's blocks (layer4_0, layer4_1, ...) learn with the head.
    labels = optim.parameter_groups(
        {"layer3_5": {"kernel": 0}, "layer4_0": {"kernel": 0}, "head": {"kernel": 0}},
        ("layer4", "head"),
    )
    assert labels == {
        "layer3_5": {"kernel": "backbone_kernel"},
        "layer4_0": {"kernel": "new_kernel"},
        "head": {"kernel": "new_kernel"},
    }
    # Plain SGD: the new layers move new_layer_lr_mult times as far; biases bias_lr_mult more.
    config.name, config.momentum, config.weight_decay, config.schedule = "sgd", 0.0, 0.0, "constant"
    config.new_layer_lr_mult, config.bias_lr_mult = 10.0, 2.0
    config.nonnegative_head = False  # (the default's True is checked below)
    tx = optim.create_optimizer(config, 10)
    params = {"conv1_1": {"kernel": np.ones(2), "bias": np.ones(2)}, "head": {"kernel": np.ones(2)}}
    grads = jax.tree.map(np.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(updates["conv1_1"]["kernel"][0]) == pytest.approx(-1.0)
    assert float(updates["conv1_1"]["bias"][0]) == pytest.approx(-2.0)
    assert float(updates["head"]["kernel"][0]) == pytest.approx(-10.0)
    # nonnegative_head: the head's kernel stops at 0, every other parameter moves freely.
    config.nonnegative_head = True
    tx = optim.create_optimizer(config, 10)
    params["head"]["bias"] = np.ones(2)
    grads = jax.tree.map(np.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    moved = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(moved["head"]["kernel"], [0.0, 0.0])  # 1 - 10, projected
    np.testing.assert_allclose(moved["head"]["bias"], [-19.0, -19.0])  # 1 - 10 * 2
    np.testing.assert_allclose(moved["conv1_1"]["kernel"], [0.0, 0.0])
    np.testing.assert_allclose(moved["conv1_1"]["bias"], [-1.0, -1.0])
    # New layers that name no layer (a typo) would train every layer at one rate.
    config.new_layers = ("cam_cnv", "hed")
    with pytest.raises(ValueError, match=r"new_layers \['cam_cnv', 'hed'\] names none of"):
        optim.create_optimizer(config, 10).init(params)
    config.new_layers = ("cam_conv", "head")
    with pytest.raises(ValueError, match="schedule"):
        config.schedule = "linear"
        optim.learning_rate_schedule(config, 10)


def optim_config(**fields):
    """configs/tiny.py's optimizer config with `fields` set, every extra off unless set."""
    config = tiny.get_config().optim
    config.update(
        name="sgd",
        learning_rate=1.0,
        momentum=0.0,
        nesterov=False,
        weight_decay=0.0,
        decay_biases=False,
        schedule="constant",
        warmup_steps=0,
        decay_steps=0,
        decay_at=(),
        new_layer_lr_mult=1.0,
        bias_lr_mult=1.0,
        nonnegative_head=False,
        grad_clip_norm=0.0,
    )
    config.update(fields)
    return config


def schedule_values(config, num_steps):
    schedule = optim.learning_rate_schedule(config, num_steps)
    return [float(schedule(s)) for s in range(num_steps + 1)]


def test_cosine_schedule_warms_up_from_zero_then_decays_to_zero_at_the_last_step():
    """Linear warm-up from 0 over warmup_steps, then a cosine over the remaining steps
    (not over all of them: it would end above 0), reaching 0 at num_steps."""
    config = optim_config(schedule="cosine", learning_rate=2.0, warmup_steps=4)
    want = [2.0 * s / 4 for s in range(4)] + [
        2.0 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 8)) for s in range(4, 13)
    ]
    np.testing.assert_allclose(schedule_values(config, 12), want, rtol=1e-6, atol=1e-7)


def test_step_schedule_boundaries_count_from_step_zero_through_the_warm_up():
    """decay_at alone (decay_steps 0, as the Bridging recipe sets): its steps are absolute,
    the warm-up only replaces the steps before warmup_steps. The first decay here falls on
    the warm-up's end, step 4, and applies there."""
    config = optim_config(schedule="step", warmup_steps=4, decay_at=(4, 6), decay_factor=0.1)
    want = [0.0, 0.25, 0.5, 0.75, 0.1, 0.1, 0.01, 0.01, 0.01]
    np.testing.assert_allclose(schedule_values(config, 8), want, rtol=1e-6)


def test_groups_follow_the_top_level_module_and_only_biases_are_biases():
    """ResNet50's parameters nest (layer4_0/conv1/kernel): the group is the top-level name's,
    whatever the depth. Every leaf not named bias, batch-norm scales included, is in the
    kernel group (decayed, as torch decays batch-norm weights; no bias_lr_mult)."""
    block = {"conv1": {"kernel": 0}, "bn1": {"scale": 0, "bias": 0}, "downsample_0": {"kernel": 0}}
    params = {"conv1": {"kernel": 0}, "layer3_5": block, "layer4_0": block, "head": {"kernel": 0}}
    backbone = {
        "conv1": {"kernel": "backbone_kernel"},
        "bn1": {"scale": "backbone_kernel", "bias": "backbone_bias"},
        "downsample_0": {"kernel": "backbone_kernel"},
    }
    new = {
        "conv1": {"kernel": "new_kernel"},
        "bn1": {"scale": "new_kernel", "bias": "new_bias"},
        "downsample_0": {"kernel": "new_kernel"},
    }
    assert optim.parameter_groups(params, ("layer4", "head")) == {
        "conv1": {"kernel": "backbone_kernel"},
        "layer3_5": backbone,
        "layer4_0": new,
        "head": {"kernel": "new_kernel"},
    }


# A backbone layer and the head, each with a kernel and a bias.
LEAVES = (("conv1_1", "kernel"), ("conv1_1", "bias"), ("head", "kernel"), ("head", "bias"))


def tree(values):
    """{'conv1_1': {...}, 'head': {...}} from four arrays in LEAVES' order."""
    out = {}
    for (layer, name), v in zip(LEAVES, values, strict=True):
        out.setdefault(layer, {})[name] = np.asarray(v, np.float32)
    return out


def leaves(t):
    return [t[layer][name] for layer, name in LEAVES]


def run_steps(config, params, grads_per_step):
    """The parameters after optim.create_optimizer's updates for each step's gradients."""
    tx = optim.create_optimizer(config, 100)
    state = tx.init(params)
    for grads in grads_per_step:
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def random_tree(rng):
    return tree([rng.normal(size=3) for _ in LEAVES])


# Per leaf in LEAVES' order: new_layer_lr_mult 10 and bias_lr_mult 2 as in the Caffe solvers.
MULTS = (1.0, 2.0, 10.0, 20.0)
IS_BIAS = (False, True, False, True)


def two_grouped_steps(seed, **fields):
    """(params, the two steps' gradients, the parameters after them) for random trees, with
    `fields` set and the Caffe solvers' multipliers (new layers x10, biases x2)."""
    rng = np.random.default_rng(seed)
    config = optim_config(new_layer_lr_mult=10.0, bias_lr_mult=2.0, **fields)
    params, grads = random_tree(rng), [random_tree(rng), random_tree(rng)]
    return params, grads, run_steps(config, params, grads)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_decays_kernels_only_with_momentum_and_nesterov_as_worked_by_hand(nesterov):
    """Two SGD steps: d = g + wd * p (kernels only, with p before the step), the trace
    t = d + m * t, the step d + m * t with Nesterov, else t, times lr and the group's
    multiplier. Two steps, so that momentum shows."""
    lr, m, wd = 0.1, 0.9, 0.05
    params, grads, got = two_grouped_steps(
        0, learning_rate=lr, momentum=m, nesterov=nesterov, weight_decay=wd
    )
    for i, (p, mult, bias) in enumerate(zip(leaves(params), MULTS, IS_BIAS, strict=True)):
        t = np.zeros_like(p)
        for g in grads:
            d = leaves(g)[i] + (0.0 if bias else wd) * p
            t = d + m * t
            p = p - lr * mult * (d + m * t if nesterov else t)
        np.testing.assert_allclose(leaves(got)[i], p, rtol=1e-5, err_msg=str(LEAVES[i]))


def test_decay_biases_is_torch_sgd_as_wsolevaluation_builds_it():
    """The WSOL recipes' solver against torch.optim.SGD itself: momentum 0.9, Nesterov, weight
    decay on every parameter (`decay_biases`), the new layers in a second group at 10x the
    rate, and the rate x0.1 after step 2 (the reference multiplies each group's lr)."""
    torch = pytest.importorskip("torch")
    lr, m, wd, steps = 0.1, 0.9, 0.05, 4
    config = optim_config(
        learning_rate=lr, momentum=m, nesterov=True, weight_decay=wd, decay_biases=True,
        new_layer_lr_mult=10.0, schedule="step", decay_at=(2,),
    )  # fmt: skip
    rng = np.random.default_rng(3)
    params, grads = random_tree(rng), [random_tree(rng) for _ in range(steps)]
    got = run_steps(config, params, grads)

    tensors = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in leaves(params)]
    sgd = torch.optim.SGD(
        [{"params": tensors[:2], "lr": lr}, {"params": tensors[2:], "lr": 10 * lr}],
        momentum=m, weight_decay=wd, nesterov=True,
    )  # fmt: skip
    for step, g in enumerate(grads):
        if step == 2:
            for group in sgd.param_groups:
                group["lr"] *= 0.1
        for tensor, value in zip(tensors, leaves(g), strict=True):
            tensor.grad = torch.tensor(value, dtype=torch.float64)
        sgd.step()
    for i, tensor in enumerate(tensors):
        np.testing.assert_allclose(leaves(got)[i], tensor.detach().numpy(), rtol=1e-5)


def test_adamw_decays_kernels_only_with_b1_from_momentum_as_worked_by_hand():
    """Two AdamW steps: Adam's bias-corrected moments with b1 = config.optim.momentum (0.8
    here, not optax's 0.9), plus wd * p on kernels only, times lr and the group's multiplier."""
    lr, b1, b2, eps, wd = 0.01, 0.8, 0.999, 1e-8, 0.1
    params, grads, got = two_grouped_steps(
        1, name="adamw", learning_rate=lr, momentum=b1, weight_decay=wd
    )
    for i, (p, mult, bias) in enumerate(zip(leaves(params), MULTS, IS_BIAS, strict=True)):
        mu = nu = np.zeros_like(p)
        for k, g in enumerate(grads, start=1):
            g = leaves(g)[i]
            mu, nu = b1 * mu + (1 - b1) * g, b2 * nu + (1 - b2) * g**2
            adam = (mu / (1 - b1**k)) / (np.sqrt(nu / (1 - b2**k)) + eps)
            p = p - lr * mult * (adam + (0.0 if bias else wd) * p)
        # float32 rounding of Adam's ratio, against steps of 1e-2 to 2e-1 per leaf.
        np.testing.assert_allclose(leaves(got)[i], p, atol=1e-5, err_msg=str(LEAVES[i]))


def test_gradients_are_clipped_by_their_global_norm_before_decay_and_multipliers():
    """grad_clip_norm rescales the raw gradients (global norm 5 here, to 1) before weight decay
    and the multipliers, so a x10 head is not clipped back to the backbone's step."""
    wd, clip = 0.1, 1.0
    config = optim_config(weight_decay=wd, new_layer_lr_mult=10.0, grad_clip_norm=clip)
    params = tree([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    grads = tree([[3.0, 0.0], [0.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
    got = run_steps(config, params, [grads])
    scale = clip / 5.0
    want = [
        1.0 - 1.0 * (np.array([3.0, 0.0]) * scale + wd),
        [1.0, 1.0],
        1.0 - 10.0 * (np.array([0.0, 4.0]) * scale + wd),
        [1.0, 1.0],
    ]
    for g, w, leaf in zip(leaves(got), want, LEAVES, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, err_msg=str(leaf))


def test_nonnegative_head_keeps_only_the_heads_kernel_at_or_above_zero():
    """Every leaf is pushed below 0; only head/kernel is projected (to 0 where it would cross,
    unchanged where it stays positive). A config saved before the field existed lacks it
    and trains a signed head."""
    params = tree([[1.0, 1.0], [1.0, 1.0], [1.0, 5.0], [1.0, 1.0]])
    grads = tree([[3.0, 3.0], [3.0, 3.0], [3.0, 3.0], [3.0, 3.0]])
    got = run_steps(optim_config(nonnegative_head=True), params, [grads])
    want = [[-2.0, -2.0], [-2.0, -2.0], [0.0, 2.0], [-2.0, -2.0]]
    for g, w, leaf in zip(leaves(got), want, LEAVES, strict=True):
        np.testing.assert_allclose(g, w, err_msg=str(leaf))
    old = ml_collections.ConfigDict(
        {k: v for k, v in optim_config().items() if k != "nonnegative_head"}
    )
    got = run_steps(old, params, [grads])
    np.testing.assert_allclose(got["head"]["kernel"], [-2.0, 2.0])


def test_new_layers_matching_nothing_are_an_error_for_any_multiplier_but_one():
    """A typo in new_layers with a slower new group (x0.1) fails as a faster one does."""
    config = optim_config(new_layer_lr_mult=0.1, new_layers=("hed",))
    params = tree([[1.0], [1.0], [1.0], [1.0]])
    with pytest.raises(ValueError, match=r"new_layers \['hed'\] names none of"):
        optim.create_optimizer(config, 10).init(params)
    config.new_layer_lr_mult = 1.0  # one rate for all: nothing to name
    optim.create_optimizer(config, 10).init(params)
