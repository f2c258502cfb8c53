"""Contract with vLLM 0.32: every symbol patches.py and cpu_fixes.py touch or rely on is where and what we expect.

If a vLLM upgrade moves or renames any of them, a test here fails and names it; re-read
docs/vllm-integration-notes.md against the new source before touching the version pin.
"""

import importlib
import inspect
from dataclasses import fields
from typing import Literal, get_args, get_origin

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]' or the CPU build)")
pytestmark = pytest.mark.vllm

from vllm_firp.vllm_plugin import config as fc  # noqa: E402
from vllm_firp.vllm_plugin import cpu_fixes, patches  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _plugin():
    assert patches.apply(), "the plugin refused to patch this vLLM"
    assert cpu_fixes.apply(), "the CPU fixes were not applied (VLLM_FIRP_CPU_FIXES=0?)"


def _resolve(module: str, qualname: str):
    if "." not in qualname:  # a module-level function
        mod = importlib.import_module(module)
        assert qualname in mod.__dict__, f"{module}.{qualname} is gone (vLLM {vllm.__version__})"
        return mod.__dict__[qualname]
    owner_name, attr = qualname.split(".")
    owner = getattr(importlib.import_module(module), owner_name, None)
    assert owner is not None, f"{module}.{owner_name} is gone (vLLM {vllm.__version__})"
    if attr in getattr(owner, "__dataclass_fields__", {}):
        return owner.__dataclass_fields__[attr]
    assert attr in owner.__dict__, f"{module}.{qualname} is gone or inherited now (vLLM {vllm.__version__})"
    return owner.__dict__[attr]


def _original(owner: type, name: str):
    """The unpatched function (a property's getter for properties)."""
    attr = owner.__dict__[name]
    fn = attr.fget if isinstance(attr, property) else attr
    orig = getattr(fn, "__wrapped_original__", attr)
    return orig.fget if isinstance(orig, property) else orig


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_vllm_version_is_the_pinned_one():
    assert vllm.__version__.startswith(patches.SUPPORTED_VLLM), (
        f"vllm-firp is written against vLLM {patches.SUPPORTED_VLLM}x, found {vllm.__version__}: re-check "
        "every row of the table in vllm_firp/vllm_plugin/patches.py"
    )
    assert patches.version_ok("0.32.0") and not patches.version_ok("0.33.0")


def test_entry_point_is_registered():
    from importlib.metadata import entry_points

    from vllm.plugins import DEFAULT_PLUGINS_GROUP

    eps = {ep.name: ep.value for ep in entry_points(group=DEFAULT_PLUGINS_GROUP)}
    assert eps.get("firp") == "vllm_firp.vllm_plugin:register", f"reinstall the project (pip install -e .): {eps}"


def test_untested_vllm_version_is_refused_with_a_warning(monkeypatch):
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    monkeypatch.setattr(vllm, "__version__", "0.99.0")
    monkeypatch.delenv(patches.FORCE_ENV, raising=False)
    patches.logger.addHandler(handler)
    try:
        assert patches.apply() is False
    finally:
        patches.logger.removeHandler(handler)
    assert any("speculative method 'firp' is NOT available" in r.getMessage() for r in records)


@pytest.mark.parametrize("module,qualname", patches.PATCHED + cpu_fixes.PATCHED)
def test_patched_symbol_exists_and_is_wrapped_once(module, qualname):
    obj = _resolve(module, qualname)
    if qualname.endswith(".method"):
        return  # a dataclass field, checked below
    fn = obj.fget if isinstance(obj, property) else obj
    assert getattr(fn, "__firp_patched__", False), f"{module}.{qualname} is not patched"
    assert not getattr(fn.__wrapped_original__, "__firp_patched__", False), "patched twice"
    patches.apply()  # idempotent
    cpu_fixes.apply()
    again = _resolve(module, qualname)
    assert (again.fget if isinstance(again, property) else again) is fn


def _expand_cases():
    import torch

    cu = torch.tensor([0, 3, 5, 5], dtype=torch.int32)  # tokens per request: 0, 3, 2, 0
    yield torch.tensor([0.3, -1.0, 0.8, 1.0]), cu, -1, 1, [1.0, 1.0, 1.0, 0.8, 0.8]  # temperature
    yield torch.tensor([5, 0, 7, 9], dtype=torch.int32), cu, 0, 0, [0, 0, 0, 7, 7]  # top-k (int32)
    yield torch.tensor([5, 0, 7, 9]), cu.long(), 0, 0, [0, 0, 0, 7, 7]


def test_cpu_expand_kernel_fix_expands_every_dtype():
    """cpu_fixes row 1: what the Triton expand_kernel computes, for float32, int32 and int64 outputs."""
    import torch

    for x, cu, src, dst, want in _expand_cases():
        out = torch.full((5,), 42, dtype=x.dtype)
        cpu_fixes.expand_kernel_impl(out, x, cu, src, dst, MAX_NUM_TOKENS=128)
        assert out.tolist() == pytest.approx(want), (x.dtype, out.tolist())


def test_cpu_expand_kernel_is_still_broken_upstream():
    """The reason for cpu_fixes row 1. When this fails, vLLM fixed its CPU fallback: drop row 1 of cpu_fixes.py."""
    import torch
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the C++ fallback exists only in vLLM's CPU build")
    from vllm.v1.sample import rejection_sampler

    original = cpu_fixes.expand_kernel_impl.__wrapped_original__
    x, cu, src, dst, want = next(_expand_cases())
    out = torch.full((5,), 42.0)
    original(out, x, cu, src, dst)
    assert out.tolist() != pytest.approx(want), "vLLM's CPU expand_kernel works now: remove cpu_fixes row 1"
    # End to end, as the worker does it: register the platform's overrides, expand through the sampler.
    current_platform.register_triton_kernel_overrides()
    expanded = rejection_sampler.expand_batch_to_tokens(x, cu, len(want), replace_from=src, replace_to=dst)
    assert expanded.tolist() == pytest.approx(want)


def test_cpu_fixes_switch(monkeypatch):
    """VLLM_FIRP_CPU_FIXES: 1 (default) applies the fixes, 0 leaves vLLM as shipped, anything else is refused."""
    monkeypatch.delenv(cpu_fixes.ENV, raising=False)
    assert cpu_fixes.enabled()
    monkeypatch.setenv(cpu_fixes.ENV, "0")
    assert not cpu_fixes.enabled() and cpu_fixes.apply() is False
    monkeypatch.setenv(cpu_fixes.ENV, "yes")
    with pytest.raises(ValueError, match="VLLM_FIRP_CPU_FIXES must be 0 or 1"):
        cpu_fixes.enabled()


def test_cpu_generators_still_cannot_be_rewound_upstream():
    """The reason for cpu_fixes rows 2-3. When this fails, vLLM changed how it rewinds seeded generators after
    a discarded partial-prefill sample: re-read ``_bookkeeping_sync`` and drop or adapt rows 2-3."""
    import torch
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    src = inspect.getsource(_original(GPUModelRunner, "_bookkeeping_sync"))
    assert "gen.set_offset(gen.get_offset() - 4)" in src and "discard_request_mask" in src
    with pytest.raises(RuntimeError, match="does not use offset"):
        torch.Generator("cpu").get_offset()
    sample = inspect.getsource(_original(GPUModelRunner, "_sample"))
    assert "self.sampler(" in sample and "self.rejection_sampler(" in sample


# ---------------------------------------------------------------------------------------------- config
def test_method_literal_extended_for_pydantic_and_cli():
    from vllm.config import SpeculativeConfig
    from vllm.config.speculative import SpeculativeMethod
    from vllm.engine.arg_utils import get_kwargs

    lit = get_args(SpeculativeConfig.__dataclass_fields__["method"].type)[0]
    assert get_origin(lit) is Literal
    assert set(get_args(SpeculativeMethod)) < set(get_args(lit)) and "firp" in get_args(lit)
    assert "firp" not in get_args(SpeculativeMethod), "upstream now has a 'firp' method: drop patch 1"
    assert "firp" in get_kwargs(SpeculativeConfig)["method"]["choices"]
    assert "custom_class" in get_args(SpeculativeMethod)


def test_speculative_config_hooks_we_rely_on():
    from vllm.config import SpeculativeConfig

    names = {f.name for f in fields(SpeculativeConfig)}
    assert {"method", "model", "num_speculative_tokens", "draft_model_config", "draft_parallel_config",
            "target_model_config", "target_parallel_config", "draft_tensor_parallel_size"} <= names
    missing = set(fc.UNUSED_FIELDS) - names
    assert not missing, f"SpeculativeConfig fields renamed/removed: {missing}"
    src = inspect.getsource(_original(SpeculativeConfig, "compute_hash"))
    for m in ("eagle3", "extract_hidden_states", "dflash", "dspark"):
        assert f'"{m}"' in src
    assert "firp" not in src
    post = inspect.getsource(_original(SpeculativeConfig, "__post_init__"))
    assert 'elif self.method == "custom_class":' in post
    assert "use_eagle" in dir(SpeculativeConfig) and "uses_draft_model" in dir(SpeculativeConfig)


def test_vllm_config_hooks_we_rely_on():
    from vllm.config import VllmConfig

    assert isinstance(VllmConfig.__dict__["num_lookahead_tokens"], property)
    src = inspect.getsource(_original(VllmConfig, "num_lookahead_tokens"))
    assert "use_eagle()" in src and "return 0" in src
    v2 = inspect.getsource(VllmConfig.__dict__["use_v2_model_runner"].fget)
    assert "_get_v2_model_runner_unsupported_features()" in v2
    post = inspect.getsource(_original(VllmConfig, "__post_init__"))
    assert "_validate_v2_model_runner()" in post
    from vllm.v1.core.sched.scheduler import Scheduler

    assert "vllm_config.num_lookahead_tokens" in inspect.getsource(Scheduler.__init__)


def test_cli_spec_shorthands_exist():
    from vllm.engine.arg_utils import EngineArgs

    assert {"spec_method", "spec_model", "spec_tokens"} <= {f.name for f in fields(EngineArgs)}
    src = inspect.getsource(EngineArgs.add_cli_args)
    for flag in ("--speculative-config", "--spec-method", "--spec-model", "--spec-tokens"):
        assert f'"{flag}"' in src


# ---------------------------------------------------------------------------------------------- runner
def test_runner_construction_path():
    from vllm.v1.spec_decode.custom_class_proposer import create_custom_proposer
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    src = inspect.getsource(_original(GPUModelRunner, "__init__"))
    assert 'self.speculative_config.method == "custom_class"' in src
    assert "create_custom_proposer(" in src and "Unknown speculative decoding method" in src
    assert "self.use_aux_hidden_state_outputs = False" in src
    assert _params(create_custom_proposer) == ["vllm_config"]
    assert issubclass(CPUModelRunner, GPUModelRunner)
    assert "super().__init__(vllm_config, device)" in inspect.getsource(CPUModelRunner.__init__)
    for name in ("initialize_metadata_builders", "propose_draft_token_ids", "sample_tokens"):
        assert name not in CPUModelRunner.__dict__, f"CPUModelRunner now overrides {name}"
    load = inspect.getsource(CPUModelRunner.load_model)
    assert "self.drafter.load_model(self.model)" in load and "_setup_eagle3_aux_hidden_state_outputs" in load
    gpu_load = inspect.getsource(GPUModelRunner.load_model)
    assert "self.drafter.load_model(self.model)" in gpu_load


def test_propose_draft_token_ids_contract():
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    assert _params(_original(GPUModelRunner, "propose_draft_token_ids")) == [
        "self", "scheduler_output", "sampled_token_ids", "sampling_metadata", "hidden_states",
        "sample_hidden_states", "aux_hidden_states", "spec_decode_metadata", "common_attn_metadata",
        "slot_mappings",
    ]
    assert _params(GPUModelRunner.propose_draft_token_ids) == _params(
        _original(GPUModelRunner, "propose_draft_token_ids")
    )
    src = inspect.getsource(GPUModelRunner.sample_tokens)
    assert "draft_after_bookkeeping" in src and "propose_draft_token_ids(valid_sampled_token_ids)" in src
    assert "drafter_runs_model_forward = (" in src and "_input_fits_in_drafter" in src
    fits = inspect.getsource(GPUModelRunner._input_fits_in_drafter)
    assert "effective_drafter_max_model_len" in fits


def test_metadata_builders_and_attention_groups():
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.utils import AttentionGroup

    orig = _original(GPUModelRunner, "initialize_metadata_builders")
    assert _params(orig) == ["self", "kv_cache_config", "kernel_block_sizes"]
    assert {"backend", "layer_names", "kv_cache_spec", "kv_cache_group_id"} <= {f.name for f in fields(AttentionGroup)}
    assert _params(AttentionGroup.create_metadata_builders)[:4] == ["self", "vllm_config", "device", "kernel_block_size"]
    assert _params(AttentionGroup.build_metadata)[:2] == ["self", "common_attn_metadata"]


def test_aux_hidden_state_path():
    from vllm.model_executor.models.interfaces import EagleModelMixin
    from vllm.model_executor.models.llama import LlamaModel
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    src = inspect.getsource(GPUModelRunner._get_eagle3_aux_layers_from_config)
    assert "eagle_aux_hidden_state_layer_ids" in src
    fwd = inspect.getsource(LlamaModel.forward)
    assert "aux_hidden_states, idx + 1, hidden_states, residual" in fwd  # aux id t = stream after t layers
    assert "self.norm(hidden_states, residual)" in fwd
    assert issubclass(LlamaModel, EagleModelMixin)
    add = inspect.getsource(EagleModelMixin._maybe_add_hidden_state)
    assert "hidden_states + residual" in add


@pytest.mark.parametrize("module,cls", [
    ("vllm.model_executor.models.llama", "LlamaDecoderLayer"),
    ("vllm.model_executor.models.qwen2", "Qwen2DecoderLayer"),
    ("vllm.model_executor.models.qwen3", "Qwen3DecoderLayer"),
])
def test_decoder_layer_signature(module, cls):
    layer = getattr(importlib.import_module(module), cls)
    assert _params(layer.forward)[:4] == ["self", "positions", "hidden_states", "residual"]
    assert "if residual is None:" in inspect.getsource(layer.forward)


def test_attention_context_contract():
    from vllm.forward_context import set_forward_context
    from vllm.model_executor.layers.attention.attention import get_attention_context
    from vllm.v1.attention.backend import CommonAttentionMetadata
    from vllm.v1.sample import rejection_sampler

    assert {"attn_metadata", "vllm_config", "num_tokens", "slot_mapping"} <= set(_params(set_forward_context))
    assert "slot_mapping.get(layer_name)" in inspect.getsource(get_attention_context)
    names = {f.name for f in fields(CommonAttentionMetadata)}
    assert {"query_start_loc", "query_start_loc_cpu", "seq_lens", "num_reqs", "num_actual_tokens",
            "max_query_len", "max_seq_len", "block_table_tensor", "slot_mapping", "causal", "positions",
            "seq_lens_cpu_upper_bound"} <= names
    assert rejection_sampler.MAX_SPEC_LEN == fc.MAX_SPEC_LEN


def test_drafts_for_unknown_prefill_chunks_are_dropped_by_the_scheduler():
    from vllm.v1.core.sched.scheduler import Scheduler

    src = inspect.getsource(Scheduler.update_draft_token_ids)
    assert "request.is_prefill_chunk" in src
