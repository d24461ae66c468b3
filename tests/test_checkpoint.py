"""Tests for camjax/checkpoint.py: the run's saved config, the variables-only restore, damaged
steps, and the disk space a save needs."""

import errno
import gc
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from camjax import cam as cam_lib
from camjax import checkpoint, checkpoint_restore, cli, digests, experiment, run_config
from camjax.train import optim
from camjax.train import state as train_state
from configs import tiny
from tests import saved_steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def finalised_dropped_reads():
    """Collects the test's dropped orbax reads at its teardown, under its own warning filter.

    They sit in reference cycles: left to Python's collector, they were reported in whatever
    later test it ran in (up to 92 at a time, even in another file), outside the filter."""
    yield
    gc.collect()  # a full collection: a young generation's left up to 75 reads uncollected


def dropped_orbax_reads_expected(test):
    """orbax reads a step's arrays in coroutines; when one read fails on a damaged or foreign
    step, the others are dropped unfinished, and Python reports each as "Exception ignored"
    (pytest: PytestUnraisableExceptionWarning) when it is collected. The restore's own error is
    handled, the step skipped: that is what these tests check, so the reports are not warnings."""
    test = pytest.mark.usefixtures("finalised_dropped_reads")(test)
    return pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")(test)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A workdir holding one checkpoint (step 1) of an untrained tiny model, as train.py saves."""
    config = tiny.get_config()
    config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
    config.eval.num_gallery = 1
    workdir = str(tmp_path_factory.mktemp("run"))
    model = experiment.build_model(config)
    tx = optim.create_optimizer(config.optim, config.train.num_steps)
    state, _ = train_state.create_train_state(config, model, tx, experiment.make_mesh())
    manager = checkpoint.create_manager(workdir, 2)
    checkpoint.save(manager, 1, state, config)
    manager.wait_until_finished()
    manager.close()
    return config, workdir, state


def test_the_run_config_is_saved_beside_the_checkpoints(saved_run):
    config, workdir, _ = saved_run
    loaded = run_config.load(workdir)
    assert json.loads(loaded.to_json()) == json.loads(config.to_json())
    with pytest.raises(AttributeError):
        loaded.data.nmae = "typo"  # locked, as a config file's is


def test_restore_variables_reads_the_model_variables_only(saved_run):
    config, workdir, state = saved_run
    replicated = experiment.replicated(experiment.make_mesh())
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        {"params": state.params, "batch_stats": {}},
    )
    manager = checkpoint.create_manager(workdir, 2)
    variables, step = checkpoint_restore.restore_variables(manager, abstract, config)
    assert step == 1 and set(variables) == {"params", "batch_stats"}
    pairs = zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(state.params), strict=True)
    for got, want in pairs:
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    other = config.copy_and_resolve_references()
    other.model.width = 1 / 8
    with pytest.raises(checkpoint.CheckpointError, match=r"width: checkpoint 0.0625, config 0.125"):
        checkpoint_restore.restore_variables(manager, abstract, other)
    manager.close()


def test_the_fingerprint_a_step_must_match_holds_what_its_parameters_and_run_depend_on():
    """What a step's metadata must match to restore: the model's fields less the compute dtype
    and the grouped-conv implementation (a bfloat16 evaluation reads a float32 run's steps),
    the WSOL method only where its head replaces the GAP head (ACoL, SPG), the dataset (a step
    of a run on another dataset with as many classes would restore silently) and the seed."""
    config = tiny.get_config()
    base = checkpoint.model_fingerprint(config)
    assert (base["dataset"], base["seed"], base["model"]["width"]) == ("wsol_shapes", 0, 1 / 16)

    def fingerprint(field, value):
        other = config.copy_and_resolve_references()
        other.update_from_flattened_dict({field: value})
        return checkpoint.model_fingerprint(other)

    same = [("model.dtype", "bfloat16"), ("model.grouped_conv_impl", "xla")]
    same += [("method.name", m) for m in ("has", "cutmix", "adl", "bridging")]
    for field, value in same:
        assert fingerprint(field, value) == base, (field, value)
    for method in ("acol", "spg"):
        head = {**base, "model": {**base["model"], "wsol_method": method}}
        assert fingerprint("method.name", method) == head
    assert fingerprint("data.name", "ilsvrc2012_loc") == {**base, "dataset": "ilsvrc2012_loc"}
    assert fingerprint("seed", 1) == {**base, "seed": 1}
    assert fingerprint("model.width", 1 / 8) == {**base, "model": {**base["model"], "width": 1 / 8}}
    # The recipes' initial draw of the head: a run saved before the field existed resumes.
    recipe = config.copy_and_resolve_references()
    with recipe.unlocked():
        recipe.model.head_init_std = 0.01
    assert checkpoint.model_fingerprint(recipe) == base
    training, _, bookkeeping = run_config.resume_differences(run_config.config_json(config), recipe)
    assert not training and "model.head_init_std" in bookkeeping
    # A run saved before optim.decay_biases existed decayed no bias: it resumes under False.
    saved = run_config.config_json(config)
    del saved["optim"]["decay_biases"]
    assert run_config.resume_differences(saved, config) == ("", "", "")
    with recipe.unlocked():
        recipe.optim.decay_biases = True
    training, _, _ = run_config.resume_differences(saved, recipe)
    assert training == "optim.decay_biases: run False, given True"


def evaluate_cli(*args):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "evaluate.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow  # two evaluate.py processes, end to end
def test_evaluate_needs_only_the_workdir(saved_run):
    config, workdir, _ = saved_run
    # The run's own config, with overrides of its fields (a tuple saved as a JSON list too).
    done = evaluate_cli(
        f"--workdir={workdir}", "--config.eval.top_k=2", "--config.eval.wsol.iou_thresholds=(40,)"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        "overrides of the run's saved config: eval.top_k: run 5, given 2; "
        "eval.wsol.iou_thresholds: run [30, 50, 70], given [40]"
    ) in done.stderr
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["test_at_val_threshold"]["num_images"] == config.data.num_test
    assert metrics["top_k"] == 2 and "top2_cls" in metrics["test_at_val_threshold"]
    # An explicit --config is used and checked: its differences from the run's are listed.
    done = evaluate_cli(
        f"--workdir={workdir}",
        "--config=configs/tiny.py",
        f"--config.data.data_dir={config.data.data_dir}",
        "--config.eval.num_gallery=0",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "differs from the run's saved config: eval.num_gallery: run 1, given 0" in done.stderr


@pytest.mark.slow  # an evaluate.py and a train.py process
def test_a_config_override_naming_no_field_is_one_line(saved_run, tmp_path):
    _, workdir, _ = saved_run
    done = evaluate_cli(f"--workdir={workdir}", "--config.eval.methd=grad_cam")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "FATAL Flags parsing error: --config.eval.methd: the config has no field 'methd' "
        '(did you mean "method" instead of "methd"?)'
    )
    train = [os.path.join(REPO, "train.py"), "--config=configs/tiny.py", f"--workdir={tmp_path}"]
    done = subprocess.run(
        [sys.executable, *train, "--config.trian.num_steps=3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "--config.trian.num_steps: the config has no field 'trian'" in done.stderr
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "overrides",
    # An evaluate.py process each: with an override, the same line is the full suite's.
    [(), pytest.param(("--config.eval.top_k=2",), marks=pytest.mark.slow)],
)
def test_a_user_error_is_one_line_without_a_traceback(tmp_path, overrides):
    done = evaluate_cli(f"--workdir={tmp_path}", *overrides)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no config.json in ") and "--config" in last


def test_only_errors_camjax_raises_lose_their_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CAMJAX_TRACEBACK", raising=False)
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit) as stop, cli.user_errors():
        run_config.load(str(tmp_path))
    assert stop.value.code == 1
    assert capsys.readouterr().err.startswith(f"error: {bad} is not valid JSON")
    # Raised inside camjax's code but not by its raise statements (a bug): the traceback stays.
    with pytest.raises(AttributeError), cli.user_errors():
        cam_lib.normalize_minmax("not an array")
    monkeypatch.setenv("CAMJAX_TRACEBACK", "1")
    with pytest.raises(run_config.RunConfigError), cli.user_errors():
        run_config.load(str(tmp_path))


# ---- damaged steps: verified at restore, skipped with a reason, never touched ------------------


@pytest.fixture(scope="module")
def pristine_two_steps(tmp_path_factory):
    """A workdir with steps 1 and 2 of distinguishable states, saved once for the module:
    (config, workdir, abstract state, first, second)."""
    config = tiny.get_config()
    model = experiment.build_model(config)
    tx = optim.create_optimizer(config.optim, config.train.num_steps)
    mesh = experiment.make_mesh()
    first, _ = train_state.create_train_state(config, model, tx, mesh)
    first = first.replace(step=first.step + 1)
    second = first.replace(step=first.step + 1, params=jax.tree.map(lambda x: x + 1, first.params))
    workdir = str(tmp_path_factory.mktemp("two_steps") / "run")
    manager = checkpoint.create_manager(workdir, 3)
    checkpoint.save(manager, 1, first, config)
    checkpoint.save(manager, 2, second, config)
    manager.wait_until_finished()
    manager.close()
    abstract = train_state.abstract_train_state(config, model, tx, mesh)
    return config, workdir, abstract, first, second


@pytest.fixture
def two_steps(pristine_two_steps, tmp_path):
    """A copy of the two-step workdir that the test may damage; the same tuple."""
    config, pristine, abstract, first, second = pristine_two_steps
    workdir = str(tmp_path / "run")
    shutil.copytree(pristine, workdir)
    return config, workdir, abstract, first, second


def largest_array_file(step_dir):
    files = [
        os.path.join(root, f)
        for root, _, names in os.walk(os.path.join(step_dir, "state"))
        for f in names
        if os.sep + "d" + os.sep in os.path.join(root, f) + os.sep
    ]
    return max(files, key=os.path.getsize)


def flip_bit(path, offset_fraction=0.5, bit=3):
    data = bytearray(open(path, "rb").read())
    data[int(len(data) * offset_fraction)] ^= 1 << bit
    open(path, "wb").write(bytes(data))


def xor_bytes(path, n=8):
    data = bytearray(open(path, "rb").read())
    for i in range(n):
        data[len(data) // 3 + 97 * i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def drop_digest_format(path):
    """As a camjax version with other digests would have written them."""
    path = os.path.join(path, "metadata")
    saved = json.load(open(path))
    del saved[digests.DIGEST_FORMAT_KEY]
    json.dump(saved, open(path, "w"))


def rename_a_key(step):
    """One bit flipped in an array's name in the step's pytree metadata ('bias' -> 'bics'): the
    array is no longer listed under the name asked for."""
    path = os.path.join(step, "state", "_METADATA")
    data = bytearray(open(path, "rb").read())
    data[data.index(b'"key": "bias"') + len(b'"key": "bi')] ^= 0x02
    open(path, "wb").write(bytes(data))


def arrays_and_digests_of_step_1(step):
    """Step 1's arrays and digests copied in under step 2's metadata."""
    for part in ("state", "digests"):
        shutil.rmtree(os.path.join(step, part))
        shutil.copytree(os.path.join(os.path.dirname(step), "1", part), os.path.join(step, part))


DAMAGE = {
    "bit_flip": lambda step: flip_bit(largest_array_file(step)),
    "xor_bytes": lambda step: xor_bytes(largest_array_file(step)),
    "truncated_array_file": lambda step: truncate(largest_array_file(step)),
    "deleted_ocdbt_manifest": lambda step: os.remove(os.path.join(step, "state", "manifest.ocdbt")),
    "deleted_state_metadata": lambda step: os.remove(os.path.join(step, "state", "_METADATA")),
    "truncated_meta_json": lambda step: truncate(os.path.join(step, "meta", "metadata")),
    "other_digest_format": lambda step: drop_digest_format(os.path.join(step, "digests")),
    "empty_step_folder": None,  # a folder 99 with nothing in it
    "digests_not_an_object": lambda step: open(
        os.path.join(step, "digests", "metadata"), "w"
    ).write("[1, 2]"),
    "renamed_array_key": rename_a_key,
    "arrays_and_digests_of_another_step": arrays_and_digests_of_step_1,
}


@dropped_orbax_reads_expected
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_step_is_skipped_for_the_newest_good_one(two_steps, caplog, damage):
    config, workdir, abstract, first, second = two_steps
    ckpts = checkpoint.checkpoint_dir(workdir)
    if DAMAGE[damage] is None:
        os.makedirs(os.path.join(ckpts, "99"))
        bad = 99
    else:
        DAMAGE[damage](os.path.join(ckpts, "2"))
        bad = 2
    before = sorted(os.walk(ckpts))
    manager = checkpoint.create_manager(workdir, 3)
    with caplog.at_level("WARNING", logger="camjax"):
        restored = checkpoint_restore.restore(manager, abstract, config)
    manager.close()
    good = second if bad == 99 else first
    assert int(restored.step) == int(good.step)
    jax.tree.map(np.testing.assert_array_equal, restored.params, good.params)
    skipped = [
        r.getMessage() for r in caplog.records if "Skipped checkpoint step" in r.getMessage()
    ]
    assert len(skipped) == 1 and f"step {bad} in" in skipped[0] and "rm -r" in skipped[0]
    assert "\n" not in skipped[0]
    assert f"Restored checkpoint step {int(good.step)}, the newest good one" in caplog.text
    assert sorted(os.walk(ckpts)) == before  # nothing moved or deleted


@pytest.mark.slow  # nine restores; the fast lane flips one bit (the damaged-step tests)
@dropped_orbax_reads_expected
def test_a_bit_flip_anywhere_never_restores_changed_values(two_steps):
    """A flip in bytes the reader never uses is harmless: the step restores exactly as saved.
    Any other flip is caught: the older step is restored. Never a changed step 2."""
    config, workdir, abstract, first, second = two_steps
    path = largest_array_file(os.path.join(checkpoint.checkpoint_dir(workdir), "2"))
    original = open(path, "rb").read()
    outcomes = set()
    for fraction in np.linspace(0.02, 0.98, 9):
        open(path, "wb").write(original)
        flip_bit(path, fraction, bit=int(fraction * 8))
        manager = checkpoint.create_manager(workdir, 3)
        restored = checkpoint_restore.restore(manager, abstract, config)
        manager.close()
        step = int(restored.step)
        outcomes.add(step)
        jax.tree.map(
            np.testing.assert_array_equal, restored.params, (first if step == 1 else second).params
        )
    assert 1 in outcomes  # most flips change values, and every one of those was caught


def test_a_nan_saved_with_a_valid_digest_is_rejected(two_steps, caplog):
    config, workdir, abstract, first, _ = two_steps
    nan_state = first.replace(
        step=first.step + 2,
        opt_state=jax.tree.map(
            lambda x: x * np.nan if x.dtype == np.float32 else x, first.opt_state
        ),
    )
    manager = checkpoint.create_manager(workdir, 3)
    checkpoint.save(manager, 3, nan_state, config)
    manager.wait_until_finished()
    with caplog.at_level("WARNING", logger="camjax"):
        restored = checkpoint_restore.restore(manager, abstract, config)
    manager.close()
    assert int(restored.step) == 2
    assert "step 3 in" in caplog.text and "holds NaN or Inf" in caplog.text


def test_no_good_step_is_one_error_listing_every_step(two_steps):
    config, workdir, abstract, _, _ = two_steps
    ckpts = checkpoint.checkpoint_dir(workdir)
    flip_bit(largest_array_file(os.path.join(ckpts, "1")))
    truncate(os.path.join(ckpts, "2", "meta", "metadata"))
    manager = checkpoint.create_manager(workdir, 3)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint_restore.restore(manager, abstract, config)
    with pytest.raises(checkpoint.CheckpointError, match="no good checkpoint"):
        checkpoint_restore.restore_variables(
            manager, {"params": abstract.params, "batch_stats": {}}, config
        )
    manager.close()
    message = str(err.value)
    assert message.startswith(f"no good checkpoint in {ckpts}: step 2: incomplete or unreadable")
    assert "; step 1: " in message and "\n" not in message
    assert sorted(os.listdir(ckpts)) == ["1", "2"]


@dropped_orbax_reads_expected
def test_a_config_error_needs_every_step_to_differ_and_names_the_newest(two_steps):
    """Restored with another width, both steps differ from the config: the error is the
    config's and names the newest step. With step 2 of the config's width but damaged and step
    1 of another width (its metadata edited), the config is right: a damage report of both."""
    config, workdir, abstract, _, _ = two_steps
    ckpts = checkpoint.checkpoint_dir(workdir)
    other = config.copy_and_resolve_references()
    other.model.width = 1 / 8
    manager = checkpoint.create_manager(workdir, 3)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint_restore.restore(manager, abstract, other)
    assert str(err.value).startswith(
        f"the checkpoint at step 2 in {ckpts} was trained with a different config: model.width: "
        "checkpoint 0.0625, config 0.125. Use the config the run was trained with"
    )
    flip_bit(largest_array_file(os.path.join(ckpts, "2")))
    saved_steps.edit_meta(os.path.join(ckpts, "1"), lambda meta: meta["model"].update(width=1 / 8))
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint_restore.restore(manager, abstract, config)
    manager.close()
    assert str(err.value).startswith(f"no good checkpoint in {ckpts}: step 2: ")
    assert "; step 1: was trained with a different config: model.width: checkpoint 0.125, " in (
        str(err.value)
    )


@dropped_orbax_reads_expected
@pytest.mark.parametrize("damage", sorted(set(DAMAGE) - {"empty_step_folder"}))
def test_evaluation_restores_the_newest_good_variables(two_steps, caplog, damage):
    """As training's restore, evaluation's (the model variables only, a partial restore)."""
    config, workdir, abstract, first, second = two_steps
    DAMAGE[damage](os.path.join(checkpoint.checkpoint_dir(workdir), "2"))
    manager = checkpoint.create_manager(workdir, 3)
    with caplog.at_level("WARNING", logger="camjax"):
        variables, step = checkpoint_restore.restore_variables(
            manager, {"params": abstract.params, "batch_stats": {}}, config
        )
    manager.close()
    if damage == "deleted_state_metadata":
        # The arrays read by their names without it, and match their digests: step 2 is good.
        assert step == 2
        jax.tree.map(np.testing.assert_array_equal, variables["params"], second.params)
        return
    assert step == 1
    jax.tree.map(np.testing.assert_array_equal, variables["params"], first.params)
    assert "Skipped checkpoint step 2 in" in caplog.text


def test_a_step_of_a_sibling_run_is_skipped_and_old_steps_without_a_seed_still_read(
    two_steps, caplog
):
    """A step saved by a run of the same recipe with another seed (copied in by mistake from a
    seed sweep's sibling): its digests and architecture match, its seed does not. Steps saved
    before the seed (and the step itself) were recorded restore as before."""
    config, workdir, abstract, first, second = two_steps
    sibling = config.copy_and_resolve_references()
    sibling.seed = config.seed + 1
    manager = checkpoint.create_manager(workdir, 3)
    checkpoint.save(manager, 3, first.replace(step=first.step + 2), sibling)
    checkpoint.wait(manager)

    def before_seeds(meta):  # as saved before steps recorded their seed, step and digest
        del meta["seed"], meta["step"]

    step_2 = os.path.join(checkpoint.checkpoint_dir(workdir), "2")
    saved_steps.edit_meta(step_2, before_seeds, seal="none")
    with caplog.at_level("WARNING", logger="camjax"):
        restored = checkpoint_restore.restore(manager, abstract, config)
    manager.close()
    assert int(restored.step) == 2
    jax.tree.map(np.testing.assert_array_equal, restored.params, second.params)
    assert "Skipped checkpoint step 3" in caplog.text
    assert f"seed: checkpoint {config.seed + 1}, config {config.seed}" in caplog.text
    assert "rm -r" not in caplog.text  # a good step of another config: nothing to remove


@dropped_orbax_reads_expected
def test_a_step_of_another_runs_workdir_is_skipped(two_steps, tmp_path, caplog):
    """A step copied in from another run's workdir whose model, dataset and seed are this run's
    (a learning-rate sweep's sibling): only the run id tells it apart. Without this workdir's
    run_id (a run started before ids were recorded), nothing does, and it restores as before."""
    config, workdir, abstract, first, second = two_steps
    ours = run_config.start_run(workdir)  # its steps have none: they read as before
    sibling = str(tmp_path / "sibling")
    os.makedirs(sibling)
    theirs = run_config.start_run(sibling)
    manager = checkpoint.create_manager(sibling, 3)
    checkpoint.save(manager, 3, first.replace(step=first.step + 2), config, theirs)
    checkpoint.wait(manager)
    manager.close()
    ckpts = checkpoint.checkpoint_dir(workdir)
    shutil.copytree(os.path.join(checkpoint.checkpoint_dir(sibling), "3"), os.path.join(ckpts, "3"))
    assert ours.id != theirs.id
    manager = checkpoint.create_manager(workdir, 3)
    with caplog.at_level("WARNING", logger="camjax"):
        restored = checkpoint_restore.restore(manager, abstract, config)
    assert int(restored.step) == 2
    jax.tree.map(np.testing.assert_array_equal, restored.params, second.params)
    assert (
        f"it was saved by another run (run id '{theirs.id}'; this workdir's is '{ours.id}')"
        in caplog.text
    )
    os.remove(os.path.join(workdir, run_config.RUN_ID))
    assert int(checkpoint_restore.restore(manager, abstract, config).step) == 3
    manager.close()


def test_a_config_holding_inf_or_nan_saves_and_restores(tmp_path):
    """The metadata digest refused JSON's Infinity (allow_nan=False) that the config and orbax
    write: a run given an infinite value could never save."""
    config, state = tiny.get_config(), {"w": jnp.arange(3.0)}
    config.optim.grad_clip_norm = float("inf")
    config.eval.fixed_threshold = float("nan")
    manager = checkpoint.create_manager(str(tmp_path), 3)
    checkpoint.save(manager, 1, state, config)
    checkpoint.wait(manager)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    restored = checkpoint_restore.restore(manager, abstract, config)
    manager.close()
    np.testing.assert_array_equal(restored["w"], state["w"])


def test_saves_record_the_run_and_stop_when_another_training_took_the_workdir(tmp_path):
    """Each step records the id of the run it is given; a save that finds in workdir/run_id
    another run (a second training started there, or the file overwritten) or another
    training's hold on this run (a second training resumed it) writes nothing and says what to
    do; a run_id removed meanwhile is written again; a damaged one is a one-line error."""
    config, state = tiny.get_config(), {"w": jnp.arange(3.0)}
    workdir = str(tmp_path)
    path = os.path.join(workdir, run_config.RUN_ID)
    run = run_config.start_run(workdir)
    assert re.fullmatch(r"[0-9a-f]{16}", run.id) and run_config.read_run(workdir) == run
    manager = checkpoint.create_manager(workdir, 3)
    checkpoint.save(manager, 1, state, config, run)
    checkpoint.wait(manager)
    meta = os.path.join(checkpoint.checkpoint_dir(workdir), "1", "meta", "metadata")
    assert json.load(open(meta))["run"] == run.id
    other = run_config.start_run(workdir)  # another training, started from scratch there
    with pytest.raises(
        checkpoint.CheckpointError,
        match=rf"names run '{other.id}', not this run's '{run.id}'; nothing of step 2 was "
        rf"written\. If another training started in .*, let one of them go on; if the file was "
        rf"overwritten, write this run back \(echo {run.id} > .*run_id\) and rerun\.",
    ):
        checkpoint.save(manager, 2, state, config, run)
    run_config.start_run(workdir, run.id)  # another training, resuming this run
    with pytest.raises(
        checkpoint.CheckpointError,
        match=r"another training resumed this run in .* since this one started .*; nothing of "
        r"step 2 was written, and this one stops",
    ):
        checkpoint.save(manager, 2, state, config, run)
    os.remove(path)
    checkpoint.save(manager, 2, state, config, run)
    checkpoint.wait(manager)
    open(path, "w").write("7A3B" * 4 + "\n")  # damaged meanwhile: the save's own error type
    with pytest.raises(checkpoint.CheckpointError, match=r"run_id holds '7A3B7A3B7A3B7A3B', not"):
        checkpoint.save(manager, 3, state, config, run)
    run_config.write_run(workdir, run)
    manager.close()
    assert run_config.read_run(workdir) == run
    assert (
        json.load(open(meta.replace(f"{os.sep}1{os.sep}", f"{os.sep}2{os.sep}")))["run"] == run.id
    )
    open(path, "w").write("7A3B" * 4 + "\n")
    with pytest.raises(run_config.RunConfigError, match=r"not a run id and owner .*; restore or"):
        run_config.run_id(workdir)
    open(path, "w").write(run.id + "\n")  # the id alone, as a person writes it back
    assert run_config.read_run(workdir) == run_config.Run(run.id, "")
    os.remove(path)
    os.mkdir(path)
    with pytest.raises(run_config.RunConfigError, match=r"cannot read .*run_id \(Is a directory\)"):
        run_config.run_id(workdir)
    with pytest.raises(run_config.RunConfigError, match=r"cannot write .*run_id \(Is a direc"):
        run_config.start_run(workdir)


def test_a_step_removed_while_it_is_read_is_no_damage(two_steps, caplog):
    """Evaluation beside a run still training: the step being read is removed as an old one
    (keep_checkpoints). It is not reported as damage, and the steps on disk now are searched.
    (The other case, a newer step completing meanwhile, was measured, not tested: 668 of 668
    restores beside a run saving every step with keep_checkpoints=1, benchmarks/RESULTS.md.)"""
    config, workdir, abstract, first, _ = two_steps
    ckpts = checkpoint.checkpoint_dir(workdir)
    manager = checkpoint.create_manager(workdir, 3)
    state_args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))

    def read(step):
        if step == 2:
            shutil.rmtree(os.path.join(ckpts, "2"))  # by the training process, mid-read
            raise FileNotFoundError(os.path.join(ckpts, "2", "state"))
        return manager.restore(step, args=state_args)["state"]

    with caplog.at_level("WARNING", logger="camjax"):
        restored, step = checkpoint_restore._restore_newest_good(manager, config, read)
    manager.close()
    assert step == 1 and "Skipped" not in caplog.text
    jax.tree.map(np.testing.assert_array_equal, restored.params, first.params)


def test_a_listing_that_loses_a_step_is_retried_and_an_unreadable_directory_is_one_line(
    tmp_path, monkeypatch
):
    """orbax lists the steps, then reads each one's metadata: a step removed in between (by a
    run still training) fails the listing, which is made again; a directory that cannot be read
    is a CheckpointError naming it."""
    made = ocp.CheckpointManager
    failures = [FileNotFoundError("checkpoints/7"), NotADirectoryError("checkpoints/7")]

    def racing(*args, **kwargs):
        if failures:
            raise failures.pop()
        return made(*args, **kwargs)

    monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", racing)
    checkpoint.create_manager(str(tmp_path), 2).close()
    assert not failures

    def unreadable(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "checkpoints")

    monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", unreadable)
    with pytest.raises(
        checkpoint.CheckpointError,
        match=r"cannot read the checkpoints in .* "
        r"\(Permission denied\); fix the directory's permissions",
    ):
        checkpoint.create_manager(str(tmp_path), 2)


# ---- a disk too full for a save -----------------------------------------------------------------


def test_the_space_estimate_bounds_a_saved_step_closely_from_above(tmp_path):
    """With trained-like values (noise: zstd gains little on trained floats), the estimate is at
    least what the step takes on the filesystem, and not much more (measured on ext4: 1.21x)."""
    config = tiny.get_config()
    model = experiment.build_model(config)
    tx = optim.create_optimizer(config.optim, config.train.num_steps)
    state, _ = train_state.create_train_state(config, model, tx, experiment.make_mesh())
    rng = np.random.default_rng(0)
    state = jax.tree.map(
        lambda x: (
            x + rng.standard_normal(x.shape).astype(x.dtype)
            if jnp.issubdtype(x.dtype, jnp.floating)
            else x
        ),
        state,
    )
    manager = checkpoint.create_manager(str(tmp_path), 2)
    checkpoint.save(manager, 1, state, config)
    checkpoint.wait(manager)
    manager.close()
    step_dir = os.path.join(checkpoint.checkpoint_dir(str(tmp_path)), "1")
    paths = [r for r, _, _ in os.walk(step_dir)]
    paths += [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
    blocks = sum(os.stat(p).st_blocks * 512 for p in paths)
    # A compressing filesystem takes fewer blocks than the files' bytes: the closeness is
    # measured against the larger of the two.
    size = max(blocks, sum(os.path.getsize(p) for p in paths if os.path.isfile(p)))
    assert blocks <= checkpoint.step_bytes(state) <= 1.25 * size


def test_no_room_for_the_first_step_or_the_second_says_what_to_free(tmp_path, monkeypatch):
    """The preflight's advice: with no step or one step saved, nothing to remove; with more,
    the oldest step (orbax deletes old steps only after a new one completes)."""
    config = tiny.get_config()
    state = {"w": jnp.ones((1000,), jnp.float32)}
    manager = checkpoint.create_manager(str(tmp_path), 3)
    ckpts = checkpoint.checkpoint_dir(str(tmp_path))
    real = shutil.disk_usage
    room = {"free": True}

    def disk_usage(path):
        usage = real(path)
        return usage if room["free"] else usage._replace(free=1000)

    monkeypatch.setattr(checkpoint.shutil, "disk_usage", disk_usage)
    expected = [
        "no step was saved yet, so it starts over.",
        "it resumes from step 1, the newest complete one.",
        f"(e.g. the oldest step: rm -r {os.path.join(ckpts, '1')}) or train in another",
    ]
    for step, tail in enumerate(expected, start=1):
        room["free"] = False
        with pytest.raises(checkpoint.CheckpointError, match=re.escape(tail)) as refused:
            checkpoint.save(manager, step, state, config)
        # The only step is what a rerun resumes from: never advised for removal.
        assert ("rm -r" in str(refused.value)) == (step == 3)
        room["free"] = True
        checkpoint.save(manager, step, state, config)
        checkpoint.wait(manager)
    manager.close()


def test_a_disk_with_no_byte_free_is_said_to_be_full(tmp_path, monkeypatch):
    """0 bytes free, a full disk's figure: not enough room for the step, said with the numbers
    (needed: 4,000 bytes of array, 2,048 of its metadata and 262,144 of slack, 0.3 MB), not
    process 0's stand-in for a leftover copy that cannot be removed."""
    config, state = tiny.get_config(), {"w": jnp.ones((1000,), jnp.float32)}
    manager = checkpoint.create_manager(str(tmp_path), 3)
    ckpts = checkpoint.checkpoint_dir(str(tmp_path))
    real = shutil.disk_usage
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: real(path)._replace(free=0))
    with pytest.raises(
        checkpoint.CheckpointError,
        match=re.escape(
            "not enough disk space to save checkpoint step 1: it needs about 0.3 MB and 0.0 MB "
            f"are free in {ckpts}; nothing of it was written."
        ),
    ):
        checkpoint.save(manager, 1, state, config)
    manager.close()
    assert os.listdir(ckpts) == []


def test_a_save_orbax_refuses_at_once_is_one_line_unless_it_is_a_bug(tmp_path, monkeypatch):
    """orbax's save can fail before its background threads take over (preparing the step's
    directory): an error of the disk or filesystem is the one-line CheckpointError naming the
    step and the step a rerun resumes from (step 1, saved before); any other error is a bug
    and keeps its type."""
    config, state = tiny.get_config(), {"w": jnp.arange(3.0)}
    manager = checkpoint.create_manager(str(tmp_path), 3)
    ckpts = checkpoint.checkpoint_dir(str(tmp_path))
    checkpoint.save(manager, 1, state, config)
    checkpoint.wait(manager)

    def refused(step, args):
        raise error

    monkeypatch.setattr(manager, "save", refused)
    error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(ckpts, "2"))
    with pytest.raises(
        checkpoint.CheckpointError,
        match=re.escape(
            f"saving checkpoint step 2 in {ckpts} failed (No space left on device); the earlier "
            "steps are intact. Fix the cause (a full disk: free space there or train in another "
            "--workdir), then rerun: it resumes from step 1, the newest complete one."
        ),
    ):
        checkpoint.save(manager, 2, state, config)
    error = TypeError("a bug in a save")
    with pytest.raises(TypeError, match="a bug in a save"):
        checkpoint.save(manager, 2, state, config)
    monkeypatch.undo()
    manager.close()


class _FailedSaveManager:
    """What `checkpoint.wait` reads of a manager whose background save of step 1 failed."""

    directory = "/runs/x/checkpoints"

    def latest_step(self):
        return 1

    def wait_until_finished(self):
        raise OSError(errno.EFBIG, "File too large")

    def close(self):
        pass

    def reload(self):
        pass

    def all_steps(self):
        return []


def test_a_save_failing_while_a_camjax_error_propagates_leaves_that_error_one_line(tmp_path):
    """A full disk fails both config.json and the step's background save: the run stops on the
    RunConfigError while `wait` reports the save, and `wait` cleared the traceback of every
    exception in the save error's chain, the RunConfigError (its __context__) too, so the
    entry points printed it under a traceback as a bug."""
    (tmp_path / "config.json.tmp").mkdir()  # config.json cannot be written
    with pytest.raises(run_config.RunConfigError) as raised:
        try:
            run_config.save(str(tmp_path), tiny.get_config())
        finally:  # as training closes its checkpoints while the error propagates
            with pytest.raises(checkpoint.CheckpointError, match="no step was saved yet"):
                checkpoint.wait(_FailedSaveManager())
    assert "if any" in str(raised.value)
    assert cli._raised_by_camjax(raised.value)
