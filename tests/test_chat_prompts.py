"""training.chat_prompts: the user-turn prefix, and which sampled turns are kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vllm_firp_training import chat_prompts
from vllm_firp_training.data import DataError

from tests.devmodels import default_cache_dir, tiny_llama


@pytest.fixture(scope="module")
def model() -> str:
    return str(tiny_llama(default_cache_dir() / "tiny-llama"))


def test_prefix_opens_the_user_turn(model: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    prefix = chat_prompts.user_turn_prefix(tok)
    assert tok.decode(prefix) == "<|user|>\n"
    tok.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        chat_prompts.user_turn_prefix(tok)


class ScriptedEngine:
    """Stands in for the sampling backend (tested in test_training_data): returns fixed turns in order."""

    def __init__(self, tokenizer, turns: list[tuple[str, str]]) -> None:
        self.outputs = [(tokenizer(text, add_special_tokens=False)["input_ids"], finish) for text, finish in turns]
        self.seen_keys: list[str] = []

    def generate(self, prompts):
        self.seen_keys += [p.key for p in prompts]
        out, self.outputs = self.outputs[: len(prompts)], self.outputs[len(prompts):]
        return out + [([], "length")] * (len(prompts) - len(out))


def test_truncated_short_and_repeated_turns_are_dropped(model: str, monkeypatch, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    turns = [("How do I sort a dict by value in Python?", "stop"), ("Explain recursion with an example", "length"),
             ("hi", "stop"), ("how do I  sort a dict by VALUE in python?", "stop"),
             ("What is the boiling point of water?", "stop")]
    engine = ScriptedEngine(tok, turns)
    monkeypatch.setattr(chat_prompts, "make_backend", lambda *a, **k: engine)
    texts, counts = chat_prompts.sample_user_turns(model, 2, progress=False)
    assert [t.lower() for t in texts] == ["how do i sort a dict by value in python?",
                                          "what is the boiling point of water?"]
    assert counts == {"sampled": 16, "truncated": 12, "too_short": 1, "duplicate": 1}
    # One seed per sample: the backends derive it from a key's first 8 hex digits.
    assert len({int(k[:8], 16) for k in engine.seen_keys}) == len(engine.seen_keys)

    engine = ScriptedEngine(tok, turns)
    out = tmp_path / "prompts.jsonl"
    assert chat_prompts.main(["--model", model, "--num-prompts", "5", "--out", str(out), "--quiet"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and records[0]["messages"][0]["role"] == "user"
