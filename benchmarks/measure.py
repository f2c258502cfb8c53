"""Side-by-side measurement of decoding methods in the reference engine.

Every method decodes the same prompts in one process. Timing is interleaved: for each repeat and each
prompt, all methods run back to back in a rotating order, so load changes on a shared machine hit
every method alike. Greedy outputs must equal plain autoregressive decoding token for token;
anything else raises :class:`OutputMismatch`.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vllm_firp.core import DraftTree, chain_tree
from vllm_firp.core.precision import cpu_info
from vllm_firp.engine.drafters import Drafter, NoDrafter
from vllm_firp.engine.engine import FirpEngine, Generation

from .drafters import RecordingDrafter

REFERENCE = "ar"


class OutputMismatch(AssertionError):
    """A method's greedy output differs from plain autoregressive decoding: a bug, never noise to ignore."""


@dataclass
class Method:
    """One decoding configuration: an engine, a drafter (None = plain AR) and a draft tree."""

    name: str
    engine: FirpEngine
    drafter: Drafter | None = None
    tree: DraftTree | None = None
    family: str = ""  # groups variants in plots, e.g. "firp-tree" at several budgets
    budget: int | None = None  # tree nodes, root included (None for AR)
    note: str = ""

    def generate(self, prompt: list[int], max_new_tokens: int) -> Generation:
        if self.drafter is None:
            return self.engine.generate(prompt, max_new_tokens, drafter=NoDrafter())
        return self.engine.generate(prompt, max_new_tokens, tree=self.tree, drafter=self.drafter)

    def describe_tree(self) -> str:
        if self.drafter is None or self.tree is None:
            return "-"
        return f"{self.tree.num_nodes} nodes, depth {self.tree.depth}"


@dataclass
class _Tally:
    """Per prompt (and per repeat for time), so any subset of prompts (a category) can be summarised."""

    seconds: list[list[float]]  # [repeat][prompt]
    outputs: list[list[int]] = field(default_factory=list)
    tokens_per_step: list[list[int]] = field(default_factory=list)  # [prompt][decode forward]
    rows_per_step: list[list[int]] = field(default_factory=list)


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _check_same(name: str, prompt_index: int, got: list[int], want: list[int], what: str) -> None:
    if got != want:
        i = _first_difference(got, want)
        raise OutputMismatch(
            f"{name} output differs from {what} on prompt {prompt_index} at new token {i}: "
            f"{got[i : i + 8]} vs {want[i : i + 8]} (lengths {len(got)} vs {len(want)}). Greedy speculative "
            "decoding must reproduce autoregressive output exactly; this is a bug."
        )


def measure(
    methods: Sequence[Method],
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    repeats: int = 3,
    warmup: bool = True,
    progress: bool = True,
    groups: Sequence[str] | None = None,
) -> dict[str, dict]:
    """Decode every prompt with every method ``repeats`` times (interleaved); per-method figures.

    The method named ``"ar"`` is the reference for output equality and speedup. With ``groups`` (one
    label per prompt, e.g. an MT-bench category) each method's figures also hold ``by_group``: the
    same figures over each group's prompts alone.
    """
    names = [m.name for m in methods]
    if REFERENCE not in names:
        raise ValueError(f"methods must include {REFERENCE!r} (plain autoregressive decoding)")
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be distinct: {names}")
    if groups is not None and len(groups) != len(prompts):
        raise ValueError(f"groups must label every prompt: {len(groups)} labels for {len(prompts)} prompts")
    if warmup:
        for m in methods:
            m.generate(prompts[0], min(16, max_new_tokens))
    tally = {m.name: _Tally([[0.0] * len(prompts) for _ in range(repeats)]) for m in methods}
    t_start = time.perf_counter()
    for r in range(repeats):
        for i, prompt in enumerate(prompts):
            shift = (r * len(prompts) + i) % len(methods)
            for m in list(methods[shift:]) + list(methods[:shift]):
                t0 = time.perf_counter()
                gen = m.generate(prompt, max_new_tokens)
                tally[m.name].seconds[r][i] = time.perf_counter() - t0
                t = tally[m.name]
                if r == 0:
                    t.outputs.append(gen.tokens)
                    t.tokens_per_step.append(list(gen.stats.tokens_per_step))
                    t.rows_per_step.append(list(gen.stats.rows_per_step))
                else:
                    _check_same(m.name, i, gen.tokens, t.outputs[i], "its own first repeat")
            if r == 0:
                for m in methods:
                    _check_same(m.name, i, tally[m.name].outputs[i], tally[REFERENCE].outputs[i], "plain AR decoding")
            if progress:
                done = r * len(prompts) + i + 1
                print(f"\r[measure] {done}/{repeats * len(prompts)} prompt runs, "
                      f"{time.perf_counter() - t_start:.0f}s", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    everything = range(len(prompts))
    figures = {m.name: _summary(m, tally[m.name], tally[REFERENCE], everything) for m in methods}
    if groups is not None:
        members = {g: [i for i, x in enumerate(groups) if x == g] for g in dict.fromkeys(groups)}
        for m in methods:
            figures[m.name]["by_group"] = {g: _summary(m, tally[m.name], tally[REFERENCE], idx, brief=True)
                                           for g, idx in members.items()}
    return figures


def distinct_ngram_ratio(outputs: Sequence[list[int]], n: int = 4) -> float:
    """Mean share of distinct n-grams per output: near 0 means the text loops (drafting it is easy)."""
    ratios = []
    for out in outputs:
        grams = [tuple(out[i : i + n]) for i in range(len(out) - n + 1)]
        if grams:
            ratios.append(len(set(grams)) / len(grams))
    return round(sum(ratios) / max(1, len(ratios)), 4)


def _summary(m: Method, t: _Tally, ref: _Tally, prompts: Sequence[int], brief: bool = False) -> dict:
    """Figures over the prompts indexed by ``prompts``; ``brief`` keeps the per-group essentials."""
    outputs = [t.outputs[i] for i in prompts]
    per_step = [n for i in prompts for n in t.tokens_per_step[i]]
    rows = [n for i in prompts for n in t.rows_per_step[i]]
    secs = [sum(rep[i] for i in prompts) for rep in t.seconds]
    ref_secs = [sum(rep[i] for i in prompts) for rep in ref.seconds]
    new_tokens = sum(len(o) for o in outputs)
    steps = max(1, len(per_step))
    figures = {
        "tau": round(sum(per_step) / steps, 4),
        "rows_per_forward": round(sum(rows) / steps, 2),
        "tokens_per_s": round(new_tokens / statistics.median(secs), 2),
        "speedup": round(statistics.median(a / b for a, b in zip(ref_secs, secs, strict=True)), 3),
        "new_tokens": new_tokens,
        "decode_forwards": len(per_step),
        "num_prompts": len(outputs),
    }
    if brief:
        return figures
    return {
        "family": m.family or m.name,
        "budget": m.budget,
        "tree": m.describe_tree(),
        "note": m.note,
        **figures,
        "tokens_per_s_each_repeat": [round(new_tokens / s, 2) for s in secs],
        "seconds_each_repeat": [round(s, 3) for s in secs],
        "accepted_histogram": dict(sorted(Counter(per_step).items())),
        "equal_to_ar": outputs == [ref.outputs[i] for i in prompts],  # measure() raised OutputMismatch otherwise
        "distinct_4gram_ratio": distinct_ngram_ratio(outputs),
    }


@torch.inference_mode()
def calibrate_rank_probs(
    engine: FirpEngine, drafter: Drafter, prompts: Sequence[list[int]], depth: int, width: int, max_new_tokens: int
) -> list[list[float]]:
    """P(the greedy token at depth d is rank r of the drafter's list), measured along a chain.

    Decodes ``prompts`` with a top-1 chain while recording top-``width`` lists; the generated text is
    the greedy continuation, so every recorded list can be scored against it.
    """
    rec = RecordingDrafter(drafter, width)
    hits = torch.zeros(depth, width)
    totals = torch.zeros(depth)
    for prompt in prompts:
        rec.records.clear()
        tokens = prompt + engine.generate(prompt, max_new_tokens, tree=chain_tree(depth), drafter=rec).tokens
        for root, cands in rec.records:
            for d in range(min(depth, cands.shape[0])):
                if root + d + 1 < len(tokens):
                    totals[d] += 1
                    hits[d] += cands[d] == tokens[root + d + 1]
    probs = hits / totals.clamp(min=1)[:, None]
    return [[round(float(p), 5) for p in row] for row in probs]


def pick_threads(run: Callable[[], object], candidates: Sequence[int], reps: int = 3) -> tuple[int, dict[int, float]]:
    """The thread count with the lowest median time of ``run`` (interleaved); restores nothing."""
    times: dict[int, list[float]] = {n: [] for n in candidates}
    for _ in range(reps):
        for n in candidates:
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            run()
            times[n].append(time.perf_counter() - t0)
    med = {n: statistics.median(v) for n, v in times.items()}
    best = min(med, key=med.get)
    torch.set_num_threads(best)
    return best, {n: round(v, 4) for n, v in med.items()}


def machine_info() -> dict:
    """Where and on what the numbers were taken (commit, CPU, load)."""
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    cpu = cpu_info()
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        # uncommitted changes under benchmarks/ and the code the benchmark runs (porcelain: "XY path")
        "dirty_files": [line[3:] for line in git("status", "--porcelain").splitlines()
                        if line[3:].startswith(("benchmarks", "vllm_firp", "training"))],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu.model,
        "cpu_capability": cpu.capability,
        "cpu_native_bf16": torch.bfloat16 in cpu.native(),
        "cpu_count": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def machine_line(meta: dict) -> str:
    """Where a figure came from, for a report's header: CPU, its capability and bf16 support, threads."""
    bf16 = {True: "native bf16", False: "no native bf16"}.get(meta.get("cpu_native_bf16"), "bf16 support unknown")
    return (f"{meta['cpu']} ({meta['cpu_count']} cores, capability {meta.get('cpu_capability', 'unknown')}, {bf16}), "
            f"torch {meta['torch']} with {meta['torch_threads']} thread(s)")
