"""The real pretrained chat model (SmolLM2-135M-Instruct from the package registry) with the FIRP heads shipped
in this package, on MT-bench first turns: greedy FIRP output equals plain decoding token for token, in the
reference engine and in vLLM, and the shipped heads' drafts are actually accepted."""

from __future__ import annotations

import json
import os

import pytest

from vllm_firp.core import FirpHeads, parse_tree_spec
from vllm_firp.packaged_models import chat_ids, mt_bench_questions, shipped_heads_dir
from vllm_firp.resolve import resolve

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"
NUM_PROMPTS, NEW_TOKENS = 20, 64


@pytest.fixture(scope="module")
def real() -> dict:
    from transformers import AutoTokenizer

    models = resolve(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(models.model)
    questions = mt_bench_questions()[:: 80 // NUM_PROMPTS][:NUM_PROMPTS]  # every category
    return {"model": models.model, "heads": models.heads_dir(), "questions": questions, "tokenizer": tokenizer,
            "prompts": [chat_ids(tokenizer, q["turns"][0]) for q in questions]}


def test_shipped_heads_fit_the_model_and_say_where_they_came_from(real: dict) -> None:
    from transformers import AutoConfig

    heads = FirpHeads.from_pretrained(real["heads"], AutoConfig.from_pretrained(real["model"]))
    assert heads.config.num_hidden_layers == 30 and heads.K >= 3
    readme = (real["heads"] / "README.md").read_text()
    for needed in ("commit", "python -m training.teacher_cache", "python -m training.inject_sweep", "training.chat_prompts",
                   "MT-bench"):
        assert needed in readme, needed
    assert len({q["category"] for q in real["questions"]}) == 8


def test_reference_engine_greedy_equals_plain_on_mt_bench(real: dict) -> None:
    from vllm_firp.engine.engine import FirpEngine

    engine = FirpEngine.from_pretrained(real["model"], real["heads"])
    tree = parse_tree_spec("budget:8/2", engine.heads.K)  # few rows per forward: CPU time stays low
    emitted = decode_forwards = 0
    for ids in real["prompts"]:
        plain = engine.generate(ids, NEW_TOKENS)
        firp = engine.generate(ids, NEW_TOKENS, tree=tree)
        assert firp.tokens == plain.tokens
        emitted += sum(firp.stats.tokens_per_step)
        decode_forwards += len(firp.stats.tokens_per_step)
    assert emitted / decode_forwards > 1.25  # tokens per forward (drafts never accepted: 1.0)


def test_shipped_medusa_baseline_is_lossless_and_accepted(real: dict) -> None:
    """The Medusa heads shipped beside FIRP's (same data, same budget) load, validate and draft usefully."""
    from vllm_firp_training.medusa import MedusaDrafter, MedusaHeads

    from vllm_firp.core import budget_tree
    from vllm_firp.engine.engine import FirpEngine

    path = shipped_heads_dir(MODEL, "medusa")
    engine = FirpEngine.from_pretrained(real["model"])
    heads = MedusaHeads.from_pretrained(path, engine.model.config)
    assert heads.K == 3 and "python -m training.inject_sweep" in (path / "README.md").read_text()
    drafter = MedusaDrafter(heads, engine.parts.lm_head)
    tree = budget_tree(8, heads.K, topk=2)
    emitted = forwards = 0
    for ids in real["prompts"][:6]:
        medusa = engine.generate(ids, NEW_TOKENS // 2, tree=tree, drafter=drafter)
        assert medusa.tokens == engine.generate(ids, NEW_TOKENS // 2).tokens
        emitted += sum(medusa.stats.tokens_per_step)
        forwards += len(medusa.stats.tokens_per_step)
    assert emitted / forwards > 1.25


@pytest.mark.vllm
def test_vllm_greedy_equals_plain_on_mt_bench(real: dict) -> None:
    pytest.importorskip("vllm")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from tests.helpers import engine_metrics, shutdown_engine

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in real["prompts"]]
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS)
    texts, metrics = {}, {}
    for name, spec in (("plain", None), ("firp", {"method": "firp", "model": str(real["heads"])})):
        llm = LLM(model=str(real["model"]), speculative_config=spec, enforce_eager=True, max_model_len=1024,
                  dtype="float32", disable_log_stats=False, seed=0, distributed_executor_backend="uni")
        texts[name] = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
        metrics[name] = engine_metrics(llm)
        shutdown_engine(llm)
    assert texts["firp"] == texts["plain"]
    drafts = metrics["firp"]["vllm:spec_decode_num_drafts"]
    accepted = metrics["firp"]["vllm:spec_decode_num_accepted_tokens"]
    assert drafts > 0 and 1 + accepted / drafts > 1.25  # mean acceptance length (never accepted: 1.0)


def test_demo_answers_with_firp_identical_to_plain(capsys) -> None:
    from vllm_firp.cli import main

    assert main(["demo", "--engine", "reference", "--max-new-tokens", "32", "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert report["identical_to_plain"] is True and report["firp"]["new_tokens"] == 32
    assert report["firp"]["mean_accepted_tokens_per_forward"] > 1.25


def test_mt_bench_benchmark_prompts_split_by_category(real: dict) -> None:
    """The benchmark measures N first turns per category and calibrates on the others, never on the same."""
    from benchmarks.mt_bench import mt_bench_prompts, mt_bench_texts, pick_questions

    ids, categories, rest = mt_bench_prompts(real["tokenizer"], 3)
    assert len(ids) == 24 and len(rest) == 56 and len(set(categories)) == 8
    assert all(categories.count(c) == 3 for c in set(categories))
    assert not {tuple(p) for p in ids} & {tuple(p) for p in rest}
    texts = mt_bench_texts(real["tokenizer"])
    assert len(set(texts)) == 80 and all(t.rstrip().endswith("assistant") for t in texts)
    picked, _ = pick_questions(10)
    assert len({q["category"] for q in picked[:8]}) == 1  # grouped by category, so texts interleave them
    with pytest.raises(ValueError, match="10 questions per category"):
        pick_questions(11)
    with pytest.raises(ValueError, match="need a chat model"):
        mt_bench_prompts(None, 2)
