"""Issue 10's probe: does a run's initialisation or its data order decide what its CAMs become?

    python benchmarks/seed_split.py --init_seed 1 --data_seed 0 --workdir /tmp/split_i1_d0 \
        --data_dir DIR "model.num_blocks=4 model.output_stride=2 data.batch_size=32"

`config.seed` sets both the initialisation (and every other key of the run) and the order and
augmentation of the training data. This trains configs/default.py with the given
`section.field=value` overrides (as `recipe_step_time.py` takes them) at `config.seed =
--init_seed`, the training data drawn as `--data_seed` would draw them, then evaluates the run
as `evaluate.py --workdir` does and prints its validation metrics. With the two seeds equal it
is the ordinary run of that seed.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.recipe_step_time import variant_config  # noqa: E402
from camjax import run_config  # noqa: E402
from camjax.data import pipeline  # noqa: E402
from camjax.evaluation import run as run_lib  # noqa: E402
from camjax.train import loop  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init_seed", type=int, required=True)
    parser.add_argument("--data_seed", type=int, required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data_dir", default="", help="tfds data dir; '' = tfds's default")
    parser.add_argument("overrides", nargs="?", default="")
    args = parser.parse_args()

    config = variant_config(args.overrides)
    config.seed = args.init_seed
    config.data.data_dir = args.data_dir
    train_dataset = pipeline.train_dataset
    # The training loop reads its batches through pipeline.train_dataset(..., config.seed).
    pipeline.train_dataset = lambda source, prep, batch, seed: train_dataset(
        source, prep, batch, args.data_seed
    )
    loop.train_and_evaluate(config, args.workdir)
    pipeline.train_dataset = train_dataset
    results = run_lib.run_evaluation(run_config.load(args.workdir), args.workdir)
    val, wsol = results["val_at_val_threshold"], results["wsol"]["val"]
    print(
        f"init seed {args.init_seed}, data seed {args.data_seed}: validation top-1 cls "
        f"{val['top1_cls']:.1f}%, GT-known {val['gt_known_loc']:.1f}% at {val['threshold']:.2f}, "
        f"MaxBoxAccV2 {wsol['max_box_acc_v2']:.2f}, PxAP {wsol['pxap']:.2f}"
    )


if __name__ == "__main__":
    main()
