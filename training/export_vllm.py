"""Export our baselines so vLLM serves them with its *own* speculative methods (no plugin involved).

* ``medusa``: our Medusa-1 heads (``training.medusa``, which holds the export) -> vLLM's ``method: "medusa"`` checkpoint.
  vLLM's ``Medusa`` (``model_executor/models/medusa.py``) computes ``x + SiLU(W x + b)`` per residual
  layer and drafts with argmax over its own LM head; it is fed the target's final-normed last hidden
  state (``sample_hidden_states``, the input of the target's ``compute_logits``), the same state our
  heads were trained on. So: one residual layer per head (``num_hidden_layers: 1``), biases on
  (``medusa_fc_bias``; vLLM's default is off), tensors ``blocks.{k-1}.layers.0.{weight,bias}``, and one
  shared LM head (``original_lm_head``) that must be a *copy* of the target's: vLLM does not share it,
  and a missing tensor is left uninitialised without any error.
* ``eagle3``: our EAGLE-3 draft (``training.eagle3``, which holds the export) -> vLLM's ``method: "eagle3"`` checkpoint, read by
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

    python -m vllm_firp_training.export_vllm medusa --heads H --model M --out O
    python -m vllm_firp_training.export_vllm early-exit --model M --layers N --out O
    python -m vllm_firp_training.export_vllm eagle3 --draft D --model M --out O
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from safetensors.torch import save_file

from vllm_firp.core import FirpCheckpointError

from .eagle3 import export_eagle3_for_vllm
from .export_inputs import WEIGHTS, ExportError, check_finite, model_config_json, read_tensors, weight_files
from .medusa import export_medusa_for_vllm

__all__ = ["ExportError", "export_eagle3_for_vllm", "export_early_exit_draft", "export_medusa_for_vllm", "main"]

# Files copied verbatim into an early-exit draft (whichever exist).
SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def export_early_exit_draft(model_dir: str | Path, num_layers: int, out_dir: str | Path) -> Path:
    """Write the first ``num_layers`` decoder layers (+ embeddings, final norm, LM head) as an HF checkpoint.

    The draft reuses the target's final norm and LM head on layer ``num_layers``'s output, as
    early-exit self-drafting does; vLLM's ``draft_model`` method runs it with its own KV cache.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    cfg = model_config_json(model_dir)
    total = cfg.get("num_hidden_layers")
    if not isinstance(total, int) or total < 2:
        raise ExportError(f"{model_dir}/config.json: num_hidden_layers={total!r}; need a model with >= 2 layers")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers < total:
        raise ExportError(f"num_layers must be an integer in [1, {total - 1}] for this {total}-layer model, "
                          f"got {num_layers!r}")
    files = weight_files(model_dir)
    present = {int(m.group(1)) for n in files if (m := _LAYER.search(n))}
    if present != set(range(total)):
        raise ExportError(f"{model_dir}: decoder layers in the weights {sorted(present)} do not match "
                          f"num_hidden_layers={total}")
    keep = [n for n in files if not ((m := _LAYER.search(n)) and int(m.group(1)) >= num_layers)]
    tensors = read_tensors(files, keep)
    check_finite(tensors, model_dir)

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
