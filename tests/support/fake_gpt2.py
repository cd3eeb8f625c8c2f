"""Random GPT-2 checkpoints in OpenAI's exact TensorFlow layout, and a Hugging Face reference model.

A fake model is written into a mirror folder laid out like the download server,

    MIRROR/openaipublic.blob.core.windows.net/gpt-2/models/<size>/{checkpoint, hparams.json, ...}

so that with LLM_MIRROR=MIRROR `download_and_load_gpt2` fetches it exactly as it would fetch the
real one. Variables are named as in OpenAI's files (`model/wte`, `model/h0/attn/c_attn/w` of
shape [1, n_embd, 3 * n_embd], ..., `model/ln_f/g`) and stored as float32.
"""
import json
import os
from pathlib import Path

import numpy as np

MODELS_HOST_PATH = ("openaipublic.blob.core.windows.net", "gpt-2", "models")
ENCODINGS_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"

# hparams.json of OpenAI's four releases, copied from their files.
REAL_HPARAMS = {
    "124M": {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12},
    "355M": {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 1024, "n_head": 16, "n_layer": 24},
    "774M": {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 1280, "n_head": 20, "n_layer": 36},
    "1558M": {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 1600, "n_head": 25, "n_layer": 48},
}


def random_tf_variables(hparams, seed=0):
    """{TensorFlow name: float32 array} for a random GPT-2, in OpenAI's shapes.

    Every array, LayerNorm gains and biases included, is random and different from a fresh
    model's initial values, so a swapped or forgotten parameter changes the output.
    """
    rng = np.random.default_rng(seed)
    C, L = hparams["n_embd"], hparams["n_layer"]

    def normal(*shape, mean=0.0, std=0.02):
        return (mean + std * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)

    tf_vars = {"model/wte": normal(hparams["n_vocab"], C, std=0.1),
               "model/wpe": normal(hparams["n_ctx"], C, std=0.05),
               "model/ln_f/g": normal(C, mean=1.0, std=0.3), "model/ln_f/b": normal(C, std=0.3)}
    for i in range(L):
        h = f"model/h{i}"
        tf_vars.update({
            f"{h}/ln_1/g": normal(C, mean=1.0, std=0.3),
            f"{h}/ln_1/b": normal(C, std=0.3),
            f"{h}/attn/c_attn/w": normal(1, C, 3 * C, std=0.15),  # 1x1 convolution: (1, in, out)
            f"{h}/attn/c_attn/b": normal(3 * C, std=0.1),
            f"{h}/attn/c_proj/w": normal(1, C, C, std=0.05),
            f"{h}/attn/c_proj/b": normal(C, std=0.05),
            f"{h}/ln_2/g": normal(C, mean=1.0, std=0.3),
            f"{h}/ln_2/b": normal(C, std=0.3),
            f"{h}/mlp/c_fc/w": normal(1, C, 4 * C, std=0.1),
            f"{h}/mlp/c_fc/b": normal(4 * C, std=0.1),
            f"{h}/mlp/c_proj/w": normal(1, 4 * C, C, std=0.05),
            f"{h}/mlp/c_proj/b": normal(C, std=0.05),
        })
    return tf_vars


def tf_variables_of(gpt):
    """{TensorFlow name: float32 array} of a GPTModel with GPT-2's layout (qkv biases, tied head):
    the inverse of shared.gpt2.load_weights_into_gpt."""
    import torch

    def arr(t):
        return t.detach().cpu().float().numpy().copy()

    tf_vars = {"model/wte": arr(gpt.tok_emb.weight), "model/wpe": arr(gpt.pos_emb.weight),
               "model/ln_f/g": arr(gpt.final_norm.weight), "model/ln_f/b": arr(gpt.final_norm.bias)}
    for i, block in enumerate(gpt.trf_blocks):
        att, ff, h = block.att, block.ff, f"model/h{i}"
        qkv_w = torch.cat([att.W_query.weight.T, att.W_key.weight.T, att.W_value.weight.T], dim=1)
        qkv_b = torch.cat([att.W_query.bias, att.W_key.bias, att.W_value.bias])
        tf_vars.update({
            f"{h}/ln_1/g": arr(block.norm1.weight), f"{h}/ln_1/b": arr(block.norm1.bias),
            f"{h}/attn/c_attn/w": arr(qkv_w)[None], f"{h}/attn/c_attn/b": arr(qkv_b),
            f"{h}/attn/c_proj/w": arr(att.out_proj.weight.T)[None], f"{h}/attn/c_proj/b": arr(att.out_proj.bias),
            f"{h}/ln_2/g": arr(block.norm2.weight), f"{h}/ln_2/b": arr(block.norm2.bias),
            f"{h}/mlp/c_fc/w": arr(ff.layers[0].weight.T)[None], f"{h}/mlp/c_fc/b": arr(ff.layers[0].bias),
            f"{h}/mlp/c_proj/w": arr(ff.layers[2].weight.T)[None], f"{h}/mlp/c_proj/b": arr(ff.layers[2].bias),
        })
    return tf_vars


def trained_tf_variables(hparams, text, steps=40, seed=0):
    """A small GPT-2 trained for `steps` AdamW steps on the whole of `text`, in OpenAI's names.

    A stand-in for OpenAI's trained weights: it has memorised `text`, so its loss on any part of
    it is far below a unigram model's, which is what chapter 5 reads as "these weights are trained".
    """
    import torch

    from shared.gpt2 import config_from_hparams
    from shared.model import GPTModel
    from shared.tokenizer import get_tokenizer

    torch.manual_seed(seed)
    gpt = GPTModel({**config_from_hparams(hparams), "drop_rate": 0.0})
    ids = torch.tensor(get_tokenizer().encode(text))
    T = hparams["n_ctx"]
    starts = torch.arange(0, len(ids) - T - 1, T // 2)
    windows = torch.stack([ids[s:s + T + 1] for s in starts])  # (N, T + 1)
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(steps):
        batch = windows[torch.randint(len(windows), (4,))]
        logits = gpt(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return tf_variables_of(gpt.eval())


def write_trained_gpt2(mirror, size, hparams, text, steps=40):
    """trained_tf_variables under MIRROR/.../gpt-2/models/<size>/; returns its {TF name: array}."""
    from shared.download import download_file

    model_dir = Path(mirror, *MODELS_HOST_PATH, size)
    tf_vars = trained_tf_variables(hparams, text, steps)
    write_tf_checkpoint(model_dir, hparams, tf_vars)
    for name in ("encoder.json", "vocab.bpe"):
        download_file(ENCODINGS_URL + name, model_dir / name, progress=False)
    return tf_vars


def write_tf_checkpoint(model_dir, hparams, tf_vars):
    """Write hparams.json, checkpoint and model.ckpt.{index,data-00000-of-00001,meta}."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    prefix = str(model_dir / "model.ckpt")
    names = sorted(tf_vars)
    # SaveV2 writes the tensor bundle (index + data) under the exact names given.
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf_vars[n] for n in names])
    # The meta graph describes the variables (not their values), as in OpenAI's release.
    graph = tf.Graph()
    with graph.as_default():
        for n in names:
            tf.compat.v1.get_variable(n, shape=tf_vars[n].shape, dtype=tf.float32,
                                      initializer=tf.compat.v1.zeros_initializer())
        tf.compat.v1.train.export_meta_graph(filename=prefix + ".meta", graph=graph)
    (model_dir / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n'
                                          'all_model_checkpoint_paths: "model.ckpt"\n')
    (model_dir / "hparams.json").write_text(json.dumps(hparams, indent=2))


def write_fake_gpt2(mirror, size, hparams, seed=0):
    """A random GPT-2 under MIRROR/.../gpt-2/models/<size>/; returns its {TF name: array}."""
    from shared.download import download_file

    model_dir = Path(mirror, *MODELS_HOST_PATH, size)
    tf_vars = random_tf_variables(hparams, seed)
    write_tf_checkpoint(model_dir, hparams, tf_vars)
    for name in ("encoder.json", "vocab.bpe"):  # the real tokenizer files, via LLM_MIRROR
        download_file(ENCODINGS_URL + name, model_dir / name, progress=False)
    return tf_vars


def fake_model_dir(mirror, size):
    return Path(mirror, *MODELS_HOST_PATH, size)


def hf_name(tf_name):
    """Hugging Face's name for an OpenAI variable.

    model/h0/attn/c_attn/w -> transformer.h.0.attn.c_attn.weight
    model/wte              -> transformer.wte.weight
    """
    parts = tf_name.split("/")[1:]
    if parts[0].startswith("h"):
        parts = ["h", parts[0][1:], *parts[1:]]
    if len(parts) > 1:
        parts[-1] = {"g": "weight", "w": "weight", "b": "bias"}[parts[-1]]
    else:  # wte, wpe
        parts.append("weight")
    return "transformer." + ".".join(parts)


def hf_gpt2_config(hparams):
    """transformers.GPT2Config for OpenAI hparams (GPT-2's tanh GELU, LayerNorm eps, tied head)."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=hparams["n_vocab"], n_positions=hparams["n_ctx"],
                      n_embd=hparams["n_embd"], n_layer=hparams["n_layer"],
                      n_head=hparams["n_head"], activation_function="gelu_new",
                      layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      tie_word_embeddings=True)


def hf_parameter_count(hparams):
    """Parameter count of Hugging Face's GPT-2 for these hparams (on the meta device: no memory)."""
    import torch
    from transformers import GPT2LMHeadModel

    with torch.device("meta"):
        return sum(p.numel() for p in GPT2LMHeadModel(hf_gpt2_config(hparams)).parameters())


def hf_gpt2_from_tf_variables(tf_vars, hparams):
    """transformers.GPT2LMHeadModel holding the same weights: the independent reference.

    Hugging Face's Conv1D stores weights as (in, out), TensorFlow's layout without the leading 1.
    """
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel(hf_gpt2_config(hparams)).eval()
    state = {hf_name(name): torch.from_numpy(array[0] if array.ndim == 3 else array)
             for name, array in tf_vars.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing  # tied to transformer.wte.weight
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    return model


HF_HOST_PATH = ("huggingface.co",)
HF_REPO_FOR_SIZE = {"124M": "openai-community/gpt2", "355M": "openai-community/gpt2-medium",
                    "774M": "openai-community/gpt2-large", "1558M": "openai-community/gpt2-xl"}


def hf_model_dir(mirror, size):
    """Where a mirror holds https://huggingface.co/<repo>/resolve/main/<file>."""
    return Path(mirror, *HF_HOST_PATH, *HF_REPO_FOR_SIZE[size].split("/"), "resolve", "main")


def write_fake_hf_gpt2(mirror, size, hparams, tf_vars, prefix="transformer.", buffers=True):
    """The same weights as Hugging Face publishes them: config.json and model.safetensors, written
    from a transformers.GPT2LMHeadModel's state dict with safetensors.torch.save_file.

    prefix: "transformer." as GPT2LMHeadModel names them, or "" as in the files on the Hub.
    buffers: also store the causal-mask buffers (attn.bias, attn.masked_bias) that older files have.
    Returns the folder.
    """
    import torch
    from safetensors.torch import save_file

    model = hf_gpt2_from_tf_variables(tf_vars, hparams)
    state = {name: t.contiguous() for name, t in model.state_dict().items()
             if name != "lm_head.weight"}  # tied to wte; safetensors refuses shared tensors
    if buffers:
        n = hparams["n_ctx"]
        for i in range(hparams["n_layer"]):
            state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
            state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    state = {prefix + name.removeprefix("transformer."): t for name, t in state.items()}
    folder = hf_model_dir(mirror, size)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"))
    model.config.to_json_file(str(folder / "config.json"))
    return folder


def use_offline_mirror(path, monkeypatch):
    """LLM_MIRROR = `path`, then the usual one; the network is never tried. Returns `path`."""
    from shared import download

    monkeypatch.setenv("LLM_MIRROR", os.pathsep.join([str(path), os.environ.get("LLM_MIRROR", "")]))

    def offline(url, *args, **kwargs):
        raise download._SourceError("offline (test)")
    monkeypatch.setattr(download, "_fetch_with_retries", offline)
    return path


if __name__ == "__main__":
    # python tests/support/fake_gpt2.py MIRROR_DIR: a random GPT-2 124M in OpenAI's exact layout under
    # MIRROR_DIR/openaipublic.blob.core.windows.net/gpt-2/models/124M/, for an offline machine
    # that must still run chapter 5's GPT-2 section (the chapter reports such weights as not OpenAI's).
    import sys

    out = Path(sys.argv[1])
    write_fake_gpt2(out, "124M", REAL_HPARAMS["124M"])
    print(f"random GPT-2 124M stand-in written under {fake_model_dir(out, '124M')}")
