"""Method ``firp_suffix``: suffix decoding where the text repeats, FIRP where it is new, in one drafter.

Each step, per request, vLLM's own suffix-decoding proposer (Arctic Inference's suffix trees: the request's
prompt and output, plus earlier responses) drafts first. Its draft is taken when its score, Arctic's estimate
of how many of its tokens will be accepted (the sum of their tree probabilities), reaches what FIRP's drafts
have actually been getting accepted so far in this engine (``rule="measured"``); the requests left get FIRP
drafts from the same pass as before. ``rule="arctic"`` is Arctic Inference's rule for its own hybrid (suffix
when its score reaches the model drafter's K), kept to compare against.

Both drafts are plain token chains verified by vLLM's rejection sampler without draft probabilities, so
greedy output stays identical to no speculation and sampling keeps the target distribution, as for either
drafter alone. :class:`DrafterStats` counts, per drafter, the drafts, tokens and acceptance per position
(logged, and readable from the runner for benchmarks): vLLM's own spec-decode metrics count both together.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("vllm.plugins.firp")

SUFFIX, FIRP = "suffix", "firp"
RULES = ("measured", "arctic")
RULE_ENV = "VLLM_FIRP_HYBRID_RULE"  # experiments only: the benchmark compares the two rules
LOG_EVERY_S = 30.0


@dataclass
class DrafterStats:
    """What one drafter proposed and what of it was accepted (counted when the next step reports it)."""

    drafts: int = 0  # request-steps that got this drafter's draft
    draft_tokens: int = 0
    verified: int = 0  # drafts whose verification was seen
    verified_tokens: int = 0
    accepted_tokens: int = 0
    accepted_at: list[int] = field(default_factory=list)  # accepted_at[j]: drafts with >= j+1 tokens accepted

    def count(self, num_drafted: int, num_accepted: int) -> None:
        self.verified += 1
        self.verified_tokens += num_drafted
        self.accepted_tokens += num_accepted
        if len(self.accepted_at) < num_drafted:
            self.accepted_at += [0] * (num_drafted - len(self.accepted_at))
        for j in range(num_accepted):
            self.accepted_at[j] += 1

    @property
    def mean_accepted(self) -> float:
        """Accepted tokens per verified draft (mean acceptance length minus the bonus token)."""
        return self.accepted_tokens / self.verified if self.verified else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"drafts": self.drafts, "draft_tokens": self.draft_tokens, "verified": self.verified,
                "verified_tokens": self.verified_tokens, "accepted_tokens": self.accepted_tokens, "accepted_at": list(self.accepted_at),
                "mean_accepted": round(self.mean_accepted, 4)}


class SuffixFirst:
    """The suffix half of ``firp_suffix`` and the bookkeeping of who drafted what (one per model runner)."""

    def __init__(self, vllm_config: Any, firp_k: int, rule: str | None = None, prior: float = 1.0) -> None:
        from vllm.v1.spec_decode.suffix_decoding import SuffixDecodingProposer

        self.rule = rule or os.environ.get(RULE_ENV, "measured")
        if self.rule not in RULES:
            raise ValueError(f"{RULE_ENV}={self.rule!r}: the hybrid rule is one of {', '.join(RULES)}")
        self.proposer = SuffixDecodingProposer(vllm_config)  # vLLM's own, unchanged
        self.firp_k, self.prior = firp_k, prior
        self.stats = {SUFFIX: DrafterStats(), FIRP: DrafterStats()}
        self._last: dict[str, str] = {}  # req_id -> who drafted the tokens verified next step
        self._scores: dict[Any, float] = {}
        speculate = self.proposer.suffix_cache.speculate

        def scored_speculate(req_id: Any, *args: Any, **kwargs: Any) -> Any:
            draft = speculate(req_id, *args, **kwargs)
            self._scores[req_id] = draft.score  # the proposer returns token ids only; keep the score it had
            return draft

        self.proposer.suffix_cache.speculate = scored_speculate  # this instance's cache only, not a vLLM patch
        self._logged = time.monotonic()

    def threshold(self, k: int) -> float:
        """The score a suffix draft needs: FIRP's measured accepted tokens per draft (``measured``, the prior until
        FIRP has been verified), or the model drafter's length (``arctic``)."""
        if self.rule == "arctic":
            return float(min(k, self.firp_k))
        firp = self.stats[FIRP]
        return firp.mean_accepted if firp.verified else self.prior

    def account(self, req_ids: list[str], sampled: list[list[int]], num_draft_tokens: list[int]) -> None:
        """Credit last step's drafts: request i verified ``num_draft_tokens[i]`` and kept ``len(sampled[i]) - 1``."""
        for i, req_id in enumerate(req_ids):
            who = self._last.get(req_id)
            n = num_draft_tokens[i] if i < len(num_draft_tokens) else 0
            if who is not None and n > 0 and sampled[i]:
                self.stats[who].count(n, len(sampled[i]) - 1)
        self._last.clear()  # a request missing from this step (finished, preempted) had its drafts dropped

    def propose(self, k: int, input_batch: Any, sampled: list[list[int]]) -> list[list[int]]:
        """Suffix drafts (at most ``k`` tokens) for the requests whose score passes :meth:`threshold`, [] for the
        rest; the suffix trees see every request's new tokens whichever drafter it gets."""
        self._scores.clear()
        drafts = self.proposer.propose(self.proposer.num_speculative_tokens, input_batch, sampled)
        need = self.threshold(k)
        out = []
        for req_id, draft in zip(input_batch.req_ids, drafts, strict=False):
            take = k > 0 and bool(draft) and self._scores.get(req_id, 0.0) >= need
            out.append(draft[:k] if take else [])
        return out + [[] for _ in range(len(sampled) - len(out))]

    def remember(self, req_ids: list[str], drafts: list[list[int]], who: list[str]) -> None:
        for req_id, draft, name in zip(req_ids, drafts, who, strict=False):
            if draft:
                self._last[req_id] = name
                self.stats[name].drafts += 1
                self.stats[name].draft_tokens += len(draft)
        if time.monotonic() - self._logged > LOG_EVERY_S:
            self._logged = time.monotonic()
            logger.info("FIRP hybrid (%s rule): %s", self.rule, self.describe())

    def describe(self) -> str:
        parts = []
        for name, s in self.stats.items():
            share = ", ".join(f"{a / s.verified:.2f}" for a in s.accepted_at) if s.verified else "-"
            parts.append(f"{name} {s.drafts} drafts ({s.draft_tokens} tokens), {s.mean_accepted:.2f} accepted per "
                         f"draft, by position {share}")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, **{name: s.as_dict() for name, s in self.stats.items()}}
