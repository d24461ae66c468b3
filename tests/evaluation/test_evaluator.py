"""Tests for camjax/evaluation/ (evaluator, report, gallery, export) and the entry points'
error paths, on the embedded dataset.

The WSOL metrics are checked against `tests/localization/wsol_reference.py`, an OpenCV copy of
the published evaluator's rules, on the very score maps the evaluator made.
"""

import errno
import itertools
import json
import os
import shutil
import types

import cv2
import jax
import numpy as np
import pytest

from camjax import cam as cam_lib
from camjax import checkpoint, experiment
from camjax.data import pipeline
from camjax.evaluation import evaluator as evaluator_lib
from camjax.evaluation import export, report
from camjax.evaluation import protocol as protocol_lib
from camjax.evaluation import run as run_lib
from camjax.localization import wsol_frame, wsol_io
from camjax.train import loop
from configs import tiny
from tests.localization import wsol_reference as ref
from tests.localization.test_boxes import cv2_largest_box, float_iou


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def trained(tiny_run, tmp_path_factory):
    """The session's trained tiny run, copied: evaluation writes into its workdir."""
    config, pristine = tiny_run
    workdir = str(tmp_path_factory.mktemp("run") / "run")
    shutil.copytree(pristine, workdir)
    return config.copy_and_resolve_references(), workdir


@pytest.fixture(scope="module")
def evaluated(trained):
    config, workdir = trained
    return config, workdir, run_lib.run_evaluation(config, workdir)


def test_run_evaluation_writes_metrics_and_gallery(evaluated):
    config, workdir, results = evaluated
    with open(os.path.join(workdir, "metrics.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(results))
    assert saved["step"] == config.train.num_steps
    tuned = saved["test_at_val_threshold"]
    assert tuned["num_images"] == config.data.num_test
    for key in ("top1_cls", "top5_cls", "top1_loc", "top5_loc", "gt_known_loc"):
        assert 0.0 <= tuned[key] <= 100.0
    # Localization correct implies GT-known correct; top-1 implies top-5.
    assert tuned["top1_loc"] <= tuned["top5_loc"] <= tuned["gt_known_loc"]
    assert saved["test_at_fixed_threshold"]["threshold"] == pytest.approx(0.2)
    # The chosen threshold is the validation split's best, reported on test.
    curve = saved["test_gt_known_loc_curve"]
    assert saved["test_gt_known_loc_oracle_max"] == pytest.approx(max(curve.values()))
    pictures = sorted(os.listdir(os.path.join(workdir, "gallery")))
    assert pictures == ["0000.png", "0001.png"]
    assert os.path.getsize(os.path.join(workdir, "gallery.png")) > 0


def test_results_that_cannot_be_written_are_one_line(trained, tmp_path):
    """A failure at the end (the disk filled during the evaluation, something in the way) names
    the file instead of ending in a traceback."""
    config, workdir = trained
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    os.makedirs(os.path.join(copy, "metrics.json.tmp"))
    with pytest.raises(OSError) as error:
        run_lib.run_evaluation(config, copy)
    assert str(error.value) == (
        f"cannot write {copy}/metrics.json.tmp (Is a directory); make room, or remove what is in "
        "the way, then rerun evaluate.py (the checkpoints are untouched)."
    )


def test_run_evaluation_reports_the_wsol_protocol(evaluated, capsys):
    config, _, results = evaluated
    w = results["wsol"]
    assert w["protocol"] == {
        "threshold_step": 0.01,
        "num_thresholds": 100,
        "iou_thresholds": [30, 50, 70],
        "eval_size": 64,
        "fixed_threshold": 0.2,
        "pxap": True,
        "boxes": True,
        "exact_float64": True,
    }
    val, test = w["val"], w["test"]
    assert val["num_images"] == config.data.num_validation
    assert test["num_images"] == config.data.num_test
    for split in (val, test):
        v2 = split["max_box_acc_v2_per_iou"]
        assert list(v2) == ["30", "50", "70"]
        assert split["max_box_acc_v2"] == pytest.approx(np.mean(list(v2.values())))
        # A looser IoU threshold never localizes fewer images.
        assert v2["30"] >= v2["50"] >= v2["70"]
        fixed = split["at_fixed_threshold"]
        assert fixed["box_acc"] <= split["max_box_acc"]
        assert fixed["top1_loc"] <= fixed["box_acc"]
        assert 0 <= split["pxap"] <= 100
    at_val = test["at_val_thresholds"]
    assert at_val["threshold"] == val["max_box_acc_threshold"]
    assert at_val["box_acc_v2_thresholds"] == val["max_box_acc_v2_thresholds"]
    assert at_val["box_acc"] <= test["max_box_acc"]
    assert at_val["box_acc_v2"] <= test["max_box_acc_v2"]
    assert at_val["top1_loc"] <= at_val["box_acc"]
    report.print_report(results)
    out = capsys.readouterr().out
    assert "MaxBoxAccV2 [contours]" in out and "PxAP" in out
    # Every localization row names its box rule, and the legend explains each one used.
    assert "GT-known loc acc [region]" in out and "MaxBoxAcc (IoU 50) [contour]" in out
    for rule in ("region", "contour", "contours"):
        assert f"  [{rule}] " in out


def test_an_evaluation_under_other_training_values_than_the_steps_is_said(trained, caplog):
    """config.json ahead of the steps (a run killed between writing it and committing its
    next step, after --resume_with_changes) or edited: the metrics were of another config
    than the step's, without a word (an outside fault injection)."""
    config, workdir = trained
    with caplog.at_level("WARNING", logger="camjax"):
        _, _, step = run_lib.restore_evaluator(config, workdir)
    assert "trained with other values" not in caplog.text
    other = config.copy_and_resolve_references()
    other.data.std = (0.01, 0.01, 0.01)
    other.eval.top_k = 3  # evaluation's own settings are not training's, nor its choices:
    other.data.test_split, other.data.num_test, other.model.dtype = "validation", 9, "bfloat16"
    with caplog.at_level("WARNING", logger="camjax"):
        run_lib.restore_evaluator(other, workdir)
    assert (
        f"Checkpoint step {step} was trained with other values than this evaluation's "
        "(data.std: run [0.229, 0.224, 0.225], given [0.01, 0.01, 0.01]): the numbers below "
        "are of this config." in caplog.text
    )


@pytest.fixture(scope="module")
def restored(trained):
    """The trained run's config, an Evaluator with the WSOL protocol's device path (float32
    score maps; the exact float64 path has its own test), and the variables; shared so that
    its two jitted steps compile once for all tests."""
    config, workdir = trained
    config = config.copy_and_resolve_references()
    config.eval.wsol.exact_float64 = False
    ev, variables, _ = run_lib.restore_evaluator(config, workdir)
    return config, ev, variables


def test_wsol_counts_equal_the_opencv_reference_on_the_same_maps(restored):
    """Box counts (V1, V2, top-1 loc), PxAP and the metrics, on a ragged (padded) split."""
    config, ev, variables = restored
    model, protocol = ev.model, ev.protocol
    source = experiment.data_sources(config)["validation"]
    n, val_threshold = 11, 0.37  # 11 of 16 images: the batch of 16 has 5 padding rows

    legacy, counts = ev.evaluate_wsol(variables, source, n, val_threshold)
    # The evaluator's score maps, from the same jitted step.
    maps, quantized = [], []
    for host_batch, out in ev.wsol_outputs(variables, source, n):
        valid = np.asarray(host_batch["valid"])
        maps.append(np.asarray(out["scoremaps"])[valid])
        quantized.append(np.asarray(out["quantized"])[valid])
    maps, quantized = np.concatenate(maps), np.concatenate(quantized)
    assert maps.shape == (n, 64, 64) and maps.dtype == np.float32
    np.testing.assert_array_equal(quantized, (maps.astype(np.float64) * 255).astype(np.uint8))

    # Everything else independently, from the raw examples.
    examples = [source[i] for i in range(n)]
    masks = [(np.asarray(e["mask"])[..., 0] > 0).astype(np.uint8) for e in examples]
    gts = []
    for m in masks:  # the inclusive GT box is the object's pixel extent (a tight-box dataset)
        ys, xs = np.nonzero(m)
        gts.append(np.array([[xs.min(), ys.min(), xs.max(), ys.max()]]))
    rows = [pipeline.EvalPreprocess(ev.prep).map(e) for e in examples]
    images = pipeline.normalize_images(
        np.stack([r["image"] for r in rows]), config.data.mean, config.data.std
    )
    labels = np.array([r["label"] for r in rows])
    logits, out = model.apply(variables, images, train=False)
    top1 = np.asarray(logits).argmax(-1) == labels

    # The maps are the protocol's: GT-class CAM, OpenCV bicubic, min-max (float64 there).
    cams = np.asarray(
        cam_lib.cams_for_classes(out["feature_map"], variables["params"]["head"]["kernel"], labels)
    )
    expected = np.stack([ref.normalize_scoremap(ref.resize_cam(c, (64, 64))) for c in cams])
    np.testing.assert_allclose(maps, expected, atol=2e-5)

    grid = protocol.thresholds
    curve = np.append(grid, protocol.fixed_threshold)
    ref_v1 = ref.box_correct_counts(maps, gts, curve, (50,), multi_contour_eval=False)
    ref_v2 = ref.box_correct_counts(maps, gts, curve, (30, 50, 70), multi_contour_eval=True)
    sel = np.flatnonzero(top1)
    ref_top1 = ref.box_correct_counts(
        maps[sel], [gts[i] for i in sel], [0.2, val_threshold], (50,), multi_contour_eval=False
    )
    np.testing.assert_array_equal(counts.v1.counts, ref_v1)
    np.testing.assert_array_equal(counts.v2.counts, ref_v2)
    np.testing.assert_array_equal(counts.top1_loc.counts, ref_top1)
    true_hist, false_hist = ref.pxap_histograms(maps, masks, grid)
    np.testing.assert_array_equal(counts.pxap.histograms, np.stack([true_hist, false_hist]))

    summary = counts.summary()
    t = len(grid)
    assert summary["num_images"] == n
    assert summary["max_box_acc"] == ref.max_box_acc(ref_v1[:, :t], n)[0]
    assert summary["max_box_acc_threshold"] == grid[np.argmax(ref_v1[0, :t])]
    v2_max = ref.max_box_acc(ref_v2[:, :t], n)
    assert summary["max_box_acc_v2"] == pytest.approx(np.mean(v2_max), rel=1e-12)
    assert list(summary["max_box_acc_v2_per_iou"].values()) == list(v2_max)
    fixed = summary["at_fixed_threshold"]
    assert fixed["box_acc"] == 100 * ref_v1[0, -1] / n
    assert fixed["top1_loc"] == 100 * ref_top1[0, 0] / n
    assert summary["pxap"] == pytest.approx(ref.pxap(true_hist, false_hist), rel=1e-12)
    assert counts.summary(val=counts)["at_val_thresholds"]["box_acc"] == summary["max_box_acc"]

    # The pass with masks gives the same legacy counts as the plain evaluation.
    plain = ev.evaluate(variables, source, n)
    for k in plain.counts:
        np.testing.assert_array_equal(legacy.counts[k], plain.counts[k])


def test_exact_float64_counts_equal_the_reference_where_float32_maps_do_not(trained, restored):
    """config.eval.wsol.exact_float64: the score maps are the reference's float64 OpenCV maps
    of the evaluator's own CAMs, bit for bit, so every count and PxAP equals the reference's;
    the device's float32 maps (exact_float64=False) of the same images differ by a uint8 level
    somewhere."""
    config, workdir = trained
    config = config.copy_and_resolve_references()
    config.eval.wsol.exact_float64 = True
    config.eval.wsol.eval_size = e = 224  # more pixels: float32's level moves are rare
    ev, variables, _ = run_lib.restore_evaluator(config, workdir)
    protocol = ev.protocol
    assert protocol.exact_float64 and protocol.to_dict()["exact_float64"]
    source = experiment.data_sources(config)["validation"]
    n, val_threshold = 11, 0.37  # a ragged batch: 5 padding rows

    _, counts = ev.evaluate_wsol(variables, source, n, val_threshold)
    cams, maps, quantized, top1 = [], [], [], []
    for host_batch, out in ev.wsol_outputs(variables, source, n):
        valid = np.asarray(host_batch["valid"])
        assert out["scoremaps"].dtype == np.float64
        cams.append(out["cams"][valid])
        maps.append(out["scoremaps"][valid])
        quantized.append(out["quantized"][valid])
        top1.append(np.asarray(out["top1_correct"])[valid])
    cams, maps, quantized = np.concatenate(cams), np.concatenate(maps), np.concatenate(quantized)
    top1 = np.concatenate(top1)

    # The reference's pipeline on the same CAMs, and everything else from the raw examples.
    expected = np.stack([ref.normalize_scoremap(ref.resize_cam(c, (e, e))) for c in cams])
    np.testing.assert_array_equal(maps, expected)
    np.testing.assert_array_equal(quantized, (expected * 255).astype(np.uint8))
    examples = [source[i] for i in range(n)]
    gt_boxes, masks = [], []
    for ex in examples:
        m = np.asarray(ex["mask"])[..., 0] > 0
        ys, xs = np.nonzero(m)  # the tight box, resized as the reference's resize_bbox
        h, w = m.shape
        box = np.array([xs.min() * e / w, ys.min() * e / h, xs.max() * e / w, ys.max() * e / h])
        gt_boxes.append(box.astype(int)[None])
        masks.append(cv2.resize(m.astype(np.uint8), (e, e), interpolation=cv2.INTER_NEAREST))
    grid = protocol.thresholds
    curve = np.append(grid, protocol.fixed_threshold)
    ref_v1 = ref.box_correct_counts(expected, gt_boxes, curve, (50,), multi_contour_eval=False)
    ref_v2 = ref.box_correct_counts(expected, gt_boxes, curve, (30, 50, 70))
    sel = np.flatnonzero(top1)
    ref_top1 = ref.box_correct_counts(
        expected[sel], [gt_boxes[i] for i in sel], [0.2, val_threshold], (50,), False
    )
    np.testing.assert_array_equal(counts.v1.counts, ref_v1)
    np.testing.assert_array_equal(counts.v2.counts, ref_v2)
    np.testing.assert_array_equal(counts.top1_loc.counts, ref_top1)
    true_hist, false_hist = ref.pxap_histograms(expected, masks, grid)
    np.testing.assert_array_equal(counts.pxap.histograms, np.stack([true_hist, false_hist]))
    assert counts.summary()["pxap"] == ref.pxap(true_hist, false_hist)

    # The device path's float32 maps of the same images: a level off somewhere.
    config32 = config.copy_and_resolve_references()
    config32.eval.wsol.exact_float64 = False
    ev32 = evaluator_lib.Evaluator(
        config32, ev.model, ev.mesh, protocol_lib.wsol_protocol(config32)
    )
    float32 = np.concatenate(
        [
            np.asarray(out["quantized"])[np.asarray(hb["valid"])]
            for hb, out in ev32.wsol_outputs(variables, source, n)
        ]
    )
    assert float32.shape == quantized.shape
    assert np.any(float32 != quantized)
    assert np.max(np.abs(float32.astype(int) - quantized.astype(int))) == 1

    # The export writes those float64 maps themselves.
    exported = [m[np.asarray(hb["valid"])] for hb, m in ev.scoremap_outputs(variables, source, n)]
    np.testing.assert_array_equal(np.concatenate(exported), expected)


def test_evaluator_threshold_chosen_on_validation(restored):
    config, ev, variables = restored
    sources = experiment.data_sources(config)
    val = ev.evaluate(variables, sources["validation"])
    again = ev.evaluate(variables, sources["validation"])
    assert val.counts["n"] == config.data.num_validation
    for k in val.counts:
        np.testing.assert_array_equal(val.counts[k], again.counts[k])  # deterministic
    half = ev.evaluate(variables, sources["validation"], max_images=5)
    assert half.counts["n"] == 5


def test_a_split_smaller_than_a_batch_runs_one_batch_rounded_up_to_the_devices(
    restored, monkeypatch
):
    """Every padding row runs the whole method: the first 5 images on 8 devices run as one batch
    of 8, not of config.eval.batch_size (16), and count as they do padded to 16; 12 images and
    the whole split (16) run in batches of 16."""
    config, ev, variables = restored
    source = experiment.data_sources(config)["validation"]
    assert config.eval.batch_size == 16 and len(source) == 16 and jax.device_count() == 8
    sizes, padded_to = [], {}
    eval_batches = pipeline.eval_batches

    def recorded(source, cfg, global_batch_size, *args):
        sizes.append(global_batch_size)
        return eval_batches(source, cfg, padded_to.get("size", global_batch_size), *args)

    monkeypatch.setattr(pipeline, "eval_batches", recorded)
    small = ev.evaluate(variables, source, max_images=5).counts
    for n in (12, 0):
        ev.evaluate(variables, source, max_images=n)
    assert sizes == [8, 16, 16]
    padded_to["size"] = 16
    padded = ev.evaluate(variables, source, max_images=5).counts
    assert small["n"] == padded["n"] == 5
    for k in small:
        np.testing.assert_array_equal(small[k], padded[k])


@pytest.mark.parametrize("wsol", [False, True], ids=["paper", "wsol"])
def test_weights_that_overflow_stop_the_evaluation_instead_of_scoring_nans(restored, wsol):
    """Finite weights (they pass the checkpoint's checks) that overflow the network: NaN logits
    and maps would count as some class and as no box, and print a plausible report."""
    config, ev, variables = restored
    huge = jax.tree.map(lambda x: x * 1e30, variables)
    source = experiment.data_sources(config)["validation"]
    evaluate = ev.evaluate_wsol if wsol else ev.evaluate
    with pytest.raises(evaluator_lib.NonFiniteOutputError, match=r"hold NaN or Inf on \d+ images"):
        evaluate(huge, source, max_images=4)


def test_no_checkpoint_is_a_clear_error(tmp_path, data_dir):
    config = tiny.get_config()
    config.data.data_dir = data_dir
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        run_lib.run_evaluation(config, str(tmp_path))


def test_wrong_config_for_checkpoint_names_the_difference(trained):
    config, workdir = trained
    other = tiny.get_config()
    other.data.data_dir = config.data.data_dir
    other.model.width = 1 / 8
    with pytest.raises(checkpoint.CheckpointError, match=r"width: checkpoint 0.0625, config 0.125"):
        run_lib.run_evaluation(other, workdir)


def test_unknown_model_and_dataset_names(tmp_path):
    config = tiny.get_config()
    config.model.name = "resnet_gap"
    with pytest.raises(ValueError, match="Unknown model 'resnet_gap'"):
        experiment.build_model(config)
    config = tiny.get_config()
    config.data.name = "imagenet"
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'"):
        experiment.data_sources(config)
    config = tiny.get_config()
    config.model.output_stride = 32
    with pytest.raises(ValueError, match="output_stride must be 2, 4, 8 or 16"):
        loop.train_and_evaluate(config, str(tmp_path))


def test_pxap_without_masks_is_a_clear_error(restored):
    config, ev, variables = restored
    no_masks = [{"image": np.zeros((64, 64, 3), np.uint8), "label": 0, "objects": {"bbox": []}}]
    with pytest.raises(ValueError, match=r"set config.eval.wsol.pxap = False"):
        next(ev.wsol_outputs(variables, no_masks))
    with pytest.raises(ValueError, match="no WSOL protocol"):
        model, mesh = experiment.build_model(config), ev.mesh
        next(evaluator_lib.Evaluator(config, model, mesh).wsol_outputs(variables, no_masks))


def test_exported_scoremaps_give_the_reference_the_same_counts(trained, tmp_path):
    """evaluate.py --export_dir: the reference's files; scoring them with the OpenCV reference
    (maps, boxes and the exported masks read back as its get_mask does) gives camjax's own
    counts and PxAP, and the metadata round-trips the dataset's labels and boxes."""

    config, workdir = trained
    out = str(tmp_path / "export")
    config = config.copy_and_resolve_references()
    config.eval.max_images = 11  # a ragged last batch: padding rows must not be exported
    config.eval.wsol.eval_size = 224  # the reference's evaluation frame
    stats = export.export_wsol(config, workdir, out)
    assert stats["validation"]["images"] == 11
    evaluator, variables, _ = run_lib.restore_evaluator(config, workdir)
    protocol = evaluator.protocol
    source = experiment.data_sources(config)["test"]
    _, counts = evaluator.evaluate_wsol(variables, source, max_images=11)

    meta = wsol_io.read_metadata(os.path.join(out, "metadata", "CUB", "test"))
    assert meta.image_ids == tuple(f"test/{i:06d}.png" for i in range(11))
    np.testing.assert_array_equal(meta.class_labels, [source[i]["label"] for i in range(len(meta))])
    maps = wsol_frame.load_scoremaps(os.path.join(out, "scoremaps", "test"), meta.image_ids)
    gt, num = wsol_frame.resized_gt_boxes(meta)
    gts = [gt[i, : num[i]] for i in range(len(meta))]
    curve = np.append(protocol.thresholds, protocol.fixed_threshold)
    np.testing.assert_array_equal(
        ref.box_correct_counts(list(maps), gts, curve, (30, 50, 70), multi_contour_eval=True),
        counts.v2.counts,
    )
    np.testing.assert_array_equal(
        ref.box_correct_counts(list(maps), gts, curve, (50,), multi_contour_eval=False),
        counts.v1.counts,
    )

    # PxAP as the reference's MaskEvaluator computes it from the exported files alone:
    # metadata/OpenImages/<split> lists the masks under <mask_root>/OpenImages.
    masked = wsol_io.read_metadata(os.path.join(out, "metadata", "OpenImages", "test"))
    assert masked.image_ids == meta.image_ids and masked.boxes is None
    mask_root = os.path.join(out, "masks", "OpenImages")
    masks = [
        ref.get_mask(mask_root, paths, ignore)
        for paths, ignore in zip(masked.mask_paths, masked.ignore_paths, strict=True)
    ]
    for i, m in enumerate(masks):  # the very masks camjax's PxAP used
        want = protocol_lib.protocol_mask(source[i]["mask"], 224, source[i].get("ignore_mask"))
        np.testing.assert_array_equal(m, want)
    true_hist, false_hist = ref.pxap_histograms(list(maps), masks, protocol.thresholds)
    np.testing.assert_array_equal(counts.pxap.histograms, np.stack([true_hist, false_hist]))
    assert counts.summary()["pxap"] == ref.pxap(true_hist, false_hist)


@pytest.mark.parametrize("part", ["scoremaps", "metadata"])
def test_an_export_that_cannot_be_written_is_one_line(trained, tmp_path, monkeypatch, part):
    """A full disk while the maps or the metadata are written: one line naming the file, which
    every process of a multi-host job raises (they agree after each batch and split)."""
    config, workdir = trained
    config = config.copy_and_resolve_references()
    config.eval.max_images, config.eval.wsol.eval_size = 3, 224

    def full_disk(root, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(root, "x"))

    if part == "scoremaps":
        monkeypatch.setattr(wsol_frame, "save_scoremaps", full_disk)
    else:
        monkeypatch.setattr(wsol_io, "write_metadata", full_disk)
    with pytest.raises(OSError) as error:
        export.export_wsol(config, workdir, str(tmp_path / "export"))
    assert str(error.value).startswith(f"cannot write {tmp_path / 'export'}/")
    assert str(error.value).endswith(
        "/x (No space left on device); make room, or remove what is in the way, then export "
        "again (the run's checkpoints are untouched)."
    )


def test_a_bug_in_an_export_keeps_its_traceback(trained, tmp_path, monkeypatch):
    """Only OSErrors become one line; anything else is raised as it was (on the process where it
    happened, after the processes agreed to stop)."""
    config, workdir = trained
    config = config.copy_and_resolve_references()
    config.eval.max_images, config.eval.wsol.eval_size = 3, 224

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(wsol_frame, "save_scoremaps", bug)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        export.export_wsol(config, workdir, str(tmp_path / "export"))


def test_export_at_another_size_than_224_is_refused(trained, tmp_path):
    """The reference resizes boxes and masks to 224 whatever the maps' size: a 64x64 export
    would score MaxBoxAcc 0 there, so it fails first and says how to export at 224."""
    config, workdir = trained
    assert config.eval.wsol.eval_size in (0, 64) and config.data.image_size == 64
    out = tmp_path / "export"
    with pytest.raises(ValueError, match=r"--config\.eval\.wsol\.eval_size=224"):
        export.export_wsol(config, workdir, str(out))
    assert not out.exists()  # nothing written


def test_an_export_without_the_wsol_protocol_is_a_one_line_error():
    """evaluate.py asks check_exportable before it evaluates: with the WSOL protocol off there
    is no eval size or score map to export, which it says in one line (not an AttributeError)."""
    config = tiny.get_config()
    config.eval.wsol.enabled = False
    with pytest.raises(ValueError, match=r"set config\.eval\.wsol\.enabled = True\.$"):
        export.check_exportable(config)
    config.eval.wsol.enabled, config.eval.wsol.eval_size = True, 224
    export.check_exportable(config)  # the reference's frame: nothing to say


def _stub_evaluator(batches, *, boxes=True, pxap=False, exact_float64=False):
    """What export_split reads of an evaluator: its protocol's flags, the network's image size
    (64) and `scoremap_outputs`, here fixed (host batch, (B, 224, 224) maps) pairs."""
    protocol = types.SimpleNamespace(
        eval_size=224, boxes=boxes, pxap=pxap, exact_float64=exact_float64
    )
    config = types.SimpleNamespace(data=types.SimpleNamespace(image_size=64))

    def scoremap_outputs(variables, source, max_images=0, masks=False):
        assert masks == pxap
        return iter(batches)

    return types.SimpleNamespace(
        protocol=protocol, config=config, scoremap_outputs=scoremap_outputs
    )


def _host_batch(ids, index, valid, label, boxes, num_boxes, original_size, mask=None):
    batch = {
        "image_id": np.array([i.encode() for i in ids], object),  # tfds hands out bytes
        "index": np.array(index),
        "valid": np.array(valid),
        "label": np.array(label),
        "boxes": np.array(boxes, np.float32),
        "num_boxes": np.array(num_boxes),
        "original_size": np.array(original_size),  # (height, width)
    }
    if mask is not None:
        batch["mask"] = mask
    return batch


def _lines(path):
    with open(path) as f:
        return f.read().splitlines()


def test_export_split_writes_the_reference_files_from_the_valid_rows_in_index_order(tmp_path):
    """The metadata, checked line by line against the reference's text format: ids in index
    order (rows arrive host-major from an all-gather, so not in order), ids decoded from bytes,
    image sizes as width,height of non-square originals, original-pixel inclusive boxes
    (a box [a, b) of 64 px scales by original/64, then its end is b - 1) without the padding
    boxes past num_boxes, no padding row, float32 maps and no mask files without PxAP."""
    pad = [0, 0, 0, 0]
    first = _host_batch(
        ids=["val/a.jpg", "val/c.jpg"],
        index=[0, 2],
        valid=[True, True],
        label=[3, 4],
        boxes=[[[0, 0, 32, 64], pad], [[8, 8, 16, 24], pad]],
        num_boxes=[1, 1],
        original_size=[[100, 200], [64, 64]],
    )
    second = _host_batch(
        ids=["val/b.jpg", "val/padding.jpg"],
        index=[1, 3],
        valid=[True, False],
        label=[1, 0],
        boxes=[[[16, 32, 48, 64], [0, 0, 8, 8]], [pad, pad]],
        num_boxes=[2, 0],
        original_size=[[50, 40], [64, 64]],
    )
    maps = np.linspace(0, 1, 4 * 224 * 224, dtype=np.float32).reshape(4, 224, 224)
    ev = _stub_evaluator([(first, maps[:2]), (second, maps[2:])])
    out = str(tmp_path)
    stats = export.export_split(ev, None, None, "val", out, "wsol_shapes")

    assert stats["images"] == 3
    assert stats["images_per_second"] == pytest.approx(3 / stats["seconds"])
    meta = os.path.join(out, "metadata", "CUB", "val")  # the reference's name for boxes
    assert _lines(os.path.join(meta, "image_ids.txt")) == ["val/a.jpg", "val/b.jpg", "val/c.jpg"]
    assert _lines(os.path.join(meta, "class_labels.txt")) == [
        "val/a.jpg,3",
        "val/b.jpg,1",
        "val/c.jpg,4",
    ]
    assert _lines(os.path.join(meta, "image_sizes.txt")) == [
        "val/a.jpg,200,100",
        "val/b.jpg,40,50",
        "val/c.jpg,64,64",
    ]
    # a: x 0..32 * 200/64 = 0..100, y 0..64 * 100/64 = 0..100; b: x * 40/64, y * 50/64
    # (8 * 50/64 = 6.25 rounds to 6); c: 64 x 64, unscaled.
    assert _lines(os.path.join(meta, "localization.txt")) == [
        "val/a.jpg,0,0,99,99",
        "val/b.jpg,10,25,29,49",
        "val/b.jpg,0,0,4,5",
        "val/c.jpg,8,8,15,23",
    ]
    for image_id, want in (("val/a.jpg", maps[0]), ("val/c.jpg", maps[1]), ("val/b.jpg", maps[2])):
        got = np.load(os.path.join(out, "scoremaps", "val", image_id + ".npy"))
        assert got.dtype == np.float32  # the device's maps, half the disk of float64
        np.testing.assert_array_equal(got, want)
    assert not os.path.exists(os.path.join(out, "scoremaps", "val", "val", "padding.jpg.npy"))
    assert sorted(os.listdir(out)) == ["metadata", "scoremaps"]
    assert os.listdir(os.path.join(out, "metadata")) == ["CUB"]


@pytest.mark.parametrize("dataset, num_boxes", [("openimages30k_wsol", 0), ("wsol_shapes", 1)])
def test_export_split_without_box_metrics_lists_no_boxes_under_the_dataset_name(
    tmp_path, dataset, num_boxes
):
    """PxAP alone (a mask-only split like OpenImages30k, or a boxed one scored without box
    metrics): box metadata without boxes under the dataset's own name (not the reference's
    CUB, whose box evaluator would run), the masks' metadata under OpenImages, and each mask
    as two PNGs."""
    mask = np.zeros((1, 224, 224), np.uint8)
    mask[0, :10], mask[0, -5:] = 1, 255
    batch = _host_batch(
        ids=["test/x/1.jpg"],
        index=[0],
        valid=[True],
        label=[7],
        boxes=[[[0, 0, 0, 0]]],
        num_boxes=[num_boxes],
        original_size=[[300, 400]],
        mask=mask,
    )
    maps = np.full((1, 224, 224), 0.5, np.float32)
    ev = _stub_evaluator([(batch, maps)], boxes=False, pxap=True)
    export.export_split(ev, None, None, "test", str(tmp_path), dataset)
    assert sorted(os.listdir(tmp_path / "metadata")) == ["OpenImages", dataset]
    meta = tmp_path / "metadata" / dataset / "test"
    assert _lines(meta / "image_ids.txt") == ["test/x/1.jpg"]
    assert _lines(meta / "localization.txt") == []
    assert _lines(tmp_path / "metadata" / "OpenImages" / "test" / "localization.txt") == [
        "test/x/1.jpg,test/test/x/1.jpg.mask.png,test/test/x/1.jpg.ignore.png"
    ]
    masks = tmp_path / "masks" / "OpenImages" / "test" / "test" / "x"
    for name, on in (("1.jpg.mask.png", mask[0] == 1), ("1.jpg.ignore.png", mask[0] == 255)):
        np.testing.assert_array_equal(cv2.imread(str(masks / name), cv2.IMREAD_GRAYSCALE) > 0, on)


def test_a_boxed_export_with_an_image_without_boxes_fails_before_any_map_is_written(tmp_path):
    """The reference's box evaluator, as camjax's, needs a GT box for every image: one image
    without any is named in one line, before a file is written (dropping every box of the
    split instead left the reference nothing to score). Padding rows have none, and count not."""
    batch = _host_batch(
        ids=["val/a.jpg", "val/b.jpg", "val/padding.jpg"],
        index=[0, 1, 2],
        valid=[True, True, False],
        label=[0, 0, 0],
        boxes=[[[0, 0, 8, 8]]] * 3,
        num_boxes=[1, 0, 0],
        original_size=[[64, 64]] * 3,
    )
    ev = _stub_evaluator([(batch, np.zeros((3, 224, 224), np.float32))])
    with pytest.raises(
        ValueError,
        match=r"^image 'val/b.jpg' of split 'val' has no GT box, .*"
        r"--config\.eval\.wsol\.boxes=False",
    ):
        export.export_split(ev, None, None, "val", str(tmp_path), "wsol_shapes")
    assert list(tmp_path.iterdir()) == []


def test_an_image_id_longer_than_512_bytes_fails_before_any_map_is_written(tmp_path):
    """Ids travel to process 0 as 512-byte rows: a longer one (counted in UTF-8 bytes, not
    characters) is refused before this host writes a file, so every host stops at the same
    batch; 512 bytes exactly still fit."""
    export._encode_ids(["a" * 512, "é" * 256])  # fits
    for too_long in ("a" * 513, "é" * 257):
        with pytest.raises(ValueError, match="image id longer than 512 bytes"):
            export._encode_ids([too_long])
    batch = _host_batch(
        ["val/ok.jpg", "val/" + "x" * 600],
        [0, 1],
        [True, True],
        [0, 0],
        [[[0, 0, 8, 8]]] * 2,
        [1, 1],
        [[64, 64]] * 2,
    )
    ev = _stub_evaluator([(batch, np.zeros((2, 224, 224), np.float32))])
    with pytest.raises(ValueError, match="image id longer than 512 bytes"):
        export.export_split(ev, None, None, "val", str(tmp_path), "wsol_shapes")
    assert list(tmp_path.iterdir()) == []


def test_threshold_grid_is_every_step_strictly_between_0_and_1():
    """The paper's CAM thresholds: step, 2 step, ... below 1, never 0 (the whole image) nor 1
    (the peak pixel alone); each exactly its decimal in float32 (the curve's keys in
    metrics.json), the default step 0.05's too."""
    np.testing.assert_array_equal(
        evaluator_lib.threshold_grid(0.05), np.arange(1, 20, dtype=np.float32) / 20
    )
    grid = evaluator_lib.threshold_grid(0.1)
    assert grid.dtype == np.float32
    np.testing.assert_array_equal(grid, np.float32([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]))
    np.testing.assert_array_equal(evaluator_lib.threshold_grid(0.3), np.float32([0.3, 0.6, 0.9]))
    for step in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"threshold_grid_step must be in \(0, 1\)"):
            evaluator_lib.threshold_grid(step)


def test_host_rows_of_a_multi_host_array_are_its_shards_in_row_order():
    """The multi-host branch: this host's shards come in device order, not row order; their
    rows are concatenated by where each starts (a shard starting at row 0 has start None)."""

    def shard(start, rows):
        return types.SimpleNamespace(index=(slice(start, None),), data=np.asarray(rows))

    x = types.SimpleNamespace(
        is_fully_addressable=False,
        addressable_shards=[shard(4, [[4], [5]]), shard(None, [[0], [1]]), shard(2, [[2], [3]])],
    )
    np.testing.assert_array_equal(evaluator_lib.host_rows(x), np.arange(6)[:, None])
    ready = np.arange(3)
    assert evaluator_lib.host_rows(ready) is ready  # a host-made numpy array as it is


def test_paper_counts_equal_an_independent_count_over_several_ragged_batches(trained):
    """evaluate()'s counts of the first 10 test images in batches of 8: a full batch, then 2
    images and 6 padding rows (copies of the last image, which count nowhere), at IoU >= 0.3.
    Recomputed here from the network's outputs: top-1 and top-5 classes by numpy's ranking
    of the logits; the paper's box (the largest 8-connected region, by OpenCV, of the GT
    class's max-normalised CAM >= t) at t = 0.1, ..., 0.9 against the GT boxes by float IoU
    for GT-known loc, and for top-1 / top-5 loc only where that class is right; the centered
    boxes of every size pair (0.05 to 1 of the image) by float IoU. Pins which rows, classes,
    maps and IoU threshold reach which count, that each batch's host rows meet their own
    device outputs, that stop() is asked after each batch, and the WSOL step's top-1."""
    config, workdir = trained
    config = config.copy_and_resolve_references()
    config.eval.batch_size, config.eval.iou_threshold = 8, 0.3
    ev, variables, _ = run_lib.restore_evaluator(config, workdir)
    source = experiment.data_sources(config)["test"]
    n, size = 10, config.data.image_size
    asked = []

    def stop():
        asked.append(True)
        return False

    got = ev.evaluate(variables, source, n, stop=stop).counts
    assert len(asked) == 2

    rows = [pipeline.EvalPreprocess(ev.prep).map(source[i]) for i in range(n)]
    images = pipeline.normalize_images(
        np.stack([r["image"] for r in rows]), config.data.mean, config.data.std
    )
    labels = np.array([r["label"] for r in rows])
    gts = [r["boxes"][: r["num_boxes"]] for r in rows]
    logits, out = ev.model.apply(variables, images, train=False)
    ranked = np.argsort(-np.asarray(logits), axis=-1)
    top1, top5 = ranked[:, 0] == labels, np.any(ranked[:, :5] == labels[:, None], -1)
    assert 0 < top1.sum() < top5.sum() < n  # every count below tells them apart
    kernel = variables["params"]["head"]["kernel"]
    cams = cam_lib.cams_for_classes(out["feature_map"], kernel, labels)
    maps = np.asarray(cam_lib.postprocess(cams, (size, size), method="bicubic", normalize="max"))

    thresholds = np.arange(1, 10, dtype=np.float32) / 10
    best = np.zeros((n, len(thresholds)))  # the paper box's best IoU with a GT box
    for i, j in np.ndindex(best.shape):
        box = cv2_largest_box(maps[i] >= thresholds[j])  # all zeros where no pixel: IoU 0
        best[i, j] = max(float_iou(box, g) for g in gts[i])
    fractions = np.arange(1, 21) / 20
    sides = np.round(fractions * size)
    starts = np.floor((size - sides) / 2)
    center = np.zeros((len(fractions) ** 2, n))  # each centered box's best IoU, per image
    for k, (w, h) in enumerate(itertools.product(range(len(fractions)), repeat=2)):
        box = (starts[w], starts[h], starts[w] + sides[w], starts[h] + sides[h])
        center[k] = [max(float_iou(box, g) for g in gt) for gt in gts]
    hit = best >= 0.3
    assert 0 < hit.sum() < hit.size and np.any(hit != (best >= 0.5))
    assert np.any(center[:, -1] >= 0.3)  # the padded image is boxed: padding would count

    assert int(got["n"]) == n
    assert int(got["top1_cls"]) == top1.sum() and int(got["topk_cls"]) == top5.sum()
    np.testing.assert_array_equal(got["gt_known"], hit.sum(0))
    np.testing.assert_array_equal(got["top1_loc"], hit[top1].sum(0))
    np.testing.assert_array_equal(got["topk_loc"], hit[top5].sum(0))
    np.testing.assert_array_equal(got["center_box"], np.sum(center >= 0.3, axis=1))
    top1_correct = [
        np.asarray(out["top1_correct"])[np.asarray(hb["valid"])]
        for hb, out in ev.wsol_outputs(variables, source, n)
    ]
    np.testing.assert_array_equal(np.concatenate(top1_correct), top1)


@pytest.mark.parametrize("where", ["map", "logit"])
def test_one_non_finite_value_in_one_image_stops_the_evaluation(restored, where):
    """The guard counts an image whose logits or map hold any NaN or Inf, not only one whose
    every value is (as weights that overflow make): one pixel of one image's map (Ablation-CAM
    when a class score is exactly 0), or one logit of one image, the rest finite."""
    config, ev, variables = restored
    e = evaluator_lib.Evaluator(config, ev.model, ev.mesh)
    cams_of = e._cams

    def one_bad_value(variables, batch):
        logits, cams = cams_of(variables, batch)
        if where == "logit":
            return logits.at[2, 3].set(np.inf), cams
        return logits, cams.at[2, 5, 7].set(np.nan)

    e._cams = one_bad_value  # read when the step is traced, on its first batch
    source = experiment.data_sources(config)["validation"]
    with pytest.raises(evaluator_lib.NonFiniteOutputError, match=r"hold NaN or Inf on 1 images"):
        e.evaluate(variables, source, max_images=4)


def test_host_counts_are_summed_over_hosts_and_device_counts_are_not(restored, monkeypatch):
    """Each host counts its own rows' classes and boxes, added over the hosts at the end; the
    centered-box counts and the device path's PxAP histograms come from the device, global
    already. Two hosts with the same rows (sum_over_hosts doubling every count) double each
    host count of `evaluate` and `evaluate_wsol`, and leave those two as on one host."""
    config, ev, variables = restored
    source = experiment.data_sources(config)["validation"]
    one = ev.evaluate(variables, source, 11).counts
    _, one_wsol = ev.evaluate_wsol(variables, source, 11, 0.37)

    def two_hosts(x):
        return 2 * np.asarray(x)

    monkeypatch.setattr(evaluator_lib, "sum_over_hosts", two_hosts)
    monkeypatch.setattr(protocol_lib, "sum_over_hosts", two_hosts)
    paper = ev.evaluate(variables, source, 11).counts
    legacy, wsol = ev.evaluate_wsol(variables, source, 11, 0.37)
    for counts in (paper, legacy.counts):
        assert counts.keys() == one.keys()
        for k in one:
            np.testing.assert_array_equal(counts[k], one[k] * (1 if k == "center_box" else 2))
    assert wsol.num_images == 2 * one_wsol.num_images == 22
    for two, one_host in ((wsol.v1, one_wsol.v1), (wsol.v2, one_wsol.v2)):
        np.testing.assert_array_equal(two.counts, 2 * one_host.counts)
    np.testing.assert_array_equal(wsol.top1_loc.counts, 2 * one_wsol.top1_loc.counts)
    np.testing.assert_array_equal(wsol.pxap.histograms, one_wsol.pxap.histograms)


def at_threshold(base: float, threshold: float) -> dict:
    """A `LocalizationAccumulator.summary` whose every number is distinct."""
    return {
        "threshold": threshold,
        "top1_cls": base + 1,
        "top5_cls": base + 2,
        "top1_loc": base + 3,
        "top5_loc": base + 4,
        "gt_known_loc": base + 5,
        "best_center_box_gt_known_loc": 37.5,
        "best_center_box_size": [0.5, 0.75],
        "num_images": 16,
    }


def wsol_split(base: float, num_images: int, thresholds: list[float]) -> dict:
    """A `WsolCounts.summary` whose every number is distinct."""
    return {
        "num_images": num_images,
        "max_box_acc": base + 1,
        "max_box_acc_threshold": thresholds[1],
        "max_box_acc_v2": base + 2,
        "max_box_acc_v2_per_iou": {"30": base + 3, "50": base + 4, "70": base + 5},
        "max_box_acc_v2_thresholds": dict(zip(("30", "50", "70"), thresholds, strict=True)),
        "pxap": base + 6,
    }


def test_report_prints_each_number_under_its_label_and_column(capsys, monkeypatch):
    """print_report on results whose every number is distinct: each row's label, its value at
    the validation-chosen and the paper's thresholds (in that order, as percentages), the
    thresholds reported in the headers and cells, the WSOL table's val / test / test @ val
    thresholds / test @ fixed columns, and the faithfulness rows (percent only for the paper's
    Average Drop). Whitespace is not pinned."""
    val, test = wsol_split(40, 11, [0.115, 0.235, 0.345]), wsol_split(50, 16, [0.4, 0.5, 0.6])
    test["at_val_thresholds"] = {
        "threshold": 0.235,
        "box_acc": 61,
        "box_acc_v2": 62,
        "box_acc_v2_per_iou": {"30": 63, "50": 64, "70": 65},
        "box_acc_v2_thresholds": val["max_box_acc_v2_thresholds"],
        "top1_loc": 66,
    }
    test["at_fixed_threshold"] = {
        "box_acc": 71,
        "box_acc_v2": 72,
        "box_acc_v2_per_iou": {"30": 73, "50": 74, "70": 75},
        "top1_loc": 76,
    }
    protocol = {
        "boxes": True,
        "eval_size": 64,
        "num_thresholds": 100,
        "fixed_threshold": 0.25,
        "iou_thresholds": [30, 50, 70],
        "pxap": True,
    }
    faithfulness = {
        "settings": {"target": "predicted"},
        "test": {
            "num_images": 16,
            "score": "softmax",
            "variant": "paper",
            "average_drop": 81.5,
            "increase_in_confidence": 12.5,
            "deletion_auc": 0.125,
            "insertion_auc": 0.625,
            "pointing_game": 87.5,
        },
    }
    results = {
        "model": "vgg16_gap",
        "dataset": "wsol_shapes",
        "step": 6,
        "iou_threshold": 0.5,
        "top_k": 5,
        "test_at_val_threshold": at_threshold(10, 0.35),
        "test_at_fixed_threshold": at_threshold(20, 0.2),
        "test_gt_known_loc_oracle_max": 31.25,
        "wsol": {"protocol": protocol, "val": val, "test": test},
        "faithfulness": faithfulness,
    }
    report.print_report(results)
    lines = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    for line in [
        "vgg16_gap on wsol_shapes test (16 images), step 6, IoU >= 0.5",
        "thr 0.35 (from val) thr 0.20 (paper)",
        "top-1 cls acc 11.00% 21.00%",
        "top-5 cls acc 12.00% 22.00%",
        "top-1 loc acc [region] 13.00% 23.00%",
        "top-5 loc acc [region] 14.00% 24.00%",
        "GT-known loc acc [region] 15.00% 25.00%",
        "best centered box 37.50% GT-known; 0.50 x 0.75 of the image, the best size on test",
        "GT-known loc [region] at the best threshold on test (oracle): 31.25%",
        "val max test max test @ val thr test @ 0.25",
        "MaxBoxAcc (IoU 50) [contour] 41.00% @0.235 51.00% @0.500 61.00% @0.235 71.00%",
        "MaxBoxAccV2 [contours] 42.00% 52.00% 62.00% 72.00%",
        "IoU 30 43.00% @0.115 53.00% @0.400 63.00% @0.115 73.00%",
        "IoU 50 44.00% @0.235 54.00% @0.500 64.00% @0.235 74.00%",
        "IoU 70 45.00% @0.345 55.00% @0.600 65.00% @0.345 75.00%",
        "top-1 loc (IoU 50) [contour] - - 66.00% 76.00%",
        "PxAP 46.00% 56.00%",
        "Faithfulness on test (16 images, predicted class, softmax; Average Drop as paper)",
        "Average Drop (lower better) 81.50%",
        "Increase in Confidence 12.50%",
        "Deletion AUC (lower better) 0.1250",
        "Insertion AUC 0.6250",
        "Pointing game (GT class) 87.50%",
    ]:
        assert line in lines

    # The peers' Average Drop variants are fractions; a mask-only protocol prints PxAP alone.
    faithfulness["test"].update(variant="torchcam", average_drop=0.25)
    report.print_faithfulness(faithfulness)
    protocol.update(boxes=False)
    assert report.print_wsol(results["wsol"]) == []
    lines = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert "Average Drop (lower better) 0.25" in lines
    assert "Increase in Confidence 12.50" in lines
    assert lines[-1] == (
        "WSOL protocol (Choe et al., CVPR 2020), masks only: GT-class CAM, bicubic to 64^2, "
        "100 thresholds; PxAP val 46.00% (11 images), test 56.00% (16)"
    )
    # Only process 0 prints.
    monkeypatch.setattr(report.jax, "process_index", lambda: 1)
    report.print_report(results)
    assert capsys.readouterr().out == ""


def test_exported_float32_scoremaps_are_the_evaluated_ones(restored):
    """Without exact_float64, scoremap_outputs (evaluate.py --export_dir) gives the very
    float32 maps the WSOL metrics scored (`wsol_outputs`), shown above to be the protocol's
    (OpenCV bicubic to the evaluation size, min-max)."""
    config, ev, variables = restored
    source = experiment.data_sources(config)["validation"]
    scored = [np.asarray(out["scoremaps"]) for _, out in ev.wsol_outputs(variables, source, 11)]
    exported = [np.asarray(m) for _, m in ev.scoremap_outputs(variables, source, 11)]
    assert len(exported) == len(scored) == 1 and exported[0].shape == (16, 64, 64)
    np.testing.assert_array_equal(exported[0], scored[0])


def test_stop_is_asked_after_each_batch_and_true_ends_the_evaluation(restored):
    """evaluate's stop(): asked once a batch is counted; True raises EvaluationStopped naming
    the images counted so far (no metric is computed from part of a split)."""
    config, ev, variables = restored
    source = experiment.data_sources(config)["validation"]
    asked = []

    def stop():
        asked.append(True)
        return True

    with pytest.raises(evaluator_lib.EvaluationStopped, match=r"^stopped after 11 images$"):
        ev.evaluate(variables, source, 11, stop=stop)
    assert asked == [True]


class _PaperCounts:
    """What evaluate_variables reads of a split's paper counts: its best threshold (0.3 on
    val, 0.7 on test), a two-point GT-known curve, summaries that name the split."""

    thresholds = np.array([0.0, 0.5])

    def __init__(self, split):
        self.split = split

    def best_threshold(self):
        return {"val": 0.3, "test": 0.7}[self.split]

    def rates(self):
        return {"gt_known": np.array({"val": [0.5, 1.0], "test": [0.25, 0.75]}[self.split])}

    def summary(self, threshold, k):
        return {"split": self.split, "threshold": threshold, "k": k}


class _WsolCounts:
    """What evaluate_variables reads of a split's WSOL counts: MaxBoxAcc's grid index, 2."""

    def __init__(self, split):
        self.split = split

    def best_indices(self):
        return 2, None

    def summary(self, val=None):
        return {"split": self.split, "at_val_of": None if val is None else val.split}


def _recording_evaluator(config, protocol, method="cam", faithfulness=None):
    """An evaluator stub over sources named by their split, recording each evaluation asked."""
    calls = []

    def evaluate(variables, source, max_images=0):
        calls.append(("evaluate", source, max_images))
        return _PaperCounts(source)

    def evaluate_wsol(variables, source, max_images=0, val_threshold=None):
        calls.append(("evaluate_wsol", source, max_images, val_threshold))
        return _PaperCounts(source), _WsolCounts(source)

    def evaluate_faithfulness(variables, source, max_images=0):
        calls.append(("evaluate_faithfulness", source, max_images))
        return types.SimpleNamespace(summary=lambda: {"split": source})

    ev = types.SimpleNamespace(
        config=config,
        protocol=protocol,
        top_k=5,
        method=method,
        layer="features",
        options={"rectify": False} if method == "grad_cam" else {},
        faithfulness=faithfulness,
        evaluate=evaluate,
        evaluate_wsol=evaluate_wsol,
        evaluate_faithfulness=evaluate_faithfulness,
    )
    return ev, calls


@pytest.fixture
def stub_sources(monkeypatch):
    """experiment.data_sources as run.py sees it: each split's source is its short name, and
    only the validation and test splits are asked for (an evaluation-only dataset has no
    train split)."""

    def data_sources(config, splits):
        assert splits == ("val_split", "test_split")
        return {config.data.val_split: "val", config.data.test_split: "test"}

    monkeypatch.setattr(run_lib.experiment, "data_sources", data_sources)


def test_evaluate_variables_picks_the_threshold_on_validation_and_reports_test(stub_sources):
    """The CAM threshold is validation's best (0.3, not test's 0.7); MaxBoxAcc's is the
    protocol grid's point at validation's best index, handed to the test pass only; every
    pass sees config.eval.max_images; each results key holds the split it names."""
    config = tiny.get_config()
    config.eval.max_images, config.eval.iou_threshold, config.eval.fixed_threshold = 11, 0.3, 0.25
    protocol = types.SimpleNamespace(
        thresholds=np.array([0.0, 0.25, 0.5, 0.75]), boxes=True, to_dict=lambda: {"grid": 4}
    )
    ev, calls = _recording_evaluator(config, protocol)
    results, chosen = run_lib.evaluate_variables(ev, {}, 6)
    assert calls == [("evaluate_wsol", "val", 11, None), ("evaluate_wsol", "test", 11, 0.5)]
    assert chosen == 0.3
    assert results == {
        "step": 6,
        "model": "vgg16_gap",
        "dataset": "wsol_shapes",
        "iou_threshold": 0.3,
        "top_k": 5,
        "test_at_val_threshold": {"split": "test", "threshold": 0.3, "k": 5},
        "test_at_fixed_threshold": {"split": "test", "threshold": 0.25, "k": 5},
        "val_at_val_threshold": {"split": "val", "threshold": 0.3, "k": 5},
        "test_gt_known_loc_oracle_max": 75.0,
        "test_gt_known_loc_curve": {"0.000": 25.0, "0.500": 75.0},
        "wsol": {
            "protocol": {"grid": 4},
            "val": {"split": "val", "at_val_of": None},
            "test": {"split": "test", "at_val_of": "val"},
        },
    }
    protocol.boxes = False  # masks only: no MaxBoxAcc threshold to carry over
    ev, calls = _recording_evaluator(config, protocol)
    run_lib.evaluate_variables(ev, {}, 6)
    assert calls[1] == ("evaluate_wsol", "test", 11, None)


def test_evaluate_variables_without_the_protocol_names_the_method_and_its_faithfulness(
    stub_sources,
):
    """Without the WSOL protocol both splits go through evaluate; a method other than CAM is
    named with its layer; faithfulness runs on test over config.eval.faithfulness.max_images,
    or config.eval.max_images where that is 0, and reports its settings."""
    config = tiny.get_config()
    config.eval.max_images = 11
    ev, calls = _recording_evaluator(config, None, method="grad_cam", faithfulness=object())
    results, chosen = run_lib.evaluate_variables(ev, {}, 6)
    assert calls == [
        ("evaluate", "val", 11),
        ("evaluate", "test", 11),
        ("evaluate_faithfulness", "test", 11),
    ]
    assert chosen == 0.3 and "wsol" not in results
    assert results["val_at_val_threshold"] == {"split": "val", "threshold": 0.3, "k": 5}
    assert results["method"] == {
        "name": "grad_cam",
        "layer": "features",
        "options": {"rectify": False},  # the given value over the default
    }
    assert results["faithfulness"] == {
        "test": {"split": "test"},
        "settings": config.eval.faithfulness.to_dict(),
    }
    assert results["faithfulness"]["settings"]["max_images"] == 0
    config.eval.faithfulness.max_images = 3
    ev, calls = _recording_evaluator(config, None, method="grad_cam", faithfulness=object())
    run_lib.evaluate_variables(ev, {}, 6)
    assert calls[-1] == ("evaluate_faithfulness", "test", 3)
    ev, calls = _recording_evaluator(config, None)  # CAM, no faithfulness
    results, _ = run_lib.evaluate_variables(ev, {}, 6)
    assert "method" not in results and "faithfulness" not in results
    assert [c[0] for c in calls] == ["evaluate", "evaluate"]


def test_results_are_written_whole_and_the_gallery_draws_test_at_the_chosen_threshold(
    stub_sources, monkeypatch, tmp_path
):
    """metrics.json holds the results (no temporary file left); the gallery shows the test
    split at the threshold chosen on validation, not the fixed one."""
    drawn = []
    monkeypatch.setattr(run_lib, "write_gallery", lambda *args: drawn.append(args))
    config, variables, workdir = tiny.get_config(), {"params": {}}, str(tmp_path)
    results = {"step": 6, "test_at_val_threshold": {"threshold": 0.3}}
    ev = types.SimpleNamespace(model="the model")
    run_lib._write_results(config, ev, variables, results, 0.3, workdir)
    assert os.listdir(workdir) == ["metrics.json"]
    with open(os.path.join(workdir, "metrics.json")) as f:
        assert json.load(f) == results
    assert drawn == [(config, "the model", variables, "test", 0.3, workdir)]
    # A pointing game of no counted image is NaN: JSON has no NaN (Python wrote a bare NaN,
    # which strict readers refuse), so it is null.
    pointing = {"faithfulness": {"test": {"pointing_game": float("nan"), "x": [1.5, float("inf")]}}}
    run_lib._write_results(config, ev, variables, pointing, 0.3, workdir)
    with open(os.path.join(workdir, "metrics.json")) as f:
        text = f.read()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"faithfulness": {"test": {"pointing_game": None, "x": [1.5, None]}}}


def test_the_gt_known_curve_keeps_one_point_per_threshold_of_a_fine_grid(stub_sources, monkeypatch):
    """config.eval.threshold_grid_step may be any step in (0, 1): at 0.0005 the grid's 0.0005
    and 0.001 are two points of the curve in metrics.json, not one key written twice."""
    monkeypatch.setattr(_PaperCounts, "thresholds", np.float32([0.0005, 0.001]))
    ev, _ = _recording_evaluator(tiny.get_config(), None)
    results, _ = run_lib.evaluate_variables(ev, {}, 6)
    curve = results["test_gt_known_loc_curve"]
    assert curve == {"0.0005": 25.0, "0.0010": 75.0}
