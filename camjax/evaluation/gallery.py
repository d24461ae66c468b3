"""CAM pictures of a trained run: image | CAM overlay with the GT box and the CAM box."""

import os
from collections.abc import Sequence

import jax
import numpy as np

from camjax import experiment, explain, viz
from camjax.data import pipeline
from camjax.localization.boxes import box_from_scoremap


def write_gallery(
    config, model, variables, source: Sequence, threshold: float, workdir: str
) -> list[str]:
    """PNG per image for the first config.eval.num_gallery images: image | CAM overlay + boxes.

    The map (config.eval.method's, CAM by default) is that of the top-1 predicted class; green
    is the GT box, red the map's box.
    """
    n = min(config.eval.num_gallery, len(source))
    if n == 0:
        return []
    prep = experiment.preprocess_config(config)
    rows = [pipeline.EvalPreprocess(prep).map(source[i]) for i in range(n)]
    images = np.stack([r["image"] for r in rows])
    method = config.eval.get("method", "cam")
    if method == "cam":
        f = explain.cam_fn(
            model,
            variables,
            top_k=1,
            method=config.eval.resize_method,
            normalize=config.eval.cam_normalization,
        )
    else:
        f = explain.explainer(
            model,
            variables,
            method,
            layer=config.eval.get("layer", "feature_map"),
            top_k=1,
            resize=config.eval.resize_method,
            normalize=config.eval.cam_normalization,
            apply_kwargs={"train": False},
        )
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
