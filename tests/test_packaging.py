"""The wheel holds only this project's own top-level names, and what it holds works without the repository.

`pip wheel .` must not put `training` or `benchmarks` into site-packages (any other project with those names
collides); the trainer ships as `vllm_firp_training` and runs as `firp train`; the product never imports the
repository-only packages (`benchmarks`, `tests`, or the trainer under its folder name `training`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OWN_TOP_LEVEL = {"vllm_firp", "vllm_firp_training"}
REPO_ONLY = {"benchmarks", "tests", "training"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(out)],
        check=True, capture_output=True, text=True,
    )
    (path,) = out.glob("vllm_firp-*.whl")
    return path


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_wheel_top_level_names_are_the_projects_own(wheel: Path) -> None:
    top = {name.split("/")[0] for name in _names(wheel) if ".dist-info/" not in name}
    assert top == OWN_TOP_LEVEL, f"unexpected top-level names in {wheel.name}: {sorted(top - OWN_TOP_LEVEL)}"


def test_wheel_holds_every_product_and_trainer_module_and_the_shipped_heads(wheel: Path) -> None:
    names = set(_names(wheel))
    expected = {str(p.relative_to(ROOT)) for p in (ROOT / "vllm_firp").rglob("*.py")}
    expected |= {"vllm_firp_training/" + str(p.relative_to(ROOT / "training")) for p in (ROOT / "training").glob("*.py")}
    expected |= {str(p.relative_to(ROOT)) for p in (ROOT / "vllm_firp" / "heads").rglob("*") if p.is_file()}
    assert not expected - names, f"missing from the wheel: {sorted(expected - names)}"


def test_wheel_code_never_imports_repository_only_packages(wheel: Path) -> None:
    offenders = []
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if not name.endswith(".py"):
                continue
            for node in ast.walk(ast.parse(zf.read(name), filename=name)):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                offenders += [f"{name}:{node.lineno} imports {m}" for m in modules if m.split(".")[0] in REPO_ONLY]
    assert not offenders, "\n".join(offenders)


def test_installed_wheel_imports_and_runs_the_trainer_cli(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    code = (
        "import importlib, pathlib, pkgutil, sys\n"
        "import vllm_firp, vllm_firp_training\n"
        "from importlib.util import find_spec\n"
        "IS_034 = find_spec('vllm.v1.worker.gpu.spec_decode.speculator_config') is not None\n"
        "OTHER_VLLM_ADAPTER = () if IS_034 else ('vllm_firp.vllm_plugin.v0_34.',)\n"
        f"site = pathlib.Path({str(target)!r})\n"
        "for pkg in (vllm_firp, vllm_firp_training):\n"
        "    assert pathlib.Path(pkg.__file__).is_relative_to(site), pkg.__file__\n"
        "    for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if mod.name.startswith(OTHER_VLLM_ADAPTER):\n"
        "            continue  # built on another vLLM version's modules (imported where that vLLM runs)\n"
        "        importlib.import_module(mod.name)\n"
        "assert not {'training', 'benchmarks'} & set(sys.modules), 'a repository-only package got imported'\n"
        "from vllm_firp.cli import main\n"
        "sys.exit(main(['train', '--help']))\n"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "usage: firp train" in done.stdout
