"""Performance tricks that change how the model's numbers are stored or computed, never what they are.

The core (shared.model) is written to be read; these make it faster where measurements said so,
and each can be left out without changing a single result beyond float rounding.

    sparse_tied_embedding_grad   training a tied-head model: skip a dense (V, C) zero-fill per step
    use_decoding_layout          sampling on a CPU: weights stored (in, out) for faster mat-vecs
"""
import torch
import torch.nn as nn


def sparse_tied_embedding_grad(model: nn.Module) -> nn.Module:
    """With a tied head, let the token lookup produce a sparse gradient; returns the model.

    A tied matrix already gets a dense (V, C) gradient from the output head; the lookup's gradient
    touches only the B*T rows it read. Asking for that one sparse saves zero-filling a second
    (V, C) matrix and adding the two, every step (3% of a 124M CPU step); the gradient that reaches
    .grad is the same dense sum. An untied embedding keeps its dense gradient: AdamW needs one.
    Not under DistributedDataParallel, which sees a sparse module and then expects a sparse .grad.
    """
    if model.out_head.weight is model.tok_emb.weight:
        model.tok_emb.sparse = True
    return model


@torch.no_grad()
def use_decoding_layout(model: nn.Module) -> nn.Module:
    """Store every nn.Linear weight (in, out) row-major, in place, for faster decoding on a CPU.

    Decoding one token at a time multiplies a single vector by every weight matrix, so its speed
    is how fast the matrices stream from memory. nn.Linear keeps W as (out, in) row-major; on the
    CPU we measured (AMD EPYC, PyTorch's MKL build), the BLAS reads the transpose,
    W_t = W.t().contiguous() of shape (in, out), up to 2x faster in a matrix-vector product (1.4x
    for the output head; OpenAI's checkpoints and Hugging Face's Conv1D use that layout). Each
    weight becomes W_t.t(): the same values, shape and Parameter object (a tied head stays tied,
    an optimizer keeps its references), so F.linear(x, W) runs x @ W_t.

    Call it on a model you only sample from. Training still computes the same numbers, but a CPU
    training step was about 40% slower in this layout. benchmarks/bench_generate.py times both
    layouts; check that it helps on your machine. Returns the model.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear) and not module.weight.t().is_contiguous():
            module.weight.data = module.weight.data.t().contiguous().t()  # (out, in), strides (1, out)
    return model
