"""EAGLE-3 baseline: a one-decoder-layer draft on three of the target's hidden states, trained with TTT.

The math mirrors vLLM 0.32's ``model_executor/models/llama_eagle3.py`` (plain-config path), so the
exported draft (:func:`export_eagle3_for_vllm`) computes in vLLM what it learnt here:

* ``fc``: the target's residual streams after the ``aux_layer_ids`` layers (vLLM's aux hidden states,
  concatenated in ascending layer order, [n*d]) -> d, no bias.
* ``midlayer`` (one Llama decoder layer): e = input_layernorm(embed(token)); the fc state goes through
  ``hidden_norm`` (residual = the state before the norm, or after it when ``norm_before_residual``);
  attention reads cat[e, normed state] (2d wide), then residual add, post_attention_layernorm, MLP.
* ``norm``: the final RMSNorm; logits come from the target's own (frozen, shared) LM head, and the
  token embeddings are the target's too, so the export carries neither (vLLM then shares the target's).

Row p of the first step is (token x_{p+1}, aux state of position p) at position p and drafts x_{p+2}.
Step k (test-time training, k = 2..K) feeds the previous step's pre-norm output back with the token
x_{p+k} at position p+k-1; it attends to the first step's keys of positions <= p and to its own chain's
keys of steps 2..k, which is exactly what vLLM's draft KV cache holds when it drafts K tokens. Anchor p
in :class:`DraftOutputs` terms: draft k predicts x_{p+k+1}; the loss is the shared KL to the teacher.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, apply_rotary_pos_emb

from vllm_firp.core import DraftConfig, DraftModule, FirpCheckpointError, causal_layout
from vllm_firp.engine.forward import ModelParts, forward_rows, new_cache

from .draft_kind import DraftKind
from .export_inputs import WEIGHTS, check_heads_format, model_config_json, model_shape
from .objective import DraftOutputs

if TYPE_CHECKING:
    from .teacher_cache import TeacherRecord

FORMAT = "eagle3"
FORMAT_VERSION = 1
# Target config fields an EAGLE-3 draft keeps (rotary and context length must match the target's).
EAGLE3_KEPT = ("max_position_embeddings", "rope_parameters", "rope_theta", "rope_scaling", "bos_token_id",
               "eos_token_id", "pad_token_id")


def default_aux_layers(num_layers: int) -> tuple[int, ...]:
    """vLLM's default (2, L//2, L-3) where those are distinct layers, else (1, L//2, L-1) (4-layer micro: 1, 2, 3)."""
    for ids in ((2, num_layers // 2, num_layers - 3), (1, num_layers // 2, num_layers - 1)):
        if ids[0] < ids[1] < ids[2] <= num_layers:
            return ids
    raise FirpCheckpointError(f"a {num_layers}-layer model has no 3 distinct default aux layers: give them explicitly")


@dataclass
class Eagle3Config(DraftConfig):
    hidden_size: int
    num_hidden_layers: int  # the target's L (aux ids are in [0, L])
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    num_steps: int  # K: TTT steps = the serving num_speculative_tokens
    aux_layer_ids: list[int]
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    norm_before_residual: bool = False  # vLLM's plain-config default (the speculators path defaults to True)
    dtype: str = "float32"
    base_model: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    FORMAT = FORMAT
    FORMAT_VERSION = FORMAT_VERSION
    TITLE = "EAGLE-3 draft"
    NOUN = "draft"
    K_FIELD = "num_steps"
    POSITIVE_INTS = ("hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads", "num_key_value_heads",
                     "head_dim", "intermediate_size", "num_steps")

    def validate(self) -> None:
        super().validate()
        ids, L = list(self.aux_layer_ids), self.num_hidden_layers
        if (not ids or any(isinstance(t, bool) or not isinstance(t, int) for t in ids)
                or any(not 0 <= t <= L for t in ids) or any(a >= b for a, b in zip(ids, ids[1:], strict=False))):
            raise FirpCheckpointError(f"aux_layer_ids must be strictly increasing layer ids in [0, {L}] (vLLM "
                                      f"concatenates the aux states in ascending order), got {self.aux_layer_ids!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise FirpCheckpointError("num_attention_heads must be a multiple of num_key_value_heads")
        self.aux_layer_ids = ids

    @classmethod
    def for_model(cls, model_config: Any, num_steps: int = 3, aux_layer_ids: Any = None, **kw: Any) -> Eagle3Config:
        c, L = model_config, model_config.num_hidden_layers
        ids = default_aux_layers(L) if aux_layer_ids is None else aux_layer_ids
        return cls(c.hidden_size, L, c.vocab_size, c.num_attention_heads,
                   getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
                   getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads, c.intermediate_size,
                   num_steps, list(ids), rms_norm_eps=float(getattr(c, "rms_norm_eps", 1e-6)),
                   hidden_act=getattr(c, "hidden_act", "silu"),
                   base_model=str(getattr(c, "_name_or_path", "") or ""), **kw)


class Eagle3Attention(nn.Module):
    """Llama attention whose q/k/v read the 2d-wide [embedding; state] input; keys can come in blocks."""

    def __init__(self, c: Eagle3Config) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(2 * c.hidden_size, c.num_attention_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(2 * c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(2 * c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                past: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], own_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [n, 2d] -> ([n, d], k, v); ``past`` holds (k, v, [n, m] bool mask) key blocks seen before own keys."""
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.heads, self.head_dim).transpose(0, 1)[None]
        k = self.k_proj(x).view(n, self.kv_heads, self.head_dim).transpose(0, 1)[None]
        v = self.v_proj(x).view(n, self.kv_heads, self.head_dim).transpose(0, 1)[None]
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        keys = torch.cat([b[0] for b in past] + [k], dim=2)
        values = torch.cat([b[1] for b in past] + [v], dim=2)
        mask = torch.cat([b[2] for b in past] + [own_mask], dim=1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=self.kv_heads != self.heads)
        return self.o_proj(out[0].transpose(0, 1).reshape(n, -1)), k, v


class Eagle3Layer(nn.Module):
    """vLLM's ``llama_eagle3.LlamaDecoderLayer`` with layer_idx 0; returns the pre-norm output state."""

    def __init__(self, c: Eagle3Config) -> None:
        super().__init__()
        self.norm_before_residual = c.norm_before_residual
        self.input_layernorm = LlamaRMSNorm(c.hidden_size, c.rms_norm_eps)
        self.hidden_norm = LlamaRMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Eagle3Attention(c)
        self.post_attention_layernorm = LlamaRMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = LlamaMLP(SimpleNamespace(hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                                            mlp_bias=False, hidden_act=c.hidden_act))

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                past: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], own_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e = self.input_layernorm(embeds)
        normed = self.hidden_norm(hidden)
        residual = normed if self.norm_before_residual else hidden
        attn, k, v = self.self_attn(torch.cat([e, normed], dim=-1), cos, sin, past, own_mask)
        residual = attn + residual
        return self.mlp(self.post_attention_layernorm(residual)) + residual, k, v  # = vLLM's final-norm input


class Eagle3Draft(DraftModule):
    """fc + one decoder layer + final norm; embeddings, rotary and LM head are the target's (passed in)."""

    config_class = Eagle3Config
    config: Eagle3Config

    def __init__(self, config: Eagle3Config) -> None:
        super().__init__(config)
        d = config.hidden_size
        self.fc = nn.Linear(len(config.aux_layer_ids) * d, d, bias=False)
        self.midlayer = Eagle3Layer(config)
        self.norm = LlamaRMSNorm(d, config.rms_norm_eps)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)

    def ttt_logits(self, parts: ModelParts, ids: torch.Tensor, aux: torch.Tensor, anchors: torch.Tensor,
                   feed_drafts: bool = False) -> torch.Tensor:
        """Draft logits [K, A, V] for ``anchors`` (rows of ``aux`` [T-1, n*d] = aux states of positions 0..T-2).

        Step k >= 2 reads the token x_{p+k} (training: the data token, which is what an accepted draft
        is) or, with ``feed_drafts``, the previous step's argmax (serving; positions past T-1 allowed).
        """
        T, K, dev = ids.shape[0], self.K, ids.device
        anchors = anchors.to(dev)
        n, A = T - 1, anchors.numel()
        dtype = self.fc.weight.dtype

        def embed(tokens: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return parts.embed(tokens).to(dtype)

        def logits(state: torch.Tensor) -> torch.Tensor:
            return parts.lm_head(self.norm(state).to(parts.lm_head.weight.dtype)).float()

        pos = torch.arange(n, device=dev)
        hidden = self.fc(aux.to(dtype))
        cos, sin = parts.rotary(hidden[None], pos[None])
        causal = torch.ones(n, n, dtype=torch.bool, device=dev).tril()
        out, k1, v1 = self.midlayer(embed(ids[1:]), hidden, cos.to(dtype), sin.to(dtype), [], causal)
        state = out[anchors]
        steps, past = [logits(state)], [(k1, v1, causal[anchors])]
        own = torch.eye(A, dtype=torch.bool, device=dev)
        for k in range(2, K + 1):  # TTT: the draft's own state comes back with the token x_{p+k}
            tokens = steps[-1].argmax(-1) if feed_drafts else ids[(anchors + k).clamp(max=T - 1)]
            cos, sin = parts.rotary(state[None], (anchors + k - 1)[None])
            state, kk, vk = self.midlayer(embed(tokens), state, cos.to(dtype), sin.to(dtype), past, own)
            past.append((kk, vk, own))
            steps.append(logits(state))
        return torch.stack(steps)

    @torch.no_grad()
    def propose(self, parts: ModelParts, context: list[int]) -> list[int]:
        """The K greedy drafts vLLM serves after ``context`` (its last token is the one just sampled)."""
        ids = torch.tensor(context, device=self.fc.weight.device)
        _, aux = aux_states(parts, ids, self.config.aux_layer_ids)
        anchor = torch.tensor([len(context) - 2])
        return self.ttt_logits(parts, ids, aux[:-1], anchor, feed_drafts=True)[:, 0].argmax(-1).tolist()


def aux_states(parts: ModelParts, ids: torch.Tensor, layer_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher pass (no grad): final-normed states [T, d] and the concatenated aux states [T, n*d]."""
    with torch.no_grad():
        final, captured = forward_rows(parts, ids, causal_layout(ids.shape[0]), new_cache(),
                                       capture_layers=tuple(t for t in layer_ids if t > 0))
        captured[0] = parts.embed(ids)  # id 0 = the embeddings, as vLLM records start_layer
        return final, torch.cat([captured[t] for t in layer_ids], dim=-1)


def eagle3_outputs(parts: ModelParts, draft: Eagle3Draft, ids: torch.Tensor, anchors: torch.Tensor) -> DraftOutputs:
    final, aux = aux_states(parts, ids, draft.config.aux_layer_ids)
    with torch.no_grad():
        teacher = parts.lm_head(final).float()
    return DraftOutputs(draft.ttt_logits(parts, ids, aux[:-1], anchors), teacher, anchors.to(ids.device))


def export_eagle3_for_vllm(draft_dir: str | Path, model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir`` for ``speculative_config={"method": "eagle3", "model": out_dir, "num_speculative_tokens": K}``.

    K may differ from the draft's TTT steps (vLLM just iterates the layer), but steps past the trained
    ones were never trained: serve with K <= ``num_steps`` (recorded as ``eagle3_ttt_steps``).
    """
    draft_dir, model_dir, out_dir = Path(draft_dir), Path(model_dir), Path(out_dir)
    check_heads_format(draft_dir, FORMAT)
    mcfg = model_config_json(model_dir)
    # Refuses pickles, missing/extra tensors, bad aux ids, shapes that do not match the model, and NaN/Inf.
    draft = Eagle3Draft.from_pretrained(draft_dir, model_config=model_shape(mcfg))
    c = draft.config
    ids = list(c.aux_layer_ids)
    config = {
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "num_hidden_layers": 1,
        **{k: mcfg[k] for k in EAGLE3_KEPT if k in mcfg},
        "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size, "hidden_act": c.hidden_act,
        "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim, "rms_norm_eps": c.rms_norm_eps, "attention_bias": False, "mlp_bias": False,
        "vocab_size": c.vocab_size, "draft_vocab_size": c.vocab_size, "tie_word_embeddings": False,
        "dtype": c.dtype, "norm_before_residual": c.norm_before_residual,
        "eagle_aux_hidden_state_layer_ids": ids,
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": ids, "use_aux_hidden_state": True,
                         "norm_before_fc": False},
        "eagle3_ttt_steps": c.num_steps, "base_model": str(model_dir), "source_draft": str(draft_dir),
    }
    tensors = {n: t.detach().contiguous() for n, t in draft.state_dict().items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    return out_dir


class Eagle3Kind(DraftKind):
    module = Eagle3Draft
    options = ("aux_layer_ids", "norm_before_residual")

    def outputs(self, parts: ModelParts, heads: Eagle3Draft, ids: torch.Tensor, anchors: torch.Tensor,
                capture_layers: tuple[int, ...] = ()) -> DraftOutputs:
        return eagle3_outputs(parts, heads, ids, anchors)

    def cached_logits(self, parts: ModelParts, heads: Eagle3Draft, rec: TeacherRecord,
                      anchors: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            aux = torch.cat([parts.embed(rec.ids) if n == 0 else rec.state(n) for n in heads.config.aux_layer_ids], -1)
        return heads.ttt_logits(parts, rec.ids, aux[:-1], anchors)

    def export_for_vllm(self, heads_dir: str | Path, model_dir: str | Path, out_dir: str | Path) -> Path:
        return export_eagle3_for_vllm(heads_dir, model_dir, out_dir)


EAGLE3 = Eagle3Kind()
