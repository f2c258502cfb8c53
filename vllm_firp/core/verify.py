"""Verification of a draft tree against the target model's outputs: greedy and lossless sampling."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tree import DraftTree


@dataclass(frozen=True)
class SamplingParams:
    """The subset of vLLM's SamplingParams that shapes the target distribution.

    ``temperature == 0`` is greedy. ``top_k <= 0`` and ``top_p == 1`` disable those filters, as in vLLM.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Distribution the plain sampler draws from: temperature, then top-k, then top-p (vLLM's order)."""
    logits = logits.float() / params.temperature
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = logits.topk(params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum <= 1 - params.top_p
        drop[..., -1] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits.softmax(-1)


@dataclass(frozen=True)
class Verdict:
    accepted: list[int]  # node indices root..last accepted, in order
    next_token: int  # the bonus token: exact next token after the last accepted node


def verify_greedy(tree: DraftTree, node_tokens: torch.Tensor, logits: torch.Tensor) -> Verdict:
    """Longest root-to-node path whose every token is the argmax of its parent's output."""
    argmax = logits.argmax(-1).cpu()  # [N]
    ok = torch.ones(tree.num_nodes, dtype=torch.bool)
    ok[1:] = node_tokens[1:] == argmax[tree.parents[1:]]
    path_ok = torch.where(tree.retrieve >= 0, ok[tree.retrieve.clamp(min=0)], False)
    lengths = path_ok.long().cumprod(-1).sum(-1)
    best = int(lengths.argmax())
    accepted = tree.retrieve[best, : int(lengths[best])].tolist()
    return Verdict(accepted, int(argmax[accepted[-1]]))


def verify_sampling(
    tree: DraftTree,
    node_tokens: torch.Tensor,
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> Verdict:
    """Tree speculative sampling with deterministic drafts; the output keeps the target distribution.

    At each accepted node, children are tried in rank order. A draft x is accepted with probability
    p(x) (its draft distribution is a point mass); on rejection p loses x and is renormalised, which
    is sampling without replacement, so the token finally emitted is distributed exactly as p.
    """
    probs = target_probs(logits, params).cpu().double()
    node, accepted = 0, [0]
    while True:
        p = probs[node].clone()
        for child in tree.children[node]:
            x = int(node_tokens[child])
            if torch.rand((), generator=generator, dtype=torch.float64) < p[x]:
                node = child
                accepted.append(child)
                break
            p[x] = 0.0  # p[x] < 1 here, so some mass remains
            p /= p.sum()
        else:  # no child accepted (or a leaf): the residual distribution gives the next token
            return Verdict(accepted, int(torch.multinomial(p, 1, generator=generator)))


def verify(
    tree: DraftTree,
    node_tokens: torch.Tensor,
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> Verdict:
    if params.greedy:
        return verify_greedy(tree, node_tokens, logits)
    return verify_sampling(tree, node_tokens, logits, params, generator)
