"""FIRP configuration: the fields of a heads checkpoint's ``config.json`` (see docs/firp-design)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from .checkpoint import SHAPE_FIELDS, DraftConfig, is_int

FORMAT = "firp"
FORMAT_VERSION = 1
Source = Literal["previous", "anchor"]


def default_inject_layer(num_hidden_layers: int) -> int:
    """Where pseudo tokens join by default: 3/4 of the depth, leaving at least one layer to refine them."""
    return max(1, min(num_hidden_layers - 1, math.ceil(0.75 * num_hidden_layers)))


@dataclass
class FirpConfig(DraftConfig):
    """Shape and wiring of the K pseudo-token projections.

    ``inject_layers[k-1]`` = t_k: pseudo k enters the residual stream after decoder layer t_k
    (1-based, 1 <= t_1 <= ... <= t_K < L). ``source="previous"`` feeds pseudo k from pseudo k-1
    (serial, the default); ``"anchor"`` feeds every pseudo from the anchor's own state (parallel).
    """

    hidden_size: int
    num_hidden_layers: int
    vocab_size: int
    num_future_tokens: int
    inject_layers: list[int]
    source: Source = "previous"
    residual: bool = False
    bias: bool = True
    pseudo_attend_each_other: bool = True
    dtype: str = "float32"
    base_model: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    FORMAT = FORMAT
    FORMAT_VERSION = FORMAT_VERSION
    TITLE = "FIRP heads"
    K_FIELD = "num_future_tokens"
    POSITIVE_INTS = (*SHAPE_FIELDS, "num_future_tokens")

    def __post_init__(self) -> None:
        if isinstance(self.inject_layers, tuple):
            self.inject_layers = list(self.inject_layers)
        self.validate()

    @classmethod
    def for_model(
        cls, model_config: Any, num_future_tokens: int = 3, inject_layer: int | list[int] | None = None, **kw: Any
    ) -> FirpConfig:
        """A config matching an HF model config; default inject layer is 3/4 of the depth."""
        n_layers = model_config.num_hidden_layers
        if inject_layer is None:
            inject_layer = default_inject_layer(n_layers)
        layers = list(inject_layer) if isinstance(inject_layer, (list, tuple)) else [inject_layer] * num_future_tokens
        return cls(
            hidden_size=model_config.hidden_size,
            num_hidden_layers=n_layers,
            vocab_size=model_config.vocab_size,
            num_future_tokens=num_future_tokens,
            inject_layers=layers,
            base_model=str(getattr(model_config, "_name_or_path", "") or ""),
            **kw,
        )

    def validate(self) -> None:
        super().validate()
        bad = self.invalid
        for name in ("residual", "bias", "pseudo_attend_each_other"):
            if not isinstance(getattr(self, name), bool):
                raise bad(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.inject_layers, list) or not all(is_int(t) for t in self.inject_layers):
            raise bad(f"inject_layers must be a list of integer layer numbers, got {self.inject_layers!r}")
        if len(self.inject_layers) != self.num_future_tokens:
            raise bad(
                f"inject_layers has {len(self.inject_layers)} entries but num_future_tokens is "
                f"{self.num_future_tokens}: give one layer per pseudo token"
            )
        L = self.num_hidden_layers
        if any(not 1 <= t < L for t in self.inject_layers):
            raise bad(f"inject_layers {self.inject_layers} must lie in 1..{L - 1} (the model has {L} layers)")
        if self.inject_layers != sorted(self.inject_layers):
            raise bad(f"inject_layers {self.inject_layers} must be non-decreasing")
        if self.source not in ("previous", "anchor"):
            raise bad(f"source must be 'previous' or 'anchor', got {self.source!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise bad(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
