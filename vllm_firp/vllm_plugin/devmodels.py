"""Models for the plugin's tests and benchmark: the project's reference model when it exists, else a tiny
random Llama; trained FIRP heads when they exist, else identity-initialised heads (weak but real drafts)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass
class DevModels:
    model: str
    heads: str
    model_source: str  # "reference:<size>" or "tiny-random"
    heads_source: str  # "trained:<size>" or "identity-init"

    def describe(self) -> str:
        return f"model={self.model} ({self.model_source}); heads={self.heads} ({self.heads_source})"


def tiny_llama(directory: str | Path, vocab_size: int = 512, seed: int = 0) -> Path:
    """A 4-layer, hidden-128 random Llama with a small BPE tokenizer trained on local text."""
    directory = Path(directory)
    if (directory / "config.json").is_file() and (directory / "tokenizer.json").is_file():
        return directory
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
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
    return directory


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


def identity_heads(directory: str | Path, model_dir: str | Path, k: int = 3) -> Path:
    """Identity-initialised FIRP heads for ``model_dir`` (pseudo k starts as a copy of the anchor state)."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        from transformers import AutoConfig

        from vllm_firp.core import FirpConfig, FirpHeads

        hf = AutoConfig.from_pretrained(model_dir)
        FirpHeads(FirpConfig.for_model(hf, k)).save_pretrained(directory)
    return directory


def dev_models(cache_dir: str | Path, size: str = "micro", k: int = 3) -> DevModels:
    """The best models available now, falling back step by step; ``describe()`` says which were used."""
    cache_dir = Path(cache_dir)
    try:
        from benchmarks.reference_model import ensure_reference_model

        model, model_source = str(ensure_reference_model(size)), f"reference:{size}"
    except ImportError:
        model, model_source = str(tiny_llama(cache_dir / "tiny-llama")), "tiny-random"
    heads, heads_source = None, "identity-init"
    if model_source.startswith("reference"):
        try:
            from benchmarks.reference_heads import ensure_reference_heads

            heads, heads_source = str(ensure_reference_heads(size)), f"trained:{size}"
        except ImportError:
            pass
    if heads is None:
        tag = Path(model).name
        heads = str(identity_heads(cache_dir / f"identity-heads-{tag}-k{k}", model, k))
    return DevModels(model, heads, model_source, heads_source)
