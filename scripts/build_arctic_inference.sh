#!/usr/bin/env bash
# Build arctic-inference 0.1.1 (what vLLM 0.32's `suffix` method imports) for a CPU machine and install it into
# the given python (default: .venv/bin/python).
#
# Its only cp311 artifact in the registry is an sdist whose build pins torch 2.7 (a multi-GB CUDA download). The
# part vLLM uses, arctic_inference.suffix_decoding, is one nanobind extension that needs no torch, so this builds
# it without build isolation in a throwaway build venv (torch 2.13 from the machine's disk, nanobind, cmake,
# ninja, grpcio-tools), and installs the wheel with --no-deps. Its CUDA ops stay unbuilt
# (ARCTIC_INFERENCE_PRECOMPILED_OPS unset) and its vLLM plugin stays inert (ARCTIC_INFERENCE_ENABLED unset).
set -euo pipefail
py=${1:-.venv/bin/python}
"$py" -c "import arctic_inference.suffix_decoding" 2>/dev/null && { echo "arctic-inference already importable"; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/bv"
"$work/bv/bin/pip" install -q torch==2.13.0 setuptools wheel ninja cmake nanobind==2.9.2 protobuf==5.29.5 grpcio-tools
"$work/bv/bin/pip" download -q --no-deps --no-binary :all: --no-build-isolation arctic-inference==0.1.1 -d "$work"
tar xzf "$work"/arctic_inference-0.1.1.tar.gz -C "$work"
# VIRTUAL_ENV makes CMake's FindPython pick the build venv's python (which has nanobind), not the system one.
(cd "$work/arctic_inference-0.1.1" && VIRTUAL_ENV="$work/bv" PATH="$work/bv/bin:$PATH" \
  "$work/bv/bin/pip" wheel -q --no-build-isolation --no-deps . -w "$work/dist")
"$py" -m pip install -q --no-deps "$work"/dist/arctic_inference-*.whl
"$py" -c "import arctic_inference.suffix_decoding; print('arctic-inference suffix decoding: ok')"
