"""Verification: greedy worked example, and sampling that keeps the target distribution (statistical tests)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from tests.helpers import random_heads, tiny_model
from vllm_firp.core import SamplingParams, build_tree, target_probs, verify_greedy, verify_sampling
from vllm_firp.engine.engine import FirpEngine

P_VALUE_FLOOR = 1e-3  # seeded, so deterministic; a real bias gives p-values far below this


def _logits_with_argmax(argmaxes: list[int], vocab: int = 6) -> torch.Tensor:
    logits = torch.zeros(len(argmaxes), vocab)
    logits[torch.arange(len(argmaxes)), torch.tensor(argmaxes)] = 5.0
    return logits


def test_greedy_takes_the_longest_matching_path() -> None:
    tree = build_tree(((0,), (1,), (0, 0), (1, 0), (1, 0, 0)))  # nodes: r, a, b, aa, ba, baa
    tokens = torch.tensor([0, 1, 2, 3, 4, 5])
    # argmax after: r -> 2 (b), a -> 3, b -> 4 (ba), aa -> 0, ba -> 1 (baa wrong), baa -> 0
    verdict = verify_greedy(tree, tokens, _logits_with_argmax([2, 3, 4, 0, 1, 0]))
    assert verdict.accepted == [0, 2, 4] and verdict.next_token == 1
    verdict = verify_greedy(tree, tokens, _logits_with_argmax([1, 3, 4, 2, 5, 2]))
    assert verdict.accepted == [0, 1, 3] and verdict.next_token == 2
    verdict = verify_greedy(tree, tokens, _logits_with_argmax([0, 3, 4, 2, 5, 2]))
    assert verdict.accepted == [0] and verdict.next_token == 0


def test_target_probs_filters_like_vllm() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    p = target_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    torch.testing.assert_close(p, torch.tensor([0.625, 0.375, 0, 0]))
    p = target_probs(logits, SamplingParams(temperature=1.0, top_p=0.7))
    torch.testing.assert_close(p, torch.tensor([0.625, 0.375, 0, 0]))
    p = target_probs(logits, SamplingParams(temperature=1.0, top_p=0.1))
    torch.testing.assert_close(p, torch.tensor([1.0, 0, 0, 0]))
    hot = target_probs(logits, SamplingParams(temperature=0.5))
    assert hot[0] > 0.5 and torch.isclose(hot.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=4, top_p=0.9)])
def test_tree_sampling_keeps_the_target_distribution(params: SamplingParams) -> None:
    """First emitted token ~ p(root); second emitted token given an accepted child ~ p(child)."""
    torch.manual_seed(0)
    vocab = 6
    tree = build_tree(((0,), (1,), (2,), (0, 0), (0, 1), (1, 0)))
    tokens = torch.tensor([0, 1, 3, 4, 2, 5, 3])  # root's children: 1, 3, 4 (distinct)
    logits = torch.randn(tree.num_nodes, vocab) * 1.5
    logits[0] = torch.tensor([0.0, 2.0, 0.5, 1.5, 1.0, -1.0])  # children's tokens 1, 3, 4 survive top-k/top-p
    probs = target_probs(logits, params)
    gen = torch.Generator().manual_seed(1)
    n = 30000
    first, second_after_child1 = Counter(), Counter()
    for _ in range(n):
        v = verify_sampling(tree, tokens, logits, params, gen)
        emitted = tokens[v.accepted[1:]].tolist() + [v.next_token]
        first[emitted[0]] += 1
        if len(v.accepted) > 1 and v.accepted[1] == 1:
            second_after_child1[emitted[1]] += 1
    assert sum(second_after_child1.values()) > 3000
    for counts, p in ((first, probs[0]), (second_after_child1, probs[1])):
        support = [t for t in range(vocab) if p[t] > 0]
        assert all(counts[t] == 0 for t in range(vocab) if p[t] == 0), "sampled a filtered-out token"
        observed = np.array([counts[t] for t in support], dtype=float)
        expected = p[support].double().numpy()
        expected = expected / expected.sum() * observed.sum()
        assert chisquare(observed, expected).pvalue > P_VALUE_FLOOR


def test_engine_sampling_matches_plain_sampling_distribution() -> None:
    """End to end: the 2nd and 3rd generated tokens (produced by tree steps) follow the model's
    exact marginals, computed by enumerating the first tokens."""
    model = tiny_model("llama", seed=5, vocab_size=12, initializer_range=0.08)
    engine = FirpEngine(model, random_heads(model, K=3, seed=6, std=0.05))
    params = SamplingParams(temperature=1.0)
    prompt = [1, 5, 7]
    tree = build_tree(((0,), (1,), (2,), (0, 0), (1, 0), (0, 0, 0)))
    n = 1500
    seconds, thirds = Counter(), Counter()
    for seed in range(n):
        toks = engine.generate(prompt, 3, tree=tree, sampling=SamplingParams(temperature=1.0, seed=seed)).tokens
        seconds[toks[1]] += 1
        thirds[toks[2]] += 1
    with torch.inference_mode():
        def next_probs(ctx: list[int]) -> torch.Tensor:
            return target_probs(model(torch.tensor([ctx])).logits[0, -1], params).double()

        p1 = next_probs(prompt)
        p2_given = {a: next_probs(prompt + [a]) for a in range(12)}
        p2 = sum(p1[a] * p2_given[a] for a in range(12))
        p3 = sum(p1[a] * p2_given[a][b] * next_probs(prompt + [a, b]) for a in range(12) for b in range(12))
    for counts, p in ((seconds, p2), (thirds, p3)):
        observed = np.array([counts[t] for t in range(12)], dtype=float)
        assert chisquare(observed, p.numpy() / p.sum().item() * n).pvalue > P_VALUE_FLOOR
