"""Our EAGLE-3 draft (training.eagle3) served by vLLM's own ``method: "eagle3"`` on the micro reference model.

vLLM loads a draft with missing tensors without a word (they stay uninitialised), so loading proves nothing.
The draft must give the same greedy text as no speculation, a mean acceptance length a broken export cannot
reach, and the very drafts our own implementation of the draft computes for the same contexts (which checks
that vLLM feeds it the aux layers and computes the layer exactly as it was trained). An export whose
``fc.weight`` was dropped is served too, and its acceptance must collapse.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]' or the CPU build)")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from vllm_firp_training.eagle3 import Eagle3Draft  # noqa: E402
from vllm_firp_training.export_vllm import export_eagle3_for_vllm  # noqa: E402
from vllm_firp_training.reference_heads import ensure_reference_eagle3  # noqa: E402

from tests.test_vllm_peers import _generate, _runner, _same_greedy  # noqa: E402

K = 3
# Measured on micro, 12 held-out prompts x 48 tokens (K=3): 2.11 (Medusa 1.82); without fc.weight: 1.0-1.11.
MIN_TAU, MAX_BROKEN_TAU = 1.5, 1.35


@pytest.fixture(scope="module")
def baseline(micro_models, micro_code_prompts):
    return _generate(micro_models, micro_code_prompts, None)


@pytest.fixture(scope="module")
def exported(micro_models, tmp_path_factory) -> tuple[Path, Path]:
    draft = ensure_reference_eagle3("micro")
    return draft, export_eagle3_for_vllm(draft, micro_models.model, tmp_path_factory.mktemp("vllm-eagle3"))


def _spec(path: Path) -> dict:
    return {"method": "eagle3", "model": str(path), "num_speculative_tokens": K}


def test_eagle3_served_by_vllm(micro_models, micro_code_prompts, baseline, exported):
    from transformers import AutoModelForCausalLM

    from vllm_firp.engine.forward import ModelParts

    draft_dir, out = exported
    hf = AutoModelForCausalLM.from_pretrained(micro_models.model, dtype=torch.float32).eval()
    ours = Eagle3Draft.from_pretrained(draft_dir, hf.config, dtype=torch.float32)
    records: list[tuple[list[int], list[int]]] = []

    def inspect(llm):
        runner = _runner(llm)
        dm = runner.drafter.model
        params = dict(dm.named_parameters())
        # Loaded weights are ours. Linears (fc included) are repacked by the CPU backend (their .weight reads
        # empty), so they are checked through the drafts below; the norms are plain parameters.
        assert torch.equal(params["model.norm.weight"], ours.norm.weight)
        assert torch.equal(params["model.layers.0.hidden_norm.weight"], ours.midlayer.hidden_norm.weight)
        target = runner.get_model()
        assert dm.lm_head is target.lm_head and dm.model.embed_tokens is target.model.embed_tokens  # shared
        assert target.model.aux_hidden_state_layers == tuple(ours.config.aux_layer_ids)
        propose = runner.drafter.propose

        def recording_propose(*args, **kwargs):
            cm, batch = kwargs["common_attn_metadata"], runner.input_batch
            seq = cm.seq_lens[: cm.num_reqs].tolist()  # a copy: propose() subtracts the rejections in place
            rej = kwargs.get("num_rejected_tokens_gpu")  # padded batch: rows of rejected drafts still counted
            rej = rej[: cm.num_reqs].tolist() if rej is not None else [0] * len(seq)
            nxt = kwargs["next_token_ids"][: cm.num_reqs].tolist()
            drafts = propose(*args, **kwargs)
            for i, d in enumerate(drafts.tolist()):
                if len(records) < 60:  # context = everything the target has run + the token it just sampled
                    n = seq[i] - rej[i]
                    records.append((batch.token_ids_cpu[i, :n].tolist() + [nxt[i]], d))
            return drafts

        runner.drafter.propose = recording_propose

    got = _generate(micro_models, micro_code_prompts, _spec(out), inspect)
    _same_greedy(got, baseline)
    print(f"\n[vllm-eagle3] mean acceptance length {got['tau']:.3f} ({int(got['accepted'])} accepted / "
          f"{int(got['drafts'])} drafts, per position {got['per_pos']})")
    assert got["drafts"] > 0 and got["tau"] > MIN_TAU, f"eagle3: acceptance {got['tau']} (broken export?)"

    # vLLM drafts what our draft computes for the same context (aux layers, layer math, TTT feedback, rotary).
    full = [p + t for p, t in zip(got["prompt_ids"], got["tokens"], strict=True)]
    assert len(records) >= 40
    parts = ModelParts.of(hf)
    same = 0
    for ctx, d in records:
        assert any(f[: len(ctx)] == ctx for f in full), "recorded context is not a prefix of any output"
        same += ours.propose(parts, ctx) == d
    print(f"[vllm-eagle3] drafts == our draft's {same}/{len(records)}")
    assert same >= 0.95 * len(records)


def test_broken_export_collapses(micro_models, micro_code_prompts, baseline, exported, tmp_path):
    """Without fc.weight vLLM still loads and serves (silently), but the drafts are garbage: acceptance ~1."""
    _, out = exported
    broken = tmp_path / "no-fc"
    broken.mkdir()
    (broken / "config.json").write_text((out / "config.json").read_text())
    t = load_file(str(out / "model.safetensors"))
    del t["fc.weight"]
    save_file(t, str(broken / "model.safetensors"))
    assert "fc.weight" not in load_file(str(broken / "model.safetensors"))
    got = _generate(micro_models, micro_code_prompts, _spec(broken))
    _same_greedy(got, baseline)  # still lossless: verification does not trust drafts
    print(f"\n[vllm-eagle3] without fc.weight: mean acceptance length {got['tau']}")
    assert got["tau"] is None or got["tau"] < MAX_BROKEN_TAU


def test_wrong_aux_layer_count_is_refused(micro_models, exported, tmp_path):
    """A config naming 2 aux layers for a 3-layer-wide fc: our exporter's loader refuses it by name."""
    from vllm_firp.core import FirpCheckpointError

    draft_dir, _ = exported
    bad = tmp_path / "two-aux"
    bad.mkdir()
    cfg = json.loads((draft_dir / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "aux_layer_ids": cfg["aux_layer_ids"][:2]}))
    (bad / "model.safetensors").write_bytes((draft_dir / "model.safetensors").read_bytes())
    with pytest.raises(FirpCheckpointError, match="fc.weight has shape"):
        export_eagle3_for_vllm(bad, micro_models.model, tmp_path / "out")
