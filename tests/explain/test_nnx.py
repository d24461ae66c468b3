"""Flax NNX models: the explainer takes them as they are, with their own state as variables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from camjax import explain
from camjax.explain import probe
from tests.explain import user_models

# One method per way a probe reaches its layer: read with a gradient (grad_cam), read (the score
# family), replaced (ablation_cam), two layers (layer_cam), the classifier's kernel from the NNX
# state (cam), and nnx.relu evaluated as the guided ReLU (bag_cams).
METHODS = {
    "grad_cam": {},
    "score_cam": {},
    "ablation_cam": {},
    "layer_cam": {"layer": ("conv2", "conv3")},
    "cam": {"head": "classifier"},
    "bag_cams": {},
}


@pytest.fixture(scope="module")
def linen_and_nnx():
    linen = user_models.SmallCNN(num_classes=5)
    variables, images = user_models.init(linen, size=16, batch=3)
    return linen, variables, user_models.nnx_twin(variables), images


@pytest.mark.parametrize("method", sorted(METHODS))
def test_an_nnx_model_gives_its_linen_twins_maps(method, linen_and_nnx):
    linen, variables, model, images = linen_and_nnx
    options = dict(METHODS[method])
    layer = options.pop("layer", "conv3")
    ours = explain.explainer(model, method=method, layer=layer, top_k=2, **options)(images)
    twin = explain.explainer(linen, variables, method, layer=layer, top_k=2, **options)(images)
    assert float(jnp.ptp(twin.cams)) > 0.5
    np.testing.assert_array_equal(ours.classes, twin.classes)
    np.testing.assert_allclose(ours.cams, twin.cams, atol=1e-6)


@pytest.mark.parametrize(
    "method, layer", [("grad_cam", "0"), ("score_cam", "1"), ("eigen_cam", "1/norm1")]
)
def test_an_nnx_vision_transformer_gives_its_linen_twins_token_maps(method, layer):
    """Token layers (B, 1 + h w, D) on the patch grid, class token dropped, as for linen. The
    two attention implementations sum in other orders: over every method at these layers the
    maps agree to 3.8e-6 at most, where they are not blank or rounding noise in both (the last
    block's gradients; HiResCAM before a LayerNorm, whose input's scale the logits ignore)."""
    linen = user_models.TinyViT()
    variables, images = user_models.init(linen, size=16, batch=3)
    model = user_models.nnx_vit_twin(variables)
    ours = explain.explainer(model, method=method, layer=f"blocks/{layer}")(images).cams
    twin = explain.explainer(linen, variables, method, layer=f"block{layer}")(images).cams
    assert ours.shape == (3, 1, 16, 16) and float(jnp.ptp(twin)) > 0.5
    np.testing.assert_allclose(ours, twin, atol=5e-5)


@pytest.mark.parametrize("lift", ["remat", "jit"])
def test_layers_under_nnx_transforms_are_read_and_the_users_model_is_untouched(lift, linen_and_nnx):
    _, variables, plain, images = linen_and_nnx
    model = user_models.nnx_twin(variables, lift=lift)
    for method in ("grad_cam", "ablation_cam"):
        maps = [
            explain.explainer(m, method=method, layer="conv2")(images).cams for m in (plain, model)
        ]
        np.testing.assert_allclose(maps[1], maps[0], atol=1e-6, err_msg=method)
    assert type(model.conv2) is nnx.Conv and not hasattr(model.conv2, "camjax_probe")
    np.testing.assert_array_equal(model.conv2.kernel[...], variables["params"]["conv2"]["kernel"])


def test_other_weights_reuse_the_compiled_function_and_maps_are_per_sample(linen_and_nnx):
    _, variables, model, images = linen_and_nnx
    traces = []

    class Counting(user_models.NNXCNN):
        def __call__(self, x):
            traces.append(1)  # runs while tracing only
            return super().__call__(x)

    counting = user_models.nnx_twin(variables, Counting)
    f = explain.explainer(counting, method="grad_cam", layer="conv3")
    out = f(images)
    n = len(traces)
    assert n > 0
    changed = f(images.at[2].set(0.5))
    np.testing.assert_allclose(changed.cams[:2], out.cams[:2], atol=1e-6)
    other = user_models.nnx_twin(jax.tree.map(lambda p: -p, variables), Counting)
    negated = explain.explainer(other, method="grad_cam", layer="conv3")(images)
    assert len(traces) == n, "another instance of the same architecture must not retrace"
    assert not np.allclose(negated.cams, out.cams)
    given = explain.explainer(counting, nnx.state(other), "grad_cam", layer="conv3")(images)
    np.testing.assert_array_equal(given.cams, negated.cams)
    assert len(traces) == n
    # variables=None reads the model's own state at every call: an in-place update shows.
    counting.conv3.kernel[...] = -counting.conv3.kernel[...]
    counting.classifier.kernel[...] = -counting.classifier.kernel[...]
    assert not np.allclose(f(images).cams, out.cams)
    # A new trace (another image size) makes no new tapped class: NNX keeps each for good.
    classes = probe._tapped.cache_info().currsize
    subclasses = set(nnx.Conv.__subclasses__())
    f(images[:, :12, :12])
    assert len(traces) > n and probe._tapped.cache_info().currsize == classes
    assert set(nnx.Conv.__subclasses__()) <= subclasses


class FrozenBlock(nnx.Module):
    """A convolution that refuses new attributes after construction."""

    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.frozen = True

    def __setattr__(self, name, value):
        if getattr(self, "frozen", False) and not name.startswith("__"):
            raise AttributeError(f"FrozenBlock takes no new attribute {name}")
        super().__setattr__(name, value)

    def __call__(self, x):
        return nnx.relu(self.conv(x))


class WithFrozenBlock(nnx.Module):
    def __init__(self, rngs):
        self.block = FrozenBlock(rngs)
        self.drop = nnx.Dropout(0.0, rngs=rngs)  # drops nothing, in any mode
        self.head = nnx.Linear(8, 5, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.mean(self.drop(self.block(x)), axis=(1, 2)))


def test_a_module_refusing_new_attributes_and_a_dropout_of_rate_0(linen_and_nnx):
    """The probe's inputs are set past the probed module's own __setattr__; a Dropout that
    drops nothing is no reason to ask for model.eval()."""
    images = linen_and_nnx[3]
    model = WithFrozenBlock(nnx.Rngs(0))
    for method in ("grad_cam", "ablation_cam"):
        out = explain.explainer(model, method=method, layer="block")(images)
        assert float(jnp.ptp(out.cams)) > 0.5


class Block(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x):
        return x + nnx.relu(self.fc(x))


class Unusual(nnx.Module):
    """Batch norm (training mode until .eval()), an unused layer, a classifier in an nnx.List,
    a module used through another method, and two blocks scanned over (Flax's scan over layers:
    nnx.vmap to create them, nnx.scan to run them)."""

    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.norm = nnx.BatchNorm(4, rngs=rngs)
        self.unused = nnx.Conv(4, 4, (1, 1), rngs=rngs)
        self.pool = Pool()
        self.blocks = nnx.split_rngs(splits=2)(nnx.vmap(Block, in_axes=(0,), out_axes=0))(rngs)
        self.heads = nnx.List([nnx.Linear(4, 5, rngs=rngs)])

    def __call__(self, x):
        x = nnx.relu(self.norm(self.conv(x)))
        x = nnx.scan(lambda x, block: block(x), in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(
            x, self.blocks
        )
        return self.heads[0](self.pool.average(x))


class Pool(nnx.Module):
    def average(self, x):
        return jnp.mean(x, axis=(1, 2))


def test_nnx_mistakes_are_one_line_errors(linen_and_nnx):
    _, variables, model, images = linen_and_nnx
    with pytest.raises(ValueError, match=r"no module at path 'conv9'.*classifier, conv1, conv2"):
        explain.explainer(model, layer="conv9")(images)
    with pytest.raises(ValueError, match=r"NNX model are its whole state.*got dict"):
        explain.explainer(model, variables, layer="conv3")
    with pytest.raises(ValueError, match=r"model must be a Flax module .*got function"):
        explain.explainer(lambda x: x, variables, layer="conv3")

    unusual = Unusual(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"training mode \(BatchNorm 'norm' has use_running_av"):
        explain.explainer(unusual, layer="conv")
    unusual.eval()
    with pytest.raises(ValueError, match=r"not only its Params.*got a state of another struct"):
        explain.explainer(unusual, nnx.state(unusual, nnx.Param), layer="conv")
    for layer, message in [
        ("unused", "layer 'unused' of Unusual is not called through __call__"),
        ("pool", "layer 'pool' of Unusual is not called through __call__"),
        # The scan stacks the blocks' outputs: read as one layer, wrong maps or JAX errors.
        ("blocks/fc", "layer 'blocks/fc' of Unusual runs inside a lifted transform"),
    ]:
        for method in ("grad_cam", "score_cam"):
            with pytest.raises(ValueError, match=message):
                explain.explainer(unusual, method=method, layer=layer)(images)
    out = explain.explainer(unusual, method="cam", layer="norm", head="heads/0")(images)
    assert out.cams.shape == (3, 1, 16, 16) and np.isfinite(np.asarray(out.cams)).all()


class VmappedBlock(nnx.Module):
    """FrozenBlock's convolution run image by image under nnx.vmap, its state broadcast."""

    def __init__(self, rngs):
        self.block = FrozenBlock(rngs)
        self.head = nnx.Linear(8, 5, rngs=rngs)

    def __call__(self, x):
        y = nnx.vmap(lambda block, x: block(x[None])[0], in_axes=(None, 0))(self.block, x)
        return self.head(jnp.mean(y, axis=(1, 2)))


def test_a_layer_under_an_nnx_vmap_is_a_one_line_error(linen_and_nnx):
    """The vmap refuses the probe's sown output of a broadcast module (JAX: "at vmap out_axes
    ... camjax_probe"): the layers called under it are named, as for linen's nn.vmap."""
    images = linen_and_nnx[3]
    model = VmappedBlock(nnx.Rngs(0))
    assert model(images).shape == (3, 5)  # it runs without the probe
    for layer in ("block", "block/conv"):
        with pytest.raises(ValueError, match=f"'{layer}' of VmappedBlock runs inside a lifted"):
            explain.explainer(model, method="grad_cam", layer=layer)(images)
