"""FIRP on the real vLLM engine through the offline ``LLM`` API (CPU build), against no speculation.

One engine at a time: the baseline engine runs every workload, shuts down, then the FIRP engine runs
them. Both run in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so the test can record the drafts the
runner proposes and recompute them with a plain Hugging Face forward. The engines are configured so
that preemption (few KV blocks), chunked prefill (small token budget) and prefix caching (repeated
prefixes) all happen; requests end inside drafts through EOS, stop strings, stop tokens and max_tokens.
"""

from __future__ import annotations

import os

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]' or the CPU build)")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

import torch  # noqa: E402

from tests.devmodels import code_prompts, dev_models  # noqa: E402
from tests.helpers import engine_metrics, shutdown_engine  # noqa: E402

MAX_LEN = 384
ENGINE = dict(
    enforce_eager=True, max_model_len=MAX_LEN, dtype="float32", distributed_executor_backend="uni",
    block_size=32, num_gpu_blocks_override=20, max_num_batched_tokens=96, max_num_seqs=16,
    enable_prefix_caching=True, disable_log_stats=False, seed=0,
)
MAX_RECORDS = 2000


@pytest.fixture(scope="module")
def models():
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine: the test can reach the runner
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    m = dev_models()
    print(f"\n[vllm-firp] {m.describe()}")
    return m


@pytest.fixture(scope="module")
def workload(models):
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    tok = AutoTokenizer.from_pretrained(models.model)
    base = code_prompts(models, 48, prompt_tokens=64, seed=1)
    # Shared long prefixes (prefix caching) and exact repeats.
    prompts = base + [base[0] + base[1], base[0] + base[2], base[3], base[3] + "\n"]
    newline = tok.encode("\n", add_special_tokens=False)[-1]
    params = []
    for i in range(len(prompts)):
        kw: dict = dict(temperature=0.0, max_tokens=(1, 2, 3, 5, 17, 40, 64, 96)[i % 8])
        if i % 5 == 1:
            kw["stop"] = ["\n\n", "):"]
        if i % 7 == 2:
            kw["stop_token_ids"] = [newline]  # an "EOS" that fires often, mid-draft
        params.append(SamplingParams(**kw))
    long_ids = tok(base[4] * 40, add_special_tokens=False).input_ids[: MAX_LEN - 12]
    near_max = [{"prompt_token_ids": long_ids[: MAX_LEN - 12 - j]} for j in range(3)]
    # A seeded request prefilled in chunks (> max_num_batched_tokens), alone and behind a filler prompt
    # that shifts its chunk boundaries: 96+96+8 tokens (2 discarded samples) vs 6+95+95+4 (3).
    chunked = {"prompt_token_ids": tok(base[5] * 20, add_special_tokens=False).input_ids[:200]}
    filler = {"prompt_token_ids": tok(base[6] * 20, add_special_tokens=False).input_ids[:90]}
    return {"prompts": prompts, "params": params, "near_max": near_max, "chunked": chunked, "filler": filler}


def make_llm(models, spec):
    from vllm import LLM

    return LLM(model=models.model, speculative_config=spec, **ENGINE)


def run_workloads(llm, workload):
    from vllm import SamplingParams

    greedy = llm.generate(workload["prompts"], workload["params"], use_tqdm=False)
    after_greedy = engine_metrics(llm)
    near = llm.generate(workload["near_max"], SamplingParams(temperature=0.0, max_tokens=40), use_tqdm=False)
    seeded = SamplingParams(temperature=1.0, seed=7, max_tokens=24, ignore_eos=True)
    alone = llm.generate([workload["chunked"]], seeded, use_tqdm=False)
    behind = llm.generate([workload["filler"], workload["chunked"]], seeded, use_tqdm=False)
    return {"greedy": greedy, "near_max": near, "greedy_metrics": after_greedy,
            "seeded_chunked": [alone[0].outputs[0].token_ids, behind[1].outputs[0].token_ids]}


@pytest.fixture(scope="module")
def baseline(models, workload):
    llm = make_llm(models, None)
    try:
        return run_workloads(llm, workload)
    finally:
        shutdown_engine(llm)


@pytest.fixture(scope="module")
def firp(models, workload, baseline):
    llm = make_llm(models, {"method": "firp", "model": models.heads})
    runner = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
    records: list[tuple[list[int], list[int]]] = []
    propose = runner.drafter.propose

    def recording_propose(*args, **kwargs):
        drafts = propose(*args, **kwargs)
        batch = runner.input_batch
        for i, d in enumerate(drafts):
            if d and len(records) < MAX_RECORDS:  # context = tokens up to the anchor (before the bonus)
                records.append((batch.token_ids_cpu[i, : int(batch.num_tokens_no_spec[i]) - 1].tolist(), d))
        return drafts

    runner.drafter.propose = recording_propose
    try:
        results = run_workloads(llm, workload)
        yield {"llm": llm, "records": records, **results}
    finally:
        shutdown_engine(llm)


def _summary(o):
    c = o.outputs[0]
    return list(c.token_ids), c.text, c.finish_reason


def test_greedy_outputs_equal_no_speculation(baseline, firp, workload):
    assert len(workload["prompts"]) >= 50
    got, want = [_summary(o) for o in firp["greedy"]], [_summary(o) for o in baseline["greedy"]]
    bad = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not bad, f"{len(bad)} of {len(got)} outputs differ, first: {bad[0]}: {got[bad[0]]} vs {want[bad[0]]}"
    reasons = {w[2] for w in want}
    assert {"length", "stop"} <= reasons, reasons


def test_spec_decode_metrics_report_firp(firp):
    m = firp["greedy_metrics"]
    drafts, accepted = m["vllm:spec_decode_num_drafts"], m["vllm:spec_decode_num_accepted_tokens"]
    assert drafts > 0 and m["vllm:spec_decode_num_draft_tokens"] >= drafts
    assert accepted > 0
    per_pos = m["vllm:spec_decode_num_accepted_tokens_per_pos"]
    assert sum(per_pos) == accepted and list(per_pos) == sorted(per_pos, reverse=True)
    assert m["vllm:num_preemptions"] > 0, "the workload no longer triggers preemption"
    print(f"\n[vllm-firp] LLM workload: mean acceptance length {1 + accepted / drafts:.3f} "
          f"({int(accepted)} accepted / {int(drafts)} drafts, per position {list(per_pos)}, "
          f"{int(m['vllm:num_preemptions'])} preemptions)")


def test_near_max_model_len(baseline, firp):
    for got, want in zip(firp["near_max"], baseline["near_max"], strict=True):
        assert _summary(got) == _summary(want)
        assert len(got.prompt_token_ids) + len(got.outputs[0].token_ids) == MAX_LEN
        assert got.outputs[0].finish_reason == "length"


def hf_firp_drafts(model, heads, context: list[int], k: int) -> list[int]:
    """FIRP drafts for the anchor = last context token, by a plain HF forward over context + k rows.

    The k extra rows are replaced by the pseudo states right after layer t; a causal mask then gives
    exactly FIRP's attention (pseudo j sees the context and pseudos 1..j) from layer t+1 on.
    """
    t, n = heads.config.inject_layers[0], len(context)
    with torch.no_grad():
        h_t = model(torch.tensor([context]), output_hidden_states=True).hidden_states[t][0, -1]
        z = heads.pseudo_states_uniform(h_t)[:k]

        def inject(module, args, out):
            out = out.clone()
            out[0, n:] = z.to(out.dtype)
            return out

        hook = model.model.layers[t - 1].register_forward_hook(inject)
        try:
            logits = model(torch.tensor([context + [0] * k])).logits[0, n:]
        finally:
            hook.remove()
    return logits.argmax(-1).tolist()


def test_drafts_equal_hf_recomputation(firp, models):
    """The drafts vLLM proposed are FIRP's drafts (not merely some drafts the verifier then fixes)."""
    from transformers import AutoModelForCausalLM

    from vllm_firp.core import FirpHeads

    records = firp["records"]
    assert len(records) > 100
    model = AutoModelForCausalLM.from_pretrained(models.model, dtype=torch.float32).eval()
    heads = FirpHeads.from_pretrained(models.heads, model.config, dtype=torch.float32)
    sample = records[:: max(1, len(records) // 80)]
    same = sum(hf_firp_drafts(model, heads, ctx, len(d)) == d for ctx, d in sample)
    print(f"\n[vllm-firp] drafts equal to the HF recomputation: {same}/{len(sample)}")
    assert same >= 0.97 * len(sample)  # float32 kernels differ: allow a rare near-tie flip


def test_acceptance_matches_the_reference_engine(firp, workload, models):
    """Greedy chain FIRP in vLLM and in vllm_firp.engine: same tokens, same mean acceptance length."""
    from vllm import SamplingParams

    from vllm_firp.core import chain_tree
    from vllm_firp.engine.engine import FirpEngine

    llm, prompts = firp["llm"], workload["prompts"][:8]
    before = engine_metrics(llm)
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=48), use_tqdm=False)
    after = engine_metrics(llm)
    drafts = after["vllm:spec_decode_num_drafts"] - before["vllm:spec_decode_num_drafts"]
    accepted = after["vllm:spec_decode_num_accepted_tokens"] - before["vllm:spec_decode_num_accepted_tokens"]
    engine = FirpEngine.from_pretrained(models.model, models.heads)
    k = len(firp["records"][0][1])
    steps: list[int] = []
    for o in outs:
        g = engine.generate(list(o.prompt_token_ids), max_new_tokens=48, tree=chain_tree(k))
        assert g.tokens == list(o.outputs[0].token_ids)
        steps += g.stats.tokens_per_step
    ours, ref = 1 + accepted / drafts, sum(steps) / len(steps)
    print(f"\n[vllm-firp] mean acceptance length: vLLM {ours:.4f}, reference engine {ref:.4f}")
    assert abs(ours - ref) <= 0.03 * ref


def test_seeded_sampling(firp, workload):
    """Random sampling goes through vLLM's rejection sampler: right lengths, valid tokens, drafts accepted.

    Not asserted: same seed -> same tokens. On vLLM 0.32's CPU build that does not hold for any
    speculative method (ngram included); it does hold without speculation.
    """
    from vllm import SamplingParams

    llm = firp["llm"]
    prompts = [p.splitlines()[0][:40] for p in workload["prompts"][:8]]
    params = [SamplingParams(temperature=0.8, top_p=0.95, seed=100 + i, max_tokens=24 + i, ignore_eos=True)
              for i in range(len(prompts))]
    before = engine_metrics(llm)["vllm:spec_decode_num_accepted_tokens"]
    outs = llm.generate(prompts, params, use_tqdm=False)
    vocab = llm.llm_engine.model_config.get_vocab_size()
    for i, o in enumerate(outs):
        assert len(o.outputs[0].token_ids) == 24 + i and o.outputs[0].finish_reason == "length"
        assert all(0 <= t < vocab for t in o.outputs[0].token_ids)
    assert engine_metrics(llm)["vllm:spec_decode_num_accepted_tokens"] > before


def test_seeded_requests_prefilled_in_chunks(baseline, firp):
    """vLLM 0.32's CPU runner crashed on these ("CPU Generator does not use offset"; cpu_fixes.py rows 2-3).

    Without speculation a seed fixes the output whatever the chunking: the samples drawn for partial
    prefills are discarded and must leave the generator as it was (2 vs 3 of them here).
    """
    alone, behind = baseline["seeded_chunked"]
    assert len(alone) == 24 and list(alone) == list(behind), "the seeded stream depends on prefill chunking"
    assert all(len(t) == 24 for t in firp["seeded_chunked"])


def test_sampling_keeps_the_target_distribution(firp, workload, models):
    """FIRP + vLLM's rejection sampler sample from the target model's own (temperature-scaled) distribution.

    Statistic: the sum over sampled tokens of surprisal minus the entropy of the distribution it was drawn
    from, both from an independent HF forward. Under the right distribution each term has mean 0 and a
    known variance, so the sum is ~N(0, sum of variances). Verifying drafts against any other distribution
    (e.g. a wrong temperature per draft position, cpu_fixes.py row 1) moves it by tens of sigmas.
    """
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams

    temperature, repeats, new = 0.7, 8, 16
    llm = firp["llm"]
    prompts = [p.splitlines()[0][:40] for p in workload["prompts"][:8]] * repeats
    before = engine_metrics(llm)
    outs = llm.generate(
        prompts, SamplingParams(temperature=temperature, max_tokens=new, ignore_eos=True), use_tqdm=False
    )
    after = engine_metrics(llm)
    hf = AutoModelForCausalLM.from_pretrained(models.model, dtype=torch.float32).eval()
    excess, variance = 0.0, 0.0
    with torch.no_grad():
        for o in outs:
            prompt, gen = list(o.prompt_token_ids), list(o.outputs[0].token_ids)
            assert len(gen) == new
            logits = hf(torch.tensor([prompt + gen])).logits[0, len(prompt) - 1 : -1].double()
            logp = torch.log_softmax(logits / temperature, dim=-1)
            entropy = -(logp.exp() * logp).sum(-1)
            second = (logp.exp() * logp.square()).sum(-1)
            excess += float((-logp[torch.arange(new), torch.tensor(gen)] - entropy).sum())
            variance += float((second - entropy.square()).sum())
    z = excess / variance**0.5
    accepted = after["vllm:spec_decode_num_accepted_tokens"] - before["vllm:spec_decode_num_accepted_tokens"]
    drafted = after["vllm:spec_decode_num_draft_tokens"] - before["vllm:spec_decode_num_draft_tokens"]
    print(f"\n[vllm-firp] sampling T={temperature}: z={z:+.2f} over {len(outs) * new} tokens, "
          f"{accepted}/{drafted} draft tokens accepted")
    assert abs(z) < 4.5, f"sampled tokens do not follow the target distribution (z={z:.1f})"
    assert accepted > 0.02 * drafted, "drafts are (almost) never accepted under sampling"


def test_bad_heads_raise_a_clear_error(models, tmp_path):
    from vllm import LLM

    (tmp_path / "config.json").write_text('{"format": "firp"}')
    with pytest.raises(ValueError, match=r"unusable FIRP heads.*lacks required field"):
        LLM(model=models.model, speculative_config={"method": "firp", "model": str(tmp_path)}, **ENGINE)
