"""Static draft trees (Medusa-style "choices" paths) and the index buffers built once per tree shape.

A path ``(r_1, .., r_d)`` names the node at depth d whose token is rank ``r_d`` of pseudo d's top-k list
under the node ``(r_1, .., r_{d-1})``. The root (depth 0, empty path) is the exact token from the last
step. FIRP drafts depend only on depth and rank (all pseudo rows belong to one anchor), so the same
candidate list fills every node of a depth.

Pseudo nodes: the nodes that get K pseudo rows in the verify pass (default: all). When the accepted path
ends at a node without them, the next drafts come from its nearest pseudo ancestor ``a``, shifted by
``s = depth(end) - depth(a)``: pseudo ``s + k`` of ``a`` sits where pseudo ``k`` of the end node would
(``K - s`` drafts instead of K). Giving pseudo rows only to the likely last nodes cuts rows per step.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

Path_ = tuple[int, ...]


@dataclass(frozen=True, eq=False)
class DraftTree:
    """Nodes in breadth-first order (parents before children); node 0 is the root."""

    paths: tuple[Path_, ...]  # paths[i] of node i; paths[0] == ()
    parents: torch.Tensor  # [N] long, parent index (-1 for the root)
    depths: torch.Tensor  # [N] long
    ranks: torch.Tensor  # [N] long, rank within the depth's candidates (-1 for the root)
    ancestor_mask: torch.Tensor  # [N, N] bool, [i, j] = j is i or an ancestor of i
    retrieve: torch.Tensor  # [num_leaves, depth + 1] long, root-to-leaf node indices, -1 padded
    children: tuple[tuple[int, ...], ...]  # children of each node, in rank order
    pseudo_nodes: tuple[int, ...] | None = None  # nodes with pseudo rows (root first); None = every node

    @property
    def anchors(self) -> tuple[int, ...]:
        """Nodes that carry K pseudo rows, in slot order."""
        return tuple(range(self.num_nodes)) if self.pseudo_nodes is None else self.pseudo_nodes

    def draft_source(self, node: int) -> tuple[int, int]:
        """(slot, shift) drafting after ``node``: its nearest pseudo ancestor-or-self and the depth gap."""
        return _draft_sources(self)[node]

    def with_pseudo_nodes(self, nodes: tuple[int, ...] | None) -> DraftTree:
        """This tree with pseudo rows only on ``nodes`` (the root is always added); cached per (tree, nodes)."""
        if nodes is None:
            return build_tree(self.paths[1:])
        return _with_pseudo_nodes(build_tree(self.paths[1:]), tuple(sorted({0, *(int(n) for n in nodes)})))

    @property
    def num_nodes(self) -> int:
        return len(self.paths)

    @property
    def depth(self) -> int:
        return max(len(p) for p in self.paths)

    @property
    def topk(self) -> int:
        """Candidates needed per depth (largest rank + 1)."""
        return 1 + max((max(p) for p in self.paths if p), default=-1)

    def node_tokens(self, root_token: int, candidates: torch.Tensor) -> torch.Tensor:
        """Tokens of every node: the root token, then ``candidates[depth-1, rank]`` ([D, topk] ids)."""
        tokens = torch.empty(self.num_nodes, dtype=torch.long)
        tokens[0] = root_token
        if self.num_nodes > 1:
            tokens[1:] = candidates[self.depths[1:] - 1, self.ranks[1:]].cpu()
        return tokens

    def truncated(self, max_depth: int) -> DraftTree:
        """This tree without nodes deeper than ``max_depth`` (drafts may be shorter than the tree); cached."""
        return self if max_depth >= self.depth else _truncated(self, max_depth)


@lru_cache(maxsize=256)
def _truncated(tree: DraftTree, max_depth: int) -> DraftTree:
    kept = build_tree(tuple(p for p in tree.paths[1:] if len(p) <= max_depth))
    if tree.pseudo_nodes is None:
        return kept
    index = {p: i for i, p in enumerate(kept.paths)}
    return kept.with_pseudo_nodes(tuple(index[tree.paths[n]] for n in tree.pseudo_nodes if tree.paths[n] in index))


@lru_cache(maxsize=256)
def _with_pseudo_nodes(tree: DraftTree, nodes: tuple[int, ...]) -> DraftTree:
    if nodes[-1] >= tree.num_nodes:
        raise ValueError(f"pseudo node {nodes[-1]} is outside the {tree.num_nodes}-node tree")
    if len(nodes) == tree.num_nodes:
        return tree
    return dataclasses.replace(tree, pseudo_nodes=nodes)


@lru_cache(maxsize=256)
def _draft_sources(tree: DraftTree) -> tuple[tuple[int, int], ...]:
    slot = {n: i for i, n in enumerate(tree.anchors)}
    out = []
    for node in range(tree.num_nodes):
        a = node
        while a not in slot:
            a = int(tree.parents[a])
        out.append((slot[a], int(tree.depths[node] - tree.depths[a])))
    return tuple(out)


def reach_probabilities(tree: DraftTree, rank_probs: Sequence[Sequence[float]]) -> torch.Tensor:
    """P(the accepted path reaches each node): the product of ``rank_probs[d][r]`` along its path, assuming
    depths independent (Medusa's tree-search model); ranks beyond a depth's list count as 0."""
    reach = torch.ones(tree.num_nodes, dtype=torch.float64)
    for i in range(1, tree.num_nodes):  # breadth-first: a parent's reach is known before its children
        d, r = int(tree.depths[i]), int(tree.ranks[i])
        reach[i] = reach[int(tree.parents[i])] * (rank_probs[d - 1][r] if r < len(rank_probs[d - 1]) else 0.0)
    return reach


def expected_accepted_length(tree: DraftTree, rank_probs: Sequence[Sequence[float]]) -> float:
    """Expected tokens per step (the bonus token included): the sum of reach probabilities, root = 1."""
    return float(reach_probabilities(tree, rank_probs).sum())


def end_probabilities(tree: DraftTree, rank_probs: Sequence[Sequence[float]]) -> torch.Tensor:
    """P(the accepted path ends exactly at each node), under the independence model of :func:`budget_tree`."""
    reach = reach_probabilities(tree, rank_probs)
    go_on = torch.zeros(tree.num_nodes, dtype=torch.float64)  # P(reach a child) per node
    go_on.index_add_(0, tree.parents[1:], reach[1:])
    return (reach - go_on).clamp_min(0)


def likely_last_nodes(tree: DraftTree, count: int, rank_probs: list[list[float]] | None = None) -> tuple[int, ...]:
    """The root plus the ``count - 1`` other nodes most likely to end the accepted path."""
    if count < 1:
        raise ValueError("pseudo nodes: at least the root (count >= 1)")
    probs = end_probabilities(tree, rank_probs or default_rank_probs(tree.depth, max(1, tree.topk)))
    probs[0] = float("inf")
    return tuple(sorted(probs.argsort(descending=True, stable=True)[:count].tolist()))


def _validate(paths: tuple[Path_, ...]) -> None:
    seen = set(paths)
    for p in paths:
        if any(not isinstance(r, int) or isinstance(r, bool) or r < 0 for r in p):
            raise ValueError(f"tree path {list(p)} must hold ranks >= 0")
        if len(p) > 1 and p[:-1] not in seen:
            raise ValueError(f"tree path {list(p)} has no parent {list(p[:-1])}: every prefix must be in the tree")
    if len(seen) != len(paths):
        raise ValueError("tree paths must be distinct")


@lru_cache(maxsize=64)
def build_tree(choices: tuple[Path_, ...]) -> DraftTree:
    """Index buffers for a tree given by its non-root paths; cached per shape."""
    paths_in = tuple(tuple(p) for p in choices if len(p) > 0)
    _validate(paths_in)
    paths = ((),) + tuple(sorted(paths_in, key=lambda p: (len(p), p)))
    index = {p: i for i, p in enumerate(paths)}
    n = len(paths)
    parents = torch.tensor([-1] + [index[p[:-1]] for p in paths[1:]], dtype=torch.long)
    depths = torch.tensor([len(p) for p in paths], dtype=torch.long)
    ranks = torch.tensor([-1] + [p[-1] for p in paths[1:]], dtype=torch.long)
    ancestor = torch.zeros(n, n, dtype=torch.bool)
    for i, p in enumerate(paths):
        for d in range(len(p) + 1):
            ancestor[i, index[p[:d]]] = True
    kids: list[list[int]] = [[] for _ in range(n)]
    for i in range(1, n):
        kids[int(parents[i])].append(i)
    kids = [sorted(c, key=lambda i: paths[i][-1]) for c in kids]
    leaves = [i for i in range(n) if not kids[i]]
    max_depth = int(depths.max())
    retrieve = torch.full((len(leaves), max_depth + 1), -1, dtype=torch.long)
    for row, leaf in enumerate(leaves):
        p = paths[leaf]
        for d in range(len(p) + 1):
            retrieve[row, d] = index[p[:d]]
    return DraftTree(paths, parents, depths, ranks, ancestor, retrieve, tuple(tuple(c) for c in kids))


def chain_tree(depth: int) -> DraftTree:
    """Top-1 chain of the given depth (what vLLM 0.32 can verify)."""
    return build_tree(tuple((0,) * d for d in range(1, depth + 1)))


def default_rank_probs(depth: int, topk: int) -> list[list[float]]:
    """Prior P(the true token is rank r of pseudo d) used when no measured accuracies are given."""
    return [[0.6 * 0.85**d * 0.35**r for r in range(topk)] for d in range(depth)]


def budget_tree(num_nodes: int, depth: int, topk: int = 4, rank_probs: list[list[float]] | None = None) -> DraftTree:
    """The ``num_nodes``-node tree (root included) of highest expected accepted length.

    Expected accepted length is the sum over nodes of the product of ``rank_probs[d][r]`` along the
    path (independence assumed, as in Medusa's tree search). Greedy best-first growth is optimal for
    this objective because a child's value never exceeds its parent's. ``rank_probs`` can come from
    ``training.evaluate`` (per-position top-k accuracy differences).
    """
    if num_nodes < 1:
        raise ValueError("a tree needs at least its root (num_nodes >= 1)")
    probs = rank_probs or default_rank_probs(depth, topk)
    if len(probs) < depth:
        raise ValueError(f"rank_probs covers {len(probs)} depths, tree depth is {depth}")
    heap: list[tuple[float, Path_]] = [(-probs[0][r], (r,)) for r in range(min(topk, len(probs[0])))]
    heapq.heapify(heap)
    chosen: list[Path_] = []
    while heap and len(chosen) < num_nodes - 1:
        neg, path = heapq.heappop(heap)
        chosen.append(path)
        d = len(path)
        if d < depth:
            for r in range(min(topk, len(probs[d]))):
                heapq.heappush(heap, (neg * probs[d][r], path + (r,)))
    return build_tree(tuple(chosen))


def _positive(spec: str, name: str) -> int:
    value = spec.split(":", 1)[1]
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"tree spec {spec!r}: {name} must be a positive integer")
    return int(value)


def parse_tree_spec(spec: str | None, K: int, rank_probs: list[list[float]] | None = None) -> DraftTree:
    """A tree from a CLI spec: ``chain``, ``chain:D``, ``budget:N``, a JSON list of paths, or a .json file.

    A ``/M`` suffix (e.g. ``budget:16/4``) gives pseudo rows only to the M likeliest last nodes.
    """
    spec = (spec or "budget:16").strip()
    head, _, tail = spec.rpartition("/")
    if head and tail.isdigit():
        tree = parse_tree_spec(head, K, rank_probs)
        return tree.with_pseudo_nodes(likely_last_nodes(tree, int(tail), rank_probs))
    if spec == "chain":
        tree = chain_tree(K)
    elif spec.startswith("chain:"):
        tree = chain_tree(_positive(spec, "D"))
    elif spec.startswith("budget:"):
        tree = budget_tree(_positive(spec, "N"), K, rank_probs=rank_probs)
    else:
        if spec.endswith(".json"):
            if not Path(spec).is_file():
                raise ValueError(f"tree file {spec!r} does not exist")
            text = Path(spec).read_text()
        else:
            text = spec
        try:
            choices = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"tree spec {spec!r} is not 'chain', 'chain:D', 'budget:N', a JSON list of paths or a .json file"
            ) from e
        if not isinstance(choices, list) or not all(isinstance(p, list) for p in choices):
            raise ValueError(f"tree spec {spec!r}: a JSON tree is a list of rank paths, e.g. [[0], [1], [0, 0]]")
        tree = build_tree(tuple(tuple(p) for p in choices))
    if tree.depth > K:
        raise ValueError(f"tree depth {tree.depth} exceeds the heads' num_future_tokens K={K}")
    return tree
