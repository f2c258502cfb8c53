"""Method ``firp_suffix`` (FIRP + vLLM's suffix decoding in one drafter) on the real vLLM engine (CPU build).

Three in-process engines, one at a time, on the same workload: no speculation, plain FIRP and the hybrid.
The workload mixes fresh code prompts (where FIRP drafts) with prompts that repeat their own text and
repeated requests (where the suffix trees match), with stops and lengths that end requests mid-draft.
"""

from __future__ import annotations

import os

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]' or the CPU build)")
pytest.importorskip("arctic_inference", reason="suffix decoding needs arctic-inference")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

import torch  # noqa: E402

from tests.devmodels import code_prompts, dev_models  # noqa: E402
from tests.helpers import engine_metrics, shutdown_engine  # noqa: E402

ENGINE = dict(enforce_eager=True, max_model_len=384, dtype="float32", distributed_executor_backend="uni",
              block_size=32, max_num_seqs=16, enable_prefix_caching=True, disable_log_stats=False, seed=0)
K = 6  # suffix chains up to 6 tokens; FIRP's heads draft their own K (3)


@pytest.fixture(scope="module")
def models():
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process: the test reads the drafter's counters
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return dev_models()


@pytest.fixture(scope="module")
def workload(models):
    from vllm import SamplingParams

    base = code_prompts(models, 24, prompt_tokens=48, seed=5)
    prompts = base[:12] + [p + "\n" + p for p in base[12:20]] + base[:4]  # self-repeats, then repeated requests
    params = [SamplingParams(temperature=0.0, max_tokens=(7, 24, 48, 64)[i % 4], stop=["\n\n\n"] if i % 3 else None)
              for i in range(len(prompts))]
    return prompts, params


def _runner(llm):
    return llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner


def _run(models, workload, spec):
    from vllm import LLM

    llm = LLM(model=models.model, speculative_config=spec, **ENGINE)
    try:
        prompts, params = workload
        outs = []
        for i in range(0, len(prompts), 8):  # batches of 8: later batches see earlier responses in the suffix cache
            outs += llm.generate(prompts[i : i + 8], params[i : i + 8], use_tqdm=False)
        drafter = getattr(_runner(llm), "drafter", None)
        hybrid = getattr(drafter, "hybrid", None)
        return {"tokens": [list(o.outputs[0].token_ids) for o in outs], "metrics": engine_metrics(llm),
                "hybrid": hybrid.as_dict() if hybrid is not None else None}
    finally:
        shutdown_engine(llm)


@pytest.fixture(scope="module")
def plain(models, workload):
    return _run(models, workload, None)


@pytest.fixture(scope="module")
def firp(models, workload, plain):
    return _run(models, workload, {"method": "firp", "model": models.heads})


@pytest.fixture(scope="module")
def hybrid(models, workload, firp):
    return _run(models, workload, {"method": "firp_suffix", "model": models.heads, "num_speculative_tokens": K})


def _accepted(run) -> tuple[float, float]:
    m = run["metrics"]
    return m["vllm:spec_decode_num_accepted_tokens"], m["vllm:spec_decode_num_drafts"]


def test_greedy_output_equals_no_speculation(plain, firp, hybrid):
    for name, run in (("firp", firp), ("firp_suffix", hybrid)):
        bad = [i for i, (g, w) in enumerate(zip(run["tokens"], plain["tokens"], strict=True)) if g != w]
        assert not bad, f"{name}: {len(bad)} outputs differ from no speculation, first: prompt {bad[0]}"


def test_both_drafters_propose_and_get_accepted(hybrid):
    stats = hybrid["hybrid"]
    for name in ("suffix", "firp"):
        s = stats[name]
        assert s["verified"] > 0 and s["accepted_tokens"] > 0, f"{name} drafted nothing that was accepted: {stats}"
    assert len(stats["suffix"]["accepted_at"]) > 3, "suffix chains never went past FIRP's K"
    assert len(stats["firp"]["accepted_at"]) <= 3, "FIRP drafted past its heads' K"
    print(f"\n[vllm-firp] firp_suffix: {stats}")


def test_attribution_adds_up_to_vllms_metrics(hybrid):
    """Each accepted token vLLM counts was proposed by exactly one drafter, and the split says which."""
    stats, m = hybrid["hybrid"], hybrid["metrics"]
    assert stats["suffix"]["verified_tokens"] + stats["firp"]["verified_tokens"] == m["vllm:spec_decode_num_draft_tokens"]
    assert stats["suffix"]["accepted_tokens"] + stats["firp"]["accepted_tokens"] == m[
        "vllm:spec_decode_num_accepted_tokens"]
    per_pos = list(m["vllm:spec_decode_num_accepted_tokens_per_pos"])
    split = [a + b for a, b in zip(*(stats[n]["accepted_at"] + [0] * K for n in ("suffix", "firp")), strict=False)]
    assert per_pos == split[: len(per_pos)]


def test_the_hybrid_accepts_more_than_firp_on_repeats(firp, hybrid):
    (fa, fd), (ha, hd) = _accepted(firp), _accepted(hybrid)
    print(f"\n[vllm-firp] mean acceptance length: firp {1 + fa / fd:.2f}, firp_suffix {1 + ha / hd:.2f}")
    assert ha > fa, "the hybrid accepted fewer tokens than FIRP alone on a workload full of repeats"


def test_sampling_keeps_the_target_distribution(models, workload):
    """Sampled requests through the hybrid: the surprisal-minus-entropy statistic of test_vllm_llm stays ~N(0, 1)."""
    from transformers import AutoModelForCausalLM
    from vllm import LLM, SamplingParams

    temperature, new = 0.7, 16
    prompts = [p[-120:] for p in workload[0][12:20]] * 6  # repeats: the suffix half drafts too
    llm = LLM(model=models.model, speculative_config={"method": "firp_suffix", "model": models.heads,
                                                      "num_speculative_tokens": K}, **ENGINE)
    try:
        outs = llm.generate(prompts, SamplingParams(temperature=temperature, max_tokens=new, ignore_eos=True),
                            use_tqdm=False)
        stats = _runner(llm).drafter.hybrid.as_dict()
    finally:
        shutdown_engine(llm)
    hf = AutoModelForCausalLM.from_pretrained(models.model, dtype=torch.float32).eval()
    excess, variance = 0.0, 0.0
    with torch.no_grad():
        for o in outs:
            prompt, gen = list(o.prompt_token_ids), list(o.outputs[0].token_ids)
            logits = hf(torch.tensor([prompt + gen])).logits[0, len(prompt) - 1 : -1].double()
            logp = torch.log_softmax(logits / temperature, dim=-1)
            entropy = -(logp.exp() * logp).sum(-1)
            excess += float((-logp[torch.arange(new), torch.tensor(gen)] - entropy).sum())
            variance += float(((logp.exp() * logp.square()).sum(-1) - entropy.square()).sum())
    z = excess / variance**0.5
    print(f"\n[vllm-firp] firp_suffix sampling T={temperature}: z={z:+.2f}; {stats}")
    assert abs(z) < 4.5, f"sampled tokens do not follow the target distribution (z={z:.1f})"
    assert stats["suffix"]["accepted_tokens"] > 0 and stats["firp"]["verified"] > 0


def test_per_step_k_zero_drafts_nothing(models):
    """The scheduler's K for the batch size bounds both halves; K=0 turns the hybrid off."""
    from vllm import LLM, SamplingParams

    spec = {"method": "firp_suffix", "model": models.heads, "num_speculative_tokens": K,
            "num_speculative_tokens_per_batch_size": [(1, 2, K), (3, 16, 0)]}
    llm = LLM(model=models.model, speculative_config=spec, **ENGINE)
    try:
        prompts = [p + "\n" + p for p in code_prompts(models, 4, prompt_tokens=48, seed=7)]
        params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
        llm.generate(prompts[:1], params, use_tqdm=False)
        one = engine_metrics(llm)["vllm:spec_decode_num_draft_tokens"]
        llm.generate(prompts, params, use_tqdm=False)
        four = engine_metrics(llm)["vllm:spec_decode_num_draft_tokens"]
    finally:
        shutdown_engine(llm)
    assert one > 0, "batch 1 (K=6) drafted nothing"
    assert four == one, "batch 4 is scheduled K=0 but the hybrid still drafted"
