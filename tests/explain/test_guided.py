"""Guided ReLUs (BagCAMs' `guided=True`): every `jax.nn.relu` the model computes is guided, and
nothing else is: not a ReLU traced and cached by a transform before BagCAMs, nor anything traced
after it. Each model is checked against its twin without the jit, remat, scan or import."""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.nn import relu as imported_relu

from camjax import explain
from camjax.explain import guided
from tests.explain import user_models

IMAGES = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 16, 16, 3)), jnp.float32)


def numpy_init(model, scale=0.5, seed=0):
    """Random variables drawn in numpy: Flax's initialisers take seconds to compile here."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), IMAGES)
    return jax.tree.map(lambda s: (scale * rng.normal(size=s.shape)).astype(s.dtype), shapes)


def maps(model, variables, method="bag_cams", layer="conv1", **options) -> np.ndarray:
    """Raw (B, 1, h, w) maps of the top class; an NNX model takes variables=None."""
    given = (model,) if variables is None else (model, variables)
    explainer = explain.explainer(
        *given, method=method, layer=layer, size=None, normalize=False, **options
    )
    return np.asarray(explainer(IMAGES).cams)


def mlp(x, w1, w2):
    """A user's ReLU MLP, outside any module."""
    return jax.nn.relu(x @ w1) @ w2


def jitted_mlp() -> Callable:
    """`mlp` under a jax.jit of its own: a new function, so that its trace cache starts empty."""
    return jax.jit(lambda x, w1, w2: mlp(x, w1, w2))


class MLPHead(nn.Module):
    """conv1-ReLU, global average pooling, then the user's `head(features, w1, w2)`."""

    head: Callable = mlp

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x))
        w1 = self.param("w1", nn.initializers.normal(1.0), (8, 16))
        w2 = self.param("w2", nn.initializers.normal(1.0), (16, 5))
        return self.head(x.mean((1, 2)), w1, w2)


def helper_gradient(head: Callable, variables) -> jax.Array:
    """The user's own gradient through `head`, at the shapes the model calls it with."""
    w1, w2 = variables["params"]["w1"], variables["params"]["w2"]
    features = jnp.linspace(-1.0, 1.0, 16).reshape(2, 8)
    return jax.grad(lambda w: head(features, w, w2).sum())(w1)


def test_a_jitted_helper_traced_before_bag_cams_is_guided_and_stays_plain():
    head = jitted_mlp()
    variables = numpy_init(MLPHead())
    before = helper_gradient(head, variables)  # the helper's plain trace, cached first
    guided = maps(MLPHead(head), variables)
    assert np.abs(guided - maps(MLPHead(head), variables, guided=False)).max() > 1e-3
    np.testing.assert_allclose(guided, maps(MLPHead(), variables), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(helper_gradient(head, variables), before)


def test_a_jitted_helper_traced_by_bag_cams_first_keeps_its_own_gradient():
    head = jitted_mlp()
    variables = numpy_init(MLPHead())
    maps(MLPHead(head), variables)  # traces the helper first
    np.testing.assert_allclose(
        helper_gradient(head, variables), helper_gradient(mlp, variables), rtol=1e-6
    )


def assert_nnx_twins_agree(lift: str, methods: tuple[str, ...]):
    """conv2's output is read before the ReLUs of conv2 and conv3, which run under `lift`, in
    the order `methods`: a ReLU cached by the transform, guided or not, fails one of them."""
    variables, _ = user_models.init(user_models.SmallCNN(num_classes=5), size=16, batch=2)
    plain = user_models.nnx_twin(variables)
    lifted = user_models.nnx_twin(variables, lift=lift)
    for method in methods:
        np.testing.assert_allclose(
            maps(lifted, None, method, "conv2"),
            maps(plain, None, method, "conv2"),
            rtol=1e-5,
            atol=1e-7,
            err_msg=method,
        )


def test_an_nnx_jit_body_is_guided_whichever_method_traced_it_first():
    assert_nnx_twins_agree("jit", ("grad_cam", "bag_cams", "grad_cam", "hires_cam"))


class ImportedReLU(nn.Module):
    """conv1 (read)-ReLU, conv2-ReLU, global average pooling, a linear head; the ReLU is
    `nn.relu` looked up at each call ('attribute') or `jax.nn.relu` bound at import."""

    relu: str = "imported"

    @nn.compact
    def __call__(self, x):
        act = nn.relu if self.relu == "attribute" else imported_relu
        x = act(nn.Conv(8, (3, 3), name="conv1")(x))
        x = act(nn.Conv(8, (3, 3), name="conv2")(x))
        return nn.Dense(5, name="head")(x.mean((1, 2)))


def test_a_relu_bound_at_import_is_guided():
    variables = numpy_init(ImportedReLU())
    guided = maps(ImportedReLU(), variables)
    assert np.abs(guided - maps(ImportedReLU(), variables, guided=False)).max() > 1e-3
    np.testing.assert_array_equal(guided, maps(ImportedReLU("attribute"), variables))


class Unrolled(nn.Module):
    """user_models.Lifted('scan') with its two scanned blocks written out."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="stem")(x))
        for i in range(2):
            x, _ = user_models.ConvBlock(name=f"block{i}")(x)
        return nn.Dense(5, name="head")(jnp.mean(x, axis=(1, 2)))


def test_relus_under_scan_and_remat_are_guided_like_their_unrolled_twins():
    """The stem's conv is read before the stem's ReLU and the blocks' ones."""
    scan = user_models.Lifted("scan")
    variables = numpy_init(scan)
    params = dict(variables["params"])
    stacked = params.pop("block")
    for i in (0, 1):
        params[f"block{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
    expected = maps(Unrolled(), {"params": params}, layer="stem")
    unguided = maps(Unrolled(), {"params": params}, layer="stem", guided=False)
    assert np.abs(expected - unguided).max() > 1e-3
    np.testing.assert_allclose(maps(scan, variables, layer="stem"), expected, rtol=1e-5)

    remat, plain = user_models.Lifted("remat"), user_models.Lifted("plain")
    variables = numpy_init(plain)
    maps(remat, variables, "hires_cam", layer="stem")  # the remat body traced plain first
    np.testing.assert_allclose(
        maps(remat, variables, layer="stem"), maps(plain, variables, layer="stem"), rtol=1e-5
    )
    assert_nnx_twins_agree("remat", ("grad_cam", "bag_cams", "grad_cam"))


def test_guided_relus_reaches_cond_and_while_and_leaves_maximum_alone():
    """fn under `guided_relus` is fn written with `guided_relu`, values and gradient; its
    `jnp.maximum(x, 0)` (a norm layer's clamp, say) keeps its own gradient."""
    w = jnp.asarray(np.random.default_rng(2).normal(size=(6, 6)), jnp.float32)

    def fn(x, relu=jax.nn.relu):
        y = jax.lax.cond(x.sum() < 1, lambda v: relu(v @ w), lambda v: -v, x)
        # reverse mode cannot enter a while loop: its ReLUs are reached, on a constant
        init = (jax.lax.stop_gradient(x), 0)
        z, _ = jax.lax.while_loop(lambda c: c[1] < 2, lambda c: (relu(c[0] @ w), c[1] + 1), init)
        return (relu(y @ w) * jnp.maximum(x @ w, 0)).sum() + z.sum()

    x = jnp.linspace(-1.0, 1.0, 6)
    guided_fn = guided.guided_relus(fn)
    np.testing.assert_array_equal(guided_fn(x), fn(x, guided.guided_relu))
    np.testing.assert_array_equal(jax.grad(guided_fn)(x), jax.grad(fn)(x, guided.guided_relu))
    assert np.abs(jax.grad(guided_fn)(x) - jax.grad(fn)(x)).max() > 1e-3


def test_guided_relu_passes_back_positive_gradients_at_positive_inputs_only():
    """Its value is the ReLU's; its backward pass is 1[x > 0] max(g, 0), x = 0 included (as
    `jax.nn.relu`'s gradient at 0), by hand for every sign of x and g."""
    x = jnp.array([-1.0, 0.0, 2.0, -1.0, 0.0, 2.0])
    g = jnp.array([3.0, 3.0, 3.0, -2.0, -2.0, -2.0])
    value, vjp = jax.vjp(guided.guided_relu, x)
    np.testing.assert_array_equal(value, [0.0, 0.0, 2.0, 0.0, 0.0, 2.0])
    np.testing.assert_array_equal(vjp(g)[0], [0.0, 0.0, 3.0, 0.0, 0.0, 0.0])


def test_a_reversed_scan_is_guided_in_its_own_order():
    """A scan run backwards (reverse=True) is evaluated backwards: its value and guided
    gradient are those of the same scan written with `guided_relu`, not of the forward one."""
    w = jnp.asarray(np.random.default_rng(3).normal(size=(4, 4)), jnp.float32)
    xs = jnp.asarray(np.random.default_rng(4).normal(size=(3, 4)), jnp.float32)

    def fn(c, relu=jax.nn.relu, reverse=True):
        c, ys = jax.lax.scan(lambda c, x: (relu(c @ w + x), c.sum()), c, xs, reverse=reverse)
        return c.sum() + (ys * jnp.arange(3.0)).sum()

    c = jnp.linspace(-1.0, 1.0, 4)
    guided_fn = guided.guided_relus(fn)
    want = fn(c, guided.guided_relu)
    np.testing.assert_allclose(guided_fn(c), want, rtol=1e-6)
    assert abs(float(fn(c, guided.guided_relu, reverse=False) - want)) > 1e-3  # order matters
    np.testing.assert_allclose(
        jax.grad(guided_fn)(c), jax.grad(fn)(c, guided.guided_relu), rtol=1e-6
    )
