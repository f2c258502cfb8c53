"""The trainable draft methods behind one small interface: build, run, load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vllm_firp.core import FirpCheckpointError, FirpConfig, FirpHeads
from vllm_firp.engine.hf_model import ModelParts

from .eagle3 import Eagle3Config, Eagle3Draft, eagle3_outputs
from .medusa import MedusaConfig, MedusaHeads, medusa_outputs
from .objective import DraftOutputs, firp_outputs

METHODS = ("firp", "medusa", "eagle3")
Heads = FirpHeads | MedusaHeads | Eagle3Draft


def method_of(heads: nn.Module) -> str:
    return {MedusaHeads: "medusa", Eagle3Draft: "eagle3"}.get(type(heads), "firp")


def new_heads(method: str, model_config: Any, K: int, eagle3_kw: dict[str, Any] | None = None,
              **firp_kw: Any) -> Heads:
    """Freshly initialised heads for ``model_config`` (FIRP options apply to FIRP only, ``eagle3_kw`` to EAGLE-3)."""
    if method == "firp":
        return FirpHeads(FirpConfig.for_model(model_config, K, **firp_kw))
    if method == "medusa":
        return MedusaHeads(MedusaConfig.for_model(model_config, K))
    if method == "eagle3":
        return Eagle3Draft(Eagle3Config.for_model(model_config, K, **(eagle3_kw or {})))
    raise ValueError(f"method must be one of {METHODS}, not {method!r}")


def load_heads(directory: str | Path, model_config: Any | None = None, dtype: torch.dtype | None = None) -> Heads:
    """FIRP, Medusa or EAGLE-3 heads, by the ``format`` in their config.json; validated against the model."""
    path = Path(directory) / "config.json"
    try:
        fmt = json.loads(path.read_text()).get("format")
    except (OSError, json.JSONDecodeError) as e:
        raise FirpCheckpointError(f"cannot read heads config {path}: {e}") from e
    cls = {"medusa": MedusaHeads, "eagle3": Eagle3Draft}.get(fmt, FirpHeads)
    return cls.from_pretrained(directory, model_config, dtype=dtype)


def draft_outputs(
    parts: ModelParts, heads: Heads, ids: torch.Tensor, anchors: torch.Tensor, capture_layers: tuple[int, ...] = ()
) -> DraftOutputs:
    if isinstance(heads, MedusaHeads):
        return medusa_outputs(parts, heads, ids, anchors)
    if isinstance(heads, Eagle3Draft):
        return eagle3_outputs(parts, heads, ids, anchors)
    return firp_outputs(parts, heads, ids, anchors, capture_layers)
