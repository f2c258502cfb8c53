"""The two trainable draft methods behind one small interface: build, run, load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vllm_firp.core import FirpCheckpointError, FirpConfig, FirpHeads
from vllm_firp.engine.hf_model import ModelParts

from .medusa import MedusaConfig, MedusaHeads, medusa_outputs
from .objective import DraftOutputs, firp_outputs

METHODS = ("firp", "medusa")
Heads = FirpHeads | MedusaHeads


def method_of(heads: nn.Module) -> str:
    return "medusa" if isinstance(heads, MedusaHeads) else "firp"


def new_heads(method: str, model_config: Any, K: int, **firp_kw: Any) -> Heads:
    """Freshly initialised heads for ``model_config`` (FIRP options are ignored for Medusa)."""
    if method == "firp":
        return FirpHeads(FirpConfig.for_model(model_config, K, **firp_kw))
    if method == "medusa":
        return MedusaHeads(MedusaConfig.for_model(model_config, K))
    raise ValueError(f"method must be one of {METHODS}, not {method!r}")


def load_heads(directory: str | Path, model_config: Any | None = None, dtype: torch.dtype | None = None) -> Heads:
    """FIRP or Medusa heads, by the ``format`` in their config.json; validated against the model."""
    path = Path(directory) / "config.json"
    try:
        fmt = json.loads(path.read_text()).get("format")
    except (OSError, json.JSONDecodeError) as e:
        raise FirpCheckpointError(f"cannot read heads config {path}: {e}") from e
    cls = MedusaHeads if fmt == "medusa" else FirpHeads
    return cls.from_pretrained(directory, model_config, dtype=dtype)


def draft_outputs(
    parts: ModelParts, heads: Heads, ids: torch.Tensor, anchors: torch.Tensor, capture_layers: tuple[int, ...] = ()
) -> DraftOutputs:
    if isinstance(heads, MedusaHeads):
        return medusa_outputs(parts, heads, ids, anchors)
    return firp_outputs(parts, heads, ids, anchors, capture_layers)
