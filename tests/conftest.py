"""Test-wide settings and fixtures."""

import pytest
import torch

# Tiny models gain nothing from intra-op threads, and OpenMP spinning on a busy 2-core machine
# makes each small matmul ~40x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def micro_models():
    """The cached micro reference model and heads, for vLLM engines run in-process (skips without them)."""
    from tests.helpers import in_process_reference_models

    return in_process_reference_models()


@pytest.fixture(scope="session")
def micro_code_prompts(micro_models) -> list[str]:
    """12 held-out code prompts of the micro model: what the vLLM peer tests draft on."""
    from tests.devmodels import code_prompts

    return code_prompts(micro_models, 12, prompt_tokens=64, seed=3)
