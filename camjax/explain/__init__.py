"""Class-activation maps of any Flax model, any layer, any target: one compiled program per batch.

    f = camjax.explain.explainer(model, variables, "grad_cam_pp", layer="layer4_2")
    out = f(images)                       # logits (B, C), classes (B, 1), cams (B, 1, H, W)
    out = f(images, targets=labels)       # given classes, (B,) or (B, n)
    out = f(images, targets=lambda z: z[:, 3] - z[:, 5])   # any per-sample score of the logits

`layer` is a module path ('conv5_3', 'encoder/block_11'; a tuple of paths for LayerCAM's
fusion); the model is not edited (`probe.Probe` intercepts the module's output). camjax's GAP
networks name their feature map 'feature_map' (the default). A Flax NNX model is taken as it
is, its state being its variables: `explainer(model, method="grad_cam", layer="blocks/3/conv")`
(attribute paths joined by '/', list items by their index), after `model.eval()`. Token layers
(B, T, D) of a vision transformer are laid out on their patch grid, class/register tokens
dropped.

Every method runs the whole batch in one jitted function, compiled once per input shape and
cached per (model, method, options): calling `explainer` again with new variables reuses it.
The maps of one image never depend on the other images of its batch (the model must be in its
deterministic mode: `apply_kwargs`, default none, are passed to every `model.apply`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from camjax import compile_options, errors, explicit_axes
from camjax.cam import check_class_layout, head_kernel, postprocess, valid_classes
from camjax.explain import activation, bagcams, gradient, perturbation
from camjax.explain.probe import Probe
from camjax.explain.targets import Target
from camjax.models.layers import FEATURE_MAP

# name -> method(probe, variables, images, target, key, **options) -> (logits, classes, maps).
METHODS: dict[str, Callable[..., tuple[jax.Array, jax.Array, jax.Array]]] = {
    "cam": activation.cam,
    "grad_cam": gradient.grad_cam,
    "grad_cam_pp": gradient.grad_cam_pp,
    "smooth_grad_cam_pp": gradient.smooth_grad_cam_pp,
    "xgrad_cam": gradient.xgrad_cam,
    "hires_cam": gradient.hires_cam,
    "layer_cam": gradient.layer_cam,
    "eigen_cam": activation.eigen_cam,
    "eigen_grad_cam": gradient.eigen_grad_cam,
    "score_cam": perturbation.score_cam,
    "ss_cam": perturbation.ss_cam,
    "is_cam": perturbation.is_cam,
    "ablation_cam": perturbation.ablation_cam,
    "bag_cams": bagcams.bag_cams,
}


def default_options() -> dict[str, dict[str, Any]]:
    """Each method's own options with their defaults, {method: {option: default}}: the keyword
    arguments after `key` (a gradient method's are its map function's). What
    config.eval.options holds, so that evaluate.py can set any of them."""
    out = {}
    for name, method in METHODS.items():
        params = inspect.signature(getattr(method, "map_fn", method)).parameters.values()
        out[name] = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    return out


class CamOutput(NamedTuple):
    """What an explainer returns; all device arrays.

    logits: (B, C) float32; classes: (B, n) int32, the class of each map (-1: a score
    function's map, or a map that is NaN: an out-of-range class, or a map or logits that were
    not finite); cams: (B, n, H, W) float32.
    """

    logits: jax.Array
    classes: jax.Array
    cams: jax.Array


def check_images(images: Any) -> None:
    """What image models take: a float (B, H, W, C) array (NHWC, any number of channels),
    normalised as in training."""
    if not hasattr(images, "dtype") or not hasattr(images, "shape"):
        raise ValueError(
            f"images must be an array (numpy or jax), not a {type(images).__name__}; stack "
            "them first, e.g. np.stack(images)."
        )
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            f"images must be floating point, normalised as the model was trained "
            f"((pixels / 255 - mean) / std for camjax's models); got dtype {images.dtype}."
        )
    if images.ndim != 4 or images.shape[0] == 0:
        one = "; for one image, pass images[None]" if images.ndim == 3 else ""
        raise ValueError(
            f"images must have shape (batch, height, width, channels) with batch >= 1; got "
            f"{tuple(images.shape)}{one}."
        )
    # At most 4 "rows" and more "channels", read as NCHW an image of at least 5 x 5: a torch
    # batch. A small NHWC grid of many channels, such as (B, 4, 4, 16), is left to the model.
    if images.shape[1] <= 4 < min(images.shape[2:]):
        raise ValueError(
            f"images of shape {tuple(images.shape)} look channels-first (NCHW); Flax models "
            "take NHWC: pass images.transpose(0, 2, 3, 1)."
        )


def _check_targets(targets: Any, batch: int) -> Any:
    """Classes as given, checked without a device round trip: a host array (numpy, list) is
    checked here; a device array's values are checked inside the program (clamp and flag)."""
    if targets is None or callable(targets):
        return targets
    if not isinstance(targets, jax.Array):
        targets = np.asarray(targets)
    check_class_layout(targets, batch, "images")
    return targets if targets.ndim == 2 else targets[:, None]


# Float options that scale something (a noise's standard deviation, LayerCAM's tanh gain): a
# negative value has no meaning. Others (Ablation-CAM's fill value) may be negative.
_SCALES = ("std", "gamma")


def check_options(method: str, options: Mapping[str, Any], where: str = "") -> None:
    """A method's own options, by name and by the type of their defaults (a string for a bool,
    a float for a count, a count below 1, a float not finite, a negative std or gamma), before
    anything is traced. where: the options' place
    in a config (e.g. 'config.eval.options.grad_cam'), for the message."""
    defaults = default_options()[method]
    for name, value in options.items():
        if name not in defaults:
            takes = ", ".join(sorted(defaults)) or "none"
            subject = where or f"method {method!r}"
            raise ValueError(f"{subject} has no option {name!r}; its options: {takes}.")
        default = defaults[name]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
            ok = ok and (value >= 1 or name not in ("num_samples", "chunk_size"))
        elif isinstance(default, float):
            # NaN or Inf would give finite, plausible maps (std=nan) or act as 0 (value=nan).
            real = int | float | np.integer | np.floating
            ok = isinstance(value, real) and not isinstance(value, bool)
            ok = ok and bool(np.isfinite(value)) and (value >= 0 or name not in _SCALES)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            continue  # None defaults (a head path, an optional value): the method checks
        if not ok:
            subject = f"{where}.{name}" if where else f"option {name!r} of {method!r}"
            raise ValueError(
                f"{subject} must be {'an' if type(default) is int else 'a'} "
                f"{'finite ' if type(default) is float else ''}{type(default).__name__}"
                f"{' >= 1' if name in ('num_samples', 'chunk_size') else ''}"
                f"{' >= 0' if name in _SCALES else ''} like its default {default!r}; got "
                f"{value!r}."
            )


def _check_score_fn(score_fn: Callable, logits: jax.ShapeDtypeStruct) -> None:
    """A target function must give one score per image: a (B, k) or scalar result would be
    summed by the gradient into a plausible map of something else."""
    out = jax.eval_shape(score_fn, logits)
    if getattr(out, "shape", None) != logits.shape[:1]:
        raise ValueError(
            f"a target function must give one score per image, shape ({logits.shape[0]},); "
            f"got {getattr(out, 'shape', type(out).__name__)} from logits {logits.shape}."
        )


def _check_range(classes: np.ndarray, num_classes: int) -> None:
    if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(
            f"class indices must be in [0, {num_classes - 1}]; got values in "
            f"[{classes.min()}, {classes.max()}]."
        )


@functools.lru_cache(maxsize=64)
def _compiled(probe: Probe, method: str, top_k, size, resize, normalize, relu, options):
    fn = functools.partial(METHODS[method], **dict(options))

    # Outside a user's trace: XLA's Eigen kernels on jaxlib 0.10's CPU (compile_options says why).
    @functools.partial(compile_options.jit, static_argnames="score_fn")
    def run(variables, images, given, key, score_fn=None):
        # Images on a mesh with Explicit axes run with them Auto (`camjax.explicit_axes`), and
        # the outputs come back on the images' batch sharding.
        out = CamOutput(*(explicit_axes.batch_spec(images, n) for n in (2, 2, 4)))
        body = functools.partial(explain, score_fn=score_fn)
        return explicit_axes.with_auto_axes(body, images, out, variables, images, given, key)

    def explain(variables, images, given, key, score_fn=None):
        target = Target(given=given, top_k=top_k, fn=score_fn)
        logits, classes, maps = fn(probe, variables, images, target, key)
        # A map of an image holding NaN or Inf, or one that is not finite itself (logits that
        # overflow, a division by a zero score), is flagged, never normalised into zeros. (The
        # image is checked too: a network's max and ReLU can drop a NaN on its way.)
        finite = jnp.all(jnp.isfinite(maps), axis=(-2, -1)) & jnp.all(
            jnp.isfinite(logits), axis=-1, keepdims=True
        )
        finite &= jnp.all(jnp.isfinite(images), axis=(1, 2, 3))[:, None]
        target_size = images.shape[1:3] if size == "input" else size
        maps = postprocess(maps, target_size, method=resize, normalize=normalize, relu=relu)
        num_classes = logits.shape[-1]
        valid = (valid_classes(classes, num_classes) | (score_fn is not None)) & finite
        maps = jnp.where(valid[..., None, None], maps, jnp.nan)
        return CamOutput(logits, jnp.where(valid, classes, -1).astype(jnp.int32), maps)

    return run


def _compile(probe: Probe, *args: Any):
    """`_compiled`, whose cache needs a probe that hashes: one of a linen module with a list or
    dict field is compiled for its explainer only."""
    try:
        hash(probe)
    except TypeError:
        return _compiled.__wrapped__(probe, *args)
    return _compiled(probe, *args)


def explainer(
    model: nn.Module | nnx.Module,
    variables: Mapping[str, Any] | nnx.State | None = None,
    method: str = "grad_cam",
    *,
    layer: str | tuple[str, ...] = FEATURE_MAP,
    top_k: int | None = 1,
    size: tuple[int, int] | str | None = "input",
    resize: str = "bicubic",
    normalize: bool | str = True,
    relu: bool = False,
    apply_kwargs: Mapping[str, Any] | None = None,
    grid: tuple[int, int] | None = None,
    **options: Any,
) -> Callable[..., CamOutput]:
    """One compiled `f(images, targets=None, key=None) -> CamOutput` for a method of `METHODS`.

    model, variables: a linen module and what its `init` returns, or an NNX module (in eval
    mode) and its `nnx.state` (None: the model's own, whose values are read at every call, so
    in-place updates such as an `nnx.Optimizer`'s show).
    images: (B, H, W, C) float, as the model takes them. targets: None for the `top_k`
    best-scoring classes (best first; top_k None: every class, in class order), int classes (B,)
    or (B, n), or a function of the logits (B, C) -> (B,) (one map per image). key: the PRNG key
    of the noisy methods (default key 0). layer: module path(s) to read; grid: (h, w) of a token
    layer (None: the images' patch grid, `Probe.grid_shape`). size: 'input' upsamples to (H, W),
    (H', W') to that size, None keeps the method's own (the layer's; the input's for the
    Score-CAM family's default combine='input'). resize: 'bicubic' or 'bilinear'. normalize:
    True/'minmax' (per-map min-max to [0, 1]), 'max', or False for raw maps; a map constant up
    to float32 rounding (`camjax.cam.normalize_minmax`) becomes zeros, where the peers stretch
    its rounding noise to [0, 1]. relu: ReLU before resizing (the methods that define a ReLU
    apply it themselves). apply_kwargs: of every call of the model (e.g. {"train": False}).
    options: the method's own (e.g. num_samples).

    Class indices given as numpy or a list are checked before running, a device array's inside
    the program (no host round trip): an out-of-range class comes back as class -1 with a NaN
    map, never as a plausible map; so does a map not finite before normalisation (NaN or Inf in
    the image, logits that overflow, a zero score dividing Ablation-CAM's weights).
    """
    layers, size = _checked_arguments(method, layer, top_k, size, options)
    model, variables, name = _functional(model, variables)
    probe = Probe(model, layers, _hashable_kwargs(apply_kwargs), grid, name)
    options = tuple(sorted(options.items()))
    run = _compile(probe, method, top_k, size, resize, normalize, relu, options)

    def f(images: Any, targets: Any = None, key: jax.Array | None = None) -> CamOutput:
        check_images(images)
        if key is not None and not isinstance(key, jax.Array | np.ndarray):
            raise ValueError(f"key must be a JAX PRNG key, jax.random.key(seed); got {key!r}.")
        targets = _check_targets(targets, images.shape[0])
        score_fn = targets if callable(targets) else None
        given = None if score_fn is not None else targets
        args = (variables, images, given, jax.random.key(0) if key is None else key)
        if score_fn is not None:  # the model's logits, traced alone (cheaper than the method)
            _check_score_fn(score_fn, jax.eval_shape(lambda *a: probe.run(*a)[0], *args[:2]))
        if isinstance(given, np.ndarray):
            # The output's shape, from the trace that the call below reuses (no extra trace).
            _check_range(given, run.eval_shape(*args, score_fn=score_fn).logits.shape[-1])
        return run(*args, score_fn=score_fn)

    return f


def _functional(model: Any, variables: Any) -> tuple[Any, Any, str]:
    """(model, variables) as a probe runs them -> (linen module or NNX graph definition,
    variables or NNX state, an NNX model's class name). An NNX model's state is its variables:
    None takes the model's own, as it is now (`nnx.state(model)`)."""
    if isinstance(model, nnx.Module):
        _check_nnx_eval_mode(model)
        graphdef, state = nnx.split(model)
        if variables is not None and (
            not isinstance(variables, nnx.State)
            or jax.tree.structure(variables) != jax.tree.structure(state)
        ):
            got = type(variables).__name__
            if isinstance(variables, nnx.State):
                got = "a state of another structure"
            raise ValueError(
                "the variables of an NNX model are its whole state, nnx.state(model) (every "
                f"Variable, not only its Params), or None for the model's own; got {got}."
            )
        return graphdef, state if variables is None else variables, type(model).__name__
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model must be a Flax module (flax.linen or flax.nnx); got {type(model).__name__}."
        )
    if not isinstance(variables, Mapping) or (variables and "params" not in variables):
        keys = list(variables)[:4] if isinstance(variables, Mapping) else type(variables).__name__
        raise ValueError(
            f"variables must be what model.init returns, {{'params': ...}}; got {keys}. Pass "
            "{'params': params} (and any other collection, e.g. 'batch_stats')."
        )
    return model, variables, ""


def _hashable_kwargs(apply_kwargs: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """apply_kwargs as sorted (name, value) pairs, which key the compiled function."""
    pairs = tuple(sorted((apply_kwargs or {}).items()))
    for name, value in pairs:
        try:
            hash(value)
        except TypeError:
            raise ValueError(
                f"apply_kwargs[{name!r}] must be hashable (it keys the compiled function), like a "
                f"bool, number, string or tuple; got a {type(value).__name__}."
            ) from None
    return pairs


def _check_nnx_eval_mode(model: nnx.Module) -> None:
    """An NNX model in training mode (NNX's Dropout and BatchNorm start in it) would give maps
    that depend on the rest of the batch (batch statistics) or on chance (dropout)."""
    for path, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.Module) or getattr(node, "rate", None) == 0:
            continue  # a Dropout of rate 0 drops nothing
        for mode in ("deterministic", "use_running_average"):
            if getattr(node, mode, None) is False:
                where = "/".join(map(str, path))
                raise ValueError(
                    f"{type(model).__name__} is in training mode ({type(node).__name__} "
                    f"{where!r} has {mode}={getattr(node, mode)!r}): its maps would depend on "
                    "the rest of the batch or on chance; call model.eval() first."
                )


def _checked_arguments(
    method: str, layer: Any, top_k: Any, size: Any, options: Mapping[str, Any]
) -> tuple[tuple[str, ...], tuple[int, int] | str | None]:
    """`explainer`'s arguments checked before anything is traced -> (layers, size)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; methods: {', '.join(sorted(METHODS))}.")
    layers = (layer,) if isinstance(layer, str) else tuple(layer or ())
    if not layers or not all(isinstance(name, str) for name in layers):
        raise ValueError(f"layer must be a module path or a tuple of them; got {layer!r}.")
    if len(set(layers)) < len(layers):
        raise ValueError(f"layer names a module twice: {', '.join(layers)}.")
    if len(layers) > 1 and method != "layer_cam":
        raise ValueError(
            f"method {method!r} reads one layer; got {len(layers)} ({', '.join(layers)}). Only "
            "'layer_cam' fuses several."
        )
    if top_k is not None and not errors.is_int_at_least(top_k, 1):
        raise ValueError(f"top_k must be a positive int or None; got {top_k!r}.")
    # Its form here, before `tuple(size)`; its values where the maps are resized (resize.py).
    if not (size is None or (isinstance(size, str) and size == "input") or np.shape(size) == (2,)):
        raise ValueError(
            f"size must be 'input', None (the method's own) or (height, width); got {size!r}."
        )
    check_options(method, options)
    if size is not None and not isinstance(size, str):
        # Python numbers: the compiled functions are cached on it (a jax array is unhashable).
        size = tuple(np.asarray(size).tolist())
    return layers, size


def cam_fn(
    model: nn.Module,
    variables: Mapping[str, Any],
    *,
    top_k: int | None = 1,
    size: tuple[int, int] | str | None = "input",
    method: str = "bicubic",
    normalize: bool | str = True,
    relu: bool = False,
) -> Callable[..., CamOutput]:
    """The CAM of a camjax GAP network: `explainer(model, variables, "cam")` on its feature map.

    `f(images, targets=None)` as an explainer's: targets None (the top_k classes) or given
    classes; `method` is the resize method. Memory: the output holds B x n x H x W float32
    maps. With `top_k=None` that is every class: 1,000 classes at 224 x 224 are 200 MB per
    image of output (about twice that at the peak, with the resize's intermediates). To bound
    it, take `size=None` (1,000 maps of 14 x 14 are 0.8 MB per image) and `postprocess` only
    the maps needed, or pass classes in chunks.
    """
    num_classes = head_kernel(variables).shape[1]
    if top_k is not None and not (errors.is_int_at_least(top_k, 1) and top_k <= num_classes):
        raise ValueError(f"top_k must be an int in [1, {num_classes}] or None; got {top_k!r}.")
    return explainer(
        model,
        variables,
        "cam",
        top_k=top_k,
        size=size,
        resize=method,
        normalize=normalize,
        relu=relu,
    )
