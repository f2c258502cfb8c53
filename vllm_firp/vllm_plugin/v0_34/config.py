"""``SpeculatorConfig`` of speculative method ``firp`` for vLLM 0.34 (Model Runner V2).

vLLM calls :meth:`FirpSpeculatorConfig.configure` from ``SpeculativeConfig.__post_init__`` in the
process that parses the arguments, so everything a user can get wrong is refused there, before any
engine process starts, with a message that names the problem. As vLLM asks of speculator configs,
this module does not import the speculator (it is imported in every process).

FIRP drafts with the served model itself, so the "draft model config" is a copy of the target's (never
loaded from the heads directory), whose hf_config carries the FIRP settings to the workers and names
the aux hidden-state layer t (``eagle_aux_hidden_state_layer_ids``, read by the runner's
``set_eagle3_aux_hidden_state_layers``).
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any

from vllm.v1.worker.gpu.spec_decode.speculator_config import SpeculatorConfig

from .. import config as shared

if TYPE_CHECKING:
    from vllm.config import SpeculativeConfig

FirpConfigError = shared.FirpConfigError

# SpeculativeConfig fields (vLLM 0.34) that configure a separate draft model or another drafting or
# verification scheme. FIRP would silently ignore them, so a non-default value is refused.
UNSUPPORTED_FIELDS = (
    "quantization", "moe_backend", "attention_backend", "kv_cache_dtype", "max_model_len", "revision",
    "code_revision", "index_share_for_mtp_iteration", "draft_lm_head_quantization", "use_local_argmax_reduction",
    "prompt_lookup_max", "prompt_lookup_min", "parallel_drafting", "draft_load_config", "synthetic_acceptance_rates",
    "synthetic_acceptance_length", "enable_adaptive_verification", "dspark_draft_topk", "xpress_topc",
    "speculator_options", "fly_window_size", "draft_decode_context_parallel_size",
)
# Non-default values that are refused with a reason (each is a feature FIRP does not implement yet).
UNSUPPORTED_VALUES = {
    "draft_sample_method": ("greedy", "FIRP proposes top-1 (greedy) drafts; 'probabilistic' is not implemented"),
    "rejection_sample_method": ("standard", "FIRP is verified by vLLM's standard (lossless) rejection sampler"),
}


def firp_info(spec: Any) -> dict[str, Any]:
    """The FIRP settings the workers need, carried on the draft hf_config (pickled to every process)."""
    return spec.draft_model_config.hf_config.firp


class FirpSpeculatorConfig(SpeculatorConfig):
    """FIRP: K pseudo tokens from the layer-t state of the last accepted token, run through the served
    model's own layers t+1..L (its KV cache, norm and LM head); one top-1 chain per request."""

    base_method = None  # not based on a built-in speculator
    speculator_class = "vllm_firp.vllm_plugin.v0_34.speculator.FirpSpeculator"
    supported_options = frozenset()
    # Reads aux hidden states, not the target's last hidden states (EAGLE-style), and never the next
    # prefill token: no prefill lookahead.
    uses_target_hidden_states = False

    @classmethod
    def default_model(cls, spec: SpeculativeConfig) -> str | None:
        raise FirpConfigError(
            "speculative method 'firp' needs 'model': the FIRP heads directory "
            '(e.g. --speculative-config \'{"method": "firp", "model": "/path/to/heads"}\')'
        )

    @classmethod
    def configure(cls, spec: SpeculativeConfig) -> None:
        if spec.model is None:
            cls.default_model(spec)
        target = spec.target_model_config
        if target is None:
            raise FirpConfigError("speculative method 'firp' needs the target model config (set by vLLM's EngineArgs)")
        _refuse_unsupported_fields(spec)
        _refuse_parallelism(spec)
        shared.configure_firp_draft(spec, prompt_lookup=None)

    # --- behaviour (queried through SpeculativeConfig.speculator_config) ---

    @property
    def uses_aux_hidden_states(self) -> bool:
        return True  # layer t's residual stream (the runner's aux hidden state t)

    @property
    def num_lookahead_tokens(self) -> int:
        # The K pseudo tokens of the last accepted token (position P) write K/V at P+1..P+K: reserve
        # them, as for EAGLE. The next verify pass rewrites those positions before anything reads them.
        return self.num_speculative_tokens

    def hash_factors(self) -> list[Any]:
        # The aux layer is already a compile factor (SpeculativeConfig.compile_factors); the heads are not
        # part of the target's graph, but name them so two configs never share a cache entry by accident.
        return ["firp", firp_info(self.spec_config)["config"]["inject_layers"][0]]


def _default(f: Any) -> Any:
    d = f.default
    return getattr(d, "default", d)  # pydantic Field(...) keeps the default on a FieldInfo


def _refuse_unsupported_fields(spec: Any) -> None:
    defaults = {f.name: _default(f) for f in fields(spec)}
    bad = [n for n in UNSUPPORTED_FIELDS if n in defaults and getattr(spec, n) != defaults[n]]
    if bad:
        raise FirpConfigError(
            f"speculative_config field(s) {', '.join(bad)} are not supported with method 'firp' (FIRP drafts "
            "with the served model itself, one top-1 chain, verified by vLLM's standard rejection sampler)"
        )
    for name, (allowed, why) in UNSUPPORTED_VALUES.items():
        if name in defaults and getattr(spec, name) != allowed:
            raise FirpConfigError(f"speculative_config {name}={getattr(spec, name)!r} with method 'firp': {why}")
    if spec.tensor_parallel_size is not None:
        raise FirpConfigError("'tensor_parallel_size' is not a speculative_config field; FIRP uses the target's TP")


def _refuse_parallelism(spec: Any) -> None:
    shared._refuse_parallelism(spec)  # draft TP != target TP, PP, DP, DCP, PCP


__all__ = ["FirpConfigError", "FirpSpeculatorConfig", "firp_info"]
