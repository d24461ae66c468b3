"""An independent OpenCV + numpy reference of the WSOL evaluation protocol (Choe et al., 2020).

Each function follows the arithmetic of one function of the published evaluator
(clovaai/wsolevaluation, ``evaluation.py`` and ``inference.py``), step by step, so the tests can
check ``camjax.localization.wsol`` against it for identical integer counts. It is written for
clarity, not speed: one ``cv2.findContours`` call per map and threshold, as the original.

Conventions of the original kept here:

* score maps are float64 in [0, 1] (the original casts CAMs with ``astype(np.float)``); float32
  inputs are widened exactly;
* boxes are ``(x0, y0, x1, y1)`` with *inclusive* pixel coordinates in the IoU (areas get +1),
  while predicted boxes are built as ``x1 = x + w`` (one past the last pixel) and clipped to
  ``W - 1`` / ``H - 1``;
* IoU thresholds are integer percentages, a box hits when ``IoU >= delta / 100``.
"""

import os

import cv2
import numpy as np

# OpenCV 3 returns (image, contours, hierarchy), later versions (contours, hierarchy).
_CONTOUR_INDEX = 1 if cv2.__version__.split(".")[0] == "3" else 0


def normalize_scoremap(cam: np.ndarray) -> np.ndarray:
    """Mirrors ``inference.normalize_scoremap``: NaN anywhere or a constant map -> zeros, else
    min-max to [0, 1], in the map's own dtype (float64 in the original pipeline)."""
    cam = np.array(cam, copy=True)
    if np.isnan(cam).any():
        return np.zeros_like(cam)
    if cam.min() == cam.max():
        return np.zeros_like(cam)
    cam -= cam.min()
    cam /= cam.max()
    return cam


def resize_cam(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Mirrors ``CAMComputer.compute_and_evaluate_cams``: bicubic ``cv2.resize`` to (H, W).

    The original passes the image tensor's (H, W) as OpenCV's dsize (width, height); with the
    square 224x224 inputs it uses the two agree. Here ``size`` is (H, W) and converted."""
    return cv2.resize(
        np.asarray(cam, np.float64), (size[1], size[0]), interpolation=cv2.INTER_CUBIC
    )


def compute_bboxes_from_scoremaps(
    scoremap: np.ndarray, thresholds, multi_contour_eval: bool = False
) -> tuple[list[np.ndarray], list[int]]:
    """Mirrors ``evaluation.compute_bboxes_from_scoremaps``.

    scoremap: (H, W) float in [0, 1]. Returns, per threshold, an (k, 4) int array of boxes and k.
    """
    scoremap = np.asarray(scoremap, np.float64)
    height, width = scoremap.shape
    image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
    peak = np.max(image)
    boxes_per_threshold, counts = [], []
    for threshold in thresholds:
        # THRESH_BINARY on uint8 with an integer level keeps pixels strictly above it.
        _, binary = cv2.threshold(
            src=image, thresh=int(threshold * peak), maxval=255, type=cv2.THRESH_BINARY
        )
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[_CONTOUR_INDEX]
        if len(contours) == 0:
            boxes_per_threshold.append(np.asarray([[0, 0, 0, 0]]))
            counts.append(1)
            continue
        if not multi_contour_eval:
            # Python's max keeps the first of equal keys, in OpenCV's contour order.
            contours = [max(contours, key=cv2.contourArea)]
        boxes = []
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
        boxes_per_threshold.append(np.asarray(boxes))
        counts.append(len(contours))
    return boxes_per_threshold, counts


def calculate_multiple_iou(box_a: np.ndarray, box_b: np.ndarray) -> np.ndarray:
    """Mirrors ``evaluation.calculate_multiple_iou``: (A, 4), (B, 4) -> (A, B) float64 IoU with
    inclusive coordinates; a non-positive union gives 0."""
    a = np.asarray(box_a)[:, None, :]
    b = np.asarray(box_b)[None, :, :]
    iw = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    ih = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    degenerate = union <= 0
    ious = inter / np.where(degenerate, 1, union)
    ious[degenerate] = 0
    return ious


def box_correct_counts(
    scoremaps,
    gt_boxes,
    thresholds,
    iou_thresholds=(30, 50, 70),
    multi_contour_eval: bool = True,
) -> np.ndarray:
    """Mirrors ``BoxEvaluator.accumulate`` over a list of maps.

    scoremaps: sequence of (H, W) maps in [0, 1]; gt_boxes: sequence of (M_i, 4) int boxes.
    Returns int64 (len(iou_thresholds), len(thresholds)): images correct at each
    (delta, threshold), i.e. ``num_correct`` of the original.
    """
    counts = np.zeros((len(iou_thresholds), len(thresholds)), np.int64)
    for scoremap, gts in zip(scoremaps, gt_boxes, strict=True):
        boxes, numbers = compute_bboxes_from_scoremaps(scoremap, thresholds, multi_contour_eval)
        ious = calculate_multiple_iou(np.concatenate(boxes, axis=0), np.asarray(gts))
        best_per_box = ious.max(1)
        best, start = [], 0
        for k in numbers:
            best.append(max(best_per_box[start : start + k]))
            start += k
        best = np.asarray(best)
        for d, delta in enumerate(iou_thresholds):
            counts[d] += best >= delta / 100
    return counts


def max_box_acc(counts: np.ndarray, num_images: int) -> np.ndarray:
    """Mirrors ``BoxEvaluator.compute``: per delta, the best accuracy (percent) over thresholds.

    MaxBoxAccV2 is the mean of this over deltas (with multi-contour counts); MaxBoxAcc (V1) is
    its entry for delta 50 (with largest-contour counts)."""
    return np.asarray([(row * 100.0 / float(num_images)).max() for row in counts])


def load_mask_image(file_path: str, resize_size: tuple[int, int]) -> np.ndarray:
    """Mirrors ``evaluation.load_mask_image``: grayscale float32, nearest resize to (W, H)."""
    mask = np.float32(cv2.imread(file_path, cv2.IMREAD_GRAYSCALE))
    return cv2.resize(mask, resize_size, interpolation=cv2.INTER_NEAREST)


def get_mask(mask_root: str, mask_paths, ignore_path: str, size: int = 224) -> np.ndarray:
    """Mirrors ``evaluation.get_mask``: the union of the instance masks (> 0.5) is 1, the
    ignore mask's pixels (> 0.5) off the object are 255, the rest 0; uint8 (size, size)."""
    instances = [
        load_mask_image(os.path.join(mask_root, p), (size, size)) > 0.5 for p in mask_paths
    ]
    foreground = np.stack(instances, axis=0).any(axis=0)
    ignore_box = load_mask_image(os.path.join(mask_root, ignore_path), (size, size)) > 0.5
    ignore = np.logical_and(ignore_box, np.logical_not(foreground))
    return foreground.astype(np.uint8) + 255 * ignore.astype(np.uint8)


def pxap_histograms(scoremaps, masks, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """Mirrors ``MaskEvaluator.accumulate``: histograms of the scores of GT-foreground
    (mask == 1) and GT-background (mask == 0) pixels; other mask values are ignored.

    Bins have right edges ``thresholds + [1, 2, 3]`` as in the original. Returns two float64
    (T + 2,) arrays (the original keeps float histograms)."""
    edges = np.append(np.asarray(thresholds, np.float64), [1.0, 2.0, 3.0])
    true_hist = np.zeros(len(edges) - 1, np.float64)
    false_hist = np.zeros(len(edges) - 1, np.float64)
    for scoremap, mask in zip(scoremaps, masks, strict=True):
        scoremap = np.asarray(scoremap, np.float64)
        true_hist += np.histogram(scoremap[mask == 1], bins=edges)[0].astype(np.float64)
        false_hist += np.histogram(scoremap[mask == 0], bins=edges)[0].astype(np.float64)
    return true_hist, false_hist


def pxap(true_hist: np.ndarray, false_hist: np.ndarray) -> float:
    """Mirrors ``MaskEvaluator.compute``: area under the pixel precision-recall curve, percent."""
    num_true = true_hist.sum()
    tp = true_hist[::-1].cumsum()
    fn = num_true - tp
    fp = false_hist[::-1].cumsum()
    if ((tp + fn) <= 0).all():
        raise RuntimeError("No positive ground truth in the eval set.")
    if ((tp + fp) <= 0).all():
        raise RuntimeError("No positive prediction in the eval set.")
    non_zero = (tp + fp) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
    return float((precision[1:] * np.diff(recall))[non_zero[1:]].sum() * 100)
