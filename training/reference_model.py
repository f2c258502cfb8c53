"""A small but real Llama causal LM trained on the Python standard library.

There is no model hub on the project's machines, yet acceptance and speed figures need a model that
actually predicts text. This module trains one from scratch, deterministically, on the source code
of the standard library that ships with the interpreter (a fixed set of files is held out and never
trained on), and caches it under ``$VLLM_FIRP_CACHE/reference/<size>-<hash>``.

The saved directory is a plain Hugging Face checkpoint (``config.json``, ``model.safetensors``,
``generation_config.json``, tokenizer files, ``training_log.json``) that both ``transformers`` and
vLLM load. The tokenizer prepends ``<|endoftext|>`` (bos == eos) to every encoded text, exactly as
training documents were packed.

CLI: ``python -m vllm_firp_training.reference_model {build,prompts,path,files} --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import signal
import sys
import sysconfig
import time
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import torch

from vllm_firp.cache import atomic_build, default_cache_dir, ensure_built, file_lock
from vllm_firp.core.precision import cpu_info, dtype_name, resolve_dtype

__all__ = ["default_cache_dir", "file_lock"]  # re-exported for the heads builder

# Bump when a change here changes the built model (it is part of the cache key).
CODE_VERSION = "1"
EOS_TOKEN = "<|endoftext|>"
# Head sizes the vLLM 0.32 CPU attention backend accepts
# (vllm/v1/attention/backends/cpu_attn.py: CPUAttentionBackend.get_supported_head_sizes).
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# Directories left out of the corpus: tests and third-party code, plus generated tables
# (encodings/ codec maps, pydoc_data/ topic strings) that are not code and would inflate acceptance.
EXCLUDED_DIRS = frozenset(
    {"site-packages", "test", "tests", "idlelib", "lib2to3", "encodings", "pydoc_data", "__pycache__"}
)
HELDOUT_PERCENT = 5  # a file is held out iff sha1(relative path) % 100 < HELDOUT_PERCENT


@dataclasses.dataclass(frozen=True)
class ReferencePreset:
    """Everything that determines a reference model (all of it goes into the cache key)."""

    name: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    seq_len: int  # packed training chunk length
    batch_size: int
    steps: int
    lr: float
    warmup_steps: int
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # Compute dtype of the matmuls ("auto": bf16 autocast where the CPU has native bf16, else fp32; see
    # vllm_firp.core.precision). Master weights stay fp32. The resolved dtype is part of the cache key.
    train_dtype: str = "auto"
    save_dtype: str = "float32"  # "float32" or "bfloat16"
    max_train_files: int | None = None  # None: every training file (tests use a few)
    val_chunks: int = 64  # held-out chunks of seq_len tokens for the final validation loss
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def validate(self) -> None:
        """Refuse shapes that vLLM's CPU backend cannot serve, before spending minutes training."""
        assert self.hidden_size % self.num_heads == 0, "hidden_size must be a multiple of num_heads"
        assert self.head_dim in VLLM_CPU_HEAD_SIZES, f"head_dim {self.head_dim} unsupported by vLLM CPU"
        assert self.seq_len <= self.max_position_embeddings, "seq_len exceeds max_position_embeddings"
        assert self.save_dtype in ("float32", "bfloat16"), f"bad save_dtype {self.save_dtype}"
        assert self.train_dtype in ("auto", "float32", "bfloat16"), f"bad train_dtype {self.train_dtype}"
        assert self.vocab_size > 257, "vocab must hold the 256 byte symbols plus the special token"
        assert 0 <= self.warmup_steps < self.steps


PRESETS: dict[str, ReferencePreset] = {
    # ~3 minutes on 2 idle CPU cores (0.65 CPU-seconds per step); used by the demo, CI and vLLM tests.
    "micro": ReferencePreset(
        name="micro", vocab_size=4096, hidden_size=256, num_layers=4, num_heads=4,
        intermediate_size=688, max_position_embeddings=1024, seq_len=256, batch_size=8,
        steps=450, lr=3e-3, warmup_steps=30,
    ),
    # ~37 minutes on 2 idle CPU cores (7.3 CPU-seconds per step); weights saved in bf16.
    "small": ReferencePreset(
        name="small", vocab_size=8192, hidden_size=512, num_layers=8, num_heads=8,
        intermediate_size=1376, max_position_embeddings=2048, seq_len=512, batch_size=8,
        steps=550, lr=1.5e-3, warmup_steps=40, save_dtype="bfloat16", val_chunks=32,
    ),
}  # fmt: skip


# ----------------------------------------------------------------------------------------- data


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def _relpath(path: Path) -> str:
    return path.relative_to(stdlib_root()).as_posix()


def is_heldout(relpath: str) -> bool:
    """Stable split: depends only on the file's path relative to the stdlib root."""
    return int(hashlib.sha1(relpath.encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT


@lru_cache(maxsize=1)
def _all_files() -> tuple[Path, ...]:
    root = stdlib_root()
    files = (p for p in root.rglob("*.py") if p.is_file())
    kept = [p for p in files if not set(p.relative_to(root).parts[:-1]) & EXCLUDED_DIRS]
    return tuple(sorted(kept, key=lambda p: p.relative_to(root).as_posix()))


def stdlib_files(split: str) -> list[Path]:
    """The corpus files of one split ("train" or "heldout"), sorted by relative path."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    want = split == "heldout"
    return [p for p in _all_files() if is_heldout(_relpath(p)) == want]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


@lru_cache(maxsize=1)
def corpus_digest() -> str:
    """Hash of the corpus (paths + contents), so another interpreter's stdlib gets its own model."""
    h = hashlib.sha1()
    for p in _all_files():
        h.update(_relpath(p).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def train_dtype(preset: ReferencePreset) -> torch.dtype:
    """The dtype the matmuls of this build run in on this machine (it changes the weights)."""
    return resolve_dtype(preset.train_dtype)


def run_dtype(size: str | ReferencePreset) -> torch.dtype:
    """The dtype the saved model computes in on this machine (data generation, heads training, benchmarks)."""
    preset = size if isinstance(size, ReferencePreset) else _preset(size)
    return resolve_dtype(saved=preset.save_dtype)


def _recipe_key(preset: ReferencePreset) -> str:
    recipe = {
        "preset": {**dataclasses.asdict(preset), "train_dtype": dtype_name(train_dtype(preset))},
        "code_version": CODE_VERSION,
        "corpus": corpus_digest(),
        "excluded": sorted(EXCLUDED_DIRS),
        "heldout_percent": HELDOUT_PERCENT,
    }
    return hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------------ tokenizer


def train_tokenizer(files: Sequence[Path], vocab_size: int, out_dir: Path, model_max_length: int = 2048):
    """Byte-level BPE on the given files, saved as a PreTrainedTokenizerFast that adds bos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((_read(p) for p in files), trainer=trainer, length=len(files))
    eos_id = tok.token_to_id(EOS_TOKEN)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOS_TOKEN} $A", pair=f"{EOS_TOKEN} $A {EOS_TOKEN} $B", special_tokens=[(EOS_TOKEN, eos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=model_max_length,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    # transformers 5 writes its internal class name; the public alias also loads with transformers 4.
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    special = {"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return fast


def _token_stream(tokenizer, files: Sequence[Path]) -> torch.Tensor:
    """Packed documents: [eos, doc_1..., eos, doc_2..., ...] (eos doubles as bos)."""
    encoded = tokenizer.backend_tokenizer.encode_batch([_read(p) for p in files], add_special_tokens=True)
    return torch.tensor([t for enc in encoded for t in enc.ids], dtype=torch.long)


# ---------------------------------------------------------------------------------------- model


def _llama_config(preset: ReferencePreset, eos_id: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=preset.vocab_size,
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        num_key_value_heads=preset.num_heads,
        head_dim=preset.head_dim,
        max_position_embeddings=preset.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


def _lr_at(step: int, preset: ReferencePreset) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio."""
    if step < preset.warmup_steps:
        return preset.lr * (step + 1) / preset.warmup_steps
    frac = (step - preset.warmup_steps) / max(1, preset.steps - preset.warmup_steps)
    return preset.lr * (
        preset.min_lr_ratio + (1 - preset.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    )


def _batches(stream: torch.Tensor, preset: ReferencePreset) -> Iterator[torch.Tensor]:
    """Deterministic batches of packed chunks; each epoch has a new offset and chunk order."""
    gen = torch.Generator().manual_seed(preset.seed)
    n = preset.seq_len
    if len(stream) < n * (preset.batch_size + 1):
        raise ValueError(f"training stream of {len(stream)} tokens is too short for seq_len {n}")
    while True:
        offset = int(torch.randint(0, n, (1,), generator=gen))
        chunks = stream[offset:].unfold(0, n, n)
        order = torch.randperm(len(chunks), generator=gen)
        for i in range(0, len(order) - preset.batch_size + 1, preset.batch_size):
            yield chunks[order[i : i + preset.batch_size]]


@torch.no_grad()
def _eval_loss(model, stream: torch.Tensor, seq_len: int, max_chunks: int) -> tuple[float, int]:
    """Mean next-token loss (nats) over up to max_chunks held-out chunks; returns (loss, tokens)."""
    chunks = stream.unfold(0, seq_len, seq_len)[:max_chunks]
    model.eval()
    total, count = 0.0, 0
    for batch in chunks.split(8):
        logits = model(input_ids=batch).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(loss)
        count += batch[:, 1:].numel()
    return total / max(1, count), count


def _unigram_loss(train: torch.Tensor, heldout: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats) of held-out tokens under add-one-smoothed training unigram counts."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1
    logp = (counts / counts.sum()).log()
    return float(-logp[heldout].mean())


def _default_threads() -> int:
    """$VLLM_FIRP_THREADS, else the idle cores (by 1-minute load), clamped to 1..2.

    On a shared box OpenMP threads that contend with other processes spin at barriers and
    run several times slower than a single thread, so do not ask for cores that are busy.
    """
    if os.environ.get("VLLM_FIRP_THREADS"):
        return int(os.environ["VLLM_FIRP_THREADS"])
    cpus = len(os.sched_getaffinity(0))
    idle = cpus - os.getloadavg()[0]
    return max(1, min(2, cpus, round(idle)))


def build_reference_model(
    out_dir: Path, preset: ReferencePreset, *, progress: bool = True, threads: int | None = None
) -> Path:
    """Train tokenizer + model for `preset` and save both into `out_dir` (created; must not exist)."""
    from tqdm import tqdm
    from transformers import LlamaForCausalLM

    preset.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=False)
    torch.set_num_threads(threads or _default_threads())
    torch.manual_seed(preset.seed)
    t0 = time.time()

    train_files = stdlib_files("train")[: preset.max_train_files]
    tokenizer = train_tokenizer(train_files, preset.vocab_size, out_dir, preset.max_position_embeddings)
    train_stream = _token_stream(tokenizer, train_files)
    val_stream = _token_stream(tokenizer, stdlib_files("heldout"))
    t_data = time.time() - t0

    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    config = _llama_config(preset, eos_id)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(
        model.parameters(), lr=preset.lr, betas=(0.9, 0.95), weight_decay=preset.weight_decay
    )
    model.train()
    autocast_bf16 = train_dtype(preset) == torch.bfloat16
    batches = _batches(train_stream, preset)
    bar = tqdm(range(preset.steps), desc=f"train {preset.name}", disable=not progress, file=sys.stderr)
    t_train = time.time()
    loss_val = float("nan")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, preset)
        batch = next(batches)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), preset.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_val = float(loss.detach())
        bar.set_postfix(loss=f"{loss_val:.3f}")
    t_train = time.time() - t_train

    model = model.to(getattr(torch, preset.save_dtype))
    model.config.dtype = preset.save_dtype
    # The saved weights, computed in the dtype this CPU runs them in (a bf16 save is upcast without bf16).
    eval_dtype = resolve_dtype(saved=preset.save_dtype)
    val_loss, val_tokens = _eval_loss(model.to(eval_dtype), val_stream, preset.seq_len, preset.val_chunks)
    model = model.to(getattr(torch, preset.save_dtype))
    model.generation_config.bos_token_id = eos_id
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = eos_id
    model.save_pretrained(str(out_dir))
    if not (out_dir / "model.safetensors").is_file():
        raise RuntimeError(f"save_pretrained wrote no model.safetensors in {out_dir}")

    n_params = sum(p.numel() for p in model.parameters())
    tokens_seen = preset.steps * preset.batch_size * preset.seq_len
    log = {
        "preset": dataclasses.asdict(preset),
        "code_version": CODE_VERSION,
        "corpus_digest": corpus_digest(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "train_dtype": dtype_name(train_dtype(preset)),
        "eval_dtype": dtype_name(eval_dtype),
        "cpu": cpu_info().to_dict(),
        "num_parameters": n_params,
        "train_files": len(train_files),
        "heldout_files": len(stdlib_files("heldout")),
        "train_stream_tokens": len(train_stream),
        "tokens_seen": tokens_seen,
        "epochs": tokens_seen / len(train_stream),
        "final_train_loss": loss_val,
        "val_loss": val_loss,
        "val_tokens": val_tokens,
        "val_unigram_loss": _unigram_loss(train_stream, val_stream, preset.vocab_size),
        "wall_time_s": {"data": t_data, "train": t_train, "total": time.time() - t0},
        "train_tokens_per_s": tokens_seen / max(t_train, 1e-9),
    }
    (out_dir / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    for path in out_dir.iterdir():  # safetensors writes 0600; the cache is meant to be shared
        path.chmod(0o644)
    if progress:
        print(
            f"[{preset.name}] val loss {val_loss:.3f} nats (unigram {log['val_unigram_loss']:.3f}), "
            f"{n_params / 1e6:.1f}M params, {log['wall_time_s']['total']:.0f}s",
            file=sys.stderr,
        )
    return out_dir


# ---------------------------------------------------------------------------------------- cache


def reference_model_dir(size: str | ReferencePreset, cache_dir: Path | None = None) -> Path:
    """Where the model for `size` lives (or will live) in the cache; builds nothing."""
    preset = size if isinstance(size, ReferencePreset) else _preset(size)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "reference" / f"{preset.name}-{_recipe_key(preset)}"


def _preset(size: str) -> ReferencePreset:
    if size not in PRESETS:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(PRESETS)}")
    return PRESETS[size]


def _is_complete(path: Path) -> bool:
    needed = ("config.json", "model.safetensors", "tokenizer.json", "training_log.json")
    return all((path / name).is_file() for name in needed)


def build_atomic(final: Path, preset: ReferencePreset, **kwargs) -> Path:
    """Build into a temp sibling of `final` and rename it into place, so no half model is visible."""
    final = Path(final)
    if final.exists():
        raise FileExistsError(f"{final} already exists")
    return atomic_build(final, lambda out: build_reference_model(out, preset, **kwargs))


def ensure_reference_model(
    size: str | ReferencePreset,
    cache_dir: Path | None = None,
    *,
    progress: bool = True,
    threads: int | None = None,
) -> Path:
    """The cached model dir for `size` ("micro" / "small" or a custom preset), built if absent."""
    preset = size if isinstance(size, ReferencePreset) else _preset(size)
    return ensure_built(reference_model_dir(preset, cache_dir), _is_complete,
                        lambda out: build_reference_model(out, preset, progress=progress, threads=threads))


# -------------------------------------------------------------------------------------- prompts


def write_heldout_prompts(
    path: Path, n: int, prompt_tokens: int, tokenizer_dir: Path, seed: int = 0
) -> list[dict]:
    """Write `n` JSONL prompts ({"prompt", "source", "start_line"}) cut from held-out files.

    Each prompt starts at a non-blank line, holds `prompt_tokens` tokens (a few more where needed to
    end on a clean token boundary; the bos the tokenizer adds is not counted) and is followed by
    more text in its file.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    rng = random.Random(seed)
    docs = [(_relpath(p), _read(p).splitlines(keepends=True)) for p in stdlib_files("heldout")]
    weights = [len(lines) for _, lines in docs]
    prompts: list[dict] = []
    seen: set[tuple[str, int]] = set()
    for _ in range(200 * n):
        if len(prompts) == n:
            break
        rel, lines = rng.choices(docs, weights=weights)[0]
        start = rng.randrange(len(lines))
        if (rel, start) in seen or not lines[start].strip():
            continue
        seen.add((rel, start))
        text = _cut_prompt(tokenizer, lines[start : start + prompt_tokens], prompt_tokens)
        if text is not None:
            prompts.append({"prompt": text, "source": rel, "start_line": start + 1})
    if len(prompts) < n:
        raise RuntimeError(f"only found {len(prompts)} of {n} prompts of ~{prompt_tokens} tokens")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for rec in prompts:
            fh.write(json.dumps(rec) + "\n")
    return prompts


def _cut_prompt(tokenizer, lines: list[str], prompt_tokens: int) -> str | None:
    """The first `prompt_tokens` tokens of `lines`, cut where the prompt tokenizes like the file.

    A prompt ending in a bare newline would end in a token the model rarely saw (newlines merge with
    the next line's indentation), so cut at a token boundary that re-encodes to the same ids.
    """
    text = "".join(lines)
    backend = tokenizer.backend_tokenizer  # no max-length warnings, offsets included
    enc = backend.encode(text, add_special_tokens=False)
    for n in range(prompt_tokens, min(len(enc.ids), prompt_tokens + 8)):
        cut = text[: enc.offsets[n - 1][1]]
        if backend.encode(cut, add_special_tokens=False).ids == enc.ids[:n]:
            return cut
    return None


# ------------------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vllm_firp_training.reference_model",
        description="Train / locate the reference Llama model trained on the Python standard library.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sizes = sorted(PRESETS)

    b = sub.add_parser("build", help="build the model (or reuse the cached one) and print its directory")
    b.add_argument("--size", choices=sizes, default="micro", help="which preset to build (default: micro)")
    b.add_argument("--out", type=Path, help="build into this new directory instead of the cache")
    b.add_argument(
        "--cache-dir", type=Path, help="cache root (default: $VLLM_FIRP_CACHE or ~/.cache/vllm-firp)"
    )
    b.add_argument("--steps", type=int, help="override the preset's training steps (changes the cache key)")
    b.add_argument("--threads", type=int, help="torch CPU threads (default: $VLLM_FIRP_THREADS or 2)")
    b.add_argument("--quiet", action="store_true", help="no progress bar or summary on stderr")

    q = sub.add_parser("prompts", help="write a JSONL of held-out prompts ({'prompt': text, ...})")
    q.add_argument("--out", type=Path, required=True, help="output JSONL file")
    q.add_argument("--n", type=int, default=100, help="number of prompts (default: 100)")
    q.add_argument("--prompt-tokens", type=int, default=128, help="approximate prompt length in tokens")
    q.add_argument("--seed", type=int, default=0, help="random seed for choosing files and lines")
    q.add_argument("--tokenizer-dir", type=Path, help="tokenizer to count tokens with (default: the model's)")
    q.add_argument(
        "--size", choices=sizes, default="micro", help="model whose tokenizer to use (built if absent)"
    )
    q.add_argument(
        "--cache-dir", type=Path, help="cache root (default: $VLLM_FIRP_CACHE or ~/.cache/vllm-firp)"
    )

    d = sub.add_parser("path", help="print the cache directory of a size without building it")
    d.add_argument("--size", choices=sizes, default="micro", help="which preset (default: micro)")
    d.add_argument(
        "--cache-dir", type=Path, help="cache root (default: $VLLM_FIRP_CACHE or ~/.cache/vllm-firp)"
    )

    f = sub.add_parser("files", help="list the corpus files of a split, relative to the stdlib root")
    f.add_argument("--split", choices=["train", "heldout"], default="heldout", help="which split")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Turn SIGTERM into SystemExit so an interrupted build still removes its temp directory.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.cmd == "build":
        preset = PRESETS[args.size]
        if args.steps is not None:
            preset = dataclasses.replace(preset, steps=args.steps)
        if args.out is not None:
            print(build_atomic(args.out, preset, progress=not args.quiet, threads=args.threads))
        else:
            print(
                ensure_reference_model(preset, args.cache_dir, progress=not args.quiet, threads=args.threads)
            )
    elif args.cmd == "prompts":
        tok_dir = args.tokenizer_dir or ensure_reference_model(args.size, args.cache_dir)
        recs = write_heldout_prompts(args.out, args.n, args.prompt_tokens, tok_dir, args.seed)
        print(f"wrote {len(recs)} prompts to {args.out}")
    elif args.cmd == "path":
        print(reference_model_dir(args.size, args.cache_dir))
    elif args.cmd == "files":
        for p in stdlib_files(args.split):
            print(_relpath(p))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
