"""vLLM plugin: speculative method ``firp`` (FIRP self-speculative decoding) for vLLM 0.32.

Loaded by vLLM in every process through the ``vllm.general_plugins`` entry point ``firp``. Use::

    vllm serve MODEL --speculative-config '{"method": "firp", "model": "HEADS_DIR", "num_speculative_tokens": 3}'
    vllm serve MODEL --spec-method firp --spec-model HEADS_DIR --spec-tokens 3
    LLM(model=MODEL, speculative_config={"method": "firp", "model": "HEADS_DIR"})

``num_speculative_tokens`` defaults to the heads' K and may not exceed it. This module stays cheap to
import; vLLM is imported only when :func:`register` runs.
"""

from __future__ import annotations


def register() -> None:
    """Entry point: patch vLLM (idempotent; see :mod:`vllm_firp.vllm_plugin.patches`)."""
    from .patches import apply

    apply()


__all__ = ["register"]
