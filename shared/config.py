"""The model's configuration: the book's GPT-2 sizes, and one table of the switches chapter 6 adds.

GPT_CONFIG_124M is the book's dictionary; every key is required. MODEL_SWITCHES is the only place
a switch is defined: its default (GPT-2's choice, so a config without switches is GPT-2), the
values it takes and what it means. The rest of the library reads it: GPTModel through
with_defaults(cfg), shared.checks for the allowed values, the training command line for its flags
(choices and help), the GPT-2 loaders for what OpenAI's weights cannot have, and the checkpoint
loader for what a saved model must share with this one. A new switch is one row here plus the
model code that uses it.
"""
from dataclasses import dataclass

GPT_CONFIG_124M = {
    "vocab_size": 50257,     # GPT-2's BPE vocabulary
    "context_length": 1024,  # longest sequence the model attends over
    "emb_dim": 768,          # width of the residual stream
    "num_heads": 12,         # attention heads per layer
    "num_layers": 12,        # transformer blocks
    "drop_rate": 0.1,        # dropout on embeddings, attention weights and residual branches
    "qkv_bias": False,       # bias in the query/key/value projections (OpenAI's GPT-2 has one)
}


@dataclass(frozen=True)
class Switch:
    """One architecture switch of GPTModel."""
    default: object          # GPT-2's choice
    allowed: tuple | type    # a tuple of the values it takes, or bool, or float (a finite number > 0)
    meaning: str             # one line: the command line's --help
    gpt2_only_default: bool  # OpenAI's GPT-2 weights (and HF's GPT2LMHeadModel) need the default
    architecture: bool = True  # a saved model and the one it loads into must agree on it


MODEL_SWITCHES = {
    "norm": Switch("layernorm", ("layernorm", "rmsnorm"),
                   "LayerNorm as in GPT-2, or RMSNorm as in Llama", gpt2_only_default=True),
    "pos_encoding": Switch("learned", ("learned", "rope"),
                           "a learned position table added to the embeddings (GPT-2), or the "
                           "rotary embedding (RoPE) on queries and keys", gpt2_only_default=True),
    "rope_theta": Switch(10000.0, float, "base of RoPE's rotation frequencies (unused by learned "
                                         "positions)", gpt2_only_default=False),
    "tie_weights": Switch(False, bool, "share the token embedding with the output head",
                          gpt2_only_default=False),
    "ffn": Switch("gelu", ("gelu", "swiglu"),
                  "feed-forward: GPT-2's 4x-wide GELU MLP, or Llama's gated SwiGLU (no biases, "
                  "2/3 as wide: as many weights)", gpt2_only_default=True),
    "qk_norm": Switch(False, bool, "RMSNorm on each head's queries and keys before their dot "
                                   "product (QK-norm, as in Qwen3)", gpt2_only_default=True),
    # the load overwrites the initial weights, so a checkpoint need not agree on init
    "init": Switch("gpt2", ("gpt2", "pytorch"),
                   "initial weights: GPT-2's N(0, 0.02) with scaled residual projections, or each "
                   "layer's PyTorch default (the book's chapter 5)", gpt2_only_default=False,
                   architecture=False),
}


def with_defaults(cfg: dict) -> dict:
    """A copy of cfg with every switch it leaves out set to the table's default."""
    return {**{key: switch.default for key, switch in MODEL_SWITCHES.items()}, **cfg}


def non_gpt2_switches(cfg: dict) -> dict:
    """The switches cfg sets to something OpenAI's GPT-2 does not have: {key: value}."""
    cfg = with_defaults(cfg)
    return {key: cfg[key] for key, switch in MODEL_SWITCHES.items()
            if switch.gpt2_only_default and cfg[key] != switch.default}
