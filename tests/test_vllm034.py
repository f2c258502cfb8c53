"""FIRP on vLLM 0.34 (registered speculative method on Model Runner V2), run on the CPU build of 0.34.

The engine tests run only under vLLM 0.34 (``../shared/vllm-0.34/install.sh`` builds that venv; its Triton
kernels run in Triton's interpreter, so everything here is small: SmolLM2-135M-Instruct with the shipped
FIRP heads, two short prompts, one engine at a time, in-process). Under any other vLLM they are skipped.
"""

from __future__ import annotations

import os

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed")

from vllm_firp.vllm_plugin import UnsupportedVllmVersion, register  # noqa: E402

IS_034 = vllm.__version__.startswith("0.34.")
PROMPTS = ["The capital of France is", "def fibonacci(n):\n    "]
MAX_TOKENS = 20
ENGINE = dict(
    enforce_eager=True, max_model_len=256, dtype="float32", distributed_executor_backend="uni", block_size=32,
    max_num_seqs=4, max_num_batched_tokens=256, seed=0, disable_log_stats=False, enable_prefix_caching=False,
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
    from vllm_firp.registry_models import ensure_registry_model

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


def _run(model_dir, speculative_config=None):
    from vllm import LLM, SamplingParams

    from tests.helpers import engine_metrics, shutdown_engine

    llm = LLM(model=model_dir, speculative_config=speculative_config, **ENGINE)
    try:
        outs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True))
        return [list(o.outputs[0].token_ids) for o in outs], engine_metrics(llm)
    finally:
        shutdown_engine(llm)


@pytest.fixture(scope="module")
def baseline(model_dir):
    tokens, _ = _run(model_dir)
    return tokens


def _spec(k=None, **extra):
    from vllm_firp.registry_models import shipped_heads_dir

    sc = {"method": "firp", "model": str(shipped_heads_dir("smollm2-135m-instruct")), **extra}
    if k is not None:
        sc["num_speculative_tokens"] = k
    return sc


def _counter(metrics, name):
    value = metrics.get(f"vllm:spec_decode_{name}", 0)
    return sum(value) if isinstance(value, list) else value


@needs_034
def test_greedy_identical_and_drafts_accepted(model_dir, baseline):
    tokens, metrics = _run(model_dir, _spec())
    assert tokens == baseline
    drafts, drafted, accepted = (_counter(metrics, n) for n in ("num_drafts", "num_draft_tokens", "num_accepted_tokens"))
    print(f"\n[firp 0.34] drafts={drafts} draft_tokens={drafted} accepted={accepted} metrics={metrics}")
    assert drafts > 0 and drafted == 3 * drafts
    assert 1 + accepted / drafts > 1.2, "FIRP drafts are (almost) never accepted"


@needs_034
def test_per_step_k_zero_drafts_nothing(model_dir, baseline):
    tokens, metrics = _run(model_dir, _spec(3, num_speculative_tokens_per_batch_size=[[1, 1024, 0]]))
    assert tokens == baseline
    assert _counter(metrics, "num_draft_tokens") == 0


@needs_034
def test_refused_at_start_up(model_dir):
    from vllm.engine.arg_utils import EngineArgs

    for spec, match in (
        (_spec(4), "exceeds the 3 future tokens"),
        ({"method": "firp"}, "needs 'model'"),
        (_spec(draft_sample_method="probabilistic"), "probabilistic"),
    ):
        with pytest.raises(Exception, match=match):
            EngineArgs(model=model_dir, speculative_config=spec, **ENGINE).create_engine_config()
