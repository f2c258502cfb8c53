"""The compute-dtype choice for every CPU kind (no such hardware needed) and that nothing defaults to bf16
where the CPU only emulates it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from vllm_firp.core import precision
from vllm_firp.core.precision import CpuInfo, model_dtype, resolve_dtype

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


def cpu(capability: str, avx512_bf16: bool = False, amx_bf16: bool = False, amx_fp16: bool = False) -> CpuInfo:
    return CpuInfo("test cpu", capability, avx512_bf16, amx_bf16, amx_fp16)


# (cpu, auto for from-scratch work, auto for a bf16 checkpoint, auto for an fp16 checkpoint)
CASES = {
    "avx2 (EPYC, no bf16)": (cpu("AVX2"), FP32, FP32, FP32),
    "avx512 without bf16 (Skylake)": (cpu("AVX512"), FP32, FP32, FP32),
    "avx512-bf16 (Cooper Lake, Zen 4)": (cpu("AVX512", avx512_bf16=True), BF16, BF16, FP32),
    "amx (Sapphire Rapids)": (cpu("AVX512", avx512_bf16=True, amx_bf16=True), BF16, BF16, FP32),
    "amx-fp16 (Granite Rapids)": (cpu("AVX512", avx512_bf16=True, amx_bf16=True, amx_fp16=True), BF16, BF16, FP16),
    "no avx": (cpu("NO AVX"), FP32, FP32, FP32),
    "default (arm, ...)": (cpu("DEFAULT"), FP32, FP32, FP32),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_auto_dtype_per_cpu(name: str) -> None:
    info, scratch, saved_bf16, saved_fp16 = CASES[name]
    assert resolve_dtype("auto", cpu=info, env={}) == scratch
    assert resolve_dtype(None, cpu=info, env={}) == scratch
    assert resolve_dtype("auto", saved="bfloat16", cpu=info, env={}) == saved_bf16
    assert resolve_dtype("auto", saved=FP16, cpu=info, env={}) == saved_fp16
    assert resolve_dtype("auto", saved="float32", cpu=info, env={}) == FP32  # never downcasts a checkpoint
    assert (BF16 in info.native()) == (scratch == BF16) == info.to_dict()["native_bf16"]


def test_explicit_flag_beats_environment_beats_hardware() -> None:
    avx2, amx = CASES["avx2 (EPYC, no bf16)"][0], CASES["amx (Sapphire Rapids)"][0]
    assert resolve_dtype("bf16", cpu=avx2, env={}) == BF16  # asked for: honoured even where slow
    assert resolve_dtype("float32", saved="bfloat16", cpu=amx, env={}) == FP32
    assert resolve_dtype("auto", cpu=avx2, env={precision.ENV_VAR: "bfloat16"}) == BF16
    assert resolve_dtype("auto", cpu=amx, env={precision.ENV_VAR: "fp32"}) == FP32
    assert resolve_dtype("float16", cpu=amx, env={precision.ENV_VAR: "fp32"}) == FP16
    assert resolve_dtype("auto", cpu=amx, env={precision.ENV_VAR: "auto"}) == BF16
    assert resolve_dtype(FP32, cpu=amx, env={}) == FP32


def test_bad_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", env={})
    with pytest.raises(ValueError, match=r"\$VLLM_FIRP_DTYPE: unknown dtype 'bf61'"):
        resolve_dtype("auto", env={precision.ENV_VAR: "bf61"})
    with pytest.raises(ValueError, match="unsupported dtype"):
        resolve_dtype(torch.int8, env={})


def test_this_machine_is_read_as_torch_sees_it() -> None:
    info = precision.cpu_info()
    assert info.capability == torch.backends.cpu.get_cpu_capability()
    assert (BF16 in info.native()) == (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    if info.capability in ("AVX2", "DEFAULT", "NO AVX"):
        assert BF16 not in info.native()


def test_checkpoint_dtype_is_read_from_its_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"dtype": "bfloat16"}))
    assert precision.checkpoint_dtype(tmp_path) == BF16
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "float32"}))
    assert precision.checkpoint_dtype(tmp_path) == FP32
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"dtype": "float16"}}))
    assert precision.checkpoint_dtype(tmp_path) == FP16
    assert precision.checkpoint_dtype(tmp_path / "missing") is None


# ------------------------------------------------------- nothing computes in bf16 on an AVX2 CPU by default


@pytest.fixture
def avx2(monkeypatch: pytest.MonkeyPatch) -> CpuInfo:
    info = CASES["avx2 (EPYC, no bf16)"][0]
    monkeypatch.setattr(precision, "cpu_info", lambda: info)
    monkeypatch.delenv(precision.ENV_VAR, raising=False)
    return info


def _bf16_checkpoint(directory: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(cfg).to(BF16).save_pretrained(directory)
    assert precision.checkpoint_dtype(directory) == BF16
    return directory


def test_avx2_upcasts_a_bf16_checkpoint_everywhere_it_is_loaded(avx2: CpuInfo, tmp_path: Path) -> None:
    from vllm_firp_training.data import load_base_model

    from vllm_firp.core import FirpConfig, FirpHeads
    from vllm_firp.engine.engine import FirpEngine

    model_dir = _bf16_checkpoint(tmp_path / "model")
    heads_dir = tmp_path / "heads"
    FirpHeads(FirpConfig.for_model(load_base_model(str(model_dir)).config, 2)).to(BF16).save_pretrained(heads_dir)
    assert model_dtype(model_dir) == FP32
    assert load_base_model(str(model_dir)).dtype == FP32
    engine = FirpEngine.from_pretrained(model_dir, heads_dir)
    assert engine.model.dtype == FP32 and next(engine.heads.parameters()).dtype == FP32
    assert FirpEngine.from_pretrained(model_dir, dtype="bfloat16").model.dtype == BF16  # unless asked for


def test_avx2_reference_builds_and_heads_run_in_fp32(avx2: CpuInfo) -> None:
    from vllm_firp_training import reference_model as rm

    for preset in rm.PRESETS.values():
        assert preset.train_dtype == "auto" and rm.train_dtype(preset) == FP32
        assert rm.run_dtype(preset) == FP32  # small is saved in bf16: upcast


def test_reference_cache_keys_follow_the_training_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model (and heads) trained in fp32 is not the bf16-trained one: they get separate cache entries."""
    from vllm_firp_training import reference_heads as rh
    from vllm_firp_training import reference_model as rm

    monkeypatch.delenv(precision.ENV_VAR, raising=False)
    paths = {}
    for name in ("avx2 (EPYC, no bf16)", "amx (Sapphire Rapids)"):
        monkeypatch.setattr(precision, "cpu_info", lambda info=CASES[name][0]: info)
        paths[name] = (rm.reference_model_dir("micro"), rm.reference_model_dir("small"),
                       rh.reference_heads_dir("small"), rh.reference_data_dir("small", rh.RECIPES["small"]))
    for a, b in zip(*paths.values(), strict=True):
        assert a != b


def _all_dtype_flags() -> dict[str, argparse.Action]:
    from vllm_firp_training import evaluate, generate_data, train

    from benchmarks import cost_curve, run, vllm_throughput
    from vllm_firp import cli

    modules = (cli, train, evaluate, generate_data, run, vllm_throughput, cost_curve)
    parsers = {m.__name__: m.build_parser() for m in modules}
    out = {}
    for name, parser in parsers.items():
        stack = [parser]
        while stack:
            p = stack.pop()
            for action in p._actions:
                if "--dtype" in action.option_strings:
                    out[f"{name} {p.prog}"] = action
                if isinstance(action, argparse._SubParsersAction):
                    stack.extend(action.choices.values())
    return out


def test_every_dtype_flag_defaults_to_auto() -> None:
    flags = _all_dtype_flags()
    assert len(flags) >= 7, sorted(flags)
    for name, action in flags.items():
        assert action.default == "auto", name
        assert "auto" in action.choices and "bfloat16" in action.choices, name
