"""Evaluation of a trained GAP network: classification, CAM localization, WSOL metrics, pictures.

`Evaluator` runs one jitted program per batch (forward pass, CAM of the GT class upsampled to the
image, boxes at every CAM threshold of the grid, IoUs, counts) and sums the counts over a split.
`run_evaluation(config, workdir)` is what evaluate.py calls: restore the latest checkpoint, pick
the CAM threshold on the validation split (never on test, as the WSOL protocol does), report the
test split at that threshold and at the paper's fixed 0.2, write metrics.json and a gallery.

With `config.eval.wsol.enabled` it also reports the WSOL protocol of Choe et al. (CVPR 2020,
clovaai/wsolevaluation) on both splits: MaxBoxAcc, MaxBoxAccV2, BoxAcc at fixed and
validation-chosen thresholds, top-1 loc and PxAP. The protocol's score maps (the GT class's
CAM, OpenCV-bicubic to the evaluation size, min-max normalised, quantised to uint8) and the PxAP
histograms come out of the same jitted step; only the box counts of
`camjax.localization.wsol.box_correct_counts` run on the host, one batch behind the device.
"""

import dataclasses
import json
import numbers
import os
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from camjax import cam as cam_lib
from camjax import experiment, viz
from camjax.data import pipeline
from camjax.localization import wsol, wsol_io
from camjax.localization.boxes import box_from_scoremap
from camjax.localization.metrics import (
    LocalizationAccumulator,
    centered_boxes,
    localization_counts,
)

# MaxBoxAcc (the CVPR version's box metric) and top-1 loc: IoU >= 0.5, largest contour's box.
V1_IOU = 50
_WSOL_KEYS = frozenset(
    {"enabled", "threshold_step", "iou_thresholds", "eval_size", "pxap", "boxes"}
)


def threshold_grid(step: float) -> np.ndarray:
    """CAM thresholds step, 2*step, ... < 1 (0 and 1 would give the whole image / nothing)."""
    if not 0 < step < 1:
        raise ValueError(f"config.eval.threshold_grid_step must be in (0, 1); got {step}.")
    return np.round(np.arange(step, 1.0 - 1e-9, step), 6).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The WSOL protocol: settings and its conventions for GT boxes and masks.


@dataclasses.dataclass(frozen=True, eq=False)
class WsolProtocol:
    """`config.eval.wsol` checked and resolved (see `wsol_protocol`).

    thresholds: (T,) float64 CAM thresholds ``np.arange(0, 1, threshold_step)``, the reference's
    grid; iou_thresholds: MaxBoxAccV2's IoU thresholds in percent; eval_size: side of the score
    maps, GT boxes and masks; fixed_threshold: `config.eval.fixed_threshold`; pxap, boxes: which
    metrics (box metrics need GT boxes, PxAP GT masks).
    """

    thresholds: np.ndarray
    threshold_step: float
    iou_thresholds: tuple[int, ...]
    eval_size: int
    fixed_threshold: float
    pxap: bool
    boxes: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold_step": self.threshold_step,
            "num_thresholds": len(self.thresholds),
            "iou_thresholds": list(self.iou_thresholds),
            "eval_size": self.eval_size,
            "fixed_threshold": self.fixed_threshold,
            "pxap": self.pxap,
            "boxes": self.boxes,
        }


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def wsol_protocol(config: ml_collections.ConfigDict) -> WsolProtocol | None:
    """Checks `config.eval.wsol` and `config.eval.fixed_threshold`; None when WSOL is disabled.

    Raises ValueError naming the config key at fault and how to fix it.
    """
    ev = config.eval
    if "wsol" not in ev:
        raise ValueError(
            "config.eval.wsol is missing; add the section as in configs/default.py (or set "
            "config.eval.wsol.enabled = False there to skip the WSOL protocol)."
        )
    w = ev.wsol
    keys = set(w.keys())
    if keys != _WSOL_KEYS:
        raise ValueError(
            f"config.eval.wsol has unknown keys {sorted(keys - _WSOL_KEYS)} and lacks "
            f"{sorted(_WSOL_KEYS - keys)}; its keys are {sorted(_WSOL_KEYS)} (configs/default.py)."
        )
    if not isinstance(w.enabled, bool):
        raise ValueError(f"config.eval.wsol.enabled must be True or False; got {w.enabled!r}.")
    if not w.enabled:
        return None
    step = w.threshold_step
    # Score maps have 256 levels: finer steps only grow the PxAP histograms and level tables.
    if not _is_number(step) or not 1e-4 <= step < 1:
        raise ValueError(
            "config.eval.wsol.threshold_step must be a number in [0.0001, 1): the CAM threshold "
            f"grid is np.arange(0, 1, step), the reference's cam_curve_interval (0.001); got "
            f"{step!r}."
        )
    ious = w.iou_thresholds
    if (
        not isinstance(ious, tuple | list)
        or not ious
        or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in ious)
        or not all(0 < d <= 100 for d in ious)
        or len(set(ious)) != len(ious)
    ):
        raise ValueError(
            "config.eval.wsol.iou_thresholds must be distinct integer percentages in (0, 100], "
            f"e.g. (30, 50, 70) as the reference (IoU >= 0.5 is 50); got {ious!r}."
        )
    size = w.eval_size
    if not isinstance(size, numbers.Integral) or isinstance(size, bool) or size < 0:
        raise ValueError(
            "config.eval.wsol.eval_size must be an integer >= 0, the side of the score maps; "
            "0 means config.data.image_size (the reference scores maps at its input size); "
            f"got {size!r}."
        )
    fixed = ev.fixed_threshold
    if not _is_number(fixed) or not 0 <= fixed <= 1:
        raise ValueError(
            f"config.eval.fixed_threshold must be a CAM threshold in [0, 1] (the CAM paper's 0.2); "
            f"got {fixed!r}."
        )
    for key in ("pxap", "boxes"):
        if not isinstance(w[key], bool):
            raise ValueError(f"config.eval.wsol.{key} must be True or False; got {w[key]!r}.")
    if not (w.pxap or w.boxes):
        raise ValueError(
            "config.eval.wsol.pxap and .boxes are both False: no WSOL metric is left; set "
            "config.eval.wsol.enabled = False instead."
        )
    return WsolProtocol(
        thresholds=wsol.default_thresholds(float(step)),
        threshold_step=float(step),
        iou_thresholds=tuple(int(d) for d in ious),
        eval_size=int(size) or config.data.image_size,
        fixed_threshold=float(fixed),
        pxap=w.pxap,
        boxes=w.boxes,
    )


def protocol_boxes(
    boxes: np.ndarray, image_size: int, eval_size: int, original_sizes: np.ndarray
) -> np.ndarray:
    """Pipeline GT boxes -> the reference evaluator's GT boxes at the evaluation size.

    The reference holds boxes in original-image pixels with inclusive ends (CUB's x + w, the
    ILSVRC XML's xmax) and resizes each coordinate with ``resize_bbox``: ``int(c * E / L)``
    for an original extent L (`wsol_io.resize_boxes`). This recovers those boxes from the
    pipeline's and applies the same arithmetic, so the counts match the reference's on its
    datasets whatever the image and evaluation sizes.

    Args:
      boxes: (B, M, 4) float (x0, y0, x1, y1) pixels of the image_size x image_size image with
        exclusive ends (`pipeline.pixel_boxes`: columns a..b give x0 = a, x1 = b + 1).
      image_size, eval_size: sides of the network's image and of the score maps.
      original_sizes: (B, 2) int (height, width) of the images before resizing
        (`pipeline.EvalPreprocess`'s 'original_size').

    Returns:
      (B, M, 4) int32 (x0, y0, x1, y1) with inclusive ends (``calculate_multiple_iou`` counts
      ``x1 - x0 + 1`` columns); zero padding rows stay zeros.
    """
    hw = np.asarray(original_sizes, np.int64)
    inclusive = original_boxes(boxes, image_size, hw)
    out = np.zeros(inclusive.shape, np.int32)
    for i, (h, w) in enumerate(hw):
        out[i] = wsol_io.resize_boxes(inclusive[i], (w, h), (eval_size, eval_size))
    return out


def original_boxes(boxes: np.ndarray, image_size: int, original_sizes: np.ndarray) -> np.ndarray:
    """Pipeline GT boxes -> (B, M, 4) int64 inclusive boxes in original-image pixels, the
    reference metadata's form (see `protocol_boxes` for the arguments)."""
    b = np.asarray(boxes, np.float64)
    hw = np.asarray(original_sizes, np.int64)
    if hw.shape != (b.shape[0], 2):
        raise ValueError(f"original_sizes must be ({b.shape[0]}, 2), got {hw.shape}.")
    scale = np.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], axis=1)[:, None, :] / image_size
    # Back to integer original pixels (the float32 normalised storage is exact to 1e-3 px).
    original = np.rint(b * scale)
    ends = np.maximum(original[..., 2:] - 1, original[..., :2])
    return np.concatenate([original[..., :2], ends], axis=-1).astype(np.int64)


def _nearest(mask: np.ndarray, size: int, what: str) -> np.ndarray:
    """(H, W[, 1]) -> (size, size) as ``cv2.resize(..., INTER_NEAREST)``."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"a GT {what} must be (H, W) or (H, W, 1); got shape {m.shape}.")
    h, w = m.shape
    if (h, w) == (size, size):
        return m
    # OpenCV's nearest neighbour: source index floor(dst * (src / dst)), clamped.
    rows = np.minimum(np.floor(np.arange(size) * (1.0 / (size / h))), h - 1).astype(int)
    cols = np.minimum(np.floor(np.arange(size) * (1.0 / (size / w))), w - 1).astype(int)
    return m[rows[:, None], cols[None, :]]


def protocol_mask(mask: np.ndarray, eval_size: int, ignore: np.ndarray | None = None) -> np.ndarray:
    """A dataset's object mask -> the reference's PxAP mask at the evaluation size.

    mask: (H, W) or (H, W, 1) integer, nonzero on the object; ignore: optional mask of the same
    kind, nonzero where pixels are not scored (OpenImages' ignore regions). Returns
    (eval_size, eval_size) uint8: 1 foreground, 0 background, 255 ignored (an ignored pixel
    on the object stays foreground, as the reference's ``get_mask``), each resized as
    ``cv2.resize(..., INTER_NEAREST)`` and thresholded like ``load_mask_image``.
    """
    out = (_nearest(mask, eval_size, "mask") > 0).astype(np.uint8)
    if ignore is not None:
        out[(_nearest(ignore, eval_size, "ignore mask") > 0) & (out == 0)] = 255
    return out


class _MaskedEvalPreprocess(grain.transforms.Map):
    """`pipeline.EvalPreprocess` plus 'mask': the example's `protocol_mask` at eval_size (with
    its 'ignore_mask' where the dataset has one)."""

    def __init__(self, cfg: pipeline.PreprocessConfig, eval_size: int):
        self.base = pipeline.EvalPreprocess(cfg)
        self.eval_size = eval_size

    def map(self, example: dict[str, Any]) -> pipeline.Batch:
        row = self.base.map(example)
        row["mask"] = protocol_mask(example["mask"], self.eval_size, example.get("ignore_mask"))
        return row


def host_rows(x: jax.Array) -> np.ndarray:
    """This host's rows of a batch-sharded array, in order (the whole batch on one host)."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


def _sum_over_hosts(x: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray(x, np.int32))
    return np.asarray(gathered, np.int64).sum(axis=0)


# --------------------------------------------------------------------------------------------
# WSOL counts of a split and their metrics.


@dataclasses.dataclass
class WsolCounts:
    """The WSOL protocol's integer counts over one split, and the metrics made from them.

    v1: images whose largest contour's box has IoU >= 0.5 (MaxBoxAcc), v2: whose best box of
    all contours reaches each IoU threshold (MaxBoxAccV2), both at every grid threshold plus
    the fixed one (last column); top1_loc: as v1 but counting only images whose top-1 class is
    right, at the `operating` thresholds (all three None without box metrics); pxap: score
    histograms of GT fg/bg pixels (None without PxAP).
    """

    protocol: WsolProtocol
    operating: tuple[float, ...]
    v1: wsol.WsolBoxAccumulator | None
    v2: wsol.WsolBoxAccumulator | None
    top1_loc: wsol.WsolBoxAccumulator | None
    pxap: wsol.PxAPAccumulator | None
    num_images: int = 0

    @classmethod
    def create(cls, protocol: WsolProtocol, operating: Sequence[float]) -> "WsolCounts":
        curve = np.append(protocol.thresholds, protocol.fixed_threshold)
        b = protocol.boxes
        return cls(
            protocol,
            tuple(float(t) for t in operating),
            wsol.WsolBoxAccumulator(curve, (V1_IOU,)) if b else None,
            wsol.WsolBoxAccumulator(curve, protocol.iou_thresholds) if b else None,
            wsol.WsolBoxAccumulator(np.asarray(operating, np.float64), (V1_IOU,)) if b else None,
            wsol.PxAPAccumulator(protocol.thresholds) if protocol.pxap else None,
        )

    def update(
        self,
        quantized: np.ndarray | None,
        gt_boxes: np.ndarray | None,
        num_gt: np.ndarray | None,
        valid: np.ndarray,
        top1_correct: np.ndarray,
        pxap_histograms: jax.Array | None = None,
    ) -> None:
        """Adds one batch of this host: quantized (B, E, E) uint8 score maps, gt_boxes (B, M, 4)
        int32 inclusive at E (`protocol_boxes`), num_gt (B,) (those three unused without box
        metrics), valid (B,) bool, top1_correct (B,) bool; pxap_histograms (2, T + 2) of the
        whole batch when PxAP is on."""
        n = int(np.sum(valid))
        self.num_images += n
        if self.pxap is not None:
            self.pxap.update(pxap_histograms)
        if self.v1 is None:
            return
        counts = wsol.box_correct_counts
        args = (quantized, gt_boxes, num_gt)
        curve = self.v1.thresholds
        self.v1.update(counts(*args, curve, (V1_IOU,), multi_contour=False, valid=valid), n)
        self.v2.update(
            counts(*args, curve, self.protocol.iou_thresholds, multi_contour=True, valid=valid), n
        )
        right = valid & top1_correct
        ops = self.top1_loc.thresholds
        self.top1_loc.update(counts(*args, ops, (V1_IOU,), multi_contour=False, valid=right), n)

    def sum_over_hosts(self) -> None:
        """Adds the other hosts' box counts (the PxAP histograms are global already)."""
        self.num_images = int(_sum_over_hosts(np.asarray(self.num_images)))
        for acc in (self.v1, self.v2, self.top1_loc):
            if acc is None:
                continue
            acc.counts = _sum_over_hosts(acc.counts)
            acc.num_images = int(_sum_over_hosts(np.asarray(acc.num_images)))

    def _curves(self) -> tuple[np.ndarray, np.ndarray]:
        """BoxAcc percent on the grid: V1 (T,), V2 (D, T)."""
        t = len(self.protocol.thresholds)
        return self.v1.box_accuracy()[0, :t], self.v2.box_accuracy()[:, :t]

    def best_indices(self) -> tuple[int, np.ndarray]:
        """Grid index of MaxBoxAcc's threshold and (D,) of each IoU's MaxBoxAccV2 threshold.

        The reference reports only the maxima; on ties the lowest threshold is taken here.
        """
        if self.v1 is None:
            raise ValueError("no box metrics were counted (config.eval.wsol.boxes is False).")
        v1, v2 = self._curves()
        return int(np.argmax(v1)), np.argmax(v2, axis=1)

    def _top1_loc_at(self, threshold: float) -> float | None:
        if threshold not in self.operating:
            return None
        return float(self.top1_loc.box_accuracy()[0, self.operating.index(threshold)])

    def summary(self, val: "WsolCounts | None" = None) -> dict[str, Any]:
        """Metrics in percent (see README); with `val`, also at the thresholds it chose."""
        pxap = None if self.pxap is None else self.pxap.pxap()
        if self.v1 is None:
            return {"num_images": self.num_images, "pxap": pxap}
        grid = self.protocol.thresholds
        ious = [str(d) for d in self.protocol.iou_thresholds]
        v1, v2 = self._curves()
        i1, i2 = self.best_indices()
        v2_max = v2[np.arange(len(ious)), i2]
        fixed_v2 = self.v2.box_accuracy()[:, -1]
        out = {
            "num_images": self.v1.num_images,
            "max_box_acc": float(v1[i1]),
            "max_box_acc_threshold": float(grid[i1]),
            "max_box_acc_v2": float(np.mean(v2_max)),
            "max_box_acc_v2_per_iou": dict(zip(ious, map(float, v2_max), strict=True)),
            "max_box_acc_v2_thresholds": dict(zip(ious, map(float, grid[i2]), strict=True)),
            "at_fixed_threshold": {
                "threshold": self.protocol.fixed_threshold,
                "box_acc": float(self.v1.box_accuracy()[0, -1]),
                "box_acc_v2": float(np.mean(fixed_v2)),
                "box_acc_v2_per_iou": dict(zip(ious, map(float, fixed_v2), strict=True)),
                "top1_loc": self._top1_loc_at(self.protocol.fixed_threshold),
            },
            "pxap": pxap,
        }
        if val is not None:
            j1, j2 = val.best_indices()
            at_v2 = v2[np.arange(len(ious)), j2]
            out["at_val_thresholds"] = {
                "threshold": float(grid[j1]),
                "box_acc": float(v1[j1]),
                "top1_loc": self._top1_loc_at(float(grid[j1])),
                "box_acc_v2": float(np.mean(at_v2)),
                "box_acc_v2_per_iou": dict(zip(ious, map(float, at_v2), strict=True)),
                "box_acc_v2_thresholds": dict(zip(ious, map(float, grid[j2]), strict=True)),
            }
        return out


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
        self.mesh = mesh
        self.protocol = protocol
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

        def dense(variables, batch):
            images = pipeline.normalize_images(batch["image"], mean, std)
            logits, out = model.apply(variables, images, train=False)
            cams = cam_lib.cams_for_classes(
                out["feature_map"], cam_lib.head_kernel(variables), batch["label"]
            )
            scoremaps = cam_lib.postprocess(cams, (size, size), method=ev.resize_method)
            _, top = jax.lax.top_k(logits, self.top_k)
            counts = localization_counts(
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
            return cams, scoremaps, top, counts

        def wsol_step(variables, batch):
            cams, scoremaps, top, counts = dense(variables, batch)
            e = protocol.eval_size
            if (e, ev.resize_method) != (size, "bicubic"):
                # The protocol's maps: OpenCV INTER_CUBIC to the evaluation size, min-max.
                scoremaps = cam_lib.postprocess(cams, (e, e), method="bicubic")
            out = {
                "loc": counts,
                "scoremaps": scoremaps,  # stays on device unless a caller fetches it
                "quantized": wsol.quantize_scoremaps(scoremaps),
                "top1_correct": top[:, 0] == batch["label"],
            }
            if protocol.pxap:
                # Padding rows of a ragged last batch are ignored pixels (255).
                masks = jnp.where(batch["valid"][:, None, None], batch["mask"], 255)
                out["pxap"] = wsol.pxap_histograms(scoremaps, masks, protocol.thresholds)
            return out

        def scoremap_step(variables, batch):
            """The protocol's score maps alone (exports need nothing else)."""
            images = pipeline.normalize_images(batch["image"], mean, std)
            _, out = model.apply(variables, images, train=False)
            cams = cam_lib.cams_for_classes(
                out["feature_map"], cam_lib.head_kernel(variables), batch["label"]
            )
            e = protocol.eval_size
            return cam_lib.postprocess(cams, (e, e), method="bicubic")

        self._step = jax.jit(lambda variables, batch: dense(variables, batch)[3])
        self._wsol_step = jax.jit(wsol_step) if protocol is not None else None
        self._scoremap_step = jax.jit(scoremap_step) if protocol is not None else None

    def _batches(self, source: Sequence, max_images: int, masks: bool) -> Iterator[pipeline.Batch]:
        source = experiment.limit(source, max_images)
        ev, threads = self.config.eval, self.config.data.num_threads
        prep = _MaskedEvalPreprocess(self.prep, self.protocol.eval_size) if masks else None
        return pipeline.eval_batches(source, self.prep, ev.batch_size, threads, prep)

    def evaluate(
        self, variables: Any, source: Sequence, max_images: int = 0
    ) -> LocalizationAccumulator:
        """Counts over the first max_images (0: all) examples of a source."""
        acc = LocalizationAccumulator(self.thresholds, self.center_fractions)
        for host_batch in self._batches(source, max_images, masks=False):
            batch = pipeline.shard_batch(
                {k: host_batch[k] for k in ("image", "label", "boxes", "num_boxes", "valid")},
                self.sharding,
            )
            acc.update(self._step(variables, batch))
        return acc

    def wsol_outputs(
        self, variables: Any, source: Sequence, max_images: int = 0
    ) -> Iterator[tuple[pipeline.Batch, dict[str, jax.Array]]]:
        """(host batch, device outputs of the WSOL step) per batch of a source.

        Outputs: 'loc' (`localization_counts`), 'scoremaps' (B, E, E) float32, 'quantized'
        (B, E, E) uint8, 'top1_correct' (B,) bool and, with PxAP, 'pxap' (2, T + 2). The next
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
        yield from self._pipelined(self._wsol_step, variables, batches, keys)

    def scoremap_outputs(
        self, variables: Any, source: Sequence, max_images: int = 0
    ) -> Iterator[tuple[pipeline.Batch, jax.Array]]:
        """(host batch, (B, E, E) float32 protocol score maps on device) per batch, as
        `wsol_outputs` makes them but without the metrics' work (for exports)."""
        if self.protocol is None:
            raise ValueError("this Evaluator has no WSOL protocol; pass wsol_protocol(config).")
        batches = self._batches(source, max_images, masks=False)
        yield from self._pipelined(self._scoremap_step, variables, batches, ["image", "label"])

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
    ) -> tuple[LocalizationAccumulator, WsolCounts]:
        """One pass over a source: `evaluate`'s counts and the WSOL protocol's.

        val_threshold: MaxBoxAcc's threshold chosen on validation; top-1 loc is counted there
        as well as at config.eval.fixed_threshold.
        """
        p = self.protocol
        operating = [p.fixed_threshold] + ([val_threshold] if val_threshold is not None else [])
        loc = LocalizationAccumulator(self.thresholds, self.center_fractions)
        counts = WsolCounts.create(p, operating)
        image_size = self.config.data.image_size
        for host_batch, out in self.wsol_outputs(variables, source, max_images):
            loc.update(out["loc"])
            boxes = (
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
                *boxes,
                np.asarray(host_batch["valid"], bool),
                host_rows(out["top1_correct"]),
                out.get("pxap"),
            )
        counts.sum_over_hosts()
        return loc, counts


def restore_variables(config: ml_collections.ConfigDict, model, mesh, workdir: str) -> dict:
    """The model variables of workdir's latest checkpoint, replicated on the mesh, plus 'step'
    (pop it before `model.apply`)."""
    from camjax.train import checkpoint, loop, optim  # training imports evaluation, not the reverse

    tx = optim.create_optimizer(config.optim, config.train.num_steps)
    manager = checkpoint.create_manager(workdir, config.train.keep_checkpoints)
    state = checkpoint.restore(manager, loop.abstract_train_state(config, model, tx, mesh), config)
    manager.close()
    return {**state.variables, "step": state.step}


def run_evaluation(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Restores the latest checkpoint in workdir, evaluates, writes metrics.json and a gallery."""

    protocol = wsol_protocol(config)  # config errors before any restoring or data
    mesh = experiment.make_mesh()
    model = experiment.build_model(config)
    variables = restore_variables(config, model, mesh, workdir)
    step = int(variables.pop("step"))
    sources = experiment.data_sources(config)
    val_source, test_source = sources[config.data.val_split], sources[config.data.test_split]
    evaluator = Evaluator(config, model, mesh, protocol)
    max_images = config.eval.max_images

    if protocol is None:
        val = evaluator.evaluate(variables, val_source, max_images)
        test = evaluator.evaluate(variables, test_source, max_images)
    else:
        val, val_wsol = evaluator.evaluate_wsol(variables, val_source, max_images)
        chosen_v1 = (
            float(protocol.thresholds[val_wsol.best_indices()[0]]) if protocol.boxes else None
        )
        test, test_wsol = evaluator.evaluate_wsol(variables, test_source, max_images, chosen_v1)
    chosen = val.best_threshold()
    k = evaluator.top_k
    rates = test.rates()
    results = {
        "step": step,
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
    if protocol is not None:
        results["wsol"] = {
            "protocol": protocol.to_dict(),
            "val": val_wsol.summary(),
            "test": test_wsol.summary(val_wsol),
        }
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        # Written aside and renamed, so an interrupted run never leaves a truncated file.
        path = os.path.join(workdir, "metrics.json")
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=2)
        os.replace(path + ".tmp", path)
        write_gallery(config, model, variables, test_source, chosen, workdir)
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
    """The headline numbers of run_evaluation as small tables on stdout (process 0 only)."""
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
    if "wsol" in results:
        _print_wsol(results["wsol"])


def _print_wsol(w: dict[str, Any]) -> None:
    p, val, test = w["protocol"], w["val"], w["test"]
    if not p["boxes"]:
        print(
            f"\nWSOL protocol (Choe et al., CVPR 2020), masks only: GT-class CAM, bicubic to "
            f"{p['eval_size']}^2, {p['num_thresholds']} thresholds; PxAP val {val['pxap']:.2f}% "
            f"({val['num_images']} images), test {test['pxap']:.2f}% ({test['num_images']})"
        )
        return
    at_val, at_fixed = test["at_val_thresholds"], test["at_fixed_threshold"]
    print(
        f"\nWSOL protocol (Choe et al., CVPR 2020): GT-class CAM, bicubic to {p['eval_size']}^2, "
        f"{p['num_thresholds']} CAM thresholds; val {val['num_images']}, "
        f"test {test['num_images']} images; max over thresholds @ its threshold"
    )

    def row(label, *cells):
        text = [
            "-" if c is None else f"{c[0]:.2f}% @{c[1]:.3f}" if c[1:] else f"{c[0]:.2f}%"
            for c in cells
        ]
        print(f"{label:<20}" + "".join(f"{t:>17}" for t in text))

    print(
        f"{'':<20}{'val max':>17}{'test max':>17}{'test @ val thr':>17}"
        f"{'test @ ' + format(p['fixed_threshold'], 'g'):>17}"
    )
    row(
        "MaxBoxAcc (IoU 50)",
        (val["max_box_acc"], val["max_box_acc_threshold"]),
        (test["max_box_acc"], test["max_box_acc_threshold"]),
        (at_val["box_acc"], at_val["threshold"]),
        (at_fixed["box_acc"],),
    )
    row(
        "MaxBoxAccV2 (mean)",
        (val["max_box_acc_v2"],),
        (test["max_box_acc_v2"],),
        (at_val["box_acc_v2"],),
        (at_fixed["box_acc_v2"],),
    )
    for d in map(str, p["iou_thresholds"]):
        row(
            f"  IoU {d}",
            (val["max_box_acc_v2_per_iou"][d], val["max_box_acc_v2_thresholds"][d]),
            (test["max_box_acc_v2_per_iou"][d], test["max_box_acc_v2_thresholds"][d]),
            (at_val["box_acc_v2_per_iou"][d], at_val["box_acc_v2_thresholds"][d]),
            (at_fixed["box_acc_v2_per_iou"][d],),
        )
    row("top-1 loc (IoU 50)", None, None, (at_val["top1_loc"],), (at_fixed["top1_loc"],))
    if p["pxap"]:
        row("PxAP", (val["pxap"],), (test["pxap"],))
