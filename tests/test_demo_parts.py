"""The demo's parts that need no download: the draft tree picked from costs timed here, the table, the log."""

from __future__ import annotations

import os

import pytest

from vllm_firp.core.layout import tree_layout
from vllm_firp.demo import _table, noise_to
from vllm_firp.engine.engine import FirpEngine
from vllm_firp.tree_choice import choose_tree

from .helpers import random_heads, tiny_model


def test_tree_is_chosen_from_costs_timed_here():
    model = tiny_model()
    engine = FirpEngine(model, random_heads(model))
    choice = choose_tree(engine, list(range(1, 25)), candidates=("chain:1", "budget:4/1", "chain:9"), repeats=1)
    assert [c.spec for c in choice.costs] == ["chain:1", "budget:4/1"]  # chain:9 is deeper than K=3: skipped
    assert choice.spec == max(choice.costs, key=lambda c: c.expected_speedup).spec
    assert choice.chosen.rows == tree_layout(choice.tree, 3).num_rows and choice.plain_step_s > 0
    assert all(c.relative_cost > 0 and c.expected_tokens > 1 for c in choice.costs)
    assert choice.to_dict()["spec"] == choice.spec
    with pytest.raises(ValueError, match="at least 16 tokens"):
        choose_tree(engine, [1, 2, 3])
    with pytest.raises(ValueError, match="needs FIRP heads"):
        choose_tree(FirpEngine(model), list(range(1, 25)))


def test_table_is_aligned_engine_by_mode():
    ref = {"new_tokens": 96, "mean_accepted_tokens_per_forward": 1.0, "mean_rows_per_forward": 1.0,
           "tokens_per_second": 20.0}
    payload = {"ar": ref, "firp": {**ref, "mean_accepted_tokens_per_forward": 1.91, "mean_rows_per_forward": 6.0},
               "identical_to_plain": True,
               "vllm": {"plain": {"tokens": 96, "seconds": 4.0}, "identical": True,
                        "firp": {"tokens": 96, "seconds": 3.0, "num_speculative_tokens": 3,
                                 "metrics": {"mean_acceptance_length": 1.6}}}}
    lines = _table(payload).splitlines()
    assert len(lines) == 6 and len({len(line) for line in lines}) == 1
    assert lines[3].split()[:4] == ["vLLM", "FIRP", "96", "1.60"] and lines[3].endswith("True")
    assert lines[5].split() == ["reference", "FIRP", "96", "1.91", "6", "20.0", "True"]


def test_library_output_goes_to_the_log(tmp_path, capsys):
    log = tmp_path / "demo.log"
    with noise_to(log) as console:
        os.write(1, b"vllm noise\n")
        os.write(2, b"tqdm noise\n")
        print("for the user", file=console)
    assert log.read_text() == "vllm noise\ntqdm noise\n"
    assert "for the user" in capsys.readouterr().out
