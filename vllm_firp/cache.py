"""The project cache (``$VLLM_FIRP_CACHE``, default ``~/.cache/vllm-firp``): where built models and heads live,
and the two rules every builder follows: one builder per entry at a time, and no half-built entry visible."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def default_cache_dir() -> Path:
    return Path(os.environ.get("VLLM_FIRP_CACHE", Path.home() / ".cache" / "vllm-firp"))


@contextlib.contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    """Serialise builds of one cache entry across processes (a second caller waits, then reuses it)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def atomic_build(final: Path, build: Callable[[Path], None]) -> Path:
    """``build(out)`` into a temp sibling of ``final``, then rename it into place, so no half-built directory
    is ever visible (a killed build leaves only the temp dir). If another process got there first, keep theirs."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp / "out")
        try:
            os.rename(tmp / "out", final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_built(final: Path, is_complete: Callable[[Path], bool], build: Callable[[Path], None]) -> Path:
    """The cache entry ``final``, built by ``build(out)`` (under a lock, atomically) unless already complete."""
    final = Path(final)
    if is_complete(final):
        return final
    with file_lock(final.parent / f".{final.name}.lock"):
        if is_complete(final):
            return final
        if final.exists():  # never half-written by us (builds are renamed into place): refuse to guess
            raise FileExistsError(f"{final} exists but is incomplete; delete it and retry")
        for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        return atomic_build(final, build)
