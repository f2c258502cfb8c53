"""FIRP configuration: the fields of a heads checkpoint's ``config.json`` (see docs/firp-design)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

FORMAT = "firp"
FORMAT_VERSION = 1
Source = Literal["previous", "anchor"]


class FirpCheckpointError(ValueError):
    """A FIRP heads checkpoint (or its config) is unusable; the message names the problem."""


def default_inject_layer(num_hidden_layers: int) -> int:
    """Where pseudo tokens join by default: 3/4 of the depth, leaving at least one layer to refine them."""
    return max(1, min(num_hidden_layers - 1, math.ceil(0.75 * num_hidden_layers)))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "vocab_size")


def shape_mismatches(config: Any, model_config: Any, what: str) -> list[str]:
    """Fields where a draft ``config`` (FIRP, Medusa, EAGLE-3) disagrees with the served model, described."""
    return [f"{n}: {what} {'have' if what == 'heads' else 'has'} {getattr(config, n)}, model has {getattr(model_config, n)}"
            for n in SHAPE_FIELDS if getattr(model_config, n) != getattr(config, n)]


@dataclass
class FirpConfig:
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

    def __post_init__(self) -> None:
        if isinstance(self.inject_layers, tuple):
            self.inject_layers = list(self.inject_layers)
        self.validate()

    @property
    def K(self) -> int:  # noqa: N802 - the paper's name
        return self.num_future_tokens

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
        def bad(msg: str) -> FirpCheckpointError:
            return FirpCheckpointError(f"invalid FIRP config: {msg}")

        if self.format != FORMAT:
            raise bad(f"format is {self.format!r}, expected {FORMAT!r}")
        if self.format_version != FORMAT_VERSION:
            raise bad(f"format_version {self.format_version} is not supported (this build reads {FORMAT_VERSION})")
        for name in ("hidden_size", "num_hidden_layers", "vocab_size", "num_future_tokens"):
            if not _is_int(getattr(self, name)) or getattr(self, name) <= 0:
                raise bad(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("residual", "bias", "pseudo_attend_each_other"):
            if not isinstance(getattr(self, name), bool):
                raise bad(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.inject_layers, list) or not all(_is_int(t) for t in self.inject_layers):
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

    def check_matches(self, model_config: Any) -> None:
        """Refuse heads trained for another model shape; names every mismatching field."""
        if problems := shape_mismatches(self, model_config, "heads"):
            raise FirpCheckpointError(
                "FIRP heads do not match the model (" + "; ".join(problems) + f"). Heads were trained for "
                f"{self.base_model or 'an unnamed model'}; train heads for this model with `python -m training.train`."
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"format": d.pop("format"), "format_version": d.pop("format_version"), **d}

    def save(self, directory: str | Path) -> None:
        Path(directory, "config.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FirpConfig:
        known = {f.name for f in fields(cls)}
        if d.get("format") != FORMAT:
            raise FirpCheckpointError(
                f"config.json is not a FIRP heads config (format={d.get('format')!r}, expected {FORMAT!r})"
            )
        required = {"hidden_size", "num_hidden_layers", "vocab_size", "num_future_tokens", "inject_layers"}
        missing = sorted(required - d.keys())
        if missing:
            raise FirpCheckpointError(f"FIRP config.json lacks required field(s): {', '.join(missing)}")
        unknown = sorted(d.keys() - known)
        if unknown:
            raise FirpCheckpointError(f"FIRP config.json has unknown field(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def load(cls, directory: str | Path) -> FirpConfig:
        path = Path(directory, "config.json")
        if not Path(directory).is_dir():
            raise FirpCheckpointError(f"FIRP heads directory {str(directory)!r} does not exist")
        if not path.is_file():
            raise FirpCheckpointError(f"{path} is missing: a FIRP heads directory needs config.json")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise FirpCheckpointError(f"{path} is not valid JSON: {e}") from e
        return cls.from_dict(d)
