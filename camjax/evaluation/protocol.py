"""The WSOL protocol of Choe et al. (CVPR 2020) as `evaluate.py` applies it to a split.

Settings (`config.eval.wsol` -> `WsolProtocol`), the reference evaluator's conventions for GT
boxes (`protocol_boxes`, from original-pixel inclusive boxes with its `resize_bbox`
arithmetic) and masks (`protocol_mask`, nearest-neighbour resize, 255 = ignored), the split's
integer counts and their metrics (`WsolCounts`: MaxBoxAcc, MaxBoxAccV2, BoxAcc at fixed and
validation-chosen thresholds, top-1 loc, PxAP). The arrays come
from `evaluator.Evaluator`; the counting itself is `camjax.localization.wsol`; the table is
`report.print_wsol`.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import cv2
import grain
import jax
import ml_collections
import numpy as np

from camjax import errors
from camjax.data import pipeline
from camjax.localization import pxap as pxap_lib
from camjax.localization import wsol, wsol_frame

# MaxBoxAcc (the CVPR version's box metric) and top-1 loc: IoU >= 0.5, largest contour's box.
V1_IOU = 50


# --------------------------------------------------------------------------------------------
# The WSOL protocol: settings and its conventions for GT boxes and masks.


@dataclasses.dataclass(frozen=True, eq=False)
class WsolProtocol:
    """`config.eval.wsol` checked and resolved (see `wsol_protocol`).

    thresholds: (T,) float64 CAM thresholds ``np.arange(0, 1, threshold_step)``, the reference's
    grid; iou_thresholds: MaxBoxAccV2's IoU thresholds in percent; eval_size: side of the score
    maps, GT boxes and masks; fixed_threshold: `config.eval.fixed_threshold`; pxap, boxes: which
    metrics (box metrics need GT boxes, PxAP GT masks); exact_float64: score maps made on the
    host in float64 as the reference makes them (`reference_scoremaps`) instead of in float32
    on device.
    """

    thresholds: np.ndarray
    threshold_step: float
    iou_thresholds: tuple[int, ...]
    eval_size: int
    fixed_threshold: float
    pxap: bool
    boxes: bool
    exact_float64: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold_step": self.threshold_step,
            "num_thresholds": len(self.thresholds),
            "iou_thresholds": list(self.iou_thresholds),
            "eval_size": self.eval_size,
            "fixed_threshold": self.fixed_threshold,
            "pxap": self.pxap,
            "boxes": self.boxes,
            "exact_float64": self.exact_float64,
        }


def wsol_protocol(config: ml_collections.ConfigDict) -> WsolProtocol | None:
    """Checks the values of `config.eval.wsol` and `config.eval.fixed_threshold`; None when
    WSOL is disabled. Keys and types are the locked ConfigDict's to check (a typo'd or
    missing key, a string for a number, fail there).

    Raises ValueError naming the config key at fault and how to fix it.
    """
    ev = config.eval
    w = ev.wsol
    if not w.enabled:
        return None
    step = w.threshold_step
    # Score maps have 256 levels: finer steps only grow the PxAP histograms and level tables.
    if not 1e-4 <= step < 1:
        raise ValueError(
            "config.eval.wsol.threshold_step must be a number in [0.0001, 1): the CAM threshold "
            f"grid is np.arange(0, 1, step), the reference's cam_curve_interval (0.001); got "
            f"{step!r}."
        )
    ious = w.iou_thresholds
    if (
        not isinstance(ious, tuple | list)
        or not ious
        or not all(errors.is_int_at_least(d, 1) and d <= 100 for d in ious)
        or len(set(ious)) != len(ious)
    ):
        raise ValueError(
            "config.eval.wsol.iou_thresholds must be distinct integer percentages in (0, 100], "
            f"e.g. (30, 50, 70) as the reference (IoU >= 0.5 is 50); got {ious!r}."
        )
    size = w.eval_size
    if size < 0:
        raise ValueError(
            "config.eval.wsol.eval_size must be an integer >= 0, the side of the score maps; "
            "0 means config.data.image_size (the reference scores maps at its input size); "
            f"got {size!r}."
        )
    fixed = ev.fixed_threshold
    if not 0 <= fixed <= 1:
        raise ValueError(
            f"config.eval.fixed_threshold must be a CAM threshold in [0, 1] (the CAM paper's 0.2); "
            f"got {fixed!r}."
        )
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
        exact_float64=w.exact_float64,
    )


def reference_scoremaps(cams: np.ndarray, eval_size: int) -> np.ndarray:
    """CAMs at feature-map resolution -> the reference's score maps, its own arithmetic.

    The reference widens each CAM to float64, resizes it with ``cv2.resize(INTER_CUBIC)`` to the
    evaluation size and applies ``normalize_scoremap`` in float64: a map with any NaN, or a
    constant one, becomes zeros, any other ``(s - min) / max(s - min)``. OpenCV on the host
    rather than `camjax.resize` on device, for exactness: float32 moves a uint8 level in about a
    quarter of maps (benchmarks/RESULTS.md).

    Args:
      cams: (B, h, w) float, e.g. the GT class's CAMs (NaN for an invalid class).
      eval_size: side E of the score maps.

    Returns:
      (B, E, E) float64 in [0, 1].
    """
    cams = np.asarray(cams, np.float64)
    if cams.ndim != 3:
        raise ValueError(f"cams must be (B, h, w), got shape {cams.shape}.")
    out = np.zeros((cams.shape[0], eval_size, eval_size), np.float64)
    for i, cam in enumerate(cams):
        s = cv2.resize(cam, (eval_size, eval_size), interpolation=cv2.INTER_CUBIC)
        lo, hi = s.min(), s.max()  # NaN propagates to both
        if np.isnan(s).any() or lo == hi:
            continue  # the reference's zeros
        s -= lo
        s /= s.max()
        out[i] = s
    return out


def protocol_boxes(
    boxes: np.ndarray, image_size: int, eval_size: int, original_sizes: np.ndarray
) -> np.ndarray:
    """Pipeline GT boxes -> the reference evaluator's GT boxes at the evaluation size.

    The reference holds boxes in original-image pixels with inclusive ends (CUB's x + w, the
    ILSVRC XML's xmax) and resizes each coordinate with ``resize_bbox``: ``int(c * E / L)``
    for an original extent L (`wsol_frame.resize_boxes`). This recovers those boxes from the
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
        out[i] = wsol_frame.resize_boxes(inclusive[i], (w, h), (eval_size, eval_size))
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
    """(H, W[, 1]) -> (size, size) bool, nonzero resized as ``cv2.resize(..., INTER_NEAREST)``."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"a GT {what} must be (H, W) or (H, W, 1); got shape {m.shape}.")
    # Nearest neighbour picks pixels, so resizing the 0/1 mask equals thresholding after.
    return cv2.resize((m > 0).astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0


def protocol_mask(mask: np.ndarray, eval_size: int, ignore: np.ndarray | None = None) -> np.ndarray:
    """A dataset's object mask -> the reference's PxAP mask at the evaluation size.

    mask: (H, W) or (H, W, 1) integer, nonzero on the object; ignore: optional mask of the same
    kind, nonzero where pixels are not scored (OpenImages' ignore regions). Returns
    (eval_size, eval_size) uint8: 1 foreground, 0 background, 255 ignored (an ignored pixel
    on the object stays foreground, as the reference's ``get_mask``), each resized as
    ``cv2.resize(..., INTER_NEAREST)`` and thresholded like ``load_mask_image``.
    """
    out = _nearest(mask, eval_size, "mask").astype(np.uint8)
    if ignore is not None:
        out[_nearest(ignore, eval_size, "ignore mask") & (out == 0)] = 255
    return out


class MaskedEvalPreprocess(grain.transforms.Map):
    """`pipeline.EvalPreprocess` plus 'mask': the example's `protocol_mask` at eval_size (with
    its 'ignore_mask' where the dataset has one)."""

    def __init__(self, cfg: pipeline.PreprocessConfig, eval_size: int):
        self.base = pipeline.EvalPreprocess(cfg)
        self.eval_size = eval_size

    def map(self, example: dict[str, Any]) -> pipeline.Batch:
        row = self.base.map(example)
        row["mask"] = protocol_mask(example["mask"], self.eval_size, example.get("ignore_mask"))
        return row


def sum_over_hosts(x: np.ndarray) -> np.ndarray:
    """An integer count summed over every host (itself on one host)."""
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
    pxap: pxap_lib.PxAPAccumulator | None
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
            pxap_lib.PxAPAccumulator(protocol.thresholds) if protocol.pxap else None,
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
        curve, ops = self.v1.thresholds, self.top1_loc.thresholds
        # One largest-contour sweep serves MaxBoxAcc (all images, the curve) and top-1 loc
        # (images whose top-1 class is right, the operating thresholds).
        both = np.concatenate([curve, ops])
        masks = np.stack([valid, valid & top1_correct])
        v1 = counts(*args, both, (V1_IOU,), multi_contour=False, valid=masks)  # (2, 1, T + O)
        self.v1.update(v1[0, :, : len(curve)], n)
        self.top1_loc.update(v1[1, :, len(curve) :], n)
        self.v2.update(
            counts(*args, curve, self.protocol.iou_thresholds, multi_contour=True, valid=valid), n
        )

    def sum_over_hosts(self) -> None:
        """Adds the other hosts' box counts, and their PxAP histograms when those were binned on
        each host (exact_float64; the device's are global already)."""
        self.num_images = int(sum_over_hosts(np.asarray(self.num_images)))
        if self.pxap is not None and self.protocol.exact_float64 and jax.process_count() > 1:
            # Pixel counts can pass 2**31 while sum_over_hosts gathers int32: two 31-bit halves.
            h = self.pxap.histograms
            low = sum_over_hosts(h & (2**31 - 1))
            self.pxap.histograms = (sum_over_hosts(h >> 31) << 31) + low
        for acc in (self.v1, self.v2, self.top1_loc):
            if acc is None:
                continue
            acc.counts = sum_over_hosts(acc.counts)
            acc.num_images = int(sum_over_hosts(np.asarray(acc.num_images)))

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
