"""Benchmark drafters, runner and report on tiny random models (nothing is downloaded or trained)."""

from __future__ import annotations

import json

import pytest
import torch
from vllm_firp_training.medusa import MedusaConfig, MedusaHeads

from benchmarks import run
from benchmarks.cost_curve import StepTimer, curve
from benchmarks.drafters import EarlyExitDrafter, PromptLookupDrafter
from benchmarks.measure import Method, OutputMismatch, calibrate_rank_probs, measure
from benchmarks.methods import Builder, Options, ablation_variants
from benchmarks.report import write_report
from vllm_firp.engine.drafters import DraftContext, NoDrafter
from vllm_firp.engine.engine import FirpEngine

from .helpers import OracleDrafter, random_heads, tiny_model

PROMPTS = [[5, 17, 3, 88, 42, 9, 5, 17, 3], [1, 2, 3, 4, 1, 2, 3, 4, 1, 2], [60, 7, 33, 100, 12]]


def random_medusa(model, K: int = 3, std: float = 0.05) -> MedusaHeads:
    torch.manual_seed(1)
    heads = MedusaHeads(MedusaConfig.for_model(model.config, K))
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(torch.randn_like(p) * std)
    return heads.eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def builder(model):
    return Builder(model, Options(budget=8, calib_prompts=PROMPTS[:1], calib_new_tokens=12, pld_depth=3))


def all_methods(builder, model) -> list[Method]:
    return builder.main_methods(["firp-tree", "firp-tree-sparse", "firp-chain", "medusa", "medusa-chain", "pld",
                                 "early-exit"], random_heads(model), random_medusa(model))


def test_every_drafter_keeps_greedy_output(builder, model):
    methods = all_methods(builder, model)
    assert [m.name for m in methods] == ["ar", "firp-tree", "firp-tree-sparse", "firp-chain", "medusa", "medusa-chain",
                                         "pld", "early-exit"]
    figures = measure(methods, PROMPTS, max_new_tokens=20, repeats=2, progress=False)
    for name, f in figures.items():
        assert f["equal_to_ar"] and f["new_tokens"] == 20 * len(PROMPTS), name
        assert f["tau"] >= 1.0 and sum(f["accepted_histogram"].values()) == f["decode_forwards"]
    assert figures["ar"]["tau"] == 1.0 and figures["ar"]["rows_per_forward"] == 1.0
    assert figures["firp-tree"]["rows_per_forward"] > figures["medusa"]["rows_per_forward"]  # pseudo rows ride along
    # 8 nodes, 4 with pseudo rows: at most 8 + 4 * 3 rows per forward, fewer than every node's 8 * 4
    assert figures["firp-tree-sparse"]["rows_per_forward"] <= 20 < figures["firp-tree"]["rows_per_forward"]


def test_groups_split_the_same_figures(builder, model, tmp_path):
    """Per-category figures (MT-bench) add up to the overall ones, and the report tables and plots them."""
    methods = builder.main_methods(["firp-chain", "pld"], random_heads(model), None)
    groups = ["code", "math", "code"]
    figures = measure(methods, PROMPTS, max_new_tokens=12, repeats=2, progress=False, groups=groups)
    for name, f in figures.items():
        by = f["by_group"]
        assert list(by) == ["code", "math"] and [g["num_prompts"] for g in by.values()] == [2, 1], name
        assert sum(g["new_tokens"] for g in by.values()) == f["new_tokens"]
        assert sum(g["decode_forwards"] for g in by.values()) == f["decode_forwards"], name
        assert sum(g["tau"] * g["decode_forwards"] for g in by.values()) == pytest.approx(
            f["tau"] * f["decode_forwards"], rel=1e-3), name  # the same accepted tokens, split by group
    assert all(g["speedup"] == 1.0 and g["tau"] == 1.0 for g in figures["ar"]["by_group"].values())
    with pytest.raises(ValueError, match="groups must label every prompt"):
        measure(methods, PROMPTS, 4, 1, warmup=False, progress=False, groups=["code"])
    results = {"meta": {"commit": "t", "date": "now", "cpu": "cpu", "cpu_count": 2, "torch": torch.__version__,
                        "torch_threads": 1, "loadavg": [0, 0, 0]},
               "settings": {"num_prompts": 3, "max_new_tokens": 12, "repeats": 2}, "methods": figures}
    files = write_report(results, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "## Per category" in md and "| math | 1 |" in md and "| **overall** | 3 |" in md
    assert (tmp_path / "by_category.png") in files and (tmp_path / "by_category.png").read_bytes()[:4] == b"\x89PNG"


def test_prompt_lookup_proposes_the_continuation():
    pld = PromptLookupDrafter(max_ngram=3, min_ngram=1)
    assert pld.lookup([1, 2, 3, 4, 5, 1, 2, 3], 3) == [4, 5, 1]
    assert pld.lookup([7, 8, 9, 7, 8, 6, 7, 8], 2) == [6, 7]  # most recent occurrence wins
    assert pld.lookup([1, 2, 3, 9, 2, 3, 5, 1, 2, 3], 2) == [9, 2]  # the longest n-gram wins over a later 2-gram
    assert pld.lookup([1, 2, 3, 4], 3) == []
    ctx = DraftContext([4, 5, 6, 4, 5], 2, None, torch.zeros(1))
    assert pld.propose(ctx, 3, 2).tolist() == [[6, 6], [4, 4], [5, 5]]


def test_early_exit_drafts_match_the_first_layers(model):
    """Candidates equal the greedy chain of an independent HF run truncated to m layers."""
    m = 2
    drafter = EarlyExitDrafter(FirpEngine(model).parts, m)

    def reference(tokens: list[int], depth: int) -> list[int]:
        seq = list(tokens)
        for _ in range(depth):
            out = model(torch.tensor([seq]), output_hidden_states=True)
            seq.append(int(model.lm_head(model.model.norm(out.hidden_states[m][0, -1])).argmax()))
        return seq[len(tokens):]

    tokens = PROMPTS[0]
    with torch.no_grad():
        for step in range(3):  # catch-up over several committed tokens, then a fresh request
            got = drafter.propose(DraftContext(tokens, 5, None, torch.zeros(1)), 3, 2)
            assert got[:, 0].tolist() == reference(tokens, 3), step
            tokens = tokens + [11, 23]
        fresh = PROMPTS[2]
        assert drafter.propose(DraftContext(fresh, 4, None, torch.zeros(1)), 2, 1)[:, 0].tolist() == reference(fresh, 2)


class CorruptingEngine(FirpEngine):
    """Flips one generated token whenever a drafter is used: the runner must notice."""

    def generate(self, prompt_ids, max_new_tokens=64, tree=None, sampling=None, stop_token_ids=None, drafter=None):
        gen = super().generate(prompt_ids, max_new_tokens, tree, sampling, stop_token_ids, drafter)
        if not isinstance(drafter, NoDrafter) and len(gen.tokens) > 3:
            gen.tokens[3] = (gen.tokens[3] + 1) % self.model.config.vocab_size
        return gen


def test_runner_raises_on_output_mismatch(builder, model):
    good = builder.pld()
    bad = Method("faulty", CorruptingEngine(model), good.drafter, good.tree)
    with pytest.raises(OutputMismatch, match="faulty output differs from plain AR decoding on prompt 0 at new token 3"):
        measure([builder.ar(), good, bad], PROMPTS, max_new_tokens=8, repeats=1, warmup=False, progress=False)


def test_report_writes_json_markdown_and_plots(builder, model, tmp_path):
    methods = all_methods(builder, model)
    results = {
        "meta": {"commit": "test", "date": "now", "cpu": "cpu", "cpu_count": 2, "torch": torch.__version__,
                 "torch_threads": 1, "loadavg": [0, 0, 0]},
        "settings": {"num_prompts": 2, "max_new_tokens": 10, "repeats": 1},
        "methods": measure(methods, PROMPTS[:2], 8, 1, progress=False),
        "budget_sweep": [{"name": n, **f} for n, f in measure(
            builder.budget_sweep([2, 4], random_heads(model), random_medusa(model)), PROMPTS[:1], 8, 1,
            progress=False).items() if n != "ar"],
        "budget_sweep_settings": {"num_prompts": 1, "repeats": 1},
    }
    files = write_report(results, tmp_path)
    assert {f.name for f in files} == {"results.json", "results.md", "tau_speedup.png", "accepted_histogram.png",
                                       "tau_vs_budget.png"}
    assert json.loads((tmp_path / "results.json").read_text())["methods"]["pld"]["equal_to_ar"] is True
    md = (tmp_path / "results.md").read_text()
    assert "| firp-tree |" in md and "Tree budget sweep" in md
    for f in files:
        if f.suffix == ".png":
            assert f.read_bytes()[:4] == b"\x89PNG"


def test_cli_end_to_end(model, tmp_path):
    model_dir, heads_dir, medusa_dir = tmp_path / "model", tmp_path / "heads", tmp_path / "medusa"
    model.save_pretrained(model_dir)
    random_heads(model).save_pretrained(heads_dir)
    random_medusa(model).save_pretrained(medusa_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt_ids": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "out"
    argv = ["--model", str(model_dir), "--heads", str(heads_dir), "--medusa-heads", str(medusa_dir), "--prompts",
            str(prompts), "--max-new-tokens", "12", "--repeats", "1", "--calib-prompts", "0", "--sweep-budgets", "2,4",
            "--sweep-prompts", "1", "--budget", "4", "--threads", "1", "--out", str(out), "--quiet"]
    assert run.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["methods"]) == {"ar", "firp-tree", "firp-tree-sparse", "firp-chain", "medusa", "medusa-chain", "pld",
                                   "early-exit"}
    assert res["settings"]["threads"]["threads"] == 1 and (out / "tau_vs_budget.png").is_file()


def test_calibration_and_ablation_variants(builder, model):
    # An oracle drafter: right at rank 0, except at depth 2 on every 3rd call (rank 1 is then random).
    truth = builder.ar_engine.generate(PROMPTS[1], 12 + 3).tokens
    oracle = OracleDrafter(truth, vocab=model.config.vocab_size, miss_every=3, miss_depth=2)
    probs = calibrate_rank_probs(builder.ar_engine, oracle, [PROMPTS[1]], 3, 2, 12)
    assert probs[0] == [1.0, 0.0] and probs[2] == [1.0, 0.0]
    assert 0.5 <= probs[1][0] < 1.0 and probs[1][1] <= 0.2  # the misses are seen, at depth 2 only
    assert ablation_variants("inject-layer", 4, 3, []) == [("t=1", {"inject_layer": 1}), ("t=2", {"inject_layer": 2}),
                                                          ("t=3", {}), ("t=1,2,3", {"inject_layer": (1, 2, 3)})]
    assert [o for _, o in ablation_variants("K", 4, 3, [])] == [{"num_future_tokens": 1}, {"num_future_tokens": 2},
                                                               {}, {"num_future_tokens": 4}]


def test_cost_curve_points(model):
    timer = StepTimer(model, context=16)
    assert timer.layers(4)[1].shape[0] == 4 and timer.cache.get_seq_length() == 16  # 4 rows timed, cache restored
    points = curve(timer, rows=(1, 4), repeats=1, depth_factor=2.0)  # full depth = twice the layers built
    for p in points.values():
        assert p["layers_s"] > 0 and p["full_s"] == pytest.approx(2 * p["layers_s"] + p["head_s"])
    assert points[4]["relative"] == pytest.approx(points[4]["full_s"] / points[1]["full_s"])
