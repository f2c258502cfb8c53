"""vLLM plugin: speculative method ``firp`` (FIRP self-speculative decoding) for vLLM 0.32.

Loaded by vLLM in every process through the ``vllm.general_plugins`` entry point ``firp``. Use::

    vllm serve MODEL --speculative-config '{"method": "firp", "model": "HEADS_DIR", "num_speculative_tokens": 3}'
    vllm serve MODEL --spec-method firp --spec-model HEADS_DIR --spec-tokens 3
    LLM(model=MODEL, speculative_config={"method": "firp", "model": "HEADS_DIR"})

``num_speculative_tokens`` defaults to the heads' K and may not exceed it. This module stays cheap to
import; vLLM is imported only when :func:`register` runs.
"""

from __future__ import annotations

import importlib.util


def register() -> None:
    """Entry point: FIRP's patches (:mod:`.patches`), then the CPU fixes of vLLM's sampling (:mod:`.cpu_fixes`,
    switch ``VLLM_FIRP_CPU_FIXES``); both idempotent."""
    from . import cpu_fixes, patches

    patches.apply()
    cpu_fixes.apply()


def vllm_unavailable_reason() -> str | None:
    """Why the real vLLM engine cannot run here (None when it can): not installed, import fails, no platform."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install 'vllm-firp[vllm]' on a GPU machine, 'vllm-firp[cpu]' on CPU)"
    try:
        from vllm.platforms import current_platform
    except Exception as e:  # noqa: BLE001 - any import failure means "cannot run"
        return f"vllm failed to import: {e}"
    if current_platform.device_type in (None, "", "empty"):
        return "vllm found no usable platform (no GPU and no CPU build)"
    return None


__all__ = ["register", "vllm_unavailable_reason"]
