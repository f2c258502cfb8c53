"""`vllm_firp.resolve`: registry name, reference size or directory -> model dir + heads dirs (no model built)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_firp import resolve as rs
from vllm_firp.packaged_models import RegistryModelError


def test_registry_name_gets_the_shipped_heads(monkeypatch, tmp_path):
    monkeypatch.setattr(rs, "ensure_registry_model", lambda name, progress=True: tmp_path / name)
    m = rs.resolve("smollm2-135m-instruct", methods=("firp", "medusa"))
    assert m.model == tmp_path / "smollm2-135m-instruct" and m.source == "registry:smollm2-135m-instruct"
    assert m.heads_dir() == rs.shipped_heads_dir("smollm2-135m-instruct")
    assert m.heads_dir("medusa").name.endswith("-medusa") and m.reference_size is None
    mine = rs.resolve("smollm2-135m-instruct", {"firp": tmp_path / "mine"})
    assert mine.heads_dir() == tmp_path / "mine"  # given heads win


def test_directory_uses_the_heads_given(tmp_path):
    m = rs.resolve(tmp_path, {"firp": str(tmp_path / "h")}, default_size=None)
    assert (m.model, m.source, m.heads_dir()) == (tmp_path, "directory", tmp_path / "h")
    with pytest.raises(ValueError, match="no medusa heads"):
        m.heads_dir("medusa")
    with pytest.raises(ValueError, match="pass its heads for \\['firp'\\]"):
        rs.resolve(tmp_path, default_size=None)


def test_reference_size_uses_the_trainer(monkeypatch, tmp_path):
    calls = []

    class Trainer:
        def ensure_reference_model(self, size, progress=True):
            return tmp_path / f"model-{size}"

        def ensure_reference_heads(self, size, method, progress=True, **recipe):
            calls.append((size, method, recipe))
            return tmp_path / f"{size}-{method}"

    monkeypatch.setattr(rs, "trainer", lambda module: Trainer())
    m = rs.resolve(None, methods=("firp", "medusa"), default_size="small", recipes={"firp": {"steps": 60}})
    assert m.model == tmp_path / "model-small" and m.reference_size == "small"
    assert m.heads == {"firp": tmp_path / "small-firp", "medusa": tmp_path / "small-medusa"}
    assert calls == [("small", "firp", {"steps": 60}), ("small", "medusa", {})]


def test_bad_input_is_refused_clearly():
    with pytest.raises(RegistryModelError, match="unknown model 'nope'.*reference size"):
        rs.resolve("nope")
    with pytest.raises(ValueError, match="unknown draft method"):
        rs.resolve("micro", methods=("lookahead",))
    with pytest.raises(ValueError, match="no model given"):
        rs.resolve(None, default_size=None)
    assert Path(rs.__file__).parent.name == "vllm_firp"
