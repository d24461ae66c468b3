"""Reading a layer of any Flax model, and its gradient, by module path, without editing the model.

A `Probe` runs `model.apply` under `flax.linen.intercept_methods`: when the module at one of its
paths returns, the interceptor adds a zero `delta` to the output and sows the sum into a
collection of its own (a variable, not a Python reference: a lifted transform such as `nn.remat`
traces its module in a scope of its own, which only variables leave; `nn.jit`, which replays a
cached trace with the interceptor's first delta, is refused). The gradient
of a score with respect to that delta is the gradient with respect to the layer's output, so one
`jax.vjp` gives the activations and, per target, their gradients; nothing in the user's model
changes. An interceptor can also replace a layer's output, which makes whatever only fed that
layer dead code that XLA drops (Ablation-CAM runs the rest of the network only, plus any skip
connection around the layer).

A Flax NNX model has no interceptors: the probe rebuilds a copy of it from its graph definition
and state inside the trace and gives the probed modules of the copy a subclass whose `__call__`
does the same, with the delta in a `ProbeInput` variable on the module and the output sown as an
`nnx.Intermediate`: NNX's lifted transforms carry both like any state, and those that cache
their traces (`nnx.jit`, `nnx.remat`) replay them with the current values.

Layouts. Convolutional layers give (B, h, w, K) (NHWC, Flax's own). Transformer layers give
tokens (B, T, D) on the images' patch grid, h x w = (H/p) x (W/p) (`grid_shape`), after a prefix
of class or register tokens, dropped, or on `grid=(h, w)`; `to_grid` makes both (B, h, w, K),
the layout every method works in.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.errors
import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
from flax import nnx
from jax.extend import core as jex_core

from camjax import errors
from camjax.explain.guided import guided_relus

Variables = Mapping[str, Any]


# The collection a probe sows its layers' outputs into (with an `_unstacked_marker` each), the
# names of its inputs to a layer (a delta, a replacement output), the NNX attributes of those.
PROBED = "camjax_probe"
UNSTACKED = "unstacked"
PROBE_INPUTS = "camjax_probe_inputs"
DELTA, REPLACEMENT = "delta", "replacement"
_INPUT_ATTRIBUTE = {name: f"{PROBE_INPUTS}_{name}" for name in (DELTA, REPLACEMENT)}


class ProbeInput(nnx.Variable):
    """A probe's input to an NNX layer (a delta, a replacement output), held by the layer."""


def model_logits(output: Any) -> jax.Array:
    """The logits of a model's output: the output itself, the first item of a tuple or list
    (camjax's networks return `(logits, intermediates)`), or a mapping's or an output object's
    `logits` (`{"logits": ...}`, a dataclass with a `logits` field)."""
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if not isinstance(output, Mapping) and hasattr(output, "logits"):
        return output.logits
    return output[0] if isinstance(output, (tuple, list)) else output


@dataclasses.dataclass(frozen=True)
class Probe:
    """A model with one or more layers addressed by module path ('layer4_2', 'block/conv').

    apply_kwargs: keyword arguments of every `model.apply` call (an NNX model's call), as
    sorted (name, value) pairs (e.g. (("train", False),)); the model must be deterministic with
    them (no dropout, batch norm on its running statistics), or a sample's map would depend on
    the rest of the batch.
    grid: (h, w) of a token layer; None infers the images' patch grid (`grid_shape`).
    model: a linen module, or an NNX model's graph definition (`nnx.split`), whose variables
    are then its state; name: the NNX model's class name, for messages.
    """

    model: nn.Module | nnx.GraphDef
    layers: tuple[str, ...]
    apply_kwargs: tuple[tuple[str, Any], ...] = ()
    grid: tuple[int, int] | None = None
    name: str = ""

    def run(
        self,
        variables: Variables,
        images: jax.Array,
        deltas: Sequence[jax.Array] | None = None,
        replacement: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """One forward pass -> (logits (B, C), each layer's output in the module's own layout).

        deltas: added to each layer's output (zeros, to take gradients there). replacement: the
        output of the single layer, used instead of computing it.
        """
        given: dict[str, dict[str, jax.Array]] = {layer: {} for layer in self.layers}
        for layer, delta in zip(self.layers, deltas or (), strict=False):
            given[layer][DELTA] = delta
        if replacement is not None:
            given[self.layers[0]][REPLACEMENT] = replacement

        def tap(path: str, call: Callable[[], Any], inputs: Mapping[str, jax.Array]):
            out = inputs[REPLACEMENT] if REPLACEMENT in inputs else call()
            if not isinstance(out, jax.Array) or out.ndim not in (3, 4):
                raise ValueError(
                    f"layer {path!r} must return one (B, h, w, K) or (B, tokens, D) array; got "
                    f"{errors.described(out)}. Probe a module that does."
                )
            if DELTA in inputs:
                out = out + inputs[DELTA].astype(out.dtype)
            return out

        apply = self._apply_linen if isinstance(self.model, nn.Module) else self._apply_nnx
        called: list[str] = []  # the module paths whose __call__ was traced, in order
        try:
            output, sown, paths = apply(variables, images, given, tap, called)
        except (ValueError, TypeError) as e:  # lax.cond refuses unequal branches: TypeError
            self._raise_if_lifted_refusal(e, called, variables, images)
            raise
        logits = model_logits(output)
        if not isinstance(logits, jax.Array) or logits.ndim != 2:
            raise ValueError(
                f"{self.model_name} must return logits (B, classes), a tuple or list starting "
                f"with them, or a mapping or object with 'logits'; got {errors.described(logits)}."
            )
        return logits.astype(jnp.float32), tuple(
            self._single_output(
                layer,
                sown.get(f"{layer}/{PROBED}", ()),
                sown.get(f"{layer}/{UNSTACKED}", ()),
                called,
                paths,
                variables,
            )
            for layer in self.layers
        )

    def _raise_if_lifted_refusal(
        self, error: Exception, called: list[str], variables: Variables, images: jax.Array
    ) -> None:
        """The one-line error for a lifted transform refusing a tapped layer's sown output: a vmap
        broadcasting the module's variables ("at vmap out_axes..."), a cond whose other branch
        lacks it. Returns for any other error, and when the model fails without the probe too
        (its own bug), for the caller to raise it as it is."""
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        tapped = [layer for layer in self.layers if layer in called]
        if not tapped or not (PROBED in str(error) or "out_axes" in message):
            return
        if not self._runs_unprobed(variables, images):
            return
        layers = " or ".join(map(repr, tapped))
        raise self._lifted_error(layers, f" (JAX: {message.rstrip(':')})") from None

    @property
    def model_name(self) -> str:
        return type(self.model).__name__ if isinstance(self.model, nn.Module) else self.name

    def _runs_unprobed(self, variables: Variables, images: jax.Array) -> bool:
        """Whether the model runs (is traced) without the probe."""
        kwargs = dict(self.apply_kwargs)

        def call():
            if isinstance(self.model, nn.Module):
                return self.model.apply(variables, images, **kwargs)
            return nnx.merge(self.model, variables, copy=True)(images, **kwargs)

        try:
            jax.eval_shape(call)
        except Exception:  # the model's own error: the caller raises it as it was
            return False
        return True

    def _apply_linen(self, variables, images, given, tap: Callable, called: list[str]):
        """model.apply with the layers tapped (`given`: {layer: {DELTA/REPLACEMENT: array}})
        -> (output, {'path/name': what was sown there}, every module path reached by any
        method); `called` gets the paths whose __call__ was traced.

        The inputs reach the layer in a closure, not as variables, which transforms that map
        every collection (nn.SpectralNorm, nn.WeightNorm) would alter; a transform that caches
        its trace (nn.jit) replays the closure's first values, which `_single_output` refuses."""
        paths: list[str] = []

        def interceptor(next_fun, args, kwargs, context):
            path = "/".join(context.module.path)
            paths.append(path)
            if context.method_name != "__call__":
                return next_fun(*args, **kwargs)
            called.append(path)
            if path not in self.layers:
                return next_fun(*args, **kwargs)
            out = tap(path, lambda: next_fun(*args, **kwargs), given[path])
            context.module.sow(PROBED, PROBED, out)
            context.module.sow(PROBED, UNSTACKED, _unstacked_marker())
            return out

        try:
            with nn.intercept_methods(interceptor):
                output, probed = self.model.apply(
                    variables, images, mutable=[PROBED], **dict(self.apply_kwargs)
                )
        except (flax.errors.ModifyScopeVariableError, flax.errors.InvalidRngError) as e:
            cause = str(e).split(" (https")[0]
            fix = 'its eval-mode flag, e.g. apply_kwargs={"train": False}, for maps of each image'
            if isinstance(e, flax.errors.ModifyScopeVariableError):  # batch norm's statistics
                problem = f"runs in training mode ({cause}): pass {fix} alone."
            else:  # dropout's key in training, or a model that samples at inference
                problem = (
                    f"draws random numbers ({cause}): if in training mode, pass {fix} alone; a "
                    "model that samples at inference needs a flag turning that off."
                )
            raise ValueError(f"{self.model_name} {problem}") from None
        sown = flax.traverse_util.flatten_dict(probed.get(PROBED, {}), sep="/")
        return output, sown, paths

    def _apply_nnx(self, state: nnx.State, images, given, tap: Callable, called: list[str]):
        """The NNX model rebuilt from its graph definition and `state` (a copy: the user's model
        is untouched), its probed modules' classes swapped for `_tapped` ones holding `given`
        as `ProbeInput` variables, and called -> (output, {'path/name': what was sown}, every
        module path); `called` gets the probed layers whose __call__ was traced."""
        # copy: Variables of this trace, which NNX's lifted transforms may then update (the
        # state's own may belong to an outer trace, e.g. outside a jax.vjp).
        model = nnx.merge(self.model, state, copy=True)
        modules = {
            "/".join(map(str, path)): node
            for path, node in nnx.iter_graph(model)
            if isinstance(node, nnx.Module)
        }
        for layer in self.layers:
            if (module := modules.get(layer)) is not None:
                module.__class__ = _tapped(type(module), layer)
                for name, value in given[layer].items():
                    # Past the model's own __setattr__, which may refuse new attributes.
                    nnx.Module.__setattr__(module, _INPUT_ATTRIBUTE[name], ProbeInput(value))
        token = _ACTIVE_TAP.set((tap, called))
        try:
            output, captured = nnx.capture(model, nnx.Intermediate)(
                images, **dict(self.apply_kwargs)
            )
        finally:
            _ACTIVE_TAP.reset(token)
        sown = {
            "/".join(map(str, path)): variable.get_value()
            for path, variable in nnx.to_flat_state(captured)
        }
        return output, sown, sorted(modules)

    def _single_output(
        self,
        layer: str,
        outputs: tuple,
        markers: tuple,
        called: list[str],
        paths: list[str],
        variables: Variables,
    ) -> jax.Array:
        """The one output a layer sowed, or a one-line error saying why there is not one.
        markers: the `_unstacked_marker`s sown beside the outputs."""
        if len(outputs) > 1:
            raise ValueError(
                f"layer {layer!r} is called more than once in one forward pass (a shared "
                "module); probe a module that is called once, e.g. one of its callers."
            )
        if outputs and markers[0].shape != (0,):  # stacked, by a scan over layers
            raise self._lifted_error(repr(layer), "")
        if outputs and layer not in called and isinstance(self.model, nn.Module):
            raise ValueError(
                f"layer {layer!r} of {self.model_name} runs inside a transform that replays a "
                "cached trace (nn.jit), which would replay the probe's first inputs; probe a "
                "module outside it, e.g. the transformed module's caller, or use nn.remat."
            )
        if outputs:
            return outputs[0]
        if layer in called:
            raise self._lifted_error(repr(layer), "")
        if layer in paths:
            raise ValueError(
                f"layer {layer!r} of {self.model_name} is not called through __call__ in the "
                "forward pass (only __call__'s output is read); probe a module on the way to "
                "the logits that is."
            )
        if isinstance(self.model, nn.Module) and _has_parameters(variables, layer):
            raise ValueError(
                f"layer {layer!r} of {self.model_name} has parameters but was not traced: it "
                "runs inside a transform that replays a cached trace (nn.jit), or is not called; "
                "probe a module outside it, e.g. the transformed module's caller."
            )
        listing = ", ".join(p for p in dict.fromkeys(paths) if p)
        raise ValueError(
            f"{self.model_name} has no module at path {layer!r}; its module paths are: {listing}."
        )

    def _lifted_error(self, layer: str, cause: str) -> ValueError:
        return ValueError(
            f"layer {layer} of {self.model_name} runs inside a lifted transform that stacks, "
            "broadcasts or drops its outputs (a scan over repeated blocks, a vmap, a cond's "
            "branch, nn.WeightNorm); probe a module outside it, e.g. the transformed module's "
            f"caller{cause}."
        )

    def forward(self, variables: Variables, images: jax.Array):
        """(logits (B, C) float32, activations: per layer (B, h, w, K) float32)."""
        logits, acts = self.run(variables, images)
        return logits, tuple(self.to_grid(a, images.shape[1:3]) for a in acts)

    def gradients(
        self,
        variables: Variables,
        images: jax.Array,
        cotangents: Callable[[jax.Array], jax.Array],
        guided: bool = False,
    ):
        """Activations and their gradients for n scores per image, in one forward pass and one
        batched backward pass; `guided`: through guided ReLUs (`camjax.explain.guided`).

        cotangents: logits (B, C) -> (n, B, C), the gradient of each of the n scores with
        respect to the logits (a one-hot row per target class). Returns (logits (B, C),
        activations: per layer (B, h, w, K), gradients: per layer (n, B, h, w, K)), float32."""
        run = functools.partial(self.run, variables, images)  # a function of the deltas
        zeros = tuple(jnp.zeros(s.shape, s.dtype) for s in jax.eval_shape(run)[1])
        logits, pullback, acts = jax.vjp(guided_relus(run) if guided else run, zeros, has_aux=True)
        self.check_layers_reached(pullback, jnp.zeros_like(logits), gradient=True)
        (grads,) = jax.vmap(pullback)(cotangents(logits))
        to_grid = functools.partial(self.to_grid, image_size=images.shape[1:3])
        return logits, tuple(map(to_grid, acts)), tuple(jax.vmap(to_grid)(g) for g in grads)

    def check_layers_reached(self, fn: Callable, *args: Any, gradient: bool) -> None:
        """A one-line error, while tracing, for a probed layer the logits do not depend on,
        whose map would be a plausible-looking blank. fn(*args) has one output per layer: its
        gradient (`gradient`, where stop_gradient cuts the path too) or the logits computed from
        it. Its jaxpr is read, not run."""
        reached = _depends_on_inputs(jax.make_jaxpr(fn)(*args).jaxpr)
        if unreached := [layer for layer, ok in zip(self.layers, reached, strict=True) if not ok]:
            how = " (or not differentiably: stop_gradient, argmax)" if gradient else ""
            raise ValueError(
                f"the logits of {self.model_name} do not depend on layer "
                f"{unreached[0]!r}{how}, so its map would be blank by construction; probe a "
                "layer on the way to the logits."
            )

    def logits_from(self, variables: Variables, images: jax.Array, activation: jax.Array):
        """The logits of `images` when the (single) layer outputs `activation` (module layout,
        same batch). The layers that only feed the probed one are dead code that XLA removes;
        a path around it (a residual connection) is computed from the images."""
        return self.run(variables, images, replacement=activation)[0]

    def grid_shape(self, tokens: int, image_size: tuple[int, int]) -> tuple[int, int, int]:
        """(prefix tokens, h, w) of `tokens` tokens of (H, W) images: `grid`, or the patch grid
        (H/p, W/p) (VALID or SAME) after at most h + w prefix tokens (class, registers). A ViT's
        is a grid of a p dividing H and W, or one after at most a class token: one such fit is
        taken, two (37 tokens on 32x64: 4x8 after 5, 4x9 after 1) refused, none: fewest prefix."""
        if self.grid is not None:
            h, w = self.grid
            fits, shape = [(tokens - h * w, h, w)] if tokens >= h * w else [], f"a {h}x{w} grid"
        else:
            (height, width), sizes = image_size, range(1, min(image_size) + 1)
            exact = {(height // p, width // p) for p in sizes if height % p == width % p == 0}
            grids = {(height // p, width // p) for p in sizes}
            grids |= {(-(-height // p), -(-width // p)) for p in sizes}
            fits = [(tokens - h * w, h, w) for h, w in grids if 0 <= tokens - h * w <= h + w]
            shape = f"the patch grid of a {height}x{width} image"
            if len(likely := [f for f in fits if f[1:] in exact or f[0] <= 1]) > 1:
                ways = " or ".join(f"{h}x{w} after {n}" for n, h, w in sorted(likely))
                raise ValueError(f"{tokens} tokens fit {shape} as {ways}; pass grid=(h, w).")
            fits = likely or fits
        if not fits:
            raise ValueError(
                f"cannot lay {tokens} tokens out as {shape}; pass grid=(h, w), the patch grid "
                "of the layer (the tokens before the last h * w are dropped)."
            )
        return min(fits)

    def to_grid(self, x: jax.Array, image_size: tuple[int, int]) -> jax.Array:
        """(B, h, w, K) or tokens (B, T, D) -> (B, h, w, K) float32, prefix tokens dropped;
        image_size: (H, W) of the images, whose patch grid the tokens are."""
        x = x.astype(jnp.float32)
        if x.ndim == 4:
            return x
        prefix, h, w = self.grid_shape(x.shape[1], image_size)
        return x[:, prefix:].reshape(x.shape[0], h, w, x.shape[2])

    def from_grid(self, x: jax.Array, like: jax.Array) -> jax.Array:
        """Inverse of `to_grid`: x (B, h, w, K) back to the layout of the layer output `like`
        (same batch), whose prefix tokens it keeps."""
        if like.ndim == 4:
            return x.astype(like.dtype)
        prefix = like.shape[1] - x.shape[1] * x.shape[2]
        tokens = x.reshape(x.shape[0], -1, x.shape[3]).astype(like.dtype)
        return jnp.concatenate([like[:, :prefix], tokens], axis=1)


def _depends_on_inputs(jaxpr: jex_core.Jaxpr) -> list[bool]:
    """For each output of `jaxpr`, whether it may depend on its inputs. Conservative: an
    equation with any dependent input makes all of its outputs dependent (nested jaxprs are not
    looked into), so only an output computed from constants alone is reported as independent."""
    dependent = set(jaxpr.invars)
    for eqn in jaxpr.eqns:
        if any(isinstance(v, jex_core.Var) and v in dependent for v in eqn.invars):
            dependent.update(eqn.outvars)
    return [isinstance(v, jex_core.Var) and v in dependent for v in jaxpr.outvars]


# The NNX call being traced: (its tap, the list of layers called). A context variable, not a
# closure, so that one subclass per (class, layer) serves every trace: NNX registers each Module
# subclass for good, and a closure would keep the trace's arrays alive with it.
_ACTIVE_TAP: contextvars.ContextVar[tuple[Callable, list[str]]] = contextvars.ContextVar(
    "camjax_active_tap"
)


@functools.cache
def _tapped(cls: type, layer: str) -> type:
    """A subclass of an NNX module class whose __call__ passes its output through the active
    tap and sows it as an nnx.Intermediate, which `nnx.capture` collects and NNX's lifted
    transforms (nnx.remat, nnx.jit) return to the module like any state update."""

    def __call__(self, *args, **kwargs):
        tap, called = _ACTIVE_TAP.get()
        called.append(layer)
        inputs = {
            name: variable[...]
            for name in (DELTA, REPLACEMENT)
            if (variable := getattr(self, _INPUT_ATTRIBUTE[name], None)) is not None
        }
        out = tap(layer, lambda: cls.__call__(self, *args, **kwargs), inputs)
        self.sow(nnx.Intermediate, PROBED, out)
        self.sow(nnx.Intermediate, UNSTACKED, _unstacked_marker())
        return out

    return type(cls.__name__, (cls,), {"__call__": __call__})


def _has_parameters(variables: Variables, layer: str) -> bool:
    """Whether linen `variables` hold parameters under the module path `layer`."""
    params = flax.traverse_util.flatten_dict(variables.get("params", {}), sep="/")
    return any(path.startswith(f"{layer}/") for path in params)


def _unstacked_marker() -> jax.Array:
    """An empty array sown beside a layer's output: shape (0,) unless a scan over layers
    stacked it ((L, 0)), which the output's own shape cannot show when L equals the batch and
    which, unlike a shape noted while tracing, survives a replayed trace."""
    return jnp.zeros((0,), jnp.float32)
