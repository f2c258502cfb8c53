"""What the trainer needs of a draft kind, as one object: make, load, run, run on a cached teacher, export.

Each kind (``firp``, ``medusa``, ``eagle3``) is one :class:`DraftKind` in its own module, named by the
``format`` its checkpoints carry; ``training.kinds`` registers them, so nothing dispatches on types.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from vllm_firp.core import DraftModule
from vllm_firp.engine.forward import ModelParts

from .objective import DraftOutputs

if TYPE_CHECKING:
    from vllm_firp.engine.drafters import Drafter
    from vllm_firp.engine.engine import FirpEngine

    from .teacher_cache import TeacherRecord


class DraftKind:
    """One draft kind. Subclasses set ``module`` (its :class:`DraftModule`) and ``options``, and run it."""

    module: ClassVar[type[DraftModule]]
    options: ClassVar[tuple[str, ...]] = ()  # keywords of ``new`` this kind reads; others are for other kinds

    @property
    def format(self) -> str:
        """The ``format`` field of this kind's config.json, which is also its ``--method`` name."""
        return self.module.config_class.FORMAT

    def new(self, model_config: Any, K: int, **options: Any) -> Any:
        """Freshly initialised drafts for ``model_config``; options this kind does not read are ignored."""
        mine = {k: v for k, v in options.items() if k in self.options}
        return self.module(self.module.config_class.for_model(model_config, K, **mine))  # type: ignore[attr-defined]

    def load(self, directory: str | Path, model_config: Any | None = None, dtype: torch.dtype | None = None) -> Any:
        return self.module.from_pretrained(directory, model_config, dtype=dtype)

    def capture_layers(self, heads: Any, num_layers: int) -> tuple[int, ...]:
        """Layers whose states :meth:`outputs` should also return (FIRP's cosine diagnostics; else none)."""
        return ()

    def outputs(self, parts: ModelParts, heads: Any, ids: torch.Tensor, anchors: torch.Tensor,
                capture_layers: tuple[int, ...] = ()) -> DraftOutputs:
        """Draft logits for ``anchors`` and the teacher's logits, with the teacher run here."""
        raise NotImplementedError

    def cached_logits(self, parts: ModelParts, heads: Any, rec: TeacherRecord, anchors: torch.Tensor) -> torch.Tensor:
        """Draft logits [K, A, V] for ``anchors`` from a cached teacher pass (no base layer re-run)."""
        raise NotImplementedError

    def cached_outputs(self, parts: ModelParts, heads: Any, rec: TeacherRecord, anchors: torch.Tensor) -> DraftOutputs:
        """:meth:`outputs` with the cached teacher (its top-k) as the target."""
        anchors = anchors.to(rec.ids.device)
        return DraftOutputs(self.cached_logits(parts, heads, rec, anchors), None, anchors,
                            teacher_top=(rec.top_ids, rec.top_logp))

    def reference_engine(self, model: Any, heads: Any) -> tuple[FirpEngine, Drafter | None]:
        """The reference engine drafting with these heads, and the drafter to pass to ``generate``."""
        raise NotImplementedError(f"the reference engine does not draft with {self.format} heads")

    def export_for_vllm(self, heads_dir: str | Path, model_dir: str | Path, out_dir: str | Path) -> Path:
        """A directory vLLM serves these heads from (``out_dir`` when a conversion is needed)."""
        raise NotImplementedError
