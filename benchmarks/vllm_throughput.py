"""vLLM serving throughput: no speculation vs vLLM's built-in ngram, FIRP, and our baselines served by vLLM's own
methods (Medusa heads as ``medusa``, the model's first layers as an early-exit ``draft_model``, an EAGLE-3 draft
as ``eagle3``), per batch size.

Each method runs in its own subprocess (one vLLM engine at a time, a fresh process per engine) on the
same held-out code prompts; a batch of B prompts is one ``LLM.generate`` call. Per (method, batch
size) it records, over ``--repeats`` distinct prompt sets, the medians of: output tokens/s (all output
tokens / wall time), time per output token (per request, from vLLM's first/last token timestamps) and
mean acceptance length (1 + accepted / drafts, from vLLM's spec-decode counters). Writes
``results.json``, ``results.md`` and ``throughput.png`` to ``--out``.

    python -m benchmarks.vllm_throughput --size micro --out bench-out/vllm
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vllm_firp.core.precision import DTYPE_CHOICES, dtype_name, model_dtype
from vllm_firp.packaged_models import CATALOG

METHODS = ("none", "ngram", "firp", "medusa", "early-exit", "eagle3", "suffix")  # after firp: vLLM's own methods


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.vllm_throughput",
        description="Throughput of the vLLM engine without speculation, with vLLM's ngram method and with "
        "FIRP (this project's plugin), on the reference model and held-out code prompts.",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory (results.json, results.md, throughput.png)")
    p.add_argument("--size", default="micro", help="reference model / heads preset (default: micro)")
    p.add_argument("--model", help="model directory (default: training.reference_model for --size)")
    p.add_argument("--heads", help="FIRP heads directory (default: training.reference_heads for --size)")
    p.add_argument("--methods", default="none,ngram,firp",
                   help=f"comma-separated subset of {','.join(METHODS)} (default: none,ngram,firp); medusa serves our "
                   "Medusa heads with vLLM's own 'medusa' method, early-exit the model's first layers with 'draft_model', "
                   "eagle3 our EAGLE-3 draft with 'eagle3', suffix is vLLM's model-free suffix decoding (needs "
                   "arctic-inference: scripts/build_arctic_inference.sh)")
    p.add_argument("--medusa-heads", help="our Medusa heads (default: the shipped ones for a registry model, else training.reference_heads medusa for --size)")
    p.add_argument("--eagle3-heads", help="our EAGLE-3 draft (training.eagle3; default: the cached reference "
                   "EAGLE-3 draft for --size, trained on first use)")
    p.add_argument("--early-exit-layers", type=int, default=2,
                   help="decoder layers of the early-exit draft (default: 2)")
    p.add_argument("--batch-sizes", default="1,4,16,32", help="comma-separated batch sizes (default: 1,4,16,32)")
    p.add_argument("--repeats", type=int, default=3, help="the prompt pool is max(batch sizes) x this many prompts; "
                   "every batch size serves the whole pool (acceptance pooled over it, speed medians over its calls)")
    p.add_argument("--max-tokens", type=int, default=128, help="output tokens per request (EOS ignored)")
    p.add_argument("--prompt-tokens", type=int, default=64, help="approximate prompt length in tokens")
    p.add_argument("--rounds", type=int, default=1, help="run the whole method list this many times, its order "
                   "reversed every other round (A B C, C B A, ...), so a drifting machine hits every method alike; "
                   "medians over all rounds and repeats (one engine start per method per round)")
    p.add_argument("--mt-bench", action="store_true", help="prompts: MT-bench's 80 first turns through the model's "
                   "chat template, categories interleaved (instead of held-out code windows)")
    p.add_argument("--num-spec-tokens", type=int, help="draft length for ngram and FIRP (default: the heads' K)")
    p.add_argument("--ngram-min", type=int, default=2, help="ngram prompt_lookup_min (default: 2)")
    p.add_argument("--ngram-max", type=int, default=4, help="ngram prompt_lookup_max (default: 4)")
    p.add_argument("--k-schedule", type=json.loads, metavar="JSON",
                   help="vLLM's num_speculative_tokens_per_batch_size for ngram and FIRP, e.g. '[[1,4,3],[5,1024,0]]' "
                   "(inclusive batch-size ranges -> K; K=0 turns drafting off there)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="model dtype handed to vLLM; auto (default) = as saved where this CPU computes it natively, "
                   "else float32 (vLLM's own auto keeps bf16 on CPUs that only emulate it)")
    p.add_argument("--max-model-len", type=int, default=1024, help="vLLM max_model_len (default: 1024)")
    p.add_argument("--compile", action="store_true", help="allow torch.compile (default: enforce_eager)")
    p.add_argument("--kv-cache-gib", default="2", help="VLLM_CPU_KVCACHE_SPACE for the CPU build (default: 2)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds allowed per method subprocess")
    return p


# The worker's settings, written as one JSON file by the orchestrator (``--worker FILE``).
WORKER_FIELDS = ("model", "heads", "batch_sizes", "repeats", "max_tokens", "num_spec_tokens", "ngram_min",
                 "ngram_max", "dtype", "max_model_len", "compile", "k_schedule")


# --------------------------------------------------------------------------------------------- worker
def spec_config(method: str, args: argparse.Namespace) -> dict[str, Any] | None:
    if method == "none":
        return None
    schedule = {"num_speculative_tokens_per_batch_size": args.k_schedule} if args.k_schedule else {}
    if method == "ngram":
        return {"method": "ngram", "num_speculative_tokens": args.num_spec_tokens,
                "prompt_lookup_min": args.ngram_min, "prompt_lookup_max": args.ngram_max, **schedule}
    if method == "suffix":  # needs arctic-inference (scripts/build_arctic_inference.sh builds it for CPU machines)
        # No cross-request cache: repeated benchmark prompts would otherwise be answered from earlier requests.
        return {"method": "suffix", "num_speculative_tokens": args.num_spec_tokens,
                "suffix_decoding_max_cached_requests": 0, **schedule}
    if method in ("medusa", "early-exit", "eagle3"):
        vllm_method = {"medusa": "medusa", "early-exit": "draft_model", "eagle3": "eagle3"}[method]
        return {"method": vllm_method, "model": args.draft_dir, "num_speculative_tokens": args.num_spec_tokens,
                **schedule}
    return {"method": "firp", "model": args.heads, "num_speculative_tokens": args.num_spec_tokens, **schedule}


def _spec_counters(llm: Any) -> tuple[float, float, list[float]]:
    """Drafts, accepted tokens, and accepted tokens per draft position, as vLLM's metrics count them."""
    metrics = llm.get_metrics()
    values = {m.name: getattr(m, "value", 0.0) for m in metrics}
    per_pos = next((list(m.values) for m in metrics if m.name == "vllm:spec_decode_num_accepted_tokens_per_pos"), [])
    return (values.get("vllm:spec_decode_num_drafts", 0.0), values.get("vllm:spec_decode_num_accepted_tokens", 0.0),
            per_pos)


def _tpot(out: Any, wall: float) -> float:
    m, n = out.metrics, len(out.outputs[0].token_ids)
    if m is not None and m.last_token_ts > m.first_token_ts and n > 1:
        return (m.last_token_ts - m.first_token_ts) / (n - 1)
    return wall / max(n, 1)


def run_worker(spec_file: Path) -> None:
    """One method in this process, as the JSON ``spec_file`` says (written by :func:`run_method`)."""
    from vllm import LLM, SamplingParams

    args = argparse.Namespace(**json.loads(Path(spec_file).read_text()))
    prompts = [json.loads(line)["prompt"] for line in Path(args.prompts_file).read_text().splitlines()]
    llm = LLM(model=args.model, speculative_config=spec_config(args.worker, args), dtype=args.dtype,
              max_model_len=args.max_model_len, enforce_eager=not args.compile, disable_log_stats=False,
              max_num_seqs=max(args.batch_sizes), seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    llm.generate(prompts[: max(args.batch_sizes)], SamplingParams(temperature=0.0, max_tokens=16), use_tqdm=False)
    rows = []
    pool = prompts[: max(args.batch_sizes) * args.repeats]  # every batch size serves these same prompts
    for b in args.batch_sizes:
        for r in range(-(-len(pool) // b)):
            batch = [pool[(r * b + i) % len(pool)] for i in range(b)]
            d0, a0, p0 = _spec_counters(llm)
            t0 = time.perf_counter()
            outs = llm.generate(batch, params, use_tqdm=False)
            wall = time.perf_counter() - t0
            d1, a1, p1 = _spec_counters(llm)
            tokens = sum(len(o.outputs[0].token_ids) for o in outs)
            rows.append({
                "method": args.worker, "batch_size": b, "repeat": r, "output_tokens": tokens, "seconds": wall,
                "tokens_per_s": tokens / wall, "tpot_ms": 1000 * statistics.median(_tpot(o, wall) for o in outs),
                "acceptance_length": 1 + (a1 - a0) / (d1 - d0) if d1 > d0 else None,
                "drafts": d1 - d0, "accepted": a1 - a0,  # raw counts: acceptance is pooled over the prompt pool
                "accepted_per_position": [y - x for x, y in zip(p0 or [0] * len(p1), p1, strict=False)],
                # share of drafts whose position-k token was accepted, k = 1..K
                "acceptance_per_position": [round((y - x) / (d1 - d0), 4) for x, y in zip(p0 or [0] * len(p1), p1,
                                                                                            strict=False)]
                if d1 > d0 else None,
                "texts": [o.outputs[0].text for o in outs] if r == 0 else None,
            })
            print(f"[{args.worker}] B={b} r={r}: {tokens / wall:.1f} tok/s", file=sys.stderr, flush=True)
    Path(args.result_file).write_text(json.dumps(rows))


# ---------------------------------------------------------------------------------------- orchestrator
def resolve_models(args: argparse.Namespace) -> None:
    """Model and heads (vllm_firp.resolve): a registry name, a directory, or the reference of --size."""
    from vllm_firp.resolve import resolve

    wanted = [m for m in ("firp", "medusa", "eagle3") if m in args.methods]
    if str(args.model) in CATALOG:
        wanted.append("firp")  # the shipped heads set K even when FIRP itself is not run
    models = resolve(args.model, {"firp": args.heads, "medusa": args.medusa_heads, "eagle3": args.eagle3_heads},
                     methods=wanted, default_size=args.size)
    args.model = str(models.model)
    args.heads, args.medusa_heads, args.eagle3_heads = (
        str(models.heads[m]) if m in models.heads else None for m in ("firp", "medusa", "eagle3"))
    if args.num_spec_tokens is None:
        from vllm_firp.core import FirpConfig

        args.num_spec_tokens = FirpConfig.load(args.heads).K if args.heads else 3
    from vllm_firp_training.export_vllm import (
        export_eagle3_for_vllm,
        export_early_exit_draft,
        export_medusa_for_vllm,
    )

    args.draft_dirs = {}
    if "medusa" in args.methods:
        args.draft_dirs["medusa"] = str(export_medusa_for_vllm(args.medusa_heads, args.model,
                                                               args.out / "drafts" / "medusa-vllm"))
    if "eagle3" in args.methods:
        args.draft_dirs["eagle3"] = str(export_eagle3_for_vllm(args.eagle3_heads, args.model,
                                                               args.out / "drafts" / "eagle3-vllm"))
    if "early-exit" in args.methods:
        n = args.early_exit_layers
        args.draft_dirs["early-exit"] = str(export_early_exit_draft(args.model, n, args.out / "drafts" / f"early-exit-{n}"))


def run_order(methods: list[str], rounds: int) -> list[tuple[int, str]]:
    """(round, method) in run order: A B C, then C B A, ... so slow drift of a shared machine hits all alike."""
    if rounds < 1:
        raise ValueError(f"--rounds must be at least 1, not {rounds}")
    return [(rnd, m) for rnd in range(rounds) for m in (methods if rnd % 2 == 0 else methods[::-1])]


def run_method(method: str, args: argparse.Namespace, prompts_file: Path, round_: int = 0) -> list[dict[str, Any]]:
    tag = method if round_ == 0 else f"{method}-round{round_ + 1}"
    result = args.out / f"raw-{tag}.json"
    spec = {"worker": method, "prompts_file": str(prompts_file), "result_file": str(result),
            "draft_dir": args.draft_dirs.get(method), **{k: getattr(args, k) for k in WORKER_FIELDS}}
    spec_file = args.out / f"worker-{tag}.json"
    spec_file.write_text(json.dumps(spec, indent=1))
    cmd = [sys.executable, "-m", "benchmarks.vllm_throughput", "--worker", str(spec_file)]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib)}
    log = args.out / f"{tag}.log"
    print(f"[vllm_throughput] {method}: running (log {log})", file=sys.stderr, flush=True)
    load = os.getloadavg()[0]
    with open(log, "wb") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=args.timeout)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{method} failed with exit code {proc.returncode}:\n{tail}")
    rows = json.loads(result.read_text())
    for r in rows:  # other processes compete for CPU on shared machines: keep the context
        r["load_avg_1m"] = [round(load, 2), round(os.getloadavg()[0], 2)]
        r["round"] = round_
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        for b in sorted({r["batch_size"] for r in rows if r["method"] == method}):
            rs = [r for r in rows if r["method"] == method and r["batch_size"] == b]
            drafts = sum(r.get("drafts", 0) for r in rs)  # pooled, not a median of per-call ratios
            per_pos = [r["accepted_per_position"] for r in rs if r.get("drafts")]
            out.append({"method": method, "batch_size": b, "repeats": len(rs),
                        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                        "tpot_ms": statistics.median(r["tpot_ms"] for r in rs),
                        "acceptance_length": 1 + sum(r["accepted"] for r in rs) / drafts if drafts else None,
                        "acceptance_per_position": [round(sum(col) / drafts, 3) for col in zip(*per_pos, strict=True)]
                        if per_pos else None})
    base = {s["batch_size"]: s["tokens_per_s"] for s in out if s["method"] == "none"}
    for s in out:
        s["speedup"] = s["tokens_per_s"] / base[s["batch_size"]] if s["batch_size"] in base else None
    return out


def markdown(summary: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# vLLM throughput: {meta['model']}", "",
        f"vLLM {meta['vllm']}, {meta['device']}, dtype {meta['dtype']}; {meta.get('cpu', '?')} (capability "
        f"{meta.get('cpu_capability', '?')}, native bf16 {meta.get('cpu_native_bf16', '?')}); {meta['max_tokens']} output tokens per "
        f"request ({meta.get('prompts', 'held-out code windows')}), K={meta['num_spec_tokens']}"
        + (f" (per batch size: {meta['k_schedule']})" if meta.get("k_schedule") else "")
        + f"; every batch size serves the same pool of max(batch) x {meta['repeats']} prompts, acceptance pooled "
        f"over it, speed medians over its calls x {meta.get('rounds', 1)} round(s) (method order reversed "
        "every other round); FIRP heads "
        f"{meta['heads']}.", "",
        f"commit `{meta.get('commit', '?')}`, {meta.get('date', '')}; command: `{meta.get('command', '')}`", "",
        "| method | batch | output tok/s | speedup vs none | TPOT (ms) | mean acceptance length | accepted at k=1..K |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for s in summary:
        sp = f"{s['speedup']:.2f}x" if s["speedup"] is not None else "-"
        acc = f"{s['acceptance_length']:.2f}" if s["acceptance_length"] is not None else "-"
        per_pos = " / ".join(f"{a:.2f}" for a in s.get("acceptance_per_position") or []) or "-"
        lines.append(f"| {s['method']} | {s['batch_size']} | {s['tokens_per_s']:.1f} | {sp} | "
                     f"{s['tpot_ms']:.2f} | {acc} | {per_pos} |")
    lines += ["", "1-minute load average before/after each method: "
              + ", ".join(f"{m}: {v[0]}/{v[1]}" for m, v in meta["load_avg_1m"].items()) + ".",
              "", "Greedy outputs identical to no speculation (first prompt set of every batch size): "
              + ", ".join(f"{m}: {ok}" for m, ok in meta["same_text_as_none"].items()), ""]
    return "\n".join(lines)


def plot(summary: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"none": "tab:gray", "ngram": "tab:blue", "firp": "tab:orange", "medusa": "tab:green",
              "early-exit": "tab:purple", "eagle3": "tab:red", "suffix": "tab:brown"}
    for method in dict.fromkeys(s["method"] for s in summary):
        ss = [s for s in summary if s["method"] == method]
        style = {"marker": "o", "label": method, "color": colors[method]}
        ax1.plot([s["batch_size"] for s in ss], [s["tokens_per_s"] for s in ss], **style)
        if any(s["acceptance_length"] for s in ss):
            ax2.plot([s["batch_size"] for s in ss], [s["acceptance_length"] for s in ss], **style)
    for ax, ylabel in ((ax1, "output tokens/s (median)"), (ax2, "mean acceptance length")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"] and len(argv) == 2:  # internal: one method, its settings in one JSON file
        run_worker(Path(argv[1]))
        return 0
    args = build_parser().parse_args(argv)
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",")]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := set(args.methods) - set(METHODS):
        raise SystemExit(f"unknown method(s) {sorted(unknown)}; choose from {METHODS}")
    args.out.mkdir(parents=True, exist_ok=True)
    resolve_models(args)
    from vllm_firp_training.reference_model import write_heldout_prompts

    from .measure import machine_info

    info = machine_info()  # commit and uncommitted code at the start of the run
    args.dtype = dtype_name(model_dtype(args.model, args.dtype))  # resolved once, so every worker runs the same
    prompts_file = args.out / "prompts.jsonl"
    if args.mt_bench:
        from transformers import AutoTokenizer

        from .mt_bench import mt_bench_texts

        texts = mt_bench_texts(AutoTokenizer.from_pretrained(args.model))
        prompts_file.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    else:
        write_heldout_prompts(prompts_file, max(args.batch_sizes) * args.repeats, args.prompt_tokens, Path(args.model))
    rows = [r for rnd, m in run_order(args.methods, args.rounds) for r in run_method(m, args, prompts_file, rnd)]
    summary = summarize(rows)
    texts = {m: [r["texts"] for r in rows if r["method"] == m and r["texts"]] for m in args.methods}
    import torch
    import vllm

    meta = {**{k: info[k] for k in ("commit", "dirty_files", "date", "cpu", "cpu_capability", "cpu_native_bf16",
                                     "cpu_count", "torch")},
            "command": "python -m benchmarks.vllm_throughput " + shlex.join(sys.argv[1:]),
            "model": args.model, "heads": args.heads, "drafts": args.draft_dirs, "medusa_heads": args.medusa_heads,
            "eagle3_heads": args.eagle3_heads,
            "vllm": vllm.__version__, "dtype": args.dtype,
            "device": "cuda" if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
            "prompts": "MT-bench first turns (chat template)" if args.mt_bench else "held-out code windows",
            "max_tokens": args.max_tokens, "num_spec_tokens": args.num_spec_tokens, "repeats": args.repeats,
            "rounds": args.rounds,
            "k_schedule": args.k_schedule,
            "load_avg_1m": {m: [r["load_avg_1m"] for r in rows if r["method"] == m and r["repeat"] == 0][0]
                            for m in args.methods},
            "same_text_as_none": {m: texts[m] == texts["none"] for m in texts if m != "none" and "none" in texts}}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary, "raw": rows}, indent=1))
    md = markdown(summary, meta)
    (args.out / "results.md").write_text(md)
    plot(summary, args.out / "throughput.png", f"vLLM {vllm.__version__}: {Path(args.model).name}")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
