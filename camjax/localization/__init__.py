"""Localization from CAMs: boxes from score maps and the localization metrics."""

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

__all__ = [
    "BACKGROUND",
    "LocalizationAccumulator",
    "box_from_scoremap",
    "box_iou",
    "centered_boxes",
    "label_components",
    "largest_component_box",
    "localization_counts",
    "max_iou_with_gt",
]
