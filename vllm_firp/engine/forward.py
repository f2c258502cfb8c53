"""One forward pass of an HF decoder-only model with FIRP pseudo rows joining mid-stack.

This is the only place that drives an HF model layer by layer. The reference engine and the trainer
both call :func:`forward_rows`; masks and positions come from :mod:`vllm_firp.core.layout`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache

from ..core import FirpHeads, StepLayout, causal_layout

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class ModelParts:
    """The pieces of an HF causal LM that FIRP needs, and per-layer attention windows."""

    embed: nn.Module
    layers: nn.ModuleList
    rotary: nn.Module
    norm: nn.Module
    lm_head: nn.Module
    windows: list[int | None]  # sliding-window size per layer (None = full attention)
    max_positions: int

    @classmethod
    def of(cls, model: PreTrainedModel) -> ModelParts:
        cfg = model.config
        if cfg.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type {cfg.model_type!r} is not supported by the reference engine "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        if cfg._attn_implementation != "sdpa":
            # Our masks are boolean SDPA masks; eager attention would add them as numbers.
            model.set_attn_implementation("sdpa")
        inner = model.model
        return cls(
            inner.embed_tokens,
            inner.layers,
            inner.rotary_emb,
            inner.norm,
            model.lm_head,
            _layer_windows(cfg),
            int(cfg.max_position_embeddings),
        )

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def _layer_windows(cfg) -> list[int | None]:
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
    if cfg.model_type == "mistral":  # Mistral applies its window (if any) on every layer
        return [window] * cfg.num_hidden_layers
    return [window if kind == "sliding_attention" and window else None for kind in types]


def new_cache() -> DynamicCache:
    """A plain growing cache (no per-layer sliding cache: the masks apply windows themselves)."""
    return DynamicCache()


def cache_length(cache: DynamicCache) -> int:
    return cache.get_seq_length()


def commit_rows(cache: DynamicCache, past_len: int, keep: torch.Tensor) -> None:
    """Keep the committed prefix plus the rows ``keep`` (indices into this pass's rows) in every layer."""
    for layer in cache.layers:
        if not layer.is_initialized:
            continue
        idx = past_len + keep.to(layer.keys.device)
        layer.keys = torch.cat([layer.keys[:, :, :past_len], layer.keys[:, :, idx]], dim=2)
        layer.values = torch.cat([layer.values[:, :, :past_len], layer.values[:, :, idx]], dim=2)


def _layer_masks(
    parts: ModelParts, layout: StepLayout, positions: torch.Tensor, past_len: int, rows_per_layer: list[int]
) -> list[torch.Tensor]:
    """4-D boolean SDPA masks, one per layer, built once per distinct (rows, window)."""
    built: dict[tuple[int, int | None], torch.Tensor] = {}
    masks = []
    device = positions.device
    key_pos = torch.cat([torch.arange(past_len, device=device), positions])
    for rows, window in zip(rows_per_layer, parts.windows, strict=True):
        key = (rows, window)
        if key not in built:
            mask = layout.attention_mask(past_len, rows).to(device)
            if window is not None:
                mask &= (positions[:rows, None] - key_pos[None, : past_len + rows]) < window
            built[key] = mask[None, None]
        masks.append(built[key])
    return masks


def _rows_per_layer(parts: ModelParts, heads: FirpHeads | None, layout: StepLayout) -> tuple[list[int], list[int]]:
    """``alive[l]``: pseudo tokens in the stream after layer l; ``rows[i]``: rows layer i+1 runs on (sees alive[i])."""
    inject = [0] * (parts.num_layers + 1)
    for t in heads.config.inject_layers[: layout.K] if layout.K else []:
        inject[t] += 1
    alive = [sum(inject[: n + 1]) for n in range(parts.num_layers + 1)]
    return alive, [layout.rows_alive(alive[i]) for i in range(parts.num_layers)]


def forward_rows(
    parts: ModelParts,
    input_ids: torch.Tensor,
    layout: StepLayout,
    cache: DynamicCache,
    heads: FirpHeads | None = None,
    capture_layers: tuple[int, ...] = (),
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Run ``input_ids`` ([N], the real rows) plus the layout's pseudo rows through the model.

    Pseudo k joins after layer ``inject_layers[k-1]`` as ``heads.pseudo_state(k, s_k)``. K/V of every
    row is appended to ``cache``; call :func:`commit_rows` afterwards to keep only what was accepted.
    Returns the final-normed states of all rows ([R, d], real rows first) and, for each layer number
    in ``capture_layers``, the residual stream after that layer (rows alive there).
    """
    if layout.K and heads is None:
        raise ValueError("a layout with pseudo rows needs FIRP heads")
    n_real, A = layout.num_real, layout.num_anchors
    past_len = cache_length(cache)
    device = input_ids.device
    positions = past_len + layout.position_offsets.to(device)
    alive, rows_per_layer = _rows_per_layer(parts, heads, layout)
    masks = _layer_masks(parts, layout, positions, past_len, rows_per_layer)

    h = parts.embed(input_ids)[None]
    cos, sin = parts.rotary(h, positions[None])
    captured: dict[int, torch.Tensor] = {}
    for i, layer in enumerate(parts.layers):
        r = rows_per_layer[i]
        h = layer(h, attention_mask=masks[i], position_embeddings=(cos[:, :r], sin[:, :r]),
                  past_key_values=cache, use_cache=True)
        number = i + 1
        for k in range(alive[i] + 1, alive[number] + 1):  # pseudo k enters after layer `number`
            anchor_state = h[:, layout.anchors.to(device)]
            prev = h[:, n_real + (k - 2) * A : n_real + (k - 1) * A] if k > 1 else None
            h = torch.cat([h, heads.pseudo_state(k, heads.source_for(k, anchor_state, prev))], dim=1)
        if number in capture_layers:
            captured[number] = h[0]
    return parts.norm(h)[0], captured


def real_rows_from(
    parts: ModelParts, hidden: torch.Tensor, after_layer: int, cache: DynamicCache
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The causal pass of real rows at positions 0..T-1 from their residual stream after ``after_layer`` ([T, d])
    to the top: their K/V go to ``cache`` (layers above ``after_layer``); returns their final-normed states [T, d]
    and the residual stream after each of those layers. The trainer's compact teacher store keeps one layer's
    states and recomputes the rest this way."""
    T, device = hidden.shape[0], hidden.device
    layout = causal_layout(T)
    positions = layout.position_offsets.to(device)
    masks = _layer_masks(parts, layout, positions, 0, [T] * parts.num_layers)
    h = hidden[None]
    cos, sin = parts.rotary(h, positions[None])
    captured: dict[int, torch.Tensor] = {}
    for i in range(after_layer, parts.num_layers):
        h = parts.layers[i](h, attention_mask=masks[i], position_embeddings=(cos, sin), past_key_values=cache,
                            use_cache=True)
        captured[i + 1] = h[0]
    return parts.norm(h)[0], captured


def pseudo_forward(
    parts: ModelParts,
    heads: FirpHeads,
    layout: StepLayout,
    anchor_states: dict[int, torch.Tensor],
    cache: DynamicCache,
) -> torch.Tensor:
    """Only the layout's pseudo rows, over real rows that are already in ``cache`` (the trainer's cached teacher).

    ``cache`` holds the K/V of the layout's real rows (positions from 0) in every layer above t_1;
    ``anchor_states[t]`` is the anchors' residual stream after layer t ([A, d]) for each t a pseudo
    token is projected from. Same math as the pseudo rows of :func:`forward_rows` (a test holds them
    equal); returns their final-normed states [K*A, d], k-major.
    """
    K, N, A = layout.K, layout.num_real, layout.num_anchors
    device = next(iter(anchor_states.values())).device
    offsets = layout.position_offsets.to(device)
    _, rows_per_layer = _rows_per_layer(parts, heads, layout)
    masks = _layer_masks(parts, layout, offsets, 0, rows_per_layer)  # the full pass's masks; we run rows N.. only
    h: torch.Tensor | None = None
    for number in range(heads.config.inject_layers[0], parts.num_layers + 1):
        for k in (k for k in heads.injections_after(number) if k <= K):
            from_anchor = heads.config.source == "anchor" or k == 1
            if from_anchor and number not in anchor_states:
                raise ValueError(f"pseudo {k} is projected from the anchors' states after layer {number}, "
                                 f"which were not given (have layers {sorted(anchor_states)})")
            anchor = anchor_states[number][None] if from_anchor else None
            prev = h[:, (k - 2) * A : (k - 1) * A] if k > 1 else None
            new = heads.pseudo_state(k, heads.source_for(k, anchor, prev))
            h = new if h is None else torch.cat([h, new], dim=1)
        if number == parts.num_layers:
            break
        cos, sin = parts.rotary(h, offsets[None, N : rows_per_layer[number]])
        h = parts.layers[number](h, attention_mask=masks[number][:, :, N:], position_embeddings=(cos, sin),
                                 past_key_values=cache, use_cache=True)
    return parts.norm(h)[0]
