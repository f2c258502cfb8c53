"""FIRP, Medusa or EAGLE-3 heads for the project's reference model, trained once and cached.

Pipeline: ``training.reference_model`` (the model) -> prompts cut from the stdlib *training* split ->
the model's own greedy responses (``training.generate_data``, cached in ``heads/data/`` and shared by
every method and ablation with the same data settings) -> ``training.train``. Heads live in
``$VLLM_FIRP_CACHE/heads/<size>-<method>-<hash>`` (default cache ``~/.cache/vllm-firp``); the hash
covers the recipe, the method, the model's own cache key and this file's CODE_VERSION, so a change to
any of them builds new heads. Builds go through a temp directory and an atomic rename.

    python -m vllm_firp_training.reference_heads --size micro --method firp
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vllm_firp.cache import ensure_built
from vllm_firp.core.precision import dtype_name

from .reference_model import default_cache_dir, file_lock, run_dtype

CODE_VERSION = "1"
# Per method, the versions in its cache key (EAGLE-3's own code version came first, so it keeps its key).
METHOD_KEYS: dict[str, dict[str, str]] = {
    "firp": {"code_version": CODE_VERSION},
    "medusa": {"code_version": CODE_VERSION},
    "eagle3": {"code_version": "1", "heads_code_version": CODE_VERSION},
}


@dataclasses.dataclass(frozen=True)
class HeadsRecipe:
    """Data + training settings of reference heads (every field is part of the cache key)."""

    num_prompts: int
    prompt_tokens: int
    max_new_tokens: int
    steps: int
    grad_accum: int
    lr: float
    warmup: int
    seq_len: int
    anchors_per_seq: int = 0  # 0 = every response position
    num_future_tokens: int = 3
    inject_layer: int | tuple[int, ...] | None = None  # None = FirpConfig.for_model's default
    source: str = "previous"
    residual: bool = False
    bias: bool = True
    pseudo_attend_each_other: bool = True
    loss_weights: tuple[float, ...] | None = None  # None = all 1
    gen_batch_size: int = 64
    prompt_cut: str = "mixed"  # "lines", "tokens" or "mixed" (half each): see training.data.cut_text_prompts
    backend: str = "hf"  # vLLM's start-up alone would exceed the micro budget on CPU
    holdout_percent: float = 5.0
    seed: int = 0


# Fields that determine the data (the rest only change training); see ensure_reference_data.
DATA_FIELDS = ("num_prompts", "prompt_tokens", "max_new_tokens", "prompt_cut", "backend", "gen_batch_size", "seed")
DATA_DONE = "complete.json"

RECIPES: dict[str, HeadsRecipe] = {
    # <= ~4 minutes on 2 CPU cores, model build excluded.
    "micro": HeadsRecipe(num_prompts=256, prompt_tokens=64, max_new_tokens=96, steps=150, grad_accum=4,
                         lr=3e-3, warmup=15, seq_len=160),
    # ~15 minutes per method on 1 CPU core (teacher forward of 8 layers dominates), data ~3 minutes.
    # Parallel source: it beat the serial one in the micro ablation (tree tau 2.55 vs 2.31).
    "small": HeadsRecipe(num_prompts=512, prompt_tokens=128, max_new_tokens=160, steps=240, grad_accum=4,
                         lr=2e-3, warmup=20, seq_len=288, anchors_per_seq=96, source="anchor"),
}


def _cache_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def _recipe(size: str, overrides: dict[str, Any]) -> HeadsRecipe:
    if size not in RECIPES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(RECIPES)}")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(HeadsRecipe)})
    if unknown:
        raise TypeError(f"unknown recipe override(s) {unknown}; fields: {[f.name for f in dataclasses.fields(HeadsRecipe)]}")
    return dataclasses.replace(RECIPES[size], **overrides)


def reference_heads_dir(size: str = "micro", method: str = "firp", cache_dir: str | Path | None = None,
                        **overrides: Any) -> Path:
    """Where the heads for (size, method, recipe) live in the cache; builds nothing."""
    from .reference_model import reference_model_dir

    if method not in METHOD_KEYS:
        raise ValueError(f"method must be one of {sorted(METHOD_KEYS)}, not {method!r}")
    recipe = _recipe(size, overrides)
    key = {"recipe": dataclasses.asdict(recipe), "method": method, **METHOD_KEYS[method],
           "model": reference_model_dir(size, _cache_root(cache_dir)).name, "model_dtype": dtype_name(run_dtype(size))}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return _cache_root(cache_dir) / "heads" / f"{size}-{method}-{digest}"


def reference_eagle3_dir(size: str = "micro", cache_dir: str | Path | None = None, **overrides: Any) -> Path:
    """Cache entry of the reference model's EAGLE-3 draft for a :class:`HeadsRecipe` (builds nothing)."""
    return reference_heads_dir(size, "eagle3", cache_dir, **overrides)


def _complete(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def ensure_reference_heads(size: str = "micro", method: str = "firp", cache_dir: str | Path | None = None, *,
                           progress: bool = True, **overrides: Any) -> Path:
    """The cached heads directory for the reference model of ``size``, trained on first use.

    ``overrides`` replace fields of the size's :class:`HeadsRecipe` (and so change the cache key).
    """
    recipe = _recipe(size, overrides)

    def build(out: Path) -> None:  # out.parent is the build's private temp dir: ckpt/ scratch goes there too
        build_heads(out.parent, size, method, recipe, cache_dir, progress=progress)
        os.rename(out.parent / "heads", out)

    return ensure_built(reference_heads_dir(size, method, cache_dir, **overrides), _complete, build)


def ensure_reference_eagle3(size: str = "micro", cache_dir: str | Path | None = None, *, progress: bool = True,
                            **overrides: Any) -> Path:
    """The reference model's EAGLE-3 draft, trained on first use with the FIRP/Medusa recipe and data."""
    return ensure_reference_heads(size, "eagle3", cache_dir, progress=progress, **overrides)


def build_heads(work: Path, size: str, method: str, recipe: HeadsRecipe, cache_dir: str | Path | None = None,
                *, progress: bool = True) -> dict[str, Any]:
    """Train into ``work/heads`` (``work/ckpt`` is scratch) on the cached self-distillation data."""
    from . import train
    from .reference_model import ensure_reference_model

    model_dir = ensure_reference_model(size, Path(cache_dir) if cache_dir else None, progress=progress)
    t0 = time.perf_counter()
    data = ensure_reference_data(size, recipe, cache_dir, progress=progress)
    t_data = time.perf_counter() - t0
    argv = ["--model", str(model_dir), "--data", str(data), "--out", str(work / "heads"),
            "--checkpoint-dir", str(work / "ckpt"), "--method", method,
            "--num-future-tokens", str(recipe.num_future_tokens), "--source", recipe.source,
            "--steps", str(recipe.steps), "--grad-accum", str(recipe.grad_accum), "--lr", str(recipe.lr),
            "--warmup", str(recipe.warmup), "--seq-len", str(recipe.seq_len),
            "--anchors-per-seq", str(recipe.anchors_per_seq), "--holdout-percent", str(recipe.holdout_percent),
            "--seed", str(recipe.seed), "--keep-checkpoints", "1"]
    if recipe.inject_layer is not None:
        layers = recipe.inject_layer if isinstance(recipe.inject_layer, (tuple, list)) else [recipe.inject_layer]
        argv += ["--inject-layer", ",".join(str(t) for t in layers)]
    if recipe.loss_weights is not None:
        argv += ["--loss-weights", ",".join(str(w) for w in recipe.loss_weights)]
    flags = {"--residual": recipe.residual, "--no-bias": not recipe.bias,
             "--no-pseudo-attend-each-other": not recipe.pseudo_attend_each_other, "--quiet": not progress}
    argv += [flag for flag, on in flags.items() if on]
    with _torch_threads(int(os.environ.get("VLLM_FIRP_THREADS", 1))):
        summary = train.train(train.build_parser().parse_args(argv))
    summary.update(data_seconds=round(t_data, 2), total_seconds=round(time.perf_counter() - t0, 2))
    if progress:
        print(f"[reference_heads] {size}/{method}: data {t_data:.0f}s, total {summary['total_seconds']:.0f}s, "
              f"final top-1 {summary['final'].get('top1')}", file=sys.stderr)
    return summary


def reference_data_dir(size: str, recipe: HeadsRecipe, cache_dir: str | Path | None = None) -> Path:
    """Cache entry of the training data: shared by FIRP, Medusa and ablations with the same data fields."""
    from .reference_model import reference_model_dir

    key = {f: getattr(recipe, f) for f in DATA_FIELDS}
    key.update(code_version=CODE_VERSION, model=reference_model_dir(size, _cache_root(cache_dir)).name,
               model_dtype=dtype_name(run_dtype(size)))
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return _cache_root(cache_dir) / "heads" / "data" / f"{size}-{digest}"


def ensure_reference_data(size: str, recipe: HeadsRecipe, cache_dir: str | Path | None = None, *,
                          progress: bool = True) -> Path:
    """Greedy responses of the reference model to prompts cut from the stdlib training split (cached)."""
    from transformers import AutoTokenizer

    from .generate_data import GenerationSettings, generate_data
    from .reference_model import ensure_reference_model, stdlib_files

    out = reference_data_dir(size, recipe, cache_dir)
    if (out / DATA_DONE).is_file():
        return out
    model_dir = ensure_reference_model(size, Path(cache_dir) if cache_dir else None, progress=progress)
    with file_lock(out.parent / f".{out.name}.lock"), _torch_threads(int(os.environ.get("VLLM_FIRP_THREADS", 1))):
        if (out / DATA_DONE).is_file():
            return out
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        files = stdlib_files("train")
        random.Random(recipe.seed).shuffle(files)
        files = files[: max(32, recipe.num_prompts // 4)]  # plenty of windows; tokenizing all would be slow
        settings = GenerationSettings(max_new_tokens=recipe.max_new_tokens, seed=recipe.seed)
        # generate_data appends per batch and resumes, so a killed build continues where it stopped.
        summary = generate_data(str(model_dir), _cut_prompts(files, tokenizer, recipe), out, settings,
                                backend=recipe.backend, batch_size=recipe.gen_batch_size, progress=progress)
        (out / DATA_DONE).write_text(json.dumps(summary, indent=2) + "\n")
    return out


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """One thread by default: on small shared machines, two OpenMP threads per process can run 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def parse_recipe_overrides(text: str) -> dict[str, Any]:
    """``steps=60,lr=3e-3`` -> {"steps": 60, "lr": 0.003} (ints, floats, true/false, else strings)."""
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, _, raw = item.partition("=")
        value: Any = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                pass
        out[key.strip()] = {"true": True, "false": False}.get(raw.lower(), value)
    return out


def _cut_prompts(files: list[Path], tokenizer: Any, recipe: HeadsRecipe) -> list[Any]:
    """Training prompts; "mixed" = half whole-line prompts (like the benchmarks' held-out prompts, which
    end at a line end) and half cut at any token, so the heads see both ways a prompt can end."""
    from .data import cut_text_prompts

    n, cut = recipe.num_prompts, recipe.prompt_cut
    if cut != "mixed":
        return cut_text_prompts(files, tokenizer, n, recipe.prompt_tokens, recipe.seed, cut)
    lines = cut_text_prompts(files, tokenizer, n - n // 2, recipe.prompt_tokens, recipe.seed, "lines")
    return lines + cut_text_prompts(files, tokenizer, n // 2, recipe.prompt_tokens, recipe.seed, "tokens")


def evaluate_reference_heads(size: str = "micro", method: str = "firp", cache_dir: str | Path | None = None, *,
                             num_prompts: int = 32, engine_prompts: int = 8, progress: bool = True,
                             **overrides: Any) -> dict[str, Any]:
    """Evaluate cached reference heads on fresh greedy data from *held-out* stdlib files.

    Writes ``<heads>-eval/{prompts.jsonl, data/, eval.json, eval.png}`` and returns the report.
    """
    from . import evaluate
    from .data import encode_prompts, read_prompt_records
    from .generate_data import GenerationSettings, generate_data, load_tokenizer
    from .reference_model import ensure_reference_model, write_heldout_prompts

    heads = ensure_reference_heads(size, method, cache_dir, progress=progress, **overrides)
    recipe = _recipe(size, overrides)
    model_dir = ensure_reference_model(size, Path(cache_dir) if cache_dir else None, progress=progress)
    out = heads.with_name(heads.name + "-eval")
    with _torch_threads(int(os.environ.get("VLLM_FIRP_THREADS", 1))):
        write_heldout_prompts(out / "prompts.jsonl", num_prompts, recipe.prompt_tokens, model_dir, seed=recipe.seed)
        prompts = encode_prompts(read_prompt_records(out / "prompts.jsonl"), load_tokenizer(str(model_dir)))
        generate_data(str(model_dir), prompts, out / "data", GenerationSettings(max_new_tokens=recipe.max_new_tokens),
                      backend=recipe.backend, batch_size=recipe.gen_batch_size, progress=progress)
        argv = ["--model", str(model_dir), "--heads", str(heads), "--data", str(out / "data"), "--out-dir",
                str(out), "--split", "all", "--seq-len", str(recipe.seq_len), "--engine-prompts", str(engine_prompts)]
        return evaluate.run(evaluate.build_parser().parse_args(argv + ([] if progress else ["--quiet"])))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vllm_firp_training.reference_heads",
                                description="Build (or find) the cached FIRP/Medusa heads of the reference model.")
    p.add_argument("--size", choices=sorted(RECIPES), default="micro", help="reference model size (default micro)")
    p.add_argument("--method", choices=["firp", "medusa"], default="firp", help="heads to train (default firp)")
    p.add_argument("--cache-dir", type=Path, help="cache root (default: $VLLM_FIRP_CACHE or ~/.cache/vllm-firp)")
    p.add_argument("--recipe", type=parse_recipe_overrides, default={}, metavar="K=V,...",
                   help="overrides of the size's HeadsRecipe, e.g. steps=480 (the cache key includes them)")
    p.add_argument("--path", action="store_true", help="print the cache directory without building")
    p.add_argument("--evaluate", action="store_true", help="then evaluate on fresh greedy data from held-out "
                   "stdlib files (training.evaluate, 32 prompts, engine tau on 8); writes <heads>-eval/")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    args = p.parse_args(argv)
    if args.path:
        print(reference_heads_dir(args.size, args.method, args.cache_dir, **args.recipe))
        return 0
    heads = ensure_reference_heads(args.size, args.method, args.cache_dir, progress=not args.quiet, **args.recipe)
    print(heads)
    if args.evaluate:
        report = evaluate_reference_heads(args.size, args.method, args.cache_dir, progress=not args.quiet,
                                          **args.recipe)
        keys = ("top1_vs_greedy", "top5_vs_greedy", "tau_chain", "engine")
        print(json.dumps({k: report.get(k) for k in keys}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
