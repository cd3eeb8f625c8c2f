"""Decoding: greedy, temperature, top-k, per-row end-of-text, prompt cropping and bad arguments."""
import pytest
import torch
import torch.nn as nn

from shared.generate import generate, generate_text_simple, sample_next_token
from shared.model import GPTModel
from tiny import tiny_cfg

TINY = tiny_cfg(vocab_size=64, emb_dim=32, num_heads=4, num_layers=2, pos_encoding="rope")


@pytest.fixture(scope="module")
def model():
    """A tiny model with large random weights, so its logits are far apart and its text varied."""
    torch.manual_seed(0)
    model = GPTModel(TINY)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model.eval()


def prompt(batch_size, length, seed=0):
    """Random token ids that do not depend on which tests ran before."""
    return torch.randint(0, TINY["vocab_size"], (batch_size, length),
                         generator=torch.Generator().manual_seed(seed))


def greedy_reference(model, idx, max_new_tokens, context_size):
    """Argmax of the last position, one token at a time, written out independently."""
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(idx[:, -context_size:])
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return idx


def test_greedy_equals_top_k_1_and_temperature_0(model):
    """temperature=0, top_k=1 (with or without temperature) and the chapter's loop agree."""
    idx = prompt(2, 4)
    expected = greedy_reference(model, idx, 10, 16)
    assert len(set(expected[:, 4:].flatten().tolist())) > 3  # not one token repeated
    assert torch.equal(generate(model, idx, 10, 16), expected)
    assert torch.equal(generate(model, idx, 10, 16, temperature=0.0, top_k=1), expected)
    assert torch.equal(generate(model, idx, 10, 16, temperature=1.5, top_k=1), expected)
    assert torch.equal(generate_text_simple(model, idx, 10, 16), expected)


def test_fixed_seed_fixed_sample(model):
    """The same seed gives the same sample; another seed gives another one."""
    idx = prompt(1, 4)

    def sample(seed):
        torch.manual_seed(seed)
        return generate(model, idx, 20, 16, temperature=1.5, top_k=20)

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))
    assert not torch.equal(sample(1), greedy_reference(model, idx, 20, 16))


def test_sampling_follows_softmax_of_scaled_logits():
    """Sampled frequencies match softmax(logits / T) restricted to the top k."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]]).repeat(20000, 1)
    torch.manual_seed(0)
    tokens = sample_next_token(logits, temperature=2.0, top_k=3).flatten()
    freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
    expected = torch.softmax(torch.tensor([2.0, 1.0, 0.5]) / 2.0, dim=0)
    torch.testing.assert_close(freq[:3], expected, rtol=0, atol=0.015)
    assert freq[3:].sum() == 0  # outside the top 3: never


def test_generation_runs_in_eval_mode_and_restores_mode():
    """Dropout is off while generating; a model in training mode gets its mode back."""
    torch.manual_seed(0)
    model = GPTModel(dict(TINY, drop_rate=0.5)).train()
    idx = prompt(1, 4)
    expected = greedy_reference(model.eval(), idx, 8, 16)
    model.train()
    assert torch.equal(generate(model, idx, 8, 16), expected)
    assert model.training


def test_prompt_longer_than_context_is_cropped(model):
    """The model sees only the last context_size tokens: same continuation as the cropped prompt."""
    long_prompt = prompt(2, 30)
    out = generate(model, long_prompt, 6, context_size=16)
    cropped = long_prompt[:, -16:]
    assert torch.equal(out[:, :30], long_prompt)
    assert torch.equal(out[:, 30:], generate(model, cropped, 6, context_size=16)[:, 16:])
    with torch.no_grad():
        first = model(cropped)[:, -1].argmax(-1)
    assert torch.equal(out[:, 30], first)


class ScriptedModel(nn.Module):
    """Emits scripts[row][step] as the next token of each row (a logit of 10 on it, 0 elsewhere)."""

    def __init__(self, scripts, vocab_size=50):
        super().__init__()
        self.scripts, self.vocab_size = scripts, vocab_size
        self.calls = 0  # one forward pass per generated step

    def forward(self, idx, kv_cache=None, last_only=False):
        step = self.calls
        self.calls += 1
        logits = torch.zeros(idx.size(0), idx.size(1), self.vocab_size)  # (B, T, V)
        for row, script in enumerate(self.scripts):
            logits[row, -1, script[step]] = 10.0
        return logits


EOS = 0


def test_eos_pads_finished_rows_while_others_continue():
    """Row 0 stops after one token and is padded with eos; row 1 keeps generating."""
    model = ScriptedModel([[7, EOS, 3, 3, 3], [5, 6, 8, 9, 4]])
    ids = torch.tensor([[1, 2], [3, 4]])
    out = generate(model, ids, 5, context_size=100, eos_id=EOS)
    assert out.tolist() == [[1, 2, 7, EOS, EOS, EOS, EOS], [3, 4, 5, 6, 8, 9, 4]]


def test_eos_stops_early_when_every_row_finished():
    """When the last row emits eos, generation stops without appending that step."""
    model = ScriptedModel([[7, EOS, 3, 3, 3, 3, 3, 3], [5, 6, 8, EOS, 4, 4, 4, 4]])
    ids = torch.tensor([[1, 2], [3, 4]])
    out = generate(model, ids, 8, context_size=100, eos_id=EOS)
    assert out.tolist() == [[1, 2, 7, EOS, EOS], [3, 4, 5, 6, 8]]
    assert model.calls == 4  # no forward pass after everyone finished


def test_eos_single_row_not_appended():
    """One sequence: stop at eos, as the chapter's loop does, without appending it."""
    model = ScriptedModel([[5, 6, EOS, 7, 8]])
    out = generate(model, torch.tensor([[9]]), 5, context_size=100, eos_id=EOS)
    assert out.tolist() == [[9, 5, 6]]
    # Without eos_id the same script runs to max_new_tokens.
    model = ScriptedModel([[5, 6, EOS, 7, 8]])
    out = generate(model, torch.tensor([[9]]), 5, context_size=100)
    assert out.tolist() == [[9, 5, 6, EOS, 7, 8]]


def test_zero_new_tokens_returns_prompt(model):
    ids = prompt(1, 3)
    assert torch.equal(generate(model, ids, 0, 16), ids)


@pytest.mark.parametrize("kwargs, message", [
    (dict(top_k=0), "top_k"),
    (dict(top_k=-1, temperature=0.0), "top_k"),
    (dict(top_k=0, temperature=1.0), "top_k"),
    (dict(top_k=2.5, temperature=1.0), "top_k must be a positive whole number"),  # not torch's error
    (dict(top_k=True), "top_k must be a positive whole number"),
    (dict(temperature=-0.5), "temperature"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(idx=torch.zeros(1, 0, dtype=torch.long)), "empty"),
    (dict(idx=torch.tensor([1, 2, 3])), "batch, tokens"),
    (dict(context_size=0), "context_size"),
    (dict(temperature=float("nan")), "NaN"),
    # -inf / inf is NaN: the top-k mask would reach torch.multinomial as NaN probabilities.
    (dict(temperature=float("inf"), top_k=5), "temperature must be finite"),
    (dict(idx=torch.tensor([[1.0, 2.0]])), "integer token ids"),
    (dict(idx=torch.tensor([[1, 10**6]])), r"token ids must lie in \[0, "),
    # An eos_id the model never samples would never stop generation.
    (dict(eos_id=TINY["vocab_size"]), r"eos_id must be a token id .*\[0, 64\), got 64"),
    (dict(eos_id=-1), r"eos_id .*got -1"),
    # Checked up front: these short runs never outgrow the 16-token context to hit the model's check.
    (dict(context_size=17), "context_size 17 exceeds the model's context length 16; use at most"),
])
@pytest.mark.parametrize("use_cache", [False, True])
def test_bad_arguments_raise(model, kwargs, message, use_cache):
    """Every bad argument gets a ValueError that names it, cached or not."""
    args = dict(idx=torch.tensor([[1, 2]]), max_new_tokens=3, context_size=16, use_cache=use_cache)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        generate(model, **args)




@pytest.mark.parametrize("kwargs, message", [
    (dict(idx=torch.zeros(0, 3, dtype=torch.long)), "empty"),
    (dict(eos_id=1.5), "eos_id must be a token id"),
    (dict(eos_id="50256"), "eos_id must be a token id"),
])
def test_more_bad_arguments_are_named(model, kwargs, message):
    args = dict(idx=torch.tensor([[1, 2]]), max_new_tokens=3, context_size=16)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        generate(model, **args)


def test_ids_on_another_device_than_the_model_are_refused_at_the_edge():
    """The commonest notebook slip: the model moved to the GPU, the prompt left on the CPU."""
    torch.manual_seed(0)
    model = GPTModel(TINY).to("meta")  # any device other than the ids' will do
    idx = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"token ids are on cpu but the model is on meta.*idx.to\('meta'\)"):
        generate(model, idx, max_new_tokens=2, context_size=16)


# --- values the loop cannot take, refused at the edge ---------------------------------------------

@pytest.mark.parametrize("temperature", [1e-40, 1e-30, 5e-7])
def test_a_temperature_so_small_that_the_logits_overflow_is_refused(model, temperature):
    """logits / 1e-40 is inf in float32, and softmax turns it into NaN probabilities; the edge
    refuses every temperature below a bound that no logit can overflow (0 is greedy)."""
    with pytest.raises(ValueError, match="temperature"):
        generate(model, torch.tensor([[1, 2]]), 3, context_size=16, temperature=temperature)
    out = generate(model, torch.tensor([[1, 2]]), 3, context_size=16, temperature=1e-6)
    assert torch.equal(out, generate(model, torch.tensor([[1, 2]]), 3, context_size=16))


def test_an_eos_id_beyond_the_models_vocabulary_is_refused():
    """A model of 64 rows that says its tokenizer has 50257 ids can never produce id 100."""
    torch.manual_seed(0)
    small = GPTModel(dict(TINY, tokenizer_vocab_size=50257))
    with pytest.raises(ValueError, match=r"eos_id .*\[0, 64\), got 100"):
        generate(small, torch.tensor([[1, 2]]), 3, context_size=16, eos_id=100)
