"""FIRP's speculator for vLLM 0.34's Model Runner V2 (two-pass; docs/firp-design.md, "Inside vLLM").

After the verify forward and rejection sampling, for each request: take the layer-t state of its last
accepted token (the anchor, position P; the runner's aux hidden state t), build the K pseudo states with
the heads (:mod:`vllm_firp.core`), run them through the served model's own layers t+1..L, final norm and
LM head as K causal queries at positions P+1..P+K, and draft the top-1 token of each. Their K/V go to the
lookahead slots the scheduler reserved (``num_lookahead_tokens == K``); the next verify pass rewrites those
positions in every layer before anything reads them, so the persistent cache never keeps pseudo K/V.

Runner contract (vLLM 0.34, ``vllm/v1/worker/gpu/model_runner.py``): the speculator is a
``DraftModelSpeculator`` because that is the class the runner hands the loaded target model to
(``load_model``) and the KV cache layout, block tables and attention builders to (``set_attn``). FIRP adds
no attention layer and no KV cache of its own: ``draft_attn_layer_names`` stays empty, and its attention
groups are metadata builders for the target's layers t+1..L over the target's own KV cache.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.config.compilation import CUDAGraphMode
from vllm.forward_context import set_forward_context
from vllm.v1.attention.backends.utils import PAD_SLOT_ID
from vllm.v1.kv_cache_interface import FullAttentionSpec, UniformTypeKVCacheSpecs
from vllm.v1.worker.gpu.attn_utils import build_attn_metadata, init_attn_backend
from vllm.v1.worker.gpu.spec_decode.speculator import DraftModelSpeculator

from vllm_firp.core import FirpConfig, FirpHeads

from .. import config as shared
from ..proposer import borrow_upper_layers, pseudo_slots
from .config import FirpConfigError, firp_info

logger = logging.getLogger("vllm.plugins.firp")


class FirpHeadsModule(nn.Module):
    """The speculator's ``model``: the FIRP heads only (the target's modules are borrowed, not registered)."""

    def __init__(self, heads: FirpHeads) -> None:
        super().__init__()
        self.heads = heads


class FirpSpeculator(DraftModelSpeculator):
    # Drafting runs eagerly on its own batch (K queries per request); no CUDA graphs.
    can_reuse_target_attn_metadata = False

    def __init__(self, vllm_config: VllmConfig, device: torch.device) -> None:
        shared.validate_vllm_config(vllm_config)  # LoRA / KV connectors / EP: refused at start-up
        super().__init__(vllm_config, device)
        info = firp_info(self.speculative_config)
        self.heads_dir: str = info["heads_dir"]
        self.config = FirpConfig.from_dict(dict(info["config"]))
        self.inject_layer = self.config.inject_layers[0]
        self.draft_attn_layer_names: set[str] = set()
        self.attn_groups: list[list[Any]] = []
        # Target modules, kept in a plain tuple so they are never registered or wrapped twice.
        self._upper: tuple[nn.Module, ...] = ()
        self._norm: nn.Module | None = None
        self._compute_logits: Any = None
        self._layer_names: list[str] = []
        self._group_ids: list[int] = []
        self._arange_k = torch.arange(1, self.num_speculative_steps + 1, device=device)

    # ------------------------------------------------------------------ lifecycle (called by the runner)
    def init_cudagraph_manager(self, cudagraph_mode: CUDAGraphMode) -> None:
        del cudagraph_mode  # FIRP's pass runs eagerly

    def capture(self) -> None:
        return None

    def load_draft_model(self, target_model: nn.Module, target_attn_layer_names: set[str]) -> nn.Module:
        """Borrow the served model's layers t+1..L, norm and LM head; load the heads in its dtype."""
        self._upper, self._norm, self._compute_logits, self._layer_names = borrow_upper_layers(
            target_model, self.config.num_hidden_layers, self.inject_layer)
        missing = sorted(set(self._layer_names) - target_attn_layer_names)
        if missing:
            raise FirpConfigError(f"FIRP: attention layers {missing} are not registered with vLLM")
        mc = self.vllm_config.model_config
        heads = FirpHeads.from_pretrained(self.heads_dir, mc.hf_text_config, dtype=mc.dtype).to(self.device)
        logger.info(
            "FIRP: speculative method 'firp' on %s, K=%d, inject layer %d (layers %d..%d borrowed), heads %s",
            type(target_model).__name__, self.num_speculative_steps, self.inject_layer, self.inject_layer + 1,
            self.config.num_hidden_layers, self.heads_dir,
        )
        return FirpHeadsModule(heads)

    def set_attn(
        self,
        model_state: Any,
        kv_cache_config: Any,
        block_tables: Any,
        target_input_buffers: Any,
        target_attn_groups: list[list[Any]],
    ) -> None:
        """Metadata builders of FIRP's own for the target's layers t+1..L (over the target's KV cache)."""
        self.model_state = model_state
        self.kv_cache_config = kv_cache_config
        self.block_tables = block_tables
        self.target_input_buffers = target_input_buffers
        self.target_attn_groups = target_attn_groups
        names = set(self._layer_names)
        gids = sorted({gid for gid, g in enumerate(kv_cache_config.kv_cache_groups) if names & set(g.layer_names)})
        if len(gids) != 1:
            raise FirpConfigError(f"FIRP needs layers {self._layer_names} in one KV cache group, found groups {gids}")
        spec = kv_cache_config.kv_cache_groups[gids[0]].kv_cache_spec
        for name in self._layer_names:
            layer_spec = spec.kv_cache_specs[name] if isinstance(spec, UniformTypeKVCacheSpecs) else spec
            if not isinstance(layer_spec, FullAttentionSpec) or getattr(layer_spec, "sliding_window", None):
                raise FirpConfigError(f"FIRP supports full causal attention only; {name} has {type(layer_spec)}")
        self.attn_groups, self.attn_cg_support, _ = init_attn_backend(
            kv_cache_config, self.attn_vllm_config, self.device, active_layer_names=names
        )
        self._group_ids = gids
        self._block_size = spec.block_size  # manager block size: block tables hold manager block ids

    # ------------------------------------------------------------------ one step
    @torch.inference_mode()
    def propose(
        self,
        input_batch: Any,
        attn_metadata: Any,
        slot_mappings: Any,
        last_hidden_states: torch.Tensor,
        aux_hidden_states: list[torch.Tensor] | None,
        num_sampled: torch.Tensor,
        num_rejected: torch.Tensor,
        last_sampled: torch.Tensor,
        next_prefill_tokens: torch.Tensor,
        temperature: torch.Tensor,
        seeds: torch.Tensor,
        dp_sync_state: Any = None,
        dummy_run: bool = False,
        skip_attn_for_dummy_run: bool = False,
        mm_inputs: Any = None,
        is_profile: bool = False,
        num_speculative_tokens: int | None = None,
    ) -> torch.Tensor:
        """Drafts ``[num_reqs, K]`` in input-batch order; the runner uses the first ``num_speculative_tokens``.

        Requests without a sampled token (a prefill chunk that is not the last) and pseudo positions past
        max_model_len get no K/V write (padding slot); their drafts are never scheduled.
        """
        b = input_batch.num_reqs
        k = self.num_speculative_steps if num_speculative_tokens is None else num_speculative_tokens
        k = min(k, self.num_speculative_steps)
        out = self.draft_tokens[:b]
        if dummy_run or k <= 0 or b == 0:  # the scheduler's per-step K: 0 = draft nothing
            return out
        if not aux_hidden_states:
            raise RuntimeError("FIRP needs the runner's aux hidden states (SpeculatorConfig.uses_aux_hidden_states)")
        dev = self.device
        qsl = input_batch.query_start_loc[: b + 1].to(torch.int64)
        rows = qsl[1:] - 1 - num_rejected[:b].to(torch.int64)  # the last accepted token of each request
        anchor = input_batch.positions.index_select(0, rows).to(torch.int64)  # its position P
        raw = anchor[:, None] + self._arange_k[:k]  # [b, k]: P+1..P+k
        max_len = self.max_model_len
        positions = raw.clamp(max=max_len - 1)
        keep = (num_sampled[:b] > 0)[:, None] & (raw < max_len)

        block_tables = [bt[:b] for bt in self.block_tables.input_block_tables]
        slot_rows = []
        for gid, bt in enumerate(block_tables):
            if gid in self._group_ids:
                s = pseudo_slots(bt, positions.to(bt.device), self._block_size)
                slot_rows.append(torch.where(keep.to(s.device), s, torch.full_like(s, PAD_SLOT_ID)).view(-1))
            else:
                slot_rows.append(torch.full((b * k,), PAD_SLOT_ID, dtype=torch.int64, device=bt.device))
        slot_mappings_t = torch.stack(slot_rows)
        seq_lens = (positions[:, -1] + 1).to(torch.int32)
        qsl_cpu = torch.arange(b + 1, dtype=torch.int32) * k
        seq_lens_cpu = seq_lens.cpu()
        md = build_attn_metadata(
            attn_groups=self.attn_groups,
            num_reqs=b,
            num_tokens=b * k,
            query_start_loc_gpu=qsl_cpu.to(dev),
            query_start_loc_cpu=qsl_cpu,
            max_query_len=k,
            seq_lens=seq_lens,
            max_seq_len=int(seq_lens_cpu.max()),
            block_tables=block_tables,
            slot_mappings=slot_mappings_t,
            kv_cache_config=self.kv_cache_config,
            seq_lens_cpu_upper_bound=seq_lens_cpu,
            positions=positions.view(-1),
            is_prefilling=torch.zeros(b, dtype=torch.bool),
        )
        heads = self.model.heads
        # index_select copies: the runner's aux buffer is never written (the fused add-norm works in place).
        h = heads.pseudo_states_uniform(aux_hidden_states[0].index_select(0, rows))[:, :k].reshape(b * k, -1)
        residual = None
        slot_by_layer = {name: slot_mappings_t[self._group_ids[0]] for name in self._layer_names}
        with set_forward_context(md, self.vllm_config, num_tokens=b * k, slot_mapping=slot_by_layer):
            for layer in self._upper:
                h, residual = layer(positions.view(-1), h, residual)
            h, _ = self._norm(h, residual)
            logits = self._compute_logits(h)
        out[:, :k] = logits.argmax(dim=-1).view(b, k)
        return out
