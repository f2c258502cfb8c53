"""A short run of the load test (benchmarks/load_test.py): `vllm serve` with FIRP under a burst of mixed,
aborted and malformed requests; the full run (1,000 requests at concurrency 64) is in benchmarks/RESULTS.md."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[cpu]' or '.[vllm]')")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

from benchmarks import load_test  # noqa: E402


def test_mixed_burst_is_answered_in_full_and_identical_to_plain(tmp_path) -> None:
    code = load_test.main(["--out", str(tmp_path), "--model", "micro", "--requests", "120", "--concurrency", "32",
                           "--max-model-len", "384", "--max-num-seqs", "32"])
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert summary["failures"] == [] and summary["greedy_mismatches"] == []
    assert set(summary["per_kind"]) == {*load_test.GOOD_KINDS, *load_test.BAD_KINDS}, "a kind of request is missing"
    assert summary["healthy_after"]
    assert summary["spec_decode"]["mean_acceptance_length"] > 1.3
    assert summary["aborted_in_engine"] >= 1, "no client abort reached the engine"
    assert code == 0 and summary["passed"]
