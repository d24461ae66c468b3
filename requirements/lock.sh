#!/usr/bin/env bash
# Regenerates the exact-version locks the README's commands and .ci/run install from.
#
#   bash requirements/lock.sh            # newest versions pyproject.toml allows, today
#
# One universal lock per use (markers pick jax 0.10 on Python 3.11, 0.11+ on 3.12), resolved
# by uv within requirements/constraints.txt's bounds. /opt/wheels is where this project's
# CPU-only torch wheel lies on its machines (a plain PyPI torch is a multi-GB CUDA build).
# Afterwards rerun `python benchmarks/main_job.py --workdir /tmp/main_job` and update the
# README's tables: the numbers belong to the versions in these files.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
uv="$(mktemp -d)/venv"
python3 -m venv "$uv" && "$uv/bin/pip" install -q "uv==$UV_VERSION"
compile() {
  "$uv/bin/uv" pip compile pyproject.toml --universal --python-version 3.11 --quiet \
    --custom-compile-command "bash requirements/lock.sh" --annotation-style line \
    --constraints requirements/constraints.txt "$@"
}
compile -o requirements/run.txt
compile --extra test --find-links /opt/wheels -o requirements/test.txt
