"""GPTModel: parameter counts, causality, a hand-written reference forward, the loss at init."""
import math

import pytest
import torch

from shared.model import GPT_CONFIG_124M, GPTModel, count_parameters
from tiny import tiny_cfg
from weights import randomize_

TINY = tiny_cfg(vocab_size=97, context_length=24, emb_dim=32, num_heads=4, num_layers=2,
                drop_rate=0.1, qkv_bias=True)
VARIANTS = [("layernorm", "learned"), ("layernorm", "rope"), ("rmsnorm", "learned"),
            ("rmsnorm", "rope")]


def tiny_model(norm="layernorm", pos_encoding="learned", seed=0, **overrides):
    """A tiny model in eval mode with unit-scale activations and random norm weights and biases
    (tests/support/weights.py), so a wrong GELU, eps or a swapped parameter changes the output."""
    torch.manual_seed(seed)  # dropout masks in the training-mode tests
    model = GPTModel(dict(TINY, norm=norm, pos_encoding=pos_encoding, **overrides))
    return randomize_(model, seed).eval()


# -- parameter counts -----------------------------------------------------------------------------

def test_124m_parameter_count():
    """163,009,536 parameters with a separate output head; 124,412,160 counting the head once."""
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = GPTModel(GPT_CONFIG_124M)
        tied = GPTModel(dict(GPT_CONFIG_124M, tie_weights=True))
    assert count_parameters(model) == 163_009_536
    assert count_parameters(model) - model.out_head.weight.numel() == 124_412_160
    assert count_parameters(tied) == 124_412_160
    assert tied.out_head.weight is tied.tok_emb.weight


def test_parameter_count_by_formula():
    """count_parameters agrees with GPT-2's layer-by-layer formula on a tiny config."""
    V, T, C, L = TINY["vocab_size"], TINY["context_length"], TINY["emb_dim"], TINY["num_layers"]
    per_block = (3 * (C * C + C)       # query, key, value with bias
                 + C * C + C           # out_proj
                 + C * 4 * C + 4 * C   # ff up
                 + 4 * C * C + C       # ff down
                 + 2 * 2 * C)          # two LayerNorms
    expected = V * C + T * C + L * per_block + 2 * C + V * C
    assert count_parameters(GPTModel(TINY)) == expected


# -- causality ------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm, pos_encoding", VARIANTS)
def test_causal(norm, pos_encoding):
    """Changing token t changes no logit before t, and does change the logits at t."""
    model = tiny_model(norm, pos_encoding)
    idx = torch.randint(0, TINY["vocab_size"], (2, 16))
    with torch.no_grad():
        base = model(idx)
        for t in (0, 5, 15):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1) % TINY["vocab_size"]
            logits = model(changed)
            torch.testing.assert_close(logits[:, :t], base[:, :t], rtol=0, atol=1e-6)
            assert (logits[:, t] - base[:, t]).abs().max() > 1e-3


# -- a hand-written reference forward -------------------------------------------------------------

def reference_forward(model, idx):
    """GPT-2 written out step by step in float64 from the model's own weights: explicit masked
    softmax attention, LayerNorm / RMSNorm and tanh-GELU by formula, RoPE as complex rotation."""
    cfg = model.cfg
    W = {k: v.double() for k, v in model.state_dict().items()}
    H, C = cfg["num_heads"], cfg["emb_dim"]
    hd = C // H
    B, T = idx.shape

    def norm(x, prefix):
        if cfg.get("norm", "layernorm") == "rmsnorm":
            return x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * W[prefix + ".weight"]
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance, as LayerNorm uses
        return (x - mean) / torch.sqrt(var + 1e-5) * W[prefix + ".weight"] + W[prefix + ".bias"]

    def linear(x, prefix):
        y = x @ W[prefix + ".weight"].T
        return y + W[prefix + ".bias"] if prefix + ".bias" in W else y

    def gelu_tanh(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    def rope(x):  # x: (B, H, T, hd); feature i pairs with feature i + hd/2
        i = torch.arange(hd // 2, dtype=torch.float64)
        inv_freq = cfg.get("rope_theta", 10000.0) ** (-2 * i / hd)
        angle = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq  # (T, hd/2)
        z = torch.complex(x[..., :hd // 2], x[..., hd // 2:])  # (B, H, T, hd/2)
        z = z * torch.polar(torch.ones_like(angle), angle)      # rotate pair i by angle[t, i]
        return torch.cat((z.real, z.imag), dim=-1)

    x = W["tok_emb.weight"][idx]  # (B, T, C)
    if cfg.get("pos_encoding", "learned") == "learned":
        x = x + W["pos_emb.weight"][:T]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(cfg["num_layers"]):
        p = f"trf_blocks.{i}."
        h = norm(x, p + "norm1")
        q, k, v = (linear(h, p + "att." + name).view(B, T, H, hd).transpose(1, 2)
                   for name in ("W_query", "W_key", "W_value"))  # (B, H, T, hd)
        if cfg.get("pos_encoding") == "rope":
            q, k = rope(q), rope(k)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)  # (B, H, T, T)
        weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        heads = (weights @ v).transpose(1, 2).reshape(B, T, C)
        x = x + linear(heads, p + "att.out_proj")
        h = norm(x, p + "norm2")
        x = x + linear(gelu_tanh(linear(h, p + "ff.layers.0")), p + "ff.layers.2")
    return norm(x, "final_norm") @ W["out_head.weight"].T  # (B, T, V)


@pytest.mark.parametrize("norm, pos_encoding", VARIANTS)
def test_matches_reference_forward(norm, pos_encoding):
    """Logits equal the hand-written forward on the same weights (eval mode: no dropout) to 1e-5."""
    model = tiny_model(norm, pos_encoding)
    idx = torch.randint(0, TINY["vocab_size"], (2, TINY["context_length"]))
    with torch.no_grad():
        logits = model(idx)
    expected = reference_forward(model, idx)
    torch.testing.assert_close(logits.double(), expected, rtol=0, atol=1e-5)
    assert expected.std() > 0.1  # the comparison is not between two near-zero tensors
    with torch.no_grad():  # last_only gives the last position's logits alone
        torch.testing.assert_close(model(idx, last_only=True), logits[:, -1:], rtol=0, atol=1e-6)


def test_dropout_only_in_training():
    """Train mode drops activations (outputs vary); eval mode is deterministic."""
    model = tiny_model()
    idx = torch.randint(0, TINY["vocab_size"], (1, 8))
    with torch.no_grad():
        assert torch.equal(model(idx), model(idx))
        model.train()
        assert not torch.allclose(model(idx), model(idx))


# -- initialisation -------------------------------------------------------------------------------

def test_gpt2_initialisation():
    """N(0, 0.02) weights, zero biases, residual projections N(0, 0.02 / sqrt(2 * num_layers))."""
    cfg = dict(TINY, emb_dim=256, num_heads=4, num_layers=8)
    torch.manual_seed(0)
    model = GPTModel(cfg)
    residual_std = 0.02 / math.sqrt(2 * cfg["num_layers"])
    for name, p in model.named_parameters():
        if name.endswith("att.out_proj.weight") or name.endswith("ff.layers.2.weight"):
            assert p.std().item() == pytest.approx(residual_std, rel=0.05), name
        elif name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif "norm" in name:
            assert torch.all(p == 1), name
        else:
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name


@pytest.mark.parametrize("tie_weights", [False, True])
def test_pytorch_initialisation(tie_weights):
    """init="pytorch" keeps PyTorch's defaults: N(0, 1) embeddings (a tied head shares them),
    uniform(+-1/sqrt(fan_in)) linear weights and biases, LayerNorm ones and zeros."""
    cfg = dict(TINY, emb_dim=256, num_heads=4, num_layers=2, vocab_size=2000, qkv_bias=True,
               init="pytorch", tie_weights=tie_weights)
    torch.manual_seed(0)
    model = GPTModel(cfg)
    for name, p in model.named_parameters():
        if "norm" in name:
            assert torch.all(p == (1 if name.endswith("weight") else 0)), name
        elif name.endswith("emb.weight"):
            assert p.std().item() == pytest.approx(1.0, rel=0.05), name
        else:
            fan_in = model.get_submodule(name.rsplit(".", 1)[0]).in_features
            bound = fan_in ** -0.5
            assert p.abs().max().item() <= bound, name
            if p.dim() == 2:
                assert p.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05), name
    head_std = model.out_head.weight.std().item()
    assert head_std == pytest.approx(1.0 if tie_weights else 256 ** -0.5 / math.sqrt(3), rel=0.05)


@pytest.mark.slow  # forward passes of two 124M-wide models (4 s on two busy cores)
def test_pytorch_init_loss_near_ln_vocab_untied_and_far_above_tied(initial_loss):
    """The book's chapter 5 model (untied head) starts near ln(V) with PyTorch's defaults too;
    tying the head to the N(0, 1) embedding makes the untrained model wildly overconfident."""
    cfg = dict(GPT_CONFIG_124M, context_length=256, num_layers=2, init="pytorch")
    assert abs(initial_loss(cfg) - math.log(50257)) < 0.5
    assert initial_loss(dict(cfg, tie_weights=True)) > 5 * math.log(50257)


@pytest.mark.slow  # a forward pass of the full 124M model (5 s on two busy cores)
def test_loss_at_init_is_ln_vocab(initial_loss):
    """The real 124M model starts near uniform guessing: cross-entropy within 0.5 of ln(50257)."""
    loss = initial_loss(GPT_CONFIG_124M)
    assert abs(loss - math.log(50257)) < 0.5


# -- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"emb_dim": 30}, "divisible by num_heads"),
    ({"norm": "batchnorm"}, "norm must be one of"),
    ({"pos_encoding": "alibi"}, "pos_encoding must be one of"),
    ({"pos_encoding": "rope", "emb_dim": 36, "num_heads": 4}, "must be even"),
    ({"init": "xavier"}, "init must be one of"),
    ({"num_layers": 0}, "num_layers must be a positive integer"),
    ({"num_heads": 0}, "num_heads must be a positive integer"),
    ({"vocab_size": 0}, "vocab_size must be a positive integer"),
    ({"emb_dim": 16.0}, "emb_dim must be a positive integer"),
    # meaningless numbers that would build a model and then train to NaN
    ({"pos_encoding": "rope", "rope_theta": 0.0}, "rope_theta must be a finite number > 0"),
    ({"pos_encoding": "rope", "rope_theta": float("inf")}, "rope_theta must be a finite"),
    ({"drop_rate": 1.0}, r"drop_rate must be in \[0, 1\)"),
    ({"drop_rate": float("nan")}, "drop_rate must be in"),
])
def test_bad_config_raises(change, message):
    with pytest.raises(ValueError, match=message):
        GPTModel(dict(TINY, **change))


def test_numpy_sizes_are_stored_as_int(tmp_path):
    """Sizes computed with numpy (np.int64) build the model, and the stored config holds plain
    ints, so a checkpoint (plain Python types only) can carry it."""
    import numpy as np

    from shared.checkpoint import load_checkpoint, save_checkpoint

    model = GPTModel(dict(TINY, emb_dim=np.int64(32), num_layers=np.int32(2)))
    assert model.cfg == TINY and all(type(model.cfg[k]) is int for k in ("emb_dim", "num_layers"))
    save_checkpoint(tmp_path / "m.pt", model, model_config=model.cfg)
    assert load_checkpoint(tmp_path / "m.pt", GPTModel(TINY))["model_config"] == TINY


def test_missing_config_key_raises():
    cfg = dict(TINY)
    del cfg["qkv_bias"]
    with pytest.raises(ValueError, match="qkv_bias"):
        GPTModel(cfg)


def test_bad_ids_are_refused_at_the_edge_not_in_forward():
    """forward assumes valid ids, as the book's does; generate (an entry point) checks them and
    says what to do. Checked against what forward itself does with the same ids."""
    from shared.generate import generate

    model = tiny_model()
    bad_cases = [(torch.zeros(5, dtype=torch.long), "batch, tokens"),
                 ([[1, 2]], "tensor of token ids"),
                 (torch.zeros(1, 3), "integer token ids"),
                 (torch.tensor([[1, TINY["vocab_size"], 2]]), rf"\[0, {TINY['vocab_size']}\).*{TINY['vocab_size']}"),
                 (torch.tensor([[1, -1, 2]]), rf"\[0, {TINY['vocab_size']}\).*-1")]
    for idx, message in bad_cases:
        with pytest.raises(ValueError, match=message):
            generate(model, idx, 2, TINY["context_length"])
    with pytest.raises(IndexError):  # the core: torch's own error, no check of ours in between
        model(torch.tensor([[1, TINY["vocab_size"]]]))


def test_forward_and_decoding_read_no_ids_off_the_cpu():
    """The id range check runs on the CPU only: on a GPU, reading the ids would make the host wait
    for the device on every forward pass and every decoded token. The meta device holds no data, so
    any read of a value there raises; the whole cached decoding loop must run without one."""
    from shared.generate import generate

    with torch.device("meta"):
        model = GPTModel(dict(TINY, drop_rate=0.0)).eval()
    idx = torch.zeros(2, 5, dtype=torch.long, device="meta")
    assert model(idx).device.type == "meta"
    for use_cache in (False, True):
        out = generate(model, idx, 4, TINY["context_length"], use_cache=use_cache)
        assert out.shape == (2, 9) and out.device.type == "meta"


@pytest.mark.parametrize("key", ["qkv_bias", "tie_weights"])
@pytest.mark.parametrize("value", ["False", "true", None, 2])
def test_a_switch_that_is_not_a_boolean_is_refused(key, value):
    """"False" (a string, as from a hand-written config) is true to Python: it would build the
    model with a bias or a tied head without a word."""
    cfg = tiny_cfg(vocab_size=64, context_length=8, emb_dim=16, **{key: value})
    with pytest.raises(ValueError, match=rf"{key} must be True or False, got {value!r}"):
        GPTModel(cfg)
    GPTModel({**cfg, key: False})
