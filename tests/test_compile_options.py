"""camjax.compile_options: Eigen kernels for top-level CPU programs on jaxlib 0.10, and the
explainer's use of them outside a user's trace only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax import compile_options, explain
from tests.explain import user_models

EIGEN = {"xla_cpu_experimental_ynn_fusion_type": ""}


def test_the_options_are_eigen_kernels_on_jaxlib_0_10s_cpu_only(monkeypatch):
    monkeypatch.setattr(compile_options, "_jaxlib_below", lambda major, minor: True)
    assert compile_options.cpu_compiler_options() == EIGEN
    monkeypatch.setattr(compile_options.jax, "default_backend", lambda: "gpu")
    assert compile_options.cpu_compiler_options() is None
    monkeypatch.setattr(compile_options.jax, "default_backend", lambda: "cpu")
    monkeypatch.setattr(compile_options, "_jaxlib_below", lambda major, minor: False)
    assert compile_options.cpu_compiler_options() is None


@pytest.mark.skipif(
    compile_options.cpu_compiler_options() is None, reason="XLA's defaults here (not jaxlib 0.10)"
)
def test_the_options_turn_the_ynnpack_fusions_off():
    """What the module says the option does, on this jaxlib: a convolution that runs as a
    YNNPACK fusion otherwise runs as XLA's convolution (Eigen), equal to float32 rounding."""
    x = jax.random.normal(jax.random.key(0), (2, 12, 12, 32))  # YNNPACK takes 32 channels, not 8
    w = jax.random.normal(jax.random.key(1), (3, 3, 32, 32))

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    # YNNPACK's convolution asked for by name: the session's XLA_FLAGS turn it off
    # (tests/xla_flags.py).
    ynn = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}
    ynnpack = jax.jit(conv, compiler_options=ynn).lower(x, w).compile()
    eigen = (
        jax.jit(conv, compiler_options=compile_options.cpu_compiler_options()).lower(x, w).compile()
    )
    assert "ynn_fusion" in ynnpack.as_text() and "ynn_fusion" not in eigen.as_text()
    expected = np.asarray(ynnpack(x, w))  # sums of 288 products: rounding relative to the peak
    np.testing.assert_allclose(eigen(x, w), expected, atol=1e-6 * np.abs(expected).max())


def test_the_explainer_compiles_with_the_options_outside_a_trace_only(monkeypatch):
    """A top-level call compiles with `cpu_compiler_options`; inside a user's jit (where jax
    refuses a nested jit's options) the same explainer runs its plain jit, also when no
    argument is a tracer (arrays the jitted function closed over, a key made outside)."""
    model = user_models.SmallCNN(num_classes=5)
    variables, images = user_models.init(model, size=16, batch=2)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(
                compile_options, "cpu_compiler_options", lambda: {"xla_no_such_option": "1"}
            )
            explain._compiled.cache_clear()  # compiled again, with the patched options
            f = explain.explainer(model, variables, "grad_cam", layer="conv3")
            with pytest.raises(jax.errors.JaxRuntimeError, match="xla_no_such_option"):
                f(images)
            inside = jax.jit(lambda x: f(x).cams)(images)
            batched = jax.vmap(lambda x: f(x[None]).cams[0])(images)  # vmap's tracers too
            key = jax.random.key(1)  # grad_cam draws nothing: any key gives the same maps
            closed_over = jax.jit(lambda: f(images, key=key).cams)()
    finally:
        explain._compiled.cache_clear()  # no explainer compiled with the patch stays cached
    f = explain.explainer(model, variables, "grad_cam", layer="conv3")
    top_level = f(images).cams
    assert jnp.isfinite(top_level).all()
    device_images, key = jnp.asarray(images), jax.random.key(0)
    with jax.transfer_guard("disallow"):  # asking whether jax is staging moves nothing
        np.testing.assert_array_equal(f(device_images, key=key).cams, top_level)
    np.testing.assert_allclose(inside, top_level, atol=1e-6)
    np.testing.assert_allclose(batched, top_level, atol=1e-6)
    np.testing.assert_allclose(closed_over, top_level, atol=1e-6)
