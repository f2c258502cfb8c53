"""Training-free peer drafters for the benchmark, behind the engine's ``Drafter`` protocol.

- :class:`PromptLookupDrafter`: prompt lookup / n-gram drafting. The last n tokens (n from
  ``max_ngram`` down to ``min_ngram``) are searched for earlier in the context; the tokens that
  followed the most recent match are proposed as a chain.
- :class:`EarlyExitDrafter`: early-layer self-speculation (LayerSkip / SPEED style). Layers 1..m of
  the target model, then its final norm and LM head, draft tokens autoregressively; the engine
  verifies them with the full model. The drafter keeps its own K/V cache of layers 1..m and, at
  each call, first runs the tokens committed since its last call (its extra forwards are part of
  the engine's decode time).
- :class:`RecordingDrafter`: wraps a drafter and records its wider top-k lists, to measure the
  rank probabilities that shape a budget tree.
"""

from __future__ import annotations

import dataclasses

import torch

from vllm_firp.core import causal_layout
from vllm_firp.engine.drafters import DraftContext, Drafter
from vllm_firp.engine.forward import ModelParts, commit_rows, forward_rows, new_cache


class PromptLookupDrafter:
    """Propose what followed the most recent earlier occurrence of the context's last n-gram.

    Candidates are a chain: every rank of a depth holds the same token (use a chain tree).
    """

    num_pseudo = 0

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def lookup(self, tokens: list[int], depth: int) -> list[int]:
        """The continuation (at most ``depth`` tokens) of the longest, most recent n-gram match."""
        end = len(tokens)
        for n in range(min(self.max_ngram, end - 1), self.min_ngram - 1, -1):
            pattern = tokens[end - n :]
            for start in range(end - n - 1, -1, -1):  # most recent earlier occurrence first
                if tokens[start : start + n] == pattern:
                    return tokens[start + n : start + n + depth]
        return []

    def propose(self, ctx: DraftContext, depth: int, topk: int) -> torch.Tensor:
        cont = self.lookup(ctx.tokens, depth)
        return torch.tensor(cont, dtype=torch.long).reshape(-1, 1).expand(-1, topk).contiguous()


class EarlyExitDrafter:
    """Draft with the first ``exit_layer`` layers + final norm + LM head, one token at a time."""

    num_pseudo = 0

    def __init__(self, parts: ModelParts, exit_layer: int) -> None:
        if not 1 <= exit_layer < parts.num_layers:
            raise ValueError(f"exit_layer must be in 1..{parts.num_layers - 1}, got {exit_layer}")
        self.exit_layer = exit_layer
        self.parts = dataclasses.replace(parts, layers=parts.layers[:exit_layer], windows=parts.windows[:exit_layer])
        self.cache = new_cache()
        self.cached: list[int] = []  # tokens whose layer-1..m K/V are in self.cache
        self.draft_forwards = 0  # partial forwards run (catch-up + drafting), for reporting

    def _run(self, tokens: list[int]) -> torch.Tensor:
        """Append ``tokens`` to the draft cache; logits of the last one."""
        device = self.parts.embed.weight.device
        hidden, _ = forward_rows(self.parts, torch.tensor(tokens, device=device), causal_layout(len(tokens)), self.cache)
        self.draft_forwards += 1
        return self.parts.lm_head(hidden[-1])

    @torch.inference_mode()
    def propose(self, ctx: DraftContext, depth: int, topk: int) -> torch.Tensor:
        tokens = ctx.tokens
        if len(self.cached) >= len(tokens) or tokens[: len(self.cached)] != self.cached:
            self.cache, self.cached = new_cache(), []  # a new request (or a rewritten context)
        if depth == 0:
            return torch.empty(0, topk, dtype=torch.long)
        logits = self._run(tokens[len(self.cached) :])  # catch up, ending with the pending root
        self.cached = list(tokens)
        rows = [logits.topk(topk).indices]
        for _ in range(depth - 1):
            rows.append(self._run([int(rows[-1][0])]).topk(topk).indices)
        commit_rows(self.cache, len(tokens), torch.empty(0, dtype=torch.long))  # drop the drafts' K/V
        return torch.stack(rows).cpu()


class RecordingDrafter:
    """Pass-through drafter that keeps each step's top-``width`` candidates and root index."""

    def __init__(self, inner: Drafter, width: int) -> None:
        self.inner, self.width = inner, width
        self.num_pseudo = inner.num_pseudo
        self.records: list[tuple[int, torch.Tensor]] = []  # (index of the root in ctx.tokens, [D, width])

    def propose(self, ctx: DraftContext, depth: int, topk: int) -> torch.Tensor:
        cands = self.inner.propose(ctx, depth, max(topk, self.width))
        self.records.append((len(ctx.tokens) - 1, cands[:, : self.width].cpu()))
        return cands[:, :topk]
