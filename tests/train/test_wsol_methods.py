"""The WSOL training methods (issue 14): each switch's transform, loss and layer, against the
reference's definitions, and each method's training resuming bit-identically."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from camjax import experiment
from camjax.models.layers import ADL
from camjax.train import loop, optim, wsol_methods
from camjax.train import state as train_state
from tests.train.test_loop import assert_resume_from_step_ends_equal, tiny_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def test_hide_and_seek_hides_whole_cells_at_the_drop_rate():
    images = jnp.ones((64, 30, 30, 3))  # 30 = 7 cells of 4 px and one cut to 2 px
    hidden = np.asarray(wsol_methods.hide_and_seek(images, jax.random.key(0), 4, 0.5))
    cells = hidden[..., 0].reshape(64, 30, 30)
    for y in range(0, 30, 4):
        for x in range(0, 30, 4):
            block = cells[:, y : y + 4, x : x + 4].reshape(64, -1)
            assert np.all(block == block[:, :1]), "a cell is hidden whole or not at all"
    assert 0.45 < float((hidden == 0).mean()) < 0.55
    kept = wsol_methods.hide_and_seek(images, jax.random.key(0), 4, 0.0)
    np.testing.assert_array_equal(kept, images)
    # Non-square: cells tile the whole image (the reference's loops cover less of it).
    wide = np.asarray(
        wsol_methods.hide_and_seek(jnp.ones((256, 8, 12, 1)), jax.random.key(1), 4, 0.5)
    )
    assert 0.45 < float((wide == 0).mean()) < 0.55
    method = tiny_config("unused").method
    method.name, method.has_grid_size = "has", 0
    with pytest.raises(ValueError, match="has_grid_size must be >= 1 pixel"):
        wsol_methods.check_method(method)


def test_cutmix_lambda_is_the_clipped_box_area_and_the_loss_mixes_labels():
    b, h, w = 8, 20, 24
    images = jnp.broadcast_to(jnp.arange(b, dtype=jnp.float32)[:, None, None, None], (b, h, w, 3))
    labels = np.arange(b) % 5  # numpy: the checks below index it on the host
    cutmix = jax.jit(wsol_methods.cutmix, static_argnums=(3, 4))
    for seed in range(20):
        mixed, mix = jax.device_get(cutmix(images, labels, jax.random.key(seed), 1.0, 1.0))
        mixed = mixed[..., 0]
        pasted = mixed != np.arange(b)[:, None, None]
        # one box, the same for every image (an image pasted onto itself shows nothing)
        for i in range(b):
            source = mixed[i][pasted[i]]
            assert np.all(source == source[:1]) if source.size else True
        area = pasted.sum(axis=(1, 2)).max()
        moved = [i for i in range(b) if pasted[i].any()]
        if moved:
            assert float(mix.lam) == pytest.approx(1 - area / (h * w), abs=1e-6)
            for i in moved:
                assert labels[int(mixed[i][pasted[i]][0])] == mix.other[i]
    same, mix = cutmix(images, labels, jax.random.key(0), 1.0, 0.0)
    np.testing.assert_array_equal(same, images)
    assert float(mix.lam) == 1.0
    # The method's switch: its beta and prob, in that order; beta 0 turns CutMix off.
    method = tiny_config("unused").method
    method.name, method.cutmix_beta, method.cutmix_prob = "cutmix", 2.0, 0.5
    augment = jax.jit(lambda *args, m=method: wsol_methods.augment(m, *args))
    for seed in range(4):
        key = jax.random.key(seed)
        jax.tree.map(
            np.testing.assert_array_equal,
            augment(images, labels, key),
            cutmix(images, labels, key, 2.0, 0.5),
        )
    method.cutmix_beta = 0.0
    same, mix = wsol_methods.augment(method, images, labels, jax.random.key(0))
    np.testing.assert_array_equal(same, images)
    assert float(mix.lam) == 1.0
    logits = jax.random.normal(jax.random.key(1), (b, 5))
    mix = wsol_methods.Mixed(labels[::-1], jnp.float32(0.3))
    ce = optax.softmax_cross_entropy_with_integer_labels
    np.testing.assert_allclose(
        jax.jit(wsol_methods.classification_loss)(logits, labels, mix),
        0.3 * ce(logits, labels) + 0.7 * ce(logits, labels[::-1]),
        rtol=1e-6,
    )


def reference_rand_bbox(h, w, lam, cy, cx):
    """wsolevaluation's `rand_bbox` given its centre draws: the cut sides int(side *
    sqrt(1 - lam)), the box around the centre clipped to [0, side]. -> (y0, y1, x0, x1)."""
    cut_h, cut_w = int(h * np.sqrt(1.0 - lam)), int(w * np.sqrt(1.0 - lam))
    return (
        int(np.clip(cy - cut_h // 2, 0, h)),
        int(np.clip(cy + cut_h // 2, 0, h)),
        int(np.clip(cx - cut_w // 2, 0, w)),
        int(np.clip(cx + cut_w // 2, 0, w)),
    )


def test_cutmix_box_is_the_references_rand_bbox():
    """The centre is uniform over every pixel (the reference's np.random.randint(side)), y and
    x from the two halves of the key; lam 0 gives a full-size box around the centre, clipped."""
    h, w = 20, 24
    box = jax.jit(wsol_methods.cutmix_box, static_argnums=(1, 2))
    for seed, lam in enumerate([0.0, 0.1, 0.37, 0.5, 0.81, 0.99] * 5):
        key = jax.random.key(seed)
        ky, kx = jax.random.split(key)
        cy, cx = int(jax.random.randint(ky, (), 0, h)), int(jax.random.randint(kx, (), 0, w))
        got = tuple(int(v) for v in box(key, h, w, jnp.float32(lam)))
        assert got == reference_rand_bbox(h, w, np.float32(lam), cy, cx), (seed, lam)


def plain_array(x) -> np.ndarray:
    """An array, or a typed PRNG key's data."""
    return np.asarray(
        jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    )


@pytest.mark.parametrize("name", ["has", "cutmix", "adl"])
def test_each_step_draws_anew_and_a_resumed_step_the_same(name):
    """Every draw is keyed by fold_in(..., step): steps 0 and 1 of one run hide other cells,
    paste another box, give ADL another key; step 1 asked again draws the same."""
    method = tiny_config("unused").method
    method.name = name
    images = jnp.arange(4.0)[:, None, None, None] * jnp.ones((4, 16, 16, 3))

    def draws(step):
        out = wsol_methods.step_inputs(method, images, jnp.arange(4), jax.random.key(0), step)
        return [plain_array(x) for x in jax.tree.leaves(out)]

    zero, one, again = draws(jnp.int32(0)), draws(jnp.int32(1)), draws(jnp.int32(1))
    assert any(not np.array_equal(a, b) for a, b in zip(zero, one, strict=True))
    for a, b in zip(one, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_config_reaches_the_models_method_fields():
    """config.method's values, not defaults, become the network's ADL, attentive dropout and
    ACoL fields (distinct non-default values, so a swap or a constant shows)."""
    config = tiny_config("unused")
    config.method.name, config.method.adl_drop_rate, config.method.adl_threshold = "adl", 0.6, 0.85
    assert experiment.build_model(config).adl == (0.6, 0.85)
    config.method.name = "bridging"
    config.method.bridging_drop_threshold, config.method.bridging_drop_prob = 0.8, 0.3
    assert experiment.build_model(config).attentive_drop == (0.8, 0.3)
    config.method.name, config.model.dropout_rate, config.method.acol_threshold = "acol", 0.0, 0.55
    assert experiment.build_model(config).acol == 0.55


def reference_adl(x_nchw, coin, drop_rate, threshold):
    """wsolevaluation's ADL.forward in training, in numpy, with `torch.rand([])` = coin."""
    attention = x_nchw.mean(axis=1, keepdims=True)
    importance = 1 / (1 + np.exp(-attention))
    peak = attention.reshape(len(x_nchw), -1).max(axis=1).reshape(-1, 1, 1, 1)
    drop_mask = (attention < peak * threshold).astype(np.float32)
    binary = np.floor(coin + drop_rate)
    return x_nchw * ((1 - binary) * importance + binary * drop_mask)


@pytest.mark.parametrize("threshold", [0.9, 1.0])
def test_adl_matches_the_reference_given_the_coin_and_is_off_at_evaluation(threshold):
    """threshold 1.0: the reference's strict `attention < threshold * max` drops each peak."""
    x = jax.random.normal(jax.random.key(0), (4, 6, 6, 5))
    layer = ADL(drop_rate=0.75, threshold=threshold)
    np.testing.assert_array_equal(layer.apply({}, x, train=False), x)
    picks = []
    for seed in range(40):
        key = jax.random.key(seed)
        out = np.asarray(layer.apply({}, x, train=True, rngs={"adl": key}))
        # the coin the layer drew: flax folds the module's path into the 'adl' stream
        coin = float(
            layer.apply(
                {}, method=lambda m: jax.random.uniform(m.make_rng("adl")), rngs={"adl": key}
            )
        )
        expected = reference_adl(np.asarray(x).transpose(0, 3, 1, 2), coin, 0.75, threshold)
        np.testing.assert_allclose(out, expected.transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-7)
        picks.append(np.floor(coin + 0.75))
    assert 0.5 < np.mean(picks) < 0.95  # the drop mask about 3 batches in 4


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cutmix", "adl", "bridging", "spg"])
def test_a_method_run_resumes_bit_identically(data_dir, tmp_path, method):
    """4 steps straight vs. the same run restarted from its step-2 checkpoint (the step-4 one
    removed): every random draw of a method comes from the step's key (CutMix's and HaS's
    through the input, ADL's and the attentive dropout's through the model's streams), and
    the bridging warm-up reads the step, so both runs end equal (ACoL: test_wsol_acol.py)."""
    config = tiny_config(data_dir, num_steps=4, checkpoint_every_steps=2)
    config.method.name = method
    config.optim.nonnegative_head = method != "bridging"  # bridging's L_norm needs a signed head
    config.eval.num_gallery = 0
    config.eval.wsol.enabled = False
    straight_dir = tmp_path / "straight"
    straight = loop.train_and_evaluate(config, str(straight_dir))
    assert_resume_from_step_ends_equal(config, straight_dir, straight, resume_step=2)


@pytest.mark.slow
def test_each_switch_changes_the_step_and_is_deterministic():
    """One step from the same state and batch: every method differs from plain CAM, and
    repeats itself exactly (same step, same draws)."""
    config = tiny_config("unused")
    model = experiment.build_model(config)
    tx = optim.create_optimizer(config.optim, config.train.num_steps)
    state, _ = train_state.create_train_state(config, model, tx, experiment.make_mesh())
    batch = {
        "image": jax.random.randint(jax.random.key(0), (16, 64, 64, 3), 0, 256).astype(jnp.uint8),
        "label": jnp.arange(16) % 10,
    }

    def heads_after_one_step(name, repeats=1):
        """The head's and CAM_conv's kernels after the step (bridging's warm-up step moves
        CAM_conv alone: its L_drop does not reach the head)."""
        config.method.name = name
        config.optim.nonnegative_head = name != "bridging"  # bridging's L_norm needs a signed one
        step = jax.jit(loop.make_train_step(config, experiment.build_model(config), tx))
        params = [step(state, loop.zero_sums(), batch)[0].params for _ in range(repeats)]
        return [
            np.concatenate([np.ravel(p["head"]["kernel"]), np.ravel(p["cam_conv"]["kernel"])])
            for p in params
        ]

    (plain,) = heads_after_one_step("cam")
    for name in ("has", "cutmix", "adl", "bridging"):
        once, again = heads_after_one_step(name, repeats=2)
        assert not np.array_equal(once, plain), f"{name} stepped as plain CAM: the switch is off"
        np.testing.assert_array_equal(once, again)
    config.method.name = "mixup"
    with pytest.raises(ValueError, match="config.method.name must be one of cam, has, cutmix"):
        loop.make_train_step(config, model, tx)


# wsolevaluation's ADL networks: VGG16 'MA', 'A', 'A' after pool3, conv4_3 and conv5_3;
# ResNet50 `_ADL_POSITION` [[], [], [0], [0, 2]]; GoogLeNet as InceptionV3-ADL: after the
# first inception stage (3b), after the last module (4e), between the CAM layer and the pool.
ADL_LAYERS = {
    "vgg16_gap_tiny": {"adl_conv3", "adl_conv4", "adl_conv5"},
    "resnet50_cam_tiny": {"adl3_0", "adl4_0", "adl4_2"},
    "googlenet_gap_tiny": {"adl_3b", "adl_4e", "adl_cam"},
    "googlenet_gap_bn_tiny": {"adl_3b", "adl_4e", "adl_cam"},
}


# The tiny (VGG) config's model fields another family does not take (ResNet: its own stride,
# the tiny config's 4 being VGG's).
TINY_CONFIG_FIELDS_TO_DROP = {
    "vgg16_gap_tiny": (),
    "resnet50_cam_tiny": ("num_blocks", "grouped_conv_impl", "groups", "output_stride"),
    "googlenet_gap_tiny": ("num_blocks", "output_stride"),
    "googlenet_gap_bn_tiny": ("num_blocks", "output_stride"),
}


@pytest.mark.parametrize(  # the lane keeps VGG's: the others compile for seconds
    "name",
    [n if n.startswith("vgg") else pytest.param(n, marks=pytest.mark.slow) for n in ADL_LAYERS],
)
def test_adl_layers_are_the_references_and_the_identity_at_evaluation(name):
    """Exactly the reference's ADL layers, and at evaluation the ADL network computes what the
    plain one does with the same parameters (ADL has none): every layer, the CAM head's too,
    is off outside training."""
    config = tiny_config("unused")
    config.model.name = name
    for field in TINY_CONFIG_FIELDS_TO_DROP[name]:
        del config.model[field]
    images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    config.method.name = "cam"
    plain = experiment.build_model(config)
    variables = jax.jit(plain.init)(jax.random.key(0), images)
    config.method.name = "adl"
    model = experiment.build_model(config)
    _, seen = jax.eval_shape(
        lambda v, x: model.apply(
            v,
            x,
            True,
            rngs={"adl": jax.random.key(1)},
            capture_intermediates=True,
            mutable=["intermediates", "batch_stats"],
        ),
        variables,
        images,
    )
    assert {k for k in seen["intermediates"] if k.startswith("adl")} == ADL_LAYERS[name]
    evaluate = jax.jit(lambda m, v, x: m.apply(v, x, False), static_argnums=0)
    jax.tree.map(
        np.testing.assert_array_equal,
        evaluate(model, variables, images),
        evaluate(plain, variables, images),
    )
