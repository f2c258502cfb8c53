"""Heads checkpoints: round trip, and every bad checkpoint refused with a message naming the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import random_heads, tiny_model
from vllm_firp.core import FirpCheckpointError, FirpConfig, FirpHeads


@pytest.fixture()
def saved(tmp_path: Path):
    model = tiny_model("llama")
    heads = random_heads(model, K=3)
    heads.save_pretrained(tmp_path)
    return model, heads, tmp_path


def _edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_round_trip_keeps_weights_and_config(saved) -> None:
    model, heads, path = saved
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["format"] == "firp" and cfg["format_version"] == 1 and cfg["num_future_tokens"] == 3
    assert sorted(load_file(str(path / "model.safetensors"))) == [
        f"proj.{k}.{p}" for k in (1, 2, 3) for p in ("bias", "weight")
    ]
    loaded = FirpHeads.from_pretrained(path, model.config)
    for name, tensor in heads.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("hidden_size", 128, "hidden_size: heads have 128, model has 64"),
        ("num_hidden_layers", 8, "num_hidden_layers: heads have 8, model has 4"),
        ("vocab_size", 50, "vocab_size: heads have 50, model has 101"),
    ],
)
def test_mismatched_model_is_refused(saved, field, value, message) -> None:
    model, _, path = saved
    _edit_config(path, **{field: value})
    with pytest.raises(FirpCheckpointError, match=message):
        FirpHeads.from_pretrained(path, model.config)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"inject_layers": [0, 0, 0]}, r"inject_layers \[0, 0, 0\] must lie in 1..3"),
        ({"inject_layers": [4, 4, 4]}, r"must lie in 1..3 \(the model has 4 layers\)"),
        ({"inject_layers": [3, 2, 2]}, "must be non-decreasing"),
        ({"inject_layers": [2, 2]}, "inject_layers has 2 entries but num_future_tokens is 3"),
        ({"format": "medusa"}, "not a FIRP heads config"),
        ({"format_version": 9}, "format_version 9 is not supported"),
        ({"source": "sideways"}, "source must be 'previous' or 'anchor'"),
        ({"mystery": 1}, "unknown field"),
        ({"residual": "false"}, "residual must be true or false, got 'false'"),
        ({"pseudo_attend_each_other": 0}, "pseudo_attend_each_other must be true or false"),
        ({"inject_layers": [2.7, "2", 2]}, "inject_layers must be a list of integer layer numbers"),
        ({"inject_layers": 3}, "inject_layers must be a list of integer layer numbers"),
        ({"hidden_size": True}, "hidden_size must be a positive integer, got True"),
    ],
)
def test_invalid_config_is_refused(saved, changes, message) -> None:
    _, _, path = saved
    _edit_config(path, **changes)
    with pytest.raises(FirpCheckpointError, match=message):
        FirpHeads.from_pretrained(path)


def test_missing_required_field(saved) -> None:
    _, _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    del cfg["inject_layers"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FirpCheckpointError, match="lacks required field.*inject_layers"):
        FirpHeads.from_pretrained(path)


def test_missing_files(tmp_path: Path, saved) -> None:
    with pytest.raises(FirpCheckpointError, match="does not exist"):
        FirpHeads.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FirpCheckpointError, match="config.json is missing"):
        FirpHeads.from_pretrained(tmp_path.parent)
    _, _, path = saved
    (path / "model.safetensors").unlink()
    with pytest.raises(FirpCheckpointError, match="model.safetensors is missing"):
        FirpHeads.from_pretrained(path)


def test_pickle_weights_are_refused(saved) -> None:
    _, heads, path = saved
    torch.save(heads.state_dict(), path / "pytorch_model.bin")
    with pytest.raises(FirpCheckpointError, match=r"refusing pickle weight file\(s\) \['pytorch_model.bin'\]"):
        FirpHeads.from_pretrained(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(saved, bad) -> None:
    _, _, path = saved
    tensors = load_file(str(path / "model.safetensors"))
    tensors["proj.2.weight"][3, 4] = bad
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(FirpCheckpointError, match="proj.2.weight contains NaN or Inf"):
        FirpHeads.from_pretrained(path)


def test_missing_extra_and_misshapen_tensors(saved) -> None:
    _, _, path = saved
    good = load_file(str(path / "model.safetensors"))
    cases = [
        ({k: v for k, v in good.items() if k != "proj.3.bias"}, r"lacks tensor\(s\) \['proj.3.bias'\]"),
        ({**good, "proj.4.weight": good["proj.1.weight"].clone()}, r"has tensor\(s\) \['proj.4.weight'\]"),
        ({**good, "proj.1.weight": good["proj.1.weight"][:10].clone()}, r"proj.1.weight has shape \[10, 64\], expected \[64, 64\]"),
    ]
    for tensors, message in cases:
        save_file(tensors, str(path / "model.safetensors"))
        with pytest.raises(FirpCheckpointError, match=message):
            FirpHeads.from_pretrained(path)
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(FirpCheckpointError, match="cannot read"):
        FirpHeads.from_pretrained(path)


def test_invalid_json(saved) -> None:
    _, _, path = saved
    (path / "config.json").write_text("{oops")
    with pytest.raises(FirpCheckpointError, match="not valid JSON"):
        FirpHeads.from_pretrained(path)


def test_identity_init_copies_source_and_residual_starts_at_zero() -> None:
    cfg = FirpConfig(hidden_size=8, num_hidden_layers=4, vocab_size=10, num_future_tokens=2, inject_layers=[2, 3])
    x = torch.randn(5, 8)
    torch.testing.assert_close(FirpHeads(cfg).pseudo_state(1, x), x)
    cfg_res = FirpConfig(**{**cfg.to_dict(), "residual": True})
    torch.testing.assert_close(FirpHeads(cfg_res).pseudo_state(2, x), x)
    assert FirpHeads(cfg).injections_after(2) == [1] and FirpHeads(cfg).injections_after(3) == [2]
