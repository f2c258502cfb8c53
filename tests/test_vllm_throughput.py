"""`benchmarks.vllm_throughput` end to end on the real vLLM engine (tiny settings): files, figures, losslessness."""

from __future__ import annotations

import json

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]' or the CPU build)")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

from benchmarks import vllm_throughput  # noqa: E402
from tests.devmodels import dev_models  # noqa: E402


def test_every_method_in_one_run(tmp_path):
    models = dev_models()
    out = tmp_path / "out"
    argv = ["--out", str(out), "--model", models.model, "--heads", models.heads, "--batch-sizes", "1,2",
            "--repeats", "1", "--max-tokens", "12", "--prompt-tokens", "32", "--max-model-len", "256",
            "--dtype", "float32", "--kv-cache-gib", "1", "--timeout", "600",
            "--methods", "none,ngram,firp,medusa,early-exit,eagle3"]
    assert vllm_throughput.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    methods = ("none", "ngram", "firp", "medusa", "early-exit", "eagle3")
    assert res["meta"]["same_text_as_none"] == dict.fromkeys(methods[1:], True)  # greedy: lossless
    assert res["meta"]["commit"] and res["meta"]["command"].startswith("python -m benchmarks.vllm_throughput")
    summary = {(s["method"], s["batch_size"]): s for s in res["summary"]}
    assert set(summary) == {(m, b) for m in methods for b in (1, 2)}
    for (method, _), s in summary.items():
        assert s["tokens_per_s"] > 0
        # Learned drafters draft every step; ngram only once an n-gram repeats, which 12 tokens may not reach.
        assert (s["acceptance_length"] is None) if method == "none" else (
            method == "ngram" or s["acceptance_length"] is not None)
        assert s["acceptance_length"] is None or 1.0 <= s["acceptance_length"] <= 4.0  # K=3: at most 3 + 1
        per_pos = s["acceptance_per_position"]
        if per_pos is not None:  # position k is only accepted after 1..k-1; together they make the mean
            assert len(per_pos) == 3 and per_pos == sorted(per_pos, reverse=True), per_pos
            assert abs(1 + sum(per_pos) - s["acceptance_length"]) < 0.01, (per_pos, s["acceptance_length"])
    assert all(r["output_tokens"] == 12 * r["batch_size"] for r in res["raw"])
    assert all(f"| {m} | 2 |" in (out / "results.md").read_text() for m in methods)
    assert (out / "throughput.png").read_bytes()[:4] == b"\x89PNG"
