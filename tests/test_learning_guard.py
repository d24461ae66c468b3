"""A guard on the whole pipeline: the default recipe, shortened, must still learn to localize.

Every other test checks a piece against a reference; this one checks that the pieces together
still learn. A dependency bump or a change that breaks learning (data, labels, augmentation,
optimizer, CAM, evaluation) fails CI here instead of in the README's numbers.

The run is the default recipe (configs/default.py) on fewer images and steps, with the
default network of before issue 10's change (see `guard_config`). Its floor comes
from `python -m tests.test_learning_guard --seeds 0 1 2` and `--broken` (the calibration below,
recorded in benchmarks/RESULTS.md): it sits between the worst seed and what a pipeline that
does not learn gives (a run with the learning rate at 0, whose CAMs are those of its random
initialisation).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

import pytest

from camjax import experiment
from camjax.evaluation import run as run_lib
from camjax.train import loop
from configs import default
from tests.xla_flags import subprocess_xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Validation GT-known loc (IoU 0.5, threshold chosen on validation) that a working pipeline
# clears. Calibration (2026-12-02, 2-core CPU, 8 forced devices, the locked py3.11 install;
# seed 0 rerun on 2026-12-04 with `guard_config`'s explicit network: 36.7% again):
# seeds 0/1/2 gave 36.7/30.5/25.8% (top-1 cls 20.7/18.4/19.9%); learning rate 0 gave 19.5%
# (cls 10.9%). Again with the test's flags on one device, Eigen's kernels added (2026-12-07,
# 2-core AVX-512 CPU): 37.5/26.2/47.7% (cls 21.5/17.6/19.9%), learning rate 0 19.5% (10.9%).
# The floor sits between the worst seed and the broken run. The margin is thin because 400
# steps end inside the recipe's slow start: see issue 10's notes.
GT_KNOWN_FLOOR = 23.0


def guard_config(data_dir: str, seed: int = 0, learning_rate: float | None = None):
    """configs/default.py's data, optimizer and evaluation, with its previous network,
    shortened to about a minute of training on a 2-core CPU."""
    config = default.get_config()
    # The default network before issue 10's change (conv5_3 at stride 4, signed class weights,
    # batch 64): the current default's 32x32 CAMs localize the textured objects even with
    # random weights (GT-known 64.8% here with the learning rate at 0, against 52-68% trained),
    # so they cannot tell a pipeline that learns from one that does not; this network's
    # random CAMs give 19.5%.
    config.model.num_blocks, config.model.output_stride = 5, 4
    config.data.batch_size = 64
    config.optim.nonnegative_head = False
    config.seed = seed
    config.data.data_dir = data_dir
    config.data.num_train = 2048
    config.data.num_validation = 256
    config.data.num_test = 8
    config.train.num_steps = 400
    config.train.log_every_steps = 100
    config.train.checkpoint_every_steps = 400
    config.train.eval_every_steps = 0
    config.optim.warmup_steps = 50
    if learning_rate is not None:
        config.optim.learning_rate = learning_rate
    config.eval.num_gallery = 0
    config.eval.wsol.enabled = False
    return config


def validation_gt_known(config, workdir: str) -> tuple[float, float]:
    """Trains, then (val GT-known loc at validation's best threshold, val top-1 cls), percent."""
    loop.train_and_evaluate(config, workdir)
    evaluator, variables, _ = run_lib.restore_evaluator(config, workdir)
    val = evaluator.evaluate(variables, experiment.data_sources(config)[config.data.val_split])
    summary = val.summary(val.best_threshold(), evaluator.top_k)
    return summary["gt_known_loc"], summary["top1_cls"]


@pytest.mark.slow
def test_shortened_default_recipe_learns_to_localize(tmp_path):
    # Its own process, at XLA's default optimisation level (the session compiles at the lowest,
    # where its 400 steps took 152 s in the suite against 75-125 s), with the flags the floor
    # was calibrated with. On one device: this test guards learning, not sharding (the
    # 8-device tests do), and with 8 forced devices jaxlib 0.10.2's CPU all-reduce deadlocked
    # here once in a loaded CI run (7 device threads waiting in the rendezvous, the 8th idle).
    env = {**os.environ, "XLA_FLAGS": subprocess_xla_flags(devices=1, calibrated=True)}
    cmd = [
        sys.executable,
        "-m",
        "tests.test_learning_guard",
        "--seeds",
        "0",
        "--dir",
        str(tmp_path),
    ]
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    found = re.search(r"val GT-known ([\d.]+)%, top-1 cls ([\d.]+)%", out.stdout)
    assert found, out.stdout[-3000:]
    gt_known, top1 = float(found[1]), float(found[2])
    assert gt_known >= GT_KNOWN_FLOOR, (
        f"the shortened default recipe localized only {gt_known:.1f}% of validation objects "
        f"(top-1 cls {top1:.1f}%); a working pipeline gives >= {GT_KNOWN_FLOOR}%"
    )


if __name__ == "__main__":
    # Calibration, with the test suite's 8 CPU devices:
    # XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.test_learning_guard
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--broken", action="store_true", help="learning rate 0: no learning")
    parser.add_argument("--dir", default="/tmp/learning_guard")
    args = parser.parse_args()
    for seed in args.seeds:
        cfg = guard_config(f"{args.dir}/tfds", seed, 0.0 if args.broken else None)
        run = f"{args.dir}/run_{seed}_{'broken' if args.broken else 'ok'}"
        shutil.rmtree(run, ignore_errors=True)
        loc, cls = validation_gt_known(cfg, run)
        print(
            f"seed {seed}{' broken' if args.broken else ''}: val GT-known {loc:.1f}%, "
            f"top-1 cls {cls:.1f}%",
            flush=True,
        )
