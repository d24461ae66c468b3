#!/usr/bin/env bash
# What the device run's step explain_table reads (issue 13's method table): a run trained here,
# copied into the git-ignored folder .devrun/, and its wsol_shapes with the run's validation and
# test splits but a train split of one image (`method_table.py --num_train 1` opens that
# variant): the table reads validation and test only, the full train split (93 MB at 64 px)
# would not fit in what travels (64 MiB), and a copy without it fails the shard checks at
# opening. Every image is rendered from (seed, split, index), so validation and test are the
# run's own. .devrun travels through `carry` (device run, carry [".whl", ".devrun"]).
#
#   bash benchmarks/device_devrun.sh [WORKDIR (runs/default)]
set -euo pipefail

ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
cd "$ROOT"
WORKDIR=${1:-runs/default}
PY=${PY:-python3}
[[ -f "$WORKDIR/config.json" ]] || { echo "no trained run in $WORKDIR: run train.py first" >&2; exit 1; }

if ! git check-ignore -q .devrun/x; then
  echo "/.devrun/" >>"$(git rev-parse --git-path info/exclude)"
fi
rm -rf .devrun
mkdir -p .devrun/tfds
cp -r "$WORKDIR" .devrun/default
"$PY" - "$WORKDIR" <<'END'
import sys

from camjax import data, run_config

d = run_config.load(sys.argv[1]).data
sizes = {"num_train": 1, "num_validation": d.num_validation, "num_test": d.num_test}
sources = data.load_data_sources(d.name, d.image_size, ".devrun/tfds", sizes)
print({split: len(source) for split, source in sources.items()})
END
du -sh .devrun
