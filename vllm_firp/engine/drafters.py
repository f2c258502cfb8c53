"""Where the next tree's candidate tokens come from.

The engine verifies a tree whose depth-d nodes take ``candidates[d-1, rank]``. FIRP's candidates are
the top-k of the pseudo rows that rode along in the same forward; other drafters (oracles in tests,
Medusa / prompt lookup in benchmarks) plug in through the same interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..core import FirpHeads


@dataclass
class DraftContext:
    tokens: list[int]  # prompt + every token emitted so far, including the pending next root
    num_prompt_tokens: int
    pseudo_logits: torch.Tensor | None  # [K - shift, V]: pseudo rows drafting after the root (FIRP only)
    last_hidden: torch.Tensor  # [d] final-normed state of the last accepted node


class Drafter(Protocol):
    #: pseudo rows per anchor the engine must run in-pass (0 for drafters that need none)
    num_pseudo: int

    def propose(self, ctx: DraftContext, depth: int, topk: int) -> torch.Tensor:
        """Candidates ``[D, topk]`` (D <= depth; D = 0 means no draft) for the next tree."""
        ...


class FirpDrafter:
    """Top-k of each pseudo position: pseudo k drafts the token k places after the next root."""

    def __init__(self, heads: FirpHeads) -> None:
        self.heads = heads
        self.num_pseudo = heads.K

    def propose(self, ctx: DraftContext, depth: int, topk: int) -> torch.Tensor:
        assert ctx.pseudo_logits is not None
        return ctx.pseudo_logits[:depth].topk(topk, dim=-1).indices


class NoDrafter:
    """Plain autoregressive decoding: a one-node tree every step."""

    num_pseudo = 0

    def propose(self, ctx: DraftContext, depth: int, topk: int) -> torch.Tensor:
        return torch.empty(0, topk, dtype=torch.long)
