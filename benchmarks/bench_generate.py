"""Generation throughput: greedy decoding of 256 new tokens from a short prompt, 124M shape.

Four ways to produce the same tokens from the same weights:

    ours, no cache    shared.generate.generate(use_cache=False): the whole window runs through the
                      model for every new token (only the last position goes through the head)
    ours, KV cache    generate(use_cache=True): the prompt once, then one token per step against
                      the preallocated cache
    ... (in, out)     the same, after shared.speedups.use_decoding_layout: every weight matrix
                      stored transposed, which the CPU BLAS we measured streams faster in a
                      matrix-vector product
    HF generate       GPT2LMHeadModel.generate (sdpa, its default DynamicCache) with our weights

and two floors: the weight reads alone, in each layout.

The weights are random (GPT-2's initialisation), which costs exactly as much as trained ones, and
the benchmark checks that all four produce the same greedy tokens.

    python -m benchmarks.bench_generate
    python -m benchmarks.bench_generate --device cuda --new-tokens 512 --repeats 5
"""
import argparse
import copy

import torch

from benchmarks.common import (Report, Target, common_args, fmt_num, machine,
                               median, print_report, progress, setup, shape_name, spread,
                               time_alternating)
from benchmarks.hf import copy_weights_to_hf, hf_gpt2
from shared.cli import at_least
from shared.generate import generate
from shared.speedups import use_decoding_layout
from shared.model import GPT_CONFIG_124M, GPTModel

CACHE_TARGET = 10.0  # KV cache / no cache, tokens per second
HF_TARGET = 1.2      # KV cache (decoding layout) / HF generate
NO_CACHE, CACHE, HF = "ours, no cache", "ours, KV cache", "HF GPT2LMHeadModel.generate"
CACHE_IO = "ours, KV cache, weights (in, out)"
FLOOR = "floor: every weight matrix read once per token"
FLOOR_IO = "floor: the same, weights (in, out)"
METHODS = (NO_CACHE, CACHE, CACHE_IO, HF, FLOOR, FLOOR_IO)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(p)
    p.add_argument("--new-tokens", type=at_least(int, 1), default=256)
    p.add_argument("--prompt", default="Every effort moves you")
    p.add_argument("--no-cache-repeats", type=at_least(int, 1), default=1,
                   help="timed runs of the slow uncached path (default 1)")
    p.add_argument("--check-tokens", type=at_least(int, 0), default=64,
                   help="the first N tokens must be identical across the four (default 64)")
    p.add_argument("--emb-dim", type=at_least(int, 1), default=GPT_CONFIG_124M["emb_dim"])
    p.add_argument("--num-layers", type=at_least(int, 1), default=GPT_CONFIG_124M["num_layers"])
    p.add_argument("--num-heads", type=at_least(int, 1), default=GPT_CONFIG_124M["num_heads"])
    args = p.parse_args(argv)
    if args.emb_dim % args.num_heads:
        p.error(f"--emb-dim {args.emb_dim} must be divisible by --num-heads {args.num_heads}")
    if args.repeats is None:
        args.repeats = 3
    return args


def prompt_ids(text: str, device) -> torch.Tensor:
    from shared.tokenizer import get_tokenizer, text_to_token_ids
    return text_to_token_ids(text, get_tokenizer()).to(device)  # (1, n)


def hf_generate(hf, idx, new_tokens):
    """Greedy, exactly new_tokens tokens (no early stop at end-of-text), with HF's KV cache."""
    return hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                       pad_token_id=hf.config.eos_token_id)


def weight_streaming(model: GPTModel, new_tokens: int):
    """What one decoding step cannot avoid at batch 1: reading every weight matrix once.

    Each step multiplies one vector by every nn.Linear of the model (the 124M shape: ~500 MB of
    fp32 weights, far more than any CPU cache), so its time is set by memory bandwidth. Timing
    exactly those matrix-vector products, and nothing else, gives the fastest any implementation
    of these weights, stored in this model's layout, can decode on this machine.
    """
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    device = model.out_head.weight.device
    inputs = {m.in_features: torch.randn(1, 1, m.in_features, device=device) for m in linears}

    @torch.no_grad()
    def run():
        for _ in range(new_tokens):
            for m in linears:
                m(inputs[m.in_features])
    return run


def first_disagreement(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """Index of the first differing token of two (1, n) sequences, or None if equal."""
    n = min(a.size(1), b.size(1))
    diff = (a[0, :n] != b[0, :n]).nonzero()
    return int(diff[0]) if len(diff) else None


def run(args) -> Report:
    device = setup(args)
    cfg = dict(GPT_CONFIG_124M, emb_dim=args.emb_dim, num_layers=args.num_layers,
               num_heads=args.num_heads, drop_rate=0.0, qkv_bias=True, tie_weights=True)
    idx = prompt_ids(args.prompt, device)
    if idx.size(1) + args.new_tokens > cfg["context_length"]:
        raise ValueError(f"prompt ({idx.size(1)}) + --new-tokens ({args.new_tokens}) exceed the "
                         f"context of {cfg['context_length']} tokens; ask for fewer new tokens")
    model = GPTModel(cfg).to(device).eval()
    model_io = use_decoding_layout(copy.deepcopy(model))  # same weights, transposed storage
    hf = hf_gpt2(cfg).to(device).eval()
    copy_weights_to_hf(model, hf)
    n, ctx = args.new_tokens, cfg["context_length"]
    outputs = {}

    def run_variant(name, fn):
        def call():
            with torch.no_grad():
                outputs[name] = fn()
        return call

    variants = {
        NO_CACHE: run_variant(NO_CACHE, lambda: generate(model, idx, n, ctx, use_cache=False)),
        CACHE: run_variant(CACHE, lambda: generate(model, idx, n, ctx, use_cache=True)),
        CACHE_IO: run_variant(CACHE_IO, lambda: generate(model_io, idx, n, ctx, use_cache=True)),
        HF: run_variant(HF, lambda: hf_generate(hf, idx, n)),
        FLOOR: weight_streaming(model, n),
        FLOOR_IO: weight_streaming(model_io, n),
    }
    # Warm-up: a short generation each (allocations, kernel selection), not the full length.
    for fn in [lambda: generate(model, idx, 8, ctx),
               lambda: generate(model, idx, 8, ctx, use_cache=True),
               lambda: generate(model_io, idx, 8, ctx, use_cache=True),
               lambda: hf_generate(hf, idx, 8)]:
        with torch.no_grad():
            fn()
    repeats = {name: args.repeats for name in METHODS} | {NO_CACHE: args.no_cache_repeats}
    progress(f"bench_generate: {n} new tokens after a {idx.size(1)}-token prompt; "
             f"runs: {repeats}")
    times = time_alternating(variants, repeats, 0, device,
                             on_result=lambda name, s: progress(f"  {name}: {s:.2f} s"))

    # The four must agree: same weights, same greedy decoding.
    reference = outputs[CACHE]
    agree = {}
    for name in (NO_CACHE, CACHE_IO, HF):
        where = first_disagreement(reference, outputs[name])
        agree[name] = "all" if where is None else f"first {where - idx.size(1)}"
        if where is not None and where < idx.size(1) + min(args.check_tokens, n):
            raise AssertionError(f"{name} and {CACHE} disagree at new token {where - idx.size(1)}")
    agree[CACHE] = "(reference)"
    agree[FLOOR] = agree[FLOOR_IO] = "-"

    rate = {name: n / median(t) for name, t in times.items()}
    floor = max(rate[FLOOR], rate[FLOOR_IO])  # the faster layout is what decoding could reach
    weight_mb = sum(p.numel() * p.element_size() for m in model.modules()
                    if isinstance(m, torch.nn.Linear) for p in m.parameters()) / 1e6
    rows = [[name, len(times[name]), fmt_num(median(times[name])), spread(times[name]),
             fmt_num(rate[name]), f"{rate[name] / rate[NO_CACHE]:.2f}x",
             f"{rate[name] / rate[HF]:.2f}x", f"{100 * rate[name] / floor:.0f}%", agree[name]]
            for name in METHODS]
    targets = [Target(f"generation tokens/s: KV cache / no cache, {n} new tokens",
                      rate[CACHE] / rate[NO_CACHE], CACHE_TARGET),
               Target("generation tokens/s: KV cache, weights (in, out) / HF GPT2LMHeadModel.generate",
                      rate[CACHE_IO] / rate[HF], HF_TARGET)]
    notes = [f"greedy, {n} new tokens after the {idx.size(1)}-token prompt {args.prompt!r}, batch 1; "
             f"{args.emb_dim}-dim, {args.num_layers} layers, {args.num_heads} heads, qkv bias, "
             f"tied head, same random weights in both models; one warm-up generation of 8 tokens "
             f"each, then timed runs alternated; tokens/s = new tokens / median seconds",
             f"agree: how many new tokens match the KV-cache output (the run fails if fewer than "
             f"{min(args.check_tokens, n)})",
             f"weights (in, out): the model after shared.speedups.use_decoding_layout, each "
             f"nn.Linear weight stored transposed (same values); the first two rows keep "
             f"nn.Linear's (out, in)",
             f"floor: {n} x one matrix-vector product with every nn.Linear of the model "
             f"({weight_mb:.0f} MB of fp32 weights) and nothing else, in each layout: the part of "
             f"decoding no implementation of these weights can skip; at the 124M shape (more "
             f"than any CPU cache holds) memory bandwidth sets its speed. of floor: tokens/s as "
             f"a share of the faster floor's",
             f"machine: {machine(device)}"]
    return Report(f"Greedy generation, {shape_name(cfg)}",
                  ["method", "runs", "seconds (median)", "seconds (min-max)", "tokens/s",
                   "ratio vs no cache", "ratio vs HF", "of floor", "agree"], rows, notes, targets)


def main(argv=None):
    return print_report(run(parse_args(argv)))


if __name__ == "__main__":
    main()
