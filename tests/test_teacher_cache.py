"""The cached teacher gives the same drafts and loss as the teacher run at every step; train uses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from vllm_firp_training import generate_data, teacher_cache, train
from vllm_firp_training.data import DataError, load_base_model, load_sequences
from vllm_firp_training.kinds import cached_draft_outputs, draft_outputs, new_heads
from vllm_firp_training.objective import distill_loss

from tests.test_training import save_model, write_prompts
from vllm_firp.engine.forward import ModelParts


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("teacher_cache")
    save_model(root / "model")
    write_prompts(root / "prompts.jsonl", 12)
    assert generate_data.main(["--model", str(root / "model"), "--prompts", str(root / "prompts.jsonl"), "--out",
                               str(root / "data"), "--backend", "hf", "--max-new-tokens", "20", "--quiet"]) == 0
    assert teacher_cache.main(["--model", str(root / "model"), "--data", str(root / "data"), "--out",
                               str(root / "cache"), "--layers", "1,2", "--kv-from", "1", "--store-dtype", "float32",
                               "--top-k", "48", "--holdout-percent", "0", "--quiet"]) == 0
    assert teacher_cache.main(["--model", str(root / "model"), "--data", str(root / "data"), "--out",
                               str(root / "compact"), "--layers", "1", "--compact", "--store-dtype", "float32",
                               "--top-k", "48", "--holdout-percent", "0", "--quiet"]) == 0
    return root


def _trained_heads(method: str, config, **kw):
    torch.manual_seed(0)
    heads = new_heads(method, config, 3, **kw)
    with torch.no_grad():  # away from the identity/zero init, so a wrong row or mask shows
        for p in heads.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return heads


@pytest.mark.parametrize(("method", "kw"), [
    ("firp", {"inject_layer": 1}), ("firp", {"inject_layer": 2}), ("firp", {"inject_layer": [1, 2, 2]}),
    ("firp", {"inject_layer": [1, 2, 2], "source": "anchor"}), ("medusa", {}),
    ("eagle3", {"aux_layer_ids": [0, 1, 2]}),
])
@pytest.mark.parametrize("store", ["cache", "compact"])
def test_cached_drafts_equal_the_full_pass(root: Path, method: str, kw: dict, store: str) -> None:
    """Full store (K/V kept) and compact store (layer-1 states + top-k; the rest recomputed) alike."""
    model = load_base_model(str(root / "model"), "float32", attn_implementation="sdpa")
    parts = ModelParts.of(model)
    cache = teacher_cache.TeacherCache(root / store)
    assert cache[0].compact == (store == "compact")
    seqs = load_sequences(root / "data", "train", 0)
    heads = _trained_heads(method, model.config, **kw)
    anchors = torch.tensor([1, 4, 9, 17])
    for i in range(3):
        rec = cache[i]
        assert rec.key == seqs[i].key and rec.ids.tolist() == seqs[i].ids
        dense = draft_outputs(parts, heads, torch.tensor(seqs[i].ids), anchors)
        cached = cached_draft_outputs(parts, heads, rec, anchors)
        torch.testing.assert_close(cached.draft_logits, dense.draft_logits, atol=1e-4, rtol=1e-4)
        assert torch.equal(cached.teacher_greedy(), dense.teacher_greedy())
        w = torch.ones(3)
        # top-48 of a 48-token vocabulary is the whole distribution: the truncated KL is the KL
        tol = 1e-3 if store == "compact" else 1e-4  # the compact store keeps log-probs in fp16
        torch.testing.assert_close(distill_loss(cached, w)[0], distill_loss(dense, w)[0], atol=tol, rtol=tol)


def test_anchor_source_needs_its_layers(root: Path) -> None:
    model = load_base_model(str(root / "model"), "float32", attn_implementation="sdpa")
    heads = new_heads("firp", model.config, 3, inject_layer=[1, 2, 3], source="anchor")
    rec = teacher_cache.TeacherCache(root / "cache")[0]
    with pytest.raises(DataError, match="no hidden states after layer 3"):
        cached_draft_outputs(ModelParts.of(model), heads, rec, torch.tensor([2]))
    with pytest.raises(DataError, match="K/V for layers 2..4"):
        rec.cache_from(0)  # pseudo tokens entering after layer 0 would attend to layer 1's K/V


def test_train_from_cache_learns_like_train_from_data(root: Path) -> None:
    common = ["--model", str(root / "model"), "--inject-layer", "2", "--anchors-per-seq", "0", "--grad-accum", "2",
              "--lr", "0.02", "--warmup", "5", "--holdout-percent", "0", "--steps", "60", "--quiet"]
    a = train.train(train.build_parser().parse_args([*common, "--data", str(root / "data"), "--out",
                                                     str(root / "dense")]))
    b = train.train(train.build_parser().parse_args([*common, "--teacher-cache", str(root / "cache"), "--out",
                                                     str(root / "cached")]))
    assert min(b["final"]["top1"]) > 0.9, (a["final"], b["final"])
    for x, y in zip(a["final"]["top1"], b["final"]["top1"], strict=True):
        assert abs(x - y) < 0.02


def test_bad_caches_are_refused(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a teacher cache"):
        teacher_cache.TeacherCache(tmp_path)
    broken = tmp_path / "cache"
    broken.mkdir()
    (broken / "meta.json").write_text((root / "cache" / "meta.json").read_text())
    (broken / "00000.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DataError, match="unreadable or incomplete"):
        teacher_cache.TeacherCache(broken)[0]
    rc = teacher_cache.main(["--model", str(root / "model"), "--data", str(root / "data"), "--out",
                             str(root / "cache"), "--layers", "1", "--kv-from", "1", "--quiet"])
    assert rc == 2  # other settings than the existing cache: refused, nothing overwritten
    assert len(teacher_cache.TeacherCache(root / "cache")) == 12


def test_a_resumed_build_refuses_changed_data(root: Path, tmp_path: Path, capsys) -> None:
    import shutil

    cache = tmp_path / "compact"
    shutil.copytree(root / "compact", cache)
    first, second = cache / "00000.safetensors", cache / "00001.safetensors"
    first.rename(tmp_path / "swap")
    second.rename(first)
    (tmp_path / "swap").rename(second)  # as if the data's order had changed since the cache was built
    rc = teacher_cache.main(["--model", str(root / "model"), "--data", str(root / "data"), "--out", str(cache),
                             "--layers", "1", "--compact", "--store-dtype", "float32", "--top-k", "48",
                             "--holdout-percent", "0", "--quiet"])
    assert rc == 2 and "the data changed" in capsys.readouterr().err


def test_inject_sweep_trains_evaluates_and_tabulates(root: Path) -> None:
    from vllm_firp_training import inject_sweep

    out = root / "sweep"
    rc = inject_sweep.main(["--model", str(root / "model"), "--teacher-cache", str(root / "cache"), "--data",
                            str(root / "data"), "--out-dir", str(out), "--inject-layers", "1,2", "--baselines",
                            "medusa", "--eval-max-seqs", "4", "--eval-split", "all", "--", "--steps", "20", "--grad-accum", "2",
                            "--anchors-per-seq", "0", "--lr", "0.02", "--warmup", "2", "--holdout-percent", "0"])
    assert rc == 0
    summary = json.loads((out / "sweep.json").read_text())
    assert [r["run"] for r in summary["runs"]] == ["firp-t1", "firp-t2", "medusa"]
    firp = summary["runs"][1]
    assert firp["inject_layer"] == 2 and firp["train_anchors"] > 0 and len(firp["top1"]) == 3
    assert firp["top1"][0] > 0.5, firp  # the permutation future is learnable from layer 2
    assert sorted(map(int, firp["cosine_k1"])) == [2, 3, 4]
    assert (out / "sweep.png").stat().st_size > 0 and "firp-t2" in (out / "sweep.md").read_text()


def test_scaling_curve_trains_each_budget_once_and_plots(root: Path) -> None:
    from vllm_firp_training import scaling_curve

    out = root / "scaling"
    argv = ["--model", str(root / "model"), "--teacher-cache", str(root / "compact"), "--data", str(root / "data"),
            "--mt-bench-data", str(root / "data"), "--eval-split", "all", "--anchors", "200,800",
            "--methods", "firp,medusa", "--inject-layer", "1", "--out", str(out), "--grad-accum", "2",
            "--lr", "0.02", "--eval-seqs", "4"]
    assert scaling_curve.main(argv) == 0
    report = json.loads((out / "scaling.json").read_text())
    rows = {(r["method"], r["anchors"]): r for r in report["rows"]}
    assert set(rows) == {("firp", 200), ("firp", 800), ("medusa", 200), ("medusa", 800)}
    assert rows[("firp", 800)]["steps"] > rows[("firp", 200)]["steps"]
    assert rows[("firp", 800)]["held_out"]["tau_chain"] >= rows[("firp", 200)]["held_out"]["tau_chain"]
    assert (out / "scaling.png").stat().st_size > 0 and "medusa" in (out / "scaling.md").read_text()
    stamp = (out / "firp-800" / "point.json").stat().st_mtime
    assert scaling_curve.main(argv) == 0  # finished points are reused, not retrained
    assert (out / "firp-800" / "point.json").stat().st_mtime == stamp
