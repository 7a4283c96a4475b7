#!/usr/bin/env bash
# Runs runbook steps on a GPU machine lent for a fixed time that keeps nothing of the
# repository between runs, and packs what the next run needs into $OUT:
#
#   bash examples/h200/lent-machine.sh "study verify" 590
#
# Each step gets the time left before the deadline (less a margin for packing) as its
# SECONDS_LEFT, and is skipped when under two minutes are left, so that no engine is
# still starting when the machine is taken back. autotune's cache folder (vLLM's compile
# cache and model-info record among it) lives under /tmp, which such a machine keeps between
# runs while it stays warm; $CACHE_PACK, when it exists, seeds it on a new machine (an
# xz tar of the cache's vllm/ folder, as this script leaves in $OUT/vllm.txz).
# What comes back in $OUT: run.txt (every line printed), data.tgz (the runbook's results
# folder for this GPU model; every result in it carries its environment) and vllm.txz.
set -uo pipefail
steps=${1:?steps, e.g. "study verify"}
total=${2:-590}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
t0=$(date +%s)
deadline=$(( t0 + total ))
out=${OUT:-/tmp/out}
mkdir -p "$out"
exec > >(tee -a "$out/run.txt") 2>&1
echo "== start $(date -u +%FT%TZ)"

export AUTOTUNE_CACHE=${AUTOTUNE_CACHE:-/tmp/atcache} PYTHONUNBUFFERED=1
mkdir -p "$AUTOTUNE_CACHE"
pack=${CACHE_PACK:-.atcache-pack/vllm.txz}
[ -f "$pack" ] && tar -xJf "$pack" -C "$AUTOTUNE_CACHE"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
data=$(bash examples/h200/runbook.sh data-dir)

for step in $steps; do
  left=$(( deadline - $(date +%s) - 25 ))
  if [ "$left" -lt 120 ]; then echo "== skip $step (${left}s left)"; continue; fi
  echo "== $step with ${left}s"
  SECONDS_LEFT=$left timeout --signal=INT --kill-after=15 "$left" bash examples/h200/runbook.sh "$step"
  echo "== $step rc $? at $(( $(date +%s) - t0 ))s"
done
pkill -f vllm.entrypoints || true
tar czf "$out/data.tgz" "$data"
[ -d "$AUTOTUNE_CACHE/vllm" ] && tar cJf "$out/vllm.txz" -C "$AUTOTUNE_CACHE" vllm
echo "== end at $(( $(date +%s) - t0 ))s"
