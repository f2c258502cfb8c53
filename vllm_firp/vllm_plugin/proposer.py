"""FIRP's drafter inside vLLM's V1 model runner (two-pass; see docs/firp-design.md, "Inside vLLM").

After the verify forward and rejection sampling, for each request: take the layer-t state of its last
accepted token (the anchor, position P; vLLM's aux hidden state t), build the K pseudo states with the
heads, run them through the served model's own layers t+1..L, final norm and LM head as K causal queries
at positions P+1..P+K, and draft the top-1 token of each. Their K/V go to the lookahead slots the
scheduler reserved (``num_lookahead_tokens == K``); the next verify pass rewrites those positions in
every layer before anything reads them, so the persistent cache never keeps pseudo K/V.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vllm_firp.core import FirpConfig, FirpHeads

from .config import HYBRID_METHOD, FirpConfigError, firp_info
from .hybrid import FIRP, SUFFIX, SuffixFirst


@dataclass(frozen=True)
class Anchor:
    req: int  # index in the runner's input batch
    row: int  # row of the anchor token in the verify forward's (aux) hidden states
    pos: int  # its position P; pseudo k sits at P+k


def find_anchors(
    sampled: list[list[int]],
    num_draft_tokens: list[int],
    query_start_loc: list[int],
    seq_lens: list[int],
    k: int,
    max_model_len: int,
) -> list[Anchor]:
    """The last accepted token of each request that gets drafts.

    Request i verified ``n_i`` drafts and got ``len(sampled_i) - 1`` of them accepted (plus one bonus
    token), so ``rej_i = n_i - (len(sampled_i) - 1)`` trailing rows of its query were rejected. Requests
    with no sampled token (a prefill chunk that is not the last) get no drafts, nor do requests whose
    pseudo positions would pass max_model_len (the runner zeroes drafts there anyway).
    """
    out = []
    for i, s in enumerate(sampled):
        if not s:
            continue
        rej = num_draft_tokens[i] - (len(s) - 1)
        assert rej >= 0, f"request {i}: {len(s)} sampled tokens for {num_draft_tokens[i]} drafts"
        pos = seq_lens[i] - 1 - rej
        if pos + k < max_model_len:
            out.append(Anchor(i, query_start_loc[i + 1] - 1 - rej, pos))
    return out


def borrow_upper_layers(model: nn.Module, num_layers: int, inject_layer: int) -> tuple[tuple[nn.Module, ...], nn.Module,
                                                                                  Any, list[str]]:
    """The served model's decoder layers t+1..L, final norm, ``compute_logits`` and those layers' attention names,
    borrowed (no copy) for FIRP's pseudo rows; refuses a model whose layout FIRP cannot drive (vLLM 0.32 and 0.34)."""
    from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase

    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(inner, "norm") or not hasattr(model, "compute_logits"):
        raise FirpConfigError(f"FIRP cannot find model.layers / model.norm / compute_logits in {type(model)}")
    n = len(layers)
    if getattr(inner, "start_layer", 0) != 0 or getattr(inner, "end_layer", n) != n:
        raise FirpConfigError("FIRP needs every decoder layer on this rank (no pipeline parallelism)")
    if n != num_layers:
        raise FirpConfigError(f"FIRP heads are for {num_layers} layers, model has {n}")
    upper = tuple(layers[inject_layer:])
    names = [m.layer_name for layer in upper for m in layer.modules() if isinstance(m, AttentionLayerBase)]
    if len(names) != len(upper):
        raise FirpConfigError(f"FIRP expects one attention per decoder layer, found {names}")
    return upper, inner.norm, model.compute_logits, names


def pseudo_slots(block_table: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """KV-cache slot of each (request row, position): ``block_table[r, p // bs] * bs + p % bs``."""
    blocks = block_table.gather(1, positions // block_size).to(torch.int64)
    return blocks * block_size + positions % block_size


class FirpProposer:
    """Built by the runner (via vLLM's custom_class hook, see patches.py); owns no copy of any weight."""

    def __init__(self, vllm_config: Any) -> None:
        sc = vllm_config.speculative_config
        info = firp_info(sc)
        self.vllm_config = vllm_config
        self.heads_dir: str = info["heads_dir"]
        self.config = FirpConfig.from_dict(dict(info["config"]))
        self.inject_layer = self.config.inject_layers[0]
        self.num_spec_tokens: int = sc.num_speculative_tokens
        self.heads: FirpHeads | None = None
        # Target modules, kept in a plain tuple so they are never registered or wrapped twice.
        self._upper: tuple[nn.Module, ...] = ()
        self._norm: nn.Module | None = None
        self._compute_logits: Any = None
        self._layer_names: list[str] = []
        self._attn_groups: list[Any] = []
        self._block_size = 0
        self.device = torch.device("cpu")
        self.max_model_len = vllm_config.model_config.max_model_len
        self.hybrid = None  # method firp_suffix: vLLM's suffix proposer drafts first (see hybrid.py)
        if info.get("method") == HYBRID_METHOD:  # sc.method reads custom_class while the runner builds us
            self.hybrid = SuffixFirst(vllm_config, firp_k=min(self.num_spec_tokens, self.config.K))

    # ------------------------------------------------------------------ lifecycle (called by the runner)
    def attach(self, runner: Any) -> None:
        self.device = runner.device
        self.max_model_len = runner.max_model_len

    def load_model(self, model: nn.Module) -> None:
        """Borrow the served model's upper layers, norm and LM head; load the heads in its dtype."""
        self._upper, self._norm, self._compute_logits, self._layer_names = borrow_upper_layers(
            model, self.config.num_hidden_layers, self.inject_layer)
        mc = self.vllm_config.model_config
        heads = FirpHeads.from_pretrained(self.heads_dir, mc.hf_text_config, dtype=mc.dtype)
        self.heads = heads.to(self.device)

    def init_attention(self, kv_cache_config: Any, kernel_block_sizes: list[int] | None) -> None:
        """Metadata builders of our own for layers t+1..L (as EagleProposer.initialize_attn_backend)."""
        from vllm.config import get_layers_from_vllm_config
        from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase
        from vllm.v1.kv_cache_interface import FullAttentionSpec, UniformTypeKVCacheSpecs
        from vllm.v1.worker.utils import AttentionGroup

        gids = {
            gid for gid, g in enumerate(kv_cache_config.kv_cache_groups) for nm in g.layer_names
            if nm in self._layer_names
        }
        if len(gids) != 1:
            raise FirpConfigError(f"FIRP needs layers {self._layer_names} in one KV cache group, found {gids}")
        gid = gids.pop()
        spec = kv_cache_config.kv_cache_groups[gid].kv_cache_spec
        kbs = kernel_block_sizes[gid] if kernel_block_sizes and gid < len(kernel_block_sizes) else None
        layers = get_layers_from_vllm_config(self.vllm_config, AttentionLayerBase, self._layer_names)
        groups: dict[str, Any] = {}
        for name in self._layer_names:
            layer_spec = spec.kv_cache_specs[name] if isinstance(spec, UniformTypeKVCacheSpecs) else spec
            if not isinstance(layer_spec, FullAttentionSpec) or getattr(layer_spec, "sliding_window", None):
                raise FirpConfigError(f"FIRP supports full causal attention only; {name} has {type(layer_spec)}")
            backend = layers[name].get_attn_backend()
            key = backend.full_cls_name()
            if key in groups:
                groups[key].layer_names.append(name)
                continue
            group = AttentionGroup(backend=backend, layer_names=[name], kv_cache_spec=layer_spec, kv_cache_group_id=gid)
            group.create_metadata_builders(self.vllm_config, self.device, kernel_block_size=kbs)
            groups[key] = group
        self._attn_groups = list(groups.values())
        self._block_size = spec.block_size  # manager block size: the block table holds manager block ids

    # ------------------------------------------------------------------ one step
    def propose(
        self,
        scheduler_output: Any,
        sampled_token_ids: list[list[int]],
        aux_hidden_states: list[torch.Tensor] | None,
        spec_decode_metadata: Any,
        common_attn_metadata: Any,
        input_batch: Any = None,
    ) -> list[list[int]]:
        """Drafts for every request in input-batch order ([] where a request gets none)."""
        cm = common_attn_metadata
        num_reqs = len(sampled_token_ids)
        drafts: list[list[int]] = [[] for _ in range(num_reqs)]
        # The scheduler's K for this batch size (num_speculative_tokens_per_batch_size; 0 = no drafts), as ngram.
        k = min(scheduler_output.num_spec_tokens_to_schedule, self.num_spec_tokens)
        if aux_hidden_states is None:
            raise RuntimeError("FIRP needs the runner's aux hidden states (use_aux_hidden_state_outputs)")
        n = list(spec_decode_metadata.num_draft_tokens if spec_decode_metadata is not None else [0] * num_reqs)
        if self.hybrid is not None:
            req_ids = list(input_batch.req_ids[:num_reqs])
            self.hybrid.account(req_ids, sampled_token_ids, n)
            drafts = self.hybrid.propose(k, input_batch, sampled_token_ids)
        firp_k = min(k, self.config.K)  # the hybrid may draft longer suffix chains than the heads' K
        seq_lens = cm.seq_lens_cpu_upper_bound if cm.seq_lens_cpu_upper_bound is not None else cm.seq_lens.cpu()
        anchors = find_anchors(
            sampled_token_ids, n, cm.query_start_loc_cpu[: num_reqs + 1].tolist(),
            seq_lens[:num_reqs].tolist(), firp_k, self.max_model_len,
        )
        anchors = [a for a in anchors if not drafts[a.req]]  # requests the suffix drafter took
        if anchors and firp_k > 0:
            tokens = self._draft(anchors, firp_k, aux_hidden_states[0], cm.block_table_tensor)
            for a, row in zip(anchors, tokens, strict=True):
                drafts[a.req] = row
        if self.hybrid is not None:
            firp_reqs = {a.req for a in anchors}
            self.hybrid.remember(req_ids, drafts, [FIRP if i in firp_reqs else SUFFIX for i in range(num_reqs)])
        return drafts

    def _draft(self, anchors: list[Anchor], k: int, h_t: torch.Tensor, block_table: torch.Tensor) -> list[list[int]]:
        from vllm.forward_context import set_forward_context
        from vllm.v1.attention.backend import CommonAttentionMetadata

        assert self.heads is not None and self._norm is not None, "load_model was not called"
        dev, a = self.device, len(anchors)
        p = torch.tensor([x.pos for x in anchors], dtype=torch.int64)
        positions_cpu = p[:, None] + torch.arange(1, k + 1)  # [A, k]: P+1..P+k
        positions = positions_cpu.to(dev)
        bt = block_table.index_select(0, torch.tensor([x.req for x in anchors], device=block_table.device))
        slots = pseudo_slots(bt, positions.to(bt.device), self._block_size).view(-1)
        seq_lens_cpu = (p + k + 1).to(torch.int32)
        qsl_cpu = torch.arange(a + 1, dtype=torch.int32) * k
        cm = CommonAttentionMetadata(
            query_start_loc=qsl_cpu.to(dev), query_start_loc_cpu=qsl_cpu, seq_lens=seq_lens_cpu.to(dev),
            num_reqs=a, num_actual_tokens=a * k, max_query_len=k, max_seq_len=int(seq_lens_cpu.max()),
            block_table_tensor=bt, slot_mapping=slots, causal=True, positions=positions.view(-1),
            seq_lens_cpu_upper_bound=seq_lens_cpu,
        )
        metadata = {}
        for group in self._attn_groups:
            md = group.build_metadata(cm)
            metadata.update(dict.fromkeys(group.layer_names, md))
        rows = torch.tensor([x.row for x in anchors], device=h_t.device)
        # index_select copies: the runner's aux buffer is never written (the fused add-norm works in place).
        h = self.heads.pseudo_states_uniform(h_t.index_select(0, rows))[:, :k].reshape(a * k, -1)
        residual = None
        with set_forward_context(
            metadata, self.vllm_config, num_tokens=a * k, slot_mapping=dict.fromkeys(self._layer_names, slots)
        ):
            for layer in self._upper:
                h, residual = layer(positions.view(-1), h, residual)
            h, _ = self._norm(h, residual)
            logits = self._compute_logits(h)
        return logits.argmax(dim=-1).view(a, k).tolist()
