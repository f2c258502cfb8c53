"""training.build_dataset: steered prompts, filters, shards, and a build that resumes to the same data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vllm_firp_training import build_dataset as bd
from vllm_firp_training.data import DataError, is_heldout, load_sequences
from vllm_firp_training.shards import ShardDir, verify
from vllm_firp_training.task_kinds import KINDS, TOPICS, opener_text


def test_kinds_cover_what_users_ask() -> None:
    assert len(KINDS) >= 20 and len({k.name for k in KINDS}) == len(KINDS)
    assert {"letter", "roleplay", "math", "code_write", "code_fix", "extraction", "summary"} <= {k.name for k in KINDS}
    names = {k.name for k in KINDS}
    assert all(set(k.passage_from) <= names for k in KINDS)
    import random

    for kind in KINDS:  # every opener's slots get filled
        for seed in range(20):
            assert "{" not in opener_text(kind, random.Random(seed))
    assert len(set(TOPICS)) == len(TOPICS) >= 80


def _turn(key: str, text: str, finish: str = "stop") -> dict:
    return {"key": key, "kind": "advice", "text": text, "finish": finish}


def test_select_prompts_drops_truncated_short_benchmark_and_duplicates() -> None:
    banned = bd.ngrams(bd.words("compose an engaging travel blog post about a recent trip to hawaii highlighting"), 8)
    records = [
        _turn("a", "How can I get better at chess openings without memorising long lines?"),
        _turn("b", "Explain how tides work in simple terms please", finish="length"),
        _turn("c", "hi"),
        _turn("d", "Please compose an engaging travel blog post about a recent trip to Hawaii, highlighting food"),
        _turn("e", "how can I get better at chess openings without  memorising long lines?"),
        _turn("f", "How can I get better at chess openings without memorising long lines? Thanks"),
        _turn("g", "What is the difference between weather and climate?"),
        _turn("h", "Give me five ideas for a rainy afternoon with kids."),
    ]
    kept, dropped = bd.select_prompts(records, 2, 0.7, banned)
    assert [k["key"] for k in kept] == ["a", "g"]
    assert kept[0]["messages"] == [{"role": "user", "content": records[0]["text"]}] and kept[0]["kind"] == "advice"
    assert dropped == {"truncated": 1, "empty_or_short": 1, "benchmark_overlap": 1, "duplicate": 1,
                       "near_duplicate": 1}


def test_passages_paste_the_code_of_a_code_answer() -> None:
    answer = "Here you go:\n\n```python\ndef f(x):\n    return x\n```\n\nThis returns x."
    assert bd.passage_of("code_write", answer) == "```\ndef f(x):\n    return x\n```"
    assert bd.passage_of("essay", " Some text. ") == "Some text."


def test_a_capped_answer_is_cut_at_a_paragraph_end_before_it_loops() -> None:
    para = "A paragraph of plain words that says one thing about the topic at hand, " * 3
    other = "Another paragraph that adds a different point with many more words in it. " * 2
    assert bd.cut_at_paragraph(f"{para}\n\n{other}\n\nhalf a paragr") == f"{para}\n\n{other}".strip()
    looping = f"{para}\n\n{other}\n\n{para}\n\n{other}\n\n{para}"  # the model started over: cut before it
    assert bd.cut_at_paragraph(looping) == f"{para}\n\n{other}".strip()
    fenced = f"{para}\n\n```python\ndef f():\n\n    return 1\n\n    # cut"
    assert bd.cut_at_paragraph(fenced) == para.strip()  # never an open code fence
    assert bd.cut_at_paragraph("Too short.\n\nStill short.\n\ncut") is None


def test_answers_of_one_conversation_share_a_split() -> None:
    roots = [f"{i:016x}" for i in range(400)]
    assert any(is_heldout(r, 5) for r in roots)
    for root in roots:
        side = is_heldout(root, 5)
        for key in (f"{root}/greedy", f"{root}/sampled", f"{root}.t2/greedy", f"{root}.1a2b3c4d/greedy"):
            assert is_heldout(key, 5) == side


def test_shards_are_whole_or_absent_and_checked(tmp_path: Path) -> None:
    shards = ShardDir(tmp_path / "stage")
    shards.append([{"key": "a", "v": 1}, {"key": "b", "v": 2}])
    shards.append([{"key": "c", "v": 3}])
    (tmp_path / "stage" / ".shard-00002.jsonl.tmp-123").write_text('{"key": "d"')  # a killed write
    shards = ShardDir(tmp_path / "stage")
    assert shards.keys() == {"a", "b", "c"} and not list((tmp_path / "stage").glob(".*"))
    manifest = {"stages": {"stage": {"shards": shards.summary()}}}
    assert verify(tmp_path, manifest) == []
    (tmp_path / "stage" / "shard-00001.jsonl").write_text('{"key": "c", "v": 4}\n')
    assert verify(tmp_path, manifest) == ["stage/shard-00001.jsonl: checksum differs"]
    (tmp_path / "stage" / "shard-00001.jsonl").write_text('{"key": "c"')
    with pytest.raises(DataError, match="corrupt shard"):
        list(ShardDir(tmp_path / "stage").records())


# ------------------------------------------------------------------ a real (tiny) build on SmolLM2, HF backend

RECIPE = bd.Recipe(num_prompts=6, passage_fraction=0.34, follow_up_fraction=0.5, sampled_fraction=0.5,
                   max_answer_tokens=40, max_user_tokens=24, oversample=2.0)


@pytest.fixture(scope="module")
def smollm2() -> str:
    from vllm_firp.packaged_models import ensure_registry_model

    return str(ensure_registry_model("smollm2-135m-instruct"))


class Crash(RuntimeError):
    pass


def _build(model: str, root: Path, recipe: bd.Recipe = RECIPE, crash_after: int = 10**9) -> bd.Build:
    """A build (3 requests per batch) counting the requests it generates in ``build.requests``; the batch that
    would pass ``crash_after`` requests raises instead, as a machine going away would."""
    build = bd.Build(model, root / "out", root / "work", recipe, backend="hf", dtype="float32", batch_size=3,
                     progress=False, command="test")
    engine, build.requests = build.engine, 0
    real = engine.generate

    def generate(prompts, settings=None):
        if build.requests + len(prompts) > crash_after:
            raise Crash("the machine went away")
        out = real(prompts, settings)
        build.requests += len(prompts)
        return out

    engine.generate = generate
    return build


@pytest.mark.slow
def test_interrupted_build_resumes_to_the_same_data(smollm2: str, tmp_path: Path) -> None:
    build = _build(smollm2, tmp_path / "straight")
    straight = build.run_all()
    crashed = _build(smollm2, tmp_path / "resumed", crash_after=27)
    with pytest.raises(Crash):  # dies inside the answers stage, after the prompts were written
        crashed.run_all()
    again = _build(smollm2, tmp_path / "resumed")
    resumed = again.run_all()
    assert again.requests == build.requests - crashed.requests  # nothing done before the crash is generated again

    for name in (bd.PROMPTS, bd.PASSAGE_PROMPTS, bd.FOLLOW_UPS):
        assert (tmp_path / "straight/out" / name).read_text() == (tmp_path / "resumed/out" / name).read_text(), name
    assert straight["export"] == resumed["export"]  # same sha256 of the exported sequences
    ShardDir(tmp_path / "resumed/work/answers_passage").append([{  # left by an earlier recipe: never exported
        "key": "stale/greedy", "prompt_len": 1, "ids": [1, 2], "finish": "stop", "kind": "summary", "turn": 1,
        "decoding": "greedy"}])
    assert _build(smollm2, tmp_path / "resumed").run_all()["export"] == straight["export"]
    assert len(resumed["runs"]) == 2 and resumed["runs"][1]["new_tokens"] > 0
    assert verify(tmp_path / "resumed/work", resumed) == []

    prompts = bd.read_jsonl(tmp_path / "resumed/out" / bd.PROMPTS)
    assert len(prompts) == RECIPE.num_written and all(p["kind"] for p in prompts)
    seqs = load_sequences(tmp_path / "resumed/work/export", split="all")
    stats = resumed["export"]
    assert len(seqs) == sum(stats[s]["sequences"] for s in ("answers_1", "answers_passage", "answers_2",
                                                            "answers_sampled"))
    assert stats["answers_1"]["sequences"] == RECIPE.num_written
    assert stats["answers_sampled"]["sequences"] >= 1
    for s in seqs:  # the response is the model's, after the whole (possibly multi-turn) prompt
        assert 0 < s.prompt_len < len(s.ids)


@pytest.mark.slow
def test_a_build_refuses_another_recipe(smollm2: str, tmp_path: Path) -> None:
    _build(smollm2, tmp_path).run_all(until="user_turns")
    manifest = json.loads((tmp_path / "out" / bd.MANIFEST).read_text())
    assert manifest["prompt_filter"]["kept"] == RECIPE.num_written
    with pytest.raises(DataError, match="max_answer_tokens differ"):
        _build(smollm2, tmp_path, bd.Recipe(**{**bd.dataclasses.asdict(RECIPE), "max_answer_tokens": 64}))
