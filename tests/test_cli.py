"""`firp generate` end to end on a tiny saved model: JSON output, FIRP == plain, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tests.helpers import random_heads, tiny_model
from vllm_firp.cli import main


@pytest.fixture(scope="module")
def model_and_heads(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    model = tiny_model("qwen2", seed=9)
    model.save_pretrained(root / "model")
    vocab = {chr(ord("a") + i): i for i in range(26)} | {"[UNK]": 100}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(root / "model")
    random_heads(model, K=3, seed=1).save_pretrained(root / "heads")
    return root / "model", root / "heads"


def test_generate_both_modes_json(model_and_heads, capsys) -> None:
    model, heads = model_and_heads
    code = main(["generate", "--model", str(model), "--heads", str(heads), "--prompt", "hello world",
                 "--mode", "both", "--max-new-tokens", "20", "--tree", "budget:8", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["identical_to_plain"] is True
    assert out["firp"]["tokens"] == out["ar"]["tokens"] and len(out["firp"]["tokens"]) == 20
    assert out["firp"]["mean_rows_per_forward"] == 32.0  # 8 tree nodes x (1 + K=3)
    assert out["ar"]["mean_accepted_tokens_per_forward"] == 1.0


def test_generate_text_output(model_and_heads, capsys) -> None:
    model, heads = model_and_heads
    assert main(["generate", "--model", str(model), "--heads", str(heads), "--prompt", "abc",
                 "--max-new-tokens", "5", "--tree", "chain"]) == 0
    assert "tokens/forward" in capsys.readouterr().out


def test_bad_heads_and_prompts_give_clear_errors(model_and_heads, tmp_path, capsys) -> None:
    model, heads = model_and_heads
    assert main(["generate", "--model", str(model), "--heads", str(tmp_path), "--prompt", "x"]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    assert main(["generate", "--model", str(model), "--heads", str(heads), "--prompt", "x" * 600]) == 2
    assert "exceeds the model's context length 512" in capsys.readouterr().err
    assert main(["generate", "--model", str(model), "--heads", str(heads), "--prompt", "x", "--tree", "chain:5"]) == 2
    assert "exceeds the heads' num_future_tokens K=3" in capsys.readouterr().err
