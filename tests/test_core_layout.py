"""Trees, masks and positions on worked examples, and pseudo rows checked against an independent HF run."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import random_heads, tiny_model
from vllm_firp.core import (
    budget_tree,
    build_tree,
    chain_tree,
    end_probabilities,
    expected_accepted_length,
    likely_last_nodes,
    parse_tree_spec,
    prefill_layout,
    reach_probabilities,
    tree_layout,
)
from vllm_firp.engine.forward import ModelParts, commit_rows, forward_rows, new_cache


def test_tree_buffers_worked_example() -> None:
    # root; depth 1: ranks 0, 1; depth 2: (0,0), (0,1), (1,0)
    tree = build_tree(((1, 0), (0,), (0, 1), (1,), (0, 0)))  # order of the input does not matter
    assert tree.paths == ((), (0,), (1,), (0, 0), (0, 1), (1, 0))
    assert tree.parents.tolist() == [-1, 0, 0, 1, 1, 2]
    assert tree.depths.tolist() == [0, 1, 1, 2, 2, 2]
    assert tree.ranks.tolist() == [-1, 0, 1, 0, 1, 0]
    assert tree.children == ((1, 2), (3, 4), (5,), (), (), ())
    assert tree.retrieve.tolist() == [[0, 1, 3], [0, 1, 4], [0, 2, 5]]
    assert tree.ancestor_mask.int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0],
        [1, 1, 0, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],
        [1, 0, 1, 0, 0, 1],
    ]
    cands = torch.tensor([[10, 11], [20, 21]])  # [depth, rank]
    assert tree.node_tokens(5, cands).tolist() == [5, 10, 11, 20, 21, 20]


def test_tree_spec_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="no parent"):
        build_tree(((0, 0),))
    with pytest.raises(ValueError, match="exceeds the heads' num_future_tokens K=2"):
        parse_tree_spec("chain:3", K=2)
    with pytest.raises(ValueError, match="is not 'chain'"):
        parse_tree_spec("bushy", K=2)
    assert parse_tree_spec("[[0],[1],[0,0]]", K=2).num_nodes == 4
    assert parse_tree_spec("chain", K=3).paths == chain_tree(3).paths
    bad = {
        "[1,2]": "list of rank paths", "[[0.5],[1.7]]": "must hold ranks >= 0", "[[true]]": "must hold ranks",
        "missing.json": "does not exist", "budget:x": "N must be a positive integer",
        "chain:-1": "D must be a positive integer", "budget:0": "N must be a positive integer",
    }
    for spec, message in bad.items():
        with pytest.raises(ValueError, match=message):
            parse_tree_spec(spec, K=3)


def test_budget_tree_prefers_likely_paths() -> None:
    probs = [[0.8, 0.1], [0.7, 0.1], [0.6, 0.1]]
    tree = budget_tree(4, depth=3, topk=2, rank_probs=probs)
    assert tree.paths == ((), (0,), (0, 0), (0, 0, 0))  # 0.8, 0.56, 0.336 beat 0.1
    assert set(budget_tree(5, depth=3, topk=2, rank_probs=probs).paths) - set(tree.paths) == {(1,)}  # 0.1 > 0.08
    assert budget_tree(16, depth=3).num_nodes == 16


def test_pseudo_nodes_worked_example() -> None:
    """Tree of the first example with p(rank 0) = 0.5, p(rank 1) = 0.2 at every depth."""
    tree = build_tree(((0,), (1,), (0, 0), (0, 1), (1, 0)))  # nodes: root, 0, 1, 00, 01, 10
    probs = [[0.5, 0.2], [0.5, 0.2]]
    # reach: 1, .5, .2, .25, .1, .1; ends = reach - children's reach
    assert reach_probabilities(tree, probs).tolist() == pytest.approx([1, 0.5, 0.2, 0.25, 0.1, 0.1])
    assert expected_accepted_length(tree, probs) == pytest.approx(2.15)
    assert expected_accepted_length(tree, [[0.5], [0.5]]) == pytest.approx(1.75)  # ranks past the list: 0
    ends = end_probabilities(tree, probs)
    assert ends.tolist() == pytest.approx([1 - 0.7, 0.5 - 0.35, 0.2 - 0.1, 0.25, 0.1, 0.1])
    assert likely_last_nodes(tree, 3, probs) == (0, 1, 3)  # root always, then 0.25 (00) and 0.15 (0)
    sub = tree.with_pseudo_nodes((3, 1))
    assert sub.anchors == (0, 1, 3) and sub.with_pseudo_nodes((1, 3)) is sub  # cached per (tree, nodes)
    # end node -> (slot of its nearest pseudo ancestor-or-self, depth gap)
    assert [sub.draft_source(n) for n in range(6)] == [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]
    layout = tree_layout(sub, K=2)
    assert layout.num_rows == 6 + 3 * 2 and layout.anchors.tolist() == [0, 1, 3]
    assert layout.position_offsets[6:].tolist() == [1, 2, 3, 2, 3, 4]  # pseudo 1 of (0, 1, 3), then pseudo 2
    assert layout.mask[6 + 3 + 2].int().tolist()[:6] == [1, 1, 0, 1, 0, 0]  # p2(00) sees root, 0, 00
    # Truncation keeps the pseudo nodes that survive (node 3 = (0, 0) is gone at depth 1).
    assert tree.with_pseudo_nodes((3, 1)).truncated(1).anchors == (0, 1)
    assert parse_tree_spec("budget:16/4", K=3).anchors == likely_last_nodes(parse_tree_spec("budget:16", K=3), 4)
    with pytest.raises(ValueError, match="at least the root"):
        likely_last_nodes(tree, 0)


def test_chain_layout_worked_example() -> None:
    """Chain of depth 2, K = 2: rows [n0 n1 n2 | p1(n0) p1(n1) p1(n2) | p2(n0) p2(n1) p2(n2)]."""
    layout = tree_layout(chain_tree(2), K=2)
    assert layout.position_offsets.tolist() == [0, 1, 2, 1, 2, 3, 2, 3, 4]
    assert layout.pseudo_row(2, 1) == 7
    assert layout.mask.int().tolist() == [
        [1, 0, 0, 0, 0, 0, 0, 0, 0],  # n0
        [1, 1, 0, 0, 0, 0, 0, 0, 0],  # n1
        [1, 1, 1, 0, 0, 0, 0, 0, 0],  # n2
        [1, 0, 0, 1, 0, 0, 0, 0, 0],  # p1(n0): anchor n0 and itself
        [1, 1, 0, 0, 1, 0, 0, 0, 0],  # p1(n1)
        [1, 1, 1, 0, 0, 1, 0, 0, 0],  # p1(n2)
        [1, 0, 0, 1, 0, 0, 1, 0, 0],  # p2(n0): + p1(n0)
        [1, 1, 0, 0, 1, 0, 0, 1, 0],
        [1, 1, 1, 0, 0, 1, 0, 0, 1],
    ]
    alone = tree_layout(chain_tree(2), K=2, pseudo_attend_each_other=False)
    assert alone.mask[6].int().tolist() == [1, 0, 0, 0, 0, 0, 1, 0, 0]  # p2(n0) no longer sees p1(n0)
    assert layout.attention_mask(past_len=3, num_rows=3).int().tolist() == [
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1],
    ]


def test_prefill_layout_anchors_last_token() -> None:
    layout = prefill_layout(3, K=2)
    assert layout.anchors.tolist() == [2]
    assert layout.position_offsets.tolist() == [0, 1, 2, 3, 4]
    assert layout.mask[4].int().tolist() == [1, 1, 1, 1, 1]
    assert layout.mask[:3, 3:].any().item() is False  # real rows never see pseudo rows


@pytest.mark.parametrize("inject", [(2, 2, 2), (1, 2, 3)], ids=["one-layer", "staggered"])
@pytest.mark.parametrize("source", ["previous", "anchor"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_pseudo_rows_match_an_independent_hf_run(arch: str, source: str, inject: tuple[int, ...]) -> None:
    """Pseudo rows of a tree node == HF's own forward over [context, path to node, pseudo tokens]
    with pseudo k written into the stream after layer t_k (forward hooks), as the design says."""
    model = tiny_model(arch, seed=3)
    heads = random_heads(model, K=3, seed=4, std=0.05, source=source, inject_layer=list(inject))
    parts = ModelParts.of(model)
    tree = build_tree(((0,), (1,), (1, 0), (1, 0, 0)))
    context = torch.randint(0, 101, (9,), generator=torch.Generator().manual_seed(5))
    node_tokens = torch.tensor([7, 8, 9, 10, 11])
    cache = new_cache()
    with torch.inference_mode():
        forward_rows(parts, context, prefill_layout(len(context), 0), cache)
        hidden, _ = forward_rows(parts, node_tokens, tree_layout(tree, 3), cache, heads)
    layout = tree_layout(tree, 3)
    for node in range(tree.num_nodes):
        path = [i for i in range(tree.num_nodes) if tree.ancestor_mask[node, i]]
        seq = torch.cat([context, node_tokens[path], torch.zeros(3, dtype=torch.long)])
        anchor_pos = len(context) + len(path) - 1

        def inject_after(layer: int, anchor_pos=anchor_pos):
            def hook(module, args, output):
                h = output.clone()
                for k in (k for k in (1, 2, 3) if inject[k - 1] == layer):
                    prev = h[0, anchor_pos + k - 1] if k > 1 else None
                    h[0, anchor_pos + k] = heads.pseudo_state(k, heads.source_for(k, h[0, anchor_pos], prev))
                return h

            return hook

        handles = [model.model.layers[t - 1].register_forward_hook(inject_after(t)) for t in sorted(set(inject))]
        try:
            with torch.inference_mode():
                ref = model.model(seq[None]).last_hidden_state[0]
        finally:
            for handle in handles:
                handle.remove()
        ours = hidden[[layout.pseudo_row(k, node) for k in (1, 2, 3)]]
        torch.testing.assert_close(ours, ref[anchor_pos + 1 : anchor_pos + 4], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(hidden[node], ref[anchor_pos], rtol=1e-4, atol=1e-4)


def test_commit_keeps_prefix_and_accepted_rows() -> None:
    model = tiny_model("llama")
    parts = ModelParts.of(model)
    cache = new_cache()
    with torch.inference_mode():
        forward_rows(parts, torch.arange(5), prefill_layout(5, 0), cache)
        before = cache.layers[0].keys.clone()
        forward_rows(parts, torch.tensor([1, 2, 3, 4]), tree_layout(build_tree(((0,), (1,), (1, 0))), 0), cache)
        step_keys = cache.layers[0].keys.clone()
    commit_rows(cache, 5, torch.tensor([0, 2, 3]))
    assert cache.get_seq_length() == 8
    torch.testing.assert_close(cache.layers[0].keys[:, :, :5], before)
    torch.testing.assert_close(cache.layers[0].keys[:, :, 5:], step_keys[:, :, [5, 7, 8]])
