"""Evaluation of a trained network over a split: classification, CAM localization, WSOL metrics.

`Evaluator` runs one jitted program per batch (forward pass, CAM of the GT class upsampled to the
image, its masks at every CAM threshold of the grid as one uint8 map) and counts the paper's boxes
on the host with the WSOL engine (`camjax.localization.boxes`), one batch behind the device.
`camjax.evaluation.run` restores a run and drives it over validation and test.

With `config.eval.wsol.enabled` it also reports the WSOL protocol of Choe et al. (CVPR 2020,
clovaai/wsolevaluation; settings and counts in `protocol.py`) on both splits:
MaxBoxAcc, MaxBoxAccV2, BoxAcc at fixed and validation-chosen thresholds, top-1 loc and PxAP.
The protocol's score maps (the GT class's CAM, OpenCV-bicubic to the evaluation size, min-max
normalised, quantised to uint8) and the PxAP histograms come out of the same jitted step; only
the box counts of `camjax.localization.wsol.box_correct_counts` run on the host, one batch
behind the device. With `config.eval.wsol.exact_float64` the step returns the GT-class CAMs at
feature-map resolution instead, and the host makes the score maps with the reference's float64
OpenCV arithmetic (`protocol.reference_scoremaps`), quantises them and bins their PxAP
histograms in float64.
"""

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from camjax import cam as cam_lib
from camjax import experiment, explain
from camjax.data import pipeline
from camjax.evaluation import faithfulness as faith_lib
from camjax.evaluation import pointing
from camjax.evaluation.protocol import (
    MaskedEvalPreprocess,
    WsolCounts,
    WsolProtocol,
    protocol_boxes,
    reference_scoremaps,
    sum_over_hosts,
)
from camjax.localization import boxes, pxap, wsol
from camjax.models.layers import takes_labels


class NonFiniteOutputError(FloatingPointError):
    """The network's logits or class maps hold NaN or Inf: no metric is computed from them."""


class EvaluationStopped(Exception):
    """`Evaluator.evaluate`'s `stop` ended it before its last batch: no metric is computed."""


def threshold_grid(step: float) -> np.ndarray:
    """CAM thresholds step, 2*step, ... < 1 (0 and 1 would give the whole image / nothing)."""
    if not 0 < step < 1:
        raise ValueError(f"config.eval.threshold_grid_step must be in (0, 1); got {step}.")
    return np.round(np.arange(step, 1.0 - 1e-9, step), 6).astype(np.float32)


def host_rows(x: jax.Array) -> np.ndarray:
    """This host's rows of a batch-sharded array, in order (the whole batch on one host); a
    numpy array (made on this host) as it is."""
    if isinstance(x, np.ndarray):
        return x
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


def method_and_layer(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """config.eval.method (a name of `camjax.explain.METHODS`) and .layer, checked; runs saved
    before these fields existed mean CAM at 'feature_map'."""
    method = config.eval.get("method", "cam")
    if method not in explain.METHODS:
        raise ValueError(
            f"config.eval.method must be one of {', '.join(sorted(explain.METHODS))}; "
            f"got {method!r}."
        )
    return method, config.eval.get("layer", "feature_map")


def method_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """config.eval.options of the chosen method, for its explainer ({} for 'cam', and in runs
    saved before the field existed: the method's defaults), checked against what the method
    takes (a run's saved config may name an option that a later camjax renamed)."""
    method, _ = method_and_layer(config)
    options = config.eval.get("options")
    if options is None or method not in options:
        return {}
    given = options[method].to_dict()
    explain.check_options(method, given, where=f"config.eval.options.{method}")
    return given


def faithfulness_settings(
    config: ml_collections.ConfigDict,
) -> faith_lib.FaithfulnessSettings | None:
    """config.eval.faithfulness checked, or None when it is absent or disabled."""
    f = config.eval.get("faithfulness")
    if f is None or not f.enabled:
        return None
    if f.target not in ("predicted", "label"):
        raise ValueError(
            f"config.eval.faithfulness.target must be 'predicted' or 'label'; got {f.target!r}."
        )
    return faith_lib.FaithfulnessSettings(
        step=f.step, chunk=f.chunk, variant=f.variant, score=f.score, tolerance=f.tolerance
    )


# --------------------------------------------------------------------------------------------
# The evaluator.


class Evaluator:
    """Localization and classification counts over a split, one compiled step per batch shape.

    protocol: the WSOL protocol (`wsol_protocol(config)`) for `evaluate_wsol`; None disables it.
    """

    def __init__(
        self, config: ml_collections.ConfigDict, model, mesh, protocol: WsolProtocol | None = None
    ):
        self.config = config
        self.model = model
        self.mesh = mesh
        self.protocol = protocol
        ev = config.eval
        experiment.check_eval_config(ev, mesh)
        self.top_k = min(ev.top_k, config.model.num_classes)
        self.thresholds = threshold_grid(ev.threshold_grid_step)
        self.center_fractions = np.round(
            np.arange(ev.center_box_grid_step, 1.0 + 1e-9, ev.center_box_grid_step), 6
        )
        size = config.data.image_size
        self.center_boxes = boxes.centered_boxes(size, size, self.center_fractions)
        self.prep = experiment.preprocess_config(config)
        self.sharding = experiment.data_sharding(mesh)
        self.method, self.layer = method_and_layer(config)
        self.options = method_options(config)
        # explainer(variables, **postprocessing): the chosen method's maps; its compiled
        # function is cached per options, so making it inside a traced step costs nothing.
        self._explainer = functools.partial(
            explain.explainer,
            model,
            method=self.method,
            layer=self.layer,
            apply_kwargs={"train": False},
            **self.options,
        )
        self._takes_labels = takes_labels(model)
        self.faithfulness = faithfulness_settings(config)
        self._paper_step = jax.jit(lambda variables, batch: self._dense(variables, batch)[3])
        self._faith_step = jax.jit(self._faith) if self.faithfulness is not None else None
        self._wsol_step = jax.jit(self._wsol) if protocol is not None else None
        self._scoremap_step = jax.jit(self._scoremaps) if protocol is not None else None

    def _cams(self, variables, batch):
        """(logits (B, C), CAMs (B, h, w) of each image's GT class) of a device batch; with
        config.eval.method not 'cam', that method's raw maps at its layer's resolution.

        A model that makes its own class maps (outputs 'class_maps' (B, h, w, C), ACoL's) is
        scored by its GT class's map; a model whose `__call__` takes `labels` gets the GT
        labels, as the reference's evaluator passes them (ACoL erases the GT class's region)."""
        data = self.config.data
        images = pipeline.normalize_images(batch["image"], data.mean, data.std)
        if self.method != "cam":
            # Raw maps at the layer's resolution: the same resize and normalisation as CAM's.
            f = self._explainer(variables, size=None, normalize=False)
            out = f(images, targets=batch["label"])
            return out.logits, out.cams[:, 0]
        kwargs = {"labels": batch["label"]} if self._takes_labels else {}
        logits, out = self.model.apply(variables, images, train=False, **kwargs)
        if "class_maps" in out:
            return logits, cam_lib.class_maps_of(out["class_maps"], batch["label"])
        kernel = cam_lib.head_kernel(variables)
        return logits, cam_lib.cams_for_classes(out["feature_map"], kernel, batch["label"])

    def _dense(self, variables, batch):
        """The traced part of the paper's counts: CAMs, score maps, top classes, and the
        paper's masks at every threshold as one uint8 map (counted on the host)."""
        ev, size = self.config.eval, self.config.data.image_size
        logits, cams = self._cams(variables, batch)
        scoremaps = cam_lib.postprocess(
            cams, (size, size), method=ev.resize_method, normalize=ev.cam_normalization
        )
        _, top = jax.lax.top_k(logits, self.top_k)
        center = boxes.center_box_counts(
            batch["boxes"], batch["num_boxes"], batch["valid"], self.center_boxes, ev.iou_threshold
        )
        paper = {
            "region_maps": wsol.quantize_for_thresholds(scoremaps, self.thresholds),
            "top": top,
            "center_box": center,
            # NaN logits would count as some class, NaN maps as no box. A global count, so
            # that every host of a multi-host run stops at the same batch.
            "nonfinite": jnp.sum(
                batch["valid"]
                & ~(jnp.all(jnp.isfinite(logits), -1) & jnp.all(jnp.isfinite(cams), (1, 2)))
            ),
        }
        return cams, scoremaps, top, paper

    def _wsol(self, variables, batch):
        """`_dense` plus the WSOL protocol's score maps, uint8 maps and PxAP histograms."""
        ev, protocol = self.config.eval, self.protocol
        cams, scoremaps, top, paper = self._dense(variables, batch)
        top1_correct = top[:, 0] == batch["label"]
        if protocol.exact_float64:
            # The score maps are made on the host (`_exact_outputs`).
            return {"paper": paper, "cams": cams, "top1_correct": top1_correct}
        e = protocol.eval_size
        if (e, ev.resize_method, ev.cam_normalization) != (
            self.config.data.image_size,
            "bicubic",
            "minmax",
        ):
            # The protocol's maps: OpenCV INTER_CUBIC to the evaluation size, min-max.
            scoremaps = cam_lib.postprocess(cams, (e, e), method="bicubic")
        out = {
            "paper": paper,
            "scoremaps": scoremaps,  # stays on device unless a caller fetches it
            "quantized": wsol.quantize_scoremaps(scoremaps),
            "top1_correct": top1_correct,
        }
        if protocol.pxap:
            # Padding rows of a ragged last batch are ignored pixels (255).
            masks = jnp.where(batch["valid"][:, None, None], batch["mask"], 255)
            out["pxap"] = pxap.pxap_histograms(scoremaps, masks, protocol.thresholds)
        return out

    def _scoremaps(self, variables, batch):
        """The protocol's score maps alone (exports need nothing else); the CAMs with
        exact_float64, for `reference_scoremaps` on the host."""
        cams = self._cams(variables, batch)[1]
        if self.protocol.exact_float64:
            return cams
        e = self.protocol.eval_size
        return cam_lib.postprocess(cams, (e, e), method="bicubic")

    def _faith(self, variables, batch):
        """One batch's faithfulness sums: Average Drop, Increase, Deletion and Insertion of the
        maps of config.eval.faithfulness.target's class (upsampled to the image, min-max), and
        the pointing game of the GT class's map against the union of the GT boxes."""
        data, f = self.config.data, self.config.eval.faithfulness
        images = pipeline.normalize_images(batch["image"], data.mean, data.std)

        def forward(x):
            return self.model.apply(variables, x, train=False)[0]

        labels = batch["label"]
        if f.target == "predicted":
            targets = jnp.stack([labels, jnp.argmax(forward(images), -1)], axis=1)
        else:
            targets = labels[:, None]
        out = self._explainer(variables, resize=f.resize, normalize="minmax")(images, targets)
        classes, size = out.classes[:, -1], self.config.data.image_size
        gt = pointing.box_masks(batch["boxes"], batch["num_boxes"], size, size)
        return faith_lib.batch_sums(
            forward,
            images,
            out.cams[:, -1],
            jnp.maximum(classes, 0),
            batch["valid"],
            self.faithfulness,
            point_maps=out.cams[:, 0],
            gt_masks=gt,
            labels=labels,
            num_classes=out.logits.shape[-1],
        )

    def evaluate_faithfulness(
        self, variables: Any, source: Sequence, max_images: int = 0
    ) -> faith_lib.FaithfulnessAccumulator:
        """Faithfulness sums over the first max_images (0: all) examples of a source."""
        if self.faithfulness is None:
            raise ValueError("config.eval.faithfulness.enabled is False.")
        acc = faith_lib.FaithfulnessAccumulator(self.faithfulness)
        keys = ["image", "label", "boxes", "num_boxes", "valid"]
        batches = self._batches(source, max_images, masks=False)
        for _, out in self._pipelined(self._faith_step, variables, batches, keys):
            acc.update(out)
        return acc

    def _exact_outputs(self, host_batch: pipeline.Batch, out: dict[str, jax.Array]) -> dict:
        """`_wsol`'s outputs for this host's rows, made on the host as the reference makes
        them: float64 score maps, their uint8 levels and float64-binned PxAP histograms."""
        protocol = self.protocol
        cams = host_rows(out["cams"])
        scoremaps = reference_scoremaps(cams, protocol.eval_size)
        quantized = wsol.quantize_scoremaps(scoremaps)
        exact = {**out, "cams": cams, "scoremaps": scoremaps, "quantized": quantized}
        if protocol.pxap:
            valid = np.asarray(host_batch["valid"], bool)
            masks = np.where(valid[:, None, None], np.asarray(host_batch["mask"]), 255)
            exact["pxap"] = pxap.pxap_histograms(scoremaps, masks, protocol.thresholds)
        return exact

    def _batches(self, source: Sequence, max_images: int, masks: bool) -> Iterator[pipeline.Batch]:
        source = experiment.limit(source, max_images)
        ev, threads = self.config.eval, self.config.data.num_threads
        prep = MaskedEvalPreprocess(self.prep, self.protocol.eval_size) if masks else None
        # A split smaller than a batch is one batch of its size rounded up to the devices: each
        # padding row runs the whole method (4 images padded to 128: IS-CAM's check took 14x).
        devices = self.mesh.size
        batch_size = min(ev.batch_size, max(1, -(-len(source) // devices)) * devices)
        return pipeline.eval_batches(source, self.prep, batch_size, threads, prep)

    def evaluate(
        self, variables: Any, source: Sequence, max_images: int = 0, stop: Callable | None = None
    ) -> boxes.LocalizationAccumulator:
        """The paper's counts over the first max_images (0: all) examples of a source. stop():
        asked after each batch (alike by every process); True raises EvaluationStopped."""
        acc = boxes.LocalizationAccumulator(self.thresholds, self.center_fractions)
        keys = ["image", "label", "boxes", "num_boxes", "valid"]
        batches = self._batches(source, max_images, masks=False)
        for host_batch, out in self._pipelined(self._paper_step, variables, batches, keys):
            acc.update(self._paper_counts(host_batch, out))
            if stop is not None and stop():
                raise EvaluationStopped(f"stopped after {int(acc.counts['n'])} images")
        return _sum_paper_over_hosts(acc)

    def _paper_counts(self, host_batch: pipeline.Batch, out: dict[str, jax.Array]):
        """The paper's counts of one batch: its boxes counted on the host by the WSOL engine."""
        if nonfinite := int(out["nonfinite"]):
            raise NonFiniteOutputError(
                f"the network's logits or class maps hold NaN or Inf on {nonfinite} images of "
                f"a batch: its weights overflow in {self.config.model.dtype} (restored from a "
                "diverged run?), the images are not normalised as in training "
                "(config.data.mean, std), or (Ablation-CAM) a class score is exactly 0; no "
                "metric was computed."
            )
        counts = boxes.localization_counts(
            host_rows(out["region_maps"]),
            host_batch["boxes"],
            host_batch["num_boxes"],
            host_batch["label"],
            host_rows(out["top"]),
            host_batch["valid"],
            self.thresholds,
            self.config.eval.iou_threshold,
        )
        return {**counts, "center_box": out["center_box"]}

    def wsol_outputs(
        self, variables: Any, source: Sequence, max_images: int = 0
    ) -> Iterator[tuple[pipeline.Batch, dict[str, jax.Array]]]:
        """(host batch, device outputs of the WSOL step) per batch of a source.

        Outputs: 'paper' (the paper's 'region_maps', 'top' classes and 'center_box' counts),
        'scoremaps' (B, E, E) float32, 'quantized' (B, E, E) uint8, 'top1_correct' (B,) bool
        and, with PxAP, 'pxap' (2, T + 2). With exact_float64, 'scoremaps' (float64),
        'quantized' and 'pxap' are numpy arrays of this host's rows, made on the host from
        'cams' (B, h, w) float32, the GT-class CAMs it fetched. The next
        batch's step is dispatched before a batch is handed out, so host work overlaps it.
        """
        if self.protocol is None:
            raise ValueError("this Evaluator has no WSOL protocol; pass wsol_protocol(config).")
        if self.protocol.pxap and len(source) and "mask" not in source[0]:
            raise ValueError(
                f"config.eval.wsol.pxap is True but the examples of {self.config.data.name!r} "
                "have no 'mask' (PxAP needs GT masks); set config.eval.wsol.pxap = False."
            )
        keys = ["image", "label", "boxes", "num_boxes", "valid"] + ["mask"] * self.protocol.pxap
        batches = self._batches(source, max_images, masks=self.protocol.pxap)
        outputs = self._pipelined(self._wsol_step, variables, batches, keys)
        if not self.protocol.exact_float64:
            yield from outputs
            return
        for host_batch, out in outputs:
            yield host_batch, self._exact_outputs(host_batch, out)

    def scoremap_outputs(
        self, variables: Any, source: Sequence, max_images: int = 0, masks: bool = False
    ) -> Iterator[tuple[pipeline.Batch, jax.Array | np.ndarray]]:
        """(host batch, (B, E, E) float32 protocol score maps on device) per batch, as
        `wsol_outputs` makes them but without the metrics' work (for exports); with
        exact_float64, (B, E, E) float64 numpy maps of this host's rows. With masks, the
        host batch also holds 'mask' (B, E, E) uint8, the protocol's PxAP masks."""
        if self.protocol is None:
            raise ValueError("this Evaluator has no WSOL protocol; pass wsol_protocol(config).")
        batches = self._batches(source, max_images, masks=masks)
        outputs = self._pipelined(self._scoremap_step, variables, batches, ["image", "label"])
        if not self.protocol.exact_float64:
            yield from outputs
            return
        e = self.protocol.eval_size
        for host_batch, cams in outputs:
            yield host_batch, reference_scoremaps(host_rows(cams), e)

    def _pipelined(self, step, variables, batches, keys):
        """(host batch, step output) per batch; the next batch's step is dispatched before a
        batch is handed out, so the caller's host work overlaps the device."""
        pending = None
        for host_batch in batches:
            batch = pipeline.shard_batch({k: host_batch[k] for k in keys}, self.sharding)
            out = step(variables, batch)
            if pending is not None:
                yield pending
            pending = (host_batch, out)
        if pending is not None:
            yield pending

    def evaluate_wsol(
        self,
        variables: Any,
        source: Sequence,
        max_images: int = 0,
        val_threshold: float | None = None,
    ) -> tuple[boxes.LocalizationAccumulator, WsolCounts]:
        """One pass over a source: `evaluate`'s counts and the WSOL protocol's.

        val_threshold: MaxBoxAcc's threshold chosen on validation; top-1 loc is counted there
        as well as at config.eval.fixed_threshold.
        """
        p = self.protocol
        operating = [p.fixed_threshold] + ([val_threshold] if val_threshold is not None else [])
        loc = boxes.LocalizationAccumulator(self.thresholds, self.center_fractions)
        counts = WsolCounts.create(p, operating)
        image_size = self.config.data.image_size
        for host_batch, out in self.wsol_outputs(variables, source, max_images):
            loc.update(self._paper_counts(host_batch, out["paper"]))
            gt = (
                (
                    host_rows(out["quantized"]),
                    protocol_boxes(
                        host_batch["boxes"], image_size, p.eval_size, host_batch["original_size"]
                    ),
                    np.asarray(host_batch["num_boxes"]),
                )
                if p.boxes
                else (None, None, None)
            )
            counts.update(
                *gt,
                np.asarray(host_batch["valid"], bool),
                host_rows(out["top1_correct"]),
                out.get("pxap"),
            )
        counts.sum_over_hosts()
        return _sum_paper_over_hosts(loc), counts


def _sum_paper_over_hosts(acc: boxes.LocalizationAccumulator) -> boxes.LocalizationAccumulator:
    """Adds the other hosts' host-counted rows; 'center_box' came from the device, global."""
    for k in ("n", "top1_cls", "topk_cls", "gt_known", "top1_loc", "topk_loc"):
        acc.counts[k] = sum_over_hosts(acc.counts[k])
    return acc
