"""The reference WSOL evaluator's 224x224 frame: GT boxes resized to it, score maps and PxAP
masks stored at it (clovaai/wsolevaluation, Choe et al., CVPR 2020).

``camjax.localization.wsol_io`` reads and writes the metadata folders these files go with; the
facts below were read from the reference's ``evaluation.py``, ``inference.py`` and ``util.py``.

**Boxes at the evaluation size.** ``BoxEvaluator`` resizes every GT box to the 224x224
evaluation frame with ``resize_bbox``: each coordinate ``c`` of an image of extent ``L``
(width for x, height for y) becomes ``int(float(c) * T / L)`` for a target extent ``T``,
float64, multiplied before dividing, and truncated toward zero (a floor, as ``c >= 0``), not
rounded: x0 = 60 in a 500-pixel-wide image becomes ``int(26.88) = 26``. The order of the
operations matters at exact integers: ``45 * 224 / 80`` is exactly 126.0, but
``45 * (224 / 80)`` is 125.99999999999999. The resulting boxes are compared as inclusive pixel
coordinates (``evaluation.calculate_multiple_iou``) and must satisfy ``0 <= x0 <= x1`` and
``0 <= y0 <= y1`` (``util.check_box_convention``). Boxes are not clipped to the image.

**Score maps.** ``evaluation.evaluate_wsol`` loads the map of image ``<image_id>`` from
``<scoremap_root>/<image_id>.npy``, the id keeping its extension: ``val2/0/0.jpeg`` ->
``val2/0/0.jpeg.npy`` (``inference.py`` saves with ``np.save(<root>/<image_id>)``, which adds
``.npy``; the README's example that drops ``.jpeg`` does not match that code). Each file holds
one 2-D array at the evaluation size, 224x224: the README says "the input image size", but the
evaluator resizes boxes and masks to 224x224 whatever the image size, and its loader batches
maps, so they must all have that shape. Values lie in [0, 1] without NaN
(``util.check_scoremap_validity``). The reference writes float64 (its ``t2n`` casts to
``np.float``) and casts whatever it loads to float64, so float32 files, exactly widened, score
the same.

**Masks** (PxAP, ``MaskEvaluator``): ``get_mask`` reads each PNG named by ``localization.txt``
under ``<mask_root>/OpenImages``, keeps pixels above 0.5 and resizes to 224x224 (nearest).
"""

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from camjax.localization.wsol_io import (
    IMAGE_SIZES,
    LOCALIZATION,
    WsolMetadata,
    atomic_write,
    check_field,
    first_repeat,
)

EVAL_SIZE = (224, 224)  # (height, width) of the reference's evaluation frame.


def resize_boxes(boxes: np.ndarray, image_size, size: tuple[int, int]) -> np.ndarray:
    """``resize_bbox``: boxes (K, 4) int of an image (width, height) -> (K, 4) int64 at size
    (height, width). float64 numpy arithmetic is IEEE, operation for operation as Python's."""
    scale_to = np.array([size[1], size[0], size[1], size[0]], np.float64)
    scale_from = np.array([image_size[0], image_size[1]] * 2, np.float64)
    # Multiply, then divide, then truncate, as the reference: not c * (T / L), not rounding.
    return np.trunc(boxes.astype(np.float64) * scale_to / scale_from).astype(np.int64)


def resized_gt_boxes(
    metadata: WsolMetadata, size: tuple[int, int] = EVAL_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """GT boxes in the evaluation frame, as the reference's ``BoxEvaluator`` holds them.

    Every coordinate ``c`` of an image of width ``W`` (x) or height ``H`` (y) becomes
    ``int(float(c) * T / L)`` with ``T`` the target extent: float64, multiplied first, then
    truncated toward zero (not rounded).

    Args:
      metadata: a split with boxes and image sizes.
      size: (height, width) of the evaluation frame, the score maps' shape.

    Returns:
      gt_boxes: (N, M, 4) int32 ``(x0, y0, x1, y1)`` inclusive, M the most boxes of any image,
        zero-padded; num_gt: (N,) int32 boxes per image. Slice both by batch for
        ``camjax.localization.wsol.box_correct_counts``.
    """
    if metadata.boxes is None:
        raise ValueError(f"the split has no boxes (empty or mask-style {LOCALIZATION}).")
    if metadata.image_sizes is None:
        raise ValueError(f"resizing boxes needs image sizes, but {IMAGE_SIZES} was empty.")
    height, width = (int(s) for s in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be a positive (height, width), got {size}.")
    num_gt = np.array([len(b) for b in metadata.boxes], np.int32)
    gt_boxes = np.zeros((len(metadata), int(num_gt.max()), 4), np.int32)
    for k, (boxes, image_size) in enumerate(zip(metadata.boxes, metadata.image_sizes, strict=True)):
        gt_boxes[k, : len(boxes)] = resize_boxes(boxes, image_size, (height, width))
    return gt_boxes, num_gt


def scoremap_path(scoremap_root: str | os.PathLike, image_id: str) -> Path:
    """``<scoremap_root>/<image_id>.npy``, where the reference's evaluator looks.

    The id keeps its extension (``val2/0/0.jpeg`` -> ``val2/0/0.jpeg.npy``) and its slashes
    make subfolders. Ids must stay inside the root: no absolute paths, ``.`` or ``..``."""
    check_field(image_id, "image id")
    parts = image_id.split("/")
    if "\\" in image_id or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"image id {image_id!r} must be a relative path with '/' separators and no empty, "
            "'.' or '..' parts."
        )
    return Path(scoremap_root, image_id + ".npy")


def _check_maps(maps: np.ndarray, image_ids: Sequence[str], size) -> None:
    """Shape, dtype, NaN and range, as ``check_scoremap_validity``; errors name the image."""
    if maps.ndim != 3 or not np.issubdtype(maps.dtype, np.floating):
        raise ValueError(f"score maps must be (N, H, W) float, got {maps.dtype} {maps.shape}.")
    if len(image_ids) != maps.shape[0]:
        raise ValueError(f"got {len(image_ids)} image ids for {maps.shape[0]} score maps.")
    if size is not None and maps.shape[1:] != tuple(size):
        raise ValueError(
            f"score maps must be {tuple(size)} (height, width), the evaluation size; got "
            f"{maps.shape[1:]}."
        )
    for image_id, m in zip(image_ids, maps, strict=True):
        if np.isnan(m).any():
            raise ValueError(
                f"score map of {image_id!r} holds NaN (the reference turns such maps into zeros: "
                "normalise with camjax.cam.normalize_minmax)."
            )
        if m.size and (m.min() < 0 or m.max() > 1):
            raise ValueError(
                f"score map of {image_id!r} must lie in [0, 1], got [{m.min()}, {m.max()}]."
            )


def save_scoremaps(
    scoremap_root: str | os.PathLike,
    image_ids: Sequence[str],
    scoremaps,
    dtype=np.float64,
    size: tuple[int, int] | None = EVAL_SIZE,
) -> None:
    """Writes one ``.npy`` per image where the reference's evaluator reads it.

    Call once per batch, with the batch's real rows only. All maps are checked before any file
    is written; each file is written atomically, so an interrupted export leaves complete maps
    (old or new) and no partial ones.

    Args:
      scoremap_root: folder the evaluator's ``--scoremap_root`` will name.
      image_ids: N ids of the metadata (see ``scoremap_path``).
      scoremaps: (N, H, W) float in [0, 1] without NaN (numpy or jax), e.g. the output of
        ``camjax.cam.normalize_minmax`` after resizing to the evaluation size.
      dtype: float64, as the reference writes, or float32 (half the disk; the evaluator
        widens it exactly). float64 maps are not narrowed to float32, which would round them.
      size: (H, W) the maps must have, the evaluation size; None to skip the check.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}.")
    maps = np.asarray(scoremaps)
    image_ids = list(image_ids)
    _check_maps(maps, image_ids, size)
    if np.finfo(maps.dtype).bits > np.finfo(dtype).bits:
        raise ValueError(f"writing {maps.dtype} maps as {dtype} would round them.")
    if len(set(image_ids)) != len(image_ids):
        raise ValueError(f"image ids repeat: {first_repeat(image_ids)!r}.")
    paths = [scoremap_path(scoremap_root, i) for i in image_ids]
    for path, m in zip(paths, maps, strict=True):
        m = np.ascontiguousarray(m, dtype)
        try:
            # Through a file object np.save adds no ".npy" to the temporary name.
            atomic_write(path, lambda f, m=m: np.save(f, m, allow_pickle=False))
        except OSError as e:
            if e.filename is not None:
                raise
            # numpy's short write names no file and no errno: "N requested and M written".
            reason = e.strerror or f"{e}: a short write, as on a full disk"
            raise OSError(e.errno, reason, str(path)) from e


def mask_file_paths(split: str, image_id: str) -> tuple[str, str]:
    """(mask path, ignore path) of an exported image, relative to ``<mask_root>/OpenImages``:
    ``<split>/<image_id>.mask.png`` and ``<split>/<image_id>.ignore.png``."""
    return f"{split}/{image_id}.mask.png", f"{split}/{image_id}.ignore.png"


def save_masks(
    mask_root: str | os.PathLike, paths: Sequence[tuple[str, str]], masks: np.ndarray
) -> None:
    """Writes PxAP masks as the reference's ``get_mask`` reads them back, exactly.

    mask_root: the folder ``<mask_root>/OpenImages`` of the evaluator's ``--mask_root``;
    paths: N (mask path, ignore path) from ``mask_file_paths``; masks: (N, 224, 224) uint8 in
    the evaluator's convention (1 foreground, 0 background, 255 ignored). Each image gets a
    grayscale PNG of its foreground (255 on it) and one of its ignored pixels (255): the
    reference keeps pixels > 0.5 of each, resizes 224 -> 224 (nearest, the identity) and
    rebuilds the same 0/1/255 mask. Files are written atomically.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[1:] != EVAL_SIZE or masks.dtype != np.uint8:
        raise ValueError(
            f"masks must be (N, {EVAL_SIZE[0]}, {EVAL_SIZE[1]}) uint8, got "
            f"{masks.dtype} {masks.shape}."
        )
    if not np.all((masks == 0) | (masks == 1) | (masks == 255)):
        raise ValueError("mask values must be 0 (background), 1 (foreground) or 255 (ignored).")
    if len(paths) != len(masks):
        raise ValueError(f"got {len(paths)} (mask, ignore) paths for {len(masks)} masks.")
    root = Path(mask_root)
    for (mask_path, ignore_path), m in zip(paths, masks, strict=True):
        for rel, on in ((mask_path, m == 1), (ignore_path, m == 255)):
            ok, png = cv2.imencode(".png", on.astype(np.uint8) * 255)
            if not ok:
                raise OSError(f"could not encode the PNG of {rel!r}.")
            atomic_write(root / rel, lambda f, png=png: f.write(png.tobytes()))


def load_scoremaps(
    scoremap_root: str | os.PathLike,
    image_ids: Sequence[str],
    size: tuple[int, int] | None = EVAL_SIZE,
) -> np.ndarray:
    """Reads reference-format score maps, in the order of ``image_ids``.

    Pass a batch of ids (``metadata.image_ids[i:i + B]``): a whole ILSVRC test split is 20 GB
    of float64. The maps come back as stored (bit-exact); numpy promotes a mix of float32 and
    float64 files to float64, which is exact. ``camjax.localization.wsol.quantize_scoremaps``
    quantises float64 maps on the host exactly as the reference.

    Returns:
      (N, H, W) float array.

    Raises:
      FileNotFoundError: a map is missing (naming the image id and the path).
      ValueError: a map that is not 2-D float of the given size, or holds NaN or values
        outside [0, 1].
    """
    image_ids = list(image_ids)
    if not image_ids:
        raise ValueError("no image ids given.")
    maps = []
    for image_id in image_ids:
        path = scoremap_path(scoremap_root, image_id)
        if not path.is_file():
            raise FileNotFoundError(f"no score map for image {image_id!r}: {path} is missing.")
        m = np.load(path, allow_pickle=False)
        if m.ndim != 2 or not np.issubdtype(m.dtype, np.floating):
            raise ValueError(f"{path}: expected a 2-D float map, got {m.dtype} {m.shape}.")
        if size is not None and m.shape != tuple(size):
            raise ValueError(f"{path}: expected shape {tuple(size)}, got {m.shape}.")
        maps.append(m)
    if size is None and len({m.shape for m in maps}) > 1:
        raise ValueError(f"score maps differ in shape: {sorted({m.shape for m in maps})}.")
    out = np.stack(maps)
    _check_maps(out, image_ids, None)
    return out
