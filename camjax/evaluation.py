"""Evaluation of a trained GAP network: classification, CAM localization, a baseline, pictures.

`Evaluator` runs one jitted program per batch (forward pass, CAM of the GT class upsampled to the
image, boxes at every CAM threshold of the grid, IoUs, counts) and sums the counts over a split.
`run_evaluation(config, workdir)` is what evaluate.py calls: restore the latest checkpoint, pick
the CAM threshold on the validation split (never on test, as the WSOL protocol does), report the
test split at that threshold and at the paper's fixed 0.2, write metrics.json and a gallery.
"""

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from camjax import cam as cam_lib
from camjax import experiment, viz
from camjax.data import pipeline
from camjax.localization.boxes import box_from_scoremap
from camjax.localization.metrics import (
    LocalizationAccumulator,
    centered_boxes,
    localization_counts,
)


def threshold_grid(step: float) -> np.ndarray:
    """CAM thresholds step, 2*step, ... < 1 (0 and 1 would give the whole image / nothing)."""
    if not 0 < step < 1:
        raise ValueError(f"config.eval.threshold_grid_step must be in (0, 1); got {step}.")
    return np.round(np.arange(step, 1.0 - 1e-9, step), 6).astype(np.float32)


class Evaluator:
    """Localization and classification counts over a split, one compiled step per batch shape."""

    def __init__(self, config: ml_collections.ConfigDict, model, mesh):
        self.config = config
        self.mesh = mesh
        ev = config.eval
        experiment.check_batch_size(ev.batch_size, mesh, "config.eval.batch_size")
        self.top_k = min(ev.top_k, config.model.num_classes)
        self.thresholds = threshold_grid(ev.threshold_grid_step)
        self.center_fractions = np.round(
            np.arange(ev.center_box_grid_step, 1.0 + 1e-9, ev.center_box_grid_step), 6
        )
        size = config.data.image_size
        center = centered_boxes(size, size, self.center_fractions)
        self.prep = experiment.preprocess_config(config)
        self.sharding = experiment.data_sharding(mesh)
        mean, std = config.data.mean, config.data.std

        def step(variables, batch):
            images = pipeline.normalize_images(batch["image"], mean, std)
            logits, out = model.apply(variables, images, train=False)
            cams = cam_lib.cams_for_classes(
                out["feature_map"], cam_lib.head_kernel(variables), batch["label"]
            )
            scoremaps = cam_lib.postprocess(cams, (size, size), method=ev.resize_method)
            _, top = jax.lax.top_k(logits, self.top_k)
            return localization_counts(
                scoremaps,
                batch["boxes"],
                batch["num_boxes"],
                batch["label"],
                top,
                batch["valid"],
                jnp.asarray(self.thresholds),
                jnp.asarray(center),
                ev.iou_threshold,
            )

        self._step = jax.jit(step)

    def evaluate(
        self, variables: Any, source: Sequence, max_images: int = 0
    ) -> LocalizationAccumulator:
        """Counts over the first max_images (0: all) examples of a source."""
        acc = LocalizationAccumulator(self.thresholds, self.center_fractions)
        source = experiment.limit(source, max_images)
        batches = pipeline.eval_batches(
            source, self.prep, self.config.eval.batch_size, self.config.data.num_threads
        )
        for host_batch in batches:
            batch = pipeline.shard_batch(
                {k: host_batch[k] for k in ("image", "label", "boxes", "num_boxes", "valid")},
                self.sharding,
            )
            acc.update(self._step(variables, batch))
        return acc


def run_evaluation(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Restores the latest checkpoint in workdir, evaluates, writes metrics.json and a gallery."""
    from camjax.train import checkpoint, loop, optim  # training imports evaluation, not the reverse

    mesh = experiment.make_mesh()
    model = experiment.build_model(config)
    tx = optim.create_optimizer(config.optim, config.train.num_steps)
    manager = checkpoint.create_manager(workdir, config.train.keep_checkpoints)
    state = checkpoint.restore(manager, loop.abstract_train_state(config, model, tx, mesh), config)
    manager.close()
    variables = {"params": state.params}
    sources = experiment.data_sources(config)
    evaluator = Evaluator(config, model, mesh)
    max_images = config.eval.max_images

    val = evaluator.evaluate(variables, sources[config.data.val_split], max_images)
    chosen = val.best_threshold()
    test = evaluator.evaluate(variables, sources[config.data.test_split], max_images)
    k = evaluator.top_k
    rates = test.rates()
    results = {
        "step": int(state.step),
        "model": config.model.name,
        "dataset": config.data.name,
        "iou_threshold": config.eval.iou_threshold,
        "top_k": k,
        "test_at_val_threshold": test.summary(chosen, k),
        "test_at_fixed_threshold": test.summary(config.eval.fixed_threshold, k),
        "val_at_val_threshold": val.summary(chosen, k),
        "test_gt_known_loc_oracle_max": 100 * float(np.max(rates["gt_known"])),
        "test_gt_known_loc_curve": {
            f"{t:.3f}": 100 * float(r)
            for t, r in zip(test.thresholds, rates["gt_known"], strict=True)
        },
    }
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        # Written aside and renamed, so an interrupted run never leaves a truncated file.
        path = os.path.join(workdir, "metrics.json")
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=2)
        os.replace(path + ".tmp", path)
        write_gallery(config, model, variables, sources[config.data.test_split], chosen, workdir)
    return results


def write_gallery(
    config, model, variables, source: Sequence, threshold: float, workdir: str
) -> list[str]:
    """PNG per image for the first config.eval.num_gallery images: image | CAM overlay + boxes.

    The CAM is that of the top-1 predicted class; green is the GT box, red the CAM box.
    """
    n = min(config.eval.num_gallery, len(source))
    if n == 0:
        return []
    prep = experiment.preprocess_config(config)
    rows = [pipeline.EvalPreprocess(prep).map(source[i]) for i in range(n)]
    images = np.stack([r["image"] for r in rows])
    f = cam_lib.cam_fn(model, variables, top_k=1, method=config.eval.resize_method)
    out = f(pipeline.normalize_images(images, config.data.mean, config.data.std))
    boxes = box_from_scoremap(out.cams[:, 0], threshold)
    out, boxes = jax.device_get((out, boxes))
    names = _class_names(config)
    gallery_dir = os.path.join(workdir, "gallery")
    os.makedirs(gallery_dir, exist_ok=True)
    paths = []
    for i, r in enumerate(rows):
        pred = int(out.classes[i, 0])
        caption = f"gt: {names(int(r['label']))}  pred: {names(pred)}"
        picture = viz.cam_picture(
            r["image"], out.cams[i, 0], r["boxes"][: r["num_boxes"]], boxes[i], caption
        )
        path = os.path.join(gallery_dir, f"{i:04d}.png")
        picture.save(path)
        paths.append(path)
    viz.contact_sheet(paths).save(os.path.join(workdir, "gallery.png"))
    return paths


def _class_names(config):
    if config.data.name == "wsol_shapes":
        from camjax.data.shapes import CLASS_NAMES

        return lambda i: CLASS_NAMES[i]
    return str


def print_report(results: dict[str, Any]) -> None:
    """The headline numbers of run_evaluation as a small table on stdout (process 0 only)."""
    if jax.process_index() != 0:
        return
    tuned, fixed, k = (
        results["test_at_val_threshold"],
        results["test_at_fixed_threshold"],
        results["top_k"],
    )
    rows = [
        ("top-1 cls acc", "top1_cls"),
        (f"top-{k} cls acc", f"top{k}_cls"),
        ("top-1 loc acc", "top1_loc"),
        (f"top-{k} loc acc", f"top{k}_loc"),
        ("GT-known loc acc", "gt_known_loc"),
    ]
    print(
        f"\n{results['model']} on {results['dataset']} test ({tuned['num_images']} images), "
        f"step {results['step']}, IoU >= {results['iou_threshold']}"
    )
    head_tuned = f"thr {tuned['threshold']:.2f} (from val)"
    head_fixed = f"thr {fixed['threshold']:.2f} (paper)"
    print(f"{'':<20}{head_tuned:>22}{head_fixed:>20}")
    for label, key in rows:
        print(f"{label:<20}{tuned[key]:>21.2f}%{fixed[key]:>19.2f}%")
    size = tuned["best_center_box_size"]
    print(
        f"{'best centered box':<20}{tuned['best_center_box_gt_known_loc']:>21.2f}%   GT-known; "
        f"{size[0]:.2f} x {size[1]:.2f} of the image, the best size on test"
    )
    print(
        f"GT-known loc at the best threshold on test (oracle): "
        f"{results['test_gt_known_loc_oracle_max']:.2f}%"
    )
