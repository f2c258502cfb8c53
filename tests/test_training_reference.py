"""training.reference_heads cache keys (nothing is built here: the reference model takes minutes)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from vllm_firp_training import reference_heads as rh


def test_cache_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_FIRP_CACHE", str(tmp_path))
    firp = rh.reference_heads_dir("micro", "firp")
    assert firp.parent == tmp_path / "heads" and firp.name.startswith("micro-firp-")
    assert firp == rh.reference_heads_dir("micro", "firp")
    assert rh.reference_heads_dir("micro", "medusa").name.startswith("micro-medusa-")
    assert rh.reference_heads_dir("micro", "firp", steps=10) != firp
    assert rh.reference_heads_dir("micro", "firp", cache_dir=tmp_path / "x").parent == tmp_path / "x" / "heads"


def test_data_is_shared_across_training_only_changes() -> None:
    base = rh.RECIPES["micro"]
    data = rh.reference_data_dir("micro", base)
    assert rh.reference_data_dir("micro", dataclasses.replace(base, steps=7, inject_layer=2, lr=1.0)) == data
    assert rh.reference_data_dir("micro", dataclasses.replace(base, num_prompts=8)) != data


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="unknown recipe override"):
        rh.reference_heads_dir("micro", "firp", stepz=3)
    with pytest.raises(ValueError, match="unknown size"):
        rh.reference_heads_dir("huge", "firp")
    with pytest.raises(ValueError, match="method"):
        rh.reference_heads_dir("micro", "eagle")
