"""Train FIRP projection heads (or the Medusa / EAGLE-3 baselines) on a frozen HF causal LM.

    python -m vllm_firp_training.train --model MODEL --data data/ --out heads/ --steps 2000
    torchrun --nproc-per-node 8 -m training.train ...        # data-parallel, same flags

Each micro-batch is one sequence: one forward (teacher + student, see training.objective), loss
KL(teacher || draft) over sampled anchors, gradients only into the heads. Data order and anchors are
pure functions of (seed, global micro-batch index), so a resumed run replays exactly what the
uninterrupted run would have done. ``--out`` receives only config.json + model.safetensors (loadable
with ``FirpHeads.from_pretrained`` / the vLLM plugin); trainer checkpoints go to ``--checkpoint-dir``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vllm_firp.core.precision import DTYPE_CHOICES, ENV_VAR, dtype_name
from vllm_firp.engine.forward import ModelParts

from .checkpoint import (
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    save_heads_atomic,
)
from .data import DataError, TokenSequence, load_frozen_model, load_sequences
from .kinds import METHODS, cached_draft_outputs, draft_outputs, new_heads
from .objective import PairStats, distill_loss, sample_anchors
from .teacher_cache import TeacherCache


def _int_list(text: str) -> int | list[int]:
    vals = [int(v) for v in text.split(",")]
    return vals[0] if len(vals) == 1 else vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="firp train",
        description="Train FIRP pseudo-token projections (or Medusa heads, or an EAGLE-3 draft) on a frozen "
        "causal LM by distilling "
        "the model's own future next-token distributions.",
    )
    g = p.add_argument_group("inputs and outputs")
    g.add_argument("--model", required=True, help="HF model directory or id (frozen base model)")
    g.add_argument("--data", type=Path, help="data directory from vllm_firp_training.generate_data")
    g.add_argument("--teacher-cache", type=Path, help="train from a cache built by training.teacher_cache (the "
                   "teacher pass done once) instead of --data")
    g.add_argument("--out", required=True, type=Path, help="final heads directory (config.json + model.safetensors)")
    g.add_argument("--checkpoint-dir", type=Path, help="trainer checkpoints (default: <out>-checkpoints)")
    g.add_argument("--resume", nargs="?", const="latest", help="resume from a checkpoint directory, or the "
                   "newest one in --checkpoint-dir when given without a value")
    g.add_argument("--save-every", type=int, default=0, help="checkpoint every N optimizer steps (0 = only at the end)")
    g.add_argument("--keep-checkpoints", type=int, default=2, help="newest checkpoints to keep (0 = all)")

    g = p.add_argument_group("heads")
    g.add_argument("--method", choices=METHODS, default="firp", help="firp (default), or the medusa or eagle3 "
                   "baseline (eagle3: K = its test-time-training steps = the serving num_speculative_tokens)")
    g.add_argument("--num-future-tokens", "-K", type=int, default=3, help="K: drafted tokens per step (default 3)")
    g.add_argument("--inject-layer", type=_int_list, help="FIRP: layer t after which pseudo tokens enter; one int "
                   "for all, or a comma list t_1,..,t_K (default: ceil(0.75 * num_layers))")
    g.add_argument("--source", choices=["previous", "anchor"], default="previous", help="FIRP: pseudo k is "
                   "projected from pseudo k-1 (previous, default) or from the anchor (anchor)")
    g.add_argument("--residual", action="store_true", help="FIRP: z_k = s_k + W_k s_k + b_k (W_k starts at 0)")
    g.add_argument("--no-bias", action="store_true", help="FIRP: projections without bias")
    g.add_argument("--no-pseudo-attend-each-other", action="store_true", help="FIRP ablation: pseudo k does not "
                   "attend to pseudo 1..k-1 of its anchor")
    g.add_argument("--aux-layers", type=_int_list, help="EAGLE-3: strictly increasing target layer ids whose "
                   "hidden states the draft reads (default: vLLM's 2,L//2,L-3 when distinct, else 1,L//2,L-1)")
    g.add_argument("--norm-before-residual", action="store_true", help="EAGLE-3: the draft layer's residual is the "
                   "normed fc state (vLLM's speculators-config default) rather than the raw one (its plain default)")

    g = p.add_argument_group("objective")
    g.add_argument("--loss-weights", help="comma list of K weights w_k for KL(p_{i+k} || q_{i,k}) (default all 1)")
    g.add_argument("--anchors-per-seq", type=int, default=64, help="anchors sampled per sequence (0 = every "
                   "position; default 64)")
    g.add_argument("--include-prompt", action="store_true", help="also anchor inside the prompt (default: "
                   "response only, from the last prompt token on)")
    g.add_argument("--seq-len", type=int, default=1024, help="use the last N tokens of each sequence (default 1024)")
    g.add_argument("--holdout-percent", type=float, default=5.0, help="percent of sequences (by key hash) held "
                   "out for training.evaluate and never trained on (default 5)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default 1e-3)")
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine decays to lr * this (default 0.1)")
    g.add_argument("--warmup", type=int, default=50, help="linear warmup steps (default 50)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0 = off; default 1)")
    g.add_argument("--steps", type=int, help="optimizer steps (overrides --epochs)")
    g.add_argument("--epochs", type=float, default=1.0, help="passes over the training sequences (default 1)")
    g.add_argument("--grad-accum", type=int, default=8, help="sequences per optimizer step per process (default 8)")
    g.add_argument("--seed", type=int, default=0, help="seed for init, data order and anchors (default 0)")

    g = p.add_argument_group("runtime")
    g.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help=f"frozen base model's dtype (heads train in fp32); auto (default, or ${ENV_VAR}) = as saved "
                   "where this CPU computes it natively, else float32")
    g.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda")
    g.add_argument("--threads", type=int, help="torch CPU threads")
    g.add_argument("--log-every", type=int, default=10, help="progress/log interval in steps (default 10)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# ------------------------------------------------------------------------------------- distributed


def _init_distributed(device_arg: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the torchrun process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(f"cuda:{local}" if device_arg == "cuda" else device_arg)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), world, device
    return 0, 1, device


def _all_reduce(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------------------------------- schedule


def lr_lambda(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at the last step."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    return f


class DataOrder:
    """Global micro-batch g -> sequence: a fresh seeded permutation per epoch (stateless, so resumable)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self._epoch, self._perm = n, seed, -1, torch.empty(0)

    def __call__(self, g: int) -> int:
        epoch, pos = divmod(g, self.n)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return int(self._perm[pos])


# ------------------------------------------------------------------------------------------- train


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run training as configured by ``args`` (see :func:`build_parser`); returns a summary."""
    from tqdm import tqdm

    t_start = time.perf_counter()
    rank, world, device = _init_distributed(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    ckpt_root = args.checkpoint_dir or args.out.with_name(args.out.name + "-checkpoints")

    if (args.data is None) == (args.teacher_cache is None):
        raise ValueError("give exactly one of --data (teacher run at every step) and --teacher-cache")
    cache = TeacherCache(args.teacher_cache) if args.teacher_cache else None
    seqs: Sequence[Any] = cache if cache is not None else [
        s.window(args.seq_len) for s in load_sequences(args.data, "train", args.holdout_percent)]
    model = load_frozen_model(args.model, args.dtype, device)
    parts = ModelParts.of(model)
    if cache is not None:
        cache.check_model(model.config)
    else:
        _check_data(seqs, model.config)

    K = args.num_future_tokens
    firp_kw = dict(inject_layer=args.inject_layer, source=args.source, residual=args.residual,
                   bias=not args.no_bias, pseudo_attend_each_other=not args.no_pseudo_attend_each_other)
    aux = [args.aux_layers] if isinstance(args.aux_layers, int) else args.aux_layers
    eagle3_kw = dict(aux_layer_ids=aux, norm_before_residual=args.norm_before_residual)
    heads = new_heads(args.method, model.config, K, **firp_kw, **eagle3_kw).to(device).train()
    heads.config.base_model = str(args.model)
    weights = _loss_weights(args.loss_weights, K)
    total = args.steps or max(1, math.ceil(args.epochs * len(seqs) / (args.grad_accum * world)))
    opt = torch.optim.AdamW(heads.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(args.warmup, total, args.min_lr_ratio))

    start = 0
    if args.resume:
        path = resolve_checkpoint(args.resume, ckpt_root)
        state = load_checkpoint(path, heads)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(state["step"])
        if int(state["total_steps"]) != total:
            print(f"warning: resuming a {state['total_steps']}-step run as a {total}-step run", file=sys.stderr)

    order = DataOrder(len(seqs), args.seed)
    window = PairStats.zeros(K)
    loss_sum, loss_n = 0.0, 0
    anchors_seen = 0
    last: dict[str, Any] = {}
    log_path = ckpt_root / "train_log.jsonl"
    bar = tqdm(range(start, total), initial=start, total=total, desc=f"train {args.method}",
               disable=args.quiet or rank != 0, file=sys.stderr)
    for step in bar:
        for j in range(args.grad_accum):
            g = (step * args.grad_accum + j) * world + rank
            seq = seqs[order(g)]
            gen = torch.Generator().manual_seed(args.seed * 1_000_003 + g)
            anchors = sample_anchors(len(seq.ids), seq.prompt_len, args.anchors_per_seq, gen, args.include_prompt)
            anchors_seen += anchors.numel()
            if cache is not None:
                out = cached_draft_outputs(parts, heads, seq.to(device, model.dtype), anchors)
            else:
                out = draft_outputs(parts, heads, torch.tensor(seq.ids, device=device), anchors)
            loss, stats = distill_loss(out, weights)
            (loss / args.grad_accum).backward()
            window.add(stats)
            loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
        if world > 1:
            for p in heads.parameters():
                if p.grad is not None:
                    _all_reduce(p.grad, world).div_(world)
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(heads.parameters(), args.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

        done = step + 1
        if done % args.log_every == 0 or done == total:
            last = _log_window(window, loss_sum, loss_n, world, device, done, sched.get_last_lr()[0], t_start)
            window, loss_sum, loss_n = PairStats.zeros(K), 0.0, 0
            bar.set_postfix(loss=f"{last['loss']:.3f}", acc="/".join(f"{a:.2f}" for a in last["top1"]))
            if rank == 0:
                ckpt_root.mkdir(parents=True, exist_ok=True)
                with open(log_path, "a") as fh:
                    fh.write(json.dumps(last) + "\n")
        if rank == 0 and ((args.save_every and done % args.save_every == 0) or done == total):
            state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "total_steps": total}
            save_checkpoint(ckpt_root, done, heads, state, args.keep_checkpoints)
        _barrier(world)
    bar.close()

    wall = time.perf_counter() - t_start
    heads.config.training = _recipe(args, len(seqs), total, world, weights, last, wall, model.dtype,
                                    cache.meta if cache is not None else {})
    heads.config.training["anchors_trained"] = int(_all_reduce(torch.tensor([anchors_seen], device=device), world)[0])
    if rank == 0:
        save_heads_atomic(heads.eval(), args.out)
    _barrier(world)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return {"out": str(args.out), "steps": total, "resumed_from": start, "final": last, "wall_time_s": round(wall, 2),
            "checkpoints": [str(p) for p in list_checkpoints(ckpt_root)]}


def _log_window(window: PairStats, loss_sum: float, loss_n: int, world: int, device: torch.device, step: int,
                lr: float, t0: float) -> dict[str, Any]:
    """Metrics since the last log, summed over ranks (on ``device``: NCCL reduces CUDA tensors only)."""
    local = torch.cat([window.as_tensor().flatten(), torch.tensor([loss_sum, loss_n])])
    totals = _all_reduce(local.to(device), world).cpu()
    stats = PairStats.from_tensor(totals[:-2].view(3, -1))
    return {"step": step, "lr": lr, "loss": float(totals[-2] / totals[-1].clamp(min=1)), "kl": stats.mean_kl(),
            "top1": [round(a, 4) for a in stats.accuracy()], "elapsed_s": round(time.perf_counter() - t0, 2)}


def _loss_weights(spec: str | None, K: int) -> torch.Tensor:
    if spec is None:
        return torch.ones(K)
    w = [float(v) for v in spec.split(",")]
    if len(w) != K or any(v < 0 for v in w):
        raise ValueError(f"--loss-weights needs {K} non-negative numbers (one per future token), got {spec!r}")
    return torch.tensor(w)


def _check_data(seqs: Sequence[TokenSequence], model_config: Any) -> None:
    vocab = model_config.vocab_size
    bad = next((s for s in seqs if max(s.ids) >= vocab or min(s.ids) < 0), None)
    if bad is not None:
        raise DataError(f"sequence {bad.key} has token ids outside the model's vocabulary [0, {vocab}): "
                        "was the data generated with another model?")
    too_long = [s for s in seqs if len(s.ids) > model_config.max_position_embeddings]
    if too_long:
        raise DataError(f"{len(too_long)} sequences exceed the model's context length; lower --seq-len")


def _recipe(args: argparse.Namespace, n: int, total: int, world: int, weights: torch.Tensor,
            last: dict[str, Any], wall: float, model_dtype: torch.dtype, cache_meta: dict[str, Any]) -> dict[str, Any]:
    """What made these heads: goes into config.json's ``training`` field (``cache_meta``: the teacher cache's)."""
    return {
        "method": args.method, "data": str(args.data or cache_meta["data"]),
        "teacher_cache": str(args.teacher_cache) if args.teacher_cache else None, "num_sequences": n,
        "holdout_percent": args.holdout_percent, "seq_len": cache_meta.get("seq_len", args.seq_len),
        "anchors_per_seq": args.anchors_per_seq, "include_prompt": args.include_prompt,
        "loss": "KL(teacher p_{i+k} || draft q_{i,k})"
        + (f" over the teacher's top-{cache_meta['top_k']} tokens (cached teacher)" if cache_meta else ""),
        "loss_weights": weights.tolist(),
        "steps": total, "grad_accum": args.grad_accum, "world_size": world, "optimizer": "AdamW", "lr": args.lr,
        "schedule": "linear warmup + cosine", "warmup": args.warmup, "min_lr_ratio": args.min_lr_ratio,
        "weight_decay": args.weight_decay, "max_grad_norm": args.max_grad_norm, "seed": args.seed,
        "model_dtype": dtype_name(model_dtype), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "final_loss": last.get("loss"), "final_top1": last.get("top1"),
        "wall_time_s": round(wall, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = train(args)
    except (ValueError, OSError) as e:  # bad data, heads, flags, paths or model: a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
