"""The vLLM 0.34 adapter: FIRP as a registered speculative method on Model Runner V2.

vLLM 0.34 has a plugin-facing speculator registry
(``vllm.v1.worker.gpu.spec_decode.speculator_config.register_speculative_method``). FIRP registers a
``SpeculatorConfig`` subclass (:mod:`.config`, imported in every process, cheap) that names its
``BaseSpeculator`` (:mod:`.speculator`, imported by the model runner only), laid out like vLLM's in-tree
speculators (``v1/worker/gpu/spec_decode/<method>/{config.py, speculator.py}``). No vLLM symbol is patched.
"""

from __future__ import annotations

SUPPORTED_VLLM = "0.34."
CONFIG_QUALNAME = "vllm_firp.vllm_plugin.v0_34.config.FirpSpeculatorConfig"


def register() -> None:
    """Register ``method="firp"`` (idempotent: vLLM accepts a second registration of the same name)."""
    from vllm.v1.worker.gpu.spec_decode.speculator_config import register_speculative_method

    from ..config import METHOD

    register_speculative_method(METHOD, CONFIG_QUALNAME)


__all__ = ["CONFIG_QUALNAME", "SUPPORTED_VLLM", "register"]
