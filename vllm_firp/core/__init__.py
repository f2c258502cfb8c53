"""FIRP math shared by every engine: heads and checkpoints, draft trees, masks/positions, verification."""

from .config import FirpCheckpointError, FirpConfig
from .heads import FirpHeads
from .layout import StepLayout, prefill_layout, step_layout, tree_layout
from .tree import (
    DraftTree,
    budget_tree,
    build_tree,
    chain_tree,
    end_probabilities,
    likely_last_nodes,
    parse_tree_spec,
)
from .verify import SamplingParams, Verdict, target_probs, verify, verify_greedy, verify_sampling

__all__ = [
    "DraftTree",
    "FirpCheckpointError",
    "FirpConfig",
    "FirpHeads",
    "SamplingParams",
    "StepLayout",
    "Verdict",
    "budget_tree",
    "build_tree",
    "chain_tree",
    "end_probabilities",
    "likely_last_nodes",
    "parse_tree_spec",
    "prefill_layout",
    "step_layout",
    "target_probs",
    "tree_layout",
    "verify",
    "verify_greedy",
    "verify_sampling",
]
