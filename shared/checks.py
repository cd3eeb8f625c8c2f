"""The rules the library's entry points check, one function each.

The core a reader studies (shared.model, the training loops) assumes valid input, as the book's
code does. The functions users call with their own input (generate, the trainer, the command
lines, the weight loader) check it first with these, so a mistake gets one message that says what
to do instead of an error from deep inside torch.
"""
import math
import numbers

import torch


def check_token_ids(idx, vocab_size=None, name="idx"):
    """A non-empty (batch, tokens) tensor of integer ids, all below vocab_size."""
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"{name} must be a (batch, tokens) tensor of token ids, got {shape}; "
                         "use text_to_token_ids(), which adds the batch dimension")
    if idx.size(1) == 0:
        raise ValueError(f"{name} is empty: give at least one token (e.g. <|endoftext|>)")
    if idx.dtype not in (torch.long, torch.int):
        raise ValueError(f"{name} must hold integer token ids (torch.long), got {idx.dtype}")
    # Reading the ids' range means waiting for them: free on the CPU, a stall on a GPU (where a
    # bad id fails as the embedding's device-side assert instead).
    if vocab_size is not None and idx.device.type == "cpu":
        low, high = torch.aminmax(idx)
        if low < 0 or high >= vocab_size:
            raise ValueError(f"token ids must lie in [0, {vocab_size}), the model's vocab_size; "
                             f"got ids from {int(low)} to {int(high)}")


def check_window(size, context_length, name="context_size"):
    """A window of 1 .. context_length tokens: the model has no positions beyond its context."""
    if not isinstance(size, numbers.Integral) or isinstance(size, bool) or size < 1:
        raise ValueError(f"{name} must be a whole number >= 1 (usually model.context_length), "
                         f"got {size!r}")
    if context_length is not None and size > context_length:
        raise ValueError(f"{name} {size} exceeds the model's context length {context_length}; "
                         "use at most model.context_length")


def check_sampling(temperature, top_k):
    """temperature: finite and >= 0 (0 is greedy); top_k: None or a whole number >= 1."""
    if not isinstance(temperature, numbers.Real):
        raise ValueError(f"temperature must be a number (0 for greedy), got {temperature!r}")
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


def check_eos(eos_id, vocab=None):
    """An end-of-text id the model can produce; one it never samples would never stop."""
    if eos_id is not None and not 0 <= eos_id < (vocab or math.inf):
        valid = f"in [0, {vocab})" if vocab else ">= 0"
        raise ValueError(f"eos_id must be a token id the model can produce, {valid}, got {eos_id}; "
                         "use the tokenizer's end-of-text id (EOT_ID = 50256 for GPT-2)")
