"""Acceptance and speed of FIRP against its peers, side by side in the reference engine.

    python -m benchmarks.run --size micro --out bench-out/            # everything from the reference cache
    python -m benchmarks.run --model M --heads H --medusa-heads MH --prompts p.jsonl --out OUT
    python -m benchmarks.run --size micro --ablation K --out OUT      # an ablation, reported the same way

All methods decode the same held-out prompts greedily in one process, interleaved (see
``benchmarks.measure``); every output must equal plain autoregressive decoding. Writes
``results.json``, ``results.md`` and PNG plots to ``--out`` (``--out/ablation-<kind>`` for ablations).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from vllm_firp_training.reference_heads import parse_recipe_overrides

from vllm_firp.core import FirpHeads
from vllm_firp.core.precision import DTYPE_CHOICES, dtype_name, model_dtype
from vllm_firp.resolve import resolve

from .measure import machine_info, measure, pick_threads
from .methods import ABLATIONS, MAIN_METHODS, Builder, Options, ablation_methods
from .mt_bench import mt_bench_prompts
from .report import write_report

# Recipe fields that mean something for Medusa heads too (data and optimisation, not FIRP wiring).
MEDUSA_RECIPE_FIELDS = {"num_prompts", "prompt_tokens", "max_new_tokens", "steps", "grad_accum", "lr", "warmup",
                        "seq_len", "anchors_per_seq", "num_future_tokens", "loss_weights", "gen_batch_size",
                        "prompt_cut", "backend", "holdout_percent", "seed"}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model, heads and prompts")
    g.add_argument("--size", default="micro", choices=["micro", "small"],
                   help="reference model size used for whatever of --model/--heads/--medusa-heads/--prompts is omitted "
                   "(built and cached on first use by training.reference_model / reference_heads)")
    g.add_argument("--model", type=Path, help="HF model directory, or a registry model name (smollm2-135m-instruct: "
                   "fetched and cached like `firp fetch-model`, FIRP heads default to the shipped ones); "
                   "default: the reference model of --size")
    g.add_argument("--heads", type=Path, help="FIRP heads directory (default: reference FIRP heads of --size)")
    g.add_argument("--medusa-heads", type=Path, help="Medusa heads directory (default: the shipped ones for a registry model, else reference Medusa heads)")
    g.add_argument("--prompts", type=Path, help="prompts file (.jsonl with 'prompt' or 'prompt_ids', .json, or text "
                   "lines); default: --num-prompts windows cut from the held-out stdlib files into OUT/prompts.jsonl")
    g.add_argument("--mt-bench", type=int, metavar="N", help="prompts: the first N questions of each MT-bench "
                   "category (10 = all 80), first turns through the model's chat template; adds per-category tables")
    g.add_argument("--num-prompts", type=int, default=100, help="prompts to use (the first N of --prompts)")
    g.add_argument("--prompt-tokens", type=int, default=64, help="length of generated held-out prompts, in tokens "
                   "(each ends at the end of the line holding its N-th token)")
    g.add_argument("--seed", type=int, default=0, help="seed of the held-out prompt sampler")
    g = p.add_argument_group("what to measure")
    g.add_argument("--methods", default=",".join(MAIN_METHODS),
                   help="comma list of methods; 'ar' (the reference) is always added")
    g.add_argument("--ablation", choices=ABLATIONS, help="run this ablation instead of the method comparison: FIRP "
                   "heads trained per variant (inject layer t, serial/parallel source, pseudo tokens attending each "
                   "other, K) or tree budgets; writes to OUT/ablation-<kind>")
    g.add_argument("--heads-recipe", type=parse_recipe_overrides, default={}, metavar="K=V,...",
                   help="overrides of the reference heads recipe, for the default FIRP and Medusa heads and every "
                   "ablation variant (e.g. steps=600 to train longer, steps=60 for cheap ablation heads); "
                   "see training.reference_heads.HeadsRecipe")
    g.add_argument("--max-new-tokens", type=int, default=128, help="tokens generated per prompt")
    g.add_argument("--repeats", type=int, default=3, help="timed passes over all prompts (medians are reported)")
    g = p.add_argument_group("trees and drafters")
    g.add_argument("--budget", type=int, default=16, help="tree nodes (root included) for firp-tree and medusa")
    g.add_argument("--pseudo-nodes", type=int, default=4,
                   help="firp-tree-sparse: tree nodes that get pseudo rows (the likeliest last ones; root included)")
    g.add_argument("--tree-topk", type=int, default=4, help="widest rank per depth a budget tree may use")
    g.add_argument("--tree-probs", choices=["calibrated", "prior"], default="calibrated",
                   help="shape budget trees with rank probabilities measured per drafter on separate held-out "
                   "calibration prompts, or with the fixed prior of vllm_firp.core.tree")
    g.add_argument("--calib-prompts", type=int, default=8, help="calibration prompts (not among the measured ones)")
    g.add_argument("--sweep-budgets", type=_ints, default=[2, 4, 8, 16, 32, 64],
                   help="budgets of the FIRP-vs-Medusa tau-vs-budget sweep (empty: no sweep)")
    g.add_argument("--sweep-prompts", type=int, default=20, help="prompts of the sweep (first N; one timed pass)")
    g.add_argument("--pld-ngram", type=_ints, default=[3, 1], metavar="MAX,MIN", help="prompt lookup n-gram sizes")
    g.add_argument("--pld-depth", type=int, default=4, help="prompt lookup chain length")
    g.add_argument("--exit-layer", type=int, help="early-exit draft layer m (default: half the layers)")
    g.add_argument("--exit-depth", type=int, default=2, help="early-exit chain length")
    g = p.add_argument_group("runtime")
    g.add_argument("--out", type=Path, required=True, help="output directory")
    g.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="compute dtype; auto (default) = as saved where this CPU computes it natively, else float32")
    g.add_argument("--threads", default="auto", help="torch CPU threads, or 'auto': time 1 and 2 threads on one AR "
                   "generation and keep the faster (tiny models are often fastest on 1)")
    g.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _log(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)


def load_prompts(args: argparse.Namespace, model_dir: Path) -> tuple[list[list[int]], list[list[int]], list[str] | None]:
    """(measured prompts, calibration prompts) as token ids, and each prompt's MT-bench category (or None)."""
    from vllm_firp_training.data import encode_prompts, read_prompt_records
    from vllm_firp_training.reference_model import write_heldout_prompts

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError):
        tokenizer = None  # fine for prompt_ids records; text prompts then fail with a clear message
    if args.mt_bench:
        prompts, groups, rest = mt_bench_prompts(tokenizer, args.mt_bench)
        calib = rest[: args.calib_prompts] if args.tree_probs == "calibrated" else []
        return prompts, calib, groups
    path = args.prompts
    if path is None:
        path = args.out / "prompts.jsonl"
        write_heldout_prompts(path, args.num_prompts, args.prompt_tokens, model_dir, seed=args.seed)
    prompts = [p.ids for p in encode_prompts(read_prompt_records(path), tokenizer)][: args.num_prompts]
    calib: list[list[int]] = []
    if args.tree_probs == "calibrated" and args.calib_prompts > 0:
        cpath = args.out / "calib_prompts.jsonl"
        write_heldout_prompts(cpath, 2 * args.calib_prompts, args.prompt_tokens, model_dir, seed=args.seed + 1)
        seen = {tuple(p) for p in prompts}
        calib = [p.ids for p in encode_prompts(read_prompt_records(cpath), tokenizer) if tuple(p.ids) not in seen]
        calib = calib[: args.calib_prompts]
    return prompts, calib, None


def resolve_paths(args: argparse.Namespace, need_heads: bool) -> dict[str, Path | None]:
    """Model and heads (vllm_firp.resolve): --model (registry name or directory) or the reference of --size."""
    directory = args.model is not None and Path(args.model).is_dir()
    train = need_heads or args.model is not None  # registry heads ship; reference heads are trained on demand
    recipe = args.heads_recipe
    m = resolve(args.model, {"firp": args.heads, "medusa": args.medusa_heads},
                methods=("firp", "medusa") if train and not directory else (), default_size=args.size,
                recipes={"firp": recipe, "medusa": {k: v for k, v in recipe.items() if k in MEDUSA_RECIPE_FIELDS}},
                progress=not args.quiet)
    return {"model": m.model, "heads": m.heads.get("firp"), "medusa_heads": m.heads.get("medusa")}


def set_threads(args: argparse.Namespace, builder: Builder, prompt: list[int]) -> dict:
    if args.threads != "auto":
        torch.set_num_threads(int(args.threads))
        return {"threads": int(args.threads), "picked_by": "--threads"}
    cands = sorted({1, min(2, os.cpu_count() or 1)})
    ar = builder.ar()
    best, med = pick_threads(lambda: ar.generate(prompt, 32), cands)
    return {"threads": best, "picked_by": "auto", "median_seconds_32_tokens": med}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)  # until --threads is resolved; loading and calibration are light
    methods_wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    need_heads = args.ablation is not None or any(m.startswith(("firp", "medusa")) for m in methods_wanted)
    paths = resolve_paths(args, need_heads)
    out = args.out / f"ablation-{args.ablation}" if args.ablation else args.out
    out.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    _log(args, f"model {paths['model']}; heads {paths['heads']}; medusa {paths['medusa_heads']}")

    dtype = model_dtype(paths["model"], args.dtype)
    model = AutoModelForCausalLM.from_pretrained(str(paths["model"]), dtype=dtype, attn_implementation="sdpa").eval()
    firp_heads = FirpHeads.from_pretrained(paths["heads"], model.config, dtype=dtype) if paths["heads"] else None
    medusa_heads = None
    if paths["medusa_heads"]:
        from vllm_firp_training.medusa import MedusaHeads

        medusa_heads = MedusaHeads.from_pretrained(paths["medusa_heads"], model.config, dtype=dtype)
    prompts, calib, groups = load_prompts(args, Path(paths["model"]))
    opts = Options(budget=args.budget, pseudo_nodes=args.pseudo_nodes, tree_topk=args.tree_topk,
                   tree_probs=args.tree_probs, calib_prompts=calib,
                   pld_ngram=(args.pld_ngram[0], args.pld_ngram[-1]), pld_depth=args.pld_depth,
                   exit_layer=args.exit_layer, exit_depth=args.exit_depth)
    builder = Builder(model, opts)
    threads = set_threads(args, builder, prompts[0])
    _log(args, f"{len(prompts)} prompts, {len(calib)} calibration prompts; threads {threads}")

    meta = machine_info()
    t0 = time.perf_counter()
    if args.ablation:
        methods = ablation_methods(args.ablation, builder, _firp_loader(args, firp_heads, model.config, dtype),
                                   _recipe_fields(), args.sweep_budgets, medusa_heads)
    else:
        methods = builder.main_methods(methods_wanted, firp_heads, medusa_heads)
    _log(args, "methods: " + ", ".join(f"{m.name} ({m.describe_tree()})" for m in methods))
    results: dict[str, Any] = {
        "title": f"FIRP ablation: {args.ablation}" if args.ablation else "FIRP vs peers in the reference engine",
        "meta": meta,
        "settings": {"num_prompts": len(prompts), "prompts": f"MT-bench first turns, {args.mt_bench} per category"
                     if args.mt_bench else str(args.prompts or "held-out stdlib windows"),
                     "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
                     "budget": args.budget, "threads": threads, "dtype": dtype_name(dtype),
                     **{k: str(v) if isinstance(v, Path) else v for k, v in paths.items()}},
        "command": "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "methods": measure(methods, prompts, args.max_new_tokens, args.repeats, progress=not args.quiet,
                           groups=groups),
    }
    if not args.ablation and args.sweep_budgets and args.sweep_prompts > 0 and (firp_heads or medusa_heads):
        _log(args, f"budget sweep {args.sweep_budgets} on {args.sweep_prompts} prompts")
        sweep = builder.budget_sweep(args.sweep_budgets, firp_heads, medusa_heads)
        figures = measure(sweep, prompts[: args.sweep_prompts], args.max_new_tokens, 1, progress=not args.quiet)
        results["budget_sweep"] = [{"name": n, **f} for n, f in figures.items() if n != "ar"]
        results["budget_sweep_settings"] = {"num_prompts": min(args.sweep_prompts, len(prompts)), "repeats": 1}
    results["rank_probs"] = opts.rank_probs
    results["meta"]["loadavg_end"] = machine_info()["loadavg"]
    results["meta"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
    files = write_report(results, out)
    print((out / "results.md").read_text())
    _log(args, "wrote " + ", ".join(str(f) for f in files))
    return 0


def _recipe_fields() -> set[str]:
    from vllm_firp_training.reference_heads import HeadsRecipe

    return {f.name for f in dataclasses.fields(HeadsRecipe)}


def _firp_loader(args: argparse.Namespace, default: FirpHeads | None, model_config: Any, dtype: torch.dtype):
    """Heads for an ablation variant: the reference recipe of --size plus overrides, trained on first use."""
    from vllm_firp_training.reference_heads import ensure_reference_heads

    def load(overrides: dict) -> FirpHeads:
        merged = {**args.heads_recipe, **overrides}
        if not merged and default is not None:
            return default
        if args.model is not None:
            raise ValueError("ablations that train heads need the reference model (omit --model, use --size)")
        path = ensure_reference_heads(args.size, "firp", progress=not args.quiet, **merged)
        return FirpHeads.from_pretrained(path, model_config, dtype=dtype)

    return load


if __name__ == "__main__":
    raise SystemExit(main())
