#!/usr/bin/env bash
# Wheels that camjax needs on the lent GPU machine (nvidia-h100-x1 / nvidia-h200) and that its
# image lacks. That machine has Python 3.12.3, no network, and already holds jax/jaxlib 0.11.2,
# flax, optax, orbax-checkpoint, numpy 2.5, numba, protobuf, etils, pyarrow, opencv, torch, ...
# (/work/.library/device/KINDS.md, "Python packages already there"). It lacks tensorflow-datasets
# (used TF-free: tfds.data_source over array_record), grain, array_record, ml_collections,
# importlib_resources and some of their runtime requirements. This script, run here (with
# network) from anywhere in the checkout, puts exactly those wheels, pinned, into the repo's
# git-ignored folder .whl/ (cp312, manylinux x86_64 or py3-none-any), prints their sizes and
# fails if they pass the budget below (what travels: working tree + carried paths <= 64 MiB).
#
#   bash benchmarks/device_wheels.sh
#
# Then every device run names `.whl` in `carry` and starts its command with:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit;
#
# Choices (checked on CPython 3.12 with the device's jax/flax/optax/orbax/numpy versions):
# * promise (required by tfds, imported eagerly by tfds.core.download) is an sdist only on
#   PyPI, so it is built here into a pure-python wheel.
# * tensorflow-metadata 1.17.3, not the 1.21.0 a fresh resolve picks: 1.21.0's generated
#   *_pb2 refuse any protobuf runtime older than 6.31.1 (tfds imports them at `import
#   tensorflow_datasets`); 1.17.3's load under protobuf 5.29 ... 7.x, whatever the image has.
# * googleapis-common-protos (declared by tensorflow-metadata) is left out: nothing on the
#   path tfds/grain/camjax take imports it.
# * Not carried because the device has them: etils, protobuf, numpy, absl-py, attrs,
#   cloudpickle, einops, fsspec, psutil, pyarrow, pyyaml, requests, six, tqdm,
#   typing-extensions, wrapt, zipp. tfds needs etils>=1.9.1 and grain protobuf>=5.28.3.
set -euo pipefail

BUDGET_MIB=16  # carried wheels; the tracked tree is < 1 MiB, the travel limit 64 MiB

WHEELS=(
  tensorflow-datasets==4.9.10
  array_record==0.8.6
  grain==0.2.18
  ml_collections==1.1.0
  importlib_resources==7.1.0
  dm-tree==0.1.10
  immutabledict==4.3.1
  portpicker==1.6.0
  simple-parsing==0.1.9
  docstring_parser==0.18.0
  tensorflow-metadata==1.17.3
  termcolor==3.3.0
  toml==0.10.2
  # The peers of benchmarks/explain_throughput.py (issue 13); the image has their other
  # requirements (torchvision, scikit-learn, matplotlib, opencv, scipy, tqdm).
  torchcam==0.5.0
  ttach==0.0.3
)
# pure python, no wheel on PyPI
SDIST_AS_WHEEL=(promise==2.3 grad-cam==1.5.7)

PY=${PYTHON:-python3}
ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
cd "$ROOT"

# .whl/ must be git-ignored (it travels only through `carry`), as the device README says.
if ! git check-ignore -q .whl/x.whl; then
  echo "/.whl/" >>"$(git rev-parse --git-path info/exclude)"
fi

# Exactly these wheels: two versions of one package stop the whole install there.
mkdir -p .whl
rm -f .whl/*.whl

"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${WHEELS[@]}"

"$PY" -m pip wheel -q --no-deps --no-binary=:all: -w .whl "${SDIST_AS_WHEEL[@]}"

expected=$((${#WHEELS[@]} + ${#SDIST_AS_WHEEL[@]}))
found=$(ls .whl/*.whl | wc -l)
if [[ "$found" -ne "$expected" ]]; then
  echo "expected $expected wheels in .whl/, found $found:" >&2
  ls .whl >&2
  exit 1
fi
for f in .whl/*.whl; do
  case "$(basename "$f")" in
    *-py2.py3-none-any.whl | *-py3-none-any.whl | *-cp312-cp312-*manylinux*_x86_64.whl) ;;
    *) echo "not a py3 / cp312 manylinux x86_64 wheel: $f" >&2; exit 1 ;;
  esac
done

total=0
while read -r size name; do
  printf '%10d  %s\n' "$size" "$name"
  total=$((total + size))
done < <(for f in .whl/*.whl; do echo "$(stat -c %s "$f") $(basename "$f")"; done)
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
awk -v w="$total" -v t="$tree" -v b="$BUDGET_MIB" 'BEGIN {
  printf "wheels: %d files, %.2f MiB (budget %d MiB); tracked tree %.2f MiB; travel limit 64 MiB\n",
    '"$found"', w / 1048576, b, t / 1048576 }'
if ((total > BUDGET_MIB * 1024 * 1024)); then
  echo "wheels exceed the ${BUDGET_MIB} MiB budget" >&2
  exit 1
fi
