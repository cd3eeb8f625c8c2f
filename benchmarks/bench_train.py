"""Training throughput: GPTModel against Hugging Face's GPT2LMHeadModel of the same shape.

One training step = zero_grad, forward, cross-entropy, backward, AdamW step, on random token ids.
Every model gets the same batch, the same optimizer settings, the same dropout and the same number
of threads, and the variants are timed alternately in one process (see benchmarks/common.py).

    python -m benchmarks.bench_train                      # 124M shape, CPU: a few minutes
    python -m benchmarks.bench_train --device cuda --batch-size 16 --seq-len 1024

On CUDA it adds bf16 autocast and torch.compile rows (--all-modes does so on CPU too, slowly, to
try the code path). Every row gets its MFU: model FLOPs per second, 6N + 12*L*H*Q*T per token
(PaLM, appendix B), over the measured peak of a large matmul on the same device, bf16 on CUDA,
fp32 on CPU.
"""
import argparse
import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from benchmarks.common import (Report, Target, common_args, fmt_num, machine,
                               median, print_report, progress, setup, shape_name, spread,
                               time_alternating)
from benchmarks.hf import copy_weights_to_hf, hf_gpt2
from shared.cli import at_least
from shared.model import GPT_CONFIG_124M, GPTModel
from shared.speedups import sparse_tied_embedding_grad

TRAIN_TARGET = 1.15  # ours / HF training tokens per second, CPU fp32
OURS = "ours: GPT-2, tied head"
HF = "HF GPT2LMHeadModel (sdpa), tied head"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(p)
    p.add_argument("--batch-size", type=at_least(int, 1), default=2)
    p.add_argument("--seq-len", type=at_least(int, 1), default=128)
    p.add_argument("--warmup", type=at_least(int, 0), default=1, help="untimed steps per variant")
    p.add_argument("--dropout", type=float, default=0.0, help="same for every model")
    p.add_argument("--emb-dim", type=at_least(int, 1), default=GPT_CONFIG_124M["emb_dim"])
    p.add_argument("--num-layers", type=at_least(int, 1), default=GPT_CONFIG_124M["num_layers"])
    p.add_argument("--num-heads", type=at_least(int, 1), default=GPT_CONFIG_124M["num_heads"])
    p.add_argument("--vocab-size", type=at_least(int, 1), default=GPT_CONFIG_124M["vocab_size"])
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--all-modes", action="store_true",
                   help="bf16 autocast and torch.compile rows on CPU as well (they are on by "
                        "default on CUDA only)")
    args = p.parse_args(argv)
    if not 0 <= args.dropout < 1:
        p.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.emb_dim % args.num_heads:
        p.error(f"--emb-dim {args.emb_dim} must be divisible by --num-heads {args.num_heads}")
    if args.repeats is None:
        args.repeats = 9  # steps vary by 10-40% on a busy machine: a median of 9 holds still
    return args


def gpt2_config(args) -> dict:
    """GPT-2's exact shape, as GPT2LMHeadModel has it: qkv biases and a tied output head."""
    return dict(GPT_CONFIG_124M, emb_dim=args.emb_dim, num_layers=args.num_layers,
                num_heads=args.num_heads, vocab_size=args.vocab_size,
                context_length=max(args.seq_len, GPT_CONFIG_124M["context_length"]),
                drop_rate=args.dropout, qkv_bias=True, tie_weights=True)


def matmul_params(model: GPTModel) -> int:
    """N in 6N: weights that take part in a matmul. Embedding lookups cost no FLOPs, but the
    output head does, whether or not it shares its matrix with the token embedding."""
    skip = {id(model.tok_emb.weight), id(model.out_head.weight)}
    if model.pos_emb is not None:
        skip.add(id(model.pos_emb.weight))
    n = sum(p.numel() for p in model.parameters() if id(p) not in skip)
    return n + model.out_head.weight.numel()


def flops_per_token(model: GPTModel, seq_len: int) -> int:
    """6N for the matmuls (2 forward, 4 backward) + 12*L*H*Q*T for attention's scores and mixing."""
    cfg = model.cfg
    head_dim = cfg["emb_dim"] // cfg["num_heads"]
    return 6 * matmul_params(model) + 12 * cfg["num_layers"] * cfg["num_heads"] * head_dim * seq_len


def measured_peak_flops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 3) -> float:
    """FLOP/s of an (n, n) @ (n, n) matmul: the practical ceiling for a transformer's matmuls."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_alternating({"matmul": lambda: a @ b}, repeats, 1, device)["matmul"]
    return 2 * n ** 3 / median(seconds)


def make_optimizer(model, device):
    """The same AdamW for every model; the fused kernel where this PyTorch has one for the device."""
    kwargs = dict(lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **kwargs)
    except RuntimeError:
        return torch.optim.AdamW(model.parameters(), foreach=True, **kwargs)


def make_step(forward, optimizer, x, y, device, autocast_dtype=None):
    """One full training step as a closure: forward(x) -> logits (B, T, V)."""
    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            logits = forward(x)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        optimizer.step()
        return loss
    return step


def hf_forward(model, x):
    return model(input_ids=x, use_cache=False).logits


@dataclass
class Variant:
    name: str                  # which model
    mode: str                  # "fp32", "bf16 autocast", "bf16 autocast + compile"
    model: torch.nn.Module     # owns the parameters (one optimizer per model)
    forward: Callable          # x (B, T) -> logits (B, T, V); maybe compiled
    autocast: torch.dtype | None
    shape: GPTModel            # our model of the same shape, for the FLOP count


def build_variants(args, device):
    """Our three models and HF's, and on CUDA each in bf16 and compiled. Returns (ours, hf, variants)."""
    cfg = gpt2_config(args)
    torch.manual_seed(args.seed)
    ours = GPTModel(cfg).to(device)
    hf = hf_gpt2(cfg).to(device)
    copy_weights_to_hf(ours, hf)  # same weights: same loss, a check that the shapes really match
    untied = GPTModel(dict(cfg, tie_weights=False)).to(device)
    modern = GPTModel(dict(cfg, norm="rmsnorm", pos_encoding="rope")).to(device)
    for model in (ours, modern):  # what shared.trainer does for a tied head
        sparse_tied_embedding_grad(model)

    models = [(OURS, ours, ours, ours),
              ("ours: GPT-2, untied head", untied, untied, untied),
              ("ours: RoPE + RMSNorm, tied head", modern, modern, modern),
              (HF, hf, functools.partial(hf_forward, hf), ours)]
    variants = [Variant(name, "fp32", m, fwd, None, shape) for name, m, fwd, shape in models]
    if device.type == "cuda" or args.all_modes:
        compared = [models[0], models[2], models[3]]
        variants += [Variant(name, "bf16 autocast", m, fwd, torch.bfloat16, shape)
                     for name, m, fwd, shape in compared]
        if not args.no_compile:
            for name, m, _, shape in compared:
                compiled = torch.compile(m)
                fwd = compiled if m is not hf else functools.partial(hf_forward, compiled)
                variants.append(Variant(name, "bf16 autocast + compile", m, fwd, torch.bfloat16, shape))
    return ours, hf, variants


@torch.no_grad()
def check_same_loss(ours, hf, x, y, tol=1e-3):
    """Our model and HF's with the same weights must give the same loss (dropout off)."""
    ours.eval(), hf.eval()
    a = F.cross_entropy(ours(x).flatten(0, 1), y.flatten()).item()
    b = F.cross_entropy(hf_forward(hf, x).flatten(0, 1), y.flatten()).item()
    ours.train(), hf.train()
    if abs(a - b) > tol:
        raise AssertionError(f"same weights, different loss: ours {a:.5f}, HF {b:.5f}")
    return a


def run(args) -> Report:
    device = setup(args)
    ours, hf, variants = build_variants(args, device)
    B, T = args.batch_size, args.seq_len
    data = torch.randint(0, args.vocab_size, (B, T + 1), device=device)
    x, y = data[:, :-1], data[:, 1:]  # (B, T) inputs and next-token targets
    loss0 = check_same_loss(ours, hf, x, y)

    optimizers, steps = {}, {}
    for v in variants:
        # One optimizer per model, even when a model runs in several modes (fp32, bf16, compiled).
        opt = optimizers.setdefault(id(v.model), make_optimizer(v.model, device))
        v.model.train()
        steps[(v.name, v.mode)] = make_step(v.forward, opt, x, y, device, v.autocast)

    compiled = any("compile" in v.mode for v in variants)
    warmup = args.warmup + (2 if compiled else 0)  # the first compiled steps compile
    progress(f"bench_train: {len(steps)} variants, batch {B} x {T} tokens, "
             f"{warmup} warm-up + {args.repeats} timed steps each")
    times = time_alternating(steps, args.repeats, warmup, device, on_result=lambda key, s: progress(
        f"  {key[0]} [{key[1]}]: {s * 1000:.0f} ms"))

    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = measured_peak_flops(device, peak_dtype, 8192 if device.type == "cuda" else 2048)
    rate = {key: B * T / median(t) for key, t in times.items()}
    rows = []
    for v in variants:
        t = times[(v.name, v.mode)]
        r = rate[(v.name, v.mode)]
        rows.append([v.name, v.mode, f"{sum(p.numel() for p in v.model.parameters()) / 1e6:.1f}M",
                     fmt_num(median(t) * 1000), spread([s * 1000 for s in t]), fmt_num(r),
                     f"{r / rate[(HF, v.mode)]:.2f}x",
                     f"{100 * r * flops_per_token(v.shape, T) / peak:.1f}%"])
    targets = [Target("training tokens/s: ours (tied head) / HF GPT2LMHeadModel, fp32",
                      rate[(OURS, "fp32")] / rate[(HF, "fp32")], TRAIN_TARGET)]
    kind = "fused" if next(iter(optimizers.values())).defaults.get("fused") else "foreach"
    notes = [
        f"batch {B} x {T} tokens; {args.emb_dim}-dim, {args.num_layers} layers, {args.num_heads} "
        f"heads, vocab {args.vocab_size}, qkv bias, dropout {args.dropout}; AdamW ({kind}) with the "
        f"same settings for every model; step = zero_grad + forward + cross-entropy + backward + "
        f"AdamW step; median of {args.repeats} alternated steps after {warmup} warm-up step(s)",
        f"same weights, same loss: ours and HF start at {loss0:.4f} on the benchmark batch",
        f"ratio: tokens/s over HF's in the same mode. MFU: (6N + 12*L*H*Q*T) FLOPs per token, "
        f"N = weights in matmuls (output head included), over a measured "
        f"{peak / 1e9:,.0f} GFLOP/s {str(peak_dtype).replace('torch.', '')} matmul peak",
        f"machine: {machine(device)}"]
    return Report(f"Training step (forward + backward + AdamW), {shape_name(gpt2_config(args))}",
                  ["model", "mode", "params", "step ms (median)", "step ms (min-max)", "tokens/s",
                   "ratio vs HF", "MFU"], rows, notes, targets)


def main(argv=None):
    return print_report(run(parse_args(argv)))


if __name__ == "__main__":
    main()
