"""`benchmarks.vllm_throughput`'s pure parts (summary, run order); the end-to-end run is in test_vllm_throughput."""

from __future__ import annotations

import pytest

from benchmarks import vllm_throughput


def test_summary_pairs_speedups_per_batch_size_and_pools_acceptance():
    rows = [
        {"method": m, "batch_size": b, "tokens_per_s": tps, "tpot_ms": 1000 / tps, "drafts": d, "accepted": a,
         "accepted_per_position": [a] if d else [], "acceptance_length": 1 + a / d if d else None}
        for m, b, tps, d, a in [("none", 1, 10.0, 0, 0), ("none", 1, 30.0, 0, 0), ("none", 4, 40.0, 0, 0),
                                ("firp", 1, 25.0, 10, 10), ("firp", 1, 35.0, 30, 60), ("firp", 4, 20.0, 40, 20)]
    ]
    summary = {(s["method"], s["batch_size"]): s for s in vllm_throughput.summarize(rows)}
    assert summary["none", 1]["tokens_per_s"] == 20.0 and summary["none", 1]["acceptance_length"] is None
    assert summary["firp", 1]["speedup"] == pytest.approx(30.0 / 20.0)
    # accepted / drafted over the whole pool (70 / 40), not the median of per-call ratios (2.0, 3.0)
    assert summary["firp", 1]["acceptance_length"] == pytest.approx(2.75)
    assert summary["firp", 4]["speedup"] == pytest.approx(0.5)


def test_rounds_reverse_the_method_order_every_other_round():
    assert vllm_throughput.run_order(["none", "ngram", "firp"], 3) == [
        (0, "none"), (0, "ngram"), (0, "firp"), (1, "firp"), (1, "ngram"), (1, "none"),
        (2, "none"), (2, "ngram"), (2, "firp")]
    with pytest.raises(ValueError, match="at least 1"):
        vllm_throughput.run_order(["none"], 0)
