#!/usr/bin/env bash
# A checkpoint save into a full disk, for real: configs/default.py trained 30 steps on a 1.6 MB
# tmpfs, where steps 10 and 20 fit (~0.7 MB each) and step 30 does not. Case `preflight`: as
# is, the save is refused before it writes. Case `in_orbax`: train.py told that 1 TB is free
# (as a thin-provisioned volume or a racing writer can make it look), so the write itself
# fails in orbax's threads. Each case prints the failed run's exit code, stderr line count and
# last line, checks that steps 10 and 20 are complete, then grows the tmpfs and checks that a
# rerun resumes from step 20 and finishes, replacing any half-written step 30.
#
#   sudo bash benchmarks/full_disk.sh      # root: it mounts a tmpfs (PYTHON=... to choose)
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
disk=$(mktemp -d /tmp/camjax_full_disk.XXXXXX)
log=$(mktemp /tmp/camjax_full_disk_log.XXXXXX)  # off the tmpfs: stderr must not fill it
if ! mount -t tmpfs -o size=1600k tmpfs "$disk" 2>/dev/null; then
  echo "full_disk.sh mounts a tmpfs, which needs root: sudo bash $0. Nothing was run."
  rmdir "$disk"; rm -f "$log"; exit 0
fi
trap 'umount "$disk"; rmdir "$disk"; rm -f "$log"' EXIT
run=("--workdir=$disk/run" --config=configs/default.py --config.train.num_steps=30
     --config.train.checkpoint_every_steps=10 --config.train.log_every_steps=10)
misreport='import runpy, shutil, sys
shutil.disk_usage = lambda path: shutil._ntuple_diskusage(2**40, 0, 2**40)
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")'
failed=0
check() { if eval "$1"; then echo "  ok: $2"; else echo "  FAILED: $2"; failed=1; fi; }
steps() { ls "$disk/run/checkpoints" | sort -n | tr '\n' ' '; }

for case in preflight in_orbax; do
  rm -rf "$disk/run" && mount -o remount,size=1600k "$disk"
  if [ "$case" = preflight ]; then "$python" train.py "${run[@]}" 2>"$log"
  else "$python" -c "$misreport" "${run[@]}" 2>"$log"; fi
  rc=$?
  echo "== $case: exit $rc, stderr $(wc -l <"$log") lines, the last: $(tail -n 1 "$log")"
  echo "  checkpoints: $(steps)"
  check '[ $rc = 1 ] && [[ "$(steps)" == "10 20 "* ]]' "it stopped with steps 10 and 20 complete"
  check '[[ "$(tail -n 1 "$log")" == error:* ]]' "the one-line error is the last line"
  mount -o remount,size=8m "$disk"
  "$python" train.py "${run[@]}" 2>"$log"
  rc=$?
  check '[ $rc = 0 ] && grep -q "Resumed from the checkpoint at step 20." "$log"' \
    "with room, a rerun resumes from step 20 and finishes"
  check '[ "$(steps)" = "20 30 " ]' "it leaves steps 20 and 30, nothing half-written"
done
exit $failed
