"""Flax NNX models: the explainer takes them as they are, with their own state as variables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from camjax import explain
from tests.explain import user_models

# One method per way a probe reaches its layer: read with a gradient (grad_cam), read (the score
# family), replaced (ablation_cam), two layers (layer_cam), the classifier's kernel from the NNX
# state (cam), and nnx.relu swapped for the guided ReLU (bag_cams).
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


def test_nnx_mistakes_are_one_line_errors(linen_and_nnx):
    _, variables, model, images = linen_and_nnx
    with pytest.raises(ValueError, match=r"no module at path 'conv9'.*classifier, conv1, conv2"):
        explain.explainer(model, layer="conv9")(images)
    with pytest.raises(ValueError, match=r"variables of an NNX model are its state.*got a dict"):
        explain.explainer(model, variables, layer="conv3")
    with pytest.raises(ValueError, match=r"model must be a Flax module .*got function"):
        explain.explainer(lambda x: x, variables, layer="conv3")

    class Training(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
            self.norm = nnx.BatchNorm(4, rngs=rngs)
            self.unused = nnx.Conv(4, 4, (1, 1), rngs=rngs)
            self.head = nnx.Linear(4, 5, rngs=rngs)

        def __call__(self, x):
            return self.head(self.norm(self.conv(x)).mean((1, 2)))

    training = Training(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"training mode \(BatchNorm 'norm' has use_running_av"):
        explain.explainer(training, layer="conv")
    training.eval()
    with pytest.raises(ValueError, match="layer 'unused' of Training is not called"):
        explain.explainer(training, layer="unused")(images)
    assert explain.explainer(training, layer="conv")(images).cams.shape == (3, 1, 16, 16)
