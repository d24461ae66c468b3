"""Dataset-scale CAM generation: a whole split through the mesh, score maps written to disk.

    python benchmarks/cam_export.py [--config default] [--split test] [--max_images 0]
        [--eval_size 224] [--dtype {float32,float64}]

Runs `camjax.evaluation.export.export_split` (the evaluation step on all devices: forward pass,
GT-class CAM, OpenCV-exact bicubic to the evaluation size, min-max; then one reference-format `.npy`
per image, written atomically, plus the split's metadata files) on a split of the config's
dataset with freshly initialised weights (the work does not depend on them), and the same
pass without writing, so the disk's share shows. Reports images/s end to end. Paste the
table, with the date, machine and command, into benchmarks/RESULTS.md.
"""

import argparse
import importlib
import os
import platform
import sys
import tempfile
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from camjax import experiment  # noqa: E402
from camjax.evaluation import evaluator as evaluator_lib  # noqa: E402
from camjax.evaluation import export  # noqa: E402
from camjax.evaluation import protocol as protocol_lib  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="a module of configs/")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max_images", type=int, default=0)
    # The export writes the reference's 224x224 frame only (export.py refuses other sizes).
    parser.add_argument("--eval_size", type=int, default=224, help="0: the config's")
    # The default is the export's own: float64 for the exact maps of config.eval.wsol.exact_float64
    # (the default config's), which float32 would round; float32 otherwise.
    parser.add_argument("--dtype", default=None, choices=["float32", "float64"])
    args = parser.parse_args()

    config = importlib.import_module(f"configs.{args.config}").get_config()
    if args.eval_size:
        config.eval.wsol.eval_size = args.eval_size
    protocol = protocol_lib.wsol_protocol(config)
    mesh = experiment.make_mesh()
    model = experiment.build_model(config)
    size = config.data.image_size
    variables = jax.jit(lambda k: model.init(k, np.zeros((1, size, size, 3)), train=False))(
        jax.random.key(0)
    )
    evaluator = evaluator_lib.Evaluator(config, model, mesh, protocol)
    source = experiment.limit(experiment.data_sources(config, ())[args.split], args.max_images)
    n = len(source)
    dtype = args.dtype or ("float64" if protocol.exact_float64 else "float32")
    print(
        f"{config.model.name} on {config.data.name}/{args.split}: {n} images at {size}, maps "
        f"{protocol.eval_size}x{protocol.eval_size} {dtype}; {platform.machine()}, "
        f"{os.cpu_count()} cores, jax {jax.__version__} on {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}"
    )
    # Compile and warm the pipeline on a few images first.
    for _ in evaluator.scoremap_outputs(variables, experiment.limit(source, 1)):
        pass

    start = time.perf_counter()
    for _, scoremaps in evaluator.scoremap_outputs(variables, source):
        evaluator_lib.host_rows(scoremaps)  # maps on the host, as the export has them
    compute_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as out_dir:
        start = time.perf_counter()
        export.export_split(
            evaluator, variables, source, args.split, out_dir, config.data.name, 0, dtype
        )
        export_s = time.perf_counter() - start
        files = sum(len(f) for _, _, f in os.walk(os.path.join(out_dir, "scoremaps")))
        disk = sum(
            os.path.getsize(os.path.join(d, f))
            for d, _, fs in os.walk(os.path.join(out_dir, "scoremaps"))
            for f in fs
        )
    print("| pass | seconds | images/s |")
    print("|---|---|---|")
    for name, seconds in (
        ("forward + CAM + resize + normalise, maps to host", compute_s),
        ("the same + one .npy per image + metadata", export_s),
    ):
        print(f"| {name} | {seconds:.2f} | {n / seconds:.0f} |")
    print(f"\n{files} files, {disk / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
