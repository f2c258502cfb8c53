"""The strongest peers served by vLLM's *own* speculative methods, same model and data as FIRP.

* Our Medusa heads, exported by ``training.export_vllm``, under vLLM's ``method: "medusa"``.
* An early-exit self-draft (first 2 of the micro model's 4 layers) under ``method: "draft_model"``.
* vLLM's model-free suffix decoding (``method: "suffix"``; arctic-inference, built by setup on CPU machines),
  without its cross-request cache, so each prompt drafts only from itself.

vLLM loads a draft checkpoint with missing tensors without complaint (they stay uninitialised), so
loading proves nothing: each peer must give the same greedy text as no speculation *and* a mean
acceptance length that a broken export cannot reach (measured: a Medusa export without its LM head,
or with vLLM's default per-head LM heads, gives exactly 1.0). For Medusa the test also checks that
vLLM feeds the heads the target's final-normed state and drafts what our heads draft.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]' or the CPU build)")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from vllm_firp_training import export_vllm  # noqa: E402
from vllm_firp_training.export_vllm import ExportError, export_early_exit_draft, export_medusa_for_vllm  # noqa: E402
from vllm_firp_training.medusa import MedusaConfig, MedusaHeads  # noqa: E402

from tests.helpers import engine_metrics, shutdown_engine, tiny_model  # noqa: E402
from vllm_firp.core import FirpCheckpointError  # noqa: E402

K = 3
MAX_TOKENS = 48
ENGINE = dict(enforce_eager=True, max_model_len=384, dtype="float32", distributed_executor_backend="uni",
              max_num_seqs=16, disable_log_stats=False, seed=0)
# Measured on the micro model, 12 held-out prompts x 48 tokens: Medusa 1.86, early exit (2/4 layers) 1.81,
# suffix 1.82; Medusa without its LM head or with per-head LM heads: 1.00. Thresholds leave ~0.3 of margin.
MIN_TAU = {"medusa": 1.5, "early_exit": 1.4, "suffix": 1.4}


# ------------------------------------------------------------------------------ fast: bad inputs


@pytest.fixture
def tiny(tmp_path: Path) -> dict[str, Path]:
    """A 4-layer tiny Llama on disk, Medusa heads for it, and FIRP heads for it."""
    from tests.helpers import random_heads

    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "model", safe_serialization=True)
    torch.manual_seed(0)
    heads = MedusaHeads(MedusaConfig.for_model(model.config, K))
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    heads.save_pretrained(tmp_path / "medusa")
    random_heads(model, K).save_pretrained(tmp_path / "firp")
    return {"model": tmp_path / "model", "medusa": tmp_path / "medusa", "firp": tmp_path / "firp", "tmp": tmp_path}


def test_exports_have_vllm_layout(tiny):
    out = export_medusa_for_vllm(tiny["medusa"], tiny["model"], tiny["tmp"] / "out")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "medusa" and cfg["num_heads"] == K and cfg["num_hidden_layers"] == 1
    assert cfg["medusa_fc_bias"] is True and cfg["original_lm_head"] is True
    t = load_file(str(out / "model.safetensors"))
    assert set(t) == {f"blocks.{i}.layers.0.{p}" for i in range(K) for p in ("weight", "bias")} | {"lm_head.weight"}
    src = load_file(str(tiny["model"] / "model.safetensors"))
    assert torch.equal(t["lm_head.weight"], src["lm_head.weight"])
    heads = load_file(str(tiny["medusa"] / "model.safetensors"))
    assert torch.equal(t["blocks.2.layers.0.bias"], heads["resblock.3.bias"])

    ee = export_early_exit_draft(tiny["model"], 2, tiny["tmp"] / "ee")
    cfg = json.loads((ee / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2
    t = load_file(str(ee / "model.safetensors"))
    assert {n for n in t if ".layers." in n} == {n for n in src if n.startswith(("model.layers.0.", "model.layers.1."))}
    assert all(torch.equal(t[n], src[n]) for n in t)
    assert {"model.norm.weight", "model.embed_tokens.weight", "lm_head.weight"} <= set(t)


def test_tied_embeddings_export_the_embedding_matrix(tmp_path):
    model = tiny_model("llama", tie_word_embeddings=True)
    model.save_pretrained(tmp_path / "model", safe_serialization=True)
    MedusaHeads(MedusaConfig.for_model(model.config, K)).save_pretrained(tmp_path / "medusa")
    out = export_medusa_for_vllm(tmp_path / "medusa", tmp_path / "model", tmp_path / "out")
    lm = load_file(str(out / "model.safetensors"))["lm_head.weight"]
    assert torch.equal(lm, model.model.embed_tokens.weight.detach())


def test_bad_inputs_are_refused(tiny, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(ExportError, match="holds 'firp' heads, not 'medusa'"):
        export_medusa_for_vllm(tiny["firp"], tiny["model"], out)
    with pytest.raises(ExportError, match="config.json is missing"):
        export_medusa_for_vllm(tmp_path / "nowhere", tiny["model"], out)
    with pytest.raises(ExportError, match="config.json is missing: --model"):
        export_medusa_for_vllm(tiny["medusa"], tmp_path / "nowhere", out)
    other = tiny_model("llama", hidden_size=32)  # heads trained for another model
    other.save_pretrained(tmp_path / "other", safe_serialization=True)
    with pytest.raises(FirpCheckpointError, match="do not match the model"):
        export_medusa_for_vllm(tiny["medusa"], tmp_path / "other", out)
    t = load_file(str(tiny["medusa"] / "model.safetensors"))
    t["resblock.2.weight"][0, 0] = float("nan")
    save_file(t, str(tiny["medusa"] / "model.safetensors"))
    with pytest.raises(FirpCheckpointError, match="resblock.2.weight"):
        export_medusa_for_vllm(tiny["medusa"], tiny["model"], out)
    for bad in (0, 4, 9, -1, True):
        with pytest.raises(ExportError, match=r"num_layers must be an integer in \[1, 3\]"):
            export_early_exit_draft(tiny["model"], bad, out)
    (tiny["model"] / "model.safetensors").rename(tiny["model"] / "pytorch_model.bin")  # pickle only
    with pytest.raises(ExportError, match="safetensors weights only.*pytorch_model.bin"):
        export_early_exit_draft(tiny["model"], 2, out)
    assert not out.exists()


def test_cli(tiny, tmp_path, capsys):
    assert export_vllm.main(["early-exit", "--model", str(tiny["model"]), "--layers", "2",
                             "--out", str(tmp_path / "ee")]) == 0
    assert (tmp_path / "ee" / "model.safetensors").is_file()
    assert export_vllm.main(["medusa", "--heads", str(tiny["firp"]), "--model", str(tiny["model"]),
                             "--out", str(tmp_path / "m")]) == 2
    assert "not 'medusa'" in capsys.readouterr().err


# ------------------------------------------------------------------------- slow: vLLM engines


def _runner(llm):
    return llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner


def _generate(models, prompts, spec, inspect=None) -> dict:
    """Greedy outputs and spec-decode counters of one in-process engine (``inspect(llm)`` runs first)."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=models.model, speculative_config=spec, **ENGINE)
    try:
        if inspect is not None:
            inspect(llm)
        outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)
        m = engine_metrics(llm)
    finally:
        shutdown_engine(llm)
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    drafts, accepted = m.get("vllm:spec_decode_num_drafts", 0), m.get("vllm:spec_decode_num_accepted_tokens", 0)
    return {"tokens": tokens, "prompt_ids": [list(o.prompt_token_ids) for o in outs], "drafts": drafts,
            "accepted": accepted, "tau": 1 + accepted / drafts if drafts else None,
            "per_pos": m.get("vllm:spec_decode_num_accepted_tokens_per_pos")}


@pytest.fixture(scope="module")
def baseline(micro_models, micro_code_prompts):
    return _generate(micro_models, micro_code_prompts, None)


def _same_greedy(got: dict, baseline: dict, name: str = "") -> None:
    bad = [i for i, (g, w) in enumerate(zip(got["tokens"], baseline["tokens"], strict=True)) if g != w]
    assert not bad, f"{name}{': ' if name else ''}{len(bad)} of {len(got['tokens'])} greedy outputs differ from no speculation"
    assert all(len(t) == MAX_TOKENS for t in got["tokens"])


def _check_peer(name: str, got: dict, baseline: dict) -> None:
    _same_greedy(got, baseline, name)
    print(f"\n[vllm-peers] {name}: mean acceptance length {got['tau']:.3f} ({int(got['accepted'])} accepted / "
          f"{int(got['drafts'])} drafts, per position {got['per_pos']})")
    assert got["drafts"] > 0 and got["tau"] > MIN_TAU[name], f"{name}: acceptance {got['tau']} (broken export?)"


def test_medusa_served_by_vllm(micro_models, micro_code_prompts, baseline, tmp_path_factory):
    from transformers import AutoModelForCausalLM
    from vllm_firp_training.medusa import MedusaDrafter

    from vllm_firp.core import chain_tree
    from vllm_firp.engine.engine import FirpEngine
    from vllm_firp.resolve import resolve

    heads_dir = resolve("micro", methods=("medusa",)).heads_dir("medusa")
    out = export_medusa_for_vllm(heads_dir, micro_models.model, tmp_path_factory.mktemp("vllm-medusa"))
    hf = AutoModelForCausalLM.from_pretrained(micro_models.model, dtype=torch.float32).eval()
    heads = MedusaHeads.from_pretrained(heads_dir, hf.config, dtype=torch.float32)
    records: list[tuple[list[int], torch.Tensor, list[int]]] = []

    def inspect(llm):
        runner = _runner(llm)
        vm = runner.drafter.model
        # Loaded weights are ours (vLLM would have left missing ones uninitialised without a word).
        for k in range(K):
            lin = heads.resblock[str(k + 1)]
            assert torch.equal(vm.blocks[k].layers[0].weight, lin.weight)
            assert torch.equal(vm.blocks[k].layers[0].bias, lin.bias)
        assert all(lm is vm.lm_head for lm in vm.lm_heads)
        assert torch.equal(vm.lm_head.weight[: hf.config.vocab_size], hf.lm_head.weight)
        propose = runner.drafter.propose

        def recording_propose(*args, **kwargs):
            drafts = propose(*args, **kwargs)
            hs, batch = kwargs["target_hidden_states"], runner.input_batch
            for i, d in enumerate(drafts.tolist()):
                if len(records) < 60:  # context = tokens up to the anchor (before the newly sampled token)
                    ctx = batch.token_ids_cpu[i, : int(batch.num_tokens_no_spec[i]) - 1].tolist()
                    records.append((ctx, hs[i].clone(), d))
            return drafts

        runner.drafter.propose = recording_propose

    spec = {"method": "medusa", "model": str(out), "num_speculative_tokens": K}
    got = _generate(micro_models, micro_code_prompts, spec, inspect)
    _check_peer("medusa", got, baseline)

    # vLLM feeds the heads the final-normed state of the anchor, and drafts what our heads draft from it.
    assert len(records) >= 40
    same_state = same_drafts = 0
    with torch.no_grad():
        for ctx, h_vllm, d in records:
            # HF: the last hidden_states entry is after model.norm (lm_head of it gives the logits).
            h = hf(torch.tensor([ctx]), output_hidden_states=True).hidden_states[-1][0, -1]
            same_state += torch.allclose(h_vllm, h, atol=1e-3, rtol=1e-3)
            same_drafts += hf.lm_head(heads(h)).argmax(-1).tolist() == d
    print(f"[vllm-peers] medusa: vLLM's hidden state == HF final-normed state {same_state}/{len(records)}, "
          f"drafts == our heads {same_drafts}/{len(records)}")
    assert same_state >= 0.97 * len(records) and same_drafts >= 0.97 * len(records)

    # Same acceptance as the project's reference engine running the same heads as a top-1 chain.
    engine = FirpEngine(hf)
    drafter = MedusaDrafter(heads, engine.parts.lm_head)
    steps: list[int] = []
    for ids, want in zip(got["prompt_ids"], got["tokens"], strict=True):
        g = engine.generate(ids, MAX_TOKENS, tree=chain_tree(K), drafter=drafter)
        assert g.tokens == want
        steps += g.stats.tokens_per_step
    ref = sum(steps) / len(steps)
    print(f"[vllm-peers] medusa: mean acceptance length vLLM {got['tau']:.4f}, reference engine {ref:.4f}")
    assert abs(got["tau"] - ref) <= 0.05 * ref


def test_early_exit_draft_served_by_vllm(micro_models, micro_code_prompts, baseline, tmp_path_factory):
    from safetensors import safe_open

    n = 2
    out = export_early_exit_draft(micro_models.model, n, tmp_path_factory.mktemp("vllm-early-exit"))

    def inspect(llm):
        dm = _runner(llm).drafter.model
        assert len(dm.model.layers) == n
        with safe_open(str(Path(micro_models.model) / "model.safetensors"), "pt") as f:
            # Decoder-layer linears are repacked by the CPU backend (their .weight reads empty); these are not.
            for name in ("lm_head.weight", "model.norm.weight", "model.embed_tokens.weight",
                         "model.layers.1.input_layernorm.weight"):
                param = dict(dm.named_parameters())[name]
                assert torch.equal(param[: f.get_slice(name).get_shape()[0]], f.get_tensor(name)), name

    spec = {"method": "draft_model", "model": str(out), "num_speculative_tokens": K}
    got = _generate(micro_models, micro_code_prompts, spec, inspect)
    _check_peer("early_exit", got, baseline)


def test_suffix_decoding_served_by_vllm(micro_models, micro_code_prompts, baseline):
    pytest.importorskip("arctic_inference.suffix_decoding",
                        reason="arctic-inference is not installed (scripts/build_arctic_inference.sh)")
    spec = {"method": "suffix", "num_speculative_tokens": K, "suffix_decoding_max_cached_requests": 0}
    _check_peer("suffix", _generate(micro_models, micro_code_prompts, spec), baseline)
