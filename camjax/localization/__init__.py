"""Localization from CAMs: one box-counting engine for the CAM paper's boxes and the WSOL protocol.

`wsol` counts boxes (Choe et al., CVPR 2020) exactly and fast, on the host max-tree of
`maxtree` (numba, loaded on first use); `boxes` is the CAM paper's heuristic as a rule of that
engine; `pxap` the protocol's PxAP; `wsol_io` reads and writes the reference evaluator's
metadata folders, `wsol_frame` its score-map and mask files and GT boxes at 224x224.
"""

from camjax.localization import pxap, wsol, wsol_frame, wsol_io
from camjax.localization.boxes import (
    LocalizationAccumulator,
    box_from_scoremap,
    box_iou,
    centered_boxes,
    localization_counts,
    max_iou_with_gt,
)
from camjax.localization.pxap import PxAPAccumulator, pxap_histograms
from camjax.localization.wsol import (
    WsolBoxAccumulator,
    box_correct_counts,
    quantize_for_thresholds,
    quantize_scoremaps,
)
from camjax.localization.wsol_frame import load_scoremaps, resized_gt_boxes, save_scoremaps
from camjax.localization.wsol_io import WsolMetadata, read_metadata, write_metadata

__all__ = [
    "LocalizationAccumulator",
    "PxAPAccumulator",
    "WsolBoxAccumulator",
    "WsolMetadata",
    "box_correct_counts",
    "box_from_scoremap",
    "box_iou",
    "centered_boxes",
    "load_scoremaps",
    "localization_counts",
    "max_iou_with_gt",
    "pxap",
    "pxap_histograms",
    "quantize_for_thresholds",
    "quantize_scoremaps",
    "read_metadata",
    "resized_gt_boxes",
    "save_scoremaps",
    "write_metadata",
    "wsol",
    "wsol_frame",
    "wsol_io",
]
