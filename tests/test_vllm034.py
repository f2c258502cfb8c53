"""FIRP on vLLM 0.34 (registered speculative method on Model Runner V2), run on the CPU build of 0.34.

The engine tests run only under vLLM 0.34 (``../shared/vllm-0.34/install.sh`` builds that venv; its Triton
kernels run in Triton's interpreter, so everything here is small: SmolLM2-135M-Instruct with the shipped
FIRP heads, two short prompts, one engine at a time, in-process). Under any other vLLM they are skipped.
"""

from __future__ import annotations

import importlib.util
import os

import pytest


def _vllm_is_034() -> bool:
    """Whether the installed vLLM is 0.34 (it has the speculator registry), without importing vLLM."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        return False
    registry = os.path.join(os.path.dirname(spec.origin), "v1", "worker", "gpu", "spec_decode", "speculator_config.py")
    return os.path.isfile(registry)


if _vllm_is_034():
    # The x86 CPU build of 0.34 runs Triton in its interpreter. It sets TRITON_INTERPRET=1 itself, but only after
    # importing triton, whose own @jit library functions (tl.max with indices, ...) are then compiled-mode
    # functions that the interpreter refuses to call ("Cannot call @triton.jit'd outside of the scope of a
    # kernel"): every sampling step fails, with or without speculation. Set it before anything imports triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")

vllm = pytest.importorskip("vllm", reason="vLLM is not installed")

from vllm_firp.vllm_plugin import UnsupportedVllmVersion, register  # noqa: E402

IS_034 = vllm.__version__.startswith("0.34.")
MAX_LEN = 256
# Per-step K: two greedy requests (prompt, max_tokens); the batch shrinks from 2 requests to 1 halfway.
SMALL = (("The capital of France is", 12), ("def fibonacci(n):\n    ", 24))
ENGINE = dict(
    enforce_eager=True, max_model_len=MAX_LEN, dtype="float32", distributed_executor_backend="uni", block_size=32,
    max_num_seqs=8, max_num_batched_tokens=256, seed=0, disable_log_stats=False, enable_prefix_caching=True,
)
needs_034 = pytest.mark.skipif(not IS_034, reason=f"vLLM 0.34 tests; this venv has vLLM {vllm.__version__}")


def test_unsupported_vllm_version_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(vllm, "__version__", "0.99.0")
    monkeypatch.delenv("VLLM_FIRP_ALLOW_UNTESTED_VLLM", raising=False)
    with pytest.raises(UnsupportedVllmVersion, match=r"0\.32\.x .*0\.34\.x.*found vLLM 0\.99\.0"):
        register()


# ---------------------------------------------------------------------------------------------- vLLM 0.34 only
@needs_034
def test_firp_is_a_registered_speculative_method():
    from vllm.v1.worker.gpu.spec_decode.speculator_config import (
        get_custom_speculator_config_class,
        registered_speculative_methods,
    )

    from vllm_firp.vllm_plugin.v0_34.config import FirpSpeculatorConfig

    register()
    register()  # idempotent (vLLM loads plugins once per process, tests may call it again)
    assert "firp" in registered_speculative_methods()
    assert get_custom_speculator_config_class("firp") is FirpSpeculatorConfig


def _model_dir() -> str:
    from vllm_firp.packaged_models import ensure_registry_model

    return str(ensure_registry_model("smollm2-135m-instruct", progress=False))


@pytest.fixture(scope="module")
def model_dir():
    if not IS_034:
        pytest.skip(f"vLLM 0.34 tests; this venv has vLLM {vllm.__version__}")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine: the test can reach the runner
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    try:
        return _model_dir()
    except Exception as e:  # noqa: BLE001 - no model here: skip, do not fail
        pytest.skip(f"SmolLM2-135M-Instruct is not available: {e}")


def _probe_speculator(worker):
    """What the runner built (runs in the worker; in-process engine)."""
    runner = worker.model_runner
    spec = runner.speculator
    if spec is None:
        return None
    layers = runner.model.model.layers
    t = spec.inject_layer
    return {
        "runner": type(runner).__name__,
        "speculator": type(spec).__name__,
        "own_params": sum(p.numel() for p in spec.model.parameters()),
        "borrows_upper_layers": len(spec._upper) == len(layers) - t
        and all(a is b for a, b in zip(spec._upper, layers[t:], strict=True)),
        "borrows_norm": spec._norm is runner.model.model.norm,
        "draft_attn_layers": sorted(spec.draft_attn_layer_names),
        "attn_layers": len(spec._layer_names),
        "aux_layers": sorted(runner.model.model.aux_hidden_state_layers),
        "hidden": runner.model.config.hidden_size,
        "K": spec.num_speculative_steps,
        "kv_cache_groups": len(runner.kv_cache_config.kv_cache_groups),
    }


def _small_workload(tokenizer):
    from vllm import SamplingParams

    return [p for p, _ in SMALL], [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for _, n in SMALL]


def _mixed_workload(tokenizer):
    """Greedy requests, one that stops on a string (inside a draft), one whose prompt ends 6 tokens before
    max_model_len (pseudo positions past it), and two identical seeded sampled requests."""
    from vllm import SamplingParams

    long_ids = tokenizer("Paris is the capital of France. " * 60, add_special_tokens=False).input_ids[: MAX_LEN - 6]
    greedy = dict(temperature=0.0, max_tokens=24, ignore_eos=True)
    seeded = dict(temperature=0.8, seed=123, max_tokens=16, ignore_eos=True)
    prompts = ["The capital of France is", "def fibonacci(n):\n    ", "def fibonacci(n):\n    ",
               {"prompt_token_ids": long_ids}, "Tell me a story about a cat.", "Tell me a story about a cat."]
    params = [SamplingParams(**greedy), SamplingParams(**greedy), SamplingParams(temperature=0.0, max_tokens=40,
              stop=["\n"]), SamplingParams(**greedy), SamplingParams(**seeded), SamplingParams(**seeded)]
    return prompts, params


def _run(model_dir, speculative_config=None, workload=_mixed_workload):
    from transformers import AutoTokenizer
    from vllm import LLM

    from tests.helpers import engine_metrics, shutdown_engine

    prompts, params = workload(AutoTokenizer.from_pretrained(model_dir))
    llm = LLM(model=model_dir, speculative_config=speculative_config, **ENGINE)
    try:
        outs = llm.generate(prompts, params)
        probe = llm.collective_rpc(_probe_speculator)[0]
        result = [(list(o.outputs[0].token_ids), o.outputs[0].finish_reason) for o in outs]
        return result, engine_metrics(llm), probe
    finally:
        shutdown_engine(llm)


_BASELINES: dict = {}


def _baseline(model_dir, workload):
    """The same workload without speculation (one engine per workload and test session)."""
    if workload not in _BASELINES:
        result, _, probe = _run(model_dir, None, workload)
        assert probe is None
        _BASELINES[workload] = result
    return _BASELINES[workload]


def _spec(k=None, **extra):
    from vllm_firp.packaged_models import shipped_heads_dir

    sc = {"method": "firp", "model": str(shipped_heads_dir("smollm2-135m-instruct")), **extra}
    if k is not None:
        sc["num_speculative_tokens"] = k
    return sc


def _counter(metrics, name):
    value = metrics.get(f"vllm:spec_decode_{name}", 0)
    return sum(value) if isinstance(value, list) else value


@needs_034
def test_greedy_identical_and_drafts_accepted(model_dir):
    baseline = _baseline(model_dir, _mixed_workload)
    result, metrics, probe = _run(model_dir, _spec())
    print(f"\n[firp 0.34] runner: {probe}")
    greedy = [0, 1, 2, 3]
    assert [result[i] for i in greedy] == [baseline[i] for i in greedy]
    assert result[2][1] == "stop" and result[3][1] == "length" and len(result[3][0]) == 6
    # Seeded sampling is verified by vLLM's rejection sampler: lossless in distribution, not token for token
    # equal to plain sampling; the same seed gives the same tokens within a batch.
    assert result[4] == result[5] and baseline[4] == baseline[5]
    # No copy of any weight: the speculator owns the heads only and runs the target's own modules, adds no
    # attention layer (no KV cache of its own), and the runner outputs the aux hidden state of layer t.
    d, k = probe["hidden"], probe["K"]
    assert probe["own_params"] == k * (d * d + d)
    assert probe["borrows_upper_layers"] and probe["borrows_norm"]
    assert probe["draft_attn_layers"] == [] and probe["kv_cache_groups"] == 1
    assert probe["aux_layers"] == [18] and probe["attn_layers"] == 30 - 18
    drafts, drafted, accepted = (_counter(metrics, n) for n in ("num_drafts", "num_draft_tokens", "num_accepted_tokens"))
    print(f"[firp 0.34] drafts={drafts} draft_tokens={drafted} accepted={accepted} metrics={metrics}")
    # K=3 per draft, fewer near max_model_len (the scheduler trims drafts that would pass it).
    assert 0 < drafts and 2 * drafts < drafted <= 3 * drafts
    assert drafts < sum(len(t) for t, _ in result)  # fewer steps than tokens
    assert 1 + accepted / drafts > 1.2, "FIRP drafts are (almost) never accepted"


@needs_034
def test_per_step_k_from_the_scheduler(model_dir):
    """K=2 while both requests run, K=0 (draft nothing) once one has finished: the scheduler's per-step K."""
    schedule = [[1, 1, 0], [2, 8, 2]]
    result, metrics, _ = _run(model_dir, _spec(3, num_speculative_tokens_per_batch_size=schedule), _small_workload)
    assert result == _baseline(model_dir, _small_workload)
    drafts, drafted = _counter(metrics, "num_drafts"), _counter(metrics, "num_draft_tokens")
    per_pos = metrics.get("vllm:spec_decode_num_accepted_tokens_per_pos")
    print(f"\n[firp 0.34, K by batch size] drafts={drafts} draft_tokens={drafted} per_pos={per_pos}")
    assert 0 < drafts and drafted == 2 * drafts
    # K=2 until the first request ends after 12 tokens: at most 2 x 12 drafts (one per step and request);
    # the 12 tokens the other request then generates alone are drafted with K=0.
    assert drafts <= 2 * SMALL[0][1]
    assert per_pos is None or sum(per_pos[2:]) == 0


@needs_034
def test_refused_at_start_up(model_dir):
    from vllm.engine.arg_utils import EngineArgs

    for spec, match in (
        (_spec(4), "exceeds the 3 future tokens"),
        ({"method": "firp"}, "needs 'model'"),
        (_spec(draft_sample_method="probabilistic"), "probabilistic"),
        (_spec(enable_adaptive_verification=True), "enable_adaptive_verification"),
    ):
        with pytest.raises(Exception, match=match):
            EngineArgs(model=model_dir, speculative_config=spec, **ENGINE).create_engine_config()


@needs_034
def test_contract_of_the_vllm_034_symbols_firp_relies_on():
    """No vLLM symbol is patched on 0.34; these are the ones the adapter calls or subclasses. If one moves,
    this test names it (vllm_firp/vllm_plugin/v0_34/speculator.py docstring lists the runner contract)."""
    import inspect

    from vllm.config import SpeculativeConfig
    from vllm.v1.worker.cpu.model_runner import CPUModelRunner
    from vllm.v1.worker.gpu import attn_utils, model_runner
    from vllm.v1.worker.gpu.block_table import BlockTables
    from vllm.v1.worker.gpu.spec_decode import speculator, speculator_config
    from vllm.v1.worker.gpu.spec_decode.eagle import eagle3_utils

    assert issubclass(CPUModelRunner, model_runner.GPUModelRunner)
    assert "config_cls" in inspect.signature(speculator_config.register_speculative_method).parameters
    sc = inspect.signature(speculator_config.SpeculatorConfig.configure).parameters
    assert list(sc) == ["spec"]
    for name in ("uses_aux_hidden_states", "num_lookahead_tokens"):
        assert isinstance(inspect.getattr_static(speculator_config.SpeculatorConfig, name), property), name
    propose = inspect.signature(speculator.BaseSpeculator.propose).parameters
    assert list(propose)[:12] == [
        "self", "input_batch", "attn_metadata", "slot_mappings", "last_hidden_states", "aux_hidden_states",
        "num_sampled", "num_rejected", "last_sampled", "next_prefill_tokens", "temperature", "seeds",
    ]
    assert {"dummy_run", "num_speculative_tokens"} <= set(propose)
    assert list(inspect.signature(speculator.DraftModelSpeculator.load_draft_model).parameters) == [
        "self", "target_model", "target_attn_layer_names",
    ]
    assert list(inspect.signature(speculator.DraftModelSpeculator.set_attn).parameters) == [
        "self", "model_state", "kv_cache_config", "block_tables", "target_input_buffers", "target_attn_groups",
    ]
    # The runner hands the target model and the KV layout to DraftModelSpeculators only, passes the scheduler's
    # per-step K, and overwrites drafts past it.
    runner = inspect.getsource(model_runner.GPUModelRunner)
    assert "isinstance(self.speculator, DraftModelSpeculator)" in runner
    assert "self.speculator.load_model(self.model)" in runner and "self.speculator.set_attn(" in runner
    assert "num_speculative_tokens=num_spec_tokens" in runner
    assert "draft_tokens[:, num_spec_tokens:] = -1" in runner
    assert "set_eagle3_aux_hidden_state_layers(" in runner
    assert "eagle_aux_hidden_state_layer_ids" in inspect.getsource(eagle3_utils.get_eagle3_aux_layers_from_config)
    assert "active_layer_names" in inspect.signature(attn_utils.init_attn_backend).parameters
    assert {"attn_groups", "block_tables", "slot_mappings", "positions"} <= set(
        inspect.signature(attn_utils.build_attn_metadata).parameters
    )
    assert "input_block_tables" in inspect.getsource(BlockTables.__init__)
    assert "custom_method" in {f for f in SpeculativeConfig.__dataclass_fields__}
