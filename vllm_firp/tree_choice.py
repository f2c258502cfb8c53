"""Pick the reference engine's draft tree for the machine it runs on (hardware-aware, as Sequoia's trees are).

A tree of N nodes verifies N rows (plus FIRP's pseudo rows) in one forward. On a GPU that forward costs about
what one row costs; on a CPU it can cost several times more, and a tree that costs more than it is expected
to accept makes decoding slower. So: time one decode forward of every candidate tree on this machine (rows ->
seconds, over a real context), divide each tree's expected tokens per forward by its cost relative to a plain
one-row step, and keep the best. Expected tokens come from :func:`~vllm_firp.core.tree.default_rank_probs`,
the prior the budget trees are built from.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from .core import parse_tree_spec
from .core.layout import causal_layout, tree_layout
from .core.tree import DraftTree, chain_tree, default_rank_probs, expected_accepted_length
from .engine.engine import FirpEngine
from .engine.forward import commit_rows, forward_rows, new_cache

CANDIDATES = ("chain:1", "chain:2/1", "chain:3/1", "chain:3", "budget:4/1", "budget:6/2", "budget:8/2",
              "budget:8/4", "budget:16/4", "budget:16")


@dataclasses.dataclass(frozen=True)
class TreeCost:
    spec: str
    rows: int  # rows of one decode forward, pseudo rows included
    relative_cost: float  # seconds of that forward / seconds of a plain one-row step
    expected_tokens: float  # per forward, bonus token included

    @property
    def expected_speedup(self) -> float:
        return self.expected_tokens / self.relative_cost


@dataclasses.dataclass(frozen=True)
class TreeChoice:
    spec: str
    tree: DraftTree
    plain_step_s: float
    costs: tuple[TreeCost, ...]

    @property
    def chosen(self) -> TreeCost:
        return next(c for c in self.costs if c.spec == self.spec)

    def to_dict(self) -> dict:
        return {"spec": self.spec, "plain_step_ms": round(1e3 * self.plain_step_s, 3),
                "candidates": [{**dataclasses.asdict(c), "relative_cost": round(c.relative_cost, 3),
                                "expected_tokens": round(c.expected_tokens, 3)} for c in self.costs]}


class _Step:
    """One decode forward of ``tree`` (LM head on its nodes) after a prefilled ``context``, timed on demand."""

    def __init__(self, engine: FirpEngine, context: list[int], tree: DraftTree, K: int) -> None:
        self.engine, self.tree, self.n = engine, tree, len(context)
        self.heads = engine.heads if K else None
        each_other = engine.heads.config.pseudo_attend_each_other if engine.heads is not None else True
        self.layout = tree_layout(tree, K, each_other)
        self.ids = torch.tensor(context[: tree.num_nodes], device=engine.device)
        self.cache = new_cache()
        with torch.inference_mode():
            forward_rows(engine.parts, torch.tensor(context, device=engine.device), causal_layout(self.n), self.cache)
        self.seconds: list[float] = []

    @torch.inference_mode()
    def time(self) -> None:
        t0 = time.perf_counter()
        hidden, _ = forward_rows(self.engine.parts, self.ids, self.layout, self.cache, self.heads)
        self.engine.parts.lm_head(hidden[: self.tree.num_nodes])
        self.seconds.append(time.perf_counter() - t0)
        commit_rows(self.cache, self.n, torch.empty(0, dtype=torch.long))


def choose_tree(engine: FirpEngine, context: list[int], candidates: tuple[str, ...] = CANDIDATES,
                repeats: int = 3) -> TreeChoice:
    """The candidate tree with the best expected tokens per unit of forward cost measured here.

    Steps are timed round-robin and each keeps its fastest time, so load from other processes on a shared
    machine, which only ever adds time, distorts the ratios least."""
    if engine.heads is None:
        raise ValueError("choosing a draft tree needs FIRP heads")
    if len(context) < 16:
        raise ValueError(f"measuring forward costs needs a context of at least 16 tokens, got {len(context)}")
    K = engine.heads.K
    trees = {}
    for spec in candidates:
        try:
            trees[spec] = parse_tree_spec(spec, K)
        except ValueError:  # deeper than these heads draft
            continue
    plain = _Step(engine, context, chain_tree(0), 0)
    steps = {spec: _Step(engine, context, tree, K) for spec, tree in trees.items()}
    for _ in range(repeats + 1):  # the first round warms up
        for step in (plain, *steps.values()):
            step.time()
    base = min(plain.seconds[1:])
    costs = tuple(TreeCost(spec, s.layout.num_rows, min(s.seconds[1:]) / base,
                           expected_accepted_length(s.tree, default_rank_probs(s.tree.depth, max(1, s.tree.topk))))
                  for spec, s in steps.items())
    best = max(costs, key=lambda c: c.expected_speedup)
    return TreeChoice(best.spec, trees[best.spec], base, costs)
