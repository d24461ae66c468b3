#!/usr/bin/env bash
# What the device run's step explain_table reads (issue 13's method table): a run trained here
# and its dataset's validation and test splits, copied into the git-ignored folder .devrun/,
# which travels through `carry` (device run, carry [".whl", ".devrun"]). The train split (93 MB
# for wsol_shapes) stays behind: the table reads validation and test only, and what travels
# must stay under 64 MiB.
#
#   bash benchmarks/device_devrun.sh [WORKDIR (runs/default)] [TFDS_DATA_DIR (~/tensorflow_datasets)]
set -euo pipefail

ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
cd "$ROOT"
WORKDIR=${1:-runs/default}
DATA=${2:-$HOME/tensorflow_datasets}
[[ -f "$WORKDIR/config.json" ]] || { echo "no trained run in $WORKDIR: run train.py first" >&2; exit 1; }

if ! git check-ignore -q .devrun/x; then
  echo "/.devrun/" >>"$(git rev-parse --git-path info/exclude)"
fi
rm -rf .devrun
mkdir -p .devrun/tfds
cp -r "$WORKDIR" .devrun/default
# Every config and version of the dataset, each split but train.
(cd "$DATA" && find wsol_shapes -type f ! -name '*-train.*') | while read -r f; do
  mkdir -p ".devrun/tfds/$(dirname "$f")"
  cp "$DATA/$f" ".devrun/tfds/$f"
done
du -sh .devrun
