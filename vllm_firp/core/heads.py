"""The K trainable projections that turn a layer-t state into pseudo hidden states, and their checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import FirpCheckpointError, FirpConfig
from .precision import DTYPES

WEIGHTS_NAME = "model.safetensors"
# Weight files we refuse to read: pickle-based formats can run code on load.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class FirpHeads(nn.Module):
    """``z_k = W_k s_k + b_k`` (plus ``s_k`` when residual) for k = 1..K.

    The module knows nothing about the transformer: engines call :meth:`pseudo_state` at the layer
    boundary ``inject_layers[k-1]`` with the right source state (see :meth:`source_for`).
    """

    def __init__(self, config: FirpConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        # Keys "1".."K" give the checkpoint names proj.{k}.weight of the design doc.
        self.proj = nn.ModuleDict({str(k): nn.Linear(d, d, bias=config.bias) for k in range(1, config.K + 1)})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Identity-like start (W=I, or W=0 when residual): pseudo k begins as a copy of its source."""
        for lin in self.proj.values():
            if self.config.residual:
                nn.init.zeros_(lin.weight)
            else:
                with torch.no_grad():
                    lin.weight.copy_(torch.eye(self.config.hidden_size))
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    @property
    def K(self) -> int:  # noqa: N802
        return self.config.K

    def pseudo_state(self, k: int, source: torch.Tensor) -> torch.Tensor:
        """State of pseudo k right after layer t_k, from its source state ``s_k`` (any leading dims)."""
        lin = self.proj[str(k)]
        z = nn.functional.linear(source.to(lin.weight.dtype), lin.weight, lin.bias)
        return (z + source.to(z.dtype) if self.config.residual else z).to(source.dtype)

    def source_for(self, k: int, anchor_state: torch.Tensor, previous_pseudo: torch.Tensor | None) -> torch.Tensor:
        """``s_k``: the anchor's state at layer t_k, or pseudo k-1's state there (serial source)."""
        if self.config.source == "anchor" or k == 1:
            return anchor_state
        assert previous_pseudo is not None, "serial source needs pseudo k-1's state"
        return previous_pseudo

    def injections_after(self, layer: int) -> list[int]:
        """Pseudo indices k (1-based) that enter the stream after decoder layer ``layer`` (1-based)."""
        return [k for k, t in enumerate(self.config.inject_layers, start=1) if t == layer]

    def pseudo_states_uniform(self, h_t: torch.Tensor) -> torch.Tensor:
        """All K pseudo states [..., K, d] when every pseudo enters at the same layer t (from h^(t))."""
        t = self.config.inject_layers
        if len(set(t)) != 1:
            raise ValueError(f"pseudo_states_uniform needs one inject layer, config has {t}")
        out, prev = [], None
        for k in range(1, self.K + 1):
            prev = self.pseudo_state(k, self.source_for(k, h_t, prev))
            out.append(prev)
        return torch.stack(out, dim=-2)

    # ------------------------------------------------------------------ checkpoint
    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.dtype = str(next(self.parameters()).dtype).removeprefix("torch.")
        self.config.save(directory)
        save_weights(self, directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, model_config: object | None = None, dtype: torch.dtype | None = None
    ) -> FirpHeads:
        """Load and validate heads; with ``model_config`` also check they fit that model."""
        directory = Path(directory)
        config = FirpConfig.load(directory)
        if model_config is not None:
            config.check_matches(model_config)
        heads = cls(config)
        heads.load_state_dict(load_checked_weights(directory, heads), strict=True)
        target = dtype or DTYPES[config.dtype]
        return heads.to(target).eval()


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
