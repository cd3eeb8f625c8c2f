"""Test helper: the tiny GPTModel config the library's tests build their models from."""
from shared.model import GPT_CONFIG_124M


def tiny_cfg(**over):
    """GPT_CONFIG_124M's switches at toy sizes (20 ids, 16 positions, width 8, 2 heads, 1 layer,
    no dropout), with `over` on top: a test names the sizes and switches its check depends on."""
    return {**GPT_CONFIG_124M, "vocab_size": 20, "context_length": 16, "emb_dim": 8,
            "num_heads": 2, "num_layers": 1, "drop_rate": 0.0, **over}
