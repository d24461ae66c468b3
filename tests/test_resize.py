"""Tests for camjax.resize: agreement with float32 cv2.resize and an independent formula."""

import functools

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax.resize import interpolation_matrix, resize_maps

CV2_FLAGS = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}

# ((h, w), (H, W)): CAM upsampling first (the must-have), then odd sizes and downsampling.
SIZE_PAIRS = [
    ((14, 14), (224, 224)),
    ((7, 7), (224, 224)),
    ((4, 4), (64, 64)),
    ((6, 6), (96, 96)),
    ((3, 3), (5, 5)),
    ((1, 1), (8, 8)),
    ((14, 10), (224, 160)),
    ((10, 14), (33, 17)),
    ((5, 9), (5, 23)),
    ((224, 224), (112, 112)),
    ((224, 224), (14, 14)),
    ((64, 48), (21, 30)),
]


@functools.cache
def _jitted_resize(size: tuple[int, int], method: str):
    return jax.jit(functools.partial(resize_maps, size=size, method=method))


def _scale(x: np.ndarray) -> float:
    """The map's magnitude that errors are measured against (its range, or |max| if flat)."""
    return float(max(np.ptp(x), np.abs(x).max(), np.finfo(np.float32).tiny))


def _keys_cubic(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution kernel, written directly from the piecewise definition."""
    t = np.abs(t)
    near = (a + 2) * t**3 - (a + 3) * t**2 + 1
    far = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _reference_resize(x: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """Per-pixel float64 resize: half-pixel centres, replicate border, no antialiasing."""
    h, w = x.shape
    out_h, out_w = size
    out = np.zeros(size)
    for oy in range(out_h):
        for ox in range(out_w):
            sy = (oy + 0.5) * h / out_h - 0.5
            sx = (ox + 0.5) * w / out_w - 0.5
            if method == "bilinear":
                # OpenCV snaps coordinates outside the pixel centres onto the edge pixel.
                sy = min(max(sy, 0.0), h - 1.0)
                sx = min(max(sx, 0.0), w - 1.0)
                iy = np.arange(int(np.floor(sy)), int(np.floor(sy)) + 2)
                ix = np.arange(int(np.floor(sx)), int(np.floor(sx)) + 2)
                wy = np.maximum(0.0, 1.0 - np.abs(sy - iy))
                wx = np.maximum(0.0, 1.0 - np.abs(sx - ix))
            else:
                iy = np.arange(int(np.floor(sy)) - 1, int(np.floor(sy)) + 3)
                ix = np.arange(int(np.floor(sx)) - 1, int(np.floor(sx)) + 3)
                wy = _keys_cubic(sy - iy)
                wx = _keys_cubic(sx - ix)
            patch = x[np.clip(iy, 0, h - 1)][:, np.clip(ix, 0, w - 1)]
            out[oy, ox] = wy @ patch @ wx
    return out


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("in_size", "out_size"), SIZE_PAIRS)
def test_matches_cv2_resize(in_size, out_size, method):
    rng = np.random.default_rng(sum(in_size) + 7 * sum(out_size))
    x = rng.standard_normal(in_size).astype(np.float32)
    # cv2's dsize is (width, height).
    expected = cv2.resize(x, out_size[::-1], interpolation=CV2_FLAGS[method])
    got = np.asarray(_jitted_resize(out_size, method)(x))
    assert got.shape == out_size and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * _scale(x))


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("in_size", [(14, 14), (7, 7)])
def test_matches_cv2_on_large_dynamic_range(in_size, method):
    rng = np.random.default_rng(1)
    # A peaky map spanning twelve orders of magnitude, like an unnormalised ReLU CAM.
    x = np.exp(rng.uniform(-14, 14, in_size)).astype(np.float32)
    expected = cv2.resize(x, (224, 224), interpolation=CV2_FLAGS[method])
    got = np.asarray(_jitted_resize((224, 224), method)(x))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * _scale(x))
    # The bulk of the pixels is small; they must not be swamped by the peak's rounding.
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7 * _scale(x))


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("in_size", "out_size"), [((7, 7), (30, 30)), ((3, 5), (11, 4))])
def test_matches_per_pixel_formula(in_size, out_size, method):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(in_size).astype(np.float32)
    reference = _reference_resize(x.astype(np.float64), out_size, method)
    got = np.asarray(_jitted_resize(out_size, method)(x))
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-5 * _scale(x))
    expected_cv2 = cv2.resize(x, out_size[::-1], interpolation=CV2_FLAGS[method])
    np.testing.assert_allclose(expected_cv2, reference, rtol=0, atol=1e-5 * _scale(x))


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("in_size", "out_size"), [(1, 8), (3, 5), (14, 224), (224, 14), (8, 8)])
def test_interpolation_matrix(in_size, out_size, method):
    matrix = interpolation_matrix(in_size, out_size, method)
    assert matrix.shape == (out_size, in_size)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-6)
    # One axis at a time is cv2.resize along the rows of a 16-column image. OpenCV builds
    # without IPP round the source coordinate (|src| < in_size) to float32, hence the slack.
    eye = np.repeat(np.eye(in_size, dtype=np.float32)[:, :, None], 16, axis=2)
    columns = np.stack(
        [cv2.resize(e, (16, out_size), interpolation=CV2_FLAGS[method])[:, 0] for e in eye],
        axis=1,
    )
    np.testing.assert_allclose(matrix, columns, rtol=0, atol=1e-7 * max(in_size, 8))
    if in_size == out_size:
        np.testing.assert_array_equal(matrix, np.eye(in_size))


def test_bicubic_overshoots_like_cv2():
    x = np.zeros((6, 6), np.float32)
    x[:, 3:] = 1.0
    got = np.asarray(_jitted_resize((24, 24), "bicubic")(x))
    assert got.min() < 0 and got.max() > 1  # Keys' kernel rings at a step edge.
    expected = cv2.resize(x, (24, 24), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_batched_under_jit_and_vmap_equals_per_map():
    rng = np.random.default_rng(3)
    maps = rng.standard_normal((2, 3, 14, 10)).astype(np.float32)
    resize = _jitted_resize((56, 40), "bicubic")
    batched = np.asarray(resize(maps))
    vmapped = np.asarray(jax.jit(jax.vmap(jax.vmap(resize)))(maps))
    assert batched.shape == (2, 3, 56, 40)
    for i in range(2):
        for j in range(3):
            single = np.asarray(resize(maps[i, j]))
            np.testing.assert_allclose(batched[i, j], single, rtol=0, atol=1e-6)
            np.testing.assert_allclose(vmapped[i, j], single, rtol=0, atol=1e-6)


def test_traces_once_per_shape():
    traces = []

    @jax.jit
    def resize(maps):
        traces.append(maps.shape)  # Runs only when jax traces.
        return resize_maps(maps, (28, 28))

    rng = np.random.default_rng(4)
    for _ in range(3):
        resize(jnp.asarray(rng.standard_normal((2, 7, 7)), jnp.float32))
    assert len(traces) == 1
    resize(jnp.zeros((3, 7, 7), jnp.float32))
    assert len(traces) == 2


def test_non_float_input_is_computed_in_float32():
    x = np.arange(16, dtype=np.int32).reshape(4, 4)
    got = _jitted_resize((8, 8), "bilinear")(x)
    assert got.dtype == jnp.float32
    expected = cv2.resize(x.astype(np.float32), (8, 8), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("maps", "size", "method", "match"),
    [
        (np.zeros((5,)), (4, 4), "bicubic", "rank >= 2"),
        (np.zeros(()), (4, 4), "bicubic", "rank >= 2"),
        (np.zeros((3, 3)), (0, 4), "bicubic", "out_size must be a positive integer"),
        (np.zeros((3, 3)), (4, -2), "bilinear", "out_size must be a positive integer"),
        (np.zeros((3, 3)), (4,), "bilinear", r"size must be \(height, width\)"),
        (np.zeros((0, 3)), (4, 4), "bilinear", "non-empty spatial axes"),
        (np.zeros((3, 3)), (4, 4), "nearest", r"expected one of \('bilinear', 'bicubic'\)"),
    ],
)
def test_bad_inputs_raise(maps, size, method, match):
    with pytest.raises(ValueError, match=match):
        resize_maps(maps, size, method)


def test_interpolation_matrix_bad_inputs_raise():
    with pytest.raises(ValueError, match="in_size"):
        interpolation_matrix(0, 4, "bicubic")
    with pytest.raises(ValueError, match="out_size"):
        interpolation_matrix(4, 2.5, "bicubic")
    with pytest.raises(ValueError, match="lanczos"):
        interpolation_matrix(4, 4, "lanczos")
