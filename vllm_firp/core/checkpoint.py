"""What every draft checkpoint shares: ``config.json`` with a ``format`` field, safetensors weights, checks.

FIRP heads (and the trainer's Medusa and EAGLE-3 baselines) are one ``config.json`` plus one
``model.safetensors``. :class:`DraftConfig` and :class:`DraftModule` read, write and check them once,
so a draft kind declares only its fields, its own checks and its math.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .precision import DTYPES

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Weight files we refuse to read: pickle-based formats can run code on load.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "vocab_size")


class FirpCheckpointError(ValueError):
    """A heads checkpoint (or its config) is unusable; the message names the problem."""


def is_int(value: Any) -> bool:
    """A real integer (``True`` is not a layer count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def shape_mismatches(config: Any, model_config: Any, what: str) -> list[str]:
    """Fields where a draft ``config`` disagrees with the served model, described."""
    return [f"{n}: {what} {'have' if what == 'heads' else 'has'} {getattr(config, n)}, model has {getattr(model_config, n)}"
            for n in SHAPE_FIELDS if getattr(model_config, n) != getattr(config, n)]


def read_format(directory: str | Path) -> Any:
    """The ``format`` field of a heads directory's config.json (``None`` when absent): which kind it holds."""
    path = Path(directory, CONFIG_NAME)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FirpCheckpointError(f"cannot read heads config {path}: {e}") from e
    if not isinstance(d, dict):
        raise FirpCheckpointError(f"{path} is not a heads config (a JSON object)")
    return d.get("format")


class DraftConfig:
    """Base of the draft configs (each a dataclass with the fields of its ``config.json``).

    Every kind has ``hidden_size``, ``num_hidden_layers``, ``vocab_size``, ``dtype``, ``base_model``,
    ``training``, ``format`` and ``format_version``; ``K_FIELD`` names the field that counts its drafts.
    """

    FORMAT: ClassVar[str]
    FORMAT_VERSION: ClassVar[int] = 1
    TITLE: ClassVar[str]  # "FIRP heads", "EAGLE-3 draft": how messages name the checkpoint
    NOUN: ClassVar[str] = "heads"  # "heads" (plural) or "draft"
    K_FIELD: ClassVar[str]
    POSITIVE_INTS: ClassVar[tuple[str, ...]] = SHAPE_FIELDS

    format: str
    format_version: int
    base_model: str

    def __post_init__(self) -> None:
        self.validate()

    @property
    def K(self) -> int:  # noqa: N802 - the paper's name
        return getattr(self, self.K_FIELD)

    def invalid(self, message: str) -> FirpCheckpointError:
        return FirpCheckpointError(f"invalid {self.TITLE} config: {message}")

    def validate(self) -> None:
        """Format, version and positive sizes; kinds extend it with checks of their own fields."""
        if self.format != self.FORMAT:
            raise self.invalid(f"format is {self.format!r}, expected {self.FORMAT!r}")
        if self.format_version != self.FORMAT_VERSION:
            raise self.invalid(f"format_version {self.format_version} is not supported "
                               f"(this build reads {self.FORMAT_VERSION})")
        for name in self.POSITIVE_INTS:
            if not is_int(getattr(self, name)) or getattr(self, name) <= 0:
                raise self.invalid(f"{name} must be a positive integer, got {getattr(self, name)!r}")

    def check_matches(self, model_config: Any) -> None:
        """Refuse a checkpoint trained for another model shape; names every mismatching field."""
        if problems := shape_mismatches(self, model_config, self.NOUN):
            verb = "do" if self.NOUN == "heads" else "does"
            raise FirpCheckpointError(
                f"{self.TITLE} {verb} not match the model ({'; '.join(problems)}). They were trained for "
                f"{self.base_model or 'an unnamed model'}; train {self.NOUN} for this model with "
                "`python -m training.train`."
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        return {"format": d.pop("format"), "format_version": d.pop("format_version"), **d}

    def save(self, directory: str | Path) -> None:
        Path(directory, CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """The config of a parsed config.json: wrong format, missing and unknown fields are refused by name."""
        if d.get("format") != cls.FORMAT:
            raise FirpCheckpointError(
                f"config.json is not a {cls.TITLE} config (format={d.get('format')!r}, expected {cls.FORMAT!r})"
            )
        known = fields(cls)  # type: ignore[arg-type]
        required = {f.name for f in known if f.default is MISSING and f.default_factory is MISSING}
        if missing := sorted(required - d.keys()):
            raise FirpCheckpointError(f"{cls.TITLE} config.json lacks required field(s): {', '.join(missing)}")
        if unknown := sorted(d.keys() - {f.name for f in known}):
            raise FirpCheckpointError(f"{cls.TITLE} config.json has unknown field(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def load(cls, directory: str | Path) -> Any:
        path = Path(directory, CONFIG_NAME)
        if not Path(directory).is_dir():
            raise FirpCheckpointError(f"{cls.TITLE} directory {str(directory)!r} does not exist")
        if not path.is_file():
            raise FirpCheckpointError(f"{path} is missing: a {cls.TITLE} directory needs {CONFIG_NAME}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise FirpCheckpointError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise FirpCheckpointError(f"{path} is not a {cls.TITLE} config (a JSON object)")
        return cls.from_dict(d)


class DraftModule(nn.Module):
    """Base of the draft modules: the config, K, and the checkpoint that every kind saves and loads alike."""

    config_class: ClassVar[type[DraftConfig]]

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    @property
    def K(self) -> int:  # noqa: N802
        return self.config.K

    def save_pretrained(self, directory: str | Path) -> None:
        """``config.json`` (its dtype set to the weights') and ``model.safetensors`` in ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.dtype = str(next(self.parameters()).dtype).removeprefix("torch.")
        self.config.save(directory)
        save_weights(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, model_config: Any | None = None,
                        dtype: torch.dtype | None = None) -> Any:
        """Load and validate (config fields; with ``model_config`` its shape; tensors, NaN/Inf, no pickles)."""
        directory = Path(directory)
        config = cls.config_class.load(directory)
        if model_config is not None:
            config.check_matches(model_config)
        module = cls(config)
        module.load_state_dict(load_checked_weights(directory, module), strict=True)
        return module.to(dtype or DTYPES[config.dtype]).eval()


def save_weights(module: nn.Module, directory: Path) -> None:
    """The module's state dict as ``model.safetensors`` in ``directory``."""
    tensors = {name: p.detach().contiguous().cpu() for name, p in module.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})


def load_checked_weights(directory: Path, module: nn.Module) -> dict[str, torch.Tensor]:
    """``model.safetensors`` of a heads directory, checked against ``module``'s state dict.

    Refuses pickle weight files, a missing or unreadable file, missing/unexpected tensors, wrong
    shapes and NaN/Inf values, each with a message naming the file and tensor.
    """
    weights = _weights_file(directory)
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise FirpCheckpointError(f"cannot read {weights}: {e}") from e
    _check_tensors(module, tensors, weights)
    return tensors


def _weights_file(directory: Path) -> Path:
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    weights = directory / WEIGHTS_NAME
    if pickles:
        raise FirpCheckpointError(
            f"refusing pickle weight file(s) {pickles} in {directory}: pickle can run code on load; "
            f"heads are read from {WEIGHTS_NAME} (safetensors) only"
        )
    if not weights.is_file():
        raise FirpCheckpointError(f"{weights} is missing: heads need their weights in {WEIGHTS_NAME}")
    return weights


def _check_tensors(module: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = {name: p.shape for name, p in module.state_dict().items()}
    missing = sorted(expected.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - expected.keys())
    if missing:
        raise FirpCheckpointError(f"{path} lacks tensor(s) {missing} required by its config.json")
    if unexpected:
        raise FirpCheckpointError(f"{path} has tensor(s) {unexpected} that its config.json does not describe")
    for name, shape in expected.items():
        t = tensors[name]
        if t.shape != shape:
            raise FirpCheckpointError(f"{path}: tensor {name} has shape {list(t.shape)}, expected {list(shape)}")
        if not torch.isfinite(t.float()).all():
            raise FirpCheckpointError(f"{path}: tensor {name} contains NaN or Inf values")
