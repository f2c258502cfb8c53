"""Reference FIRP engine over HF transformers: one forward per step verifies the tree and drafts the next.

Step (batch size 1): the tree's root is the exact token found last step, its other nodes come from the
drafter's candidates. One forward over [tree nodes ; K pseudo rows per pseudo node] gives the
verification logits and, for whichever node ends up last accepted, the pseudo rows that draft the next
tree (its own, or its nearest pseudo ancestor's shifted ones; see vllm_firp.core.tree).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from ..core import (
    DraftTree,
    FirpHeads,
    SamplingParams,
    chain_tree,
    prefill_layout,
    target_probs,
    tree_layout,
    verify,
)
from ..core.precision import model_dtype
from .drafters import DraftContext, Drafter, FirpDrafter, NoDrafter
from .forward import ModelParts, commit_rows, forward_rows, new_cache


@dataclass
class GenerationStats:
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    # Tokens each decode forward emitted: accepted drafts + 1, as verified, before a stop token or
    # max_new_tokens cuts the last step (like vLLM's acceptance counts); new_tokens is what is kept.
    tokens_per_step: list[int] = field(default_factory=list)
    rows_per_step: list[int] = field(default_factory=list)  # rows (tree + pseudo) of each decode forward

    @property
    def num_forwards(self) -> int:
        """Target-model forwards, prefill included."""
        return 1 + len(self.tokens_per_step)

    @property
    def mean_accepted(self) -> float:
        """tau: mean tokens emitted per decode forward (accepted drafts + 1)."""
        return sum(self.tokens_per_step) / max(1, len(self.tokens_per_step))

    @property
    def mean_rows(self) -> float:
        return sum(self.rows_per_step) / max(1, len(self.rows_per_step))

    def to_dict(self, num_new_tokens: int) -> dict:
        total = self.prefill_seconds + self.decode_seconds
        return {
            "new_tokens": num_new_tokens,
            "forwards": self.num_forwards,
            "mean_accepted_tokens_per_forward": round(self.mean_accepted, 4),
            "mean_rows_per_forward": round(self.mean_rows, 2),
            "prefill_seconds": round(self.prefill_seconds, 4),
            "decode_seconds": round(self.decode_seconds, 4),
            "tokens_per_second": round(num_new_tokens / total, 2) if total > 0 else None,
        }


@dataclass
class Generation:
    tokens: list[int]  # new tokens only
    stats: GenerationStats
    finish_reason: str  # "stop" (EOS / stop token) or "length"


class FirpEngine:
    """Reference engine: FIRP tree / chain decoding and plain autoregressive decoding on one model."""

    def __init__(self, model: PreTrainedModel, heads: FirpHeads | None = None) -> None:
        self.model = model.eval()
        self.parts = ModelParts.of(model)
        if heads is not None:
            heads.config.check_matches(model.config)
            heads = heads.to(device=model.device, dtype=model.dtype).eval()
        self.heads = heads
        eos = model.generation_config.eos_token_id if model.generation_config else model.config.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, heads_dir: str | Path | None = None, dtype: str | torch.dtype = "auto"
    ) -> FirpEngine:
        """``dtype`` "auto": the checkpoint's dtype where this CPU computes it natively, else fp32."""
        dtype = model_dtype(model_dir, dtype)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
        heads = FirpHeads.from_pretrained(heads_dir, model.config, dtype=dtype) if heads_dir else None
        return cls(model, heads)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def generate(
        self,
        prompt_ids: list[int],
        max_new_tokens: int = 64,
        tree: DraftTree | None = None,
        sampling: SamplingParams | None = None,
        stop_token_ids: set[int] | None = None,
        drafter: Drafter | None = None,
    ) -> Generation:
        """Generate up to ``max_new_tokens`` tokens after ``prompt_ids``.

        ``drafter=None`` drafts with the engine's FIRP heads when ``tree`` is given, and otherwise decodes
        plainly (autoregressive, the baseline). With a drafter but no ``tree``, the tree is its top-1 chain.
        """
        sampling = sampling or SamplingParams()
        drafter = drafter or (FirpDrafter(self.heads) if self.heads is not None and tree is not None else NoDrafter())
        if isinstance(drafter, NoDrafter):
            tree = chain_tree(0) if tree is None else tree.truncated(0)
        elif tree is None:
            tree = chain_tree(drafter.num_pseudo)
        self._check_request(prompt_ids, max_new_tokens, tree, drafter)
        stops = self.eos_token_ids | set(stop_token_ids or ())
        gen = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None
        K = drafter.num_pseudo
        pseudo_each_other = self.heads.config.pseudo_attend_each_other if K else True
        stats = GenerationStats()
        cache = new_cache()
        device = self.device

        t0 = time.perf_counter()
        layout = prefill_layout(len(prompt_ids), K, pseudo_each_other)
        hidden, _ = forward_rows(self.parts, torch.tensor(prompt_ids, device=device), layout, cache, self.heads)
        commit_rows(cache, 0, torch.arange(len(prompt_ids)))  # drop the pseudo rows' K/V
        last = len(prompt_ids) - 1
        next_token = self._sample(self.parts.lm_head(hidden[last : last + 1])[0], sampling, gen)
        ctx = self._context(prompt_ids + [next_token], len(prompt_ids), hidden, layout, last, 0, 0)
        out = [next_token]
        done = next_token in stops or max_new_tokens <= 1
        stats.prefill_seconds = time.perf_counter() - t0

        t0 = time.perf_counter()
        while not done:
            candidates = drafter.propose(ctx, tree.depth, max(1, tree.topk))
            step_tree = tree.truncated(candidates.shape[0])
            node_tokens = step_tree.node_tokens(next_token, candidates)
            layout = tree_layout(step_tree, K, pseudo_each_other)  # cached per tree shape; K=0: no pseudo rows
            past_len = cache.get_seq_length()
            hidden, _ = forward_rows(self.parts, node_tokens.to(device), layout, cache, self.heads)
            logits = self.parts.lm_head(hidden[: step_tree.num_nodes])
            verdict = verify(step_tree, node_tokens, logits, sampling, gen)
            commit_rows(cache, past_len, torch.tensor(verdict.accepted))
            emitted = node_tokens[verdict.accepted[1:]].tolist() + [verdict.next_token]
            out.extend(emitted)
            done = len(out) >= max_new_tokens or any(t in stops for t in emitted)
            stats.tokens_per_step.append(len(emitted))
            stats.rows_per_step.append(layout.num_rows)
            next_token = verdict.next_token
            last = verdict.accepted[-1]
            slot, shift = step_tree.draft_source(last)
            ctx = self._context(ctx.tokens + emitted, len(prompt_ids), hidden, layout, last, slot, shift)
        stats.decode_seconds = time.perf_counter() - t0
        tokens, reason = self._truncate(out, stops, max_new_tokens)
        return Generation(tokens, stats, reason)

    # ------------------------------------------------------------------ helpers
    def _context(
        self, tokens: list[int], n_prompt: int, hidden: torch.Tensor, layout, row: int, slot: int, shift: int
    ) -> DraftContext:
        """Draft inputs after the last accepted row ``row``: pseudo ``shift+1..K`` of anchor ``slot``."""
        pseudo_logits = None
        if layout.K:
            rows = [layout.pseudo_row(k, slot) for k in range(shift + 1, layout.K + 1)]
            pseudo_logits = self.parts.lm_head(hidden[rows])
        return DraftContext(tokens, n_prompt, pseudo_logits, hidden[row])

    def _sample(self, logits: torch.Tensor, sampling: SamplingParams, gen: torch.Generator | None) -> int:
        if sampling.greedy:
            return int(logits.argmax())
        return int(torch.multinomial(target_probs(logits, sampling).cpu(), 1, generator=gen))

    def _check_request(self, prompt_ids: list[int], max_new_tokens: int, tree: DraftTree, drafter: Drafter) -> None:
        if not prompt_ids:
            raise ValueError("the prompt is empty: give at least one token")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        vocab = self.model.config.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise ValueError(f"prompt has token ids outside the vocabulary [0, {vocab})")
        limit = self.parts.max_positions
        needed = len(prompt_ids) + max_new_tokens + tree.depth + drafter.num_pseudo
        if needed > limit:
            raise ValueError(
                f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new_tokens}) + draft lookahead "
                f"({tree.depth + drafter.num_pseudo}) = {needed} exceeds the model's context length {limit}"
            )
        if drafter.num_pseudo and tree.depth > drafter.num_pseudo:
            raise ValueError(f"tree depth {tree.depth} exceeds the heads' K={drafter.num_pseudo}")

    @staticmethod
    def _truncate(out: list[int], stops: set[int], max_new_tokens: int) -> tuple[list[int], str]:
        for i, t in enumerate(out[:max_new_tokens]):
            if t in stops:
                return out[: i + 1], "stop"
        return out[:max_new_tokens], "length"
