"""Turning a model's next-token logits into text: greedy decoding, temperature, top-k, a KV cache,
and a weight layout for faster decoding on a CPU."""
import contextlib
import math
import numbers

import torch
import torch.nn as nn

from shared.checkpoint import unwrap_model


def generate_text_simple(model, idx, max_new_tokens, context_size):
    """Greedy decoding, as chapter 4 writes it: append the most likely token, one at a time."""
    check_prompt(idx, max_new_tokens, context_size)
    check_model_limits(unwrap_model(model), context_size)
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]  # the model sees at most context_size tokens
        with torch.no_grad():
            logits = model(idx_cond)        # (B, T, vocab)
        idx_next = logits[:, -1, :].argmax(dim=-1, keepdim=True)  # (B, 1)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


def check_prompt(idx, max_new_tokens, context_size=None):
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"idx must be a (batch, tokens) tensor of ids, got {shape}; "
                         "use text_to_token_ids(), which adds the batch dimension")
    if idx.size(1) == 0:
        raise ValueError("the prompt is empty: give at least one token (e.g. <|endoftext|>)")
    if idx.dtype not in (torch.long, torch.int):
        raise ValueError(f"idx must hold integer token ids (torch.long), got {idx.dtype}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if context_size is not None and context_size < 1:  # idx[:, -0:] would silently keep everything
        raise ValueError(f"context_size must be >= 1 (usually model.context_length), "
                         f"got {context_size}")


def check_model_limits(core, context_size, eos_id=None):
    """Refuse, before the first token, a window or an end id that the model cannot honour."""
    context_length = getattr(core, "context_length", None)  # GPTModel has one; test stubs may not
    if context_length is not None and context_size > context_length:  # else fails mid-generation
        raise ValueError(f"context_size {context_size} exceeds the model's context length "
                         f"{context_length}; use at most model.context_length")
    vocab = getattr(core, "tokenizer_vocab_size", None)
    if eos_id is not None and not 0 <= eos_id < (vocab or math.inf):  # never sampled: no stop
        valid = f"in [0, {vocab})" if vocab else ">= 0"
        raise ValueError(f"eos_id must be a token id the model can produce, {valid}, got {eos_id}; "
                         "use the tokenizer's end-of-text id (EOT_ID = 50256 for GPT-2)")


def check_sampling(temperature, top_k):
    if math.isnan(temperature):
        raise ValueError("temperature is NaN; use 0 for greedy or a positive number")
    if math.isinf(temperature):  # logits / inf: 0 for kept tokens, NaN for masked (-inf) ones
        raise ValueError(f"temperature must be finite, got {temperature}; a large value such as "
                         "100 already samples almost uniformly")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and (not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool)
                              or top_k <= 0):
        raise ValueError(f"top_k must be a positive whole number of tokens (or None for no limit), "
                         f"got {top_k!r}")


def sample_next_token(logits, temperature=0.0, top_k=None):
    """Pick one token per row from logits (B, vocab) -> (B, 1).

    top_k keeps the k largest logits and sets the rest to -inf. temperature divides the logits
    before the softmax: < 1 sharpens the distribution, > 1 flattens it, 0 means argmax (greedy).
    """
    if top_k is not None:
        k = min(top_k, logits.size(-1))
        kth_largest = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if temperature > 0.0:
        probs = torch.softmax(logits / temperature, dim=-1)
        return torch.multinomial(probs, num_samples=1)
    return logits.argmax(dim=-1, keepdim=True)


@contextlib.contextmanager
def _eval_mode(model):
    """Sample without dropout, then give the model back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _next_logits(model, seq, context_size, cache):
    """Logits (B, vocab) for the token after `seq`, looking at its last context_size tokens.

    With a cache, only the newest token is run through the model. Once the sequence is longer
    than the window, the window slides and every position changes, so the cache is rebuilt from the
    window: the result is then exactly the uncached one, not an approximation.
    """
    if cache is None:
        return model(seq[:, -context_size:], last_only=True)[:, -1, :]
    if cache.length == 0 or seq.size(1) > context_size:
        cache.reset()
        return model(seq[:, -context_size:], kv_cache=cache, last_only=True)[:, -1, :]
    return model(seq[:, -1:], kv_cache=cache, last_only=True)[:, -1, :]


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


def generate_stream(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None,
                    eos_id=None, use_cache=False):
    """Yield the next tokens, a (B, 1) tensor per step, as `generate` produces them.

    Rows that have produced `eos_id` keep yielding eos_id as padding; the stream ends early when
    every row has finished (the step in which the last row finishes is not yielded).
    """
    check_prompt(idx, max_new_tokens, context_size)
    check_sampling(temperature, top_k)
    core = unwrap_model(model)
    check_model_limits(core, context_size, eos_id)
    vocab_limit = getattr(core, "tokenizer_vocab_size", None)
    cache = core.new_kv_cache(idx.size(0), max_len=context_size) if use_cache else None
    finished = torch.zeros(idx.size(0), 1, dtype=torch.bool, device=idx.device)
    seq = idx
    with _eval_mode(model):
        for _ in range(max_new_tokens):
            logits = _next_logits(core if use_cache else model, seq, context_size, cache)
            if vocab_limit is not None and logits.size(-1) > vocab_limit:
                logits[:, vocab_limit:] = float("-inf")  # padded ids no tokenizer can decode
            idx_next = sample_next_token(logits.float(), temperature, top_k)
            if eos_id is not None:
                idx_next = idx_next.masked_fill(finished, eos_id)
                finished |= idx_next == eos_id
                if finished.all():
                    return
            seq = torch.cat((seq, idx_next), dim=1)
            yield idx_next


def generate(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None,
             use_cache=False):
    """Extend idx (B, T) by up to max_new_tokens tokens; returns (B, T + new).

    temperature=0 is greedy; top_k=1 is greedy too. With eos_id, each row stops at its own
    end-of-text token (the token is not appended when every row has finished), and finished rows
    are padded with eos_id while the others go on. use_cache=True gives the same tokens, faster.
    """
    new_tokens = list(generate_stream(model, idx, max_new_tokens, context_size, temperature,
                                      top_k, eos_id, use_cache))
    return torch.cat([idx, *new_tokens], dim=1)
