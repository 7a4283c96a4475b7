#!/usr/bin/env bash
# Tune real vLLM on one H100 for chat traffic under p99(ttft)<300ms, then measure
# vLLM's defaults and the best configuration found with the same goodput search,
# five repeats each. Needs an 80 GB H100 and `pip install vllm` plus autotune
# (`pip install -e '.[gpu,report]'`). No weights are downloaded: the model is a
# Llama-3.1-8B-shaped checkpoint with random weights (--load-format dummy).
#
#   bash examples/h100/tune-llama8b-chat.sh [all|study|default|best] [STUDY_DIR]
#
# Every phase resumes: run `study` again after an interruption and it continues
# where it stopped; `default` and `best` write measure.json after each repeat.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
phase=${1:-all}
study=${2:-autotune-runs/h100-llama8b-chat}
spec="$root/studies/h100-llama8b-chat.yaml"
autotune=(python3 -m autotune)
# Each repeat runs the study's own goodput search (start 20 req/s, steps of 1.25x, three levels),
# so the defaults, the trials and the best config are judged the same way.
repeat=(--spec "$spec" --repeats 5)

if [[ $phase == all || $phase == study ]]; then
  "${autotune[@]}" optimize --spec "$spec" --study-dir "$study" ${TRIALS:+--trials "$TRIALS"} ${WALL_TIME:+--wall-time "$WALL_TIME"}
fi
if [[ $phase == all || $phase == default ]]; then
  "${autotune[@]}" measure "${repeat[@]}" --out "$study/default"
fi
if [[ $phase == all || $phase == best ]]; then
  "${autotune[@]}" measure "${repeat[@]}" --from-study "$study" --best --out "$study/best"
fi
if [[ $phase == all ]]; then
  "${autotune[@]}" review "$study"
fi
