"""Every saliency method of camjax.explain on one trained run: localization, faithfulness, speed.

    python benchmarks/method_table.py --workdir runs/default [--max_images N] [--methods a,b]

For each name of `camjax.explain.METHODS` (at `--layer`, default the run's `config.eval.layer`;
CAM at the classifier's input), evaluates the run's latest checkpoint as `evaluate.py
--config.eval.method=NAME --config.eval.faithfulness.enabled=True` does (the WSOL threshold
chosen on validation, every number on test; nothing is written to the workdir) and prints
one table: MaxBoxAccV2, PxAP, top-1 loc (IoU 50, at validation's threshold), Average Drop,
Increase in Confidence (percent, softmax of the predicted class), Deletion and Insertion AUC
(RISE), the pointing game and images/s. images/s is the method alone: the jitted explainer on
one eval batch (the GT classes, maps upsampled to the image), compile excluded, the median of
`--repeats` calls.
`--max_images N` limits every split to its first N images (a quick check); `--timing_batch B`
times calls of B images instead of one eval batch (for the Score-CAM family on a CPU).
"""

import argparse
import os
import sys
import time
from collections.abc import Iterator

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from camjax import experiment, explain, run_config  # noqa: E402
from camjax.data import pipeline  # noqa: E402
from camjax.evaluation import evaluator as evaluator_lib  # noqa: E402
from camjax.evaluation import run as run_lib  # noqa: E402
from configs import default  # noqa: E402

METHOD_WIDTH = max(len(m) for m in explain.METHODS)
COLUMNS = (
    ("MaxBoxAccV2", "{:.2f}"),
    ("PxAP", "{:.2f}"),
    ("top-1 loc", "{:.2f}"),
    ("Avg Drop", "{:.2f}"),
    ("Incr Conf", "{:.2f}"),
    ("Deletion", "{:.4f}"),
    ("Insertion", "{:.4f}"),
    ("Pointing", "{:.2f}"),
    ("images/s", "{:.1f}"),
)


def images_per_second(evaluator, variables, repeats: int, batch: int = 0) -> float:
    """The evaluator's explainer (its method and options) alone on `batch` test images (default:
    one eval batch), compile excluded."""
    config = evaluator.config
    source = experiment.data_sources(config, experiment.EVALUATION_SPLITS)[config.data.test_split]
    n = min(batch or config.eval.batch_size, len(source))
    rows = [pipeline.EvalPreprocess(evaluator.prep).map(source[i]) for i in range(n)]
    images = pipeline.normalize_images(
        np.stack([r["image"] for r in rows]), config.data.mean, config.data.std
    )
    labels = jax.numpy.asarray(np.array([r["label"] for r in rows], np.int32))
    images = jax.numpy.asarray(images)
    f = explain.explainer(
        evaluator.model,
        variables,
        evaluator.method,
        layer=evaluator.layer,
        resize=config.eval.resize_method,
        apply_kwargs={"train": False},
        **evaluator.options,
    )
    jax.block_until_ready(f(images, labels))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(images, labels))
        times.append(time.perf_counter() - start)
    return n / float(np.median(times))


def method_row(
    evaluator, variables, step: int, repeats: int, timing_batch: int = 0
) -> dict[str, float]:
    results, _ = run_lib.evaluate_variables(evaluator, variables, step)
    test, faith = results["wsol"]["test"], results["faithfulness"]["test"]
    return {
        "MaxBoxAccV2": test["max_box_acc_v2"],
        "PxAP": test.get("pxap", float("nan")),
        "top-1 loc": test["at_val_thresholds"]["top1_loc"],
        "Avg Drop": faith["average_drop"],
        "Incr Conf": faith["increase_in_confidence"],
        "Deletion": faith["deletion_auc"],
        "Insertion": faith["insertion_auc"],
        "Pointing": faith["pointing_game"],
        "images/s": images_per_second(evaluator, variables, repeats, timing_batch),
        "num_images": faith["num_images"],
    }


def method_rows(
    workdir: str,
    methods: list[str] | None = None,
    max_images: int = 0,
    step: int = 0,
    repeats: int = 5,
    timing_batch: int = 0,
    data_dir: str | None = None,
    num_train: int | None = None,
    layer: str | None = None,
) -> Iterator[tuple[str, dict[str, float]]]:
    """(method, row) for a trained run (its saved config, faithfulness enabled), one method at
    a time: a long table prints each row as it is done. layer: the other methods' (None: the
    run's config.eval.layer); CAM's is the classifier's input."""
    config = run_config.load(workdir)
    with config.unlocked():
        config.eval.max_images = max_images
        if data_dir is not None:  # the run's data copied elsewhere, e.g. to another machine
            config.data.data_dir = data_dir
        if num_train is not None:  # a copy whose train split was cut (device_devrun.sh)
            config.data.num_train = num_train
        ev = config.eval
        if "faithfulness" not in ev:  # a run saved before the field existed
            ev.faithfulness = default.get_config().eval.faithfulness
        ev.faithfulness.enabled = True
        ev.faithfulness.step = step
        layer = layer or ev.get("layer", "feature_map")  # no field: a run saved before it
        ev.method, ev.layer = "cam", "feature_map"  # the evaluator restored for its model only
    base, variables, step_ = run_lib.restore_evaluator(config, workdir)
    for method in methods or list(explain.METHODS):
        c = config.copy_and_resolve_references()
        c.eval.method = method
        c.eval.layer = "feature_map" if method == "cam" else layer
        e = evaluator_lib.Evaluator(c, base.model, base.mesh, base.protocol)
        yield method, method_row(e, variables, step_, repeats, timing_batch)


def header() -> str:
    head = f"{'method':<{METHOD_WIDTH}}" + "".join(f"{name:>13}" for name, _ in COLUMNS)
    return head + "\n" + "-" * len(head)


def format_row(method: str, row: dict[str, float]) -> str:
    cells = "".join(f"{fmt.format(row[name]):>13}" for name, fmt in COLUMNS)
    return f"{method:<{METHOD_WIDTH}}{cells}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="A trained run (train.py's workdir).")
    parser.add_argument("--methods", default="", help="Comma-separated; default: all.")
    parser.add_argument(
        "--data_dir", default=None, help="The dataset's tfds data dir, if not the run's."
    )
    parser.add_argument(
        "--num_train",
        type=int,
        default=None,
        help="The dataset's train split size, if not the run's (the table reads validation "
        "and test only): 1 for the copy benchmarks/device_devrun.sh makes.",
    )
    parser.add_argument(
        "--layer", default=None, help="The methods' layer but CAM's; default: the run's."
    )
    parser.add_argument("--max_images", type=int, default=0, help="Per split; 0 = all.")
    parser.add_argument("--step", type=int, default=0, help="Deletion/insertion pixels per step.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed explainer calls.")
    parser.add_argument(
        "--timing_batch",
        type=int,
        default=0,
        help="Images per timed call; 0 = one eval batch. SS-CAM makes 35 x K forward passes "
        "per image: a 64-image call takes ~16 min on a 2-core CPU.",
    )
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m] or None
    print(
        f"{args.workdir}: localization in percent (WSOL protocol), Average Drop / Increase in "
        "percent, Deletion (lower better) / Insertion AUC in [0, 1], pointing game in percent; "
        f"{jax.devices()[0].device_kind}\n"
    )
    rows = method_rows(
        args.workdir,
        methods,
        args.max_images,
        args.step,
        args.repeats,
        args.timing_batch,
        args.data_dir,
        args.num_train,
        args.layer,
    )
    for i, (method, row) in enumerate(rows):
        if i == 0:
            print(f"{row['num_images']} test images\n\n{header()}")
        print(format_row(method, row), flush=True)


if __name__ == "__main__":
    main()
