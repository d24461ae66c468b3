"""Class activation maps: pure, batched, jittable functions of a feature map and the head's weights.

For a GAP network `logit_c = mean_xy(f(x, y)) . w_c + b_c`, the CAM of class c is
`M_c(x, y) = f(x, y) . w_c`, so `mean_xy M_c + b_c == logit_c` exactly (tests check it).

Layout: feature maps are `(B, h, w, K)` (NHWC, as the models return them), the head kernel is
`(K, C)` (Flax Dense layout), CAMs are `(B, n, h, w)` for n classes per image, or `(B, n, H, W)`
after `postprocess`. Everything stays on device; one trace per input shape.
"""

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from camjax import explicit_axes
from camjax.resize import resize_maps

_HIGHEST = jax.lax.Precision.HIGHEST


def _check_feature_map(feature_map: jax.Array, kernel: jax.Array) -> None:
    if feature_map.ndim != 4:
        raise ValueError(
            "feature_map must have shape (batch, height, width, channels); "
            f"got shape {tuple(feature_map.shape)}."
        )
    if kernel.ndim != 2 or kernel.shape[0] != feature_map.shape[-1]:
        raise ValueError(
            f"head kernel must have shape (channels={feature_map.shape[-1]}, num_classes) to match "
            f"the feature map; got shape {tuple(kernel.shape)}."
        )


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_class_layout(classes: Any, batch: int, what: str) -> None:
    """Raises a one-line ValueError unless classes is an int (batch,) or (batch, n) array for a
    batch of `batch` `what` (images, feature maps). Reads only dtype and shape: no device wait."""
    if not jnp.issubdtype(classes.dtype, jnp.integer):
        raise ValueError(f"class indices must be integers; got dtype {classes.dtype}.")
    if classes.ndim not in (1, 2) or classes.shape[0] != batch:
        raise ValueError(
            f"class indices must have shape ({batch},) or ({batch}, n) for a batch of {batch} "
            f"{what}; got shape {tuple(classes.shape)}."
        )


def _check_classes(classes: jax.Array, batch: int, num_classes: int) -> jax.Array:
    classes = jnp.asarray(classes)
    check_class_layout(classes, batch, "feature maps")
    # Checked whenever the values are known (outside a caller's jit); under one, an
    # out-of-range index gives a CAM of NaN instead (`_cams_for_classes`).
    if _is_concrete(classes) and classes.size:
        lo, hi = int(jnp.min(classes)), int(jnp.max(classes))
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"class indices must be in [0, {num_classes - 1}]; got values in [{lo}, {hi}]."
            )
    return classes


def cams_for_classes(feature_map: jax.Array, kernel: jax.Array, classes: jax.Array) -> jax.Array:
    """CAMs of chosen classes.

    feature_map: (B, h, w, K); kernel: (K, C) float; classes: int (B,) or (B, n).
    Returns float32 (B, h, w) for (B,) classes, (B, n, h, w) for (B, n) classes. An index
    outside [0, C) is an error, or, under a caller's jit, gives a CAM of NaN.
    """
    _check_feature_map(feature_map, kernel)
    classes = _check_classes(classes, feature_map.shape[0], kernel.shape[1])
    return _cams_for_classes(feature_map, kernel, classes)


def valid_classes(classes: jax.Array, num_classes: int) -> jax.Array:
    """bool, classes' shape: which indices name a class (0 <= c < num_classes)."""
    return (classes >= 0) & (classes < num_classes)


@jax.jit
def _cams_for_classes(feature_map: jax.Array, kernel: jax.Array, classes: jax.Array) -> jax.Array:
    # On a mesh with Explicit axes, with them Auto; the CAMs keep the batch's sharding.
    spec = explicit_axes.batch_spec(feature_map, classes.ndim + 2)
    args = (feature_map, kernel, classes)
    return explicit_axes.with_auto_axes(_class_cams, feature_map, spec, *args)


def _class_cams(feature_map: jax.Array, kernel: jax.Array, classes: jax.Array) -> jax.Array:
    # Gather the n weight vectors of each image first: (B, n, K), cheap next to the einsum.
    # Under a caller's jit the indices cannot be checked without a host round trip: an
    # out-of-range one gives a CAM of NaN, never a plausible map (a clamped or zero column).
    num_classes = kernel.shape[1]
    weights = jnp.take(kernel.astype(jnp.float32).T, jnp.clip(classes, 0, num_classes - 1), axis=0)
    fmap = feature_map.astype(jnp.float32)
    if classes.ndim == 1:
        cams = jnp.einsum("bhwk,bk->bhw", fmap, weights, precision=_HIGHEST)
    else:
        cams = jnp.einsum("bhwk,bnk->bnhw", fmap, weights, precision=_HIGHEST)
    return jnp.where(valid_classes(classes, num_classes)[..., None, None], cams, jnp.nan)


def class_maps_of(class_maps: jax.Array, classes: jax.Array) -> jax.Array:
    """Maps of chosen classes from a model that makes its own per-class maps (ACoL's
    'class_maps') rather than a feature map and a linear head.

    class_maps: (B, h, w, C) float; classes: int (B,). Returns float32 (B, h, w). Traceable; an
    index outside [0, C) gives a map of NaN, as `cams_for_classes` under a jit.
    """
    spec = explicit_axes.batch_spec(class_maps, 3)
    return explicit_axes.with_auto_axes(_class_maps_of, class_maps, spec, class_maps, classes)


def _class_maps_of(class_maps: jax.Array, classes: jax.Array) -> jax.Array:
    num_classes = class_maps.shape[-1]
    index = jnp.clip(classes, 0, num_classes - 1)[:, None, None, None]
    maps = jnp.take_along_axis(class_maps.astype(jnp.float32), index, axis=-1)[..., 0]
    return jnp.where(valid_classes(classes, num_classes)[:, None, None], maps, jnp.nan)


@jax.jit
def cams_all_classes(feature_map: jax.Array, kernel: jax.Array) -> jax.Array:
    """CAMs of every class. feature_map: (B, h, w, K); kernel: (K, C) -> float32 (B, C, h, w)."""
    _check_feature_map(feature_map, kernel)
    return jnp.einsum(
        "bhwk,kc->bchw",
        feature_map.astype(jnp.float32),
        kernel.astype(jnp.float32),
        precision=_HIGHEST,
    )


@functools.partial(jax.jit, static_argnames="k")
def cams_top_k(
    feature_map: jax.Array, kernel: jax.Array, logits: jax.Array, k: int
) -> tuple[jax.Array, jax.Array]:
    """CAMs of the k highest-scoring classes of each image, best first.

    feature_map: (B, h, w, K); kernel: (K, C); logits: (B, C).
    Returns (cams float32 (B, k, h, w), classes int32 (B, k)).
    """
    _check_feature_map(feature_map, kernel)
    if logits.shape != (feature_map.shape[0], kernel.shape[1]):
        raise ValueError(
            f"logits must have shape (batch={feature_map.shape[0]}, "
            f"num_classes={kernel.shape[1]}); "
            f"got shape {tuple(logits.shape)}."
        )
    if not 1 <= k <= kernel.shape[1]:
        raise ValueError(f"k must be in [1, {kernel.shape[1]}] (the number of classes); got {k}.")
    _, classes = jax.lax.top_k(logits, k)
    return _cams_for_classes(feature_map, kernel, classes), classes


# A map whose span is at most this many float32 ulps of its magnitude is constant. A constant
# CAM resized in float32 (`resize_maps`, like float32 cv2.resize) is not exactly constant: each
# output pixel is two passes of a <= 4-tap dot product whose float32 weights sum to 1 only up to
# rounding, which leaves a ripple of a few ulps (measured <= 4.5 ulps over bicubic and bilinear
# resizes of 7..28 -> 64..448, worst case ~12 by the usual dot-product error bound). The
# reference resizes the float32 CAM in float64, where the same constant stays exactly constant
# and `normalize_scoremap` zeroes it; stretching the ripple instead would turn a map without
# information into levels {0, 1/3, 2/3, 1} and score boxes from it. A span of 16 ulps (2e-6 of
# the magnitude) is below what a float32 CAM itself can resolve after summing K >= 512
# channel products, so no real map is lost.
_CONSTANT_SPAN_ULPS = 16


def _negligible_span(lo: jax.Array, hi: jax.Array) -> jax.Array:
    """Whether [lo, hi] is a float32 map's rounding ripple around a constant (see above)."""
    magnitude = jnp.maximum(jnp.abs(lo), jnp.abs(hi))
    return hi - lo <= _CONSTANT_SPAN_ULPS * jnp.finfo(jnp.float32).eps * magnitude


def divide_per_map(values: jax.Array, divisor: jax.Array) -> jax.Array:
    """values / divisor for a divisor with one value per map broadcast over its pixels (e.g. a
    min-max's span), rounded on CPU as numpy's and torch's division are.

    XLA rewrites a division by a broadcast value into a product with its reciprocal: on CPU
    (jax 0.10, random 7 x 7 maps) an ulp off in ~24% of the quotients, and a map's maximum
    over its span below 1 in ~12% of maps. The training methods' references divide, and
    compare the result with thresholds (ACoL erases where it is >= 1.0 as readily as 0.7), as
    the WSOL evaluator compares its min-max maps; the barrier hides the broadcast from that
    rewrite. GPU division is not correctly rounded either way: the min-maxes pin their
    maximum to 1 for that (`_pinned_minmax`)."""
    divisor = jnp.broadcast_to(divisor, jnp.broadcast_shapes(values.shape, divisor.shape))
    return values / jax.lax.optimization_barrier(divisor)


def _pinned_minmax(maps, lo, hi, ok, constant) -> jax.Array:
    """(maps - lo) / (hi - lo) where `ok`, else `constant`: a true division (`divide_per_map`;
    XLA's product with the reciprocal put ~24% of quotients an ulp off). GPU float32 division
    is not correctly rounded: the maximum's span / span can come out an ulp below 1 (the
    references' peak is exactly 1, the evaluator's top quantisation level) or above (an H200:
    quantize_scoremaps refused postprocess's maps). So the maximum is set to 1 and the rest
    clipped at 1."""
    scaled = jnp.minimum(divide_per_map(maps - lo, jnp.where(ok, hi - lo, 1.0)), 1.0)
    return jnp.where(ok, jnp.where(maps == hi, 1.0, scaled), constant)


def minmax_per_map(maps: jax.Array, constant: float, axes=(1, 2)) -> jax.Array:
    """(maps - min) / (max - min) over `axes` as the WSOL training methods' references compute
    it (wsolevaluation's `normalize_tensor`): a true division, the maximum exactly 1 on every
    backend (`_pinned_minmax`), and a constant map all `constant` (ACoL's 0: nothing erased,
    as the reference's NaN compares; SPG's NaN, the reference's 0 / 0). Float32."""
    maps = maps.astype(jnp.float32)
    lo = jnp.min(maps, axis=axes, keepdims=True)
    hi = jnp.max(maps, axis=axes, keepdims=True)
    return _pinned_minmax(maps, lo, hi, hi - lo > 0, constant)


def normalize_minmax(cams: jax.Array) -> jax.Array:
    """Per-map min-max normalisation over the last two axes to [0, 1].

    cams: (..., H, W) float. A constant map, or one with any non-finite value, becomes all zeros
    (the WSOL protocol's convention), so a degenerate map never yields NaN boxes or scores.
    "Constant" allows float32 rounding: a span of at most 16 ulps of the map's magnitude
    (``max(|min|, |max|)``), the ripple that resizing a constant map in float32 leaves, counts
    as none; the reference, resizing in float64, sees those maps exactly constant. The division
    and the maximum are `minmax_per_map`'s (`_pinned_minmax`).
    """
    cams = cams.astype(jnp.float32)
    lo = jnp.min(cams, axis=(-2, -1), keepdims=True)
    hi = jnp.max(cams, axis=(-2, -1), keepdims=True)
    finite = jnp.all(jnp.isfinite(cams), axis=(-2, -1), keepdims=True)
    return _pinned_minmax(cams, lo, hi, finite & ~_negligible_span(lo, hi), 0.0)


def normalize_max(cams: jax.Array) -> jax.Array:
    """Per-map division by the maximum over the last two axes, negatives clipped to 0.

    The CAM paper's own normalisation (its code thresholds the ReLU'd map at a fraction of its
    maximum), unlike the WSOL protocol's min-max: a map whose minimum is far above 0 keeps that
    floor instead of being stretched to [0, 1]. cams: (..., H, W) float; a map with no positive
    or with a non-finite value becomes all zeros. A positive map constant up to float32
    rounding (as ``normalize_minmax``) becomes exactly all ones, as the constant itself would.
    """
    cams = jnp.maximum(cams.astype(jnp.float32), 0.0)
    lo = jnp.min(cams, axis=(-2, -1), keepdims=True)
    hi = jnp.max(cams, axis=(-2, -1), keepdims=True)
    ok = jnp.all(jnp.isfinite(cams), axis=(-2, -1), keepdims=True) & (hi > 0)
    scaled = jnp.minimum(divide_per_map(cams, jnp.where(ok, hi, 1.0)), 1.0)  # as minmax's
    scaled = jnp.where(_negligible_span(lo, hi) | (cams == hi), 1.0, scaled)
    return jnp.where(ok, scaled, 0.0)


NORMALIZATIONS = {"minmax": normalize_minmax, "max": normalize_max}


def postprocess(
    cams: jax.Array,
    size: tuple[int, int] | None = None,
    *,
    method: str = "bicubic",
    normalize: bool | str = True,
    relu: bool = False,
) -> jax.Array:
    """The usual CAM post-processing, in this order: optional ReLU, resize, normalise.

    cams: (..., h, w) float32. size: (H, W) target, or None to keep h x w. method: 'bicubic'
    (OpenCV INTER_CUBIC, as the WSOL protocol) or 'bilinear' (OpenCV INTER_LINEAR).
    normalize: True or 'minmax' (the WSOL protocol's `normalize_minmax`), 'max' (the CAM
    paper's `normalize_max`) or False.
    Returns (..., H, W) float32 (in [0, 1] if normalized).
    """
    if cams.ndim < 2:
        raise ValueError(f"cams must have shape (..., height, width); got {tuple(cams.shape)}.")
    if normalize is True:
        normalize = "minmax"
    if normalize and normalize not in NORMALIZATIONS:
        raise ValueError(
            f"normalize must be True, False or one of {sorted(NORMALIZATIONS)}; got {normalize!r}."
        )
    if relu:
        cams = jax.nn.relu(cams)
    if size is not None and tuple(size) != tuple(cams.shape[-2:]):
        cams = resize_maps(cams, tuple(size), method=method)
    if normalize:
        cams = NORMALIZATIONS[normalize](cams)
    return cams


def head_kernel(variables: Mapping[str, Any]) -> jax.Array:
    """The classifier kernel (K, C) of a camjax GAP model's variables (the Dense named `head`)."""
    try:
        return variables["params"]["head"]["kernel"]
    except (KeyError, TypeError) as e:
        raise ValueError(
            "variables have no params['head']['kernel']; pass the variables of a camjax GAP model "
            "(its classifier must be the Dense layer named 'head')."
        ) from e


__all__ = [
    "cams_all_classes",
    "class_maps_of",
    "cams_for_classes",
    "cams_top_k",
    "head_kernel",
    "normalize_max",
    "normalize_minmax",
    "postprocess",
]
