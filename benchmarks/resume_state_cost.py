"""What a resume paid for the fresh train state it discarded, against what a restore needs.

    python benchmarks/resume_state_cost.py [--configs default cam_vgg16_ilsvrc:cam ...]

Before c1ffbfb, `train_and_evaluate` built the whole fresh state (`create_train_state`: the
init's compile and run) before it looked for a checkpoint, and a resume threw it away; a
restore needs only `abstract_train_state`. For each config (`module` or `module:argument` of
configs/), a fresh Python process (no compilation cache) times both, abstract first, and
prints the state's size: the memory the discarded state held for a moment.
"""

import argparse
import importlib
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIGS = ["default", "cam_vgg16_ilsvrc:cam", "cam_resnet50_ilsvrc:cam"]


def measure(spec: str) -> None:
    """Times one config in this process and prints one line."""
    import jax

    from camjax import experiment
    from camjax.train.optim import create_optimizer
    from camjax.train.state import abstract_train_state, create_train_state

    name, _, argument = spec.partition(":")
    module = importlib.import_module(f"configs.{name}")
    config = module.get_config(argument) if argument else module.get_config()
    mesh = experiment.make_mesh()
    model = experiment.build_model(config)
    tx = create_optimizer(config.optim, config.train.num_steps)
    start = time.perf_counter()
    abstract_train_state(config, model, tx, mesh)
    abstract_s = time.perf_counter() - start
    start = time.perf_counter()
    state, _ = create_train_state(config, model, tx, mesh)
    jax.block_until_ready(state)
    create_s = time.perf_counter() - start
    megabytes = sum(x.nbytes for x in jax.tree.leaves(state)) / 1e6
    print(
        f"{spec:28s} create_train_state {create_s:6.2f} s   abstract_train_state "
        f"{abstract_s:5.2f} s   state {megabytes:7.2f} MB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process's config
    args = parser.parse_args()
    if args.one:
        sys.path.insert(0, REPO)
        measure(args.one)
        return
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    for spec in args.configs:
        subprocess.run([sys.executable, __file__, "--one", spec], cwd=REPO, env=env, check=True)


if __name__ == "__main__":
    main()
