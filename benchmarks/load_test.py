"""Load test of `vllm serve` with FIRP: a burst of mixed, aborted and malformed requests at high concurrency.

One server at a time. A server without speculation first answers the greedy requests (the reference); then
the FIRP server gets the whole mix, ``--concurrency`` requests in flight: completions and chat, streaming,
client aborts mid-stream, stop strings, ``max_tokens`` 1, ``n`` > 1 with seeds, logprobs, and malformed
requests (negative ``max_tokens``, ``top_p`` > 1, token ids outside the vocabulary, prompts past
``max_model_len``). Pass: every good request answered in full, every bad one a 4xx, the server healthy at
the end, every greedy answer identical to the reference server's, and FIRP's acceptance in /metrics.
Writes ``results.json`` and ``results.md`` to ``--out``.

    python -m benchmarks.load_test --out bench-out/load                 # SmolLM2-135M-Instruct + shipped heads
    python -m benchmarks.load_test --out /tmp/load --model micro --requests 120 --concurrency 16
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.serving import Server, counter, free_port, serve_cmd

GOOD_KINDS = ("completion", "chat", "stream", "stream_chat", "abort", "stop", "max_tokens_1", "n_seeded", "logprobs")
BAD_KINDS = ("bad_max_tokens", "bad_top_p", "bad_token_ids", "too_long")
GREEDY_KINDS = ("completion", "chat", "stream", "stream_chat", "stop", "max_tokens_1", "logprobs")
TOPICS = ["a palindrome checker in Python", "the difference between a list and a tuple", "how vaccines work",
          "a haiku about autumn", "why the sky is blue", "binary search", "the French revolution in brief",
          "tips for a job interview", "what a hash map is", "how to make bread", "recursion, with an example",
          "the water cycle", "SQL joins", "a short story opening", "photosynthesis", "how a CPU cache works"]


@dataclass
class Request:
    index: int
    kind: str
    body: dict[str, Any]
    chat: bool
    abort_after: int = 0  # stream chunks to read before the client hangs up


@dataclass
class Outcome:
    index: int
    kind: str
    ok: bool
    detail: str = ""
    text: str | None = None  # greedy kinds: the answer compared with the reference server
    status: int | None = None
    seconds: float = 0.0
    completion_tokens: int = 0
    extra: dict = field(default_factory=dict)


def build_requests(n: int, model: str, max_model_len: int, vocab_size: int, seed: int = 0) -> list[Request]:
    """A deterministic mix: about 1 in 7 requests is malformed, the rest spread over the good kinds."""
    rng = random.Random(seed)
    kinds = [*GOOD_KINDS, *GOOD_KINDS, "completion", "chat", *BAD_KINDS]
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)] if i < len(kinds) else rng.choice(kinds)
        topic = rng.choice(TOPICS)
        max_tokens = rng.choice((8, 16, 24, 32, 48))
        messages = [{"role": "user", "content": f"Tell me about {topic}."}]
        prompt = f"Question: tell me about {topic}.\nAnswer:"
        chat = kind in ("chat", "stream_chat") or (kind == "abort" and i % 2 == 0)
        body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": 0.0}
        body.update({"messages": messages} if chat else {"prompt": prompt})
        abort_after = 0
        if kind in ("stream", "stream_chat", "abort"):
            body["stream"] = True
            if kind == "abort":  # long enough to be mid-generation when the client hangs up
                abort_after, body["max_tokens"] = rng.randint(1, 4), 160
        elif kind == "stop":
            body["stop"] = [".", "\n"]
        elif kind == "max_tokens_1":
            body["max_tokens"] = 1
        elif kind == "n_seeded":
            body.update(n=rng.choice((2, 3)), temperature=0.8, top_p=0.95, seed=rng.randrange(1 << 30))
        elif kind == "logprobs":
            body["logprobs"] = 2
        elif kind == "bad_max_tokens":
            body["max_tokens"] = -rng.randint(1, 5)
        elif kind == "bad_top_p":
            body["top_p"] = 1.5
        elif kind == "bad_token_ids":
            body["prompt"] = [1, 2, vocab_size + rng.randint(10, 1000)]
        elif kind == "too_long":
            body["prompt"] = [7] * (max_model_len + 16)
        out.append(Request(i, kind, body, chat, abort_after))
    return out


def _post(url: str, body: dict, timeout: float = 600) -> tuple[int, Any]:
    import httpx

    r = httpx.post(url, json=body, timeout=timeout)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


def _stream(url: str, body: dict, abort_after: int, timeout: float = 600) -> tuple[int, str, int, str | None]:
    """(status, text, chunks read, finish_reason); hangs up after ``abort_after`` chunks when > 0."""
    import httpx

    text, chunks, finish = "", 0, None
    with httpx.stream("POST", url, json=body, timeout=timeout) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, r.text, 0, None
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
            finish = choice.get("finish_reason") or finish
            chunks += 1
            if abort_after and chunks >= abort_after:
                break  # leaving the context closes the connection: vLLM aborts the request
    return 200, text, chunks, finish


def run_request(base_url: str, req: Request) -> Outcome:
    url = base_url + ("/v1/chat/completions" if req.chat else "/v1/completions")
    start = time.perf_counter()
    try:
        if req.kind in BAD_KINDS:
            status, payload = _post(url, req.body)
            ok = 400 <= status < 500
            return Outcome(req.index, req.kind, ok, "" if ok else f"status {status}: {str(payload)[:200]}",
                           status=status, seconds=time.perf_counter() - start)
        if req.body.get("stream"):
            status, text, chunks, finish = _stream(url, req.body, req.abort_after)
            seconds = time.perf_counter() - start
            if status != 200:
                return Outcome(req.index, req.kind, False, f"status {status}: {text[:200]}", status=status)
            if req.abort_after:
                ok = chunks >= min(req.abort_after, 1)
                return Outcome(req.index, req.kind, ok, "" if ok else "no chunk before the abort", status=200,
                               seconds=seconds, extra={"chunks": chunks})
            ok = finish in ("length", "stop")
            return Outcome(req.index, req.kind, ok, "" if ok else f"stream ended without finish ({finish})",
                           text=text, status=200, seconds=seconds)
        status, payload = _post(url, req.body)
        seconds = time.perf_counter() - start
        if status != 200:
            return Outcome(req.index, req.kind, False, f"status {status}: {str(payload)[:200]}", status=status)
        return _check_full_answer(req, payload, seconds)
    except Exception as e:  # a transport error is a failed request, never a crashed load test
        return Outcome(req.index, req.kind, False, f"{type(e).__name__}: {e}", seconds=time.perf_counter() - start)


def _check_full_answer(req: Request, payload: dict, seconds: float) -> Outcome:
    """Every choice finished, with as many tokens as ``max_tokens`` when it finished by length."""
    choices, usage = payload["choices"], payload["usage"]
    want_n = req.body.get("n", 1)
    problems = []
    if len(choices) != want_n:
        problems.append(f"{len(choices)} choices, asked {want_n}")
    if any(c["finish_reason"] not in ("length", "stop") for c in choices):
        problems.append(f"finish reasons {[c['finish_reason'] for c in choices]}")
    tokens = usage["completion_tokens"]
    if want_n == 1 and choices and choices[0]["finish_reason"] == "length" and tokens != req.body["max_tokens"]:
        problems.append(f"finished by length with {tokens} of {req.body['max_tokens']} tokens")
    if req.kind == "logprobs" and not (choices and choices[0].get("logprobs")):
        problems.append("no logprobs")
    text = choices[0]["message"]["content"] if req.chat else choices[0]["text"]
    return Outcome(req.index, req.kind, not problems, "; ".join(problems), text=text, status=200, seconds=seconds,
                   completion_tokens=tokens)


def run_load(base_url: str, requests: list[Request], concurrency: int) -> tuple[list[Outcome], float]:
    from tqdm import tqdm

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(run_request, base_url, r) for r in requests]
        outcomes = [f.result() for f in tqdm(futures, desc="requests", file=sys.stderr, mininterval=5)]
    return outcomes, time.perf_counter() - start


def reference_answers(base_url: str, requests: list[Request], concurrency: int) -> dict[int, str | None]:
    """The server without speculation answers the greedy requests (streams read in full, never aborted)."""
    greedy = [r for r in requests if r.kind in GREEDY_KINDS]
    outcomes, _ = run_load(base_url, greedy, concurrency)
    return {o.index: o.text for o in outcomes}


def aborted_in_log(log: str) -> int:
    """Requests vLLM aborted (``--enable-log-requests`` logs them; aborts do not reach /metrics in 0.32)."""
    ids = [rid for line in log.splitlines() if "Aborted request(s) " in line
           for rid in line.split("Aborted request(s) ", 1)[1].rstrip(".").split(",")]
    return len(ids)


def summarize(outcomes: list[Outcome], reference: dict[int, str | None], seconds: float, metrics: str,
              healthy_after: bool, aborted: int) -> dict:
    mismatches = [o.index for o in outcomes if o.kind in GREEDY_KINDS and o.ok and o.text != reference.get(o.index)]
    per_kind = {}
    for kind in (*GOOD_KINDS, *BAD_KINDS):
        rows = [o for o in outcomes if o.kind == kind]
        if not rows:
            continue
        lat = sorted(o.seconds for o in rows)
        per_kind[kind] = {
            "requests": len(rows), "passed": sum(o.ok for o in rows),
            "identical_to_plain": (sum(o.index not in mismatches for o in rows if o.ok)
                                   if kind in GREEDY_KINDS else None),
            "p50_s": round(statistics.median(lat), 3), "p95_s": round(lat[math.ceil(0.95 * len(lat)) - 1], 3),
        }
    try:
        drafts = counter(metrics, "vllm:spec_decode_num_drafts_total")
        accepted = counter(metrics, "vllm:spec_decode_num_accepted_tokens_total")
    except KeyError:
        drafts = accepted = 0.0
    failures = [asdict(o) for o in outcomes if not o.ok]
    passed = not failures and not mismatches and healthy_after and drafts > 0
    return {
        "passed": passed, "requests": len(outcomes), "seconds": round(seconds, 1),
        "requests_per_s": round(len(outcomes) / seconds, 2),
        "output_tokens_per_s": round(sum(o.completion_tokens for o in outcomes) / seconds, 1),
        "healthy_after": healthy_after, "greedy_mismatches": mismatches, "aborted_in_engine": aborted,
        "spec_decode": {"drafts": drafts, "accepted_tokens": accepted,
                        "mean_acceptance_length": round(1 + accepted / drafts, 3) if drafts else None},
        "per_kind": per_kind, "failures": failures[:50],
    }


def markdown(result: dict) -> str:
    s, meta = result["summary"], result["meta"]
    lines = [
        f"# vllm serve + FIRP under load: {'PASS' if s['passed'] else 'FAIL'}",
        "",
        f"{s['requests']} requests at concurrency {meta['concurrency']} on {meta['model_name']} "
        f"(dtype {meta['dtype']}), {s['seconds']} s: {s['requests_per_s']} requests/s, "
        f"{s['output_tokens_per_s']} output tokens/s; mean acceptance length "
        f"{s['spec_decode']['mean_acceptance_length']} ({int(s['spec_decode']['accepted_tokens'])} accepted / "
        f"{int(s['spec_decode']['drafts'])} drafts); requests the engine recorded as aborted: "
        f"{int(s['aborted_in_engine'])}; server healthy after: {s['healthy_after']}; greedy answers "
        f"different from the server without speculation: {len(s['greedy_mismatches'])}.",
        "",
        f"Commit {meta['commit']}, {meta['date']}; CPU {meta['cpu']} ({meta['cpu_capability']}), "
        f"{meta['cpu_count']} cores, load {meta['loadavg']}. Command: `{meta['command']}`",
        "",
        "| kind | requests | passed | identical to plain | p50 s | p95 s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, row in s["per_kind"].items():
        same = "-" if row["identical_to_plain"] is None else row["identical_to_plain"]
        lines.append(f"| {kind} | {row['requests']} | {row['passed']} | {same} | {row['p50_s']} | {row['p95_s']} |")
    return "\n".join(lines) + "\n"


def _models(args: argparse.Namespace) -> tuple[str, str, list[str]]:
    """(model dir, heads dir, extra serve args) via vllm_firp.resolve; the reference models get a chat template."""
    from vllm_firp.resolve import resolve

    models = resolve(args.model, {"firp": args.heads}, default_size=None)
    extra = []
    if models.reference_size:
        import tempfile

        from vllm_firp.resolve import PLAIN_CHAT_TEMPLATE

        template = Path(tempfile.mkdtemp()) / "chat.jinja"
        template.write_text(PLAIN_CHAT_TEMPLATE)
        extra = ["--chat-template", str(template)]
    return str(models.model), str(models.heads_dir()), extra


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load_test", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output directory (results.json, results.md)")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="registry model name (default), a reference size (micro, small) or a model directory")
    p.add_argument("--heads", help="FIRP heads directory (default: the shipped / reference heads)")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--dtype", default="auto", help="model dtype (auto: as vllm_firp.core.precision resolves it)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    from benchmarks.measure import machine_info
    from vllm_firp.core.precision import dtype_name, model_dtype

    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model, heads, extra = _models(args)
    dtype = dtype_name(model_dtype(model, args.dtype))
    vocab_size = json.loads((Path(model) / "config.json").read_text())["vocab_size"]
    requests = build_requests(args.requests, model, args.max_model_len, vocab_size, args.seed)
    common = ["--enforce-eager", "--dtype", dtype, "--max-model-len", str(args.max_model_len),
              "--max-num-seqs", str(args.max_num_seqs), "--disable-uvicorn-access-log", *extra]
    print(f"[load] reference answers from a server without speculation ({model})", file=sys.stderr)
    with Server(serve_cmd(model, free_port(), *common), args.out / "plain.log") as plain:
        reference = reference_answers(plain.url, requests, args.concurrency)
    print(f"[load] {len(requests)} requests at concurrency {args.concurrency} on the FIRP server", file=sys.stderr)
    spec = json.dumps({"method": "firp", "model": heads})
    firp_cmd = serve_cmd(model, free_port(), *common, "--enable-log-requests", "--speculative-config", spec)
    with Server(firp_cmd, args.out / "firp.log") as srv:
        outcomes, seconds = run_load(srv.url, requests, args.concurrency)
        healthy = srv.healthy()
        metrics = srv.metrics()
    aborted = aborted_in_log((args.out / "firp.log").read_text(errors="replace"))
    meta = {**machine_info(), "model": model, "model_name": Path(model).name, "heads": heads, "dtype": dtype,
            "concurrency": args.concurrency, "command": "python -m benchmarks.load_test " + " ".join(argv or sys.argv[1:])}
    result = {"meta": meta, "summary": summarize(outcomes, reference, seconds, metrics, healthy, aborted)}
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if result["summary"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
