#!/usr/bin/env bash
# The vLLM 0.34 tests (tests/test_vllm034.py) in their own venv: vLLM 0.34.0 for x86 CPUs from ../shared/vllm-0.34
# (its install.sh builds the venv once per machine, ~7 GB, and reuses it while the wheel is unchanged), with this
# checkout installed into it (--no-deps: 0.34's torch stays). Triton runs in its interpreter there: correct, slow.
# VLLM_034_DIR=/path points at another copy of that folder; without one the tests are skipped with a message.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=${VLLM_034_DIR:-$ROOT/../shared/vllm-0.34}
if [ ! -x "$SRC/install.sh" ]; then
  echo "[test-0.34] skipped: no vLLM 0.34 build at $SRC (set VLLM_034_DIR)" >&2
  exit 0
fi
echo "[test-0.34] preparing the vLLM 0.34 venv (first run on a machine: a few minutes)" >&2
PY=$(bash "$SRC/install.sh" | tail -1)
"$PY" -m pip install -q --no-deps -e "$ROOT" >&2
"$PY" -c "import pytest" 2>/dev/null || "$PY" -m pip install -q "pytest>=8" >&2
# The 0.34 CPU build switches Triton to its interpreter only after importing Triton: set it before.
cd "$ROOT"
TRITON_INTERPRET=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$PY" -m pytest -ra tests/test_vllm034.py "$@"
