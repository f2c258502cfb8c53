"""FIRP math shared by every engine: heads and checkpoints (one base for every draft kind), draft trees, masks/positions, verification."""

from .checkpoint import DraftConfig, DraftModule, FirpCheckpointError, read_format
from .config import FirpConfig, default_inject_layer
from .heads import FirpHeads
from .layout import StepLayout, causal_layout, prefill_layout, step_layout, tree_layout
from .tree import (
    DraftTree,
    budget_tree,
    build_tree,
    chain_tree,
    end_probabilities,
    expected_accepted_length,
    likely_last_nodes,
    parse_tree_spec,
    reach_probabilities,
)
from .verify import SamplingParams, Verdict, target_probs, verify, verify_greedy, verify_sampling

__all__ = [
    "DraftConfig",
    "DraftModule",
    "DraftTree",
    "FirpCheckpointError",
    "FirpConfig",
    "FirpHeads",
    "SamplingParams",
    "StepLayout",
    "Verdict",
    "budget_tree",
    "build_tree",
    "causal_layout",
    "chain_tree",
    "default_inject_layer",
    "end_probabilities",
    "expected_accepted_length",
    "likely_last_nodes",
    "parse_tree_spec",
    "prefill_layout",
    "read_format",
    "reach_probabilities",
    "step_layout",
    "target_probs",
    "tree_layout",
    "verify",
    "verify_greedy",
    "verify_sampling",
]
