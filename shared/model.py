"""GPTModel: GPT-2 as chapters 3-4 build it, plus the switches chapter 6 adds.

The configuration dictionary decides the architecture: the book's keys (GPT_CONFIG_124M) and the
switches of shared/config.py's MODEL_SWITCHES table (norm, pos_encoding, rope_theta, tie_weights,
init, ...), each with its default, allowed values and meaning. With every switch at its default
the model is exactly GPT-2, so OpenAI's weights load into it (shared/gpt2.py).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared import checks
from shared.config import GPT_CONFIG_124M, with_defaults  # noqa: F401 (GPT_CONFIG_124M: re-export)
from shared.tokenizer import GPT2_VOCAB_SIZE


def make_norm(kind: str, dim: int) -> nn.Module:
    """LayerNorm as in GPT-2 (eps 1e-5), or RMSNorm as in Llama (eps 1e-6)."""
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=1e-6)
    return nn.LayerNorm(dim, eps=1e-5)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE), split-halves layout as in Hugging Face's Llama.

    Feature i of the first half and feature i of the second half form a pair that is rotated by the
    angle pos * theta^(-2i/head_dim). A dot product of two rotated vectors then depends only on the
    offset between their positions, which is what makes RoPE a *relative* position encoding.
    """

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
        angles = torch.outer(torch.arange(max_len).float(), inv_freq)  # (max_len, head_dim/2)
        angles = torch.cat((angles, angles), dim=-1)                   # (max_len, head_dim)
        # Tables are recomputed from the config, so they need not be saved in checkpoints.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        # x: (B, H, T, head_dim); positions start_pos .. start_pos + T - 1
        T = x.size(-2)
        cos = self.cos[start_pos:start_pos + T].to(x.dtype)  # (T, head_dim)
        sin = self.sin[start_pos:start_pos + T].to(x.dtype)
        return x * cos + rotate_half(x) * sin


class KVCache:
    """Keys and values of every layer, preallocated once: (num_layers, B, H, max_len, head_dim).

    Writing new entries in place avoids the quadratic cost of concatenating growing tensors.
    `length` is the number of positions filled so far.
    """

    def __init__(self, num_layers, batch_size, num_heads, max_len, head_dim, device=None, dtype=None):
        shape = (num_layers, batch_size, num_heads, max_len, head_dim)
        # Uninitialised: only positions [0, length) are ever read, and each is written first.
        self.keys = torch.empty(shape, device=device, dtype=dtype)
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, H, T, head_dim) after the filled part; return all keys and values so far.

        Every layer writes the same T positions; the last layer's update advances `length`."""
        start, end = self.length, self.length + k.size(-2)
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        if layer == self.keys.size(0) - 1:
            self.length = end
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def reset(self) -> None:
        self.length = 0


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention through PyTorch's fused scaled_dot_product_attention."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False,
                 qk_norm=False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.context_length = context_length
        self.dropout = dropout
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)  # combines the heads
        # QK-norm as Qwen3 does it (transformers' models/qwen3/modeling_qwen3.py, Qwen3Attention):
        # RMSNorm with a learned gain over each head's head_dim features, on the queries and on
        # the keys, before RoPE. With unit gains a score q.k / sqrt(head_dim) is then at most
        # sqrt(head_dim), however large the projections grow. Off: the identity.
        self.q_norm = make_norm("rmsnorm", self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = make_norm("rmsnorm", self.head_dim) if qk_norm else nn.Identity()

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, head_dim)

    def forward(self, x, rope=None, kv_cache=None, layer_idx=0):
        B, T, _ = x.shape
        start_pos = kv_cache.length if kv_cache is not None else 0
        q = self.q_norm(self.split_heads(self.W_query(x)))  # (B, H, T, head_dim)
        k = self.k_norm(self.split_heads(self.W_key(x)))
        v = self.split_heads(self.W_value(x))
        if rope is not None:  # rotate queries and keys by their absolute positions
            q, k = rope(q, start_pos), rope(k, start_pos)
        if kv_cache is not None:  # attend over every position seen so far
            k, v = kv_cache.update(layer_idx, k, v)

        dropout_p = self.dropout if self.training else 0.0
        if start_pos == 0:    # queries and keys cover the same positions: plain causal mask
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif T == 1:          # one new query sees every cached key: no mask at all
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:                 # a chunk after a cached prefix: query i sees keys up to start_pos + i
            mask = torch.ones(T, start_pos + T, dtype=torch.bool, device=x.device).tril(start_pos)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)

        y = y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)  # (B, T, d_out)
        return self.out_proj(y)


class FeedForward(nn.Module):
    """Position-wise MLP, 4x wide, with GPT-2's tanh-approximated GELU."""

    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]),
            nn.GELU(approximate="tanh"),
            nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]),
        )

    def forward(self, x):
        return self.layers(x)

    @property
    def out_proj(self) -> nn.Linear:
        """The projection that writes into the residual stream."""
        return self.layers[2]


def swiglu_hidden_dim(emb_dim: int) -> int:
    """2/3 of GPT-2's 4 * emb_dim, so that SwiGLU's three matrices hold as many weights as the
    GELU MLP's two (3 * 8/3 = 2 * 4), rounded up to a multiple of 8 for the matmul kernels: the
    rule of Meta's Llama code (llama/model.py, FeedForward), which rounds to 256 instead.
    emb_dim 384 -> 1024, 768 -> 2048."""
    return -(-(8 * emb_dim // 3) // 8) * 8


class SwiGLUFeedForward(nn.Module):
    """Llama's gated MLP: down(silu(gate(x)) * up(x)), without biases (Shazeer 2020, "GLU Variants
    Improve Transformer"; names as in Hugging Face's LlamaMLP)."""

    def __init__(self, cfg):
        super().__init__()
        hidden = swiglu_hidden_dim(cfg["emb_dim"])
        self.gate_proj = nn.Linear(cfg["emb_dim"], hidden, bias=False)
        self.up_proj = nn.Linear(cfg["emb_dim"], hidden, bias=False)
        self.down_proj = nn.Linear(hidden, cfg["emb_dim"], bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (B, T, C)

    @property
    def out_proj(self) -> nn.Linear:
        """The projection that writes into the residual stream."""
        return self.down_proj


FEED_FORWARDS = {"gelu": FeedForward, "swiglu": SwiGLUFeedForward}  # cfg["ffn"] -> its class


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then x + ffn(norm2(x)).

    Only the branch input is normalised; the residual stream itself passes through untouched, so
    gradients flow straight from the loss to the embeddings.
    """

    def __init__(self, cfg):
        super().__init__()
        cfg = with_defaults(cfg)  # the switches it leaves out: shared/config.py's defaults
        self.att = MultiHeadAttention(
            d_in=cfg["emb_dim"], d_out=cfg["emb_dim"], context_length=cfg["context_length"],
            dropout=cfg["drop_rate"], num_heads=cfg["num_heads"], qkv_bias=cfg["qkv_bias"],
            qk_norm=cfg["qk_norm"])
        self.ff = FEED_FORWARDS[cfg["ffn"]](cfg)
        self.norm1 = make_norm(cfg["norm"], cfg["emb_dim"])
        self.norm2 = make_norm(cfg["norm"], cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x, rope=None, kv_cache=None, layer_idx=0):
        x = x + self.drop_shortcut(self.att(self.norm1(x), rope, kv_cache, layer_idx))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x


class GPTModel(nn.Module):
    """A decoder-only transformer: GPTModel(cfg)(idx) -> logits (B, T, vocab_size)."""

    def __init__(self, cfg):
        super().__init__()
        checks.check_model_config(cfg)
        # Plain ints: the config is saved in checkpoints, which hold only plain Python types.
        self.cfg = {k: int(v) if k in checks.SIZE_KEYS else v for k, v in cfg.items()}
        cfg = with_defaults(self.cfg)  # the switches it leaves out: shared/config.py's defaults
        self.context_length = cfg["context_length"]
        # Ids the tokenizer can produce; a padded vocabulary (50304) has rows no text maps to,
        # and generation never samples them.
        self.tokenizer_vocab_size = cfg.get("tokenizer_vocab_size",
                                            min(cfg["vocab_size"], GPT2_VOCAB_SIZE))

        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        if cfg["pos_encoding"] == "learned":
            self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
            self.rope = None
        else:
            self.pos_emb = None
            self.rope = RotaryEmbedding(cfg["emb_dim"] // cfg["num_heads"], cfg["context_length"],
                                        cfg["rope_theta"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg["num_layers"]))
        self.final_norm = make_norm(cfg["norm"], cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)
        if cfg["tie_weights"]:
            self.out_head.weight = self.tok_emb.weight
        # init="pytorch": every layer drew its PyTorch default above, in the book's order, so
        # torch.manual_seed(123) gives the book's weights; drawing them again would not.
        if cfg["init"] == "gpt2":
            self.reset_parameters()

    def reset_parameters(self):
        """GPT-2's initialisation (cfg["init"] = "gpt2", the default): N(0, 0.02) weights, zero
        biases, and the projections that write into the residual stream scaled by
        1/sqrt(2 * num_layers), so the stream's variance does not grow with depth. The initial loss
        is then close to ln(vocab_size).

        cfg["init"] = "pytorch" keeps each layer's PyTorch default instead, as the book's chapter 5
        and the chapter 6 blog post do: N(0, 1) embeddings and uniform(+-1/sqrt(fan_in)) linear
        weights. With an untied head that too starts near ln(vocab_size); a tied head then holds
        the N(0, 1) embedding, and the initial loss explodes (chapter 6 shows it). The constructor
        keeps the draws it made; calling this method draws them again."""
        if with_defaults(self.cfg)["init"] == "pytorch":
            for module in self.modules():
                if module is not self and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            self.tok_emb.reset_parameters()  # last: a tied head keeps the embedding's N(0, 1)
            return
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(2 * self.cfg["num_layers"])
        for block in self.trf_blocks:
            nn.init.normal_(block.att.out_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.ff.out_proj.weight, mean=0.0, std=residual_std)

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty cache for `batch_size` sequences of up to `max_len` (default: context) tokens."""
        ref = self.out_head.weight
        return KVCache(self.cfg["num_layers"], batch_size, self.cfg["num_heads"],
                       max_len or self.context_length, self.cfg["emb_dim"] // self.cfg["num_heads"],
                       device=ref.device, dtype=ref.dtype)

    def forward(self, idx, kv_cache=None, last_only=False):
        """idx: (B, T) token ids. With `kv_cache`, idx holds only the new tokens, which follow the
        `kv_cache.length` cached ones. `last_only` computes logits for the last position alone
        (all that generation needs), which skips most of the output head's work."""
        T = idx.size(1)
        start_pos = kv_cache.length if kv_cache is not None else 0
        x = self.tok_emb(idx)                                   # (B, T, C)
        if self.pos_emb is not None:
            positions = torch.arange(start_pos, start_pos + T, device=idx.device)
            x = x + self.pos_emb(positions)                     # (T, C) broadcast over the batch
        x = self.drop_emb(x)
        for i, block in enumerate(self.trf_blocks):
            x = block(x, self.rope, kv_cache, i)                # the last block advances the cache
        if last_only:
            x = x[:, -1:, :]                                    # (B, 1, C)
        return self.out_head(self.final_norm(x))                # (B, T, vocab_size)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (a tied head is counted once)."""
    return sum(p.numel() for p in model.parameters())


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel (.module) or torch.compile (._orig_mod)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
