"""EAGLE-3 baseline without vLLM: it learns (TTT steps included), its export is vLLM's layout, bad inputs are refused.

The permutation model of tests/test_training.py makes the future learnable: greedy text is x, pi(x), pi^2(x), ...
so TTT step k must turn (token x_{p+k}, fed-back state) into pi(x_{p+k}); chance is 1/V.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from vllm_firp_training import evaluate as ev
from vllm_firp_training import export_vllm, generate_data, train
from vllm_firp_training.data import load_sequences
from vllm_firp_training.eagle3 import Eagle3Config, Eagle3Draft, default_aux_layers
from vllm_firp_training.export_vllm import ExportError, export_eagle3_for_vllm
from vllm_firp_training.kinds import load_heads, new_heads

from tests.test_training import perm_model, save_model, write_prompts
from vllm_firp.core import FirpCheckpointError
from vllm_firp.engine.forward import ModelParts

K = 3


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eagle3")
    save_model(root / "model")
    write_prompts(root / "prompts.jsonl", 40)
    assert generate_data.main(["--model", str(root / "model"), "--prompts", str(root / "prompts.jsonl"),
                               "--out", str(root / "data"), "--backend", "hf", "--max-new-tokens", "30",
                               "--batch-size", "16", "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def trained(work: Path) -> tuple[Path, dict]:
    argv = ["--model", str(work / "model"), "--data", str(work / "data"), "--out", str(work / "eagle3"),
            "--method", "eagle3", "-K", str(K), "--aux-layers", "1,2,4", "--anchors-per-seq", "0",
            "--grad-accum", "2", "--lr", "0.01", "--warmup", "5", "--steps", "60", "--holdout-percent", "10",
            "--quiet"]
    return work / "eagle3", train.train(train.build_parser().parse_args(argv))


def test_eagle3_learns_every_ttt_step(work: Path, trained: tuple[Path, dict]) -> None:
    draft_dir, summary = trained
    model, _ = perm_model()
    draft = load_heads(draft_dir, model.config)
    assert isinstance(draft, Eagle3Draft) and draft.config.aux_layer_ids == [1, 2, 4] and draft.K == K
    assert draft.config.training["method"] == "eagle3" and draft.config.training["steps"] == 60
    seqs = load_sequences(work / "data", "eval", 10)
    rep = ev.evaluate(model, draft, seqs, progress=False)
    untrained = ev.evaluate(model, Eagle3Draft(draft.config), seqs, progress=False)
    print(f"\n[eagle3] top-1 per TTT step {rep['top1_vs_greedy']} (untrained {untrained['top1_vs_greedy']}), "
          f"chain tau {rep['tau_chain']}")
    assert min(rep["top1_vs_greedy"]) > 0.8 and max(untrained["top1_vs_greedy"]) < 0.3
    # Serving-time drafting (each step fed the previous draft) continues the greedy text.
    parts = ModelParts.of(model)
    s = seqs[0].ids
    for cut in (5, 12, 20):
        assert draft.propose(parts, s[:cut]) == s[cut : cut + K]


def test_export_has_vllm_eagle3_layout(work: Path, trained: tuple[Path, dict]) -> None:
    draft_dir, _ = trained
    out = export_eagle3_for_vllm(draft_dir, work / "model", work / "vllm-eagle3")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["num_hidden_layers"] == 1
    assert cfg["eagle_aux_hidden_state_layer_ids"] == cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [1, 2, 4]
    assert cfg["norm_before_residual"] is False and cfg["draft_vocab_size"] == cfg["vocab_size"]
    t = load_file(str(out / "model.safetensors"))
    d = cfg["hidden_size"]
    assert t["fc.weight"].shape == (d, 3 * d) and t["midlayer.self_attn.q_proj.weight"].shape[1] == 2 * d
    assert {"norm.weight", "midlayer.hidden_norm.weight", "midlayer.mlp.gate_proj.weight"} <= set(t)
    assert not [n for n in t if "lm_head" in n or "embed_tokens" in n]  # vLLM shares the target's
    src = load_file(str(draft_dir / "model.safetensors"))
    assert set(src) == set(t) and all(torch.equal(src[n], t[n]) for n in t)
    assert export_vllm.main(["eagle3", "--draft", str(draft_dir), "--model", str(work / "model"),
                             "--out", str(work / "cli-out")]) == 0


def test_bad_configs_are_refused() -> None:
    model, _ = perm_model()
    assert default_aux_layers(4) == (1, 2, 3) and default_aux_layers(32) == (2, 16, 29)
    for bad in ([2, 1, 3], [1, 1, 3], [0, 2, 5], [-1, 2, 3], [], [1.5, 2, 3]):
        with pytest.raises(FirpCheckpointError, match="aux_layer_ids must be strictly increasing"):
            Eagle3Config.for_model(model.config, K, aux_layer_ids=bad)
    for k in (0, -1, True):
        with pytest.raises(FirpCheckpointError, match="num_steps must be a positive integer"):
            Eagle3Config.for_model(model.config, k)
    with pytest.raises(FirpCheckpointError, match="no 3 distinct default aux layers"):
        default_aux_layers(2)
    with pytest.raises(ValueError, match="method must be one of"):
        new_heads("eagle4", model.config, K)


def test_bad_drafts_are_refused(work: Path, trained: tuple[Path, dict], tmp_path: Path) -> None:
    draft_dir, _ = trained
    model_dir, out = work / "model", tmp_path / "out"

    def copy(name: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        for f in ("config.json", "model.safetensors"):
            (d / f).write_bytes((draft_dir / f).read_bytes())
        return d

    with pytest.raises(ExportError, match="config.json is missing"):
        export_eagle3_for_vllm(tmp_path / "nowhere", model_dir, out)
    with pytest.raises(ExportError, match="config.json is missing: --model"):
        export_eagle3_for_vllm(draft_dir, tmp_path / "nowhere", out)
    no_weights = copy("no-weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FirpCheckpointError, match="model.safetensors is missing"):
        export_eagle3_for_vllm(no_weights, model_dir, out)
    no_fc = copy("no-fc")
    t = load_file(str(no_fc / "model.safetensors"))
    del t["fc.weight"]
    save_file(t, str(no_fc / "model.safetensors"))
    with pytest.raises(FirpCheckpointError, match=r"lacks tensor\(s\) \['fc.weight'\]"):
        export_eagle3_for_vllm(no_fc, model_dir, out)
    nan = copy("nan")
    t = load_file(str(nan / "model.safetensors"))
    t["midlayer.self_attn.k_proj.weight"][0, 0] = float("nan")
    save_file(t, str(nan / "model.safetensors"))
    with pytest.raises(FirpCheckpointError, match="midlayer.self_attn.k_proj.weight contains NaN"):
        export_eagle3_for_vllm(nan, model_dir, out)
    two_aux = copy("two-aux")  # fc is 3d wide but the config names 2 aux layers
    cfg = json.loads((two_aux / "config.json").read_text())
    (two_aux / "config.json").write_text(json.dumps({**cfg, "aux_layer_ids": [1, 2]}))
    with pytest.raises(FirpCheckpointError, match="fc.weight has shape"):
        export_eagle3_for_vllm(two_aux, model_dir, out)
    bad_ids = copy("bad-ids")
    (bad_ids / "config.json").write_text(json.dumps({**cfg, "aux_layer_ids": [1, 2, 9]}))
    with pytest.raises(FirpCheckpointError, match="aux_layer_ids"):
        export_eagle3_for_vllm(bad_ids, model_dir, out)
    other = tmp_path / "other-model"  # a draft for another model shape
    save_model(other, vocab=40)
    with pytest.raises(FirpCheckpointError, match="does not match the model"):
        export_eagle3_for_vllm(draft_dir, other, out)
    medusa = tmp_path / "medusa"
    new_heads("medusa", perm_model()[0].config, K).save_pretrained(medusa)
    with pytest.raises(ExportError, match="holds 'medusa' heads, not 'eagle3'"):
        export_eagle3_for_vllm(medusa, model_dir, out)
    assert not out.exists()


def test_norm_before_residual_reaches_the_export(work: Path) -> None:
    """vLLM's default for it differs between its config paths, so the export always states what was trained."""
    argv = ["--model", str(work / "model"), "--data", str(work / "data"), "--out", str(work / "nbr"),
            "--method", "eagle3", "-K", "2", "--norm-before-residual", "--steps", "1", "--grad-accum", "1", "--quiet"]
    train.train(train.build_parser().parse_args(argv))
    draft = Eagle3Draft.from_pretrained(work / "nbr")
    assert draft.config.norm_before_residual and draft.K == 2 and draft.config.aux_layer_ids == [1, 2, 3]
    cfg = json.loads((export_eagle3_for_vllm(work / "nbr", work / "model", work / "nbr-vllm") / "config.json").read_text())
    assert cfg["norm_before_residual"] is True and cfg["eagle3_ttt_steps"] == 2
