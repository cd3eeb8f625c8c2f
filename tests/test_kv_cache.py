"""The KV cache changes speed, never results: cached and uncached decoding agree token for token."""
import pytest
import torch

from shared.generate import generate
from shared.model import GPTModel
from shared.tokenizer import GPT2_VOCAB_SIZE
from tiny import tiny_cfg

TINY = tiny_cfg(vocab_size=64, emb_dim=32, num_heads=4, num_layers=2, qkv_bias=True)
CONFIGS = {
    "learned-layernorm": dict(pos_encoding="learned", norm="layernorm"),
    "learned-rmsnorm": dict(pos_encoding="learned", norm="rmsnorm"),
    "rope-layernorm": dict(pos_encoding="rope", norm="layernorm"),
    "rope-rmsnorm": dict(pos_encoding="rope", norm="rmsnorm"),
    "rope-rmsnorm-tied": dict(pos_encoding="rope", norm="rmsnorm", tie_weights=True),
    "learned-layernorm-tied": dict(pos_encoding="learned", norm="layernorm", tie_weights=True),
    "rope-rmsnorm-swiglu": dict(pos_encoding="rope", norm="rmsnorm", ffn="swiglu"),
    "rope-rmsnorm-qknorm": dict(pos_encoding="rope", norm="rmsnorm", qk_norm=True),
    "learned-layernorm-qknorm": dict(pos_encoding="learned", norm="layernorm", qk_norm=True),
}


def tiny_model(switches, seed=0):
    """Large random weights: far-apart logits and varied text, so a cache bug changes tokens."""
    torch.manual_seed(seed)
    model = GPTModel(dict(TINY, **switches))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model.eval()


def fixed_prompt(length, batch_size=2):
    """Random token ids that do not depend on which tests ran before."""
    return torch.randint(0, TINY["vocab_size"], (batch_size, length),
                         generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", CONFIGS)
def test_greedy_cached_equals_uncached_past_the_context(name):
    """Context 16, prompt 5, 40 new tokens: the window slides 28 times; the tokens still agree."""
    model = tiny_model(CONFIGS[name])
    prompt = fixed_prompt(length=5)
    uncached = generate(model, prompt, 40, context_size=16, use_cache=False)
    cached = generate(model, prompt, 40, context_size=16, use_cache=True)
    assert cached.shape == (2, 45)
    assert cached.tolist() == uncached.tolist()
    assert len(set(uncached[:, 5:].flatten().tolist())) > 4  # varied text, not one token repeated


@pytest.mark.parametrize("name", CONFIGS)
def test_sampled_cached_equals_uncached_with_the_same_seed(name):
    """Same logits, same random draws: temperature and top-k sampling agree with and without cache."""
    model = tiny_model(CONFIGS[name])
    prompt = fixed_prompt(length=3)
    runs = []
    for use_cache in (False, True):
        torch.manual_seed(42)
        runs.append(generate(model, prompt, 30, context_size=16, temperature=1.0, top_k=20,
                             use_cache=use_cache))
    assert runs[0].tolist() == runs[1].tolist()


@pytest.mark.parametrize("name", CONFIGS)
def test_chunked_prefill_equals_one_full_forward(name):
    """7 tokens, then 5 more through the cache: the same logits as all 12 at once."""
    model = tiny_model(CONFIGS[name])
    idx = torch.randint(0, TINY["vocab_size"], (2, 12))
    cache = model.new_kv_cache(batch_size=2)
    with torch.no_grad():
        full = model(idx)
        first = model(idx[:, :7], kv_cache=cache)
        second = model(idx[:, 7:], kv_cache=cache)
        new = torch.randint(0, TINY["vocab_size"], (2, 1))
        last = model(new, kv_cache=cache)                      # one decode step after the prefill
        expected_last = model(torch.cat([idx, new], dim=1))[:, -1:]
    assert cache.length == 13
    torch.testing.assert_close(first, full[:, :7], rtol=0, atol=1e-5)
    torch.testing.assert_close(second, full[:, 7:], rtol=0, atol=1e-5)
    torch.testing.assert_close(last, expected_last, rtol=0, atol=1e-5)


def test_cache_advances_itself_and_generation_never_overflows_it():
    """KVCache.update advances `length` at the last layer; generate rebuilds a full cache (the
    window slides) instead of writing past its end, so a long run equals the uncached one."""
    model = tiny_model(CONFIGS["rope-rmsnorm"])
    cache = model.new_kv_cache(batch_size=1, max_len=8)
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), kv_cache=cache)
    assert cache.length == 6
    k = torch.zeros(1, TINY["num_heads"], 1, TINY["emb_dim"] // TINY["num_heads"])
    cache.update(0, k, k)
    assert cache.length == 6  # not the last layer: the other layers still have to write
    cache.update(TINY["num_layers"] - 1, k, k)
    assert cache.length == 7

    prompt = torch.tensor([[1, 2, 3]])
    steps = 3 * TINY["context_length"]  # the window slides many times
    cached = generate(model, prompt, steps, TINY["context_length"], use_cache=True)
    assert torch.equal(cached, generate(model, prompt, steps, TINY["context_length"]))


def padded_vocab_model(pos_encoding):
    """vocab_size 50304 whose padded rows (ids >= 50257) are the most likely at every position.

    The final LayerNorm's weight is 0 and its bias u, so every position's final hidden state is u;
    rows >= 50257 of the head are 100 u, far above every real row."""
    cfg = dict(TINY, vocab_size=50304, emb_dim=16, num_heads=2, num_layers=1,
               pos_encoding=pos_encoding, norm="layernorm")
    torch.manual_seed(0)
    model = GPTModel(cfg)
    with torch.no_grad():
        u = torch.randn(cfg["emb_dim"])
        model.final_norm.weight.zero_()
        model.final_norm.bias.copy_(u)
        model.out_head.weight[GPT2_VOCAB_SIZE:] = 100.0 * u
    return model.eval()


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
@pytest.mark.parametrize("use_cache", [False, True])
def test_padded_vocabulary_ids_are_never_generated(pos_encoding, use_cache):
    """Even when ids >= 50257 have the top logits, generate returns only ids a tokenizer knows."""
    model = padded_vocab_model(pos_encoding)
    prompt = torch.randint(0, GPT2_VOCAB_SIZE, (2, 4))
    with torch.no_grad():
        assert (model(prompt).argmax(-1) >= GPT2_VOCAB_SIZE).all()  # the trap is set

    best_real = model.out_head.weight[:GPT2_VOCAB_SIZE] @ model.final_norm.bias
    greedy = generate(model, prompt, 20, context_size=16, use_cache=use_cache)
    assert (greedy[:, 4:] == best_real.argmax()).all()  # the most likely real token, every step
    for top_k in (None, 5):
        torch.manual_seed(0)
        sampled = generate(model, prompt, 20, context_size=16, temperature=1.0, top_k=top_k,
                           use_cache=use_cache)
        assert (sampled < GPT2_VOCAB_SIZE).all()


@pytest.mark.parametrize("name", ["learned-layernorm", "rope-rmsnorm-tied"])
def test_decoding_layout_changes_storage_not_results(name, tmp_path):
    """use_decoding_layout transposes each weight's storage in place: same values, same Parameter
    objects (a tied head stays tied), the same tokens, and a checkpoint that loads anywhere."""
    import copy

    from shared.checkpoint import load_checkpoint, save_checkpoint
    from shared.speedups import use_decoding_layout

    model = tiny_model(CONFIGS[name])
    relaid = copy.deepcopy(model)
    params_before = list(relaid.parameters())
    assert use_decoding_layout(relaid) is relaid
    assert list(relaid.parameters()) == params_before  # the same objects: optimizers keep them
    linears = [m for m in relaid.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 6 * TINY["num_layers"] + 1
    for m in linears:
        w = m.weight
        assert w.t().is_contiguous() and not w.is_contiguous()  # stored (in, out) row-major
    assert (relaid.out_head.weight is relaid.tok_emb.weight) == ("tied" in name)
    for (key, a), b in zip(model.state_dict().items(), relaid.state_dict().values()):
        assert torch.equal(a, b), key

    prompt = fixed_prompt(5)
    with torch.no_grad():
        torch.testing.assert_close(relaid(prompt), model(prompt), rtol=1e-5, atol=1e-5)
    expected = generate(model, prompt, 30, TINY["context_length"], use_cache=True)
    assert torch.equal(generate(relaid, prompt, 30, TINY["context_length"], use_cache=True),
                       expected)
    use_decoding_layout(relaid)  # a second call changes nothing
    assert all(m.weight.t().is_contiguous() for m in linears)

    save_checkpoint(tmp_path / "relaid.pt", relaid)
    fresh = GPTModel(dict(TINY, **CONFIGS[name]))
    load_checkpoint(tmp_path / "relaid.pt", fresh)
    assert torch.equal(generate(fresh.eval(), prompt, 30, TINY["context_length"]), expected)
