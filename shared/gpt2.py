"""OpenAI's GPT-2 weights: download the TensorFlow checkpoint, read it once, load it into GPTModel.

    settings, params = download_and_load_gpt2("124M", "gpt2")
    gpt = GPTModel(config_from_hparams(settings))
    load_weights_into_gpt(gpt, params)

OpenAI published GPT-2 as TensorFlow 1 checkpoints. Reading one needs TensorFlow (a large import),
so the arrays are read once and cached beside the checkpoint as `params.safetensors`, a format that
holds raw arrays only and cannot run code when it is opened (unlike a pickle). Later calls read the
cache and never import TensorFlow.

`params` mirrors the variable names inside the checkpoint, with 'model/' dropped, blocks in a list
and the leading singleton dimension of the 1x1-convolution weights squeezed away:

    {"wte": (vocab, C), "wpe": (context, C), "g": (C,), "b": (C,),          # ln_f is g, b
     "blocks": [{"attn": {"c_attn": {"w": (C, 3C), "b": (3C,)}, "c_proj": {"w": (C, C), "b": (C,)}},
                 "mlp": {"c_fc": {"w": (C, 4C), "b": (4C,)}, "c_proj": {"w": (4C, C), "b": (C,)}},
                 "ln_1": {"g": (C,), "b": (C,)}, "ln_2": {"g": (C,), "b": (C,)}}, ...]}
"""
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from shared.download import download_file
from shared.files import atomic_path
from shared.model import GPT_CONFIG_124M
from shared.tokenizer import GPT2_VOCAB_SIZE

GPT2_MODELS_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
GPT2_SIZES = ("124M", "355M", "774M", "1558M")
GPT2_FILES = ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
              "model.ckpt.index", "model.ckpt.meta", "vocab.bpe")
PARAMS_CACHE = "params.safetensors"

# The four sizes differ only in width, depth and number of heads.
GPT2_CONFIGS = {
    "gpt2-small (124M)": {"emb_dim": 768, "num_layers": 12, "num_heads": 12},
    "gpt2-medium (355M)": {"emb_dim": 1024, "num_layers": 24, "num_heads": 16},
    "gpt2-large (774M)": {"emb_dim": 1280, "num_layers": 36, "num_heads": 20},
    "gpt2-xl (1558M)": {"emb_dim": 1600, "num_layers": 48, "num_heads": 25},
}


class CorruptCheckpointError(RuntimeError):
    """A downloaded file cannot be read; the message names it and says how to recover."""


# ---------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------

def gpt2_config(name: str) -> dict:
    """Full GPTModel config for "gpt2-small (124M)" ... "gpt2-xl (1558M)", or "124M" ... "1558M"."""
    full = {n.split("(")[1].rstrip(")"): n for n in GPT2_CONFIGS}.get(name, name)
    if full not in GPT2_CONFIGS:
        valid = ", ".join([*GPT2_CONFIGS, *GPT2_SIZES])
        raise ValueError(f"unknown GPT-2 model {name!r}; valid names: {valid}")
    return {**GPT_CONFIG_124M, **GPT2_CONFIGS[full],
            "vocab_size": GPT2_VOCAB_SIZE,
            "context_length": 1024,  # GPT-2's learned position table has 1024 rows
            "qkv_bias": True,        # OpenAI's query/key/value projections have biases
            "tie_weights": True}     # the output head reuses the token embedding


def config_from_hparams(settings: dict) -> dict:
    """GPTModel config from a checkpoint's hparams.json, the one source sure to fit its weights."""
    return {**GPT_CONFIG_124M,
            "vocab_size": settings["n_vocab"], "context_length": settings["n_ctx"],
            "emb_dim": settings["n_embd"], "num_heads": settings["n_head"],
            "num_layers": settings["n_layer"], "qkv_bias": True, "tie_weights": True}


def gpt2_param_shapes(settings: dict) -> dict:
    """Shape of every array in a checkpoint with these hparams, by flat name ("blocks.0.ln_1.g")."""
    C, V, T = settings["n_embd"], settings["n_vocab"], settings["n_ctx"]
    block = {"attn.c_attn.w": (C, 3 * C), "attn.c_attn.b": (3 * C,),
             "attn.c_proj.w": (C, C), "attn.c_proj.b": (C,),
             "mlp.c_fc.w": (C, 4 * C), "mlp.c_fc.b": (4 * C,),
             "mlp.c_proj.w": (4 * C, C), "mlp.c_proj.b": (C,),
             "ln_1.g": (C,), "ln_1.b": (C,), "ln_2.g": (C,), "ln_2.b": (C,)}
    shapes = {"wte": (V, C), "wpe": (T, C), "g": (C,), "b": (C,)}
    for i in range(settings["n_layer"]):
        shapes.update({f"blocks.{i}.{key}": shape for key, shape in block.items()})
    return shapes


def tf_variable_name(key: str) -> str:
    """Flat name -> checkpoint name: "blocks.0.attn.c_attn.w" -> "model/h0/attn/c_attn/w"."""
    if key.startswith("blocks."):
        _, layer, rest = key.split(".", 2)
        return f"model/h{layer}/" + rest.replace(".", "/")
    return {"g": "model/ln_f/g", "b": "model/ln_f/b"}.get(key, "model/" + key)


def _unflatten(flat: dict) -> dict:
    """{"blocks.0.ln_1.g": a, "wte": b} -> {"blocks": [{"ln_1": {"g": a}}], "wte": b}."""
    params = {"blocks": []}
    for key, value in flat.items():
        node, parts = params, key.split(".")
        if parts[0] == "blocks":
            layer = int(parts[1])
            while len(params["blocks"]) <= layer:
                params["blocks"].append({})
            node, parts = params["blocks"][layer], parts[2:]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return params


def _flatten(params: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in params.items():
        if key == "blocks":
            for i, block in enumerate(value):
                flat.update(_flatten(block, f"blocks.{i}."))
        elif isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


# ---------------------------------------------------------------------------------------------
# Download and read
# ---------------------------------------------------------------------------------------------

def _damaged(path: Path, reason) -> str:
    return (f"{path} is damaged or incomplete ({reason}). Delete it (or the whole folder "
            f"{path.parent}) and re-run download_and_load_gpt2 to download it again.")


def read_hparams(model_dir) -> dict:
    """hparams.json as a dict, checked for the five numbers the model is built from."""
    path = Path(model_dir) / "hparams.json"
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
        missing = [k for k in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")
                   if not isinstance(settings.get(k), int)]
    except (OSError, ValueError, AttributeError) as err:
        raise CorruptCheckpointError(_damaged(path, err)) from err
    if missing:
        raise CorruptCheckpointError(_damaged(path, f"no integer {', '.join(missing)}"))
    return settings


def read_tf_checkpoint(model_dir, settings: dict) -> dict:
    """Read every GPT-2 array from the TensorFlow checkpoint in `model_dir` (needs tensorflow)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's C++ start-up chatter
    import tensorflow as tf

    model_dir = Path(model_dir)
    index, data = model_dir / "model.ckpt.index", model_dir / "model.ckpt.data-00000-of-00001"
    # TensorFlow's own errors name neither file, so each step says which file it was reading.
    try:
        reader = tf.train.load_checkpoint(str(model_dir / "model.ckpt"))
        stored = reader.get_variable_to_shape_map()
    except Exception as err:  # OpError, IndexError, ...: the index (the table of contents) is bad
        raise CorruptCheckpointError(_damaged(index, f"{type(err).__name__}: {err}")) from err

    flat = {}
    for key, shape in gpt2_param_shapes(settings).items():
        name = tf_variable_name(key)
        if name not in stored:
            raise CorruptCheckpointError(_damaged(index, f"it lists no variable {name}"))
        try:
            array = reader.get_tensor(name)  # checks the bytes against a stored checksum
        except Exception as err:
            raise CorruptCheckpointError(_damaged(data, f"reading {name}: {err}")) from err
        if array.ndim == 3 and array.shape[0] == 1:  # 1x1-convolution weights: (1, in, out)
            array = array[0]
        if array.shape != shape:
            raise CorruptCheckpointError(_damaged(
                index, f"{name} has shape {array.shape} but hparams.json implies {shape}"))
        flat[key] = array
    return _unflatten(flat)


def save_params_cache(params: dict, path) -> Path:
    """Write params to a safetensors file, under a temporary name first, then renamed."""
    from safetensors.numpy import save_file

    path = Path(path)
    with atomic_path(path) as tmp:  # readers see no cache or a complete one, never half of one
        save_file({k: np.ascontiguousarray(v) for k, v in _flatten(params).items()}, str(tmp))
    return path


def load_params_cache(path, settings: dict) -> dict:
    """Read params from the safetensors cache; CorruptCheckpointError if it is unusable."""
    from safetensors.numpy import load_file

    try:
        flat = load_file(str(path))
    except Exception as err:
        raise CorruptCheckpointError(f"{path} is unreadable ({err})") from err
    expected = gpt2_param_shapes(settings)
    wrong = [k for k, shape in expected.items() if k not in flat or flat[k].shape != shape]
    if wrong:
        raise CorruptCheckpointError(f"{path} lacks or misshapes {', '.join(wrong[:3])}")
    return _unflatten({k: flat[k] for k in expected})


def download_gpt2_files(model_size: str, models_dir="gpt2", progress: bool = True) -> Path:
    """Fetch OpenAI's seven files for `model_size` into models_dir/model_size; return the folder."""
    if model_size not in GPT2_SIZES:
        raise ValueError(f"unknown GPT-2 size {model_size!r}; "
                         f"choose one of {', '.join(GPT2_SIZES)}")
    model_dir = Path(models_dir) / model_size
    for name in GPT2_FILES:  # a file already there is complete: download_file renames atomically
        url = f"{GPT2_MODELS_URL}/{model_size}/{name}"
        download_file(url, model_dir / name, progress=progress)
    return model_dir


def download_and_load_gpt2(model_size: str, models_dir="gpt2", progress: bool = True):
    """Download GPT-2 `model_size` ("124M", "355M", "774M", "1558M"); return (settings, params).

    The first call reads the TensorFlow checkpoint and caches its arrays in params.safetensors;
    later calls read only the cache. An unreadable cache is replaced, with a warning.
    """
    model_dir = download_gpt2_files(model_size, models_dir, progress)
    settings = read_hparams(model_dir)
    cache = model_dir / PARAMS_CACHE
    if cache.exists():
        try:
            return settings, load_params_cache(cache, settings)
        except CorruptCheckpointError as err:
            warnings.warn(f"{err}; rebuilding it from the TensorFlow checkpoint", stacklevel=2)
    params = read_tf_checkpoint(model_dir, settings)
    save_params_cache(params, cache)
    return settings, params


# ---------------------------------------------------------------------------------------------
# Into GPTModel
# ---------------------------------------------------------------------------------------------

def assign(left: torch.Tensor, right) -> nn.Parameter:
    """A new Parameter holding a copy of `right`, with `left`'s (checked) shape, dtype, device."""
    right = torch.as_tensor(right)
    if tuple(left.shape) != tuple(right.shape):
        raise ValueError(f"shape mismatch: the model has {tuple(left.shape)}, "
                         f"the checkpoint has {tuple(right.shape)}")
    return nn.Parameter(right.to(device=left.device, dtype=left.dtype, copy=True),
                        requires_grad=left.requires_grad)


def _linear_weight(w) -> torch.Tensor:
    """TensorFlow computes x @ w with w (in, out); nn.Linear stores its weight as (out, in)."""
    return torch.as_tensor(w).T


def _check_params(gpt, params: dict) -> None:
    """Name every missing or misshapen array before any parameter is replaced, so bad params
    leave the model as it was."""
    cfg = gpt.cfg
    expected = gpt2_param_shapes({"n_vocab": cfg["vocab_size"], "n_ctx": cfg["context_length"],
                                  "n_embd": cfg["emb_dim"], "n_layer": cfg["num_layers"]})
    flat = _flatten(params)
    missing = [k for k in expected if k not in flat]
    if missing:
        raise ValueError(f"params lacks {len(missing)} of the {len(expected)} GPT-2 arrays "
                         f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); pass the "
                         "params from `settings, params = download_and_load_gpt2(model_size)`")
    wrong = [f"{k} is {tuple(np.shape(flat[k]))}, the model needs {shape}"
             for k, shape in expected.items() if tuple(np.shape(flat[k])) != shape]
    if wrong:
        raise ValueError(f"params does not fit the model: {'; '.join(wrong[:3])}; build the "
                         "model with config_from_hparams(settings), settings from the same "
                         "download_and_load_gpt2 call")


def load_weights_into_gpt(gpt, params: dict) -> None:
    """Copy OpenAI's arrays into every parameter of `gpt`, a GPTModel built with
    config_from_hparams(settings) or gpt2_config(size)."""
    if "blocks" in params and len(params["blocks"]) != len(gpt.trf_blocks):
        raise ValueError(f"the checkpoint has {len(params['blocks'])} transformer blocks, "
                         f"the model {len(gpt.trf_blocks)}; build the model with "
                         "config_from_hparams(settings)")
    if (gpt.pos_emb is None or not isinstance(gpt.final_norm, nn.LayerNorm)
            or any(block.att.W_query.bias is None for block in gpt.trf_blocks)):
        raise ValueError("GPT-2 needs learned position embeddings, LayerNorm and qkv_bias=True; "
                         "build the model with config_from_hparams(settings)")
    _check_params(gpt, params)

    gpt.pos_emb.weight = assign(gpt.pos_emb.weight, params["wpe"])
    gpt.tok_emb.weight = assign(gpt.tok_emb.weight, params["wte"])
    for block, p in zip(gpt.trf_blocks, params["blocks"]):
        att, ff = block.att, block.ff
        # c_attn computes query, key and value in one matmul: its (C, 3C) weight holds the
        # three (C, C) matrices side by side, and its bias the three biases.
        q_w, k_w, v_w = torch.as_tensor(p["attn"]["c_attn"]["w"]).chunk(3, dim=-1)
        q_b, k_b, v_b = torch.as_tensor(p["attn"]["c_attn"]["b"]).chunk(3, dim=-1)
        att.W_query.weight = assign(att.W_query.weight, _linear_weight(q_w))
        att.W_key.weight = assign(att.W_key.weight, _linear_weight(k_w))
        att.W_value.weight = assign(att.W_value.weight, _linear_weight(v_w))
        att.W_query.bias = assign(att.W_query.bias, q_b)
        att.W_key.bias = assign(att.W_key.bias, k_b)
        att.W_value.bias = assign(att.W_value.bias, v_b)
        att.out_proj.weight = assign(att.out_proj.weight,
                                     _linear_weight(p["attn"]["c_proj"]["w"]))
        att.out_proj.bias = assign(att.out_proj.bias, p["attn"]["c_proj"]["b"])

        ff.layers[0].weight = assign(ff.layers[0].weight,
                                     _linear_weight(p["mlp"]["c_fc"]["w"]))
        ff.layers[0].bias = assign(ff.layers[0].bias, p["mlp"]["c_fc"]["b"])
        ff.layers[2].weight = assign(ff.layers[2].weight,
                                     _linear_weight(p["mlp"]["c_proj"]["w"]))
        ff.layers[2].bias = assign(ff.layers[2].bias, p["mlp"]["c_proj"]["b"])

        # LayerNorm: g (gain) is the scale, nn.LayerNorm's weight; b is the shift, its bias.
        block.norm1.weight = assign(block.norm1.weight, p["ln_1"]["g"])
        block.norm1.bias = assign(block.norm1.bias, p["ln_1"]["b"])
        block.norm2.weight = assign(block.norm2.weight, p["ln_2"]["g"])
        block.norm2.bias = assign(block.norm2.bias, p["ln_2"]["b"])

    gpt.final_norm.weight = assign(gpt.final_norm.weight, params["g"])
    gpt.final_norm.bias = assign(gpt.final_norm.bias, params["b"])
    # GPT-2 ties its output head to the token embedding: one (vocab, C) matrix used twice.
    gpt.out_head.weight = gpt.tok_emb.weight


def load_pretrained_gpt2(model_size: str = "124M", models_dir="gpt2", device=None,
                         progress: bool = True):
    """Download (once) and build GPT-2 `model_size` in eval mode; returns (model, settings)."""
    from shared.model import GPTModel

    settings, params = download_and_load_gpt2(model_size, models_dir, progress)
    gpt = GPTModel(config_from_hparams(settings))
    load_weights_into_gpt(gpt, params)
    return gpt.to(device or "cpu").eval(), settings
