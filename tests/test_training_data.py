"""Inputs of the training pipeline: prompt files, chat templates, long prompts, resume, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vllm_firp_training import generate_data, train
from vllm_firp_training.data import (
    DataError,
    SequenceStore,
    cut_text_prompts,
    encode_prompts,
    load_sequences,
    read_prompt_records,
)
from vllm_firp_training.generate_data import GenerationSettings, fit_prompts

from tests.test_training import V, save_model, word_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "model"
    save_model(path)
    return path


def test_prompt_file_formats(tmp_path: Path) -> None:
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "t1 t2"}\n\n{"messages": [{"role": "user", "content": "t3"}]}\n{"prompt_ids": [4]}\n')
    tok = word_tokenizer()
    prompts = encode_prompts(read_prompt_records(jl), tok)
    assert [p.ids for p in prompts] == [[1, 2], [3], [4]]  # chat template: contents joined by spaces
    assert [p.ids for p in encode_prompts(read_prompt_records(jl), tok, as_chat=True)][0] == [1, 2]
    txt = tmp_path / "p.txt"
    txt.write_text("t5 t6\n\nt7\n")
    assert [p.ids for p in encode_prompts(read_prompt_records(txt), tok)] == [[5, 6], [7]]
    js = tmp_path / "p.json"
    js.write_text('["t8", {"prompt": "t9"}]')
    assert [p.ids for p in encode_prompts(read_prompt_records(js), tok)] == [[8], [9]]


def test_chat_drops_turns_after_the_last_user_turn() -> None:
    msgs = [{"role": "user", "content": "t1"}, {"role": "assistant", "content": "t2"},
            {"role": "user", "content": "t3"}, {"role": "assistant", "content": "t4"}]
    assert encode_prompts([{"messages": msgs}], word_tokenizer())[0].ids == [1, 2, 3]
    tok = word_tokenizer()
    tok.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        encode_prompts([{"messages": msgs}], tok)


@pytest.mark.parametrize(("content", "name", "match"), [
    ("", "p.jsonl", "holds no prompts"),
    ('{"prompt": "t1"}\n{not json\n', "p.jsonl", r"p.jsonl:2: invalid JSON"),
    ('{"text": "t1"}\n', "p.jsonl", "none of 'prompt', 'messages', 'prompt_ids'"),
    ('{"prompt": 1}', "p.json", "must hold a list"),
])
def test_bad_prompt_files(tmp_path: Path, content: str, name: str, match: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=match):
        read_prompt_records(tmp_path / name)


def test_missing_prompt_file_and_cli_exit_code(tmp_path: Path, model_dir: Path, capsys) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_prompt_records(tmp_path / "nope.jsonl")
    rc = generate_data.main(["--model", str(model_dir), "--prompts", str(tmp_path / "nope.jsonl"),
                             "--out", str(tmp_path / "d")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = generate_data.main(["--model", str(tmp_path / "no-model"), "--prompts", str(tmp_path / "nope.jsonl"),
                             "--out", str(tmp_path / "d")])
    assert rc == 2 and "model directory" in capsys.readouterr().err


def test_text_file_prompts(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text(" ".join(f"t{i % V}" for i in range(100)))
    prompts = cut_text_prompts([corpus], word_tokenizer(), num_prompts=5, prompt_tokens=8, seed=1)
    assert len(prompts) == 5 and all(len(p.ids) == 8 for p in prompts)
    assert all(p.ids == [(p.ids[0] + j) % V for j in range(8)] for p in prompts)  # contiguous windows
    assert len({p.key for p in prompts}) == 5
    with pytest.raises(DataError, match="no window"):
        cut_text_prompts([corpus], word_tokenizer(), num_prompts=5, prompt_tokens=500)


def test_long_prompt_policies() -> None:
    from vllm_firp_training.data import Prompt

    prompts = [Prompt("a", [1] * 10), Prompt("b", [1] * 50)]
    assert [p.key for p in fit_prompts(prompts, 64, 20, "skip")] == ["a"]
    assert [len(p.ids) for p in fit_prompts(prompts, 64, 20, "truncate")] == [10, 44]
    with pytest.raises(DataError, match="1 of 2 prompts exceed 44 tokens"):
        fit_prompts(prompts, 64, 20, "error")
    with pytest.raises(DataError, match="no room"):
        fit_prompts(prompts, 64, 64, "skip")


def test_generation_resumes_and_refuses_other_settings(tmp_path: Path, model_dir: Path) -> None:
    prompts = encode_prompts([{"prompt_ids": [i, i + 1]} for i in range(6)], None)
    out = tmp_path / "d"
    first = generate_data.generate_data(str(model_dir), prompts[:4], out, GenerationSettings(max_new_tokens=5),
                                        backend="hf", progress=False)
    assert first["generated"] == 4
    with open(out / "sequences.jsonl", "a") as fh:
        fh.write('{"key": "torn", "ids": [1')  # killed mid-write
    again = generate_data.generate_data(str(model_dir), prompts, out, GenerationSettings(max_new_tokens=5),
                                        backend="hf", progress=False)
    assert again["already_done"] == 4 and again["generated"] == 2
    assert [len(s.ids) for s in load_sequences(out, "all")] == [7] * 6
    with pytest.raises(DataError, match="generation differ"):
        generate_data.generate_data(str(model_dir), prompts, out, GenerationSettings(max_new_tokens=9),
                                    backend="hf", progress=False)


def test_all_prompts_too_long_is_an_error(tmp_path: Path, model_dir: Path) -> None:
    prompts = encode_prompts([{"prompt_ids": [1] * 250}], None)
    with pytest.raises(DataError, match="every prompt is longer"):
        generate_data.generate_data(str(model_dir), prompts, tmp_path / "d", GenerationSettings(max_new_tokens=10),
                                    backend="hf", progress=False)


def test_prompt_ids_outside_the_vocabulary_are_an_error(tmp_path: Path, model_dir: Path) -> None:
    prompts = encode_prompts([{"prompt_ids": [1, 2]}, {"prompt_ids": [3, 10**6]}], None)
    with pytest.raises(DataError, match="token ids >= the model's vocabulary size"):
        generate_data.generate_data(str(model_dir), prompts, tmp_path / "d", GenerationSettings(max_new_tokens=4),
                                    backend="hf", progress=False)


def test_training_refuses_empty_or_foreign_data(tmp_path: Path, model_dir: Path, capsys) -> None:
    data = tmp_path / "d"
    SequenceStore(data).open({"model": "x"})
    (data / "sequences.jsonl").write_text("")
    base = ["--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "h"), "--steps", "1", "--quiet"]
    assert train.main(base) == 2 and "no usable sequences" in capsys.readouterr().err
    (data / "sequences.jsonl").write_text(json.dumps({"key": "k", "prompt_len": 1, "ids": [1, 2, V + 5]}) + "\n")
    assert train.main([*base, "--holdout-percent", "0"]) == 2
    assert "outside the model's vocabulary" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()
    missing_model = ["--model", str(tmp_path / "nope"), *base[2:]]
    assert train.main(missing_model) == 2 and "model directory" in capsys.readouterr().err


def test_evaluate_refuses_heads_of_another_model(tmp_path: Path, model_dir: Path, capsys) -> None:
    from vllm_firp_training import evaluate

    from tests.test_training import perm_model
    from vllm_firp.core import FirpConfig, FirpHeads

    other, _ = perm_model(vocab=V + 2)
    FirpHeads(FirpConfig.for_model(other.config, 2)).save_pretrained(tmp_path / "heads")
    rc = evaluate.main(["--model", str(model_dir), "--heads", str(tmp_path / "heads"), "--data", str(tmp_path),
                        "--quiet"])
    assert rc == 2 and f"vocab_size: heads have {V + 2}, model has {V}" in capsys.readouterr().err
