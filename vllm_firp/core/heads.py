"""The K trainable projections that turn a layer-t state into pseudo hidden states, and their checkpoint."""

from __future__ import annotations

import torch
from torch import nn

from .checkpoint import DraftModule
from .config import FirpConfig


class FirpHeads(DraftModule):
    """``z_k = W_k s_k + b_k`` (plus ``s_k`` when residual) for k = 1..K.

    The module knows nothing about the transformer: engines call :meth:`pseudo_state` at the layer
    boundary ``inject_layers[k-1]`` with the right source state (see :meth:`source_for`).
    """

    config_class = FirpConfig
    config: FirpConfig

    def __init__(self, config: FirpConfig) -> None:
        super().__init__(config)
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
