#!/usr/bin/env bash
# The H200 measurements, as resumable steps that each fit in a short run on a machine
# that keeps nothing between runs: every step reads and writes its results under
# benchmarks/data/h200/ (and the study under $STUDY), so the next run goes on from them.
#
#   bash examples/h200/runbook.sh verdicts        # issue: trustworthy verdicts (defaults and fp8, 10 searches, 3 starts)
#   bash examples/h200/runbook.sh schedule-check  # one schedule replayed on a start: schedule or place?
#   bash examples/h200/runbook.sh schedule-check-long  # schedules A and B with longer levels: a narrower gap?
#   bash examples/h200/runbook.sh cost-before     # the trial bill with the code before the trial-cost work
#   bash examples/h200/runbook.sh cost-after      # ... and with this code
#   bash examples/h200/runbook.sh stop-check      # 3 of its early-stopped trials searched in full: any flip?
#   bash examples/h200/runbook.sh surface         # the GPU response surface (grid), with the engine's defaults
#   bash examples/h200/runbook.sh study           # the unseeded study (resumes)
#   bash examples/h200/runbook.sh verify          # its recommendation and the defaults, fresh starts
#   bash examples/h200/runbook.sh study-bf16      # the same study with quantization pinned to none
#   bash examples/h200/runbook.sh verify-bf16
#   bash examples/h200/runbook.sh record          # both studies and their verifications -> unseeded-study.json
#   bash examples/h200/runbook.sh data-dir        # prints this GPU model's results folder
#
# Needs vLLM for CUDA and autotune's gpu extra; no weights are downloaded (Llama-3.1-8B shape,
# --load-format dummy). SECONDS_LEFT bounds each step (default 480 s) so that no engine is
# still starting when a short run ends. On a machine that keeps nothing of the repository
# between runs, examples/h200/lent-machine.sh runs the steps against a deadline and keeps
# autotune's cache (vLLM's compile cache among it) under /tmp, packed back after each run
# (tar cJf: about 3 MB for two configurations' graphs, where gzip gives 11 MB).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
step=${1:?step}
left=${SECONDS_LEFT:-480}
# The code before the trial-cost work stops beginning trials after its wall time but finishes the
# one begun: one trial (a start and a full search) must still fit.
wall=$(( left - ${TRIAL_S:-300} ))
# This code's studies and verify begin no trial or start that the slowest so far says would not end
# inside the wall time.
study_wall=$(( left - ${TRIAL_MARGIN_S:-45} ))
spec=studies/h200-llama8b-chat.yaml
# Each GPU model keeps its own folder: figures from an H100 never mix with the H200's.
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
case "$gpu" in *H100*) model_dir=h100 ;; *) model_dir=h200 ;; esac
data=${DATA:-benchmarks/data/$model_dir}
study=${STUDY:-$data/study}
bf16=${STUDY_BF16:-$data/study-bf16}
mkdir -p "$data"
py=(python3)

# START_S, SEARCH_S: the longest an engine start (less where a compile cache is carried) and one goodput
# search may take, so that no engine starts that the step's time cannot see through.
verdicts=("${py[@]}" benchmarks/verdicts.py --spec "$spec" --out "$data/verdicts.json" --max-seconds "$left"
          --start-s "${START_S:-150}" --logs "${LOGS:-$data/verdicts-logs}")

case $step in
  verdicts)
    "${verdicts[@]}" --search-s "${SEARCH_S:-150}" ;;
  schedule-check)
    # Is a search's reading its arrival schedule's, or its place on the start's? Each start replays
    # schedule A, then B, then A again: A's two readings agree where the schedule decides.
    "${verdicts[@]}" --search-s "${SEARCH_S:-150}" \
      --config fp8_schedules:quantization=fp8,kv_cache_dtype=fp8 --schedules 0,1,0 --searches 6 --starts 2 ;;
  schedule-check-long)
    # The schedule decides (schedule-check, H100): do levels LEVEL_S long (15 s in the spec) narrow the gap
    # between schedules A and B? The same seed offsets on each start as schedule-check's A and B.
    "${verdicts[@]}" --search-s "${SEARCH_S:-240}" --spec-set goodput.min_duration_s="${LEVEL_S:-25}" \
      --config "fp8_schedules_${LEVEL_S:-25}s:quantization=fp8,kv_cache_dtype=fp8" --schedules 0,1 --searches 4 --starts 2 ;;
  cost-before)
    # The code before the trial-cost work: that commit's autotune/ and search_spaces/, e.g.
    #   git worktree add /tmp/autotune-before 681ece3
    # or, for a machine that gets a copy of the working tree without its history, extracted
    # beside it and sent along (.before/ is ignored by git):
    #   mkdir -p .before && git archive 681ece3 autotune search_spaces | tar -x -C .before   # BEFORE=.before
    # (that code read its search spaces from the repo root, beside autotune/)
    "${py[@]}" benchmarks/trial_cost.py --spec "$spec" --trials 3 --label before \
      --autotune "${BEFORE:-/tmp/autotune-before}" --study-dir "$data/cost-before" --out "$data/trial-cost.json" \
      --extra --wall-time "$wall" ;;
  cost-after)
    # A trial that beats the incumbent is searched up to its own goodput: on an H100 one took 270 s
    # (start 116 s with a compile miss, 6 levels in 152 s), so TRIAL_S=280 keeps a launched trial inside the step.
    # The unseeded study (step study) is this spec run with this code: where it is there and cost-after is
    # not, cost-after begins as a copy of it (its verification left out) and goes on to 8 trials, so that
    # the trials both records share are measured once.
    if [ ! -f "$data/cost-after/study.db" ] && [ -f "$study/study.db" ]; then
      mkdir -p "$data/cost-after"
      cp -a "$study"/. "$data/cost-after"/
      rm -rf "$data/cost-after/verify"
    fi
    "${py[@]}" benchmarks/trial_cost.py --spec "$spec" --trials 8 --label after \
      --study-dir "$data/cost-after" --out "$data/trial-cost.json" --extra --wall-time "$wall" ;;
  stop-check)
    "${py[@]}" benchmarks/early_stop_check.py --study-dir "$data/cost-after" --out "$data/trial-cost.json" \
      --trials 3 --max-seconds "$left" --start-s "${START_S:-150}" --search-s "${SEARCH_S:-180}" \
      --logs "${LOGS:-$data/early-stop-checks}" ;;
  surface)
    # A point starts only while the slowest one recorded so far still fits in the step's time.
    "${py[@]}" benchmarks/record_surface.py --spec "$spec" --defaults --finish-by "$left" \
      --grid max_num_seqs=64,128,256 --grid max_num_batched_tokens=2048,8192 \
      --grid quantization=null,fp8 --grid kv_cache_dtype=auto,fp8 \
      --fixed gpu_memory_utilization=0.9 --out "$data/surface.json" ;;
  study)
    # 25 GPU-minutes for the whole study, over all the runs that resume it.
    # No trial starts that the slowest so far says would end past the step's time, less a winner's
    # margin over it (a search taken up to its own goodput runs longer than the defaults').
    "${py[@]}" -m autotune optimize --spec "$spec" --study-dir "$study" --wall-time "$study_wall" --gpu-minutes 25 ;;
  verify)
    "${py[@]}" -m autotune verify "$study" --top 1 --defaults --starts 5 --wall-time "$study_wall" ;;
  study-bf16)
    # The same spec with the weights' quantization pinned to none (the KV cache dtype stays a knob).
    mkdir -p "$bf16"
    sed 's/^  quantization: {choices: \[null, fp8\]}$/  quantization: {choices: [null]}/' "$spec" > "$bf16/spec.yaml"
    grep -q '^  quantization: {choices: \[null\]}$' "$bf16/spec.yaml" || { echo "could not pin quantization" >&2; exit 2; }
    "${py[@]}" -m autotune optimize --spec "$bf16/spec.yaml" --name h200-llama8b-chat-bf16 --study-dir "$bf16" \
      --wall-time "$study_wall" --gpu-minutes 25 ;;
  verify-bf16)
    "${py[@]}" -m autotune verify "$bf16" --top 1 --defaults --starts 5 --wall-time "$study_wall" ;;
  record)
    "${py[@]}" benchmarks/study_record.py --study-dir "$study" --label unseeded --out "$data/unseeded-study.json"
    if [ -f "$bf16/study.db" ]; then
      "${py[@]}" benchmarks/study_record.py --study-dir "$bf16" --label bf16 --out "$data/unseeded-study.json"
    fi ;;
  data-dir)
    # where this GPU model's results go (DATA= names another folder), for a wrapper to pack
    echo "$data" ;;
  *)
    echo "unknown step $step" >&2; exit 2 ;;
esac
