"""`firp demo`: FIRP next to plain decoding on the project's own reference model (built once, cached)."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from .core.precision import dtype_name, model_dtype
from .vllm_plugin import vllm_unavailable_reason

# The micro model is small: on this prompt it writes code-shaped text instead of falling into loops.
DEMO_PROMPT = 'def read_config(path):\n    """Read a JSON config file and return it as a dict."""\n'


def _vllm_section(model_dir: str, heads_dir: str, prompt: str, args: argparse.Namespace) -> dict:
    """Greedy text from the real vLLM engine with and without FIRP, and FIRP's acceptance length."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # the demo prints its own summary
    from vllm import LLM
    from vllm import SamplingParams as VllmSampling

    params = VllmSampling(temperature=0.0, max_tokens=args.max_new_tokens)
    dtype = dtype_name(model_dtype(model_dir, args.dtype))  # vLLM's "auto" keeps bf16 even where it crawls
    out = {}
    for name, spec in (("plain", None), ("firp", {"method": "firp", "model": heads_dir})):
        llm = LLM(model=model_dir, speculative_config=spec, enforce_eager=True, max_model_len=1024, dtype=dtype,
                  disable_log_stats=False)
        t0 = time.perf_counter()
        result = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0]
        seconds = time.perf_counter() - t0
        out[name] = {"text": result.text, "tokens": len(result.token_ids), "seconds": round(seconds, 3)}
        if spec is not None:
            out[name]["metrics"] = _spec_metrics(llm)
        del llm
    out["identical"] = out["plain"]["text"] == out["firp"]["text"]
    return out


def _spec_metrics(llm) -> dict:
    """Mean acceptance length from vLLM's own spec-decode counters."""
    counters = {m.name: m for m in llm.get_metrics()}
    drafts = getattr(counters.get("vllm:spec_decode_num_drafts"), "value", 0)
    accepted = getattr(counters.get("vllm:spec_decode_num_accepted_tokens"), "value", 0)
    return {"drafts": drafts, "accepted": accepted, "mean_acceptance_length": round(1 + accepted / drafts, 3)
            if drafts else None}


def run_demo(args: argparse.Namespace, run_pair: Callable, report: Callable) -> int:
    from transformers import AutoTokenizer

    from benchmarks.reference_heads import ensure_reference_heads
    from benchmarks.reference_model import ensure_reference_model

    from .engine.engine import FirpEngine

    print(f"[demo] reference model '{args.size}' and its FIRP heads (built on first use, then cached) ...")
    model_dir = str(ensure_reference_model(args.size))
    heads_dir = str(ensure_reference_heads(args.size, "firp"))
    print(f"[demo] model: {model_dir}\n[demo] heads: {heads_dir}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = args.prompt or DEMO_PROMPT
    print(f"[demo] prompt ({len(tokenizer(prompt)['input_ids'])} tokens):\n{prompt}\n")

    if args.engine in ("auto", "vllm"):
        reason = vllm_unavailable_reason()
        if reason is None:
            print("[demo] vLLM engine: plain decoding vs speculative_config={'method': 'firp'} ...")
            section = _vllm_section(model_dir, heads_dir, prompt, args)
            print(f"=== vLLM + FIRP ===\n{section['firp']['text']}\n")
            print(f"[vLLM] identical to plain vLLM decoding: {section['identical']} | FIRP {section['firp']}")
        elif args.engine == "vllm":
            print(f"[demo] error: vLLM cannot run here: {reason}")
            return 2
        else:
            print(f"[demo] vLLM cannot run here ({reason}); falling back to the reference engine.")

    print("[demo] reference engine (PyTorch/transformers, single-pass tree verification):")
    engine = FirpEngine.from_pretrained(model_dir, heads_dir, dtype=args.dtype)
    prompt_ids = tokenizer(prompt)["input_ids"]
    run_pair(engine, prompt_ids, argparse.Namespace(**{**vars(args), "max_new_tokens": 4}), ["ar", "firp"])  # warm-up
    results = run_pair(engine, prompt_ids, args, ["ar", "firp"])
    report(tokenizer, results, args.json)
    lossless_break = args.temperature == 0 and results["ar"].tokens != results["firp"].tokens
    return 1 if lossless_break else 0
