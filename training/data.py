"""Prompt sources and the on-disk token-sequence store shared by generate_data, train and evaluate.

A data directory holds ``sequences.jsonl`` (one ``{"key", "prompt_len", "ids", "finish"}`` per line:
prompt + response token ids) and ``meta.json`` (the model and generation settings that made it).
Lines are appended as batches finish, so an interrupted run resumes by skipping the keys it has.
Train/eval split is by a hash of each sequence's key, so it is stable and needs no second file.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEQUENCES = "sequences.jsonl"
META = "meta.json"


class DataError(ValueError):
    """Unusable input data; the message names the file and the problem."""


@dataclass(frozen=True)
class Prompt:
    key: str  # stable identity (resume skips keys already generated)
    ids: list[int]


@dataclass(frozen=True)
class TokenSequence:
    key: str
    ids: list[int]  # prompt + response
    prompt_len: int

    def window(self, seq_len: int) -> TokenSequence:
        """The last ``seq_len`` tokens (keeps the response, which is what drafting sees)."""
        if len(self.ids) <= seq_len:
            return self
        cut = len(self.ids) - seq_len
        return TokenSequence(self.key, self.ids[cut:], max(0, self.prompt_len - cut))


def _key(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def split_group(key: str) -> str:
    """The part of a key that decides its split: ``root/variant`` and ``root.suffix`` keys (answers, passage
    prompts and follow-ups of one conversation, ``training.build_dataset``) share their root's side."""
    return key.split("/")[0].split(".")[0]


def is_heldout(key: str, percent: float) -> bool:
    """Deterministic split by key group: about ``percent`` % of sequences are held out for evaluation."""
    return int(hashlib.sha1(split_group(key).encode()).hexdigest()[:8], 16) % 10000 < percent * 100


# ------------------------------------------------------------------------------------- prompts


def read_prompt_records(path: str | Path) -> list[dict[str, Any]]:
    """Records from a prompts file.

    ``.jsonl``: one JSON object per line with ``"prompt"`` (text), ``"messages"`` (chat turns) or
    ``"prompt_ids"`` (token ids). ``.json``: a list of such objects. Anything else: plain text, one
    prompt per non-blank line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DataError(f"prompts file {path} does not exist") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read prompts file {path}: {e}") from e
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                records.append(_parse_json(line, f"{path}:{n}"))
    elif path.suffix == ".json":
        records = _parse_json(text, str(path))
        if not isinstance(records, list):
            raise DataError(f"{path}: a .json prompts file must hold a list of records")
    else:
        records = [{"prompt": line} for line in text.splitlines() if line.strip()]
    if not records:
        raise DataError(f"prompts file {path} holds no prompts")
    for i, rec in enumerate(records):
        if isinstance(rec, str):
            records[i] = rec = {"prompt": rec}
        if not isinstance(rec, dict) or not ({"prompt", "messages", "prompt_ids"} & rec.keys()):
            raise DataError(f"{path}: record {i + 1} has none of 'prompt', 'messages', 'prompt_ids'")
    return records


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e})") from e


def encode_prompts(records: Sequence[dict[str, Any]], tokenizer: Any | None, as_chat: bool = False) -> list[Prompt]:
    """Token ids of each record; chat turns go through the tokenizer's chat template.

    For ``messages``, turns after the last user turn are dropped: the model writes its own reply
    (self-distillation). ``as_chat`` wraps plain ``prompt`` text as a single user turn.
    """
    prompts = []
    for i, rec in enumerate(records):
        if "prompt_ids" in rec:
            ids = rec["prompt_ids"]
            if not isinstance(ids, list) or not all(isinstance(t, int) and t >= 0 for t in ids):
                raise DataError(f"record {i + 1}: prompt_ids must be a list of token ids")
            prompts.append(Prompt(_key(["ids", ids]), list(ids)))
            continue
        if tokenizer is None:
            raise DataError("text prompts need a tokenizer, and none was found with the model")
        messages = rec.get("messages")
        if messages is None and as_chat:
            messages = [{"role": "user", "content": rec["prompt"]}]
        if messages is not None:
            ids = _chat_ids(messages, tokenizer, i)
            prompts.append(Prompt(_key(["chat", messages]), ids))
        else:
            ids = tokenizer(rec["prompt"], add_special_tokens=True)["input_ids"]
            prompts.append(Prompt(_key(["text", rec["prompt"]]), list(ids)))
    return prompts


def _chat_ids(messages: Any, tokenizer: Any, i: int) -> list[int]:
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise DataError(f"record {i + 1}: messages must be a list of {{'role', 'content'}} objects")
    users = [j for j, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise DataError(f"record {i + 1}: the conversation has no user turn")
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "the prompts are chat conversations but the tokenizer has no chat template; "
            "give plain {'prompt': text} records instead"
        )
    from vllm_firp.packaged_models import conversation_ids

    return conversation_ids(tokenizer, messages[: users[-1] + 1])


def cut_text_prompts(
    files: Sequence[str | Path],
    tokenizer: Any,
    num_prompts: int,
    prompt_tokens: int,
    seed: int = 0,
    align: str = "tokens",
) -> list[Prompt]:
    """Prompts cut from a text corpus at random non-overlapping places.

    ``align="tokens"``: windows of exactly ``prompt_tokens`` tokens at any offset. ``"lines"``: whole
    lines, from a line start to the end of the line holding the ``prompt_tokens``-th token (windows
    over 1.5x that are dropped), which is how code prompts usually look. Files are tokenized one by
    one (no prompt spans two files); prompts start with the tokenizer's BOS when it adds one.
    """
    if num_prompts < 1 or prompt_tokens < 1:
        raise DataError("num_prompts and prompt_tokens must be >= 1")
    if align not in ("tokens", "lines"):
        raise ValueError(f"align must be 'tokens' or 'lines', not {align!r}")
    prefix = _special_prefix(tokenizer)
    body = prompt_tokens - len(prefix)
    windows: list[tuple[str, int, list[int]]] = []
    for f in files:
        path = Path(f)
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise DataError(f"cannot read text file {path}: {e}") from e
        cut = _line_windows if align == "lines" else _token_windows
        windows.extend((str(path), start, prefix + ids) for start, ids in cut(text, tokenizer, body))
    if not windows:
        raise DataError(f"the text files hold no window of {prompt_tokens} tokens (files: {len(files)})")
    random.Random(seed).shuffle(windows)
    return [Prompt(_key(["textfile", align, name, start, prompt_tokens]), ids) for name, start, ids in
            windows[:num_prompts]]


def _token_windows(text: str, tokenizer: Any, body: int) -> list[tuple[int, list[int]]]:
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return [(start, ids[start : start + body]) for start in range(0, len(ids) - body + 1, body)]


def _line_windows(text: str, tokenizer: Any, body: int) -> list[tuple[int, list[int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    token_starts = [a for a, _ in enc["offset_mapping"]]
    out, c = [], 0
    while True:
        j = bisect.bisect_left(token_starts, c)  # first token of the line starting at char c
        if j + body > len(token_starts):
            return out
        end = text.find("\n", enc["offset_mapping"][j + body - 1][1] - 1)
        if end < 0:
            return out
        piece = text[c : end + 1]
        ids = tokenizer(piece, add_special_tokens=False, verbose=False)["input_ids"]
        if piece.strip() and len(ids) <= 1.5 * body:
            out.append((c, ids))
        c = end + 1


def _special_prefix(tokenizer: Any) -> list[int]:
    """Tokens the tokenizer puts before any text (e.g. BOS), so cut prompts start like real ones."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    return list(full[: len(full) - len(plain)]) if full[len(full) - len(plain) :] == plain else []


# ------------------------------------------------------------------------------------ sequences


class SequenceStore:
    """Append-only ``sequences.jsonl`` + ``meta.json`` in a directory."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.path = self.dir / SEQUENCES

    def open(self, meta: dict[str, Any], overwrite: bool = False) -> set[str]:
        """Create or reopen the store; returns the keys already done. Refuses other settings' data."""
        self.dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.dir / META
        if overwrite:
            self.path.unlink(missing_ok=True)
        elif meta_path.is_file() and self.path.is_file():
            old = json.loads(meta_path.read_text())
            diff = sorted(k for k in meta if k in old and old[k] != meta[k])
            if diff:
                raise DataError(
                    f"{self.dir} holds sequences made with other settings ({', '.join(diff)} differ); "
                    "use another --out or pass --overwrite"
                )
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        if not self.path.is_file():
            return set()
        self._drop_torn_tail()
        return {s.key for s in self.read()}

    def _drop_torn_tail(self) -> None:
        """Cut a last line left unfinished by a killed run, so appends start on a fresh line."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)

    def append(self, sequences: Iterable[tuple[TokenSequence, str]]) -> None:
        with open(self.path, "a") as fh:
            for seq, finish in sequences:
                rec = {"key": seq.key, "prompt_len": seq.prompt_len, "ids": seq.ids, "finish": finish}
                fh.write(json.dumps(rec, separators=(",", ":")) + "\n")

    def read(self) -> list[TokenSequence]:
        """All complete records; a torn last line (killed mid-write) is ignored."""
        out = []
        lines = self.path.read_text().splitlines()
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                out.append(TokenSequence(rec["key"], [int(t) for t in rec["ids"]], int(rec["prompt_len"])))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                if n == len(lines):
                    break
                raise DataError(f"{self.path}:{n}: not a sequence record ({e})") from e
        return out


def check_model_path(model: str) -> None:
    """A clear error for a local model path that does not exist (instead of a hub-id validation error)."""
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1  # hub ids are "org/name"
    if looks_local and not Path(model).expanduser().is_dir():
        raise DataError(f"model directory {model} does not exist (give a local HF model directory or a hub id)")


def load_base_model(model: str, dtype: Any = "auto", **kw: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained`` after :func:`check_model_path`; ``dtype`` "auto" keeps the
    checkpoint's dtype where this CPU computes it natively, else fp32 (``vllm_firp.core.precision``)."""
    from transformers import AutoModelForCausalLM

    from vllm_firp.core.precision import model_dtype

    check_model_path(model)
    return AutoModelForCausalLM.from_pretrained(model, dtype=model_dtype(model, dtype), **kw)


def load_frozen_model(model: str, dtype: Any = "auto", device: Any = "cpu") -> Any:
    """The base model as teacher / target of drafter training and evaluation: sdpa attention, eval mode, no
    gradients, on ``device``."""
    return load_base_model(model, dtype, attn_implementation="sdpa").to(device).eval().requires_grad_(False)


def load_sequences(
    path: str | Path, split: str = "train", holdout_percent: float = 0.0, min_len: int = 2
) -> list[TokenSequence]:
    """Sequences of a data dir (or its ``sequences.jsonl``) for ``split`` in train|eval|all."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {path} does not exist: run `python -m vllm_firp_training.generate_data` first")
    directory = path if path.is_dir() else path.parent
    store = SequenceStore(directory)
    if path.is_file():
        store.path = path
    if not store.path.is_file():
        raise DataError(f"no {SEQUENCES} in {directory}: run `python -m vllm_firp_training.generate_data` first")
    seqs = [s for s in store.read() if len(s.ids) >= min_len]
    if split not in ("train", "eval", "all"):
        raise ValueError(f"split must be train, eval or all, not {split!r}")
    if split != "all":
        seqs = [s for s in seqs if is_heldout(s.key, holdout_percent) == (split == "eval")]
    if not seqs:
        raise DataError(
            f"{store.path} has no usable sequences for split {split!r} "
            f"(need >= {min_len} tokens; holdout {holdout_percent}%)"
        )
    return seqs
