"""Start-up time of a Python process that imports jax, and of train.py up to its flag parsing.

    python benchmarks/startup_time.py [--python PY ...] [--repeats 3]

Each interpreter (default: this one) runs `import jax` and `train.py --helpshort` (which
imports camjax and exits 1 for the missing --config, after the imports) `repeats` times,
alternating between interpreters so that they share the machine's state; prints each
interpreter's ml_dtypes version and the wall times. Compare venvs that differ in one package
(the eighteenth session: ml_dtypes 0.7.0 against 0.6.0) in one run.
"""

import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {"import jax": ["-c", "import jax"], "train.py --helpshort": ["train.py", "--helpshort"]}


def wall(python: str, args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([python, *args], cwd=REPO, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", nargs="+", default=[sys.executable])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times = {(py, name): [] for py in args.python for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            for py in args.python:
                times[py, name].append(wall(py, command))
    for py in args.python:
        version = subprocess.run(
            [py, "-c", "import ml_dtypes; print(ml_dtypes.__version__)"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        for name in COMMANDS:
            shown = ", ".join(f"{t:.2f}" for t in times[py, name])
            print(f"{py} (ml_dtypes {version}) {name}: {shown} s")


if __name__ == "__main__":
    main()
