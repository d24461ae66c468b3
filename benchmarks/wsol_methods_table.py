"""Every WSOL training method under one recipe and one protocol: the method table of issue 14.

    python benchmarks/wsol_methods_table.py --workdir /tmp/methods [--steps N] [--seeds 0 1]
        [--methods cam has ...] [--config configs/default.py] [-- extra --config.x=y flags]

For each seed and method (seed-major, so an interrupted run still holds whole seeds) it runs
train.py and evaluate.py as `benchmarks/main_job.py` does, with `--config.method.name=METHOD`,
in <workdir>/<method>/seed<N>, and prints a markdown table of method x (top-1 cls, MaxBoxAcc,
MaxBoxAccV2, PxAP, top-1 loc): the mean over seeds and the spread (min..max). The protocol is
Choe et al.'s (CVPR 2020): MaxBoxAcc, MaxBoxAccV2 and PxAP on test, threshold-free; top-1 cls
and top-1 loc on test at the CAM threshold chosen on validation.

`--steps N` shortens every method's schedule alike (CAM included): N training steps, the
warm-up scaled by N / the config's steps, no evaluation during training. A job whose
metrics.json already exists is read, not rerun, so a run cut short resumes where it stopped.
"""

import argparse
import os
import runpy
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import main_job  # noqa: E402

METHODS = ("cam", "has", "cutmix", "adl", "acol", "spg", "bridging")
# (column, metrics.json path): the threshold-free protocol metrics and, at validation's CAM
# threshold, classification and top-1 localization (IoU 0.5).
COLUMNS = (
    ("top-1 cls", ("test_at_val_threshold", "top1_cls")),
    ("MaxBoxAcc", ("wsol", "test", "max_box_acc")),
    ("MaxBoxAccV2", ("wsol", "test", "max_box_acc_v2")),
    ("PxAP", ("wsol", "test", "pxap")),
    ("top-1 loc", ("test_at_val_threshold", "top1_loc")),
)


def schedule_flags(config_path: str, steps: int) -> list[str]:
    """Flags that shorten the config's schedule to `steps`, warm-up scaled alike."""
    path, _, variant = config_path.partition(":")
    get_config = runpy.run_path(os.path.join(main_job.REPO, path))["get_config"]
    config = get_config(variant) if variant else get_config()
    warmup = round(config.optim.warmup_steps * steps / config.train.num_steps)
    return [
        f"--config.train.num_steps={steps}",
        f"--config.optim.warmup_steps={warmup}",
        "--config.train.eval_every_steps=0",
    ]


def signed_head(config_path: str, extra: list[str]) -> bool:
    """Whether the jobs train a signed head (config.optim.nonnegative_head False), which
    bridging's L_norm needs (train.py refuses bridging with a non-negative one)."""
    field = "config.optim.nonnegative_head"
    given = [f for f in extra if f.startswith(f"--{field}=") or f == f"--no{field}"]
    if given:  # the last one wins, as in absl
        return given[-1].startswith("--no") or given[-1].partition("=")[2].lower() in ("false", "0")
    path, _, variant = config_path.partition(":")
    get_config = runpy.run_path(os.path.join(main_job.REPO, path))["get_config"]
    config = get_config(variant) if variant else get_config()
    return not config.optim.get("nonnegative_head", False)


def run_or_read(workdir: str, flags: list[str]) -> dict:
    """metrics.json of a finished job in workdir, else train and evaluate there first."""
    if os.path.exists(os.path.join(workdir, "metrics.json")):
        return main_job.read_metrics(workdir)
    job = main_job.run_job(workdir, flags)
    print(f"{workdir}: train.py {job['train.py']:.0f} s, evaluate.py {job['evaluate.py']:.0f} s")
    return job["metrics"]


def markdown_table(results: dict[str, list[dict]]) -> str:
    """results: method -> its seeds' metrics.json. Cells: mean (min..max) in percent."""
    lines = [
        "| method | seeds | " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for method, runs in results.items():
        cells = []
        for _, path in COLUMNS:
            values = [main_job.metric(m, path) for m in runs]
            spread = f" ({min(values):.1f}..{max(values):.1f})" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.1f}{spread}")
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data_dir", default=None, help="default: <workdir>_tfds")
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=0, help="0: the config's own schedule")
    parser.add_argument("extra", nargs="*", help="more --config.x=y flags for both scripts")
    args = parser.parse_args(argv)
    if "bridging" in args.methods and not signed_head(args.config, args.extra):
        parser.error(
            "bridging needs a signed head: add -- --config.optim.nonnegative_head=False (for "
            "every method, so that they share one recipe), or leave bridging out (--methods)."
        )
    data_dir = args.data_dir or args.workdir.rstrip("/") + "_tfds"
    # The first train.py generates the dataset into data_dir; the others read it.
    flags = ["--config", args.config, f"--config.data.data_dir={data_dir}"]
    if args.steps:
        flags += schedule_flags(args.config, args.steps)
    flags += args.extra
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    for seed in args.seeds:
        for method in args.methods:
            workdir = os.path.join(args.workdir, method, f"seed{seed}")
            job_flags = [*flags, f"--config.method.name={method}", f"--config.seed={seed}"]
            results[method].append(run_or_read(workdir, job_flags))
    schedule = f"{args.steps} steps" if args.steps else "the config's own schedule"
    print(
        f"\n{args.config}, every method with {schedule}, seeds {args.seeds}. Test split; "
        "MaxBoxAcc (IoU 0.5), MaxBoxAccV2 (IoU 30/50/70) and PxAP threshold-free, top-1 cls "
        "and top-1 loc at the CAM threshold chosen on validation. Mean (min..max) over seeds.\n"
    )
    print(markdown_table(results))


if __name__ == "__main__":
    main()
