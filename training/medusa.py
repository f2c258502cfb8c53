"""Medusa-1 baseline: K ResBlock heads on the last final-normed hidden state, decoded by the base LM head.

Head k maps h_i (final-normed state of position i) to ``h_i + SiLU(W_k h_i + b_k)`` and drafts
x_{i+k+1} through the base model's own (frozen, shared) LM head. Sharing the LM head keeps the
trainable budget at K*(d*d + d), the same as FIRP's projections, so the comparison is fair; original
Medusa trains a full LM-head copy per head. Trained with the same data, steps and KL-to-teacher loss.

Checkpoint: ``config.json`` (``"format": "medusa"``) + ``model.safetensors`` (``resblock.{k}.weight``,
``resblock.{k}.bias``). :class:`MedusaDrafter` plugs the heads into the reference engine;
:func:`export_medusa_for_vllm` writes them in vLLM's own ``method: "medusa"`` format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file
from torch import nn

from vllm_firp.core import DraftConfig, DraftModule, causal_layout
from vllm_firp.engine.drafters import DraftContext
from vllm_firp.engine.forward import ModelParts, forward_rows, new_cache

from .draft_kind import DraftKind
from .export_inputs import WEIGHTS, check_heads_format, model_config_json, model_shape, target_lm_head
from .objective import DraftOutputs

if TYPE_CHECKING:
    from vllm_firp.engine.engine import FirpEngine

    from .teacher_cache import TeacherRecord

FORMAT = "medusa"
FORMAT_VERSION = 1


@dataclass
class MedusaConfig(DraftConfig):
    hidden_size: int
    num_hidden_layers: int
    vocab_size: int
    num_heads: int  # K
    dtype: str = "float32"
    base_model: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    FORMAT = FORMAT
    FORMAT_VERSION = FORMAT_VERSION
    TITLE = "Medusa heads"
    K_FIELD = "num_heads"
    POSITIVE_INTS = ("hidden_size", "num_hidden_layers", "vocab_size", "num_heads")

    @classmethod
    def for_model(cls, model_config: Any, num_heads: int = 3, **kw: Any) -> MedusaConfig:
        return cls(model_config.hidden_size, model_config.num_hidden_layers, model_config.vocab_size, num_heads,
                   base_model=str(getattr(model_config, "_name_or_path", "") or ""), **kw)


class MedusaHeads(DraftModule):
    """``h + SiLU(W_k h + b_k)`` per head k; W_k starts at 0, so every head starts as the base LM head."""

    config_class = MedusaConfig
    config: MedusaConfig

    def __init__(self, config: MedusaConfig) -> None:
        super().__init__(config)
        d = config.hidden_size
        self.resblock = nn.ModuleDict({str(k): nn.Linear(d, d) for k in range(1, config.K + 1)})
        for lin in self.resblock.values():
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """States to decode with the LM head: [..., d] -> [K, ..., d]."""
        x = hidden.to(self.resblock["1"].weight.dtype)
        return torch.stack([x + nn.functional.silu(self.resblock[str(k)](x)) for k in range(1, self.K + 1)])


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


def export_medusa_for_vllm(heads_dir: str | Path, model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir`` for ``speculative_config={"method": "medusa", "model": out_dir, ...}``.

    ``num_speculative_tokens`` must not exceed the number of heads: vLLM sets its head count to it and
    any extra head would be built without weights.
    """
    heads_dir, model_dir, out_dir = Path(heads_dir), Path(model_dir), Path(out_dir)
    check_heads_format(heads_dir, FORMAT)
    mcfg = model_config_json(model_dir)
    # Refuses pickles, missing/extra tensors, shapes that do not match the model, and NaN/Inf.
    heads = MedusaHeads.from_pretrained(heads_dir, model_config=model_shape(mcfg))
    tensors: dict[str, torch.Tensor] = {}
    for k in range(1, heads.K + 1):
        lin = heads.resblock[str(k)]
        tensors[f"blocks.{k - 1}.layers.0.weight"] = lin.weight.detach().contiguous()
        tensors[f"blocks.{k - 1}.layers.0.bias"] = lin.bias.detach().contiguous()
    tensors["lm_head.weight"] = target_lm_head(model_dir, mcfg).contiguous()

    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "medusa", "architectures": ["MedusaModel"],
        "hidden_size": mcfg["hidden_size"], "vocab_size": mcfg["vocab_size"],
        "truncated_vocab_size": mcfg["vocab_size"],
        "num_heads": heads.K, "num_hidden_layers": 1,  # vLLM: residual layers per head
        "medusa_fc_bias": True, "original_lm_head": True,
        "base_model": str(model_dir), "source_heads": str(heads_dir),
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    return out_dir


class MedusaKind(DraftKind):
    module = MedusaHeads

    def outputs(self, parts: ModelParts, heads: MedusaHeads, ids: torch.Tensor, anchors: torch.Tensor,
                capture_layers: tuple[int, ...] = ()) -> DraftOutputs:
        return medusa_outputs(parts, heads, ids, anchors)

    def cached_logits(self, parts: ModelParts, heads: MedusaHeads, rec: TeacherRecord,
                      anchors: torch.Tensor) -> torch.Tensor:
        final = rec.state(parts.num_layers)
        return parts.lm_head(heads(final[anchors]).to(final.dtype)).float()

    def reference_engine(self, model: Any, heads: MedusaHeads) -> tuple[FirpEngine, MedusaDrafter]:
        from vllm_firp.engine.engine import FirpEngine

        engine = FirpEngine(model, None)
        return engine, MedusaDrafter(heads, engine.parts.lm_head)

    def export_for_vllm(self, heads_dir: str | Path, model_dir: str | Path, out_dir: str | Path) -> Path:
        return export_medusa_for_vllm(heads_dir, model_dir, out_dir)


MEDUSA = MedusaKind()
