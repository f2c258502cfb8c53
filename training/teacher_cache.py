"""Run the frozen teacher once, keep what every student needs, train from that.

    python -m vllm_firp_training.teacher_cache --model MODEL --data data/ --out cache/ --layers 2,12,15,18,23,26,27 \\
        --kv-from 12 --max-sequences 600 --seq-len 384

The teacher (a causal pass of the base model) costs a full forward per token; a FIRP student only
runs its K pseudo rows through layers t+1..L, and Medusa / EAGLE-3 run no base layer at all. One
record per training sequence (``NNNNN.safetensors``) holds, in bf16 unless told otherwise:

- ``hidden.{l}``: the residual stream after layer l for each l in ``--layers`` (FIRP inject layers,
  EAGLE-3 aux layers) and ``hidden.{L}``, the final-normed state (Medusa, and the K/V-free checks);
- ``key.{l}`` / ``value.{l}`` [kv_heads, T, head_dim]: the post-RoPE K/V of every layer l > ``--kv-from``,
  which the pseudo rows of any inject layer >= kv_from attend to;
- ``top_ids`` / ``top_logp`` [T, k]: the teacher's top-k next tokens and their log-probabilities.

``train --teacher-cache DIR`` then trains FIRP (any inject layer the cache covers), Medusa or EAGLE-3
on it (each kind's ``cached_outputs``); the inject-layer sweep and the baselines all reuse one teacher pass. Records are written
atomically and skipped when present, so an interrupted build resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers.cache_utils import DynamicCache

from vllm_firp.core import causal_layout
from vllm_firp.core.precision import DTYPE_CHOICES, dtype_name
from vllm_firp.engine.forward import ModelParts, forward_rows, new_cache, real_rows_from

from .data import DataError, TokenSequence, load_frozen_model, load_sequences

FORMAT = "firp-teacher-cache"
META = "meta.json"


@dataclass
class TeacherRecord:
    """The frozen model's view of one training sequence (see the module docstring)."""

    key: str
    ids: torch.Tensor  # [T]
    prompt_len: int
    hidden: dict[int, torch.Tensor]  # layer -> [T, d]; the last layer's entry is final-normed
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> ([kvh, T, hd], [kvh, T, hd])
    top_ids: torch.Tensor  # [T, k] long
    top_logp: torch.Tensor  # [T, k] float32

    def to(self, device: torch.device, dtype: torch.dtype) -> TeacherRecord:
        return TeacherRecord(
            self.key, self.ids.to(device), self.prompt_len,
            {n: h.to(device, dtype) for n, h in self.hidden.items()},
            {n: (k.to(device, dtype), v.to(device, dtype)) for n, (k, v) in self.kv.items()},
            self.top_ids.to(device), self.top_logp.to(device),
        )

    def cache_from(self, first_layer: int) -> DynamicCache:
        """A cache holding the real rows' K/V in every layer above ``first_layer`` (layers below stay empty)."""
        missing = [n for n in range(first_layer + 1, max(self.kv) + 1) if n not in self.kv]
        if first_layer < min(self.kv) - 1 or missing:
            raise DataError(f"the teacher cache has K/V for layers {min(self.kv)}..{max(self.kv)}; pseudo tokens "
                            f"entering after layer {first_layer} need {first_layer + 1}..{max(self.kv)}")
        cache = new_cache()
        for n in range(first_layer + 1, max(self.kv) + 1):
            cache.update(self.kv[n][0][None], self.kv[n][1][None], n - 1)
        return cache

    @property
    def compact(self) -> bool:
        """Kept without K/V: the student pass recomputes the layers above the lowest kept state."""
        return not self.kv

    def complete(self, parts: ModelParts) -> TeacherRecord:
        """This record with every layer above its lowest kept state recomputed (states, K/V, final state): a
        compact record's view for the student pass; a full record is returned as it is."""
        if not self.compact:
            return self
        low = min(self.hidden)
        if low >= parts.num_layers:
            raise DataError("a compact teacher record needs a kept state below the last layer")
        cache = new_cache()
        with torch.no_grad():
            final, upper = real_rows_from(parts, self.hidden[low].to(parts.lm_head.weight.dtype), low, cache)
        L = parts.num_layers
        kv = {n: (cache.layers[n - 1].keys[0], cache.layers[n - 1].values[0]) for n in range(low + 1, L + 1)}
        hidden = upper | self.hidden | {L: final}
        return TeacherRecord(self.key, self.ids, self.prompt_len, hidden, kv, self.top_ids, self.top_logp)

    def state(self, layer: int) -> torch.Tensor:
        if layer not in self.hidden:
            raise DataError(f"the teacher cache has no hidden states after layer {layer} (has {sorted(self.hidden)})"
                            "; rebuild it with that layer in --layers")
        return self.hidden[layer]


@torch.no_grad()
def teacher_record(parts: ModelParts, seq: TokenSequence, layers: Sequence[int], kv_from: int | None,
                   top_k: int, store_dtype: torch.dtype = torch.bfloat16) -> TeacherRecord:
    """One causal teacher pass over ``seq``; states and K/V go to CPU in ``store_dtype``. ``kv_from=None``: a
    compact record (the ``layers`` states and the teacher's top-k only; see :meth:`TeacherRecord.complete`)."""
    L = parts.num_layers
    device = parts.lm_head.weight.device
    ids = torch.tensor(seq.ids, device=device)
    cache = new_cache()
    final, captured = forward_rows(parts, ids, causal_layout(len(seq.ids)), cache,
                                   capture_layers=tuple(n for n in layers if 0 < n < L))
    top_logp, top_ids = parts.lm_head(final).float().log_softmax(-1).topk(top_k, dim=-1)
    hidden = {n: captured[n] for n in layers if 0 < n < L}
    if kv_from is None:  # compact: ids as int32, log-probs as fp16, no K/V, no final state
        rec = TeacherRecord(seq.key, ids.int(), seq.prompt_len, hidden, {}, top_ids.int(), top_logp.half())
        return rec.to("cpu", store_dtype)
    hidden[L] = final
    kv = {n: (cache.layers[n - 1].keys[0], cache.layers[n - 1].values[0]) for n in range(kv_from + 1, L + 1)}
    return TeacherRecord(seq.key, ids, seq.prompt_len, hidden, kv, top_ids, top_logp).to("cpu", store_dtype)


def save_record(rec: TeacherRecord, path: Path) -> None:
    tensors = {"ids": rec.ids, "top_ids": rec.top_ids, "top_logp": rec.top_logp}
    tensors |= {f"hidden.{n}": h for n, h in rec.hidden.items()}
    for n, (k, v) in rec.kv.items():
        tensors[f"key.{n}"], tensors[f"value.{n}"] = k, v
    tmp = path.with_suffix(".tmp")
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(tmp), metadata={"key": rec.key, "prompt_len": str(rec.prompt_len)})
    os.replace(tmp, path)


def load_record(path: Path) -> TeacherRecord:
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
        hidden = {int(name.split(".")[1]): t for name, t in tensors.items() if name.startswith("hidden.")}
        kv = {int(name.split(".")[1]): (t, tensors[f"value.{name.split('.')[1]}"])
              for name, t in tensors.items() if name.startswith("key.")}
        return TeacherRecord(meta["key"], tensors["ids"].long(), int(meta["prompt_len"]), hidden, kv,
                             tensors["top_ids"].long(), tensors["top_logp"].float())
    except (SafetensorError, KeyError, ValueError, OSError) as e:
        raise DataError(f"teacher cache record {path} is unreadable or incomplete ({e}); delete it and rebuild "
                        "(the build resumes)") from e


def _check_record_key(path: Path, key: str) -> None:
    """A resumed build must be over the same sequences: record i of the cache holds sequence i of the data."""
    try:
        with safe_open(str(path), "pt") as fh:
            held = (fh.metadata() or {}).get("key")
    except (SafetensorError, OSError) as e:
        raise DataError(f"teacher cache record {path} is unreadable ({e}); delete it and rerun (the build resumes)"
                        ) from e
    if held != key:
        raise DataError(f"{path} holds sequence {held!r} but the data's sequence there is {key!r}: the data changed "
                        "since this cache was built; use another --out")


class TeacherCache:
    """A built cache directory: ``meta.json`` + one record per sequence, loaded on demand."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        try:
            self.meta = json.loads((self.dir / META).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{self.dir} is not a teacher cache ({META}: {e}); build one with "
                            "python -m vllm_firp_training.teacher_cache") from e
        if self.meta.get("format") != FORMAT:
            raise DataError(f"{self.dir / META} is not a {FORMAT} (format={self.meta.get('format')!r})")
        self.paths = sorted(self.dir.glob("[0-9]*.safetensors"))
        if not self.paths:
            raise DataError(f"teacher cache {self.dir} holds no records")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> TeacherRecord:
        return load_record(self.paths[i])

    def check_model(self, model_config: Any) -> None:
        want = {"num_hidden_layers": model_config.num_hidden_layers, "hidden_size": model_config.hidden_size,
                "vocab_size": model_config.vocab_size}
        bad = {k: (self.meta.get(k), v) for k, v in want.items() if self.meta.get(k) != v}
        if bad:
            raise DataError(f"teacher cache {self.dir} was built for another model: "
                            + ", ".join(f"{k} {a} != {b}" for k, (a, b) in bad.items()))


# --------------------------------------------------------------------------------------- build


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="firp teacher-cache", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="HF model directory (the frozen base model)")
    p.add_argument("--data", required=True, type=Path, help="data directory from vllm_firp_training.generate_data")
    p.add_argument("--out", required=True, type=Path, help="cache directory (resumes when it exists)")
    p.add_argument("--layers", required=True, help="comma list of layers whose residual stream to keep (FIRP inject "
                   "layers, EAGLE-3 aux layers); the final-normed state is always kept")
    kv = p.add_mutually_exclusive_group(required=True)
    kv.add_argument("--kv-from", type=int, help="keep K/V of every layer above this one (the lowest FIRP inject "
                    "layer to train) and the final state: ~23 KB per token on SmolLM2; no base layer runs in training")
    kv.add_argument("--compact", action="store_true", help="keep only the --layers states and the top-k (~1.3 KB "
                    "per token and layer on SmolLM2); training recomputes the layers above the lowest one")
    p.add_argument("--top-k", type=int, default=32, help="teacher tokens kept per position (default 32)")
    p.add_argument("--max-sequences", type=int, help="first N training sequences (default all)")
    p.add_argument("--seq-len", type=int, default=1024, help="last N tokens of each sequence (default 1024)")
    p.add_argument("--holdout-percent", type=float, default=5.0, help="as in train: held-out sequences are skipped")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="teacher's compute dtype (default auto)")
    p.add_argument("--store-dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                   help="dtype of the kept states (default bfloat16)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def build(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = load_frozen_model(args.model, args.dtype)
    parts, cfg = ModelParts.of(model), model.config
    L = cfg.num_hidden_layers
    layers = sorted({int(v) for v in args.layers.split(",")})
    if any(not 0 < n < L for n in layers) or (args.kv_from is not None and not 0 <= args.kv_from < L):
        raise DataError(f"--layers must be in 1..{L - 1} and --kv-from in 0..{L - 1} for a {L}-layer model")
    seqs = [s.window(args.seq_len) for s in load_sequences(args.data, "train", args.holdout_percent)]
    seqs = seqs[: args.max_sequences] if args.max_sequences else seqs
    meta = {"format": FORMAT, "model": str(args.model), "data": str(args.data), "num_hidden_layers": L,
            "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size, "layers": layers,
            "kv_from": args.kv_from, "compact": args.compact,
            "top_k": args.top_k, "seq_len": args.seq_len, "holdout_percent": args.holdout_percent,
            "compute_dtype": dtype_name(model.dtype), "store_dtype": args.store_dtype}
    args.out.mkdir(parents=True, exist_ok=True)
    meta_path = args.out / META
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        diff = sorted(k for k in meta if k != "num_sequences" and old.get(k, False if k == "compact" else None) != meta[k])
        if diff:
            raise DataError(f"{args.out} holds a cache built with other settings ({', '.join(diff)} differ); "
                            "use another --out")
    meta_path.write_text(json.dumps(meta | {"num_sequences": len(seqs)}, indent=2) + "\n")
    store = getattr(torch, args.store_dtype)
    tokens = 0
    for i, seq in enumerate(tqdm(seqs, desc="teacher", disable=args.quiet, file=sys.stderr)):
        path = args.out / f"{i:05d}.safetensors"
        if path.is_file():
            _check_record_key(path, seq.key)
        else:
            save_record(teacher_record(parts, seq, layers, args.kv_from, args.top_k, store), path)
            tokens += len(seq.ids)
    wall = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in args.out.glob("*.safetensors"))
    stored = sum(len(s.ids) for s in seqs)
    return {"out": str(args.out), "sequences": len(seqs), "new_tokens": tokens, "wall_time_s": round(wall, 1),
            "tokens_per_s": round(tokens / wall, 1), "bytes": size, "bytes_per_token": round(size / max(1, stored))}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = build(args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
