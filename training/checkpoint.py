"""Trainer checkpoints: heads (safetensors) + optimizer/scheduler/RNG state, written atomically.

Layout: ``<checkpoint-dir>/step-0000100/{heads/config.json, heads/model.safetensors, trainer_state.pt}``.
``trainer_state.pt`` is a ``torch.save`` of plain tensors/numbers, read back with ``weights_only=True``.
The final heads directory written by the trainer never contains anything but the heads.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from vllm_firp.core import FirpCheckpointError
from vllm_firp.core.checkpoint import load_checked_weights

STATE = "trainer_state.pt"
PREFIX = "step-"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_heads_atomic(heads: torch.nn.Module, directory: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``directory`` via a temp sibling + rename."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    if directory.exists():
        extra = sorted(p.name for p in directory.iterdir() if p.name not in ("config.json", "model.safetensors"))
        if extra:
            raise FileExistsError(f"{directory} exists and holds {extra}: the heads directory must contain only "
                                  "config.json and model.safetensors; pick another --out")
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        heads.save_pretrained(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        os.rename(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def save_checkpoint(root: Path, step: int, heads: torch.nn.Module, state: dict[str, Any], keep: int) -> Path:
    """Checkpoint after ``step`` optimizer steps; keeps the newest ``keep`` (0 = all)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        heads.save_pretrained(tmp / "heads")
        torch.save({**state, "step": step, "rng": rng_state()}, tmp / STATE)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if keep > 0:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX) :]))


def resolve_checkpoint(spec: str, root: Path) -> Path:
    """``latest`` = newest checkpoint under ``root``; anything else is a checkpoint directory."""
    if spec == "latest":
        found = list_checkpoints(root)
        if not found:
            raise FileNotFoundError(f"--resume: no checkpoint in {root}")
        return found[-1]
    path = Path(spec)
    if not (path / STATE).is_file():
        raise FileNotFoundError(f"--resume: {path} is not a trainer checkpoint (no {STATE})")
    return path


def load_checkpoint(path: Path, heads: torch.nn.Module) -> dict[str, Any]:
    """Load heads weights (refusing a different heads config) and return the trainer state."""
    saved = _config_dict(path / "heads")
    current = heads.config.to_dict()
    diff = sorted(k for k in current if k not in ("training", "dtype", "base_model") and saved.get(k) != current[k])
    if diff:
        raise FirpCheckpointError(f"checkpoint {path} was trained with different heads settings: {', '.join(diff)}")
    heads.load_state_dict(load_checked_weights(path / "heads", heads))  # refuses NaN/Inf, shapes, pickles
    state = torch.load(path / STATE, weights_only=True)
    set_rng_state(state["rng"])
    return state


def _config_dict(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "config.json").read_text())
