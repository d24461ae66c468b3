"""Resizing class activation maps in JAX, matching OpenCV's float32 ``cv2.resize``.

CAMs live on the feature grid (e.g. 14x14) and are upsampled to the input size (e.g. 224x224)
before thresholding. The WSOL evaluation protocol (Choe et al., 2020) does that with
``cv2.resize(cam, (W, H), interpolation=cv2.INTER_CUBIC)``, so box and mask metrics depend on
the exact interpolation. This module reproduces OpenCV's separable resampling as two static
matrices, applied on device with einsums, so resized maps agree with OpenCV to float32 rounding
for upsampling and for downsampling with ``bilinear`` and ``bicubic`` (OpenCV does not
antialias either; neither do we).

What ``cv2.resize`` does on float32 maps, as read in ``modules/imgproc/src/resize.cpp`` and
measured against opencv-python 5.0 (a pip build with IPP), which we copy:

* half-pixel centres: ``src = (dst + 0.5) * scale - 0.5`` with ``scale = 1 / (out / in)``,
  fraction ``f = src - floor(src)`` in float64, weights rounded to float32;
* ``INTER_LINEAR``: taps ``floor(src)`` and ``floor(src) + 1`` with weights ``1 - f, f``; a
  source coordinate left of the first pixel or right of the last is snapped onto that pixel
  (weight 1) rather than extrapolated, which amounts to replicating the border;
* ``INTER_CUBIC``: Keys' kernel with ``a = -0.75`` on the four taps ``floor(src) - 1 ..
  floor(src) + 2``, the last weight ``1 - sum(others)``; taps outside the image are clamped to
  the edge (``BORDER_REPLICATE``), with no snapping, so the cubic may overshoot at the border;
* an exact 2x ``INTER_LINEAR`` downscale is routed to ``INTER_AREA``, which averages 2x2 blocks:
  the same weights (one half each) as the formula above; other integer factors stay linear.

Residual difference: OpenCV's generic (non-IPP) code, which it takes for maps with a side of
1-3 pixels and in builds without IPP, rounds ``src`` to float32 before ``floor``. Its weights
then differ from ours by up to ``|src| * 6e-8``; over a grid of sizes up to 224 the outputs
stayed within 7e-6 of the map's range. Upsampling from CAM-sized maps (7x7, 14x14) agrees to
~1e-7 of the range either way.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("bilinear", "bicubic")

# Keys' cubic convolution parameter used by OpenCV's INTER_CUBIC (PIL and TF use -0.5).
_CUBIC_A = -0.75


def _cubic_weights(f: np.ndarray) -> np.ndarray:
    """OpenCV INTER_CUBIC weights of the taps at offsets -1, 0, 1, 2: f (n,) float64 -> (n, 4)."""
    a = _CUBIC_A
    # Keys' piecewise cubic, written as Horner polynomials on |t| in [0, 1] and [1, 2].
    x = f + 1.0
    w0 = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    w1 = ((a + 2) * f - (a + 3)) * f * f + 1.0
    g = 1.0 - f
    w2 = ((a + 2) * g - (a + 3)) * g * g + 1.0
    # Last weight by complement so the row sums to one exactly, as OpenCV does.
    w3 = 1.0 - w0 - w1 - w2
    return np.stack([w0, w1, w2, w3], axis=-1).astype(np.float32)


@functools.lru_cache(maxsize=128)
def _cached_matrix(in_size: int, out_size: int, method: str) -> np.ndarray:
    dst = np.arange(out_size, dtype=np.float64)
    scale = 1.0 / (out_size / in_size)
    src = (dst + 0.5) * scale - 0.5
    # Fractions and weights in float64, rounded to float32 at the end, as cv2 (IPP build)
    # computes them for maps of realistic size; see the module docstring for tiny maps.
    start = np.floor(src).astype(np.int64)
    frac = src - start

    if method == "bilinear":
        # OpenCV snaps coordinates outside [0, in - 1] onto the edge pixel with weight 1
        # instead of extrapolating.
        left = start < 0
        frac[left], start[left] = 0.0, 0
        right = start >= in_size - 1
        frac[right], start[right] = 0.0, in_size - 1
        frac = frac.astype(np.float32)
        weights = np.stack([np.float32(1.0) - frac, frac], axis=-1)
        offsets = np.arange(2)
    else:
        weights = _cubic_weights(frac)
        offsets = np.arange(-1, 3)

    taps = np.clip(start[:, None] + offsets[None, :], 0, in_size - 1)
    matrix = np.zeros((out_size, in_size), np.float32)
    rows = np.broadcast_to(np.arange(out_size)[:, None], taps.shape)
    # Clamped taps can coincide near the border; their weights add up (replicate border).
    np.add.at(matrix, (rows, taps), weights.astype(np.float32))
    matrix.setflags(write=False)
    return matrix


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"Unknown resize method {method!r}; expected one of {METHODS}.")


def interpolation_matrix(in_size: int, out_size: int, method: str) -> np.ndarray:
    """Returns the 1-D resampling matrix of OpenCV's ``cv2.resize`` along one axis.

    Args:
      in_size: source length, > 0.
      out_size: target length, > 0.
      method: ``'bilinear'`` (``cv2.INTER_LINEAR``) or ``'bicubic'`` (``cv2.INTER_CUBIC``).

    Returns:
      (out_size, in_size) float32, read-only; ``out = matrix @ in`` resamples a 1-D signal. Rows
      sum to 1 (up to float32 rounding). The array is cached: copy it before mutating.
    """
    _check_method(method)
    for name, n in (("in_size", in_size), ("out_size", out_size)):
        if int(n) != n or n <= 0:
            raise ValueError(f"{name} must be a positive integer, got {n!r}.")
    return _cached_matrix(int(in_size), int(out_size), method)


def resize_maps(maps: jax.Array, size: tuple[int, int], method: str = "bicubic") -> jax.Array:
    """Resizes the last two axes of ``maps`` like float32 ``cv2.resize``.

    Equivalent to ``cv2.resize(m, (W, H), interpolation=...)`` on every (h, w) map (mind that
    OpenCV's ``dsize`` is (width, height), while ``size`` here is (height, width)). The matrices
    depend only on static shapes, so they are built once in numpy at trace time and baked into
    the computation; the function is jit- and vmap-friendly.

    Args:
      maps: (..., h, w) real array; any number of leading batch axes. Computed in float32.
      size: (H, W) target height and width, positive integers.
      method: ``'bicubic'`` (``cv2.INTER_CUBIC``, the WSOL protocol's choice) or
        ``'bilinear'`` (``cv2.INTER_LINEAR``).

    Returns:
      (..., H, W) float32. Bicubic overshoots the input range near sharp edges, as in OpenCV.
    """
    _check_method(method)
    maps = jnp.asarray(maps)
    if maps.ndim < 2:
        raise ValueError(f"maps must have rank >= 2 (..., h, w), got shape {maps.shape}.")
    if len(size) != 2:
        raise ValueError(f"size must be (height, width), got {size!r}.")
    out_h, out_w = size
    in_h, in_w = maps.shape[-2:]
    if in_h == 0 or in_w == 0:
        raise ValueError(f"maps must have non-empty spatial axes, got shape {maps.shape}.")
    rows = interpolation_matrix(in_h, out_h, method)
    cols = interpolation_matrix(in_w, out_w, method)
    # HIGHEST: TPU and GPU matmuls default to bf16/tf32 passes, far off OpenCV's float32 result.
    precision = jax.lax.Precision.HIGHEST
    x = maps.astype(jnp.float32)
    # Horizontal pass first, as OpenCV does, so the rounding of the intermediate matches best.
    x = jnp.einsum("...hw,Ww->...hW", x, jnp.asarray(cols), precision=precision)
    return jnp.einsum("Hh,...hW->...HW", jnp.asarray(rows), x, precision=precision)
