"""Training prompts for a chat model, written by the model itself.

Benchmark prompts (MT-bench) must never be trained on, and no other chat data reaches these machines. An
instruct model asked to continue its chat template *opened at the user turn* writes a plausible user
message, so sampling that turn many times gives a varied prompt set in the model's own domain. Turns that
do not end with the end-of-turn token (truncated), are too short, or repeat another (case and spacing
folded) are dropped. Output: ``prompts.jsonl`` with ``{"messages": [{"role": "user", "content": ...}]}``
records, ready for ``training.generate_data``.

    python -m vllm_firp_training.chat_prompts --model MODEL --num-prompts 2000 --out prompts.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data import DataError, Prompt
from .generate_data import GenerationSettings, load_tokenizer, make_backend

PLACEHOLDER = "\u2063FIRP\u2063"  # never produced by a template itself


def user_turn_prefix(tokenizer: Any, history: Sequence[dict[str, str]] = ()) -> list[int]:
    """Token ids of the chat template, after the turns of ``history``, up to where the next user message's text
    begins."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the model's tokenizer has no chat template: chat prompts need an instruct model")
    text = tokenizer.apply_chat_template([*history, {"role": "user", "content": PLACEHOLDER}], tokenize=False)
    if PLACEHOLDER not in text:
        raise DataError("the chat template does not show the user's message verbatim")
    return tokenizer(text[: text.index(PLACEHOLDER)], add_special_tokens=False)["input_ids"]


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def sample_user_turns(model: str, num_prompts: int, *, seed: int = 0, max_tokens: int = 96, min_chars: int = 12,
                      temperature: float = 1.0, top_p: float = 0.95, backend: str = "auto",
                      oversample: float = 1.6, progress: bool = True) -> tuple[list[str], dict[str, int]]:
    """Up to ``num_prompts`` distinct, complete user messages sampled from ``model``; returns (texts, counts)."""
    tokenizer = load_tokenizer(model)
    if tokenizer is None:
        raise DataError(f"{model} has no tokenizer")
    prefix = user_turn_prefix(tokenizer)
    settings = GenerationSettings(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    engine = make_backend(backend, model, "auto", settings)
    kept: dict[str, str] = {}
    counts = {"sampled": 0, "truncated": 0, "too_short": 0, "duplicate": 0}
    batch, round_ = max(16, int(num_prompts * oversample)), 0
    while len(kept) < num_prompts and round_ < 4:
        # One key per sample: the backends seed each sampled prompt from its key's leading hex digits.
        prompts = [Prompt(hashlib.sha1(f"user-turn {seed} {round_} {i}".encode()).hexdigest(), prefix)
                   for i in range(batch)]
        for ids, finish in _generate_in_chunks(engine, prompts, progress):
            counts["sampled"] += 1
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            if finish != "stop":
                counts["truncated"] += 1
            elif len(text) < min_chars:
                counts["too_short"] += 1
            elif normalise(text) in kept:
                counts["duplicate"] += 1
            else:
                kept[normalise(text)] = text
        if progress:
            print(f"[chat_prompts] round {round_}: {len(kept)} distinct prompts of {num_prompts} ({counts})",
                  file=sys.stderr, flush=True)
        round_ += 1
    return list(kept.values())[:num_prompts], counts


def _generate_in_chunks(engine: Any, prompts: list[Prompt], progress: bool, chunk: int = 256):
    """The engine's outputs for ``prompts``, a chunk at a time behind a progress bar."""
    from tqdm import tqdm

    with tqdm(total=len(prompts), desc="sample user turns", unit="turn", disable=not progress, file=sys.stderr) as bar:
        for i in range(0, len(prompts), chunk):
            yield from engine.generate(prompts[i : i + chunk])
            bar.update(len(prompts[i : i + chunk]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="firp chat-prompts", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="instruct model directory (its tokenizer needs a chat template)")
    p.add_argument("--num-prompts", type=int, default=2000, help="distinct prompts wanted (default 2000)")
    p.add_argument("--out", type=Path, required=True, help="output prompts.jsonl")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--max-tokens", type=int, default=96, help="longest user message in tokens; longer = truncated")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--backend", choices=["auto", "vllm", "hf"], default="auto", help="generation backend")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        texts, counts = sample_user_turns(args.model, args.num_prompts, seed=args.seed, max_tokens=args.max_tokens,
                                          temperature=args.temperature, backend=args.backend,
                                          progress=not args.quiet)
    except DataError as exc:
        print(f"chat_prompts: error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as fh:
        for text in texts:
            fh.write(json.dumps({"messages": [{"role": "user", "content": text}]}) + "\n")
    print(json.dumps({"prompts": len(texts), **counts, "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
