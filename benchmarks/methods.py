"""The benchmark's decoding methods and ablation variants, built on one shared model.

Main methods: ``ar`` (plain autoregressive), ``firp-tree`` / ``firp-chain`` (FIRP heads), ``firp-tree-sparse``
(the same tree with pseudo rows only on its likeliest last nodes),
``medusa`` / ``medusa-chain`` (Medusa heads, same data and trainable budget), ``pld`` (prompt lookup)
and ``early-exit`` (layers 1..m draft). FIRP and Medusa trees have the same node budget and depth;
each is shaped by its own rank probabilities, measured on separate calibration prompts.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel

from vllm_firp.core import FirpHeads, budget_tree, chain_tree, default_inject_layer, likely_last_nodes
from vllm_firp.core.tree import default_rank_probs
from vllm_firp.engine.drafters import Drafter, FirpDrafter
from vllm_firp.engine.engine import FirpEngine

from .drafters import EarlyExitDrafter, PromptLookupDrafter
from .measure import Method, calibrate_rank_probs

MAIN_METHODS = ("ar", "firp-tree", "firp-tree-sparse", "firp-chain", "medusa", "medusa-chain", "pld", "early-exit")
ABLATIONS = ("inject-layer", "source", "pseudo-attend", "K", "tree-budget")


@dataclass
class Options:
    """Method settings shared by the main run and the ablations."""

    budget: int = 16  # tree nodes (root included) of firp-tree and medusa
    pseudo_nodes: int = 4  # tree nodes with pseudo rows in firp-tree-sparse
    tree_topk: int = 4  # widest rank a budget tree may use per depth
    tree_probs: str = "calibrated"  # "calibrated" (measured per drafter) or "prior"
    calib_prompts: Sequence[list[int]] = ()
    calib_new_tokens: int = 64
    pld_ngram: tuple[int, int] = (3, 1)  # (max, min)
    pld_depth: int = 4
    exit_layer: int | None = None  # None: half the layers
    exit_depth: int = 2
    rank_probs: dict[str, list[list[float]]] = field(default_factory=dict)  # filled as trees are built


class Builder:
    """Builds :class:`Method` objects over one model, caching calibrated rank probabilities."""

    def __init__(self, model: PreTrainedModel, opts: Options) -> None:
        self.model, self.opts = model, opts
        self.ar_engine = FirpEngine(model)
        self.parts = self.ar_engine.parts

    def probs(self, key: str, engine: FirpEngine, drafter: Drafter, depth: int) -> list[list[float]]:
        if self.opts.tree_probs == "prior" or not self.opts.calib_prompts:
            return default_rank_probs(depth, self.opts.tree_topk)
        if key not in self.opts.rank_probs:
            self.opts.rank_probs[key] = calibrate_rank_probs(
                engine, drafter, self.opts.calib_prompts, depth, self.opts.tree_topk, self.opts.calib_new_tokens)
        return self.opts.rank_probs[key]

    def ar(self) -> Method:
        return Method("ar", self.ar_engine, family="ar", note="plain autoregressive decoding, same engine")

    def firp(self, name: str, heads: FirpHeads, tree: bool, budget: int | None = None, key: str = "firp",
             note: str = "", pseudo_nodes: int | None = None) -> Method:
        engine = FirpEngine(self.model, heads)
        drafter = FirpDrafter(engine.heads)
        K = heads.K
        if not tree:
            return Method(name, engine, drafter, chain_tree(K), "firp-chain", K + 1, note)
        budget = budget or self.opts.budget
        probs = self.probs(key, engine, drafter, K)
        t = budget_tree(budget, K, self.opts.tree_topk, probs)
        if pseudo_nodes is None:
            return Method(name, engine, drafter, t, "firp-tree", budget, note)
        t = t.with_pseudo_nodes(likely_last_nodes(t, pseudo_nodes, probs))
        note = note or f"pseudo rows on the {len(t.anchors)} likeliest last nodes"
        return Method(name, engine, drafter, t, "firp-tree-sparse", budget, note)

    def medusa(self, name: str, heads: Any, tree: bool, budget: int | None = None) -> Method:
        from vllm_firp_training.medusa import MedusaDrafter

        drafter = MedusaDrafter(heads, self.parts.lm_head)
        K = heads.K
        if not tree:
            return Method(name, self.ar_engine, drafter, chain_tree(K), "medusa-chain", K + 1)
        budget = budget or self.opts.budget
        t = budget_tree(budget, K, self.opts.tree_topk, self.probs("medusa", self.ar_engine, drafter, K))
        return Method(name, self.ar_engine, drafter, t, "medusa", budget)

    def pld(self) -> Method:
        hi, lo = self.opts.pld_ngram
        d = self.opts.pld_depth
        return Method("pld", self.ar_engine, PromptLookupDrafter(hi, lo), chain_tree(d), "pld", d + 1,
                      f"n-gram {hi}..{lo}, chain depth {d}")

    def early_exit(self) -> Method:
        m = self.opts.exit_layer or max(1, self.parts.num_layers // 2)
        d = self.opts.exit_depth
        return Method("early-exit", self.ar_engine, EarlyExitDrafter(self.parts, m), chain_tree(d), "early-exit",
                      d + 1, f"layers 1..{m} of {self.parts.num_layers} draft a chain of depth {d}")

    def main_methods(self, names: Sequence[str], firp_heads: FirpHeads | None, medusa_heads: Any) -> list[Method]:
        make: dict[str, Callable[[], Method]] = {
            "ar": self.ar,
            "firp-tree": lambda: self.firp("firp-tree", _need(firp_heads, "firp"), tree=True),
            "firp-tree-sparse": lambda: self.firp("firp-tree-sparse", _need(firp_heads, "firp"), tree=True,
                                                  pseudo_nodes=self.opts.pseudo_nodes),
            "firp-chain": lambda: self.firp("firp-chain", _need(firp_heads, "firp"), tree=False),
            "medusa": lambda: self.medusa("medusa", _need(medusa_heads, "medusa"), tree=True),
            "medusa-chain": lambda: self.medusa("medusa-chain", _need(medusa_heads, "medusa"), tree=False),
            "pld": self.pld,
            "early-exit": self.early_exit,
        }
        unknown = [n for n in names if n not in make]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {list(make)}")
        return [make[n]() for n in dict.fromkeys(["ar", *names])]

    def budget_sweep(self, budgets: Sequence[int], firp_heads: FirpHeads | None, medusa_heads: Any) -> list[Method]:
        out = [self.ar()]
        for b in budgets:
            if firp_heads is not None:
                out.append(self.firp(f"firp-tree@{b}", firp_heads, tree=True, budget=b))
                if self.opts.pseudo_nodes < b:
                    out.append(self.firp(f"firp-tree-sparse@{b}", firp_heads, tree=True, budget=b,
                                         pseudo_nodes=self.opts.pseudo_nodes))
            if medusa_heads is not None:
                out.append(self.medusa(f"medusa@{b}", medusa_heads, tree=True, budget=b))
        return out


def _need(heads: Any, what: str) -> Any:
    if heads is None:
        raise ValueError(f"this method needs {what} heads (--heads / --medusa-heads, or a reference --size)")
    return heads


# ----------------------------------------------------------------------------------------- ablations


def ablation_variants(kind: str, num_layers: int, default_K: int, budgets: Sequence[int]) -> list[tuple[str, dict]]:
    """(label, recipe overrides) per FIRP variant; ``{}`` is the default recipe's heads."""
    if kind == "inject-layer":
        t0 = default_inject_layer(num_layers)
        same = [(f"t={t}", {} if t == t0 else {"inject_layer": t}) for t in range(1, num_layers)]
        spread = tuple(max(1, round(k * (num_layers - 1) / default_K)) for k in range(1, default_K + 1))
        return same + ([(f"t={','.join(map(str, spread))}", {"inject_layer": spread})] if len(set(spread)) > 1 else [])
    if kind == "source":
        # Explicit for both: reference recipes differ in their default source (same recipe -> same cached heads).
        return [("source=previous", {"source": "previous"}), ("source=anchor", {"source": "anchor"})]
    if kind == "pseudo-attend":
        return [("attend=yes", {}), ("attend=no", {"pseudo_attend_each_other": False})]
    if kind == "K":
        return [(f"K={k}", {} if k == default_K else {"num_future_tokens": k}) for k in range(1, default_K + 2)]
    if kind == "tree-budget":
        return [(f"budget={b}", {}) for b in budgets]
    raise ValueError(f"unknown ablation {kind!r}; choose from {ABLATIONS}")


def ablation_methods(
    kind: str,
    builder: Builder,
    load_firp: Callable[[dict], FirpHeads],
    recipe_fields: set[str],
    budgets: Sequence[int],
    medusa_heads: Any = None,
) -> list[Method]:
    """AR plus, per variant, FIRP with the budget tree and the chain (tree-budget: FIRP and Medusa trees).

    ``load_firp(overrides)`` returns trained heads for a recipe variant. An override the heads recipe
    cannot express (``pseudo_attend_each_other`` today) is applied at inference time to the default
    heads instead, and the method's note says so.
    """
    base = load_firp({})
    methods = [builder.ar()]
    if kind == "tree-budget":
        return builder.budget_sweep(budgets, base, medusa_heads)
    for label, overrides in ablation_variants(kind, base.config.num_hidden_layers, base.K, budgets):
        note = ""
        inference_only = {k: v for k, v in overrides.items() if k not in recipe_fields}
        if inference_only:
            heads = copy.deepcopy(base)
            heads.config = dataclasses.replace(heads.config, **inference_only)
            note = f"inference-time only ({inference_only}): the heads recipe cannot train it"
        else:
            heads = load_firp(overrides) if overrides else base
        key = f"firp[{label}]"
        methods.append(builder.firp(f"tree {label}", heads, tree=True, key=key, note=note))
        methods.append(builder.firp(f"chain {label}", heads, tree=False, note=note))
    return methods
