"""Row layout, attention masks and position ids of one FIRP forward pass.

Rows are ``[real rows ; pseudo rows]``. Real rows are the tokens fed in (the prompt at prefill, the
draft-tree nodes at a decode step). Every anchor (a real row whose future we draft) gets K pseudo
rows, laid out **k-major**: pseudo k of anchor a is row ``N + (k-1)*A + a``. Because pseudo k joins
the stream after layer t_k and t_1 <= ... <= t_K, the rows alive at any layer are a prefix of this
list, so one mask serves every layer by slicing.

Visibility (on top of the committed cache, which every row sees):
- real row i sees real rows j with ``real_mask[i, j]`` (causal at prefill, ancestors-or-self in a tree);
- pseudo (k, a) sees what anchor a sees, anchor a itself, and pseudo (k', a) for k' <= k
  (only k' == k when ``pseudo_attend_each_other`` is False);
- no real row ever sees a pseudo row.
Positions: real row i sits at ``past + depth_i``; pseudo (k, a) at ``past + depth_a + k``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from .tree import DraftTree


@dataclass(frozen=True, eq=False)
class StepLayout:
    num_real: int  # N
    num_anchors: int  # A
    K: int
    mask: torch.Tensor  # [R, R] bool over this pass's rows, R = N + A*K
    position_offsets: torch.Tensor  # [R] long, added to the committed length
    anchors: torch.Tensor  # [A] long, real-row index of each anchor

    @property
    def num_rows(self) -> int:
        return self.num_real + self.num_anchors * self.K

    def pseudo_row(self, k: int, anchor_slot: int) -> int:
        """Row of pseudo k (1-based) of the anchor at position ``anchor_slot`` in ``anchors``."""
        return self.num_real + (k - 1) * self.num_anchors + anchor_slot

    def rows_alive(self, num_pseudo: int) -> int:
        """Rows present once pseudo 1..num_pseudo have joined the stream."""
        return self.num_real + self.num_anchors * num_pseudo

    def attention_mask(self, past_len: int, num_rows: int | None = None) -> torch.Tensor:
        """[rows, past_len + rows] bool: the committed cache is visible to all rows."""
        r = self.num_rows if num_rows is None else num_rows
        return torch.cat([torch.ones(r, past_len, dtype=torch.bool), self.mask[:r, :r]], dim=1)


def step_layout(
    real_mask: torch.Tensor,
    real_depths: torch.Tensor,
    anchors: torch.Tensor,
    K: int,
    pseudo_attend_each_other: bool = True,
) -> StepLayout:
    n, a = real_mask.shape[0], anchors.numel()
    r = n + a * K
    mask = torch.zeros(r, r, dtype=torch.bool)
    mask[:n, :n] = real_mask
    offsets = torch.empty(r, dtype=torch.long)
    offsets[:n] = real_depths
    slots = torch.arange(a)
    for k in range(1, K + 1):
        rows = n + (k - 1) * a + slots
        mask[rows, :n] = real_mask[anchors]  # what the anchor sees (its ancestors and itself)
        peers = range(1, k + 1) if pseudo_attend_each_other else (k,)
        for kp in peers:
            mask[rows, n + (kp - 1) * a + slots] = True
        offsets[rows] = real_depths[anchors] + k
    return StepLayout(n, a, K, mask, offsets, anchors.clone())


@lru_cache(maxsize=64)
def tree_layout(tree: DraftTree, K: int, pseudo_attend_each_other: bool = True) -> StepLayout:
    """Decode step: the tree's pseudo nodes are the anchors (by default every node, since any may end up the
    last accepted one); see :meth:`DraftTree.draft_source` for the others."""
    anchors = torch.tensor(tree.anchors, dtype=torch.long)
    return step_layout(tree.ancestor_mask, tree.depths, anchors, K, pseudo_attend_each_other)


def causal_layout(
    num_tokens: int, anchors: torch.Tensor | None = None, K: int = 0, pseudo_attend_each_other: bool = True
) -> StepLayout:
    """Causal rows (a prompt, a training window) with optional anchors; none = plain causal decoding."""
    causal = torch.ones(num_tokens, num_tokens, dtype=torch.bool).tril()
    anchors = torch.empty(0, dtype=torch.long) if anchors is None else anchors.cpu()
    return step_layout(causal, torch.arange(num_tokens), anchors, K if anchors.numel() else 0, pseudo_attend_each_other)


def prefill_layout(num_tokens: int, K: int, pseudo_attend_each_other: bool = True) -> StepLayout:
    """Prefill: causal prompt rows; the last prompt token is the only anchor."""
    return causal_layout(num_tokens, torch.tensor([num_tokens - 1]), K, pseudo_attend_each_other)
