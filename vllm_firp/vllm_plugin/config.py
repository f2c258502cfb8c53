"""Config time: turn ``{"method": "firp", "model": HEADS_DIR}`` into a validated SpeculativeConfig.

Everything a user can get wrong is refused here, in the process that parses the arguments, so
``vllm serve`` exits and ``LLM(...)`` raises with a message that names the problem, before any engine
process starts. FIRP settings live in ``HEADS_DIR/config.json``: vLLM's config classes forbid extra keys.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import fields
from typing import Any

from vllm_firp.core import FirpCheckpointError, FirpConfig, FirpHeads, precision

logger = logging.getLogger("vllm.plugins.firp")
METHOD = "firp"
HYBRID_METHOD = "firp_suffix"  # FIRP + vLLM's suffix decoding in one drafter (hybrid.py)
METHODS = (METHOD, HYBRID_METHOD)
# Decoder-only text models whose layers take (positions, hidden_states, residual) and whose model
# records aux hidden states (SupportsEagle3). Others may work but are refused until tested.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
MAX_SPEC_LEN = 128  # vllm/v1/sample/rejection_sampler.py: MAX_SPEC_LEN
# SpeculativeConfig fields that configure a separate draft model or another drafting scheme. FIRP
# drafts with the served model itself, so a non-default value would be silently ignored: refuse it.
UNUSED_FIELDS = (
    "quantization", "moe_backend", "attention_backend", "kv_cache_dtype", "max_model_len", "revision",
    "code_revision", "index_share_for_mtp_iteration", "use_heterogeneous_vocab", "prompt_lookup_max",
    "prompt_lookup_min", "parallel_drafting", "draft_load_config", "rejection_sample_method",
    "synthetic_acceptance_rates", "synthetic_acceptance_length", "enable_adaptive_verification",
    "draft_sample_method", "dspark_draft_topk", "use_local_argmax_reduction",
)
# Suffix decoding's own settings: used by method firp_suffix, silently ignored (so refused) by plain firp.
SUFFIX_FIELDS = ("suffix_decoding_max_tree_depth", "suffix_decoding_max_cached_requests",
                 "suffix_decoding_max_spec_factor", "suffix_decoding_min_token_prob")


class FirpConfigError(ValueError):
    """A speculative config with method 'firp' that this plugin cannot serve exactly."""


def is_firp(vllm_config: Any) -> bool:
    """Method firp or firp_suffix: everything but the suffix half is the same."""
    return getattr(getattr(vllm_config, "speculative_config", None), "method", None) in METHODS


def firp_info(speculative_config: Any) -> dict[str, Any]:
    """What the workers need, carried on the draft hf_config (pickled to every engine process)."""
    return speculative_config.draft_model_config.hf_config.firp


def _warn_emulated_dtype(target: Any) -> None:
    """vLLM's CPU build serves bf16 checkpoints in bf16 even where the CPU only emulates it (~28x slower than
    fp32 on AVX2-only CPUs), which would swamp any speedup from drafting: say so, and how to avoid it."""
    from vllm.platforms import current_platform

    cpu = precision.cpu_info()
    if current_platform.device_type == "cpu" and target.dtype not in cpu.native():
        logger.warning(
            "the served model computes in %s, which this CPU (%s, capability %s) only emulates: it runs many times "
            "slower than float32; pass --dtype float32 (LLM(..., dtype='float32'))",
            precision.dtype_name(target.dtype), cpu.model, cpu.capability,
        )


def finish_speculative_config(sc: Any) -> None:
    """``SpeculativeConfig.__post_init__`` for methods 'firp' and 'firp_suffix': validate, fill the derived fields."""
    if sc.model is None:
        raise FirpConfigError(
            f"speculative method '{sc.method}' needs 'model': the FIRP heads directory "
            f'(e.g. --speculative-config \'{{"method": "{sc.method}", "model": "/path/to/heads"}}\')'
        )
    target = sc.target_model_config
    if target is None:
        raise FirpConfigError(f"speculative method '{sc.method}' needs the target model config (set by EngineArgs)")
    _refuse_unused_fields(sc)
    _refuse_parallelism(sc)
    hybrid = sc.method == HYBRID_METHOD
    configure_firp_draft(sc, prompt_lookup=0, longer_drafts=hybrid)  # 0 as vLLM does for custom_class
    if hybrid:
        _validate_suffix(sc)


def _validate_suffix(sc: Any) -> None:
    """The suffix half of firp_suffix: vLLM's own checks of the suffix_decoding_* fields and of arctic-inference."""
    try:
        sc._validate_suffix_decoding()  # vLLM 0.32: needs num_speculative_tokens set (it is, by now)
    except ImportError as e:
        raise FirpConfigError(f"speculative method 'firp_suffix' needs suffix decoding: {e}") from e
    except ValueError as e:
        raise FirpConfigError(f"speculative method 'firp_suffix': {e}") from e


def configure_firp_draft(sc: Any, prompt_lookup: int | None, longer_drafts: bool = False) -> None:
    """What both vLLM versions check and fill for method 'firp' (after their own field checks): the served model's
    architecture, the heads (loaded and checked once), K, and the draft model config FIRP drafts with: a copy of
    the target's naming the aux layer t, never a model loaded from the heads directory. ``longer_drafts``: K may
    exceed the heads' (firp_suffix: suffix chains up to K, FIRP chains up to the heads' K)."""
    target = sc.target_model_config
    archs = list(getattr(target, "architectures", None) or [])
    if not set(archs) & set(SUPPORTED_ARCHITECTURES):
        raise FirpConfigError(
            f"speculative method 'firp' supports {', '.join(SUPPORTED_ARCHITECTURES)}; the served model is {archs}"
        )

    _warn_emulated_dtype(target)
    heads_dir = os.path.abspath(os.path.expanduser(sc.model))
    cfg = load_heads_config(heads_dir, target)
    _refuse_sliding_windows(target.hf_text_config, cfg.inject_layers[0])
    n = sc.num_speculative_tokens or cfg.K
    if n > cfg.K and not longer_drafts:
        raise FirpConfigError(
            f"num_speculative_tokens={n} exceeds the {cfg.K} future tokens the FIRP heads in {heads_dir} "
            f"were trained for; use num_speculative_tokens <= {cfg.K} (or omit it to use {cfg.K})"
        )
    if n > MAX_SPEC_LEN:
        raise FirpConfigError(f"num_speculative_tokens={n} exceeds vLLM's rejection sampler limit {MAX_SPEC_LEN}")

    draft = copy.copy(target)
    draft.hf_config = copy.deepcopy(target.hf_config)
    draft.hf_config.eagle_aux_hidden_state_layer_ids = [cfg.inject_layers[0]]  # the runner's aux layer
    draft.hf_config.firp = {"heads_dir": heads_dir, "config": cfg.to_dict(), "method": sc.method}
    sc.model = heads_dir
    sc.num_speculative_tokens = n
    sc.draft_model_config = draft
    sc.draft_parallel_config = sc.target_parallel_config
    sc.prompt_lookup_max = sc.prompt_lookup_min = prompt_lookup


def load_heads_config(heads_dir: str, target: Any) -> FirpConfig:
    """Load the heads once (config, safetensors, NaN/Inf, shapes vs the served model) and check v0 scope."""
    try:
        heads = FirpHeads.from_pretrained(heads_dir, target.hf_text_config)
    except FirpCheckpointError as e:
        raise FirpConfigError(f"speculative method 'firp': unusable FIRP heads for {target.model}: {e}") from e
    cfg = heads.config
    served = os.path.realpath(target.model) if os.path.isdir(target.model) else target.model
    trained = os.path.realpath(cfg.base_model) if os.path.isdir(cfg.base_model) else cfg.base_model
    if cfg.base_model and trained != served:  # same shapes, other weights: lossless, but drafts get worse
        logger.warning(
            "FIRP heads in %s were trained for base model %s, but the served model is %s; acceptance will be "
            "poor unless these are the same weights", heads_dir, cfg.base_model, target.model,
        )
    if len(set(cfg.inject_layers)) != 1:
        raise FirpConfigError(
            f"FIRP heads in {heads_dir} inject pseudo tokens at different layers {cfg.inject_layers}; the vLLM "
            "plugin supports one inject layer for all pseudo tokens (exact two-pass drafting). Use the reference "
            "engine (vllm_firp.engine), which supports per-token inject layers, or train heads with one layer."
        )
    if not cfg.pseudo_attend_each_other:
        raise FirpConfigError(
            f"FIRP heads in {heads_dir} were trained with pseudo_attend_each_other=false; the vLLM plugin runs "
            "pseudo tokens causally (each sees the earlier ones). Use the reference engine (vllm_firp.engine)."
        )
    return cfg


def _refuse_sliding_windows(hf_config: Any, inject_layer: int) -> None:
    """The drafter builds full-attention metadata for layers t+1..L; a windowed layer there would be wrong."""
    window = getattr(hf_config, "sliding_window", None)
    if not window:
        return
    types = getattr(hf_config, "layer_types", None) or ["sliding_attention"] * hf_config.num_hidden_layers
    windowed = [i + 1 for i, kind in enumerate(types) if kind == "sliding_attention" and i + 1 > inject_layer]
    if windowed:
        raise FirpConfigError(
            f"speculative method 'firp' drafts with full attention, but layers {windowed} of the served model use "
            f"a {window}-token sliding window; serve with --disable-sliding-window (max_model_len <= {window}) "
            "or use the reference engine (vllm_firp.engine), which applies windows"
        )


def _refuse_unused_fields(sc: Any) -> None:
    defaults = {f.name: _default(f) for f in fields(sc)}
    bad = [name for name in UNUSED_FIELDS if name in defaults and getattr(sc, name) != defaults[name]]
    if bad:
        raise FirpConfigError(
            f"speculative_config field(s) {', '.join(bad)} are not supported with method '{sc.method}' (FIRP "
            "drafts with the served model itself, one top-1 chain, verified by vLLM's standard rejection sampler)"
        )
    suffix = [name for name in SUFFIX_FIELDS if name in defaults and getattr(sc, name) != defaults[name]]
    if suffix and sc.method == METHOD:
        raise FirpConfigError(
            f"speculative_config field(s) {', '.join(suffix)} configure suffix decoding, which method 'firp' does "
            f"not use: use method '{HYBRID_METHOD}' (FIRP + suffix decoding) or drop them"
        )
    if sc.tensor_parallel_size is not None:
        raise FirpConfigError("'tensor_parallel_size' is not a speculative_config field; FIRP uses the target's TP")


def _default(f: Any) -> Any:
    d = f.default
    return getattr(d, "default", d)  # pydantic Field(...) keeps the default on a FieldInfo


def _refuse_parallelism(sc: Any) -> None:
    pc = sc.target_parallel_config
    if pc is None:
        return
    tp = pc.tensor_parallel_size
    if sc.draft_tensor_parallel_size not in (None, tp):
        raise FirpConfigError(
            f"draft_tensor_parallel_size={sc.draft_tensor_parallel_size}: FIRP drafts with the served model's "
            f"own layers, so it always runs at the target's tensor parallel size ({tp}); omit the field"
        )
    for name, what in (
        ("pipeline_parallel_size", "pipeline parallelism"),
        ("data_parallel_size", "data parallelism"),
        ("decode_context_parallel_size", "decode context parallelism"),
        ("prefill_context_parallel_size", "prefill context parallelism"),
    ):
        if getattr(pc, name, 1) > 1:
            raise FirpConfigError(f"speculative method 'firp' does not support {what} ({name}={getattr(pc, name)})")


def validate_vllm_config(vc: Any) -> None:
    """Cross-config checks that need the whole VllmConfig (``VllmConfig.__post_init__``)."""
    problems = []
    if vc.lora_config is not None:
        problems.append("LoRA adapters (the FIRP heads are trained for the base model's hidden states)")
    if vc.kv_transfer_config is not None:
        problems.append("KV connectors / disaggregated prefill (pseudo K/V would be transferred)")
    if getattr(vc.parallel_config, "enable_expert_parallel", False):
        problems.append("expert parallelism")
    if problems:
        raise FirpConfigError("speculative method 'firp' does not support " + "; ".join(problems))


__all__ = [
    "FirpConfigError",
    "HYBRID_METHOD",
    "MAX_SPEC_LEN",
    "METHOD",
    "METHODS",
    "SUPPORTED_ARCHITECTURES",
    "finish_speculative_config",
    "firp_info",
    "is_firp",
    "load_heads_config",
    "validate_vllm_config",
]
