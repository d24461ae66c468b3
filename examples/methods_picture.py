"""One picture, every method: the maps of every `camjax.explain` method for test images of a run.

    python examples/methods_picture.py --workdir runs/default [--images 0 3 7] [--out PATH]

Restores the run's latest checkpoint (its saved config), takes the given test images, and
draws one row per image: the image with its GT box, then each method's map of the GT class
(min-max normalised, upsampled as the evaluator does) overlaid on it. Writes
<workdir>/methods.png by default; the README's picture is this script's output for the default
run. Every method explains the same class, so the rows compare methods, not predictions.
"""

import argparse
import os

import jax
import numpy as np
from PIL import Image, ImageDraw

from camjax import experiment, explain, run_config, viz
from camjax.data import pipeline
from camjax.evaluation import evaluator as evaluator_lib
from camjax.evaluation import run as run_lib

SCALE = 3  # 64 px images drawn at 192 px


def method_maps(config, model, variables, images, labels) -> dict[str, np.ndarray]:
    """name -> (B, H, W) maps in [0, 1] of the given classes, for every registered method, with
    the options of the run's config.eval.options (the methods' defaults unless changed)."""
    x = pipeline.normalize_images(images, config.data.mean, config.data.std)
    maps = {}
    for name in explain.METHODS:
        chosen = config.copy_and_resolve_references()
        chosen.eval.method = name
        f = explain.explainer(
            model,
            variables,
            name,
            resize=config.eval.resize_method,
            apply_kwargs={"train": False},
            **evaluator_lib.method_options(chosen),
        )
        maps[name] = np.asarray(f(x, np.asarray(labels)).cams[:, 0])
    return maps


def draw(images, boxes, maps: dict[str, np.ndarray]) -> Image.Image:
    """Rows of [image | one overlay per method], method names on top."""
    b, h, w = images.shape[:3]
    tile_w, tile_h, caption = w * SCALE, h * SCALE, 14
    names = ["image", *maps]
    sheet = Image.new("RGB", (len(names) * (tile_w + 4), caption + b * (tile_h + 4)), "white")
    pen = ImageDraw.Draw(sheet)
    for col, name in enumerate(names):
        pen.text((col * (tile_w + 4) + 2, 1), name, fill=(0, 0, 0))
    for row in range(b):
        for col, name in enumerate(names):
            if name == "image":
                panel = images[row]
            else:  # a map the explainer could not trust (NaN) drawn blank, as in the gallery
                m = maps[name][row]
                panel = viz.overlay(images[row], m if np.isfinite(m).all() else np.zeros_like(m))
            tile = Image.fromarray(panel).resize((tile_w, tile_h), Image.NEAREST)
            tile_pen = ImageDraw.Draw(tile)
            for box in boxes[row]:
                x0, y0, x1, y1 = (float(v) * SCALE for v in box)
                if x1 > x0 and y1 > y0:
                    tile_pen.rectangle([x0, y0, x1 - 1, y1 - 1], outline=viz.GT_COLOR, width=1)
            sheet.paste(tile, (col * (tile_w + 4), caption + row * (tile_h + 4)))
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--images", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    config = run_config.load(args.workdir)
    with config.unlocked():  # the evaluator is restored for its model only
        config.eval.method, config.eval.layer = "cam", "feature_map"
    evaluator, variables, step = run_lib.restore_evaluator(config, args.workdir)
    prep = pipeline.EvalPreprocess(experiment.preprocess_config(config))
    source = experiment.data_sources(config, experiment.EVALUATION_SPLITS)[config.data.test_split]
    rows = [prep.map(source[i]) for i in args.images]
    images = np.stack([r["image"] for r in rows])
    labels = np.array([r["label"] for r in rows])
    boxes = [r["boxes"][: r["num_boxes"]] for r in rows]
    maps = method_maps(config, evaluator.model, jax.device_get(variables), images, labels)
    out = args.out or os.path.join(args.workdir, "methods.png")
    draw(images, boxes, maps).save(out)
    print(f"step {step}: {len(maps)} methods x {len(rows)} images -> {out}")


if __name__ == "__main__":
    main()
