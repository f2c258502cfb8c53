"""`vllm serve` with FIRP, driven over HTTP with the openai client, against a server without speculation.

One server at a time: the plain server answers every query and stops, then the FIRP server (started
with vLLM's shorthand ``--spec-method firp --spec-model HEADS``) answers the same queries concurrently.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]' or the CPU build)")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

import openai  # noqa: E402  (a dev dependency: missing it is an error, not a skip)

from benchmarks.serving import Server, counter, free_port, serve_cmd, serve_env  # noqa: E402
from tests.devmodels import CHAT_TEMPLATE, code_prompts, dev_models  # noqa: E402

SERVE_ARGS = ["--enforce-eager", "--max-model-len", "384", "--dtype", "float32", "--max-num-seqs", "16",
              "--max-num-batched-tokens", "128", "--disable-uvicorn-access-log"]
CHATS = [
    [{"role": "user", "content": "def fibonacci(n):"}],
    [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "import os\nimport sys"}],
    [{"role": "user", "content": "class Stack:\n    def push(self, item):"}],
]


def _serve_cmd(model: str, port: int, *extra: str) -> list[str]:
    return serve_cmd(model, port, *SERVE_ARGS, *extra)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    models = dev_models()
    print(f"\n[vllm-firp] {models.describe()}")
    tmp = tmp_path_factory.mktemp("serve")
    (tmp / "chat.jinja").write_text(CHAT_TEMPLATE)
    prompts = code_prompts(models, 24, prompt_tokens=48, seed=2)
    return {"models": models, "tmp": tmp, "prompts": prompts}


def _query(server: Server, model: str, prompts: list[str]) -> dict:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)

    def complete(i: int) -> tuple[str, str]:
        kw = {"stop": ["\n\n"]} if i % 4 == 3 else {}
        r = client.completions.create(model=model, prompt=prompts[i], max_tokens=(48, 7, 33)[i % 3],
                                      temperature=0.0, **kw)
        return r.choices[0].text, r.choices[0].finish_reason

    def chat(messages: list[dict]) -> str:
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=32, temperature=0.0)
        return r.choices[0].message.content

    with ThreadPoolExecutor(16) as pool:  # concurrent requests batch together in the engine
        completions = list(pool.map(complete, range(len(prompts))))
        chats = list(pool.map(chat, CHATS))
    return {"completions": completions, "chats": chats, "metrics": server.metrics()}


@pytest.fixture(scope="module")
def plain(setup):
    m, tmp = setup["models"], setup["tmp"]
    cmd = _serve_cmd(m.model, free_port(), "--chat-template", str(tmp / "chat.jinja"))
    with Server(cmd, tmp / "plain.log") as server:
        return _query(server, m.model, setup["prompts"])


@pytest.fixture(scope="module")
def firp(setup, plain):
    m, tmp = setup["models"], setup["tmp"]
    cmd = _serve_cmd(m.model, free_port(), "--chat-template", str(tmp / "chat.jinja"),
                     "--spec-method", "firp", "--spec-model", m.heads)
    server = Server(cmd, tmp / "firp.log")
    with server:
        out = _query(server, m.model, setup["prompts"])
    out["log"] = server.log.read_text(errors="replace")
    return out


def test_completions_equal_without_speculation(plain, firp):
    assert firp["completions"] == plain["completions"]
    assert {r for _, r in plain["completions"]} >= {"length"}


def test_chat_equal_without_speculation(plain, firp):
    assert firp["chats"] == plain["chats"]
    assert all(isinstance(c, str) and c for c in plain["chats"])


def test_metrics_report_firp_acceptance(firp, plain):
    drafts = counter(firp["metrics"], "vllm:spec_decode_num_drafts_total")
    accepted = counter(firp["metrics"], "vllm:spec_decode_num_accepted_tokens_total")
    assert drafts > 0 and accepted > 0
    assert "vllm:spec_decode_num_drafts_total" not in plain["metrics"]
    assert "speculative method 'firp' runs on the V1 model runner" in firp["log"]
    print(f"\n[vllm-firp] vllm serve: mean acceptance length {1 + accepted / drafts:.3f} "
          f"({int(accepted)} accepted / {int(drafts)} drafts)")


def test_bad_heads_make_serve_exit_with_a_clear_message(setup, tmp_path):
    bad = tmp_path / "heads"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"format": "firp", "hidden_size": 1}))
    spec = json.dumps({"method": "firp", "model": str(bad), "num_speculative_tokens": 3})
    cmd = _serve_cmd(setup["models"].model, free_port(), "--speculative-config", spec)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=serve_env())
    assert proc.returncode != 0
    assert "unusable FIRP heads" in proc.stderr and "lacks required field(s)" in proc.stderr, proc.stderr[-3000:]
