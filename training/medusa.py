"""Medusa-1 baseline: K ResBlock heads on the last final-normed hidden state, decoded by the base LM head.

Head k maps h_i (final-normed state of position i) to ``h_i + SiLU(W_k h_i + b_k)`` and drafts
x_{i+k+1} through the base model's own (frozen, shared) LM head. Sharing the LM head keeps the
trainable budget at K*(d*d + d), the same as FIRP's projections, so the comparison is fair; original
Medusa trains a full LM-head copy per head. Trained with the same data, steps and KL-to-teacher loss.

Checkpoint: ``config.json`` (``"format": "medusa"``) + ``model.safetensors`` (``resblock.{k}.weight``,
``resblock.{k}.bias``). :class:`MedusaDrafter` plugs the heads into the reference engine.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vllm_firp.core import FirpCheckpointError, causal_layout
from vllm_firp.core.config import shape_mismatches
from vllm_firp.core.heads import DTYPES, load_checked_weights, save_weights
from vllm_firp.engine.drafters import DraftContext
from vllm_firp.engine.hf_model import ModelParts, forward_rows, new_cache

from .objective import DraftOutputs

FORMAT = "medusa"
FORMAT_VERSION = 1


@dataclass
class MedusaConfig:
    hidden_size: int
    num_hidden_layers: int
    vocab_size: int
    num_heads: int  # K
    dtype: str = "float32"
    base_model: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format != FORMAT or self.format_version != FORMAT_VERSION:
            raise FirpCheckpointError(
                f"not a Medusa heads config (format={self.format!r} v{self.format_version}, "
                f"expected {FORMAT!r} v{FORMAT_VERSION})"
            )
        for name in ("hidden_size", "num_hidden_layers", "vocab_size", "num_heads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise FirpCheckpointError(f"invalid Medusa config: {name} must be a positive integer")

    @property
    def K(self) -> int:  # noqa: N802
        return self.num_heads

    @classmethod
    def for_model(cls, model_config: Any, num_heads: int = 3, **kw: Any) -> MedusaConfig:
        return cls(model_config.hidden_size, model_config.num_hidden_layers, model_config.vocab_size, num_heads,
                   base_model=str(getattr(model_config, "_name_or_path", "") or ""), **kw)

    def check_matches(self, model_config: Any) -> None:
        if bad := shape_mismatches(self, model_config, "heads"):
            raise FirpCheckpointError(f"Medusa heads do not match the model ({'; '.join(bad)}); heads were "
                                      f"trained for {self.base_model or 'an unnamed model'}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"format": d.pop("format"), "format_version": d.pop("format_version"), **d}


class MedusaHeads(nn.Module):
    """``h + SiLU(W_k h + b_k)`` per head k; W_k starts at 0, so every head starts as the base LM head."""

    def __init__(self, config: MedusaConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.resblock = nn.ModuleDict({str(k): nn.Linear(d, d) for k in range(1, config.K + 1)})
        for lin in self.resblock.values():
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    @property
    def K(self) -> int:  # noqa: N802
        return self.config.K

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """States to decode with the LM head: [..., d] -> [K, ..., d]."""
        x = hidden.to(self.resblock["1"].weight.dtype)
        return torch.stack([x + nn.functional.silu(self.resblock[str(k)](x)) for k in range(1, self.K + 1)])

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.dtype = str(next(self.parameters()).dtype).removeprefix("torch.")
        (directory / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        save_weights(self, directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, model_config: Any | None = None, dtype: torch.dtype | None = None
    ) -> MedusaHeads:
        directory = Path(directory)
        cfg_path = directory / "config.json"
        if not cfg_path.is_file():
            raise FirpCheckpointError(f"{cfg_path} is missing: Medusa heads need config.json")
        try:
            config = MedusaConfig(**json.loads(cfg_path.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise FirpCheckpointError(f"{cfg_path} is not a valid Medusa config: {e}") from e
        if model_config is not None:
            config.check_matches(model_config)
        heads = cls(config)
        tensors = load_checked_weights(directory, heads)
        heads.load_state_dict(tensors)
        return heads.to(dtype or DTYPES[config.dtype]).eval()


def medusa_outputs(parts: ModelParts, heads: MedusaHeads, ids: torch.Tensor, anchors: torch.Tensor) -> DraftOutputs:
    """Teacher pass without pseudo rows (no grad), then the heads on the anchors' final states."""
    T = ids.shape[0]
    layout = causal_layout(T)
    with torch.no_grad():
        hidden, _ = forward_rows(parts, ids, layout, new_cache())
        teacher = parts.lm_head(hidden).float()
    anchors = anchors.to(ids.device)
    drafts = parts.lm_head(heads(hidden[anchors]).to(hidden.dtype)).float()  # [K, A, V]
    return DraftOutputs(drafts, teacher, anchors)


class MedusaDrafter:
    """Engine drafter: candidates[d-1] = top-k of head d on the last accepted node's final state."""

    num_pseudo = 0

    def __init__(self, heads: MedusaHeads, lm_head: nn.Module) -> None:
        self.heads, self.lm_head = heads.eval(), lm_head

    @torch.inference_mode()
    def propose(self, ctx: DraftContext, depth: int, topk: int) -> torch.Tensor:
        h = ctx.last_hidden
        states = self.heads.to(h.device)(h)[:depth].to(h.dtype)  # [D, d]
        return self.lm_head(states).topk(topk, dim=-1).indices
