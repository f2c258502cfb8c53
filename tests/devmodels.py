"""Models for the plugin's tests and benchmark: the project's reference model when it exists, else a tiny
random Llama; trained FIRP heads when they exist, else identity-initialised heads (weak but real drafts)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vllm_firp.cache import atomic_build
from vllm_firp.cache import default_cache_dir as project_cache_dir
from vllm_firp.resolve import PLAIN_CHAT_TEMPLATE as CHAT_TEMPLATE


@dataclass
class DevModels:
    model: str
    heads: str
    model_source: str  # "reference:<size>" or "tiny-random"
    heads_source: str  # "trained:<size>" or "identity-init"

    def describe(self) -> str:
        return f"model={self.model} ({self.model_source}); heads={self.heads} ({self.heads_source})"


def default_cache_dir() -> Path:
    return project_cache_dir() / "vllm-plugin"


def _atomic(directory: Path, build: Callable[[Path], None]) -> Path:
    return directory if directory.is_dir() else atomic_build(directory, build)


def tiny_llama(directory: str | Path, vocab_size: int = 512, seed: int = 0) -> Path:
    """A 4-layer, hidden-128 random Llama (fp32) with a small BPE tokenizer and a chat template."""
    return _atomic(Path(directory), lambda d: _build_tiny_llama(d, vocab_size, seed))


def _build_tiny_llama(directory: Path, vocab_size: int, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory.mkdir(parents=True)
    tok = PreTrainedTokenizerFast(tokenizer_object=_train_bpe(vocab_size), bos_token="<s>", eos_token="</s>")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(directory)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger logits so greedy text is not a flat-distribution coin toss
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(directory, safe_serialization=True)


def _train_bpe(vocab_size: int):
    import ast
    import inspect

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([inspect.getsource(ast), inspect.getsource(json.decoder)], trainer=trainer)
    return tok


def identity_heads(directory: str | Path, model_dir: str | Path, k: int = 3, **kw: object) -> Path:
    """Identity-initialised FIRP heads for ``model_dir`` (pseudo k starts as a copy of the anchor state)."""

    def build(d: Path) -> None:
        from transformers import AutoConfig

        from vllm_firp.core import FirpConfig, FirpHeads

        FirpHeads(FirpConfig.for_model(AutoConfig.from_pretrained(model_dir), k, **kw)).save_pretrained(d)

    return _atomic(Path(directory), build)


def dev_models(cache_dir: str | Path | None = None, size: str = "micro", k: int = 3) -> DevModels:
    """The best models available now, falling back step by step; ``describe()`` says which were used."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        from vllm_firp.resolve import resolve

        m = resolve(size)
        return DevModels(str(m.model), str(m.heads_dir()), f"reference:{size}", f"trained:{size}")
    except ImportError:  # no trainer: a tiny random model with identity-initialised heads
        model = str(tiny_llama(cache_dir / "tiny-llama"))
    heads = str(identity_heads(cache_dir / f"identity-heads-{Path(model).name}-k{k}", model, k))
    return DevModels(model, heads, "tiny-random", "identity-init")


def code_prompts(models: DevModels, n: int, prompt_tokens: int = 48, seed: int = 0) -> list[str]:
    """``n`` code prompts: held-out stdlib windows for the reference model, stdlib windows otherwise."""
    if models.model_source.startswith("reference"):
        from vllm_firp_training.reference_model import write_heldout_prompts

        with tempfile.TemporaryDirectory() as tmp:
            recs = write_heldout_prompts(Path(tmp) / "p.jsonl", n, prompt_tokens, Path(models.model), seed=seed)
        return [r["prompt"] for r in recs]
    import argparse
    import difflib
    import inspect
    import random
    import string
    import textwrap

    lines = [ln for mod in (argparse, difflib, string) for ln in inspect.getsource(mod).splitlines(keepends=True)]
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        start = rng.randrange(len(lines) - 40)
        text, i = "", start
        while len(text) < prompt_tokens * 3 and i < len(lines):
            text, i = text + lines[i], i + 1
        if text.strip():
            out.append(textwrap.dedent(text))
    return out
