"""Held-out evaluation of FIRP / Medusa heads: accuracy, expected and measured acceptance, hidden-state similarity.

    python -m vllm_firp_training.evaluate --model MODEL --heads heads/ --data data/ --out-dir eval/ [--engine-prompts 8]

Per draft position k (drafting x_{i+k+1} from anchor i): top-1/top-5 accuracy against the base model's
greedy token (argmax p_{i+k}, what greedy verification compares with) and against the data token.
Chain tau is computed exactly per anchor (1 + sum_k prod_{j<=k} [draft j correct]); tree tau uses a
``budget_tree`` built from the measured rank probabilities, both under the independence model the
tree search assumes and exactly per anchor. For FIRP, the cosine similarity between pseudo (i, k)
and the real state of position i+k at every layer from t to L, next to the "copy the anchor" baseline.
On self-generated greedy data the chain tau equals what greedy decoding accepts on that text.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vllm_firp.core import (
    DraftTree,
    FirpHeads,
    budget_tree,
    chain_tree,
    expected_accepted_length,
)
from vllm_firp.core.precision import DTYPE_CHOICES
from vllm_firp.engine.forward import ModelParts

from .data import TokenSequence, load_frozen_model, load_sequences
from .kinds import Heads, kind_of, load_heads
from .objective import DraftOutputs, sample_anchors


@dataclass
class Tally:
    """Sums over evaluated (anchor, k) pairs; turned into the report by :meth:`report`."""

    K: int
    topk: int
    n_teacher: torch.Tensor = field(init=False)  # [K] pairs with a teacher target
    hit_teacher: torch.Tensor = field(init=False)  # [2, K] top-1 / top-k hits vs the greedy token
    n_data: torch.Tensor = field(init=False)  # [K] pairs whose target token is in the data
    hit_data: torch.Tensor = field(init=False)  # [2, K]
    rank_counts: torch.Tensor = field(init=False)  # [K, topk] greedy token found at rank r
    ranks: list[torch.Tensor] = field(default_factory=list)  # [A_full, K] ranks (-1 = not in top-k)
    cos_sum: dict[tuple[int, int], list[float]] = field(default_factory=dict)  # (k, layer) -> [pseudo, copy, n]
    teacher_agree: list[int] = field(default_factory=lambda: [0, 0])  # argmax p_j == x_{j+1}, count

    def __post_init__(self) -> None:
        self.n_teacher, self.n_data = torch.zeros(self.K), torch.zeros(self.K)
        self.hit_teacher, self.hit_data = torch.zeros(2, self.K), torch.zeros(2, self.K)
        self.rank_counts = torch.zeros(self.K, self.topk)

    def add(self, out: DraftOutputs, ids: torch.Tensor, prompt_len: int) -> None:
        T = ids.shape[0]
        idx, valid = out.target_index()  # [K, A]
        greedy = out.teacher_greedy()  # [T]
        top = out.draft_logits.topk(self.topk, dim=-1).indices  # [K, A, topk]
        tgt = greedy[idx]
        match = top == tgt[..., None]
        rank = torch.where(match.any(-1), match.float().argmax(-1), torch.full_like(tgt, -1))
        rank = torch.where(valid, rank, torch.full_like(rank, -2))  # -2: no target
        self.n_teacher += valid.sum(1).cpu()
        self.hit_teacher[0] += ((rank == 0) & valid).sum(1).cpu()
        self.hit_teacher[1] += ((rank >= 0) & valid).sum(1).cpu()
        for r in range(self.topk):
            self.rank_counts[:, r] += (rank == r).sum(1).cpu()
        data_idx = out.anchors[None, :] + torch.arange(1, self.K + 1, device=ids.device)[:, None] + 1
        dvalid = data_idx <= T - 1
        dtok = ids[data_idx.clamp(max=T - 1)]
        dmatch = (top == dtok[..., None]) & dvalid[..., None]
        self.n_data += dvalid.sum(1).cpu()
        self.hit_data[0] += dmatch[..., 0].sum(1).cpu()
        self.hit_data[1] += dmatch.any(-1).sum(1).cpu()
        full = valid.all(0)  # anchors with all K targets
        self.ranks.append(rank[:, full].T.cpu())
        resp = torch.arange(max(prompt_len - 1, 0), T - 1, device=ids.device)
        self.teacher_agree[0] += int((greedy[resp] == ids[resp + 1]).sum())
        self.teacher_agree[1] += len(resp)

    def add_cosine(self, captured: dict[int, torch.Tensor], heads: FirpHeads, T: int, anchors: torch.Tensor) -> None:
        A = anchors.numel()
        for k, t in enumerate(heads.config.inject_layers, start=1):
            ok = anchors + k <= T - 1
            a = anchors[ok]
            rows = T + (k - 1) * A + torch.arange(A, device=anchors.device)[ok]
            for layer, h in captured.items():
                if layer < t:
                    continue
                real = h[a + k].float()
                acc = self.cos_sum.setdefault((k, layer), [0.0, 0.0, 0])
                acc[0] += float(F.cosine_similarity(h[rows].float(), real, dim=-1).sum())
                acc[1] += float(F.cosine_similarity(h[a].float(), real, dim=-1).sum())
                acc[2] += int(ok.sum())

    def report(self, tree_budgets: Sequence[int]) -> dict[str, Any]:
        n = self.n_teacher.clamp(min=1)
        nd = self.n_data.clamp(min=1)
        ranks = torch.cat(self.ranks) if self.ranks else torch.empty(0, self.K, dtype=torch.long)
        correct = (ranks == 0).long()
        chain_exact = [1 + float(correct[:, :d].cumprod(1).sum(1).float().mean()) if len(ranks) else 1.0
                       for d in range(1, self.K + 1)]
        acc1 = (self.hit_teacher[0] / n).tolist()
        chain_indep = [expected_accepted_length(chain_tree(d), [[a] for a in acc1]) for d in range(1, self.K + 1)]
        rank_probs = (self.rank_counts / n[:, None]).tolist()
        trees = {}
        for budget in tree_budgets:
            tree = budget_tree(budget, self.K, topk=self.topk, rank_probs=rank_probs)
            trees[str(budget)] = {"paths": [list(p) for p in tree.paths[1:]],
                                  "tau_independent": round(expected_accepted_length(tree, rank_probs), 4),
                                  "tau_measured": round(measured_tau(tree, ranks), 4)}
        rep: dict[str, Any] = {
            "pairs_per_position": self.n_teacher.long().tolist(),
            "anchors_with_all_K": len(ranks),
            "top1_vs_greedy": _r(acc1), f"top{self.topk}_vs_greedy": _r((self.hit_teacher[1] / n).tolist()),
            "top1_vs_data": _r((self.hit_data[0] / nd).tolist()),
            f"top{self.topk}_vs_data": _r((self.hit_data[1] / nd).tolist()),
            "teacher_greedy_matches_data": round(self.teacher_agree[0] / max(1, self.teacher_agree[1]), 4),
            "rank_probs": [_r(r) for r in rank_probs],
            "tau_chain": _r(chain_exact), "tau_chain_independent": _r(chain_indep), "tau_tree": trees,
        }
        if self.cos_sum:
            rep["cosine"] = {
                str(k): {str(layer): {"pseudo": round(v[0] / max(1, v[2]), 4), "copy_anchor": round(v[1] / max(1, v[2]), 4)}
                         for (kk, layer), v in sorted(self.cos_sum.items()) if kk == k}
                for k in range(1, self.K + 1)
            }
        return rep


def _r(xs: Sequence[float]) -> list[float]:
    return [round(float(x), 4) for x in xs]


def measured_tau(tree: DraftTree, ranks: torch.Tensor) -> float:
    """Exact per anchor: 1 + the longest prefix of the greedy tokens' ranks that is a tree path."""
    if len(ranks) == 0:
        return 1.0
    paths = set(tree.paths)
    total = 0
    for row in ranks.tolist():
        m = 0
        while m < len(row) and row[m] >= 0 and tuple(row[: m + 1]) in paths:
            m += 1
        total += m
    return 1 + total / len(ranks)


# ------------------------------------------------------------------------------------------ driver


@torch.no_grad()
def evaluate(
    model: Any,
    heads: Heads,
    seqs: Sequence[TokenSequence],
    *,
    anchors_per_seq: int = 0,
    topk: int = 5,
    tree_budgets: Sequence[int] = (8, 16, 32),
    include_prompt: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Offline metrics of ``heads`` on ``seqs`` (teacher = ``model``'s own distributions)."""
    from tqdm import tqdm

    parts = ModelParts.of(model)
    device = model.device
    heads = heads.to(device).eval()
    tally = Tally(heads.K, topk)
    kind = kind_of(heads)
    capture = kind.capture_layers(heads, parts.num_layers)
    gen = torch.Generator().manual_seed(0)
    for seq in tqdm(seqs, desc="evaluate", disable=not progress, file=sys.stderr):
        ids = torch.tensor(seq.ids, device=device)
        anchors = sample_anchors(len(seq.ids), seq.prompt_len, anchors_per_seq, gen, include_prompt)
        out = kind.outputs(parts, heads, ids, anchors, capture)
        tally.add(out, ids, seq.prompt_len)
        if capture:
            tally.add_cosine(out.captured, heads, len(seq.ids), out.anchors)
    report = {"method": kind.format, "K": heads.K, "sequences": len(seqs), **tally.report(tree_budgets)}
    return report


@torch.no_grad()
def engine_tau(
    model: Any, heads: Heads, seqs: Sequence[TokenSequence], max_new_tokens: int, trees: dict[str, DraftTree]
) -> dict[str, Any]:
    """Measured tau of the reference engine (greedy) on the sequences' prompts, per tree."""
    engine, drafter = kind_of(heads).reference_engine(model, heads)
    out: dict[str, Any] = {"prompts": len(seqs), "max_new_tokens": max_new_tokens}
    for name, tree in trees.items():
        tokens = forwards = 0
        for seq in seqs:
            g = engine.generate(seq.ids[: seq.prompt_len], max_new_tokens, tree=tree, drafter=drafter)
            tokens += sum(g.stats.tokens_per_step)
            forwards += len(g.stats.tokens_per_step)
        out[name] = {"tau": round(tokens / max(1, forwards), 4), "decode_forwards": forwards}
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    K = report["K"]
    has_cos = "cosine" in report
    fig, axes = plt.subplots(1, 2 if has_cos else 1, figsize=(11 if has_cos else 5.5, 4), squeeze=False)
    ax = axes[0, 0]
    ks = list(range(1, K + 1))
    top_key = next(k for k in report if k.startswith("top") and k.endswith("_vs_greedy") and k != "top1_vs_greedy")
    ax.bar([k - 0.2 for k in ks], report["top1_vs_greedy"], 0.4, label="top-1")
    ax.bar([k + 0.2 for k in ks], report[top_key], 0.4, label=top_key.split("_")[0].replace("top", "top-"))
    ax.set(xlabel="draft position k", ylabel="accuracy vs greedy token", ylim=(0, 1.15), xticks=ks,
           title=f"{report['method']}: tau chain {report['tau_chain'][-1]:.2f}")
    ax.legend(loc="upper center", ncol=2)
    if has_cos:
        ax = axes[0, 1]
        for k, per_layer in report["cosine"].items():
            layers = [int(x) for x in per_layer]
            line = ax.plot(layers, [v["pseudo"] for v in per_layer.values()], marker="o", label=f"pseudo k={k}")[0]
            ax.plot(layers, [v["copy_anchor"] for v in per_layer.values()], ls="--", color=line.get_color(),
                    label=f"copy anchor k={k}")
        ax.set(xlabel="layer (residual stream after it)", ylabel="cosine to real state of position i+k",
               xticks=layers, title="pseudo (i, k) vs real hidden states")
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="firp evaluate",
                                description="Evaluate FIRP or Medusa heads on held-out self-distillation data.")
    p.add_argument("--model", required=True, help="the base model (HF directory or id)")
    p.add_argument("--heads", required=True, type=Path, help="heads directory (FIRP or Medusa format)")
    p.add_argument("--data", required=True, type=Path, help="data directory from vllm_firp_training.generate_data")
    p.add_argument("--out-dir", type=Path, help="where eval.json and eval.png go (default: <heads>-eval)")
    p.add_argument("--split", choices=["eval", "train", "all"], default="eval", help="which sequences: the "
                   "held-out ones (default), the training ones, or all")
    p.add_argument("--holdout-percent", type=float, help="split rule (default: the heads' training recipe, else 5)")
    p.add_argument("--max-seqs", type=int, default=200, help="evaluate at most this many sequences (default 200)")
    p.add_argument("--seq-len", type=int, default=1024, help="use the last N tokens of each sequence (default 1024)")
    p.add_argument("--anchors-per-seq", type=int, default=0, help="anchors per sequence (0 = every response "
                   "position, default)")
    p.add_argument("--include-prompt", action="store_true", help="also anchor inside the prompt")
    p.add_argument("--topk", type=int, default=5, help="k of the top-k accuracy and tree ranks (default 5)")
    p.add_argument("--tree-budgets", default="8,16,32", help="node budgets of the trees to score (default 8,16,32)")
    p.add_argument("--engine-prompts", type=int, default=0, help="also measure tau with the reference engine on "
                   "this many prompts (greedy; chain and the largest tree)")
    p.add_argument("--engine-max-new-tokens", type=int, default=64, help="tokens per engine prompt (default 64)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="base model dtype; auto (default) = as saved where this CPU computes it natively, else float32")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_frozen_model(args.model, args.dtype, "cuda" if torch.cuda.is_available() else "cpu")
    heads = load_heads(args.heads, model.config)
    holdout = args.holdout_percent
    if holdout is None:
        holdout = heads.config.training.get("holdout_percent", 5.0)
    seqs = [s.window(args.seq_len) for s in load_sequences(args.data, args.split, holdout)][: args.max_seqs]
    budgets = [int(b) for b in args.tree_budgets.split(",") if b]
    report = evaluate(model, heads, seqs, anchors_per_seq=args.anchors_per_seq, topk=args.topk,
                      tree_budgets=budgets, include_prompt=args.include_prompt, progress=not args.quiet)
    report.update(heads=str(args.heads), data=str(args.data), split=args.split)
    if args.engine_prompts:
        trees = {"chain": chain_tree(heads.K)}
        if budgets:
            trees[f"tree{max(budgets)}"] = budget_tree(max(budgets), heads.K, topk=args.topk,
                                                       rank_probs=report["rank_probs"])
        report["engine"] = engine_tau(model, heads, seqs[: args.engine_prompts], args.engine_max_new_tokens, trees)
    out_dir = args.out_dir or args.heads.with_name(args.heads.name + "-eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out_dir / "eval.png")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except (ValueError, OSError) as e:  # bad data, heads, flags, paths or model: a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in report.items() if k not in ("tau_tree", "cosine")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
