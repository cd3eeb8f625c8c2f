"""The rules the library's entry points check, one function each.

The core a reader studies (the model's forward pass, attention, the training loops) assumes valid
input, as the book's code does. The functions users call with their own input (GPTModel(cfg),
generate, create_dataloader_v1, TrainConfig and train, the command lines) check it first with
these, so a mistake gets one message that says what to do instead of an error from deep inside
torch. (The weight loader and the checkpoint loader have their own file-specific checks.)
"""
import math
import numbers
import os

import numpy as np
import torch

from shared.config import GPT_CONFIG_124M, MODEL_SWITCHES, with_defaults

MAX_SEED = 2 ** 63 - 1  # torch.manual_seed takes 64 bits; the trainer adds ranks and restarts to it
SIZE_KEYS = ("vocab_size", "context_length", "emb_dim", "num_heads", "num_layers")
REQUIRED_KEYS = tuple(GPT_CONFIG_124M)  # the book's keys: sizes, drop_rate, qkv_bias


def is_whole(value, low: int = 1) -> bool:
    """A whole number >= low: Python's or numpy's integers, never a bool (True is 1 to Python)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def check_model_config(cfg: dict) -> None:
    """A configuration GPTModel can build, or a message naming the first bad key."""
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"config is missing {missing}; start from a copy of GPT_CONFIG_124M")
    for key in SIZE_KEYS:  # numpy integers pass too (GPTModel stores them as int)
        if not is_whole(cfg[key]):
            raise ValueError(f"{key} must be a positive integer, got {cfg[key]!r}")
    if cfg["emb_dim"] % cfg["num_heads"]:
        raise ValueError(f"emb_dim {cfg['emb_dim']} must be divisible by num_heads {cfg['num_heads']}")
    if not isinstance(cfg["drop_rate"], numbers.Real) or not 0 <= cfg["drop_rate"] < 1:
        raise ValueError(f"drop_rate must be in [0, 1), got {cfg['drop_rate']!r}")
    if not isinstance(cfg["qkv_bias"], (bool, np.bool_)):  # "False" from a file is true to Python
        raise ValueError(f"qkv_bias must be True or False, got {cfg['qkv_bias']!r}")
    for key, switch in MODEL_SWITCHES.items():
        if key in cfg:
            _check_switch(key, switch.allowed, cfg[key])
    if with_defaults(cfg)["pos_encoding"] == "rope" and (cfg["emb_dim"] // cfg["num_heads"]) % 2:
        raise ValueError("RoPE rotates pairs of features: emb_dim / num_heads must be even")


def _check_switch(key, allowed, value) -> None:
    """One of the values a MODEL_SWITCHES row allows (shared/config.py)."""
    if allowed is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{key} must be True or False, got {value!r}")
    elif allowed is float:
        if (not isinstance(value, numbers.Real) or isinstance(value, bool)
                or not math.isfinite(value) or value <= 0):
            raise ValueError(f"{key} must be a finite number > 0, got {value!r}")
    elif value not in allowed:
        raise ValueError(f"{key} must be one of {allowed}, got {value!r}")


def check_token_ids(idx, vocab_size=None, name="idx"):
    """A non-empty (batch, tokens) tensor of integer ids, all below vocab_size."""
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"{name} must be a (batch, tokens) tensor of token ids, got {shape}; "
                         "use text_to_token_ids(), which adds the batch dimension")
    if idx.numel() == 0:
        raise ValueError(f"{name} is empty: give at least one token in each of at least one row "
                         "(e.g. <|endoftext|>)")
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
    if not is_whole(size):
        raise ValueError(f"{name} must be a whole number >= 1 (usually model.context_length), "
                         f"got {size!r}")
    if context_length is not None and size > context_length:
        raise ValueError(f"{name} {size} exceeds the model's context length {context_length}; "
                         "use at most model.context_length")


# Below this, logits / temperature can overflow float32 (a logit of 1000 / 1e-36 is inf) and the
# softmax gives NaN probabilities; at 1e-6 a logit would have to exceed 3e32. Such a temperature
# samples the likeliest token anyway: that is temperature 0.
MIN_TEMPERATURE = 1e-6


def check_sampling(temperature, top_k):
    """temperature: 0 (greedy) or finite and >= MIN_TEMPERATURE; top_k: None or a whole number >= 1."""
    if not isinstance(temperature, numbers.Real):
        raise ValueError(f"temperature must be a number (0 for greedy), got {temperature!r}")
    if math.isnan(temperature):
        raise ValueError("temperature is NaN; use 0 for greedy or a positive number")
    if math.isinf(temperature):  # logits / inf: 0 for kept tokens, NaN for masked (-inf) ones
        raise ValueError(f"temperature must be finite, got {temperature}; a large value such as "
                         "100 already samples almost uniformly")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if 0 < temperature < MIN_TEMPERATURE:
        raise ValueError(f"temperature {temperature} is so small that the logits divided by it can "
                         f"overflow; use 0 for greedy decoding (what it amounts to) or at least "
                         f"{MIN_TEMPERATURE:g}")
    if top_k is not None and not is_whole(top_k):
        raise ValueError(f"top_k must be a positive whole number of tokens (or None for no limit), "
                         f"got {top_k!r}")


def check_eos(eos_id, vocab=None):
    """An end-of-text id the model can produce; one it never samples would never stop."""
    if eos_id is not None and not (is_whole(eos_id, 0) and eos_id < (vocab or math.inf)):
        valid = f"in [0, {vocab})" if vocab else ">= 0"
        raise ValueError(f"eos_id must be a token id the model can produce, {valid}, got {eos_id}; "
                         "use the tokenizer's end-of-text id (EOT_ID = 50256 for GPT-2)")


def check_train_config(cfg) -> None:
    """A TrainConfig whose numbers can train a model: finite, in range, a schedule that fits."""
    for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):  # betas: below
        value = getattr(cfg, name)
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"TrainConfig.{name} must be a finite number, got {value!r}")
    for name in ("max_iters", "batch_size", "block_size", "grad_accum_steps", "eval_interval",
                 "eval_iters"):
        _whole(cfg, name, 1)
    for name in ("warmup_iters", "patience", "seed"):
        _whole(cfg, name, 0)
    if cfg.seed > MAX_SEED:
        raise ValueError(f"TrainConfig.seed must be at most 2**63 - 1, got {cfg.seed}: torch takes "
                         "64-bit seeds and each process and restart adds to it")
    if cfg.lr_decay_iters is not None:
        _whole(cfg, "lr_decay_iters", 1)
    for name in ("weight_decay", "grad_clip", "min_lr"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(cfg, name)}")
    for name in ("beta1", "beta2"):  # AdamW's moment decay rates; 1 would never forget
        if not 0 <= getattr(cfg, name) < 1:
            raise ValueError(f"TrainConfig.{name} must be in [0, 1), got {getattr(cfg, name)}")
    if not 0 < cfg.learning_rate:
        raise ValueError(f"learning_rate must be > 0, got {cfg.learning_rate}")
    if cfg.min_lr > cfg.learning_rate:
        raise ValueError(f"min_lr {cfg.min_lr} is above learning_rate {cfg.learning_rate}; "
                         "the cosine decays from learning_rate down to min_lr")
    if cfg.decay_iters < cfg.warmup_iters:
        raise ValueError(f"the decay ends at step {cfg.decay_iters}, before warmup ends at "
                         f"{cfg.warmup_iters}: lower warmup_iters or raise lr_decay_iters")


def check_generate_args(core, idx, max_new_tokens, context_size, temperature, top_k, eos_id):
    """The edge of generation: every argument, against the plain model it will run on (the module
    inside DDP / torch.compile: shared.model.unwrap_model)."""
    check_token_ids(idx, core.cfg["vocab_size"] if hasattr(core, "cfg") else None)
    weight = next(core.parameters(), None)
    if weight is not None and idx.device != weight.device:
        raise ValueError(f"the token ids are on {idx.device} but the model is on {weight.device}: "
                         f"move them first, e.g. idx.to({str(weight.device)!r})")
    if not is_whole(max_new_tokens, 0):
        raise ValueError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}")
    check_window(context_size, getattr(core, "context_length", None))
    check_sampling(temperature, top_k)
    # the model samples below both its rows and its tokenizer's ids (generate masks the rest)
    sizes = [getattr(core, "tokenizer_vocab_size", None), getattr(core, "cfg", {}).get("vocab_size")]
    check_eos(eos_id, min((n for n in sizes if n), default=None))


def check_decodable(ids, n_vocab):
    """Ids a tokenizer can turn back into text (tiktoken's own error is a bare KeyError)."""
    bad = [i for i in ids if not 0 <= i < n_vocab]
    if bad:
        raise ValueError(
            f"token id {bad[0]} is outside the tokenizer's vocabulary [0, {n_vocab}); "
            "a model with a padded vocabulary (e.g. 50304 rows) can emit ids that no text maps "
            "to: sample with shared.generate.generate, which never picks them")


def check_positive(**sizes):
    """Each named size a whole number >= 1: check_positive(max_length=4, stride=0) fails on stride."""
    for name, value in sizes.items():
        if not is_whole(value):
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


def check_text(txt) -> None:
    """The text itself, not the path of its file (a path would be tokenised as a short text)."""
    read = "pass the text itself, e.g. Path(p).read_text(encoding='utf-8')"
    if not isinstance(txt, str):
        raise TypeError(f"txt must be the text (a str), got {type(txt).__name__}; {read}")
    # Text with a newline, or longer than any path (PATH_MAX is 4096), is never a path.
    if "\n" not in txt and len(txt) <= 4096 and os.path.isfile(txt):
        raise ValueError(f"txt is the path of a file ({txt!r}), not its text; {read}")


def check_windows(num_tokens, max_length, num_windows, batch_size, drop_last):
    """At least one window of max_length + 1 tokens, and one whole batch if drop_last."""
    if num_windows == 0:
        raise ValueError(
            f"the text has {num_tokens} tokens, but one training window needs max_length + 1 = "
            f"{max_length + 1} (inputs plus the shifted target); use a shorter context length "
            "or more text")
    if drop_last and num_windows < batch_size:
        raise ValueError(
            f"the text gives {num_windows} windows, fewer than batch_size={batch_size}, and "
            "drop_last=True would leave no batch at all; use drop_last=False, a smaller batch or "
            "a shorter context")


def _whole(cfg, name, low):
    value = getattr(cfg, name)
    if not is_whole(value, low):
        raise ValueError(f"TrainConfig.{name} must be a whole number >= {low}, got {value!r}")


def check_token_array(data, vocab_size=None, name="the token array"):
    """One stream of token ids (1-D), all below vocab_size: what get_batch and the model assume.

    The largest id is computed, so pass vocab_size=None for a token file whose meta.json vouches
    for its ids (shared.token_files.check_vocabulary): reading a whole memmap would pull the file
    into memory.
    """
    if np.ndim(data) != 1:
        raise ValueError(f"{name} must be a 1-D array of token ids (one stream, as load_tokens "
                         f"returns), got shape {np.shape(data)}; flatten it with .reshape(-1)")
    if vocab_size is None or len(data) == 0:
        return
    high = int(np.max(data))
    if high >= vocab_size or int(np.min(data)) < 0:
        raise ValueError(f"{name} holds ids up to {high}, but the model's vocab_size is "
                         f"{vocab_size}: build the model with vocab_size > {high}")
