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
