"""One vLLM engine configuration in its own process, for tests/test_vllm_parallel.py.

    python -m tests.vllm_parallel_run --tp 2 --backend ray --spec firp --model M --heads H --prompts P.json

Prints one JSON line (``RESULT {...}``): the greedy token ids of every prompt and the spec-decode counters.
A process per configuration: vLLM's CPU thread binding (VLLM_CPU_OMP_THREADS_BIND) is read at start-up, and
its TP workers (multiprocessing or Ray actors) must be spawned from a clean main module.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def _configure_cpu_threads(tp: int) -> None:
    """One core per TP rank on these 2-core machines; the engine process gets no reserved core."""
    if tp > 1:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "|".join(str(rank) for rank in range(tp)))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--backend", choices=["default", "mp", "ray"], default="default")
    p.add_argument("--spec", choices=["none", "firp"], default="none")
    p.add_argument("--model", required=True)
    p.add_argument("--heads", required=True)
    p.add_argument("--prompts", required=True, help="JSON list of prompt strings")
    p.add_argument("--max-tokens", type=int, default=48)
    args = p.parse_args()
    _configure_cpu_threads(args.tp)

    from vllm import LLM, SamplingParams

    if args.backend == "ray":  # our own local Ray, stopped at the end
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    kw: dict = dict(model=args.model, tensor_parallel_size=args.tp, enforce_eager=True, dtype="float32",
                    max_model_len=512, disable_log_stats=False, seed=0)
    if args.backend != "default":
        kw["distributed_executor_backend"] = args.backend
    if args.spec == "firp":
        kw["speculative_config"] = {"method": "firp", "model": args.heads}
    with open(args.prompts) as f:
        prompts = json.load(f)
    start = time.perf_counter()
    llm = LLM(**kw)
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=args.max_tokens), use_tqdm=False)
    counters = {m.name: m.value for m in llm.get_metrics() if m.name.startswith("vllm:spec_decode_num_")
                and hasattr(m, "value")}
    result = {"tp": args.tp, "backend": args.backend, "spec": args.spec,
              "seconds": round(time.perf_counter() - start, 1),
              "tokens": [list(o.outputs[0].token_ids) for o in outs], "counters": counters}
    print("RESULT " + json.dumps(result), flush=True)
    llm.llm_engine.engine_core.shutdown()
    if args.backend == "ray":
        import ray

        ray.shutdown()


if __name__ == "__main__":
    main()
