"""Training pipeline on a tiny model whose future is learnable: generate -> train -> evaluate -> engine.

The model is built, not downloaded: orthonormal token embeddings, near-identity decoder layers (small
attention/MLP outputs) and an LM head that maps token x to pi(x), for a random single-cycle permutation
pi of the vocabulary. Its greedy text is x, pi(x), pi^2(x), ..., so draft k of anchor i must produce
pi^{k+1}(x_i): a different linear map of the embedding per k. Untrained (identity) heads draft pi(x_i),
which is never right (the cycle is as long as the vocabulary); chance is 1/V. Accuracy near 1 after a
short run therefore means the heads really learned the future, through the real forward path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from vllm_firp_training import evaluate as ev
from vllm_firp_training import generate_data, train
from vllm_firp_training.data import load_sequences
from vllm_firp_training.medusa import MedusaDrafter, MedusaHeads

from vllm_firp.core import FirpCheckpointError, FirpHeads, chain_tree
from vllm_firp.engine.engine import FirpEngine

V, D = 48, 64


def perm_model(seed: int = 0, vocab: int = V, hidden: int = D) -> tuple[LlamaForCausalLM, list[int]]:
    """The permutation model described in the module docstring, and its permutation."""
    g = torch.Generator().manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                         attn_implementation="sdpa")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    order = torch.randperm(vocab, generator=g)
    pi = [0] * vocab
    for j in range(vocab):
        pi[int(order[j])] = int(order[(j + 1) % vocab])
    q, _ = torch.linalg.qr(torch.randn(hidden, vocab, generator=g))  # orthonormal columns
    emb = q.T * hidden**0.5  # rows of rms 1
    inv = [0] * vocab
    for x, y in enumerate(pi):
        inv[y] = x
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(emb)
        model.lm_head.weight.copy_(emb[inv] * (1.5 / hidden**0.5))  # logit of pi(x) ~ 1.5 * sqrt(d)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(0.1)
            layer.mlp.down_proj.weight.mul_(0.1)
    return model, pi


def word_tokenizer(vocab: int = V) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return fast


def save_model(path: Path, seed: int = 0, **kw) -> list[int]:
    model, pi = perm_model(seed, **kw)
    model.save_pretrained(path)
    word_tokenizer(model.config.vocab_size).save_pretrained(path)
    return pi


def write_prompts(path: Path, n: int, seed: int = 0, length: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with open(path, "w") as fh:
        for _ in range(n):
            fh.write(json.dumps({"prompt_ids": torch.randint(0, V, (length,), generator=g).tolist()}) + "\n")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Model + 40 generated sequences of 2 + 30 tokens, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("training")
    save_model(root / "model")
    write_prompts(root / "prompts.jsonl", 40)
    rc = generate_data.main(["--model", str(root / "model"), "--prompts", str(root / "prompts.jsonl"),
                             "--out", str(root / "data"), "--backend", "hf", "--max-new-tokens", "30",
                             "--batch-size", "16", "--quiet"])
    assert rc == 0
    return root


def train_args(root: Path, out: str, *extra: str) -> list[str]:
    return ["--model", str(root / "model"), "--data", str(root / "data"), "--out", str(root / out),
            "--inject-layer", "2", "--anchors-per-seq", "0", "--grad-accum", "2", "--lr", "0.02", "--warmup", "5",
            "--holdout-percent", "10", "--quiet", *extra]


def test_generated_data_follows_the_permutation(workdir: Path) -> None:
    _, pi = perm_model()
    seqs = load_sequences(workdir / "data", "all")
    assert len(seqs) == 40 and all(len(s.ids) == 32 and s.prompt_len == 2 for s in seqs)
    for s in seqs:
        assert all(pi[a] == b for a, b in zip(s.ids[1:], s.ids[2:], strict=False)), "greedy text is not pi-chains"


@pytest.fixture(scope="module")
def trained(workdir: Path) -> tuple[Path, dict]:
    summary = train.train(train.build_parser().parse_args(train_args(workdir, "heads", "--steps", "60",
                                                                       "--save-every", "30")))
    return workdir / "heads", summary


def test_training_learns_the_future(workdir: Path, trained: tuple[Path, dict]) -> None:
    heads_dir, summary = trained
    model, _ = perm_model()
    untrained = FirpHeads(FirpHeads.from_pretrained(heads_dir).config)  # identity init
    seqs = load_sequences(workdir / "data", "eval", 10)
    before = ev.evaluate(model, untrained, seqs, progress=False)
    after = ev.evaluate(model, FirpHeads.from_pretrained(heads_dir, model.config), seqs, progress=False)
    assert max(before["top1_vs_greedy"]) < 0.1  # identity heads draft pi(x), never right
    assert min(after["top1_vs_greedy"]) > 0.9, after["top1_vs_greedy"]
    assert after["tau_chain"][-1] > 3.5  # 1 + up to K=3 accepted drafts
    log = [json.loads(line) for line in (workdir / "heads-checkpoints" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < 0.2 * log[0]["loss"]
    cos = after["cosine"]["1"]
    assert cos["2"]["pseudo"] > cos["2"]["copy_anchor"] + 0.3  # pseudo state is close to the real future state


def test_heads_dir_holds_only_the_checkpoint(trained: tuple[Path, dict]) -> None:
    heads_dir, _ = trained
    assert sorted(p.name for p in heads_dir.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((heads_dir / "config.json").read_text())
    assert cfg["format"] == "firp" and cfg["inject_layers"] == [2, 2, 2]
    assert cfg["training"]["steps"] == 60 and cfg["training"]["lr"] == 0.02
    other, _ = perm_model(vocab=V + 1)
    with pytest.raises(FirpCheckpointError, match="vocab_size"):
        FirpHeads.from_pretrained(heads_dir, other.config)


def test_resume_is_bit_exact(workdir: Path, trained: tuple[Path, dict]) -> None:
    heads_dir, _ = trained
    ckpt = workdir / "heads-checkpoints" / "step-0000030"
    train.train(train.build_parser().parse_args(train_args(workdir, "resumed", "--steps", "60", "--resume",
                                                           str(ckpt), "--checkpoint-dir",
                                                           str(workdir / "resumed-ckpt"))))
    a = FirpHeads.from_pretrained(heads_dir).state_dict()
    b = FirpHeads.from_pretrained(workdir / "resumed").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_engine_with_trained_heads_is_lossless_and_fast(workdir: Path, trained: tuple[Path, dict]) -> None:
    heads_dir, _ = trained
    model, _ = perm_model()
    engine = FirpEngine(model, FirpHeads.from_pretrained(heads_dir, model.config))
    prompt = [3, 7]
    plain = engine.generate(prompt, 24)
    firp = engine.generate(prompt, 24, tree=chain_tree(3))
    assert firp.tokens == plain.tokens
    assert firp.stats.mean_accepted > 3


def test_medusa_trains_and_drafts_in_the_engine(workdir: Path) -> None:
    args = train_args(workdir, "medusa", "--steps", "60", "--method", "medusa")
    train.train(train.build_parser().parse_args(args))
    model, _ = perm_model()
    heads = MedusaHeads.from_pretrained(workdir / "medusa", model.config)
    seqs = load_sequences(workdir / "data", "eval", 10)
    rep = ev.evaluate(model, heads, seqs, progress=False)
    assert rep["top1_vs_greedy"][0] > 0.5, rep["top1_vs_greedy"]
    engine = FirpEngine(model)
    drafter = MedusaDrafter(heads, engine.parts.lm_head)
    plain = engine.generate([5, 9], 24)
    med = engine.generate([5, 9], 24, tree=chain_tree(3), drafter=drafter)
    assert med.tokens == plain.tokens
    assert med.stats.mean_accepted > 1.5


def test_evaluate_cli_writes_json_and_plot(workdir: Path, trained: tuple[Path, dict]) -> None:
    heads_dir, _ = trained
    out = workdir / "eval"
    rc = ev.main(["--model", str(workdir / "model"), "--heads", str(heads_dir), "--data", str(workdir / "data"),
                  "--out-dir", str(out), "--engine-prompts", "2", "--engine-max-new-tokens", "12", "--quiet"])
    assert rc == 0 and (out / "eval.png").stat().st_size > 0
    rep = json.loads((out / "eval.json").read_text())
    assert rep["split"] == "eval" and rep["sequences"] == len(load_sequences(workdir / "data", "eval", 10))
    assert set(rep["tau_tree"]) == {"8", "16", "32"} and len(rep["rank_probs"]) == 3
    assert rep["engine"]["chain"]["tau"] > 3 and rep["engine"]["tree32"]["tau"] > 3


def test_heads_options_reach_the_checkpoint(workdir: Path) -> None:
    args = train_args(workdir, "opts", "--steps", "2", "--inject-layer", "1,2,3", "--source", "anchor",
                      "--residual", "--no-bias", "--no-pseudo-attend-each-other", "--loss-weights", "1,0.5,0.25",
                      "--anchors-per-seq", "4", "-K", "3", "--dtype", "bf16")
    train.train(train.build_parser().parse_args(args))
    heads = FirpHeads.from_pretrained(workdir / "opts")
    cfg = heads.config
    assert (cfg.inject_layers, cfg.source, cfg.residual, cfg.bias, cfg.pseudo_attend_each_other) == (
        [1, 2, 3], "anchor", True, False, False)
    assert cfg.training["loss_weights"] == [1.0, 0.5, 0.25] and cfg.training["anchors_per_seq"] == 4
    assert cfg.training["model_dtype"] == "bfloat16" and cfg.dtype == "float32"  # heads train in fp32
    with pytest.raises(FirpCheckpointError, match="different heads settings"):
        train.train(train.build_parser().parse_args(
            train_args(workdir, "opts2", "--steps", "4", "--resume", str(workdir / "opts-checkpoints" / "step-0000002"))))


@pytest.mark.parametrize("module", [generate_data, train, ev])
def test_cli_help(module, capsys) -> None:
    """Every flag is explained: each option has help text, and --help prints every option."""
    options = [a for a in module.build_parser()._actions if a.option_strings]
    assert len(options) > 5 and not [a.option_strings for a in options if not (a.help or "").strip()]
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(a.option_strings[-1] in out for a in options)


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_rank_with_accumulation(workdir: Path) -> None:
    """2 gloo ranks x 1 sequence == 1 process x 2 accumulated sequences, bit for bit (same global batches)."""
    import os
    import subprocess
    import sys

    common = train_args(workdir, "ddp2", "--steps", "4", "--threads", "1")
    ddp = [a if a != "2" or common[i - 1] != "--grad-accum" else "1" for i, a in enumerate(common)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "vllm_firp_training.train",
                    *ddp], check=True, env=env, capture_output=True, timeout=120)
    train.train(train.build_parser().parse_args(train_args(workdir, "ddp1", "--steps", "4", "--threads", "1")))
    a = FirpHeads.from_pretrained(workdir / "ddp1")
    b = FirpHeads.from_pretrained(workdir / "ddp2")
    assert b.config.training["world_size"] == 2 and b.config.training["grad_accum"] == 1
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
