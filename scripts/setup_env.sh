#!/usr/bin/env bash
# Create (or reuse) the Python environment for vllm-firp and print its python on the last line.
# One venv for everything, in the checkout (.venv), so a fresh HOME (an empty model cache) reuses it:
#   - CPU machines with ../shared/wheels (this project's CI): vLLM 0.32.0 CPU build via its install.sh,
#     so vLLM, torch and transformers are the versions vLLM pins; then this project, editable.
#   - Elsewhere: `pip install -e .[vllm,dev]` (vLLM 0.32 from the registry; needs CUDA);
#     FIRP_NO_VLLM=1 installs without vLLM (the reference engine runs anywhere, CPU included).
# Override the location with VLLM_FIRP_VENV=/path/to/venv.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED_WHEELS=${VLLM_FIRP_WHEELS:-$ROOT/../shared/wheels}
DEV_PKGS="pytest>=8 ruff scipy matplotlib openai gguf>=0.10 accelerate"
log() { echo "[setup] $*" >&2; }

if [ -x "$SHARED_WHEELS/install.sh" ] || [ -f "$SHARED_WHEELS/install.sh" ]; then
  log "vLLM CPU build from $SHARED_WHEELS (first run ~3 min, then reused)"
  PY=$(bash "$SHARED_WHEELS/install.sh" "${VLLM_FIRP_VENV:-$ROOT/.venv}" 2>/dev/null | tail -1)
  STAMP="$(dirname "$(dirname "$PY")")/.vllm-firp-stamp"
  WANT=$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)
  if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    "$PY" -m pip install -q --no-deps -e "$ROOT" >&2
    "$PY" -m pip install -q $DEV_PKGS >&2
    echo "$WANT" > "$STAMP"
  fi
else
  VENV=${VLLM_FIRP_VENV:-$ROOT/.venv}
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  PY=$VENV/bin/python
  EXTRAS=dev$([ "${FIRP_NO_VLLM:-0}" = 1 ] || echo ",vllm")
  log "installing vllm-firp[$EXTRAS] into $VENV"
  "$PY" -m pip install -q -e "$ROOT[$EXTRAS]" >&2
fi
echo "$PY"
