"""Localization from CAMs: boxes from score maps, the localization metrics, and the WSOL protocol.

`wsol` computes the WSOL protocol's counts (Choe et al., CVPR 2020) exactly and fast;
`wsol_io` reads and writes the reference evaluator's metadata and score-map files.
"""

from camjax.localization import wsol, wsol_io
from camjax.localization.boxes import (
    BACKGROUND,
    box_from_scoremap,
    label_components,
    largest_component_box,
)
from camjax.localization.metrics import (
    LocalizationAccumulator,
    box_iou,
    centered_boxes,
    localization_counts,
    max_iou_with_gt,
)
from camjax.localization.wsol import (
    PxAPAccumulator,
    WsolBoxAccumulator,
    box_correct_counts,
    pxap_histograms,
    quantize_scoremaps,
)
from camjax.localization.wsol_io import (
    WsolMetadata,
    load_scoremaps,
    read_metadata,
    resized_gt_boxes,
    save_scoremaps,
    write_metadata,
)

__all__ = [
    "BACKGROUND",
    "LocalizationAccumulator",
    "PxAPAccumulator",
    "WsolBoxAccumulator",
    "WsolMetadata",
    "box_correct_counts",
    "box_from_scoremap",
    "box_iou",
    "centered_boxes",
    "label_components",
    "largest_component_box",
    "load_scoremaps",
    "localization_counts",
    "max_iou_with_gt",
    "pxap_histograms",
    "quantize_scoremaps",
    "read_metadata",
    "resized_gt_boxes",
    "save_scoremaps",
    "write_metadata",
    "wsol",
    "wsol_io",
]
