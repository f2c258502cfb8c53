"""MT-bench prompts for the benchmarks: first turns through the model's chat template, by category.

MT-bench (80 questions, 8 categories x 10) is for evaluation only; nothing here is used for training.
"""

from __future__ import annotations

from typing import Any

from vllm_firp.packaged_models import chat_ids, mt_bench_questions


def pick_questions(per_category: int) -> tuple[list[dict], list[dict]]:
    """The first ``per_category`` questions of each category (in category order), and the rest."""
    if not 1 <= per_category <= 10:
        raise ValueError(f"MT-bench has 10 questions per category; asked for {per_category}")
    chosen: dict[str, list[dict]] = {}
    rest: list[dict] = []
    for q in mt_bench_questions():
        picked = chosen.setdefault(q["category"], [])
        (picked if len(picked) < per_category else rest).append(q)
    return [q for qs in chosen.values() for q in qs], rest


def _need_chat(tokenizer: Any) -> None:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("MT-bench prompts need a chat model: the model directory has no tokenizer with a chat template")


def mt_bench_prompts(tokenizer: Any, per_category: int) -> tuple[list[list[int]], list[str], list[list[int]]]:
    """Token ids of the picked first turns, their categories, and the other questions' first turns
    (never measured: they calibrate draft trees)."""
    _need_chat(tokenizer)
    picked, rest = pick_questions(per_category)
    return ([chat_ids(tokenizer, q["turns"][0]) for q in picked], [q["category"] for q in picked],
            [chat_ids(tokenizer, q["turns"][0]) for q in rest])


def mt_bench_texts(tokenizer: Any) -> list[str]:
    """All 80 first turns as chat-templated prompt text, categories interleaved (any batch mixes them)."""
    _need_chat(tokenizer)
    picked, _ = pick_questions(10)
    by_round = sorted(range(len(picked)), key=lambda i: (i % 10, i // 10))  # q0 of every category, then q1, ...
    return [tokenizer.apply_chat_template([{"role": "user", "content": picked[i]["turns"][0]}],
                                          add_generation_prompt=True, tokenize=False) for i in by_round]
