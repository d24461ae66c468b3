"""CAM pictures: heat-map overlays with boxes, for galleries and notebooks (numpy + PIL only)."""

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

GT_COLOR = (0, 220, 0)
PRED_COLOR = (255, 40, 40)


def jet(x: np.ndarray) -> np.ndarray:
    """The 'jet' colormap: float (...) in [0, 1] -> uint8 (..., 3), blue (0) to red (1); values
    outside take the nearer end's colour."""
    x = np.asarray(x, np.float32)
    if np.isnan(x).any():  # NaN has no colour: uint8 would make one up
        raise ValueError("the map holds NaN, which has no colour: replace it before drawing it.")
    x = np.clip(x, 0.0, 1.0)[..., None]
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (255 * np.concatenate([r, g, b], axis=-1)).astype(np.uint8)


def overlay(image: np.ndarray, scoremap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """image uint8 (H, W, 3), scoremap float (H, W) in [0, 1] -> blended uint8 (H, W, 3):
    (1 - alpha) * image + alpha * jet(scoremap)."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha is the map's weight in the blend, in [0, 1]; got {alpha}.")
    if image.shape[:2] != scoremap.shape:
        raise ValueError(
            f"scoremap shape {scoremap.shape} must equal the image's height and width "
            f"{image.shape[:2]}; upsample the CAM to the image first."
        )
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * jet(scoremap).astype(np.float32)
    return np.clip(mixed, 0, 255).astype(np.uint8)


def cam_picture(
    image: np.ndarray,
    scoremap: np.ndarray,
    gt_boxes: np.ndarray,
    pred_box: np.ndarray | None,
    caption: str = "",
    scale: int = 4,
) -> Image.Image:
    """Side by side: the image and the CAM overlay, both with GT (green) and CAM (red) boxes.

    Boxes are (x0, y0, x1, y1) pixels with exclusive x1/y1. Small images are enlarged by `scale`.
    """
    h, w = image.shape[:2]
    scale = max(1, scale if max(h, w) < 160 else 1)
    panels = []
    for panel in (image, overlay(image, np.asarray(scoremap))):
        pic = Image.fromarray(panel).resize((w * scale, h * scale), Image.NEAREST)
        draw = ImageDraw.Draw(pic)
        for box in np.asarray(gt_boxes).reshape(-1, 4):
            _rect(draw, box, scale, GT_COLOR)
        if pred_box is not None:
            _rect(draw, np.asarray(pred_box), scale, PRED_COLOR)
        panels.append(pic)
    caption_h = 14 if caption else 0
    out = Image.new("RGB", (2 * w * scale + 4, h * scale + caption_h), (255, 255, 255))
    out.paste(panels[0], (0, caption_h))
    out.paste(panels[1], (w * scale + 4, caption_h))
    if caption:
        ImageDraw.Draw(out).text((2, 1), caption, fill=(0, 0, 0))
    return out


def _rect(draw: ImageDraw.ImageDraw, box: np.ndarray, scale: int, color) -> None:
    x0, y0, x1, y1 = (float(v) * scale for v in box)
    if x1 > x0 and y1 > y0:
        # Exclusive ends: the last covered pixel ends at x1 * scale - 1.
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=max(1, scale // 2))


def contact_sheet(paths: Sequence[str], columns: int = 4) -> Image.Image:
    """Tiles saved pictures of equal size into one image, `columns` per row (fewer pictures:
    one row of them, no blank tiles)."""
    pics = [Image.open(p).convert("RGB") for p in paths]
    w, h = pics[0].size
    columns = min(columns, len(pics))
    rows = -(-len(pics) // columns)
    sheet = Image.new("RGB", (columns * w, rows * h), (255, 255, 255))
    for i, pic in enumerate(pics):
        sheet.paste(pic, ((i % columns) * w, (i // columns) * h))
    return sheet
