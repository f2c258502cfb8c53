"""FIRP as a trainable draft kind: the teacher and the student in one pass, or the student on a cached teacher.

The heads and their checkpoint are the product's (:class:`vllm_firp.core.FirpHeads`); vLLM serves a
heads directory as it is, through the plugin's ``method: "firp"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vllm_firp.core import FirpHeads, causal_layout
from vllm_firp.engine.forward import ModelParts, forward_rows, new_cache, pseudo_forward

from .draft_kind import DraftKind
from .objective import DraftOutputs

if TYPE_CHECKING:
    from vllm_firp.engine.drafters import Drafter
    from vllm_firp.engine.engine import FirpEngine

    from .teacher_cache import TeacherRecord


def firp_outputs(
    parts: ModelParts,
    heads: FirpHeads,
    ids: torch.Tensor,
    anchors: torch.Tensor,
    capture_layers: tuple[int, ...] = (),
) -> DraftOutputs:
    """Teacher + FIRP student in one pass; pseudo rows are k-major, so the drafts are a [K, A] view.

    Real rows never see pseudo rows, so the teacher part is exact and FIRP needs no separate student pass.
    """
    T, K = ids.shape[0], heads.K
    layout = causal_layout(T, anchors, K, heads.config.pseudo_attend_each_other)
    hidden, captured = forward_rows(parts, ids, layout, new_cache(), heads, capture_layers)
    with torch.no_grad():
        teacher = parts.lm_head(hidden[:T].detach()).float()
    drafts = parts.lm_head(hidden[T:]).float().view(K, anchors.numel(), -1)
    return DraftOutputs(drafts, teacher, anchors.to(ids.device), captured)


def firp_cached_logits(parts: ModelParts, heads: FirpHeads, rec: TeacherRecord, anchors: torch.Tensor) -> torch.Tensor:
    """FIRP drafts [K, A, V]: pseudo rows only, attending to the cached real K/V."""
    K, A = heads.K, anchors.numel()
    layout = causal_layout(rec.ids.shape[0], anchors, K, heads.config.pseudo_attend_each_other)
    needed = set(heads.config.inject_layers) if heads.config.source == "anchor" else {heads.config.inject_layers[0]}
    states = {t: rec.state(t)[anchors] for t in needed}
    hidden = pseudo_forward(parts, heads, layout, states, rec.cache_from(heads.config.inject_layers[0]))
    return parts.lm_head(hidden).float().view(K, A, -1)


class FirpKind(DraftKind):
    module = FirpHeads
    options = ("inject_layer", "source", "residual", "bias", "pseudo_attend_each_other")

    def capture_layers(self, heads: FirpHeads, num_layers: int) -> tuple[int, ...]:
        return tuple(range(min(heads.config.inject_layers), num_layers + 1))

    def outputs(self, parts: ModelParts, heads: FirpHeads, ids: torch.Tensor, anchors: torch.Tensor,
                capture_layers: tuple[int, ...] = ()) -> DraftOutputs:
        return firp_outputs(parts, heads, ids, anchors, capture_layers)

    def cached_logits(self, parts: ModelParts, heads: FirpHeads, rec: TeacherRecord,
                      anchors: torch.Tensor) -> torch.Tensor:
        return firp_cached_logits(parts, heads, rec, anchors)

    def reference_engine(self, model: Any, heads: FirpHeads) -> tuple[FirpEngine, Drafter | None]:
        from vllm_firp.engine.engine import FirpEngine

        return FirpEngine(model, heads), None

    def export_for_vllm(self, heads_dir: str | Path, model_dir: str | Path, out_dir: str | Path) -> Path:
        """The heads directory itself, once it loads: the plugin reads FIRP heads as they are."""
        FirpHeads.from_pretrained(heads_dir)
        return Path(heads_dir)


FIRP = FirpKind()
