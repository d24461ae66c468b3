"""Class activation maps: pure, batched, jittable functions of a feature map and the head's weights.

For a GAP network `logit_c = mean_xy(f(x, y)) . w_c + b_c`, the CAM of class c is
`M_c(x, y) = f(x, y) . w_c`, so `mean_xy M_c + b_c == logit_c` exactly (tests check it).

Layout: feature maps are `(B, h, w, K)` (NHWC, as the models return them), the head kernel is
`(K, C)` (Flax Dense layout), CAMs are `(B, n, h, w)` for n classes per image, or `(B, n, H, W)`
after `postprocess`. Everything stays on device; one trace per input shape.
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


def _check_classes(classes: jax.Array, batch: int, num_classes: int) -> jax.Array:
    classes = jnp.asarray(classes)
    if not jnp.issubdtype(classes.dtype, jnp.integer):
        raise ValueError(f"class indices must be integers; got dtype {classes.dtype}.")
    if classes.ndim not in (1, 2) or classes.shape[0] != batch:
        raise ValueError(
            f"class indices must have shape ({batch},) or ({batch}, n) for a batch of {batch} "
            f"feature maps; got shape {tuple(classes.shape)}."
        )
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


def normalize_minmax(cams: jax.Array) -> jax.Array:
    """Per-map min-max normalisation over the last two axes to [0, 1].

    cams: (..., H, W) float. A constant map, or one with any non-finite value, becomes all zeros
    (the WSOL protocol's convention), so a degenerate map never yields NaN boxes or scores.
    "Constant" allows float32 rounding: a span of at most 16 ulps of the map's magnitude
    (``max(|min|, |max|)``), the ripple that resizing a constant map in float32 leaves, counts
    as none; the reference, resizing in float64, sees those maps exactly constant.
    """
    cams = cams.astype(jnp.float32)
    lo = jnp.min(cams, axis=(-2, -1), keepdims=True)
    hi = jnp.max(cams, axis=(-2, -1), keepdims=True)
    span = hi - lo
    finite = jnp.all(jnp.isfinite(cams), axis=(-2, -1), keepdims=True)
    ok = finite & ~_negligible_span(lo, hi)
    return jnp.where(ok, (cams - lo) / jnp.where(ok, span, 1.0), 0.0)


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
    scaled = jnp.where(_negligible_span(lo, hi), 1.0, cams / jnp.where(ok, hi, 1.0))
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


class CamOutput(NamedTuple):
    """What a `cam_fn` function returns; all device arrays.

    logits: (B, C) float32; classes: (B, n) int32, the class of each CAM;
    cams: (B, n, H, W) float32.
    """

    logits: jax.Array
    classes: jax.Array
    cams: jax.Array


def head_kernel(variables: Mapping[str, Any]) -> jax.Array:
    """The classifier kernel (K, C) of a camjax GAP model's variables (the Dense named `head`)."""
    try:
        return variables["params"]["head"]["kernel"]
    except (KeyError, TypeError) as e:
        raise ValueError(
            "variables have no params['head']['kernel']; pass the variables of a camjax GAP model "
            "(its classifier must be the Dense layer named 'head')."
        ) from e


def _check_images(images: Any) -> None:
    """What camjax's models take: a float (B, H, W, 3) array, normalised as in training."""
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
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"images must have shape (batch, height, width, 3); got {tuple(images.shape)}."
        )


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
    """One compiled `images -> CamOutput` function: forward pass and CAMs in one XLA program.

    model/variables: a camjax GAP model and its variables. The returned `f(images, classes=None)`
    takes images (B, H, W, 3) float (normalised as the model was trained) and optional int classes
    (B,) or (B, n). Without classes it returns the CAMs of the `top_k` predicted classes, best
    first, or of every class in class order when `top_k` is None. `size`: 'input' upsamples to
    (H, W), a (H', W') tuple to that size, None keeps the feature-map size. `normalize` and
    `relu` as in `postprocess`.

    Memory: the output holds B x n x H x W float32 maps. With `top_k=None` that is every class:
    1,000 classes at 224 x 224 are 200 MB per image of output (about twice that at the peak, with
    the resize's intermediates). To bound it, take `size=None` (1,000 maps of 14 x 14 are 0.8 MB
    per image) and `postprocess` only the maps needed, or pass `classes` in chunks.

    Under a caller's jit, where class indices cannot be checked without a host round trip, an
    out-of-range class comes back as class -1 with a CAM of NaN (clamp and flag), never as a
    plausible map.
    """
    kernel = head_kernel(variables)
    num_classes = kernel.shape[1]
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_classes
    ):
        raise ValueError(f"top_k must be an int in [1, {num_classes}] or None; got {top_k!r}.")

    @jax.jit
    def run(variables, images, classes):
        logits, outputs = model.apply(variables, images, train=False)
        fmap = outputs["feature_map"]
        k = head_kernel(variables)
        if classes is not None:
            chosen = classes if classes.ndim == 2 else classes[:, None]
            cams = _cams_for_classes(fmap, k, chosen)
        elif top_k is None:
            chosen = jnp.broadcast_to(jnp.arange(num_classes, dtype=jnp.int32), logits.shape)
            cams = cams_all_classes(fmap, k)
        else:
            cams, chosen = cams_top_k(fmap, k, logits, top_k)
        target = images.shape[1:3] if size == "input" else size
        cams = postprocess(cams, target, method=method, normalize=normalize, relu=relu)
        # Normalisation zeroes a NaN map: flag out-of-range classes again after it.
        valid = valid_classes(chosen, num_classes)
        cams = jnp.where(valid[..., None, None], cams, jnp.nan)
        return CamOutput(logits, jnp.where(valid, chosen, -1).astype(jnp.int32), cams)

    def f(images: jax.Array, classes: jax.Array | None = None) -> CamOutput:
        _check_images(images)
        if classes is not None and not hasattr(classes, "shape"):
            classes = np.asarray(classes)
        if classes is not None:
            classes = _check_classes(classes, images.shape[0], num_classes)
        return run(variables, images, classes)

    return f


__all__ = [
    "CamOutput",
    "cam_fn",
    "cams_all_classes",
    "cams_for_classes",
    "cams_top_k",
    "head_kernel",
    "normalize_max",
    "normalize_minmax",
    "postprocess",
]
