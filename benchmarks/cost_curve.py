"""Step cost against rows: latency of one forward with n new rows relative to n = 1.

Speculative decoding pays for its drafts with wider forwards; the speedup it can reach is
tau / (cost(rows) / cost(1)). This measures that ratio instead of assuming it is flat.

    python -m benchmarks.cost_curve --out bench-out/cost [--models micro,llama-1b-like,llama-7b-like]

Every forward runs through ``vllm_firp.engine.forward.forward_rows`` (the reference engine's path)
with ``--context`` tokens already in the K/V cache, the n new rows causal among themselves, and the
final norm + LM head applied to all n rows (what verification of an n-node tree needs).

- Reference models (``micro``, ``small``): the whole trained model, as the benchmark runs it.
- ``llama-1b-like`` / ``llama-7b-like``: random weights (bf16 where the CPU has native bf16, else fp32;
  ``--dtype``) with the shapes of Llama-3.2-1B
  (d 2048, 16 layers, GQA 32/8, MLP 8192, vocab 128256) and Llama-2-7B (d 4096, 32 layers, MHA 32,
  MLP 11008, vocab 32000). Only ``--layers`` decoder layers are built; the full-depth cost is
  composed from measurements: ``(t_layers(n) / layers) * L + t_head(n)``, where ``t_layers`` is the
  embedding + measured layers and ``t_head`` the final norm + LM head, timed separately.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from vllm_firp.core import causal_layout
from vllm_firp.core.precision import DTYPE_CHOICES, dtype_name, model_dtype, resolve_dtype
from vllm_firp.engine.forward import ModelParts, commit_rows, forward_rows, new_cache

from .measure import machine_info, machine_line, pick_threads

SHAPES = {
    "llama-1b-like": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                          num_key_value_heads=8, vocab_size=128256),
    "llama-7b-like": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=32, vocab_size=32000),
}
ROWS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


def synthetic_model(name: str, layers: int, dtype: torch.dtype) -> LlamaForCausalLM:
    cfg = LlamaConfig(**SHAPES[name], max_position_embeddings=4096, tie_word_embeddings=False)
    cfg.num_hidden_layers = layers
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


class StepTimer:
    """Times the layer stack and the head for n new rows over a fixed prefilled context."""

    def __init__(self, model, context: int) -> None:
        self.parts = ModelParts.of(model)
        self.context = context
        self.cache = new_cache()
        device = self.parts.embed.weight.device
        ids = torch.randint(0, model.config.vocab_size, (context + max(ROWS),), generator=torch.Generator().manual_seed(0))
        self.ids = ids.to(device)
        with torch.inference_mode():
            forward_rows(self.parts, self.ids[:context], causal_layout(context), self.cache)

    @torch.inference_mode()
    def layers(self, n: int) -> tuple[float, torch.Tensor]:
        ids = self.ids[self.context : self.context + n]
        t0 = time.perf_counter()
        hidden, _ = forward_rows(self.parts, ids, causal_layout(n), self.cache)
        dt = time.perf_counter() - t0
        commit_rows(self.cache, self.context, torch.empty(0, dtype=torch.long))  # back to the context only
        return dt, hidden

    @torch.inference_mode()
    def head(self, hidden: torch.Tensor) -> float:
        t0 = time.perf_counter()
        self.parts.lm_head(hidden)
        return time.perf_counter() - t0


def curve(timer: StepTimer, rows: Sequence[int], repeats: int, depth_factor: float) -> dict[int, dict[str, float]]:
    """Median seconds per n (interleaved over n); ``full = layers * depth_factor + head``."""
    samples: dict[int, list[tuple[float, float]]] = {n: [] for n in rows}
    for n in rows:  # warm-up
        timer.head(timer.layers(n)[1])
    for _ in range(repeats):
        for n in rows:
            t_layers, hidden = timer.layers(n)
            samples[n].append((t_layers, timer.head(hidden)))
    out = {}
    for n, s in samples.items():
        lay = statistics.median(x for x, _ in s)
        head = statistics.median(y for _, y in s)
        out[n] = {"layers_s": lay, "head_s": head, "full_s": lay * depth_factor + head}
    base = out[rows[0]]["full_s"]
    for v in out.values():
        v["relative"] = v["full_s"] / base
    return out


def measure_model(name: str, args: argparse.Namespace) -> dict:
    if name in SHAPES:
        dtype = resolve_dtype(args.dtype)
        model = synthetic_model(name, args.layers, dtype)
        full_layers = SHAPES[name]["num_hidden_layers"]
        what = (f"random {dtype_name(dtype)} weights, {args.layers} of {full_layers} layers built; "
                f"full depth composed as layers*{full_layers / args.layers:g} + head")
    else:
        from vllm_firp_training.reference_model import ensure_reference_model

        model_dir = ensure_reference_model(name, progress=False)
        dtype = model_dtype(model_dir, args.dtype)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa").eval()
        full_layers = model.config.num_hidden_layers
        what = f"trained reference model, {dtype_name(dtype)}, all layers"
    depth_factor = full_layers / model.config.num_hidden_layers
    timer = StepTimer(model, args.context)
    specs = _thread_spec(args.threads)
    spec = specs.get(name, specs.get("", "auto"))
    threads = {"threads": int(spec)} if spec != "auto" else {}
    if not threads:
        def probe() -> None:
            for n in (1, 16):
                timer.head(timer.layers(n)[1])

        best, med = pick_threads(probe, (1, 2))
        threads = {"threads": best, "probe_median_s": med}
    torch.set_num_threads(threads["threads"])
    reps = args.repeats if name not in SHAPES else max(3, args.repeats // 2)
    points = curve(timer, args.rows, reps, depth_factor)
    cfg = model.config
    return {"model": name, "what": what, "dtype": dtype_name(dtype), "hidden_size": cfg.hidden_size, "layers_full": full_layers,
            "layers_built": cfg.num_hidden_layers, "vocab_size": cfg.vocab_size, "context": args.context,
            "repeats": reps, **threads, "points": {str(n): {k: round(v, 6) for k, v in p.items()} for n, p in points.items()}}


def _thread_spec(text: str) -> dict[str, str]:
    """``auto``, ``N`` or ``model=N,...`` (models not named: ``auto``) -> {model or "": "N"/"auto"}."""
    return {k if v else "": v or k for k, _, v in (item.partition("=") for item in text.split(",") if item)}


def to_markdown(results: dict) -> str:
    rows = results["rows"]
    meta = results["meta"]
    lines = [
        "# Step cost vs new rows (relative to 1 row)", "",
        f"commit `{meta['commit']}`, {meta['date']}; {machine_line(meta)}; "
        f"load average {meta['loadavg']} at start, {meta.get('loadavg_end')} at end. Context {results['context']} "
        "tokens in the cache; the LM head runs on every new row; medians of interleaved repeats.", "",
        "| model | threads | 1-row step | " + " | ".join(f"{n} rows" for n in rows) + " |",
        "|---|---:|---:|" + "---:|" * len(rows),
    ]
    for m in results["models"]:
        one = m["points"][str(rows[0])]["full_s"] * 1e3
        rel = " | ".join(f"{m['points'][str(n)]['relative']:.2f}x" for n in rows)
        lines.append(f"| {m['model']} | {m['threads']} | {one:.2f} ms | {rel} |")
    lines += ["", "What was measured:", ""] + [f"- {m['model']}: {m['what']}" for m in results["models"]]
    lines += ["", "Command:", "", f"    {results['command']}"]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m in results["models"]:
        ns = [int(n) for n in m["points"]]
        ax.plot(ns, [m["points"][str(n)]["relative"] for n in ns], marker="o", label=m["model"])
    ax.set_xlabel("new rows in one forward")
    ax.set_ylabel("latency relative to 1 row")
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cost_curve", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output directory (cost_curve.json/.md/.png)")
    p.add_argument("--models", default="micro,llama-1b-like,llama-7b-like",
                   help=f"comma list: reference sizes (micro, small; built if missing) and/or {', '.join(SHAPES)}")
    p.add_argument("--rows", type=lambda s: [int(x) for x in s.split(",")], default=list(ROWS),
                   help="new-row counts to time (the first is the baseline)")
    p.add_argument("--context", type=int, default=256, help="tokens already in the K/V cache")
    p.add_argument("--layers", type=int, default=2, help="decoder layers built for the synthetic shapes")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="compute dtype; auto (default) = bf16 for the synthetic shapes and the checkpoint's dtype for "
                   "reference models where this CPU computes it natively, else float32")
    p.add_argument("--repeats", type=int, default=31, help="timed repeats per row count (synthetic shapes: half, >= 3)")
    p.add_argument("--threads", default="micro=1,small=1,auto",
                   help="torch threads: N, 'auto' (fastest of 1 and 2 on a probe, per model) or per model, "
                   "e.g. 'micro=1,auto'; the default matches what benchmarks.run picks for the reference models")
    return p


def main(argv: Sequence[str] | None = None, log: Callable[[str], None] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = log or (lambda s: print(f"[cost_curve] {s}", file=sys.stderr, flush=True))
    results = {"meta": machine_info(), "rows": args.rows, "context": args.context, "models": [],
               "command": "python -m benchmarks.cost_curve " + " ".join(argv if argv is not None else sys.argv[1:])}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        t0 = time.perf_counter()
        results["models"].append(measure_model(name, args))
        log(f"{name}: {time.perf_counter() - t0:.0f}s, relative cost at {args.rows[-1]} rows "
            f"{results['models'][-1]['points'][str(args.rows[-1])]['relative']:.2f}x")
    results["meta"]["loadavg_end"] = machine_info()["loadavg"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cost_curve.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "cost_curve.md").write_text(to_markdown(results))
    plot(results, args.out / "cost_curve.png")
    print(to_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
