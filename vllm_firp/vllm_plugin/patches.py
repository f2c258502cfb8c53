"""Every vLLM symbol the FIRP plugin patches for speculative method ``firp`` (vLLM 0.32.x;
docs/vllm-integration-notes.md §8). The CPU fixes of vLLM's own sampling, which change every method and
request, live apart in :mod:`vllm_firp.vllm_plugin.cpu_fixes` with their own switch.

| # | symbol (vllm 0.32.0)                                             | how              | why |
|---|------------------------------------------------------------------|------------------|-----|
| 1 | ``config.speculative.SpeculativeConfig.method`` (field + Literal) | extend, rebuild  | accept ``"firp"``, ``"firp_suffix"`` (pydantic, CLI) |
| 2 | ``SpeculativeConfig.__post_init__``                               | wrap, firp first | build the config from the heads dir; refuse what FIRP cannot serve |
| 3 | ``SpeculativeConfig.compute_hash``                                | wrap             | aux hidden-state outputs change the compiled graph |
| 4 | ``config.vllm.VllmConfig.num_lookahead_tokens`` (property)        | replace          | reserve K KV slots past each request for the pseudo tokens |
| 5 | ``VllmConfig._get_v2_model_runner_unsupported_features``          | wrap             | force the V1 model runner (MRV2 has no FIRP drafter) |
| 6 | ``VllmConfig.__post_init__``                                      | wrap             | refuse LoRA / KV connectors / EP with firp at config time |
| 7 | ``v1.worker.gpu_model_runner.GPUModelRunner.__init__``            | wrap             | build FirpProposer via the custom_class branch, enable aux outputs |
| 8 | ``GPUModelRunner.propose_draft_token_ids``                        | wrap, firp first | the method chain has no else branch; pass the input batch |
| 9 | ``GPUModelRunner.initialize_metadata_builders``                   | wrap             | attention metadata builders for layers t+1..L |

Also relied on, unpatched (tests/test_vllm_contract.py checks them): ``CPUModelRunner`` subclasses
``GPUModelRunner``; ``create_custom_proposer(vllm_config)``; ``_get_eagle3_aux_layers_from_config``;
decoder-layer ``forward(positions, hidden_states, residual)``; ``CommonAttentionMetadata`` fields;
``get_attention_context`` reads ``slot_mapping.get(layer_name)``; ``sample_tokens`` drafts after
bookkeeping for methods outside ``drafter_runs_model_forward``. ``_dummy_run`` is not patched: FIRP's
pass is smaller than the sampler's profiled ``[max_num_seqs * (K + 1), vocab]`` logits.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal, get_args

logger = logging.getLogger("vllm.plugins.firp")  # under "vllm": uses its handlers and format

SUPPORTED_VLLM = "0.32."
FORCE_ENV = "VLLM_FIRP_ALLOW_UNTESTED_VLLM"
PROPOSER_PATH = "vllm_firp.vllm_plugin.proposer.FirpProposer"
PATCHED: list[tuple[str, str]] = [
    ("vllm.config.speculative", "SpeculativeConfig.method"),
    ("vllm.config.speculative", "SpeculativeConfig.__post_init__"),
    ("vllm.config.speculative", "SpeculativeConfig.compute_hash"),
    ("vllm.config.vllm", "VllmConfig.num_lookahead_tokens"),
    ("vllm.config.vllm", "VllmConfig._get_v2_model_runner_unsupported_features"),
    ("vllm.config.vllm", "VllmConfig.__post_init__"),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner.__init__"),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner.propose_draft_token_ids"),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner.initialize_metadata_builders"),
]
MARK = "__firp_patched__"


def version_ok(version: str | None = None) -> bool:
    import vllm

    return (version or vllm.__version__).startswith(SUPPORTED_VLLM)


def apply() -> bool:
    """Install the FIRP patches (idempotent). Returns False, with a warning, on an untested vLLM version."""
    import vllm

    if not version_ok() and os.environ.get(FORCE_ENV) != "1":
        logger.warning(
            "vllm-firp supports vLLM %sx, found %s: speculative method 'firp' is NOT available. Install "
            "vllm==0.32.0, or set %s=1 to patch anyway (tests/test_vllm_contract.py shows what moved).",
            SUPPORTED_VLLM, vllm.__version__, FORCE_ENV,
        )
        return False
    patch_config()
    patch_runner()
    return True


def wrap(owner: type, name: str, make: Any) -> None:
    """Replace ``owner.name`` by ``make(original)`` once; the original stays on the wrapper."""
    original = owner.__dict__[name]
    if getattr(original, MARK, False) or getattr(getattr(original, "fget", None), MARK, False):
        return
    new = make(original)
    target = new.fget if isinstance(new, property) else new
    setattr(target, MARK, True)
    target.__wrapped_original__ = original
    setattr(owner, name, new)


def patch_config() -> None:
    import pydantic
    from vllm.config import SpeculativeConfig, VllmConfig
    from vllm.engine import arg_utils

    from . import config as fc

    field = SpeculativeConfig.__dataclass_fields__["method"]
    methods = get_args(get_args(field.type)[0])
    if not set(fc.METHODS) <= set(methods):
        new = tuple(m for m in fc.METHODS if m not in methods)
        field.type = Literal[methods + new] | None  # type: ignore[valid-type]
        SpeculativeConfig.__annotations__["method"] = field.type

    def post_init(original: Any) -> Any:
        def __post_init__(self: Any) -> Any:
            if self.method not in fc.METHODS:
                return original(self)
            fc.finish_speculative_config(self)
            return self

        return __post_init__

    def compute_hash(original: Any) -> Any:
        def wrapped(self: Any) -> str:
            h = original(self)
            if self.method in fc.METHODS:  # aux outputs are part of the compiled graph
                ids = self.draft_model_config.hf_config.eagle_aux_hidden_state_layer_ids
                h += f"-firp-aux{list(ids)}"
            return h

        return wrapped

    def lookahead(original: property) -> property:
        return property(lambda vc: vc.num_speculative_tokens if fc.is_firp(vc) else original.fget(vc))

    def v2_unsupported(original: Any) -> Any:
        def wrapped(self: Any) -> list[str]:
            firp = fc.is_firp(self)
            return original(self) + ([f"speculative method '{self.speculative_config.method}'"] if firp else [])

        return wrapped

    def vllm_post_init(original: Any) -> Any:
        def __post_init__(self: Any) -> Any:
            out = original(self)
            if fc.is_firp(self):
                fc.validate_vllm_config(self)
            return out

        return __post_init__

    wrap(SpeculativeConfig, "__post_init__", post_init)
    wrap(SpeculativeConfig, "compute_hash", compute_hash)
    wrap(VllmConfig, "num_lookahead_tokens", lookahead)
    wrap(VllmConfig, "_get_v2_model_runner_unsupported_features", v2_unsupported)
    wrap(VllmConfig, "__post_init__", vllm_post_init)
    pydantic.dataclasses.rebuild_dataclass(SpeculativeConfig, force=True)  # re-reads the Literal
    arg_utils._compute_kwargs.cache_clear()  # CLI choices for --spec-method / -sc are cached


def patch_runner() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from . import config as fc

    def init(original: Any) -> Any:
        def __init__(self: Any, vllm_config: Any, *args: Any, **kwargs: Any) -> None:
            if not fc.is_firp(vllm_config):
                return original(self, vllm_config, *args, **kwargs)
            sc = vllm_config.speculative_config
            method, heads_dir = sc.method, sc.model
            # The V1 runner's method chain ends in "Unknown speculative decoding method"; its
            # custom_class branch builds any proposer from a dotted path: borrow it for FIRP.
            sc.method, sc.model = "custom_class", PROPOSER_PATH
            try:
                original(self, vllm_config, *args, **kwargs)
            finally:
                sc.method, sc.model = method, heads_dir
            if getattr(self, "drafter", None) is not None:
                self.use_aux_hidden_state_outputs = True
                self.drafter.attach(self)
            logger.info(
                "FIRP: speculative method '%s' runs on the V1 model runner (%s), K=%d, heads %s",
                method, type(self).__name__, sc.num_speculative_tokens, heads_dir,
            )

        return __init__

    def propose(original: Any) -> Any:
        def propose_draft_token_ids(
            self: Any,
            scheduler_output: Any,
            sampled_token_ids: Any,
            sampling_metadata: Any,
            hidden_states: Any,
            sample_hidden_states: Any,
            aux_hidden_states: Any,
            spec_decode_metadata: Any,
            common_attn_metadata: Any,
            slot_mappings: Any,
        ) -> Any:
            if not fc.is_firp(self.vllm_config):
                return original(
                    self, scheduler_output, sampled_token_ids, sampling_metadata, hidden_states,
                    sample_hidden_states, aux_hidden_states, spec_decode_metadata, common_attn_metadata,
                    slot_mappings,
                )
            self._draft_probs = None
            self._draft_prob_req_ids = None
            return self.drafter.propose(
                scheduler_output, sampled_token_ids, aux_hidden_states, spec_decode_metadata, common_attn_metadata,
                self.input_batch,
            )

        return propose_draft_token_ids

    def builders(original: Any) -> Any:
        def initialize_metadata_builders(self: Any, kv_cache_config: Any, kernel_block_sizes: Any) -> None:
            original(self, kv_cache_config, kernel_block_sizes)
            if fc.is_firp(self.vllm_config) and getattr(self, "drafter", None) is not None:
                self.drafter.init_attention(kv_cache_config, kernel_block_sizes)

        return initialize_metadata_builders

    wrap(GPUModelRunner, "__init__", init)
    wrap(GPUModelRunner, "propose_draft_token_ids", propose)
    wrap(GPUModelRunner, "initialize_metadata_builders", builders)
