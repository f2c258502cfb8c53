"""Tiny random models and drafters for tests (nothing is downloaded)."""

from __future__ import annotations

import gc

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from vllm_firp.core import FirpConfig, FirpHeads
from vllm_firp.engine.drafters import DraftContext

TINY = dict(
    vocab_size=101,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    # A wide init makes logits peaked, so argmax never hangs on float noise between batch shapes.
    initializer_range=0.25,
    attn_implementation="sdpa",
    tie_word_embeddings=False,
    eos_token_id=None,  # stops are tested explicitly, through stop_token_ids and the model's own EOS
)
ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    # A short window makes prompts + generations cross it, so the window masks are exercised.
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": 24}),
}


def tiny_model(arch: str = "llama", seed: int = 0, **overrides) -> torch.nn.Module:
    config_cls, model_cls, extra = ARCHS[arch]
    torch.manual_seed(seed)
    config = config_cls(**{**TINY, **extra, **overrides})
    return model_cls(config).eval()


def random_heads(model, K: int = 3, seed: int = 0, std: float = 0.3, **config_kw) -> FirpHeads:
    """Heads with random weights: drafts are mostly wrong, which exercises rejection paths."""
    torch.manual_seed(seed)
    heads = FirpHeads(FirpConfig.for_model(model.config, K, **config_kw))
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(torch.randn_like(p) * std)
    return heads.eval()


class OracleDrafter:
    """Drafts the known greedy continuation at rank 0 (wrong at ``miss_depth`` every ``miss_every`` steps).

    Forces long accepted paths through the engine's verification and KV-cache commit. With
    ``num_pseudo = K`` the engine still runs its FIRP pseudo rows, so they are exercised too.
    """

    def __init__(self, continuation: list[int], vocab: int, num_pseudo: int = 0, miss_every: int = 3,
                 miss_depth: int = 2, seed: int = 0) -> None:
        self.continuation, self.vocab, self.num_pseudo = continuation, vocab, num_pseudo
        self.miss_every, self.miss_depth, self.calls = miss_every, miss_depth, 0
        self.gen = torch.Generator().manual_seed(seed)

    def propose(self, ctx: DraftContext, depth: int, topk: int) -> torch.Tensor:
        self.calls += 1
        if self.num_pseudo and ctx.pseudo_logits is not None:  # as FIRP: no deeper than the pseudo rows given
            depth = min(depth, ctx.pseudo_logits.shape[0])
        root = len(ctx.tokens) - ctx.num_prompt_tokens - 1  # index of the pending root in the continuation
        truth = self.continuation[root + 1 : root + 1 + depth]
        cands = torch.randint(0, self.vocab, (len(truth), topk), generator=self.gen)
        for d, tok in enumerate(truth):
            cands[d, 0] = tok
            if self.calls % self.miss_every == 0 and d + 1 == self.miss_depth:
                cands[d, 0] = (tok + 1) % self.vocab
            cands[d, 1:] = torch.where(cands[d, 1:] == cands[d, 0], (cands[d, 1:] + 1) % self.vocab, cands[d, 1:])
        return cands


def shutdown_engine(llm) -> None:
    """Stop an in-process vLLM engine and free its distributed state, so the next test can start one."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    llm.llm_engine.engine_core.shutdown()
    gc.collect()
    cleanup_dist_env_and_memory()


def engine_metrics(llm) -> dict[str, float]:
    """vLLM's spec-decode, preemption and prefix-cache counters (``disable_log_stats=False``)."""
    out = {}
    for m in llm.get_metrics():
        if m.name.startswith(("vllm:spec_decode", "vllm:num_preemptions", "vllm:prefix_cache")):
            out[m.name] = getattr(m, "value", None) if hasattr(m, "value") else list(m.values)
    return out


def in_process_reference_models():
    """The cached reference model and heads for engine tests that reach vLLM's runner in-process; skips without them."""
    import os

    import pytest

    from tests.devmodels import dev_models

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine: the test can reach the runner
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    m = dev_models()
    if not m.model_source.startswith("reference"):
        pytest.skip(f"needs the project's reference model (got {m.describe()})")
    return m
