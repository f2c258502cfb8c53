"""The distillation objective shared by every draft kind: drafts for sampled anchors vs the frozen teacher.

For a sequence x_0..x_{T-1} and anchor i, draft k (k = 1..K) predicts x_{i+k+1}; its teacher is
p_{i+k} = softmax(lm_head(h_{i+k})), the base model's own next-token distribution at i+k. A pair
(i, k) is valid when i+k <= T-1. Loss = mean over valid pairs of w_k * KL(p_{i+k} || q_{i,k}).

Each draft kind computes its :class:`DraftOutputs` itself (``training.firp``, ``training.medusa``,
``training.eagle3``); FIRP runs the teacher and the student in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class DraftOutputs:
    """Draft logits of K positions for A anchors, and the teacher's logits for every real position."""

    draft_logits: torch.Tensor  # [K, A, V]
    teacher_logits: torch.Tensor | None  # [T, V], detached; None when the teacher comes from a cache
    anchors: torch.Tensor  # [A] positions
    captured: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [rows, d] (FIRP only)
    teacher_top: tuple[torch.Tensor, torch.Tensor] | None = None  # cached teacher: top ids, log-probs [T, k]

    @property
    def K(self) -> int:  # noqa: N802
        return self.draft_logits.shape[0]

    def teacher_greedy(self) -> torch.Tensor:
        """The teacher's argmax token at every position [T] (what greedy verification compares with)."""
        return self.teacher_top[0][:, 0] if self.teacher_logits is None else self.teacher_logits.argmax(-1)

    def target_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Index i+k of each pair's teacher ([K, A], clamped) and its validity mask."""
        T = (self.teacher_top[0] if self.teacher_logits is None else self.teacher_logits).shape[0]
        ks = torch.arange(1, self.K + 1, device=self.anchors.device)[:, None]
        idx = self.anchors[None, :] + ks
        return idx.clamp(max=T - 1), idx <= T - 1


def sample_anchors(
    seq_len: int, prompt_len: int, count: int, generator: torch.Generator, include_prompt: bool = False
) -> torch.Tensor:
    """Sorted anchor positions in [first, T-2] (every anchor has >= 1 valid draft); all if ``count`` <= 0.

    By default anchors start at the last prompt token, where drafting starts at inference.
    """
    first = 0 if include_prompt else max(0, min(prompt_len - 1, seq_len - 2))
    candidates = torch.arange(first, seq_len - 1)
    if 0 < count < len(candidates):
        candidates = candidates[torch.randperm(len(candidates), generator=generator)[:count]].sort().values
    return candidates


@dataclass
class PairStats:
    """Per-position sums over valid pairs (additive, so they reduce across steps and ranks)."""

    valid: torch.Tensor  # [K] number of valid pairs
    kl: torch.Tensor  # [K] summed KL
    top1: torch.Tensor  # [K] draft argmax == teacher argmax

    @classmethod
    def zeros(cls, K: int) -> PairStats:
        return cls(torch.zeros(K), torch.zeros(K), torch.zeros(K))

    def add(self, other: PairStats) -> None:
        self.valid += other.valid
        self.kl += other.kl
        self.top1 += other.top1

    def as_tensor(self) -> torch.Tensor:
        return torch.stack([self.valid, self.kl, self.top1])

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> PairStats:
        return cls(t[0].clone(), t[1].clone(), t[2].clone())

    def accuracy(self) -> list[float]:
        return (self.top1 / self.valid.clamp(min=1)).tolist()

    def mean_kl(self) -> float:
        return float(self.kl.sum() / self.valid.sum().clamp(min=1))


def distill_loss(out: DraftOutputs, weights: torch.Tensor) -> tuple[torch.Tensor, PairStats]:
    """Weighted mean KL(teacher || draft) over valid pairs, and per-position stats (no grad).

    A cached teacher keeps only its top-k tokens: the KL is then summed over them (the tail it drops
    carries no gradient), which is the cross-entropy to the teacher's top-k up to a constant.
    """
    idx, valid = out.target_index()
    log_q = out.draft_logits.log_softmax(-1)
    if out.teacher_logits is None:
        top_ids, top_logp = (t[idx] for t in out.teacher_top)  # [K, A, k]
        kl = (top_logp.exp() * (top_logp - log_q.gather(-1, top_ids))).sum(-1)  # [K, A]
    else:
        log_p = out.teacher_logits.log_softmax(-1)[idx]  # [K, A, V]
        kl = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)  # [K, A]
    vmask = valid.to(kl.dtype)
    w = weights.to(kl.device, kl.dtype)[:, None]
    loss = (w * kl * vmask).sum() / vmask.sum().clamp(min=1)
    with torch.no_grad():
        hit = (out.draft_logits.argmax(-1) == out.teacher_greedy()[idx]) & valid
        stats = PairStats(vmask.sum(1).cpu(), (kl.detach() * vmask).sum(1).cpu(), hit.sum(1).float().cpu())
    return loss, stats
