"""Append-only shard directories and the checksum manifest of a long, resumable data build.

A stage writes its records a chunk at a time as ``shard-NNNNN.jsonl``: each shard is written to a temp file,
flushed and renamed into place, so a crash leaves either a whole shard or none (a leftover temp file is
deleted on the next open). Resuming skips every key already in a shard; nothing is regenerated. The
manifest lists every shard with its record count and sha256, so a later run on another machine can verify
what it inherits (``verify``) or rebuild it from the recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .data import DataError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ShardDir:
    """One stage's records, as whole shards of JSON lines; every record has a unique ``key``."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(".shard-*.tmp-*"):  # a shard a killed run did not finish
            stale.unlink()

    def shards(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.jsonl"))

    def records(self) -> Iterator[dict[str, Any]]:
        for shard in self.shards():
            for n, line in enumerate(shard.read_text(encoding="utf-8").splitlines(), start=1):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{shard}:{n}: corrupt shard ({e}); delete it to regenerate it") from e

    def keys(self) -> set[str]:
        return {r["key"] for r in self.records()}

    def append(self, records: Iterable[dict[str, Any]]) -> Path | None:
        """Write ``records`` as the next shard; returns its path (None when there is nothing to write)."""
        lines = [json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n" for r in records]
        if not lines:
            return None
        existing = self.shards()
        index = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        path = self.dir / f"shard-{index:05d}.jsonl"
        write_atomic(path, "".join(lines))
        return path

    def summary(self) -> list[dict[str, Any]]:
        """Per shard: file name, records and sha256 (what the manifest keeps)."""
        return [{"file": s.name, "records": sum(1 for _ in open(s, encoding="utf-8")), "sha256": sha256_file(s)}
                for s in self.shards()]


def verify(root: Path, manifest: dict[str, Any]) -> list[str]:
    """Problems found when the shards under ``root`` are checked against ``manifest`` (empty: all match)."""
    problems = []
    for stage, entry in manifest.get("stages", {}).items():
        for shard in entry.get("shards", []):
            path = root / stage / shard["file"]
            if not path.is_file():
                problems.append(f"{stage}/{shard['file']}: missing")
            elif sha256_file(path) != shard["sha256"]:
                problems.append(f"{stage}/{shard['file']}: checksum differs")
    return problems
