"""Index and slot maths of the vLLM drafter (pure torch: runs without vLLM)."""

import torch

from vllm_firp.vllm_plugin.proposer import Anchor, find_anchors, pseudo_slots


def test_anchor_rows_and_positions_follow_rejections():
    # req 0: decode, 3 drafts verified, 1 accepted (+bonus) -> 2 rejected; query rows 0..3, seq_len 14
    # req 1: last prefill chunk (no drafts): rows 4..9, seq_len 6
    # req 2: prefill chunk that is not the last: no sampled token -> no drafts
    # req 3: decode, all 3 drafts accepted: rows 16..19, seq_len 40
    anchors = find_anchors(
        sampled=[[7, 8], [5], [], [1, 2, 3, 4]],
        num_draft_tokens=[3, 0, 0, 3],
        query_start_loc=[0, 4, 10, 16, 20],
        seq_lens=[14, 6, 30, 40],
        k=3,
        max_model_len=64,
    )
    assert anchors == [Anchor(0, 1, 11), Anchor(1, 9, 5), Anchor(3, 19, 39)]


def test_no_anchor_when_pseudo_positions_pass_max_model_len():
    kw = dict(num_draft_tokens=[0], query_start_loc=[0, 1], k=3, max_model_len=64)
    assert find_anchors(sampled=[[1]], seq_lens=[61], **kw) == [Anchor(0, 0, 60)]  # pseudo at 61..63
    assert find_anchors(sampled=[[1]], seq_lens=[62], **kw) == []  # pseudo 3 would sit at 64


def test_slots_cross_block_edges():
    table = torch.tensor([[5, 9, 2, 0], [3, 4, 8, 1]], dtype=torch.int32)
    pos = torch.tensor([[31, 32, 33], [62, 63, 64]])
    assert pseudo_slots(table, pos, 32).tolist() == [
        [5 * 32 + 31, 9 * 32 + 0, 9 * 32 + 1],
        [4 * 32 + 30, 4 * 32 + 31, 8 * 32 + 0],
    ]
