"""Where does FIRP's accuracy peak? Train at several inject layers (and the baselines) from one teacher cache.

    python -m vllm_firp_training.inject_sweep --model MODEL --teacher-cache cache/ --data data/ --out-dir sweep/ \\
        --inject-layers 12,18,23,26 --baselines medusa,eagle3 --jobs 2 -- --steps 150 --grad-accum 8 ...

Every run gets the same training flags (after ``--``: the same steps, anchors, optimizer; the same
budget), one CPU thread, and ``--jobs`` runs go at once. Each trained head is then evaluated on
held-out sequences of ``--data`` by ``training.evaluate`` (the base model in ``--eval-dtype``, the
dtype it is served in). Finished runs are skipped, so the sweep resumes. Writes ``sweep.json``,
``sweep.md`` and ``sweep.png`` (accuracy per draft position against the inject layer, and the
cosine of pseudo states to the real future states layer by layer).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="firp inject-sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the frozen base model (HF directory)")
    p.add_argument("--teacher-cache", required=True, type=Path, help="cache from vllm_firp_training.teacher_cache")
    p.add_argument("--data", required=True, type=Path, help="data directory whose held-out sequences evaluate")
    p.add_argument("--out-dir", required=True, type=Path, help="heads, evaluations and the sweep tables go here")
    p.add_argument("--inject-layers", default="12,18,23,26", help="FIRP inject layers to train (default 12,18,23,26)")
    p.add_argument("--baselines", default="medusa,eagle3", help="baselines on the same budget ('' for none)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each (default 2)")
    p.add_argument("--eval-max-seqs", type=int, default=40, help="held-out sequences to evaluate (default 40)")
    p.add_argument("--eval-split", choices=["eval", "all"], default="eval", help="held-out sequences (default) or "
                   "all of them (tiny data sets)")
    p.add_argument("--eval-dtype", default="float32", help="base model dtype for evaluation (default float32)")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: flags for training.train, same for all")
    return p


def _runs(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    runs = [(f"firp-t{t}", ["--method", "firp", "--inject-layer", t]) for t in args.inject_layers.split(",") if t]
    return runs + [(m, ["--method", m]) for m in args.baselines.split(",") if m]


def _run_one(args: argparse.Namespace, name: str, flags: list[str]) -> str:
    heads, ev = args.out_dir / name, args.out_dir / f"{name}-eval"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    extra = [a for a in args.train_args if a != "--"]
    steps = [
        (heads / "config.json", [sys.executable, "-m", f"{__package__}.train", "--model", args.model, "--teacher-cache",
                                 str(args.teacher_cache), "--out", str(heads), "--threads", "1", "--quiet",
                                 *flags, *extra]),
        (ev / "eval.json", [sys.executable, "-m", f"{__package__}.evaluate", "--model", args.model, "--heads", str(heads),
                            "--data", str(args.data), "--out-dir", str(ev), "--max-seqs", str(args.eval_max_seqs),
                            "--split", args.eval_split,
                            "--dtype", args.eval_dtype, "--threads", "1", "--quiet"]),
    ]
    with open(args.out_dir / f"{name}.log", "a") as log:
        for done, cmd in steps:
            if done.is_file():
                continue
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode:
                raise RuntimeError(f"{name}: {' '.join(cmd[2:4])} failed; see {args.out_dir / (name + '.log')}")
    return name


def summarize(out_dir: Path, names: Sequence[str]) -> dict[str, Any]:
    rows = []
    for name in names:
        cfg = json.loads((out_dir / name / "config.json").read_text())
        ev = json.loads((out_dir / f"{name}-eval" / "eval.json").read_text())
        rec = cfg.get("training", {})
        anchors = rec.get("anchors_trained", 0)
        rows.append({
            "run": name, "method": ev["method"], "inject_layer": (cfg.get("inject_layers") or [None])[0],
            "train_wall_s": rec.get("wall_time_s"), "train_anchors": anchors,
            "anchors_per_s": round(anchors / rec["wall_time_s"], 1) if rec.get("wall_time_s") else None,
            "train_top1": rec.get("final_top1"), "top1": ev["top1_vs_greedy"], "top5": ev["top5_vs_greedy"],
            "tau_chain": ev["tau_chain"][-1],
            "tau_tree": {b: t["tau_measured"] for b, t in ev["tau_tree"].items()},
            "cosine_k1": {int(layer): v["pseudo"] for layer, v in ev.get("cosine", {}).get("1", {}).items()},
            "copy_anchor_k1": {int(layer): v["copy_anchor"] for layer, v in ev.get("cosine", {}).get("1", {}).items()},
            "eval_sequences": ev["sequences"], "model_dtype": rec.get("model_dtype"),
            "cpu_capability": rec.get("cpu_capability"),
        })
    return {"runs": rows}


def markdown(summary: dict[str, Any]) -> str:
    rows = summary["runs"]
    budgets = list(rows[0]["tau_tree"]) if rows else []
    head = ["run", "top-1 k=1/2/3", "top-5 k=1/2/3", "tau chain", *[f"tau tree {b}" for b in budgets],
            "train min", "anchors/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"], " / ".join(f"{a:.3f}" for a in r["top1"]), " / ".join(f"{a:.3f}" for a in r["top5"]),
                 f"{r['tau_chain']:.3f}", *[f"{r['tau_tree'][b]:.3f}" for b in budgets],
                 f"{(r['train_wall_s'] or 0) / 60:.1f}", f"{r['anchors_per_s'] or 0:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    firp = sorted((r for r in summary["runs"] if r["method"] == "firp"), key=lambda r: r["inject_layer"])
    others = [r for r in summary["runs"] if r["method"] != "firp"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    ts = [r["inject_layer"] for r in firp]
    for k in range(len(firp[0]["top1"]) if firp else 0):
        line = ax.plot(ts, [r["top1"][k] for r in firp], marker="o", label=f"FIRP k={k + 1}")[0]
        for style, r in zip(("--", ":"), others, strict=False):
            ax.axhline(r["top1"][k], ls=style, color=line.get_color(), lw=1, label=f"{r['run']} k={k + 1}")
    ax.set(xlabel="inject layer t", ylabel="top-1 vs greedy token (held out)", xticks=ts,
           title="accuracy per draft position against the inject layer")
    ax.legend(fontsize=7, ncol=2)
    for r in firp:
        layers = sorted(r["cosine_k1"])
        bx.plot(layers, [r["cosine_k1"][n] for n in layers], marker=".", label=f"pseudo k=1, t={r['inject_layer']}")
    if firp:
        base = min(firp, key=lambda r: r["inject_layer"])
        layers = sorted(base["copy_anchor_k1"])
        bx.plot(layers, [base["copy_anchor_k1"][n] for n in layers], color="grey", ls="--", label="copy the anchor")
    bx.set(xlabel="layer (residual stream after it)", ylabel="cosine to the real state of position i+1",
           title="pseudo k=1 against the real future state, by layer")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    runs = _runs(args)
    try:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            names = list(pool.map(lambda r: _run_one(args, *r), runs))
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = summarize(args.out_dir, names) | {"teacher_cache": str(args.teacher_cache),
                                                "train_args": [a for a in args.train_args if a != "--"]}
    (args.out_dir / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out_dir / "sweep.md").write_text(markdown(summary))
    plot(summary, args.out_dir / "sweep.png")
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
