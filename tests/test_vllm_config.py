"""Config-time behaviour of method 'firp' (no engine is started): what is built, and what is refused."""

import json
from pathlib import Path

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]' or the CPU build)")
pytestmark = pytest.mark.vllm

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from tests.devmodels import default_cache_dir, identity_heads, tiny_llama  # noqa: E402
from vllm_firp.core import FirpConfig, FirpHeads  # noqa: E402
from vllm_firp.vllm_plugin import patches  # noqa: E402


@pytest.fixture(scope="module")
def model() -> str:
    patches.apply()
    return str(tiny_llama(default_cache_dir() / "tiny-llama"))


@pytest.fixture(scope="module")
def heads(model) -> str:
    return str(identity_heads(default_cache_dir() / "identity-heads-tiny-llama-k3", model, 3))


def engine_config(model: str, spec: dict | None, **kw):
    from vllm.engine.arg_utils import EngineArgs

    args = EngineArgs(model=model, speculative_config=spec, **(dict(enforce_eager=True, max_model_len=256,
                                                                    dtype="float32") | kw))
    return args.create_engine_config()


def copy_heads(src: str, dst: Path, **config_changes) -> Path:
    """A copy of a heads dir with config.json fields changed (weights resized to match K)."""
    cfg = FirpConfig.load(src).to_dict() | config_changes
    FirpHeads(FirpConfig.from_dict(cfg)).save_pretrained(dst)
    return dst


def test_firp_config_is_built_from_the_heads(model, heads):
    vc = engine_config(model, {"method": "firp", "model": heads})
    sc = vc.speculative_config
    t = FirpConfig.load(heads).inject_layers[0]
    assert sc.method == "firp" and sc.num_speculative_tokens == 3  # defaults to the heads' K
    assert sc.model == heads
    assert vc.num_lookahead_tokens == 3
    assert vc.use_v2_model_runner is False
    assert "speculative method 'firp'" in vc._get_v2_model_runner_unsupported_features()
    assert sc.draft_model_config is not sc.target_model_config
    assert sc.draft_model_config.hf_config is not sc.target_model_config.hf_config
    assert sc.draft_model_config.hf_config.eagle_aux_hidden_state_layer_ids == [t]
    assert not hasattr(sc.target_model_config.hf_config, "firp")
    assert vc.scheduler_config.async_scheduling is False


def test_fewer_speculative_tokens_than_k(model, heads):
    assert engine_config(model, {"method": "firp", "model": heads, "num_speculative_tokens": 2}).num_lookahead_tokens == 2


def test_other_methods_are_untouched(model):
    vc = engine_config(model, {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3})
    assert vc.num_lookahead_tokens == 0
    assert "firp" not in vc.speculative_config.compute_hash()
    assert engine_config(model, None).num_lookahead_tokens == 0


def test_hash_depends_on_inject_layer(model, heads, tmp_path):
    other = copy_heads(heads, tmp_path / "t1", inject_layers=[1, 1, 1])
    a = engine_config(model, {"method": "firp", "model": heads}).speculative_config.compute_hash()
    b = engine_config(model, {"method": "firp", "model": str(other)}).speculative_config.compute_hash()
    assert a != b


def test_cli_forms(model, heads):
    """`vllm serve MODEL --spec-method firp --spec-model H --spec-tokens 2` and `-sc '{...}'` parse to FIRP."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser())
    common = [model, "--enforce-eager", "--max-model-len", "256", "--dtype", "float32"]
    short = parser.parse_args(common + ["--spec-method", "firp", "--spec-model", heads, "--spec-tokens", "2"])
    sc_json = json.dumps({"method": "firp", "model": heads})
    long = parser.parse_args(common + ["--speculative-config", sc_json])
    for args, k in ((short, 2), (long, 3)):
        args.model = args.model_tag
        sc = AsyncEngineArgs.from_cli_args(args).create_engine_config().speculative_config
        assert (sc.method, sc.num_speculative_tokens, sc.model) == ("firp", k, heads)


# ------------------------------------------------------------------------------------------ refusals
def _nan_heads(heads: str, d: Path) -> Path:
    copy_heads(heads, d)
    t = load_file(str(d / "model.safetensors"))
    t["proj.2.weight"][0, 0] = float("nan")
    save_file(t, str(d / "model.safetensors"))
    return d


def _missing_tensor(heads: str, d: Path) -> Path:
    copy_heads(heads, d)
    t = load_file(str(d / "model.safetensors"))
    del t["proj.3.bias"]
    save_file(t, str(d / "model.safetensors"))
    return d


def _pickle(heads: str, d: Path) -> Path:
    copy_heads(heads, d)
    torch.save({}, d / "pytorch_model.bin")
    return d


BAD_HEADS = {
    "missing-dir": (lambda h, d: d / "nope", "does not exist"),
    "nan": (_nan_heads, "NaN or Inf"),
    "missing-tensor": (_missing_tensor, r"lacks tensor\(s\) \['proj.3.bias'\]"),
    "pickle": (_pickle, "refusing pickle weight file"),
    "hidden-size": (lambda h, d: copy_heads(h, d, hidden_size=64), "hidden_size: heads have 64, model has 128"),
    "layers": (lambda h, d: copy_heads(h, d, num_hidden_layers=6, inject_layers=[3, 3, 3]),
               "num_hidden_layers: heads have 6, model has 4"),
    "vocab": (lambda h, d: copy_heads(h, d, vocab_size=1000), "vocab_size: heads have 1000"),
    "per-token-layers": (lambda h, d: copy_heads(h, d, inject_layers=[1, 2, 3]),
                         "different layers .* reference engine"),
    "no-pseudo-attention": (lambda h, d: copy_heads(h, d, pseudo_attend_each_other=False),
                            "pseudo_attend_each_other=false"),
    "not-firp": (lambda h, d: (d.mkdir(), (d / "config.json").write_text('{"model_type": "llama"}'), d)[-1],
                 "not a FIRP heads config"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADS))
def test_bad_heads_are_refused_at_config_time(model, heads, tmp_path, case):
    make, message = BAD_HEADS[case]
    bad = make(heads, tmp_path / case)
    with pytest.raises(ValueError, match=message):
        engine_config(model, {"method": "firp", "model": str(bad)})


@pytest.mark.parametrize("spec,kw,message", [
    ({"num_speculative_tokens": 4}, {}, "exceeds the 3 future tokens"),
    ({}, {"enable_lora": True}, "does not support LoRA"),
    ({"draft_tensor_parallel_size": 2}, {}, "target's tensor parallel size"),
    ({"draft_sample_method": "probabilistic"}, {}, "draft_sample_method are not supported"),
    ({"quantization": "fp8"}, {}, "quantization are not supported"),
    ({"model": None, "num_speculative_tokens": 3}, {}, "needs 'model': the FIRP heads directory"),
    ({}, {"hf_overrides": {"sliding_window": 64}}, r"layers \[4\] of the served model use a 64-token sliding"),
])
def test_unsupported_settings_are_refused(model, heads, spec, kw, message):
    with pytest.raises(ValueError, match=message):
        engine_config(model, {"method": "firp", "model": heads} | spec, **kw)


def test_disabled_sliding_window_is_served(model, heads):
    config = engine_config(model, {"method": "firp", "model": heads}, hf_overrides={"sliding_window": 64},
                           disable_sliding_window=True, max_model_len=64)
    assert config.speculative_config.method == "firp"


def test_heads_trained_for_another_model_warn(model, heads, tmp_path):
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    log = logging.getLogger("vllm.plugins.firp")
    log.addHandler(handler)
    try:
        engine_config(model, {"method": "firp", "model": heads})
        assert not records, [r.getMessage() for r in records]
        other = copy_heads(heads, tmp_path / "other", base_model="/models/another-llama")
        engine_config(model, {"method": "firp", "model": str(other)})
    finally:
        log.removeHandler(handler)
    assert any("trained for base model /models/another-llama" in r.getMessage() for r in records)


def test_emulated_bf16_on_cpu_is_warned_about(model, heads, caplog, monkeypatch):
    """bf16 on a CPU without native bf16 swamps any drafting speedup: the user is told to pass float32."""
    from vllm_firp.core import precision

    spec = {"method": "firp", "model": heads}
    for avx512_bf16, warned in ((False, True), (True, False)):
        monkeypatch.setattr(precision, "cpu_info", lambda b=avx512_bf16: precision.CpuInfo("cpu", "AVX2", b, False, False))
        caplog.clear()
        with caplog.at_level("WARNING", logger="vllm.plugins.firp"):
            engine_config(model, spec, dtype="bfloat16")
        assert ("only emulates" in caplog.text) == warned, caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="vllm.plugins.firp"):
        engine_config(model, spec, dtype="float32")
    assert "only emulates" not in caplog.text
