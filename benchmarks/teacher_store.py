"""Which teacher store scales: bytes per token and training-step time of the full store (states + upper K/V),
the compact store (one layer's states + top-k; upper layers recomputed) and no store (the teacher run online).

    python -m benchmarks.teacher_store --model M --data training/datasets/smollm2-135m-instruct/answers \\
        --out benchmarks/results/smollm2-teacher-store

Writes ``teacher_store.{json,md}``. The three FIRP runs train the same heads on the same sequences, anchors and
steps; their final losses show the compact store trains like the others (bf16 states, fp16 log-probs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from vllm_firp_training import teacher_cache, train

from vllm_firp.core.precision import model_dtype, precision_report


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    if fn(*args) != 0:
        raise RuntimeError(f"{fn.__module__} failed")
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict:
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    common = ["--model", args.model, "--data", str(args.data), "--max-sequences", str(args.sequences),
              "--seq-len", str(args.seq_len), "--top-k", "32", "--quiet", "--threads", str(args.threads)]
    stores = {"full": ["--layers", str(args.layer), "--kv-from", str(args.layer)],
              "compact": ["--layers", str(args.layer), "--compact"]}
    rows = []
    for name, flags in [*stores.items(), ("online", None)]:
        row: dict = {"store": name}
        source = ["--data", str(args.data)]
        if flags is not None:
            row["build_s"] = round(_timed(teacher_cache.main, [*common, *flags, "--out", str(work / name)]), 1)
            meta = json.loads((work / name / "meta.json").read_text())
            tokens = sum(len(r.ids) for r in teacher_cache.TeacherCache(work / name))
            size = sum(p.stat().st_size for p in (work / name).glob("*.safetensors"))
            row |= {"tokens": tokens, "bytes_per_token": round(size / tokens), "layers": meta["layers"]}
            source = ["--teacher-cache", str(work / name)]
        heads = work / f"heads-{name}"
        seconds = _timed(train.main, ["--model", args.model, *source, "--out", str(heads), "--steps", str(args.steps),
                                      "--grad-accum", "2", "--inject-layer", str(args.layer), "--warmup", "2",
                                      "--seq-len", str(args.seq_len), "--threads", str(args.threads), "--quiet",
                                      "--lr", "3e-3"])
        recipe = json.loads((heads / "config.json").read_text())["training"]
        row |= {"train_s": round(seconds, 1), "s_per_step": round(seconds / args.steps, 2),
                "final_loss": recipe.get("final_loss")}
        rows.append(row)
    report = {"command": "python -m benchmarks.teacher_store " + " ".join(args.argv), "rows": rows,
              **precision_report(model_dtype(args.model)), "load_average": os.getloadavg()[0], "steps": args.steps, "sequences": args.sequences}
    shutil.rmtree(work, ignore_errors=True)
    return report


def markdown(report: dict) -> str:
    lines = ["| store | bytes per token | cache build (s) | s per training step | final loss |",
             "|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['store']} | {r.get('bytes_per_token', '-')} | {r.get('build_s', '-')} | "
                     f"{r['s_per_step']} | {r['final_loss']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    p = argparse.ArgumentParser(prog="python -m benchmarks.teacher_store", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--layer", type=int, default=18, help="FIRP inject layer (default 18)")
    p.add_argument("--sequences", type=int, default=24)
    p.add_argument("--seq-len", type=int, default=384)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "teacher_store.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "teacher_store.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
