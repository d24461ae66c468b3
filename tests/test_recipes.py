"""The WSOL recipe configs, shrunk with their `tiny` argument, train and evaluate end to end on
tiny CUB and ILSVRC archives in the official layouts, prepared as a user would."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from camjax import checkpoint, experiment
from camjax.data import cub, ilsvrc
from camjax.evaluation import protocol as protocol_lib
from camjax.evaluation import run as run_lib
from camjax.train import loop, optim
from camjax.train import state as train_state
from configs import (
    cam_resnet50_cub,
    cam_resnet50_ilsvrc,
    cam_vgg16_cub,
    cam_vgg16_ilsvrc,
    googlenet_gap_imagenet,
    wsol_recipe,
)
from tests.data.test_cub import write_archives
from tests.data.test_ilsvrc import write_manual_dir
from tests.xla_flags import subprocess_xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    data_dir = str(root / "tfds")
    cub.Cub2002011.prepare(str(write_archives(root / "cub")), data_dir, progress=False)
    ilsvrc.Ilsvrc2012Loc.prepare(
        str(write_manual_dir(root / "ilsvrc", train=True)), data_dir, progress=False
    )
    return data_dir


# Each dataset and each architecture runs end to end once: the data path does not depend on the
# model, so the other two pairs (their configs are checked below) would repeat ~40 s of compiles.
@pytest.mark.slow
@pytest.mark.parametrize("module", [cam_vgg16_cub, cam_resnet50_ilsvrc])
def test_recipe_trains_and_evaluates_on_prepared_archives(module, data_dir, tmp_path):
    full = module.get_config()
    config = module.get_config("tiny")
    # The tiny variant keeps the recipe's data, splits, solver and protocol.
    for key in ("name", "max_boxes"):
        assert config.data[key] == full.data[key]
    for key in ("name", "momentum", "weight_decay", "decay_biases", "schedule"):
        assert config.optim[key] == full.optim[key]
    assert config.optim.new_layer_lr_mult == full.optim.new_layer_lr_mult
    assert full.data.image_size == 224 and full.data.resize_size == 256
    assert full.train.num_steps > 1000 and full.eval.wsol.eval_size == 224
    assert full.optim.nesterov
    resnet = full.model.name == "resnet50_cam"
    assert tuple(full.optim.new_layers) == (("layer4", "head") if resnet else ("cam_conv", "head"))
    config.data.data_dir = data_dir
    workdir = str(tmp_path)

    state = loop.train_and_evaluate(config, workdir)
    assert int(state.step) == config.train.num_steps
    if config.model.name.startswith("resnet50"):
        assert state.batch_stats  # batch norm statistics are trained and checkpointed
    results = run_lib.run_evaluation(config, workdir)
    wsol = results["wsol"]
    assert wsol["protocol"]["eval_size"] == 64
    assert wsol["val"]["num_images"] > 0 and wsol["test"]["num_images"] > 0
    assert 0 <= wsol["test"]["max_box_acc_v2"] <= 100


@pytest.mark.slow
def test_vgg16_gap_paper_config_runs_a_full_size_step_on_ilsvrc(data_dir, tmp_path):
    """The paper-size network and solver build, step and evaluate on prepared ILSVRC at 224,
    through train.py and evaluate.py as a user runs them. In processes of their own, at XLA's
    default optimisation level: at the session's level 0 the 15M-parameter initialisation alone
    took 36 s on the 2-core CPU (3 s at the default level)."""
    workdir = str(tmp_path / "run")
    overrides = {
        "data.data_dir": data_dir,
        "data.validation_per_class": 1,
        "data.batch_size": 8,
        "eval.batch_size": 8,
        "data.num_threads": 2,
        "data.num_workers": 2,  # the recipe's worker processes, fewer
        "train.num_steps": 1,
        "train.eval_every_steps": 0,  # evaluate.py below evaluates; once is enough at 224
        "eval.num_gallery": 0,  # the gallery's code is the tiny recipes'; at 224 it recompiles
        "eval.threshold_grid_step": 0.25,
        "eval.wsol.threshold_step": 0.05,
        "eval.max_images": 8,  # one batch per split: the 224 forward passes dominate on a CPU
    }
    train = [
        os.path.join(REPO, "train.py"),
        f"--config={os.path.join(REPO, 'configs/vgg16_gap_imagenet.py')}",
        f"--workdir={workdir}",
        *(f"--config.{key}={value}" for key, value in overrides.items()),
    ]
    env = {**os.environ, "XLA_FLAGS": subprocess_xla_flags(calibrated=True)}
    for argv in (train, [os.path.join(REPO, "evaluate.py"), f"--workdir={workdir}"]):
        run = subprocess.run(
            [sys.executable, *argv], env=env, cwd=REPO, capture_output=True, timeout=600
        )
        assert run.returncode == 0, run.stderr.decode()[-3000:]
    with ocp.CheckpointManager(checkpoint.checkpoint_dir(workdir)) as manager:
        assert manager.latest_step() == 1
        args = ocp.args.Composite(state=ocp.args.StandardRestore())
        params = manager.restore(1, args=args)["state"]["params"]
    assert params["cam_conv"]["kernel"].shape[-1] == 1024
    assert params["head"]["kernel"].shape[-1] == 1000
    with open(os.path.join(workdir, "metrics.json")) as f:
        wsol = json.load(f)["wsol"]
    assert wsol["protocol"]["eval_size"] == 224
    assert wsol["test"]["num_images"] > 0


@pytest.mark.parametrize("variant", ["", "bn"])
def test_googlenet_gap_paper_config_traces_a_full_size_step(variant):
    """GoogLeNet-GAP's paper-size network and solver trace one train step at 224, in the Caffe
    layout and in torchvision's (`:bn`, with the input transform its weights expect). Traced,
    not run: its compiles alone took ~40 s of the 2-core CPU, and the VGG16 test above runs the
    same loop, data and evaluation at 224 for real."""
    config = googlenet_gap_imagenet.get_config(variant)
    assert config.model.name == ("googlenet_gap_bn" if variant else "googlenet_gap")
    model = experiment.build_model(config)
    assert getattr(model, "transform_input", False) == bool(variant)
    tx = optim.create_optimizer(config.optim, config.train.num_steps)
    state = train_state.abstract_train_state(config, model, tx, experiment.make_mesh())
    batch = {
        "image": jax.ShapeDtypeStruct((8, 224, 224, 3), jnp.uint8),
        "label": jax.ShapeDtypeStruct((8,), jnp.int32),
    }
    step = loop.make_train_step(config, model, tx)
    stepped, sums = jax.eval_shape(step, state, loop.zero_sums(), batch)
    assert stepped.params["cam_conv"]["kernel"].shape[-1] == 1024  # grouped, as in the paper
    assert stepped.params["head"]["kernel"].shape == (1024, 1000)
    assert jax.tree.structure(stepped.opt_state) == jax.tree.structure(state.opt_state)
    assert sums["loss"].shape == ()


RECIPES = [cam_vgg16_cub, cam_resnet50_cub, cam_vgg16_ilsvrc, cam_resnet50_ilsvrc]


@pytest.mark.parametrize("module", RECIPES)
def test_each_epochs_learning_rate_is_the_one_wsolevaluations_loop_sets(module):
    """wsolevaluation's main.py calls `adjust_learning_rate(epoch + 1)` before each 0-based
    epoch, which multiplies the rate by 0.1 when (epoch + 1) % lr_decay_frequency == 0 (CUB:
    50 epochs, every 15; ILSVRC: 10, every 3). Every step of an epoch trains at that rate."""
    config = module.get_config()
    epochs, frequency = wsol_recipe.EPOCHS[module.__name__.rsplit("_", 1)[1]]  # cub, ilsvrc
    steps_per_epoch = config.train.num_steps // epochs
    schedule = optim.learning_rate_schedule(config.optim, config.train.num_steps)
    rate = config.optim.learning_rate
    for epoch in range(epochs):
        if (epoch + 1) % frequency == 0:
            rate *= 0.1
        first, last = epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch - 1
        for step in (first, last):
            assert float(schedule(step)) == pytest.approx(rate, rel=1e-6), (epoch, step)


@pytest.mark.parametrize("method", wsol_recipe.METHODS)
@pytest.mark.parametrize("module", RECIPES)
def test_recipe_takes_every_method_with_its_reference_solver(module, method):
    cam, config = module.get_config(), module.get_config(method)
    assert config.method.name == method and module.get_config("").method.name == "cam"
    tiny = module.get_config(f"{method}_tiny")
    assert tiny.method.name == method and tiny.model.name.endswith("_tiny")
    assert tuple(tiny.optim.new_layers) == tuple(config.optim.new_layers)
    # wsolevaluation's linear classifier init, N(0, 0.01), reaches the model built.
    assert experiment.build_model(tiny).head_init_std == 0.01
    resnet, cub = config.model.name == "resnet50_cam", module in (cam_vgg16_cub, cam_resnet50_cub)
    # The layers at the classifier rate, as the reference solvers split them.
    new_layers = {
        (False, "spg"): ("conv4", "conv5", "head"),
        (True, "acol"): ("layer4",),
        (True, "spg"): ("layer4",),
        (True, "bridging"): ("head",),
    }.get((resnet, method), ("layer4", "head") if resnet else ("cam_conv", "head"))
    assert tuple(config.optim.new_layers) == new_layers
    if method == "bridging" and cub:  # bridging-gap-wsol's configs/config_exp*.yaml
        steps_per_epoch = 5994 - 1000  # CUB train minus the 5-per-class validation holdout
        batch = 32 if resnet else 64
        assert config.data.batch_size == batch
        assert config.optim.learning_rate == (0.002 if resnet else 0.004)
        assert config.optim.new_layer_lr_mult == (10.0 if resnet else 5.0)
        assert config.train.num_steps == 70 * (steps_per_epoch // batch)
        epoch = steps_per_epoch // batch
        assert config.optim.decay_at == (40 * epoch, 60 * epoch)
        assert config.optim.decay_factor == 0.2
    else:  # every other method trains with the CAM recipe's solver
        for key in ("learning_rate", "weight_decay", "decay_at", "new_layer_lr_mult"):
            assert config.optim[key] == cam.optim[key]
        assert config.train.num_steps == cam.train.num_steps
    assert config.optim.decay_biases  # the reference solvers' torch SGD decays every parameter
    assert config.method.bridging_sim_fg_threshold == (0.4 if resnet else 0.6)
    with pytest.raises(ValueError, match="a method or <method>_tiny"):
        module.get_config(f"{method}x")


@pytest.mark.slow  # a run end to end; the fast lane checks every recipe's method config above
def test_a_recipe_trains_and_evaluates_a_method_on_prepared_archives(data_dir, tmp_path):
    """SPG (new layers, class maps, its own losses and new-layer group) end to end on CUB."""
    config = cam_vgg16_cub.get_config("spg_tiny")
    config.data.data_dir = data_dir
    workdir = str(tmp_path)
    state = loop.train_and_evaluate(config, workdir)
    assert int(state.step) == config.train.num_steps and "head_c" in state.params
    results = run_lib.run_evaluation(config, workdir)
    assert 0 <= results["wsol"]["test"]["max_box_acc_v2"] <= 100


def test_pod_config_scales_a_recipe_by_the_linear_rule():
    from configs import pod

    base = cam_resnet50_ilsvrc.get_config()
    config = pod.get_config("cam_resnet50_ilsvrc,1024")
    scale = 1024 / base.data.batch_size
    assert config.data.batch_size == config.eval.batch_size == 1024
    assert config.optim.learning_rate == pytest.approx(base.optim.learning_rate * scale)
    # Epochs are the recipe's: steps and decay steps shrink by the batch factor.
    assert config.train.num_steps == round(base.train.num_steps / scale)
    assert config.optim.decay_at == tuple(round(s / scale) for s in base.optim.decay_at)
    assert config.optim.warmup_steps == config.train.num_steps // 20 > 0
    assert config.model.dtype == "bfloat16" and config.data.num_threads == 16
    assert config.data.num_workers == 16
    tiny = pod.get_config("cam_vgg16_cub:tiny,16")
    assert tiny.model.name == "vgg16_gap_tiny" and tiny.data.batch_size == 16
    paper = pod.get_config("vgg16_gap_imagenet,1024")
    assert paper.train.eval_every_steps == round(10_000 / 16)  # evaluation keeps its epochs
    cub = pod.get_config("cam_vgg16_cub,256")
    cub_decays = cam_vgg16_cub.get_config().optim.decay_at
    assert cub.optim.decay_at == tuple(round(s / 8) for s in cub_decays)
    bridging = pod.get_config("cam_vgg16_cub:bridging,256")  # the method variant passes through
    base = cam_vgg16_cub.get_config("bridging")
    assert bridging.method.name == "bridging"
    assert bridging.optim.decay_at == tuple(round(s / 4) for s in base.optim.decay_at)
    with pytest.raises(ValueError, match="<recipe>,<global batch>"):
        pod.get_config("cam_vgg16_cub")


@pytest.mark.slow
def test_mask_only_dataset_reports_pxap_as_the_reference(tmp_path):
    """OpenImages30k (masks with ignore regions, no boxes): train a tiny model, evaluate with
    config.eval.wsol.boxes = False, and get the reference's PxAP on the evaluator's own maps."""
    import numpy as np

    from camjax import experiment
    from camjax.data import openimages
    from configs import tiny
    from tests.data.test_openimages import write_manual_dir as write_openimages
    from tests.localization import wsol_reference as ref

    data_dir = str(tmp_path / "tfds")
    openimages.OpenImages30kWsol.prepare(
        str(write_openimages(tmp_path / "manual")), data_dir, progress=False
    )
    config = tiny.get_config()
    config.data.name = "openimages30k_wsol"
    config.data.data_dir = data_dir
    config.data.num_train = config.data.num_validation = config.data.num_test = 0
    config.data.batch_size = config.eval.batch_size = 8
    config.model.num_classes = 100
    config.train.num_steps = 2
    config.eval.wsol.boxes = False
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(config, workdir)
    results = run_lib.run_evaluation(config, workdir)
    wsol = results["wsol"]
    assert wsol["protocol"]["boxes"] is False
    assert set(wsol["test"]) == {"num_images", "pxap"}

    evaluator, variables, _ = run_lib.restore_evaluator(config, workdir)
    protocol = evaluator.protocol
    source = experiment.data_sources(config)["test"]
    maps = []
    for host_batch, scoremaps in evaluator.scoremap_outputs(variables, source):
        maps.append(np.asarray(scoremaps)[np.asarray(host_batch["valid"])])
    maps = np.concatenate(maps)
    masks = [
        protocol_lib.protocol_mask(source[i]["mask"], 64, source[i]["ignore_mask"])
        for i in range(len(source))
    ]
    assert any((m == 255).any() for m in masks)  # the fixture has ignored pixels
    true_hist, false_hist = ref.pxap_histograms(maps, masks, protocol.thresholds)
    assert wsol["test"]["pxap"] == pytest.approx(ref.pxap(true_hist, false_hist), rel=1e-12)
    assert wsol["test"]["num_images"] == len(source)

    # Exporting a mask-only split (at 224, the reference's frame): the maps under the
    # reference's ids, metadata without boxes, and the masks in the reference's mask layout.
    from camjax.evaluation import export
    from camjax.localization import wsol_frame, wsol_io

    out = str(tmp_path / "export")
    config = config.copy_and_resolve_references()
    config.eval.wsol.eval_size = 224
    export.export_wsol(config, workdir, out)
    meta = wsol_io.read_metadata(f"{out}/metadata/openimages30k_wsol/test")
    assert meta.boxes is None and len(meta) == len(source)
    stored = [bytes(source[i]["image_id"]).decode() for i in range(len(source))]
    assert list(meta.image_ids) == stored
    exported = wsol_frame.load_scoremaps(f"{out}/scoremaps/test", meta.image_ids)
    evaluator, variables, _ = run_lib.restore_evaluator(config, workdir)
    maps = []
    for host_batch, scoremaps in evaluator.scoremap_outputs(variables, source):
        maps.append(np.asarray(scoremaps)[np.asarray(host_batch["valid"])])
    np.testing.assert_array_equal(exported, np.concatenate(maps))
    masked = wsol_io.read_metadata(f"{out}/metadata/OpenImages/test")
    assert masked.image_ids == meta.image_ids
    for i, (paths, ignore) in enumerate(zip(masked.mask_paths, masked.ignore_paths, strict=True)):
        got = ref.get_mask(f"{out}/masks/OpenImages", paths, ignore)
        want = protocol_lib.protocol_mask(source[i]["mask"], 224, source[i]["ignore_mask"])
        np.testing.assert_array_equal(got, want)
