"""CAM pictures of a trained run: image | CAM overlay with the GT box and the CAM box."""

import contextlib
import functools
import os
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from camjax import cam as cam_lib
from camjax import experiment, explain, viz
from camjax.data import pipeline
from camjax.evaluation.evaluator import method_options
from camjax.localization.boxes import box_from_scoremap


def write_gallery(
    config, model, variables, source: Sequence, threshold: float, workdir: str
) -> list[str]:
    """PNG per image for the first config.eval.num_gallery images: image | CAM overlay + boxes.

    The map (config.eval.method's, CAM by default, or a class-map model's own map, ACoL's) is
    that of the top-1 predicted class; green is the GT box, red the map's box. A previous
    evaluation's pictures are removed first: the gallery is always the metrics' beside it.
    """
    _remove_previous(workdir)
    n = min(config.eval.num_gallery, len(source))
    if n == 0:
        return []
    prep = experiment.preprocess_config(config)
    rows = [pipeline.EvalPreprocess(prep).map(source[i]) for i in range(n)]
    images = np.stack([r["image"] for r in rows])
    x = pipeline.normalize_images(images, config.data.mean, config.data.std)
    cams, classes = jax.device_get(_top1_maps(config, model, variables, x))
    # A map the explainer could not trust (NaN, class -1) gets no box; a map left unnormalised
    # (an empty cam_normalization) is boxed as before: x >= thr is min(x, 1) >= thr for thr <= 1.
    trusted = np.isfinite(cams).all(axis=(1, 2))
    boxes = np.zeros((n, 4), np.int32)
    if trusted.any():
        boxes[trusted] = box_from_scoremap(np.clip(cams[trusted], 0.0, 1.0), threshold)
    cams = np.where(trusted[:, None, None], cams, 0.0)  # drawn blank
    names = _class_names(config)
    gallery_dir = os.path.join(workdir, "gallery")
    os.makedirs(gallery_dir, exist_ok=True)
    paths = []
    for i, r in enumerate(rows):
        pred = int(classes[i])
        shown = names(pred) if pred >= 0 else "none (map not finite)"
        caption = f"gt: {names(int(r['label']))}  pred: {shown}"
        picture = viz.cam_picture(
            r["image"], cams[i], r["boxes"][: r["num_boxes"]], boxes[i], caption
        )
        path = os.path.join(gallery_dir, f"{i:04d}.png")
        picture.save(path)
        paths.append(path)
    viz.contact_sheet(paths).save(os.path.join(workdir, "gallery.png"))
    return paths


def _remove_previous(workdir: str) -> None:
    """gallery.png and the gallery/NNNN.png pictures an earlier evaluation wrote (another
    method's, or more of them); any other file is left."""
    gallery_dir = os.path.join(workdir, "gallery")
    pictures = [os.path.join(workdir, "gallery.png")]
    if os.path.isdir(gallery_dir):
        pictures += [
            os.path.join(gallery_dir, name)
            for name in os.listdir(gallery_dir)
            if re.fullmatch(r"\d{4}\.png", name)
        ]
    for path in pictures:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _top1_maps(config, model, variables, x) -> tuple[jax.Array, jax.Array]:
    """(maps (n, H, W) of each image's top-1 class, post-processed as config.eval says, those
    classes (n,)): config.eval.method's maps; for 'cam', a model's own 'class_maps' (ACoL's,
    erased by its own top-1 class as no label is given) when it makes them."""
    ev = config.eval
    method = ev.get("method", "cam")
    if method == "cam" and "class_maps" in jax.eval_shape(model.apply, variables, x)[1]:
        logits, out = jax.jit(functools.partial(model.apply, train=False))(variables, x)
        classes = jnp.argmax(logits, axis=-1)
        maps = cam_lib.class_maps_of(out["class_maps"], classes)
        size = x.shape[1:3]
        return cam_lib.postprocess(
            maps, size, method=ev.resize_method, normalize=ev.cam_normalization
        ), classes
    if method == "cam":
        f = explain.cam_fn(
            model,
            variables,
            top_k=1,
            method=ev.resize_method,
            normalize=ev.cam_normalization,
        )
    else:
        f = explain.explainer(
            model,
            variables,
            method,
            layer=ev.get("layer", "feature_map"),
            top_k=1,
            resize=ev.resize_method,
            normalize=ev.cam_normalization,
            apply_kwargs={"train": False},
            **method_options(config),
        )
    out = f(x)
    return out.cams[:, 0], out.classes[:, 0]


def _class_names(config):
    if config.data.name == "wsol_shapes":
        from camjax.data.shapes import CLASS_NAMES

        return lambda i: CLASS_NAMES[i]
    return str
