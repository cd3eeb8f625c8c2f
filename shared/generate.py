"""Turning a model's next-token logits into text: greedy decoding, temperature, top-k, a KV cache.

    generate_text_simple   chapter 4's greedy loop
    sample_next_token      temperature and top-k on one step's logits
    generate               the loop chapter 5 uses: sampling, end-of-text stop, optional KV cache
    generate_stream        the same loop, yielding each new token as it comes (for a command line)

generate and generate_stream are entry points: they check their arguments (shared.checks) once,
before the first token is computed (for generate_stream, at the first next()), so the loop itself
stays as plain as chapter 4's.
"""
import torch

from shared import checks
from shared.model import unwrap_model


def generate_text_simple(model, idx, max_new_tokens, context_size):
    """Greedy decoding, as chapter 4 writes it: append the most likely token, one at a time."""
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]  # the model sees at most context_size tokens
        with torch.no_grad():
            logits = model(idx_cond)        # (B, T, vocab)
        idx_next = logits[:, -1, :].argmax(dim=-1, keepdim=True)  # (B, 1)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


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


def next_token_logits(model, seq, context_size, cache=None):
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


def generate_stream(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None,
                    eos_id=None, use_cache=False):
    """Yield the next tokens, a (B, 1) tensor per step, as `generate` produces them.

    Rows that have produced `eos_id` keep yielding eos_id as padding; the stream ends early when
    every row has finished (the step in which the last row finishes is not yielded).
    """
    core = unwrap_model(model)
    checks.check_generate_args(core, idx, max_new_tokens, context_size, temperature, top_k, eos_id)
    vocab_limit = getattr(core, "tokenizer_vocab_size", None)  # a padded vocab's extra rows
    cache = core.new_kv_cache(idx.size(0), max_len=context_size) if use_cache else None
    finished = torch.zeros(idx.size(0), 1, dtype=torch.bool, device=idx.device)
    was_training, seq = model.training, idx
    model.eval()  # no dropout while sampling
    try:
        for _ in range(max_new_tokens):
            with torch.no_grad():
                logits = next_token_logits(core if use_cache else model, seq, context_size, cache)
            if vocab_limit is not None and logits.size(-1) > vocab_limit:
                logits[:, vocab_limit:] = float("-inf")  # ids no tokenizer can decode
            idx_next = sample_next_token(logits.float(), temperature, top_k)
            if eos_id is not None:
                idx_next = idx_next.masked_fill(finished, eos_id)
                finished |= idx_next == eos_id
                if finished.all():
                    return
            seq = torch.cat((seq, idx_next), dim=1)
            yield idx_next
    finally:
        model.train(was_training)


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
