"""Times the README's main job phase by phase: dataset generation, train.py, evaluate.py.

    python benchmarks/main_job.py --workdir /tmp/main_job [--data_dir DIR] [-- extra flags]

Uses a fresh data dir and workdir (deleted first) so generation and training start from
nothing, as on a fresh clone. Prints a table and the test metrics; paste them, with the date,
machine and command, into benchmarks/RESULTS.md.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data_dir", default=None, help="default: <workdir>_tfds")
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("extra", nargs="*", help="more --config.x=y flags for both scripts")
    args = parser.parse_args()
    data_dir = args.data_dir or args.workdir.rstrip("/") + "_tfds"
    for d in (args.workdir, data_dir):
        shutil.rmtree(d, ignore_errors=True)
    flags = ["--config", args.config, f"--config.data.data_dir={data_dir}", *args.extra]
    generate = [
        sys.executable,
        "-c",
        "import sys; from camjax.data import wsol_shapes; "
        "wsol_shapes.load_data_sources(64, sys.argv[1])",
        data_dir,
    ]
    times = {
        "generate wsol_shapes s64": timed(generate),
        "train.py": timed([sys.executable, "train.py", "--workdir", args.workdir, *flags]),
        "evaluate.py": timed([sys.executable, "evaluate.py", "--workdir", args.workdir, *flags]),
    }
    times["total"] = sum(times.values())
    print("\nphase                      seconds")
    for name, sec in times.items():
        print(f"{name:<26}{sec:>8.1f}")
    with open(os.path.join(args.workdir, "metrics.json")) as f:
        m = json.load(f)
    tuned, fixed = m["test_at_val_threshold"], m["test_at_fixed_threshold"]
    print(
        f"test GT-known loc {tuned['gt_known_loc']:.1f}% at val-chosen threshold "
        f"{tuned['threshold']:.2f}, {fixed['gt_known_loc']:.1f}% at 0.2; best centered box "
        f"{tuned['best_center_box_gt_known_loc']:.1f}%; top-1 cls {tuned['top1_cls']:.1f}%, "
        f"top-1 loc {tuned['top1_loc']:.1f}%, top-5 loc {tuned['top5_loc']:.1f}%"
    )


if __name__ == "__main__":
    main()
