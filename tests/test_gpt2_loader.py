"""shared/gpt2.py: configs, assign and load_weights_into_gpt, checked against Hugging Face's GPT-2.

A random GPT-2 is written in OpenAI's TensorFlow layout, read back through download_and_load_gpt2
and load_weights_into_gpt, and compared with transformers.GPT2LMHeadModel holding the same arrays.
"""
import os

import pytest
import torch

from fake_gpt2 import REAL_HPARAMS, hf_gpt2_from_tf_variables, hf_parameter_count, write_fake_gpt2
from shared.generate import generate
from shared.gpt2 import (GPT2_SIZES, _flatten, assign, config_from_hparams, download_and_load_gpt2,
                         gpt2_arrays, gpt2_config, load_weights_into_gpt)
from shared.model import GPTModel, count_parameters
from switches import one_switch_changed

# Two small shapes, served as "124M" and "355M" (vocabulary kept at 50257 so real ids work).
SHAPES = {
    "124M": {"n_vocab": 50257, "n_ctx": 64, "n_embd": 32, "n_head": 4, "n_layer": 2},
    "355M": {"n_vocab": 50257, "n_ctx": 40, "n_embd": 48, "n_head": 3, "n_layer": 3},
}


@pytest.fixture(scope="module")
def fake_mirror(tmp_path_factory):
    """A mirror holding both random GPT-2s; returns (mirror, {size: {TF name: array}})."""
    mirror = tmp_path_factory.mktemp("mirror")
    tf_vars = {size: write_fake_gpt2(mirror, size, hparams, seed=i)
               for i, (size, hparams) in enumerate(SHAPES.items())}
    return mirror, tf_vars


@pytest.fixture
def tf_vars(fake_mirror, monkeypatch):
    """Puts the fake mirror first in LLM_MIRROR; returns {size: {TF name: array}}."""
    mirror, tf_vars = fake_mirror
    bases = [str(mirror), os.environ.get("LLM_MIRROR", "")]
    monkeypatch.setenv("LLM_MIRROR", os.pathsep.join(bases))
    return tf_vars


@pytest.mark.parametrize("size", list(REAL_HPARAMS))
def test_configs_agree_with_openai_hparams(size):
    full_name = f"{GPT2_SIZES[size].name} ({size})"
    cfg = gpt2_config(size)
    assert cfg == gpt2_config(full_name) == config_from_hparams(REAL_HPARAMS[size])
    assert (cfg["context_length"], cfg["vocab_size"], cfg["qkv_bias"]) == (1024, 50257, True)
    # Same parameter count as Hugging Face's GPT-2 of that size (both tie the output head).
    with torch.device("meta"):  # shapes only: no memory, no time
        assert count_parameters(GPTModel(cfg)) == hf_parameter_count(REAL_HPARAMS[size])


def test_unknown_config_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"124M.*1558M.*gpt2-small \(124M\).*gpt2-xl \(1558M\)"):
        gpt2_config("gpt2-tiny")


def test_assign_checks_shape_and_copies():
    left = torch.nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))
    right = torch.arange(6, dtype=torch.float32).reshape(2, 3).numpy()
    param = assign(left, right)
    assert isinstance(param, torch.nn.Parameter) and param.requires_grad
    assert param.dtype == torch.float64 and param.device == left.device
    assert torch.equal(param, torch.arange(6, dtype=torch.float64).reshape(2, 3))
    right[0, 0] = 100.0  # a copy: changing the checkpoint's array leaves the model alone
    assert param[0, 0] == 0.0
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        assign(left, right.T)


def test_block_count_and_architecture_are_checked():
    cfg = config_from_hparams(SHAPES["124M"])
    params = {"blocks": [{}] * cfg["num_layers"]}
    with pytest.raises(ValueError, match="3 transformer blocks, the model 2"):
        load_weights_into_gpt(GPTModel(cfg), {"blocks": [{}] * 3})
    # every switch value OpenAI's weights cannot have (shared/config.py's table), and no qkv bias
    for change in one_switch_changed(gpt2_only=True) + [{"qkv_bias": False}]:
        with pytest.raises(ValueError, match="qkv_bias=True"):
            load_weights_into_gpt(GPTModel({**cfg, **change}), params)


def test_missing_and_misshapen_arrays_are_named(tf_vars, tmp_path):
    """Not a bare KeyError('blocks'): the message names the arrays and where params come from,
    and nothing is replaced before the check, so the model is left as it was."""
    gpt = GPTModel(config_from_hparams(SHAPES["124M"]))
    with pytest.raises(ValueError, match=r"lacks 28 of the 28 GPT-2 arrays \(wte, wpe, g, b, "
                                         r"\.\.\.\).*download_and_load_gpt2"):
        load_weights_into_gpt(gpt, {})
    _, params = download_and_load_gpt2("124M", tmp_path, progress=False)
    c_fc = params["blocks"][1]["mlp"]["c_fc"]
    bias = c_fc.pop("b")
    with pytest.raises(ValueError, match=r"lacks 1 of the 28 GPT-2 arrays \(blocks\.1\.mlp\.c_fc\.b\)"):
        load_weights_into_gpt(gpt, params)
    c_fc["b"] = bias[:-1]
    embedding = gpt.tok_emb.weight
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.c_fc\.b is \(127,\), the model needs "
                                         r"\(128,\).*config_from_hparams"):
        load_weights_into_gpt(gpt, params)
    assert gpt.tok_emb.weight is embedding  # the earlier arrays were not loaded either


def test_every_parameter_is_assigned(tf_vars, tmp_path):
    settings, params = download_and_load_gpt2("124M", tmp_path, progress=False)
    gpt = GPTModel(config_from_hparams(settings))
    before = {name: (id(p), p.detach().clone())
              for name, p in gpt.named_parameters(remove_duplicate=False)}
    load_weights_into_gpt(gpt, params)
    after = dict(gpt.named_parameters(remove_duplicate=False))
    assert after.keys() == before.keys()
    for name, p in after.items():
        old_id, old_value = before[name]
        assert id(p) != old_id, f"{name} was not replaced"
        assert not torch.equal(p, old_value), f"{name} still holds its initial value"
    assert gpt.out_head.weight is gpt.tok_emb.weight  # tied, as in GPT-2


def test_gpt2_arrays_gives_back_the_arrays_that_were_loaded(tf_vars, tmp_path):
    """The map read backwards (what benchmarks/hf.py copies into Hugging Face's model) returns
    every array of the checkpoint unchanged, the fused query/key/value ones included."""
    settings, params = download_and_load_gpt2("355M", tmp_path, progress=False)
    gpt = GPTModel(config_from_hparams(settings))
    load_weights_into_gpt(gpt, params)
    arrays, expected = gpt2_arrays(gpt), _flatten(params)
    assert arrays.keys() == expected.keys()
    for name, array in expected.items():
        torch.testing.assert_close(arrays[name], torch.as_tensor(array), rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("size", list(SHAPES))
def test_logits_and_greedy_text_match_hugging_face(tf_vars, tmp_path, size):
    hparams = SHAPES[size]
    settings, params = download_and_load_gpt2(size, tmp_path, progress=False)
    assert settings == hparams
    gpt = GPTModel(config_from_hparams(settings)).eval()
    load_weights_into_gpt(gpt, params)
    hf = hf_gpt2_from_tf_variables(tf_vars[size], hparams)

    rng = torch.Generator().manual_seed(0)
    idx = torch.randint(0, hparams["n_vocab"], (2, hparams["n_ctx"]), generator=rng)
    with torch.no_grad():
        ours, theirs = gpt(idx), hf(idx).logits
    assert theirs.std() > 0.5  # far from uniform, so equal logits mean something
    assert (ours - theirs).abs().max() <= 1e-4

    prompt, new = idx[:, :8], 16
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                           do_sample=False, pad_token_id=0)
    for use_cache in (False, True):
        got = generate(gpt, prompt, new, hparams["n_ctx"], use_cache=use_cache)
        assert torch.equal(got, expected)

    # The check can fail: swapping one LayerNorm's scale and shift changes the logits.
    ln = params["blocks"][0]["ln_1"]
    block0 = {**params["blocks"][0], "ln_1": {"g": ln["b"], "b": ln["g"]}}
    load_weights_into_gpt(gpt, {**params, "blocks": [block0, *params["blocks"][1:]]})
    with torch.no_grad():
        assert (gpt(idx) - theirs).abs().max() > 1e-2
