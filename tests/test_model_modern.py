"""Chapter 6's switches against Hugging Face's Llama RoPE, torch's RMSNorm and GPT-2 itself."""
import math

import pytest
import torch

from shared.config import MODEL_SWITCHES, with_defaults
from shared.model import GPT_CONFIG_124M, GPTModel, MultiHeadAttention, RotaryEmbedding
from switches import one_switch_changed
from tiny import tiny_cfg
from weights import randomize_

TINY = tiny_cfg(vocab_size=101, emb_dim=48, num_heads=3, num_layers=2, qkv_bias=True)


# -- RoPE -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("theta, start_pos", [(10000.0, 0), (10000.0, 5), (500000.0, 3)])
def test_rope_matches_huggingface_llama(theta, start_pos):
    """Our rotation equals HF LlamaRotaryEmbedding + apply_rotary_pos_emb on random q, k."""
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    B, H, T, head_dim, max_len = 2, 3, 10, 16, 32
    config = LlamaConfig(hidden_size=H * head_dim, num_attention_heads=H, head_dim=head_dim,
                         max_position_embeddings=max_len,
                         rope_parameters={"rope_type": "default", "rope_theta": theta})
    q, k = torch.randn(B, H, T, head_dim), torch.randn(B, H, T, head_dim)
    positions = torch.arange(start_pos, start_pos + T).unsqueeze(0)  # (1, T)
    cos, sin = llama.LlamaRotaryEmbedding(config)(q, positions)
    q_ref, k_ref = llama.apply_rotary_pos_emb(q, k, cos, sin)

    rope = RotaryEmbedding(head_dim, max_len, theta)
    torch.testing.assert_close(rope(q, start_pos), q_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(rope(k, start_pos), k_ref, rtol=0, atol=1e-5)


def test_rope_scores_depend_only_on_the_offset():
    """q at m and k at n score the same as q at m + s and k at n + s; another offset differs."""
    head_dim = 16
    rope = RotaryEmbedding(head_dim, max_len=64)
    q, k = torch.randn(1, 1, 1, head_dim), torch.randn(1, 1, 1, head_dim)

    def score(m, n):
        return (rope(q, start_pos=m) * rope(k, start_pos=n)).sum().item()

    for m, n in [(7, 3), (3, 7), (5, 5)]:
        for shift in (1, 10, 40):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-5)
    assert abs(score(7, 3) - score(7, 4)) > 1e-3
    assert abs(score(7, 3) - (q * k).sum().item()) > 1e-3  # RoPE did rotate something


def test_rope_buffers_are_not_saved():
    """cos/sin tables are rebuilt from the config, so state_dict holds parameters only."""
    model = GPTModel(dict(TINY, pos_encoding="rope"))
    keys = set(model.state_dict())
    assert not any("rope" in key or key.endswith(("cos", "sin")) for key in keys)
    assert "pos_emb.weight" not in keys and model.pos_emb is None
    assert keys == {name for name, _ in model.named_parameters()}
    assert {name for name, _ in model.named_buffers()} == {"rope.cos", "rope.sin"}


# -- RMSNorm --------------------------------------------------------------------------------------

def test_rmsnorm_config_uses_rmsnorm_eps_1e6():
    """Every norm of an rmsnorm model equals torch.nn.RMSNorm(eps=1e-6) and the formula, on
    small inputs where eps matters."""
    model = randomize_(GPTModel(dict(TINY, norm="rmsnorm")))
    norms = [model.final_norm] + [m for b in model.trf_blocks for m in (b.norm1, b.norm2)]
    x = 1e-3 * torch.randn(2, 5, TINY["emb_dim"])  # mean square ~1e-6: a wrong eps shows
    for norm in norms:
        reference = torch.nn.RMSNorm(TINY["emb_dim"], eps=1e-6)
        with torch.no_grad():
            reference.weight.copy_(norm.weight)
            by_formula = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
            torch.testing.assert_close(norm(x), reference(x), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(norm(x), by_formula, rtol=1e-5, atol=1e-6)
        assert not any(name == "bias" for name, _ in norm.named_parameters())


# -- SwiGLU ---------------------------------------------------------------------------------------

def test_swiglu_matches_huggingface_llama_mlp():
    """ffn="swiglu": each block's feed-forward equals transformers' LlamaMLP (SiLU gate, no
    biases) holding the same weights, on random input."""
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    model = randomize_(GPTModel(dict(TINY, ffn="swiglu")))
    x = torch.randn(2, 7, TINY["emb_dim"])
    for block in model.trf_blocks:
        config = LlamaConfig(hidden_size=TINY["emb_dim"], num_attention_heads=TINY["num_heads"],
                             hidden_act="silu", mlp_bias=False,
                             intermediate_size=block.ff.up_proj.out_features)
        reference = llama.LlamaMLP(config)
        reference.load_state_dict(block.ff.state_dict())  # strict: a bias of ours would not fit
        with torch.no_grad():
            torch.testing.assert_close(block.ff(x), reference(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("emb_dim", [384, 768])
def test_swiglu_is_two_thirds_as_wide_with_as_many_weights(emb_dim):
    """Hidden width 2/3 * 4 * emb_dim (1024 for 384, 2048 for 768): its three matrices hold as
    many weights as the GELU MLP's two."""
    cfg = tiny_cfg(vocab_size=10, context_length=8, emb_dim=emb_dim, num_heads=6)
    with torch.device("meta"):  # shapes only
        gelu, swiglu = (GPTModel(dict(cfg, ffn=ffn)).trf_blocks[0].ff for ffn in ("gelu", "swiglu"))
    assert swiglu.up_proj.out_features == swiglu.gate_proj.out_features == 2 * 4 * emb_dim // 3
    gelu_matrices = sum(p.numel() for p in gelu.parameters() if p.dim() == 2)
    assert sum(p.numel() for p in swiglu.parameters()) == gelu_matrices == 8 * emb_dim ** 2


def test_swiglu_down_projection_gets_gpt2_residual_scaling():
    """GPT-2's init: N(0, 0.02) for gate and up, 0.02 / sqrt(2 * num_layers) for the projection
    that writes into the residual stream."""
    num_layers = 8
    torch.manual_seed(0)
    model = GPTModel(tiny_cfg(vocab_size=10, context_length=8, emb_dim=192, num_heads=4,
                              num_layers=num_layers, ffn="swiglu"))
    ff = model.trf_blocks[3].ff
    assert ff.gate_proj.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert ff.up_proj.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert ff.down_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(2 * num_layers),
                                                             rel=0.02)


def hf_twin(model):
    """transformers' LlamaForCausalLM, or with QK-norm Qwen3ForCausalLM, holding our weights:
    what GPTModel with RoPE, RMSNorm, SwiGLU and no qkv bias is, once its attention output bias
    is zero (theirs have none)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    cfg = with_defaults(model.cfg)
    config_class, model_class = ((Qwen3Config, Qwen3ForCausalLM) if cfg["qk_norm"]
                                 else (LlamaConfig, LlamaForCausalLM))
    config = config_class(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["emb_dim"], num_hidden_layers=cfg["num_layers"],
        num_attention_heads=cfg["num_heads"], num_key_value_heads=cfg["num_heads"],
        head_dim=cfg["emb_dim"] // cfg["num_heads"], hidden_act="silu",
        intermediate_size=model.trf_blocks[0].ff.up_proj.out_features,
        max_position_embeddings=cfg["context_length"], rms_norm_eps=1e-6, attention_bias=False,
        tie_word_embeddings=False, attn_implementation="eager",
        rope_parameters={"rope_type": "default", "rope_theta": cfg["rope_theta"]})
    twin = model_class(config)
    names = {"tok_emb.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight",
             "out_head.weight": "lm_head.weight"}
    pairs = [("att.W_query", "self_attn.q_proj"), ("att.W_key", "self_attn.k_proj"),
             ("att.W_value", "self_attn.v_proj"), ("att.out_proj", "self_attn.o_proj"),
             ("ff.gate_proj", "mlp.gate_proj"), ("ff.up_proj", "mlp.up_proj"),
             ("ff.down_proj", "mlp.down_proj"), ("norm1", "input_layernorm"),
             ("norm2", "post_attention_layernorm")]
    if cfg["qk_norm"]:
        pairs += [("att.q_norm", "self_attn.q_norm"), ("att.k_norm", "self_attn.k_norm")]
    for i in range(cfg["num_layers"]):
        for mine, hf in pairs:
            names[f"trf_blocks.{i}.{mine}.weight"] = f"model.layers.{i}.{hf}.weight"
    state = model.state_dict()
    assert set(names) == {key for key in state if not key.endswith("out_proj.bias")}  # all of ours
    twin.load_state_dict({hf: state[mine] for mine, hf in names.items()})  # strict: all of theirs
    return twin


def assert_same_as_hf_twin(cfg, grad_of):
    """GPTModel(cfg) and its Hugging Face twin: the same logits, and the same gradient for the
    parameter grad_of names (ours, theirs)."""
    model = randomize_(GPTModel(cfg))
    with torch.no_grad():
        for block in model.trf_blocks:
            block.att.out_proj.bias.zero_()
    twin = hf_twin(model)
    idx = torch.randint(0, cfg["vocab_size"], (2, cfg["context_length"]))
    ours, theirs = model(idx), twin(idx).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    assert theirs.std() > 0.1
    ours.logsumexp(-1).mean().backward()
    theirs.logsumexp(-1).mean().backward()
    mine, hf = (m.get_parameter(name).grad for m, name in zip((model, twin), grad_of))
    assert hf.abs().max() > 0
    torch.testing.assert_close(mine, hf, rtol=1e-4, atol=1e-6)


def test_rope_rmsnorm_swiglu_model_is_huggingface_llama():
    """With RoPE, RMSNorm and SwiGLU GPTModel computes what transformers' Llama computes: the same
    logits, and the same gradient for the first block's gate projection."""
    pytest.importorskip("transformers.models.llama.modeling_llama")
    assert_same_as_hf_twin(dict(TINY, qkv_bias=False, norm="rmsnorm", pos_encoding="rope",
                                ffn="swiglu"),
                           ("trf_blocks.0.ff.gate_proj.weight", "model.layers.0.mlp.gate_proj.weight"))


# -- QK-norm -------------------------------------------------------------------------------------

def written_out_attention(att, x, rope=None):
    """Causal attention written out (scores, mask, softmax), with torch.nn.RMSNorm(head_dim,
    eps=1e-6) holding att's gains applied to each head's queries and keys, then RoPE."""
    B, T, C = x.shape
    q, k, v = (att.split_heads(proj(x)) for proj in (att.W_query, att.W_key, att.W_value))
    q_norm, k_norm = (torch.nn.RMSNorm(att.head_dim, eps=1e-6) for _ in range(2))
    q_norm.weight.copy_(att.q_norm.weight)
    k_norm.weight.copy_(att.k_norm.weight)
    q, k = q_norm(q), k_norm(k)                                          # (B, H, T, head_dim)
    if rope is not None:
        q, k = rope(q), rope(k)
    scores = q @ k.transpose(-2, -1) / math.sqrt(att.head_dim)          # (B, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)
    weights = scores.masked_fill(causal, float("-inf")).softmax(dim=-1)
    return att.out_proj((weights @ v).transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_qk_norm_is_rmsnorm_on_each_heads_queries_and_keys(pos_encoding):
    """qk_norm=True: the fused attention (scaled_dot_product_attention) equals attention written
    out with torch.nn.RMSNorm over each head's features of q and of k, before RoPE. The gains are
    random, so swapping the two norms, or normalising after RoPE, shows."""
    model = randomize_(GPTModel(dict(TINY, qk_norm=True, pos_encoding=pos_encoding))).eval()
    x = torch.randn(2, 9, TINY["emb_dim"])
    for block in model.trf_blocks:
        with torch.no_grad():
            torch.testing.assert_close(block.att(x, model.rope),
                                       written_out_attention(block.att, x, model.rope),
                                       rtol=1e-5, atol=1e-5)


def test_qk_norm_model_is_huggingface_qwen3():
    """With RoPE, RMSNorm, SwiGLU and QK-norm GPTModel computes what transformers' Qwen3 computes
    (its q_norm and k_norm: per head, before RoPE): the same logits, and the same gradient for
    the first block's query norm gains."""
    pytest.importorskip("transformers.models.qwen3.modeling_qwen3")
    assert_same_as_hf_twin(dict(TINY, qkv_bias=False, norm="rmsnorm", pos_encoding="rope",
                                ffn="swiglu", qk_norm=True),
                           ("trf_blocks.0.att.q_norm.weight", "model.layers.0.self_attn.q_norm.weight"))


@pytest.mark.parametrize("qk_norm", [True, False])
def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys(qk_norm):
    """Query and key projections 50x larger: with QK-norm the output stays as it was (RMSNorm
    removes the scale); without it the softmax sharpens and the output changes."""
    torch.manual_seed(0)
    att = MultiHeadAttention(d_in=48, d_out=48, context_length=16, dropout=0.0, num_heads=3,
                             qk_norm=qk_norm).eval()
    x = torch.randn(2, 9, 48)
    with torch.no_grad():
        before = att(x)
        att.W_query.weight.mul_(50.0)
        att.W_key.weight.mul_(50.0)
        after = att(x)
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-5) == qk_norm


# -- the defaults are GPT-2 -----------------------------------------------------------------------

def test_defaults_equal_explicit_gpt2_switches():
    """No switches == every switch of the table written out at its default (norm="layernorm",
    pos_encoding="learned", ...): same keys, init and logits."""
    torch.manual_seed(0)
    default = GPTModel(TINY).eval()
    torch.manual_seed(0)
    explicit = GPTModel(with_defaults(TINY)).eval()
    assert explicit.cfg["norm"] == "layernorm" and explicit.cfg["pos_encoding"] == "learned"
    assert list(default.state_dict()) == list(explicit.state_dict())
    for key, value in default.state_dict().items():
        assert torch.equal(value, explicit.state_dict()[key]), key
    idx = torch.randint(0, TINY["vocab_size"], (2, 12))
    with torch.no_grad():
        assert torch.equal(default(idx), explicit(idx))


def test_defaults_equal_huggingface_gpt2():
    """With default switches and qkv_bias=True, GPTModel is GPT-2: same logits as transformers'
    GPT2LMHeadModel on the same weights (random LayerNorms and biases, so swaps fail)."""
    pytest.importorskip("transformers")
    from benchmarks.hf import copy_weights_to_hf, hf_gpt2
    torch.manual_seed(0)
    model = randomize_(GPTModel(TINY)).eval()
    hf = hf_gpt2(TINY, attn_implementation="eager").eval()
    assert hf.lm_head.weight is not hf.transformer.wte.weight  # untied, as TINY is
    copy_weights_to_hf(model, hf)

    idx = torch.randint(0, TINY["vocab_size"], (2, TINY["context_length"]))
    with torch.no_grad():
        ours, theirs = model(idx), hf(idx).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    assert theirs.std() > 0.1


# -- initial loss of the modern model -------------------------------------------------------------

@pytest.mark.parametrize("tie_weights", [False, True])
def test_modern_model_initial_loss_is_ln_vocab(initial_loss, tie_weights):
    """RoPE + RMSNorm with the padded vocabulary 50304 starts near ln(50304) = 10.83, not the
    seed's 143: the GPT-2 initialisation keeps the logits small."""
    cfg = dict(GPT_CONFIG_124M, vocab_size=50304, context_length=256, emb_dim=384, num_heads=6,
               num_layers=2, norm="rmsnorm", pos_encoding="rope", tie_weights=tie_weights)
    assert abs(initial_loss(cfg) - math.log(50304)) < 0.5


# -- the table of switches ------------------------------------------------------------------------

@pytest.mark.parametrize("change", one_switch_changed(), ids=str)
def test_every_value_of_every_switch_builds_a_model_that_trains(change):
    """Each value the table (shared/config.py) allows passes the check and gives a model in which
    every parameter gets a finite, non-zero gradient (a module built but left unused has none)."""
    torch.manual_seed(0)
    model = GPTModel(dict(TINY, **change))
    idx = torch.randint(0, TINY["vocab_size"], (2, TINY["context_length"]))
    logits = model(idx[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("key", list(MODEL_SWITCHES))
def test_a_value_the_table_does_not_allow_is_refused_by_name(key):
    """A string "False" for a True/False switch, a negative number, a name not in the table."""
    bad = {bool: "False", float: -1.0}.get(MODEL_SWITCHES[key].allowed, "bogus")
    with pytest.raises(ValueError, match=rf"^{key} must be"):
        GPTModel(dict(TINY, **{key: bad}))
