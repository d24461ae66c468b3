"""A trained run's score maps, masks and splits in the reference WSOL evaluator's layout.

`export_wsol(config, workdir, out_dir)` runs the validation and test splits through the
evaluation step (all devices, one batch per step) and writes, per split name S:

* ``out_dir/scoremaps/S/<image_id>.npy``: the WSOL protocol's score map of each image (the GT
  class's CAM, OpenCV-exact bicubic to ``config.eval.wsol.eval_size``, min-max normalised),
  as clovaai/wsolevaluation's ``inference.py`` saves them (float32; with
  ``config.eval.wsol.exact_float64`` the reference's float64 maps themselves);
* ``out_dir/metadata/<CUB or ILSVRC>/S/``: ``image_ids.txt``, ``class_labels.txt``,
  ``image_sizes.txt`` and ``localization.txt`` (original-pixel inclusive boxes), for the
  reference's box evaluator, under the names its command line accepts
  (`wsol_io.box_dataset_name`: ILSVRC for ilsvrc2012_loc, CUB for every other boxed dataset);
* with PxAP (``config.eval.wsol.pxap``): ``out_dir/masks/OpenImages/S/<image_id>.mask.png``
  and ``.ignore.png``, the very masks camjax's PxAP used (at 224x224: 255 on the object, and
  255 on ignored pixels), and ``out_dir/metadata/OpenImages/S/`` listing them, the layout of
  the reference's mask evaluator (which it runs for the dataset name ``OpenImages`` only).

The reference scores such a folder with (``evaluation.py`` joins
``<metadata_root>/<dataset_name>/<split>`` and ``<mask_root>/OpenImages``)::

  python evaluation.py --scoremap_root out_dir/scoremaps/S --metadata_root out_dir/metadata \
      --dataset_name OpenImages --split S --mask_root out_dir/masks --cam_curve_interval 0.001

for PxAP, and with ``--dataset_name CUB`` (``ILSVRC`` for ilsvrc2012_loc)
``--multi_contour_eval --multi_iou_eval`` for MaxBoxAccV2. Its evaluator resizes boxes and
masks to 224x224 whatever the maps' size, so an export needs
``config.eval.wsol.eval_size = 224``; any other size is refused (at 64x64 the reference reports
MaxBoxAcc 0 and then fails on PxAP).

Image ids are the dataset's (CUB, ILSVRC and OpenImages keep the reference's), or
``S/<index>.png`` for datasets without ids (wsol_shapes). Maps and masks are written
atomically, one file per image, by the host that computed them; metadata by process 0 after
gathering every host's rows (padding rows included, so that all hosts send the same shapes).
Mask-only datasets (OpenImages30k) get box metadata without boxes, under their own name.
"""

import functools
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from camjax import distributed, errors, experiment
from camjax.evaluation import evaluator as evaluator_lib
from camjax.evaluation import protocol as protocol_lib
from camjax.evaluation import run as run_lib
from camjax.localization import wsol_frame, wsol_io

ID_BYTES = 512  # longest image id that travels between hosts


def _image_ids(host_batch: dict[str, Any], split: str) -> list[str]:
    if "image_id" in host_batch:
        return [i.decode() if isinstance(i, bytes) else str(i) for i in host_batch["image_id"]]
    return [f"{split}/{int(i):06d}.png" for i in host_batch["index"]]


def _gather(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every host's rows, concatenated (this host's alone on one host)."""
    if jax.process_count() == 1:
        return rows
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(rows)
    return {k: np.concatenate(list(np.asarray(v)), axis=0) for k, v in gathered.items()}


def _encode_ids(ids: list[str]) -> np.ndarray:
    out = np.zeros((len(ids), ID_BYTES), np.uint8)
    for k, image_id in enumerate(ids):
        raw = image_id.encode()
        if len(raw) > ID_BYTES:
            raise ValueError(f"image id longer than {ID_BYTES} bytes: {image_id[:80]!r}...")
        out[k, : len(raw)] = np.frombuffer(raw, np.uint8)
    return out


def _check_size(eval_size: int) -> None:
    # Resizing the maps to 224 here would export other maps than camjax scored: refuse instead.
    reference = wsol_frame.EVAL_SIZE[0]
    if (eval_size, eval_size) != wsol_frame.EVAL_SIZE:
        raise ValueError(
            f"the reference's evaluation.py scores {reference}x{reference} maps only (it "
            "resizes boxes and masks to that size whatever the maps' size); these would be "
            f"{eval_size}x{eval_size}: export with --config.eval.wsol.eval_size={reference}."
        )


def _write_maps(evaluator, variables, source, split: str, out_dir: str, max_images: int, dtype):
    """Writes this host's score maps (and masks) of a split; returns its rows for the metadata,
    padding rows included: all hosts then hold as many rows, which the all-gather needs."""
    size = evaluator.protocol.eval_size
    with_masks, with_boxes = evaluator.protocol.pxap, evaluator.protocol.boxes
    rows = {k: [] for k in ("valid", "index", "label", "boxes", "num_boxes", "size", "id")}
    outputs = evaluator.scoremap_outputs(variables, source, max_images, masks=with_masks)
    for host_batch, scoremaps in outputs:
        valid = np.asarray(host_batch["valid"], bool)
        ids = _image_ids(host_batch, split)
        maps = evaluator_lib.host_rows(scoremaps)[valid]
        masks = np.asarray(host_batch["mask"])[valid] if with_masks else None
        per_image = zip(ids, valid, host_batch["num_boxes"], strict=True)
        boxless = [i for i, v, n in per_image if with_boxes and v and n < 1]
        # The hosts agree after each batch: the next one's maps are a collective computation.
        distributed.run_together(
            functools.partial(
                _write_batch, out_dir, split, ids, valid, maps, masks, dtype, size, boxless
            ),
            functools.partial(_write_problem, out_dir),
            _ELSEWHERE,
        )
        original_size = host_batch["original_size"]
        image_size = evaluator.config.data.image_size
        for key, value in (
            ("valid", valid),
            ("index", host_batch["index"]),
            ("label", host_batch["label"]),
            ("boxes", protocol_lib.original_boxes(host_batch["boxes"], image_size, original_size)),
            ("num_boxes", host_batch["num_boxes"]),
            ("size", original_size),
            ("id", _encode_ids(ids)),
        ):
            rows[key].append(np.asarray(value))
    return {k: np.concatenate(v) for k, v in rows.items()}


def _write_batch(
    out_dir: str, split: str, ids: list[str], valid, maps, masks, dtype, size: int, boxless
) -> None:
    """One host's batch: its real rows' score maps (and masks, if given) in the reference's
    layout; every id checked for the trip to process 0 (`_encode_ids`) first, and that no
    image lacks the GT box that box metrics need (`boxless`: the ids of those that do)."""
    _encode_ids(ids)
    if boxless:
        # Dropping every box of the split instead would leave the reference nothing to score.
        raise ValueError(
            f"image {boxless[0]!r} of split {split!r} has no GT box, and the box metrics need "
            "one per image: export with --config.eval.wsol.boxes=False (PxAP alone), or leave "
            "the image out of the split."
        )
    real_ids = [i for i, v in zip(ids, valid, strict=True) if v]
    root = os.path.join(out_dir, "scoremaps", split)
    wsol_frame.save_scoremaps(root, real_ids, maps, dtype=dtype, size=(size, size))
    if masks is not None:
        paths = [wsol_frame.mask_file_paths(split, i) for i in real_ids]
        wsol_frame.save_masks(os.path.join(out_dir, "masks", wsol_io.MASK_DATASET), paths, masks)


_ELSEWHERE = "another process could not write its part of the export (its error says why)."


def _write_problem(out_dir: str, e: OSError) -> str:
    return (
        f"{errors.cannot_write(e, out_dir)}; make room, or remove what is in the way, then "
        "export again (the run's checkpoints are untouched)."
    )


def _write_metadata(rows: dict[str, np.ndarray], split: str, out_dir: str, dataset: str, protocol):
    """Process 0: the split's box metadata (and mask metadata, with PxAP) from every host's
    valid rows in index order."""
    ids = [bytes(r).rstrip(b"\0").decode() for r in rows["id"]]
    heights, widths = rows["size"][:, 0], rows["size"][:, 1]
    # Without box metrics (mask-only datasets, OpenImages), the ids are the reference's, so its
    # own metadata (with the mask paths) scores these maps; ours then lists no boxes.
    boxed = protocol.boxes
    boxes = [b[:k] for b, k in zip(rows["boxes"], rows["num_boxes"], strict=True)]
    metadata = wsol_io.WsolMetadata(
        image_ids=ids,
        class_labels=rows["label"],
        boxes=boxes if boxed else None,
        image_sizes=np.stack([widths, heights], axis=1),
    )
    # The reference's command line scores boxes under its own dataset names only.
    folder = wsol_io.box_dataset_name(dataset) if boxed else dataset
    wsol_io.write_metadata(os.path.join(out_dir, "metadata", folder, split), metadata)
    if protocol.pxap:
        paths = [wsol_frame.mask_file_paths(split, i) for i in ids]
        masked = wsol_io.WsolMetadata(
            image_ids=ids,
            class_labels=rows["label"],
            mask_paths=[(mask,) for mask, _ in paths],
            ignore_paths=[ignore for _, ignore in paths],
        )
        mask_meta = os.path.join(out_dir, "metadata", wsol_io.MASK_DATASET, split)
        wsol_io.write_metadata(mask_meta, masked)


def export_split(
    evaluator: evaluator_lib.Evaluator,
    variables: Any,
    source: Sequence,
    split: str,
    out_dir: str,
    dataset: str,
    max_images: int = 0,
    dtype=None,
) -> dict[str, float]:
    """Writes one split's score maps and metadata (module doc); returns counts and timings.

    dtype: of the .npy maps; None: float64 with config.eval.wsol.exact_float64 (its maps are
    float64, the reference's), else float32 (the device's maps, half the disk).
    """
    if dtype is None:
        dtype = np.float64 if evaluator.protocol.exact_float64 else np.float32
    _check_size(evaluator.protocol.eval_size)
    start = time.perf_counter()
    local = _write_maps(evaluator, variables, source, split, out_dir, max_images, dtype)
    seconds = time.perf_counter() - start
    everything = _gather(local)
    keep = everything["valid"].astype(bool)
    order = np.argsort(everything["index"][keep], kind="stable")
    rows = {k: v[keep][order] for k, v in everything.items()}
    distributed.run_together(
        lambda: _write_metadata(rows, split, out_dir, dataset, evaluator.protocol),
        functools.partial(_write_problem, out_dir),
        _ELSEWHERE,
        here=jax.process_index() == 0,
    )
    n = len(order)
    return {"images": n, "seconds": seconds, "images_per_second": n / max(seconds, 1e-9)}


def check_exportable(config: ml_collections.ConfigDict) -> None:
    """A one-line error if `config`'s score maps cannot be exported (evaluate.py asks before it
    evaluates, not after)."""
    protocol = protocol_lib.wsol_protocol(config)
    if protocol is None:
        raise ValueError(
            "exporting score maps uses the WSOL protocol's settings; set "
            "config.eval.wsol.enabled = True."
        )
    _check_size(protocol.eval_size)


def export_wsol(
    config: ml_collections.ConfigDict, workdir: str, out_dir: str, dtype=None
) -> dict[str, dict[str, float]]:
    """Restores workdir's latest checkpoint and exports its validation and test splits."""
    check_exportable(config)  # before restoring anything
    evaluator, variables, _ = run_lib.restore_evaluator(config, workdir)
    sources = experiment.data_sources(config, experiment.EVALUATION_SPLITS)
    dataset = config.data.name
    return {
        split: export_split(
            evaluator,
            variables,
            sources[split],
            split,
            out_dir,
            dataset,
            config.eval.max_images,
            dtype,
        )
        for split in (config.data.val_split, config.data.test_split)
    }
