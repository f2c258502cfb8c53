"""Export our baselines so vLLM serves them with its *own* speculative methods (no plugin involved).

* ``medusa``: our Medusa-1 heads (``training.medusa``) -> vLLM's ``method: "medusa"`` checkpoint.
  vLLM's ``Medusa`` (``model_executor/models/medusa.py``) computes ``x + SiLU(W x + b)`` per residual
  layer and drafts with argmax over its own LM head; it is fed the target's final-normed last hidden
  state (``sample_hidden_states``, the input of the target's ``compute_logits``), the same state our
  heads were trained on. So: one residual layer per head (``num_hidden_layers: 1``), biases on
  (``medusa_fc_bias``; vLLM's default is off), tensors ``blocks.{k-1}.layers.0.{weight,bias}``, and one
  shared LM head (``original_lm_head``) that must be a *copy* of the target's: vLLM does not share it,
  and a missing tensor is left uninitialised without any error.
* ``eagle3``: our EAGLE-3 draft (``training.eagle3``) -> vLLM's ``method: "eagle3"`` checkpoint, read by
  ``model_executor/models/llama_eagle3.py`` through the plain-config path (``model_type: llama``, architecture
  ``LlamaForCausalLMEagle3``, one hidden layer): tensors ``fc.weight``, ``midlayer.*`` (vLLM maps them to
  ``layers.0.*`` and stacks q/k/v and gate/up) and ``norm.weight``; the aux layer ids both top-level (the
  runner reads them there) and in ``eagle_config`` (the draft sizes ``fc`` from them); ``norm_before_residual``
  written out (its default differs between vLLM's config paths); ``draft_vocab_size == vocab_size``, so no
  ``d2t``/``t2d``. No ``lm_head``/``embed_tokens``: without them vLLM shares the target's, which is what the
  draft was trained with.
* ``early-exit``: the first N decoder layers of the served model plus its final norm, LM head and
  embeddings, saved as an ordinary HF checkpoint that vLLM's ``method: "draft_model"`` serves (a
  SPEED/LayerSkip-style self-draft with no training).

    python -m training.export_vllm medusa --heads H --model M --out O
    python -m training.export_vllm early-exit --model M --layers N --out O
    python -m training.export_vllm eagle3 --draft D --model M --out O
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vllm_firp.core import FirpCheckpointError

from .eagle3 import FORMAT as EAGLE3_FORMAT
from .eagle3 import Eagle3Draft
from .medusa import FORMAT as MEDUSA_FORMAT
from .medusa import MedusaHeads

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
# Target config fields an EAGLE-3 draft keeps (rotary and context length must match the target's).
EAGLE3_KEPT = ("max_position_embeddings", "rope_parameters", "rope_theta", "rope_scaling", "bos_token_id",
               "eos_token_id", "pad_token_id")
# Files copied verbatim into an early-exit draft (whichever exist).
SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class ExportError(FirpCheckpointError):
    """An input that cannot be exported (wrong format, mismatched shapes, bad or missing files)."""


def _model_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ExportError(f"{path} is missing: --model must be a Hugging Face model directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{path} is not valid JSON: {e}") from e


def _weight_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file (single file or sharded index); pickle checkpoints are refused."""
    if (model_dir / INDEX).is_file():
        index = json.loads((model_dir / INDEX).read_text())["weight_map"]
        return {name: model_dir / f for name, f in index.items()}
    if (model_dir / WEIGHTS).is_file():
        with safe_open(str(model_dir / WEIGHTS), "pt") as f:
            return {name: model_dir / WEIGHTS for name in f.keys()}  # noqa: SIM118
    pickles = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.pt"))
    hint = f" (found only {pickles}; convert them to safetensors first)" if pickles else ""
    raise ExportError(f"no {WEIGHTS} or {INDEX} in {model_dir}: safetensors weights only{hint}")


def _read(files: dict[str, Path], names: Sequence[str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in sorted({files[n] for n in names}):
        with safe_open(str(path), "pt") as f:
            out.update({n: f.get_tensor(n) for n in names if files[n] == path})
    return out


def _check_finite(tensors: dict[str, torch.Tensor], where: Path) -> None:
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t.float()).all()]
    if bad:
        raise ExportError(f"{where}: tensor(s) {bad} contain NaN/Inf")


def _target_lm_head(model_dir: Path, cfg: dict[str, Any]) -> torch.Tensor:
    """The target's output projection; for tied-embedding models that is the embedding matrix."""
    files = _weight_files(model_dir)
    tied = cfg.get("tie_word_embeddings", False) or "lm_head.weight" not in files
    name = next((n for n in (("model.embed_tokens.weight", "embed_tokens.weight") if tied else ("lm_head.weight",))
                 if n in files), None)
    if name is None:
        raise ExportError(f"{model_dir} has no LM head tensor (lm_head.weight, or model.embed_tokens.weight when "
                          f"tie_word_embeddings)")
    w = _read(files, [name])[name]
    want = (cfg["vocab_size"], cfg["hidden_size"])
    if tuple(w.shape) != want:
        raise ExportError(f"{model_dir}: {name} has shape {list(w.shape)}, expected {list(want)} from config.json")
    _check_finite({name: w}, model_dir)
    return w


def export_medusa_for_vllm(heads_dir: str | Path, model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir`` for ``speculative_config={"method": "medusa", "model": out_dir, ...}``.

    ``num_speculative_tokens`` must not exceed the number of heads: vLLM sets its head count to it and
    any extra head would be built without weights.
    """
    heads_dir, model_dir, out_dir = Path(heads_dir), Path(model_dir), Path(out_dir)
    cfg_path = heads_dir / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{cfg_path} is missing: --heads must be a Medusa heads directory")
    try:
        fmt = json.loads(cfg_path.read_text()).get("format")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ExportError(f"{cfg_path} is not a valid heads config: {e}") from e
    if fmt != MEDUSA_FORMAT:
        raise ExportError(f"{heads_dir} holds {fmt!r} heads, not {MEDUSA_FORMAT!r}: only Medusa heads "
                          f"(training.medusa) map onto vLLM's Medusa")
    mcfg = _model_config(model_dir)

    want = SimpleNamespace(**{k: mcfg.get(k) for k in ("hidden_size", "num_hidden_layers", "vocab_size")})
    # Refuses pickles, missing/extra tensors, shapes that do not match the model, and NaN/Inf.
    heads = MedusaHeads.from_pretrained(heads_dir, model_config=want)
    tensors: dict[str, torch.Tensor] = {}
    for k in range(1, heads.K + 1):
        lin = heads.resblock[str(k)]
        tensors[f"blocks.{k - 1}.layers.0.weight"] = lin.weight.detach().contiguous()
        tensors[f"blocks.{k - 1}.layers.0.bias"] = lin.bias.detach().contiguous()
    tensors["lm_head.weight"] = _target_lm_head(model_dir, mcfg).contiguous()

    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "medusa", "architectures": ["MedusaModel"],
        "hidden_size": mcfg["hidden_size"], "vocab_size": mcfg["vocab_size"],
        "truncated_vocab_size": mcfg["vocab_size"],
        "num_heads": heads.K, "num_hidden_layers": 1,  # vLLM: residual layers per head
        "medusa_fc_bias": True, "original_lm_head": True,
        "base_model": str(model_dir), "source_heads": str(heads_dir),
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    return out_dir


def _heads_format(heads_dir: Path, want: str) -> None:
    cfg_path = heads_dir / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{cfg_path} is missing: expected a {want!r} heads directory")
    try:
        fmt = json.loads(cfg_path.read_text()).get("format")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ExportError(f"{cfg_path} is not a valid heads config: {e}") from e
    if fmt != want:
        raise ExportError(f"{heads_dir} holds {fmt!r} heads, not {want!r}")


def export_eagle3_for_vllm(draft_dir: str | Path, model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir`` for ``speculative_config={"method": "eagle3", "model": out_dir, "num_speculative_tokens": K}``.

    K may differ from the draft's TTT steps (vLLM just iterates the layer), but steps past the trained
    ones were never trained: serve with K <= ``num_steps`` (recorded as ``eagle3_ttt_steps``).
    """
    draft_dir, model_dir, out_dir = Path(draft_dir), Path(model_dir), Path(out_dir)
    _heads_format(draft_dir, EAGLE3_FORMAT)
    mcfg = _model_config(model_dir)
    want = SimpleNamespace(**{k: mcfg.get(k) for k in ("hidden_size", "num_hidden_layers", "vocab_size")})
    # Refuses pickles, missing/extra tensors, bad aux ids, shapes that do not match the model, and NaN/Inf.
    draft = Eagle3Draft.from_pretrained(draft_dir, model_config=want)
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


def export_early_exit_draft(model_dir: str | Path, num_layers: int, out_dir: str | Path) -> Path:
    """Write the first ``num_layers`` decoder layers (+ embeddings, final norm, LM head) as an HF checkpoint.

    The draft reuses the target's final norm and LM head on layer ``num_layers``'s output, as
    early-exit self-drafting does; vLLM's ``draft_model`` method runs it with its own KV cache.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    cfg = _model_config(model_dir)
    total = cfg.get("num_hidden_layers")
    if not isinstance(total, int) or total < 2:
        raise ExportError(f"{model_dir}/config.json: num_hidden_layers={total!r}; need a model with >= 2 layers")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers < total:
        raise ExportError(f"num_layers must be an integer in [1, {total - 1}] for this {total}-layer model, "
                          f"got {num_layers!r}")
    files = _weight_files(model_dir)
    present = {int(m.group(1)) for n in files if (m := _LAYER.search(n))}
    if present != set(range(total)):
        raise ExportError(f"{model_dir}: decoder layers in the weights {sorted(present)} do not match "
                          f"num_hidden_layers={total}")
    keep = [n for n in files if not ((m := _LAYER.search(n)) and int(m.group(1)) >= num_layers)]
    tensors = _read(files, keep)
    _check_finite(tensors, model_dir)

    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = dict(cfg, num_hidden_layers=num_layers)
    for key, value in list(cfg.items()):  # per-layer lists (e.g. layer_types) follow the truncation
        if isinstance(value, list) and len(value) == total and key != "architectures":
            cfg[key] = value[:num_layers]
    cfg["early_exit_of"] = {"model": str(model_dir), "num_hidden_layers": total}
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file({n: t.contiguous() for n, t in tensors.items()}, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    for name in SIDE_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out_dir / name)
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="firp export-vllm", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("medusa", help="our Medusa heads -> vLLM's method 'medusa'")
    m.add_argument("--heads", required=True, help="Medusa heads directory (training.medusa)")
    m.add_argument("--model", required=True, help="the target model directory (its LM head is copied)")
    m.add_argument("--out", required=True)
    e = sub.add_parser("early-exit", help="first N layers of the model -> vLLM's method 'draft_model'")
    e.add_argument("--model", required=True)
    e.add_argument("--layers", type=int, required=True, help="decoder layers to keep (1 .. L-1)")
    e.add_argument("--out", required=True)
    g = sub.add_parser("eagle3", help="our EAGLE-3 draft -> vLLM's method 'eagle3'")
    g.add_argument("--draft", required=True, help="EAGLE-3 draft directory (firp train --method eagle3)")
    g.add_argument("--model", required=True, help="the target model directory (rotary settings are copied)")
    g.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        if args.cmd == "medusa":
            out = export_medusa_for_vllm(args.heads, args.model, args.out)
        elif args.cmd == "eagle3":
            out = export_eagle3_for_vllm(args.draft, args.model, args.out)
        else:
            out = export_early_exit_draft(args.model, args.layers, args.out)
    except FirpCheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
