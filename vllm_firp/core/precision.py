"""The one place that decides which dtype FIRP computes in.

Half precision is fast only where the hardware computes it natively: on an x86 CPU without
AVX512-BF16 or AMX (an AVX2-only EPYC, say), PyTorch emulates bf16 and a matmul runs ~28x slower than
in fp32. So "auto" means: bf16 on a GPU and on CPUs with native bf16, fp32 everywhere else; a saved
bf16/fp16 checkpoint is upcast to fp32 on hardware that cannot compute it natively. An explicit
dtype (a ``--dtype`` flag) wins, then the ``VLLM_FIRP_DTYPE`` environment variable, then "auto".
"""

from __future__ import annotations

import dataclasses
import os
from functools import lru_cache

import torch

ENV_VAR = "VLLM_FIRP_DTYPE"
AUTO = "auto"
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
# What a `--dtype` flag accepts (aliases stay accepted by parse_dtype for the older training flags).
DTYPE_CHOICES = (AUTO, *DTYPES, *ALIASES)


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    """What decides CPU precision; tests build these by hand to cover hardware they do not have."""

    model: str  # /proc/cpuinfo "model name"
    capability: str  # torch.backends.cpu.get_cpu_capability(): "AVX2", "AVX512", "DEFAULT", ...
    avx512_bf16: bool
    amx_bf16: bool  # AMX tiles compute bf16
    amx_fp16: bool

    def native(self) -> frozenset[torch.dtype]:
        """Dtypes this CPU computes natively (fp32 always)."""
        out = {torch.float32}
        if self.avx512_bf16 or self.amx_bf16:
            out.add(torch.bfloat16)
        if self.amx_fp16:
            out.add(torch.float16)
        return frozenset(out)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "native_bf16": torch.bfloat16 in self.native()}


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU, as PyTorch sees it."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cpu = torch.cpu
    return CpuInfo(
        model=model,
        capability=torch.backends.cpu.get_cpu_capability(),
        avx512_bf16=bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()),
        amx_bf16=bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()),
        amx_fp16=bool(getattr(cpu, "_is_amx_fp16_supported", lambda: False)()),
    )


def parse_dtype(name: str | torch.dtype) -> torch.dtype | None:
    """A dtype from its name or alias; None for "auto". Unknown names raise ValueError."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise ValueError(f"unsupported dtype {name}; use one of {sorted(DTYPES)}")
        return name
    key = str(name).strip().lower().removeprefix("torch.")
    if key == AUTO:
        return None
    key = ALIASES.get(key, key)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {list(DTYPE_CHOICES)}")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _native(device: str, cpu: CpuInfo | None) -> frozenset[torch.dtype]:
    if torch.device(device).type == "cuda":
        half = {torch.float16} | ({torch.bfloat16} if torch.cuda.is_bf16_supported() else set())
        return frozenset({torch.float32, *half})
    return (cpu or cpu_info()).native()


def resolve_dtype(
    requested: str | torch.dtype | None = AUTO,
    *,
    saved: str | torch.dtype | None = None,
    device: str = "cpu",
    cpu: CpuInfo | None = None,
    env: dict[str, str] | None = None,
) -> torch.dtype:
    """The dtype to compute in.

    ``requested``: an explicit dtype wins; "auto" (or None) defers to ``$VLLM_FIRP_DTYPE``, then to the
    hardware. ``saved``: the checkpoint's own dtype, kept where the hardware computes it natively and
    upcast to fp32 where it does not; without one (training from scratch, synthetic weights) "auto" is
    bf16 where native, else fp32.
    """
    explicit = parse_dtype(requested) if requested is not None else None
    if explicit is not None:
        return explicit
    from_env = (os.environ if env is None else env).get(ENV_VAR, "").strip()
    if from_env:
        try:
            explicit = parse_dtype(from_env)
        except ValueError as exc:
            raise ValueError(f"${ENV_VAR}: {exc}") from None
        if explicit is not None:
            return explicit
    native = _native(device, cpu)
    if saved is not None:
        want = parse_dtype(saved) or torch.float32
        return want if want in native else torch.float32
    return torch.bfloat16 if torch.bfloat16 in native else torch.float32


def checkpoint_dtype(model_dir: str | os.PathLike) -> torch.dtype | None:
    """The dtype a HF checkpoint was saved in (config ``dtype`` / ``torch_dtype``), None if it does not say."""
    import json
    from pathlib import Path

    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        try:  # a hub id: transformers knows where its config is cached
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(str(model_dir)).to_dict()
        except (OSError, ValueError):
            return None
    config = config.get("text_config") or config
    name = config.get("dtype") or config.get("torch_dtype")
    try:
        return parse_dtype(name) if name else None
    except ValueError:
        return None


def model_dtype(model_dir: str | os.PathLike, requested: str | torch.dtype | None = AUTO, device: str = "cpu") -> torch.dtype:
    """The dtype to load and run a saved model in (see :func:`resolve_dtype`)."""
    return resolve_dtype(requested, saved=checkpoint_dtype(model_dir), device=device)


def precision_report(dtype: torch.dtype | str) -> dict:
    """What a benchmark records about the CPU and precision it ran with."""
    name = dtype if isinstance(dtype, str) else dtype_name(dtype)
    return {"cpu": cpu_info().to_dict(), "threads": torch.get_num_threads(), "dtype": name}
