"""Checked reads of what an export to vLLM starts from: the target model's files and a heads directory."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors import safe_open

from vllm_firp.core import FirpCheckpointError, read_format
from vllm_firp.core.checkpoint import SHAPE_FIELDS

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


class ExportError(FirpCheckpointError):
    """An input that cannot be exported (wrong format, mismatched shapes, bad or missing files)."""


def model_config_json(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ExportError(f"{path} is missing: --model must be a Hugging Face model directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{path} is not valid JSON: {e}") from e


def weight_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file (single file or sharded index); pickle checkpoints are refused."""
    if (model_dir / INDEX).is_file():
        index = json.loads((model_dir / INDEX).read_text())["weight_map"]
        return {name: model_dir / f for name, f in index.items()}
    if (model_dir / WEIGHTS).is_file():
        with safe_open(str(model_dir / WEIGHTS), "pt") as f:
            return {name: model_dir / WEIGHTS for name in f.keys()}  # noqa: SIM118
    pickles = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.pt"))
    hint = f" (found only {pickles}; convert them to safetensors first)" if pickles else ""
    raise ExportError(f"no {WEIGHTS} or {INDEX} in {model_dir}: safetensors weights only{hint}")


def read_tensors(files: dict[str, Path], names: Sequence[str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in sorted({files[n] for n in names}):
        with safe_open(str(path), "pt") as f:
            out.update({n: f.get_tensor(n) for n in names if files[n] == path})
    return out


def check_finite(tensors: dict[str, torch.Tensor], where: Path) -> None:
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t.float()).all()]
    if bad:
        raise ExportError(f"{where}: tensor(s) {bad} contain NaN/Inf")


def target_lm_head(model_dir: Path, cfg: dict[str, Any]) -> torch.Tensor:
    """The target's output projection; for tied-embedding models that is the embedding matrix."""
    files = weight_files(model_dir)
    tied = cfg.get("tie_word_embeddings", False) or "lm_head.weight" not in files
    name = next((n for n in (("model.embed_tokens.weight", "embed_tokens.weight") if tied else ("lm_head.weight",))
                 if n in files), None)
    if name is None:
        raise ExportError(f"{model_dir} has no LM head tensor (lm_head.weight, or model.embed_tokens.weight when "
                          f"tie_word_embeddings)")
    w = read_tensors(files, [name])[name]
    want = (cfg["vocab_size"], cfg["hidden_size"])
    if tuple(w.shape) != want:
        raise ExportError(f"{model_dir}: {name} has shape {list(w.shape)}, expected {list(want)} from config.json")
    check_finite({name: w}, model_dir)
    return w


def model_shape(cfg: dict[str, Any]) -> SimpleNamespace:
    """The fields of a model's config.json that heads must match (for ``from_pretrained(model_config=...)``)."""
    return SimpleNamespace(**{k: cfg.get(k) for k in SHAPE_FIELDS})


def check_heads_format(heads_dir: Path, want: str) -> None:
    """Refuse a heads directory of another kind than ``want``, or none at all."""
    cfg_path = heads_dir / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{cfg_path} is missing: expected a {want!r} heads directory")
    try:
        fmt = read_format(heads_dir)
    except FirpCheckpointError as e:
        raise ExportError(f"{cfg_path} is not a valid heads config: {e}") from e
    if fmt != want:
        raise ExportError(f"{heads_dir} holds {fmt!r} heads, not {want!r}")
