"""Tests for training.reference_model: the data split, a tiny end-to-end build, the cache, prompts."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from vllm_firp_training import reference_model as rm

TINY = rm.ReferencePreset(
    name="tiny", vocab_size=384, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
    max_position_embeddings=128, seq_len=64, batch_size=4, steps=6, lr=3e-3, warmup_steps=1,
    max_train_files=12, val_chunks=4,
)  # fmt: skip


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("firp-cache")


@pytest.fixture(scope="module")
def tiny_dir(cache_dir: Path) -> Path:
    return rm.ensure_reference_model(TINY, cache_dir, progress=False, threads=1)


def test_split_is_disjoint_complete_and_stable() -> None:
    train, heldout = rm.stdlib_files("train"), rm.stdlib_files("heldout")
    assert train and heldout
    assert not set(train) & set(heldout)
    assert sorted(set(train) | set(heldout)) == sorted(rm._all_files())
    assert 0.01 < len(heldout) / (len(train) + len(heldout)) < 0.15
    rels = [rm._relpath(p) for p in heldout]
    assert rels == sorted(rels)
    assert rm.stdlib_files("heldout") == heldout
    # The rule depends only on the relative path: pinned values guard against silent changes.
    assert rm.is_heldout("decimal.py") and rm.is_heldout("re/_compiler.py")
    assert not rm.is_heldout("os.py") and not rm.is_heldout("json/__init__.py")
    assert rm.is_heldout("codeop.py") and not rm.is_heldout("asyncio/tasks.py")  # sha1 % 100 == 4 and 5
    for p in train + heldout:
        assert not set(p.relative_to(rm.stdlib_root()).parts[:-1]) & rm.EXCLUDED_DIRS
    with pytest.raises(ValueError):
        rm.stdlib_files("validation")


def test_presets_are_servable_by_vllm_cpu() -> None:
    for preset in rm.PRESETS.values():
        preset.validate()
        assert preset.head_dim in (32, 64)
    with pytest.raises(AssertionError, match="head_dim"):
        dataclasses.replace(TINY, hidden_size=96).validate()  # head_dim 48


def test_head_sizes_match_installed_vllm() -> None:
    """Read vLLM's CPU backend source (importing vLLM takes too long for this suite)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vllm is not installed")
    src = Path(spec.submodule_search_locations[0]) / "v1/attention/backends/cpu_attn.py"
    if not src.is_file():
        pytest.skip(f"no {src}")
    tree = ast.parse(src.read_text())
    fn = next(
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "get_supported_head_sizes"
    )
    ret = next(n for n in ast.walk(fn) if isinstance(n, ast.Return))
    assert tuple(ast.literal_eval(ret.value)) == rm.VLLM_CPU_HEAD_SIZES


def test_tiny_build_loads_and_predicts(tiny_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert tiny_dir == rm.reference_model_dir(TINY, tiny_dir.parents[1])
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "training_log.json"):  # fmt: skip
        assert (tiny_dir / name).is_file(), name
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    cfg = model.config
    assert cfg.model_type == "llama" and not cfg.tie_word_embeddings
    assert cfg.head_dim in rm.VLLM_CPU_HEAD_SIZES
    assert cfg.eos_token_id == cfg.bos_token_id == tok.eos_token_id == tok.bos_token_id
    assert cfg.vocab_size == len(tok) == TINY.vocab_size

    text = rm._read(rm.stdlib_files("heldout")[0])
    ids = tok(text, return_tensors="pt")["input_ids"][:, : TINY.seq_len]
    assert ids.shape[1] == TINY.seq_len and ids[0, 0] == tok.bos_token_id
    with torch.no_grad():
        loss = float(model(input_ids=ids, labels=ids).loss)
    assert math.isfinite(loss)
    # Six steps of training must already beat a uniform guess over the vocabulary.
    assert loss < math.log(TINY.vocab_size)

    log = json.loads((tiny_dir / "training_log.json").read_text())
    assert log["preset"]["name"] == "tiny" and log["tokens_seen"] == 6 * 4 * 64
    assert math.isfinite(log["val_loss"]) and log["val_loss"] < math.log(TINY.vocab_size)


def test_tokenizer_round_trips_code(tiny_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    snippet = 'def f(x: int) -> str:\n    """Doc ü."""\n\treturn f"{x!r:>8}"  # ñ 😀\n\n'
    ids = tok(snippet)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids, skip_special_tokens=True) == snippet
    assert tok.decode(tok(snippet, add_special_tokens=False)["input_ids"]) == snippet


def test_ensure_reuses_cache_and_leaves_no_temp(
    tiny_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> Path:
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(rm, "build_reference_model", boom)
    assert rm.ensure_reference_model(TINY, cache_dir) == tiny_dir
    monkeypatch.setenv("VLLM_FIRP_CACHE", str(cache_dir))
    assert rm.ensure_reference_model(TINY) == tiny_dir
    leftovers = [p.name for p in tiny_dir.parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == []
    # A different recipe gets a different directory.
    assert rm.reference_model_dir(dataclasses.replace(TINY, steps=7), cache_dir) != tiny_dir


def test_interrupted_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_build(out_dir: Path, preset: rm.ReferencePreset, **kwargs: object) -> Path:
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(rm, "build_reference_model", half_build)
    with pytest.raises(KeyboardInterrupt):
        rm.ensure_reference_model(TINY, tmp_path)
    final = rm.reference_model_dir(TINY, tmp_path)
    assert not final.exists()
    assert [p.name for p in final.parent.iterdir() if not p.name.endswith(".lock")] == []


def test_stale_temp_dirs_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_build(out_dir: Path, preset: rm.ReferencePreset, **kwargs: object) -> Path:
        out_dir.mkdir(parents=True)
        for name in ("config.json", "model.safetensors", "tokenizer.json", "training_log.json"):
            (out_dir / name).write_text("{}")
        return out_dir

    final = rm.reference_model_dir(TINY, tmp_path)
    stale = final.parent / f".{final.name}.tmp-killed"
    (stale / "model").mkdir(parents=True)
    monkeypatch.setattr(rm, "build_reference_model", fake_build)
    assert rm.ensure_reference_model(TINY, tmp_path) == final
    assert not stale.exists() and (final / "model.safetensors").is_file()


def test_heldout_prompts(tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    out = tmp_path / "prompts.jsonl"
    recs = rm.write_heldout_prompts(out, n=6, prompt_tokens=40, tokenizer_dir=tiny_dir, seed=3)
    lines = out.read_text().splitlines()
    assert len(lines) == 6 and [json.loads(line) for line in lines] == recs
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    heldout = {rm._relpath(p): rm._read(p) for p in rm.stdlib_files("heldout")}
    for rec in recs:
        source = heldout[rec["source"]]  # only held-out files
        prefix = "".join(source.splitlines(keepends=True)[: rec["start_line"] - 1])
        assert source.startswith(prefix + rec["prompt"])  # starts at a line boundary
        n_tok = len(tok(rec["prompt"], add_special_tokens=False)["input_ids"])
        assert 40 <= n_tok < 48
        assert len(source) > len(prefix + rec["prompt"])  # the file goes on
    again = rm.write_heldout_prompts(tmp_path / "again.jsonl", 6, 40, tiny_dir, seed=3)
    assert again == recs
    assert rm.write_heldout_prompts(tmp_path / "other.jsonl", 6, 40, tiny_dir, seed=4) != recs


def test_cli_help_and_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, expected in (
        (["--help"], "prompts"),
        (["build", "--help"], "--cache-dir"),
        (["prompts", "--help"], "--n"),
    ):
        with pytest.raises(SystemExit) as exc:
            rm.main(argv)
        assert exc.value.code == 0 and expected in capsys.readouterr().out
    cmd = [
        sys.executable,
        "-m",
        "vllm_firp_training.reference_model",
        "path",
        "--size",
        "micro",
        "--cache-dir",
        str(tmp_path),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    assert res.stdout.strip() == str(rm.reference_model_dir("micro", tmp_path))
