"""Benchmark report: ``results.json``, ``results.md`` and PNG plots from a results dict.

The dict (built by ``benchmarks.run``) holds ``meta``, ``settings``, ``methods`` (name -> figures from
:func:`benchmarks.measure.measure`) and optionally ``budget_sweep`` (rows of family, budget, tau, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .measure import machine_line  # noqa: E402

TREE_FAMILIES = ("firp-tree", "firp-tree-sparse", "medusa")


def markdown_table(methods: dict[str, dict]) -> str:
    head = ("| method | tree | tau (tokens/forward) | rows/forward | tokens/s (median) | speedup vs AR | output == AR |\n"
            "|---|---|---:|---:|---:|---:|---|")
    lines = [head]
    for name, m in methods.items():
        lines.append(f"| {name} | {m['tree']} | {m['tau']:.3f} | {m['rows_per_forward']:.1f} | "
                     f"{m['tokens_per_s']:.1f} | {m['speedup']:.2f}x | {'yes' if m['equal_to_ar'] else 'NO'} |")
    return "\n".join(lines)


def sweep_table(rows: list[dict]) -> str:
    lines = ["| family | budget (nodes) | tau | rows/forward | tokens/s | speedup vs AR |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['budget']} | {r['tau']:.3f} | {r['rows_per_forward']:.1f} | "
                     f"{r['tokens_per_s']:.1f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def group_table(methods: dict[str, dict]) -> str:
    """Per-category tau and speedup (rows: categories, then overall; columns: methods)."""
    names = list(methods)
    groups = list(next(iter(methods.values()))["by_group"])
    lines = ["| category | prompts | " + " | ".join(f"{n} tau / speedup" for n in names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for g in groups:
        cells = [f"{methods[n]['by_group'][g]['tau']:.2f} / {methods[n]['by_group'][g]['speedup']:.2f}x" for n in names]
        lines.append(f"| {g} | {methods[names[0]]['by_group'][g]['num_prompts']} | " + " | ".join(cells) + " |")
    cells = [f"**{methods[n]['tau']:.2f} / {methods[n]['speedup']:.2f}x**" for n in names]
    lines.append(f"| **overall** | {methods[names[0]]['num_prompts']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_rows(results: dict[str, Any]) -> list[dict]:
    """(family, budget) points for the tau-vs-budget plot: the sweep, else tree methods of the table."""
    rows = results.get("budget_sweep") or [
        {"name": n, **m} for n, m in results["methods"].items() if m["family"] in TREE_FAMILIES and m["budget"]
    ]
    return sorted(rows, key=lambda r: (r["family"], r["budget"]))


def to_markdown(results: dict[str, Any]) -> str:
    s, meta = results["settings"], results["meta"]
    parts = [
        f"# {results.get('title', 'Benchmark')}",
        "",
        f"commit `{meta['commit']}`, {meta['date']}; {machine_line(meta)}; dtype {s.get('dtype', 'unknown')}; "
        f"load average at start {meta['loadavg']}, at end {meta.get('loadavg_end')}.",
        "",
        f"{s['num_prompts']} prompts, {s['max_new_tokens']} new tokens each, greedy, {s['repeats']} interleaved "
        "repeats (tokens/s and speedup are medians over repeats; speedup is paired per repeat).",
        "",
        markdown_table(results["methods"]),
        "",
        f"Distinct 4-gram share of the generated text (1 = no repetition, near 0 = loops): "
        f"{results['methods']['ar']['distinct_4gram_ratio']:.3f}.",
    ]
    if all("by_group" in m for m in results["methods"].values()):
        parts += ["", "## Per category (tau = tokens per target forward; speedup = tokens/s vs AR)", "",
                  group_table(results["methods"])]
    if results.get("budget_sweep"):
        bs = results["budget_sweep_settings"]
        parts += ["", f"## Tree budget sweep ({bs['num_prompts']} prompts, {bs['repeats']} repeat(s))", "",
                  sweep_table(results["budget_sweep"])]
    if results.get("rank_probs"):
        parts += ["", "## Rank probabilities used for the budget trees", ""]
        parts += [f"- {k}: {v}" for k, v in results["rank_probs"].items()]
    parts += ["", "## Accepted tokens per forward (fraction of decode forwards)", ""]
    for name, m in results["methods"].items():
        total = sum(m["accepted_histogram"].values()) or 1
        hist = ", ".join(f"{k}: {v / total:.2f}" for k, v in m["accepted_histogram"].items())
        parts.append(f"- {name}: {hist}")
    if results.get("command"):
        parts += ["", "Command:", "", f"    {results['command']}"]
    return "\n".join(parts) + "\n"


def plot_tau_speedup(methods: dict[str, dict], path: Path) -> None:
    names = list(methods)
    fig, axes = plt.subplots(1, 2, figsize=(min(14, max(8, 1.6 * len(names))), 4))
    for ax, key, label in ((axes[0], "tau", "tau: tokens per target forward"), (axes[1], "speedup", "speedup vs AR")):
        vals = [methods[n][key] for n in names]
        bars = ax.bar(names, vals, color="tab:blue")
        ax.bar_label(bars, fmt="%.2f")
        ax.set_ylim(0, 1.12 * max(vals))
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_by_group(methods: dict[str, dict], path: Path) -> None:
    """Grouped bars: speedup vs AR per category, one bar per method."""
    names = [n for n in methods if n != "ar"] or list(methods)
    groups = list(next(iter(methods.values()))["by_group"]) + ["overall"]
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(groups)), 4))
    for j, n in enumerate(names):
        vals = [methods[n]["by_group"][g]["speedup"] for g in groups[:-1]] + [methods[n]["speedup"]]
        ax.bar([x + (j - len(names) / 2 + 0.5) * width for x in range(len(groups))], vals, width=width, label=n)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(groups)), groups, rotation=30)
    ax.set_ylabel("speedup vs AR (tokens/s)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accepted_histogram(methods: dict[str, dict], path: Path) -> None:
    names = [n for n in methods if n != "ar"] or list(methods)
    longest = max((max(map(int, methods[n]["accepted_histogram"]), default=1) for n in names), default=1)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(8, 4))
    for j, n in enumerate(names):
        hist = {int(k): v for k, v in methods[n]["accepted_histogram"].items()}
        total = sum(hist.values()) or 1
        xs = range(1, longest + 1)
        ax.bar([x + (j - len(names) / 2 + 0.5) * width for x in xs], [hist.get(x, 0) / total for x in xs],
               width=width, label=n)
    ax.set_xlabel("tokens emitted by one decode forward (accepted drafts + 1)")
    ax.set_ylabel("fraction of forwards")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tau_vs_budget(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for fam in sorted({r["family"] for r in rows}):
        pts = [(r["budget"], r["tau"]) for r in rows if r["family"] == fam]
        ax.plot(*zip(*pts, strict=True), marker="o", label=fam)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tree budget (nodes, root included)")
    ax.set_ylabel("tau (tokens per target forward)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write JSON, markdown and plots into ``out_dir``; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "results.json", out / "results.md", out / "tau_speedup.png", out / "accepted_histogram.png"]
    files[0].write_text(json.dumps(results, indent=2) + "\n")
    files[1].write_text(to_markdown(results))
    plot_tau_speedup(results["methods"], files[2])
    plot_accepted_histogram(results["methods"], files[3])
    if all("by_group" in m for m in results["methods"].values()):
        files.append(out / "by_category.png")
        plot_by_group(results["methods"], files[-1])
    rows = budget_rows(results)
    if len({r["budget"] for r in rows}) > 1:
        files.append(out / "tau_vs_budget.png")
        plot_tau_vs_budget(rows, files[-1])
    return files


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.report DIR...``: re-render markdown and plots from each DIR/results.json."""
    import sys

    for d in argv if argv is not None else sys.argv[1:]:
        write_report(json.loads((Path(d) / "results.json").read_text()), d)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
