"""The registered draft kinds, by the ``format`` name their checkpoints carry, and the calls that pick one.

To add a kind: write its :class:`DraftKind` in its own module and list it in ``KINDS`` below.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vllm_firp.core import DraftModule, read_format
from vllm_firp.engine.forward import ModelParts

from .draft_kind import DraftKind
from .eagle3 import EAGLE3
from .firp import FIRP
from .medusa import MEDUSA
from .objective import DraftOutputs

if TYPE_CHECKING:
    from .teacher_cache import TeacherRecord

KINDS: dict[str, DraftKind] = {kind.format: kind for kind in (FIRP, MEDUSA, EAGLE3)}
METHODS = tuple(KINDS)
Heads = DraftModule


def kind(method: str) -> DraftKind:
    """The kind called ``method`` (its ``--method`` and ``format`` name)."""
    if method not in KINDS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    return KINDS[method]


def kind_of(heads: DraftModule) -> DraftKind:
    return KINDS[heads.config.format]


def method_of(heads: DraftModule) -> str:
    return kind_of(heads).format


def new_heads(method: str, model_config: Any, K: int, **options: Any) -> Heads:
    """Freshly initialised heads for ``model_config``; each kind reads the options it knows (see its ``options``)."""
    return kind(method).new(model_config, K, **options)


def load_heads(directory: str | Path, model_config: Any | None = None, dtype: torch.dtype | None = None) -> Heads:
    """Heads of any kind, by the ``format`` in their config.json (none: FIRP); validated against the model."""
    return KINDS.get(read_format(directory), FIRP).load(directory, model_config, dtype=dtype)


def draft_outputs(
    parts: ModelParts, heads: Heads, ids: torch.Tensor, anchors: torch.Tensor, capture_layers: tuple[int, ...] = ()
) -> DraftOutputs:
    return kind_of(heads).outputs(parts, heads, ids, anchors, capture_layers)


def cached_draft_outputs(parts: ModelParts, heads: Heads, rec: TeacherRecord, anchors: torch.Tensor) -> DraftOutputs:
    """The drafts of ``heads`` for ``anchors``, with the cached teacher as target (a compact record's upper layers
    recomputed first)."""
    return kind_of(heads).cached_outputs(parts, heads, rec.complete(parts), anchors)
