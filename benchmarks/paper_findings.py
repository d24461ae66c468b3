"""The CAM paper's findings, reproduced on the embedded wsol_shapes dataset.

    python benchmarks/paper_findings.py --workdir /tmp/paper [--seeds 0 1] [--data_dir DIR]
        [--config configs/default.py] [-- extra --config.x=y flags for every run]

Zhou et al. (CVPR 2016) report that (1) a global max pooling (GMP) head classifies about as
well as global average pooling (GAP) but localizes worse, since the max rewards one
discriminative spot where the average rewards the whole extent; (2) the CAM's resolution
matters: they remove layers to get a 14x14 map at 224 px; (3) their box heuristic thresholds
the map at 20% of its maximum. Each row trains the default recipe with one change, over the
given seeds, and prints the mean (and the per-seed values) of top-1 cls, GT-known loc (CAM
threshold chosen on validation), MaxBoxAccV2 and PxAP on the test split:

* GAP, output stride 2 (32x32 CAM at 64 px): the default recipe;
* GMP (`--config.model.pooling=max`), stride 2;
* GAP at output stride 4 (16x16), 8 (8x8) and 16 (4x4, the paper's stride);
* the default's checkpoints evaluated again with min-max maps (the WSOL protocol) for the
  heuristic, beside every run's divide-by-max after ReLU (the paper's code), above all at the
  paper's fixed 0.2 threshold.

Paste the table, with the date, machine, versions and command, into benchmarks/RESULTS.md.
"""

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.main_job import (  # noqa: E402
    REPO,
    generate,
    metric,
    print_table,
    read_metrics,
    run_job,
)

DEFAULT = "GAP s2"  # configs/default.py
VARIANTS = {
    DEFAULT: [],
    "GMP s2": ["--config.model.pooling=max"],
    "GAP s4": ["--config.model.output_stride=4"],
    "GAP s8": ["--config.model.output_stride=8"],
    "GAP s16": ["--config.model.output_stride=16"],
}
COLUMNS = {
    "top-1 cls": ("test_at_val_threshold", "top1_cls"),
    "GT-known": ("test_at_val_threshold", "gt_known_loc"),
    "MaxBoxAccV2": ("wsol", "test", "max_box_acc_v2"),
    "PxAP": ("wsol", "test", "pxap"),
    "GT-known@0.2": ("test_at_fixed_threshold", "gt_known_loc"),
}
# Every run's heuristic uses the paper's normalisation; the default's runs are evaluated again
# with the WSOL protocol's.
NORMALIZATION, OTHER_NORMALIZATION = "max", "minmax"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data_dir", default=None, help="default: <workdir>_tfds")
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("extra", nargs="*", help="more --config.x=y flags for every run")
    args = parser.parse_args()
    data_dir = args.data_dir or args.workdir.rstrip("/") + "_tfds"
    flags = ["--config", args.config, f"--config.data.data_dir={data_dir}", *args.extra]
    flags.append(f"--config.eval.cam_normalization={NORMALIZATION}")
    generate(data_dir)
    results: dict[str, dict[int, dict]] = {}
    for name, change in VARIANTS.items():
        for seed in args.seeds:
            workdir = os.path.join(args.workdir, name.replace(" ", "_"), f"seed{seed}")
            run = [*flags, *change, f"--config.seed={seed}"]
            job = run_job(workdir, run)
            results.setdefault(name, {})[seed] = job["metrics"]
            if name == DEFAULT:
                # The same checkpoints, the heuristic's maps normalised the WSOL protocol's way.
                again = evaluate_again(workdir, run, OTHER_NORMALIZATION)
                results.setdefault(f"{DEFAULT}, {OTHER_NORMALIZATION}", {})[seed] = again

    print(f"\ntest split, IoU 0.5, seeds {args.seeds}: per seed")
    for name, by_seed in results.items():
        per_seed = ", ".join(
            f"{c} " + "/".join(f"{metric(m, p):.1f}" for m in by_seed.values())
            for c, p in COLUMNS.items()
        )
        print(f"  {name}: {per_seed}")
    print("\nmean over the seeds")
    rows = {
        name: {
            c: sum(metric(m, p) for m in by_seed.values()) / len(by_seed)
            for c, p in COLUMNS.items()
        }
        for name, by_seed in results.items()
    }
    print_table(rows, list(COLUMNS), summary=False, width=18)


def evaluate_again(workdir: str, flags: list[str], normalization: str) -> dict:
    """evaluate.py on workdir's checkpoints with the heuristic's maps normalised another way,
    in a sibling workdir that links the checkpoints (each workdir has one metrics.json)."""
    other = f"{workdir}_{normalization}"
    os.makedirs(other, exist_ok=True)
    link = os.path.join(other, "checkpoints")
    if not os.path.islink(link):
        os.symlink(os.path.abspath(os.path.join(workdir, "checkpoints")), link)
    # Later flags win: this normalisation replaces the one in `flags`.
    cmd = [sys.executable, "evaluate.py", "--workdir", other, *flags]
    cmd += [f"--config.eval.cam_normalization={normalization}", "--config.eval.num_gallery=0"]
    subprocess.run(cmd, check=True, cwd=REPO)
    return read_metrics(other)


if __name__ == "__main__":
    main()
