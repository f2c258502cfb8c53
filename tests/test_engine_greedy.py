"""Losslessness of the reference engine: greedy FIRP output == plain greedy output, token for token."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import ARCHS, OracleDrafter, random_heads, tiny_model
from vllm_firp.core import budget_tree, build_tree, chain_tree, tree_layout
from vllm_firp.core.layout import step_layout
from vllm_firp.engine.engine import FirpEngine
from vllm_firp.engine.forward import forward_rows, new_cache

PROMPTS_PER_ARCH = 70  # 3 architectures -> 210 prompts
MAX_NEW = 24
TREE = build_tree(((0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1), (0, 1, 0)))


def _prompts(n: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(torch.randint(1, 40, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


@pytest.fixture(scope="module", params=sorted(ARCHS))
def engine(request) -> FirpEngine:
    model = tiny_model(request.param, seed=1)
    return FirpEngine(model, random_heads(model, K=3, seed=2))


def test_plain_engine_matches_hf_generate(engine: FirpEngine) -> None:
    """The AR baseline itself is HF's greedy decoding (so 'lossless' is against the real thing)."""
    for prompt in _prompts(8, engine.model.config.vocab_size, seed=7):
        ids = torch.tensor([prompt])
        ref = engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW + 16,
                                    do_sample=False, pad_token_id=0)[0, len(prompt):]
        assert engine.generate(prompt, MAX_NEW + 16).tokens == ref.tolist()


def test_firp_greedy_equals_plain_greedy_random_heads(engine: FirpEngine) -> None:
    vocab = engine.model.config.vocab_size
    accepted_any = 0
    for i, prompt in enumerate(_prompts(PROMPTS_PER_ARCH, vocab, seed=11)):
        plain = engine.generate(prompt, MAX_NEW)
        tree = TREE if i % 2 else chain_tree(3)
        firp = engine.generate(prompt, MAX_NEW, tree=tree)
        assert firp.tokens == plain.tokens, f"prompt {i}: FIRP diverged from plain greedy"
        assert firp.stats.num_forwards <= plain.stats.num_forwards
        accepted_any += sum(n > 1 for n in firp.stats.tokens_per_step)
    assert accepted_any > 0, "random heads never had a draft accepted: the accept path went untested"


@pytest.mark.parametrize("with_pseudo_rows", [False, True])
def test_long_accepted_paths_with_oracle_drafts(engine: FirpEngine, with_pseudo_rows: bool) -> None:
    """Drafts that are (mostly) right: whole paths are accepted and committed, output stays exact."""
    vocab = engine.model.config.vocab_size
    for prompt in _prompts(12, vocab, seed=13):
        plain = engine.generate(prompt, MAX_NEW)
        ext = engine.generate(prompt, MAX_NEW + 8).tokens  # drafts may look past the end
        oracle = OracleDrafter(ext, vocab, num_pseudo=3 if with_pseudo_rows else 0)
        firp = engine.generate(prompt, MAX_NEW, tree=TREE, drafter=oracle)
        assert firp.tokens == plain.tokens
        assert max(firp.stats.tokens_per_step) == 4, "a full depth-3 path should have been accepted"
        assert firp.stats.num_forwards < plain.stats.num_forwards / 2


def test_eos_inside_an_accepted_draft_stops_there(engine: FirpEngine) -> None:
    vocab = engine.model.config.vocab_size
    prompt = _prompts(1, vocab, seed=17)[0]
    ref = engine.generate(prompt, 40).tokens
    eos_at = next(i for i in range(5, 40) if ref[i] not in ref[:i])  # first occurrence, mid-stream
    plain = engine.generate(prompt, 40, stop_token_ids={ref[eos_at]})
    firp = engine.generate(prompt, 40, tree=TREE, drafter=OracleDrafter(ref + [0] * 8, vocab, miss_every=99))
    firp_stop = engine.generate(prompt, 40, tree=TREE, stop_token_ids={ref[eos_at]},
                                drafter=OracleDrafter(ref + [0] * 8, vocab, miss_every=99))
    assert plain.tokens == ref[: eos_at + 1] and plain.finish_reason == "stop"
    assert firp_stop.tokens == plain.tokens and firp_stop.finish_reason == "stop"
    assert firp.tokens == ref  # sanity: without the stop token it runs to the end


def test_models_own_eos_is_a_stop_token() -> None:
    model = tiny_model("llama", eos_token_id=7)
    model.generation_config.eos_token_id = [7, 9]
    assert FirpEngine(model).eos_token_ids == {7, 9}


@pytest.mark.parametrize("max_new", [1, 2, 5, 7])
def test_max_new_tokens_inside_an_accepted_draft(engine: FirpEngine, max_new: int) -> None:
    vocab = engine.model.config.vocab_size
    prompt = _prompts(1, vocab, seed=19)[0]
    ref = engine.generate(prompt, 20).tokens
    firp = engine.generate(prompt, max_new, tree=chain_tree(3), drafter=OracleDrafter(ref, vocab, miss_every=99))
    assert firp.tokens == ref[:max_new] and firp.finish_reason == "length"


def test_budget_tree_is_lossless_too(engine: FirpEngine) -> None:
    vocab = engine.model.config.vocab_size
    for prompt in _prompts(6, vocab, seed=23):
        assert engine.generate(prompt, MAX_NEW, tree=budget_tree(24, 3)).tokens == engine.generate(
            prompt, MAX_NEW).tokens


def test_pseudo_rows_on_some_nodes_only_are_lossless(engine: FirpEngine) -> None:
    """Ends without pseudo rows draft from an ancestor's shifted rows (fewer drafts): output stays exact."""
    vocab = engine.model.config.vocab_size
    sparse = TREE.with_pseudo_nodes((1,))  # root and node 1 only
    shifted = 0
    for i, prompt in enumerate(_prompts(12, vocab, seed=31)):
        plain = engine.generate(prompt, MAX_NEW)
        ext = engine.generate(prompt, MAX_NEW + 8).tokens
        oracle = OracleDrafter(ext, vocab, num_pseudo=3, miss_every=3 + i % 3)
        firp = engine.generate(prompt, MAX_NEW, tree=sparse, drafter=oracle)
        assert firp.tokens == plain.tokens, f"prompt {i}: diverged with sparse pseudo nodes"
        assert set(firp.stats.rows_per_step) <= {10 + 2 * 3, 7 + 2 * 3, 4 + 2 * 3, 1 + 1 * 3}  # depth 3, 2, 1, 0
        shifted += sum(r < 16 for r in firp.stats.rows_per_step)
        rand = engine.generate(prompt, MAX_NEW, tree=sparse)  # the real FIRP drafter, random heads
        assert rand.tokens == plain.tokens
    assert shifted > 0, "no step ever drafted from shifted rows"


def test_pseudo_rows_do_not_change_verification_logits(engine: FirpEngine) -> None:
    """One forward with pseudo rows gives the same tree-node outputs as one without."""
    parts, heads = engine.parts, engine.heads
    prompt = torch.tensor(_prompts(1, engine.model.config.vocab_size, seed=29)[0] + [3, 4, 5, 6] * 8)
    tree_tokens = torch.randint(0, engine.model.config.vocab_size, (TREE.num_nodes,))
    outs = []
    for layout in (tree_layout(TREE, 3), step_layout(TREE.ancestor_mask, TREE.depths, torch.empty(0, dtype=torch.long), 0)):
        cache = new_cache()
        with torch.inference_mode():
            forward_rows(parts, prompt, step_layout(torch.ones(len(prompt), len(prompt)).tril().bool(),
                                                   torch.arange(len(prompt)), torch.empty(0, dtype=torch.long), 0),
                         cache)
            hidden, _ = forward_rows(parts, tree_tokens, layout, cache, heads)
        outs.append(hidden[: TREE.num_nodes])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
