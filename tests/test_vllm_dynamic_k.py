"""vLLM's batch-size schedule of K (``num_speculative_tokens_per_batch_size``) drives FIRP like ngram.

Large batches are where drafting stops paying on a compute-bound device; a schedule entry with K=0 turns
FIRP off there. Its own in-process engine (the module runs after, never beside, the other engine tests).
"""

from __future__ import annotations

import os

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]' or the CPU build)")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

from tests.devmodels import code_prompts, dev_models  # noqa: E402
from tests.helpers import engine_metrics, shutdown_engine  # noqa: E402


def _spec_counts(llm) -> tuple[float, float]:
    m = engine_metrics(llm)
    return m.get("vllm:spec_decode_num_draft_tokens", 0.0), m.get("vllm:spec_decode_num_accepted_tokens", 0.0)


def test_schedule_sets_k_per_batch_size():
    from vllm import LLM, SamplingParams

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    models = dev_models()
    spec = {"method": "firp", "model": models.heads, "num_speculative_tokens_per_batch_size": [(1, 2, 3), (3, 16, 0)]}
    llm = LLM(model=models.model, speculative_config=spec, enforce_eager=True, max_model_len=256, dtype="float32",
              distributed_executor_backend="uni", max_num_seqs=16, disable_log_stats=False, seed=0)
    try:
        prompts = code_prompts(models, 8, prompt_tokens=48, seed=3)
        params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
        before = _spec_counts(llm)
        alone = llm.generate(prompts[:1], params, use_tqdm=False)
        after_one = _spec_counts(llm)
        batch = llm.generate(prompts, params, use_tqdm=False)
        after_eight = _spec_counts(llm)
    finally:
        shutdown_engine(llm)
    assert after_one[0] > before[0] and after_one[1] > before[1], "batch 1 (K=3) drafts nothing"
    assert after_eight == after_one, "batch 8 is scheduled K=0 but FIRP still drafted"
    assert list(alone[0].outputs[0].token_ids) == list(batch[0].outputs[0].token_ids)  # greedy, either way
