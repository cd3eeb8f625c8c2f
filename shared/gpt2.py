"""GPT-2's weights: download them from OpenAI or Hugging Face, read them, load them into GPTModel.

    settings, params = download_and_load_gpt2("124M", "gpt2")                  # OpenAI's files
    settings, params = download_and_load_gpt2("124M", "gpt2", source="huggingface")
    gpt = GPTModel(config_from_hparams(settings))
    load_weights_into_gpt(gpt, params)

OpenAI published GPT-2 as TensorFlow 1 checkpoints; shared.tf_checkpoint reads them into numpy
arrays without TensorFlow (and verifies their checksums) about as fast as a safetensors file
loads, so nothing is cached beside them and a read-only folder of complete files loads as it is.
Hugging Face hosts the same weights as one `model.safetensors` per size (openai-community/gpt2,
...), in the same (in, out) orientation.

`params` mirrors the variable names inside the checkpoint, with 'model/' dropped, blocks in a list
and the leading singleton dimension of the 1x1-convolution weights squeezed away:

    {"wte": (vocab, C), "wpe": (context, C), "g": (C,), "b": (C,),          # ln_f is g, b
     "blocks": [{"attn": {"c_attn": {"w": (C, 3C), "b": (3C,)}, "c_proj": {"w": (C, C), "b": (C,)}},
                 "mlp": {"c_fc": {"w": (C, 4C), "b": (4C,)}, "c_proj": {"w": (4C, C), "b": (C,)}},
                 "ln_1": {"g": (C,), "b": (C,)}, "ln_2": {"g": (C,), "b": (C,)}}, ...]}
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from shared.config import non_gpt2_switches
from shared.download import DownloadError, download_file
from shared.model import GPT_CONFIG_124M
from shared.tf_checkpoint import CheckpointFileError, load_variables
from shared.tokenizer import GPT2_VOCAB_SIZE

GPT2_MODELS_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"


@dataclass(frozen=True)
class GPT2Size:
    """One published GPT-2: its name, Hugging Face's copy, and the three numbers its shape
    differs in (every size shares the rest: gpt2_config)."""
    name: str        # "gpt2-small"
    hf_repo: str     # Hugging Face's copy of the same weights
    emb_dim: int
    num_layers: int
    num_heads: int

    @property
    def dims(self) -> dict:
        return {"emb_dim": self.emb_dim, "num_layers": self.num_layers, "num_heads": self.num_heads}


# The four sizes, by the name of OpenAI's folder (GPT2_MODELS_URL/<size>/).
GPT2_SIZES = {
    "124M": GPT2Size("gpt2-small", "openai-community/gpt2", 768, 12, 12),
    "355M": GPT2Size("gpt2-medium", "openai-community/gpt2-medium", 1024, 24, 16),
    "774M": GPT2Size("gpt2-large", "openai-community/gpt2-large", 1280, 36, 20),
    "1558M": GPT2Size("gpt2-xl", "openai-community/gpt2-xl", 1600, 48, 25),
}
GPT2_FILES = ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
              "model.ckpt.index", "model.ckpt.meta", "vocab.bpe")
# (size, SHA-256) of the files whose bytes are known in advance. OpenAI publishes no digests for
# GPT-2: `checkpoint` is TensorFlow's fixed two-line pointer to model.ckpt (77 bytes in every
# download log). The data file and its index are verified by their own CRC32C checksums when
# read (shared.tf_checkpoint); hparams.json is checked as it is read.
GPT2_PINNED = {"checkpoint": (77, "dd1b025d2e155283f5e300ce95bf6d5b6bc0f7fe010db73daa6975eb896ab9cb")}

# Hugging Face keeps the same weights as safetensors, in OpenAI's orientation.
GPT2_SOURCES = ("openai", "huggingface")
HF_URL = "https://huggingface.co/{repo}/resolve/main/{name}"
HF_FILES = ("config.json", "model.safetensors")


class CorruptCheckpointError(RuntimeError):
    """A downloaded file cannot be read; the message names it and says how to recover."""


# ---------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------

def gpt2_config(name: str) -> dict:
    """Full GPTModel config for "124M" ... "1558M", or "gpt2-small (124M)" ... "gpt2-xl (1558M)"."""
    sizes = {**GPT2_SIZES, **{f"{s.name} ({size})": s for size, s in GPT2_SIZES.items()}}
    if name not in sizes:
        raise ValueError(f"unknown GPT-2 model {name!r}; valid names: {', '.join(sizes)}")
    return {**GPT_CONFIG_124M, **sizes[name].dims,
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
    """Read every GPT-2 array from OpenAI's TensorFlow checkpoint in `model_dir`, checksums
    verified, with shared.tf_checkpoint (no TensorFlow needed)."""
    names = {key: tf_variable_name(key) for key in gpt2_param_shapes(settings)}
    try:
        arrays = load_variables(Path(model_dir) / "model.ckpt", names.values())
    except CheckpointFileError as err:
        raise CorruptCheckpointError(_damaged(err.path, err.reason)) from err
    return _checked_params({key: arrays[name] for key, name in names.items()}, settings,
                           Path(model_dir) / "model.ckpt.index")


def _checked_params(flat: dict, settings: dict, source: Path) -> dict:
    """Squeeze the leading 1 of OpenAI's 1x1-convolution weights, check every shape against
    hparams, and nest the arrays as `params`."""
    shapes = gpt2_param_shapes(settings)
    for key, shape in shapes.items():
        array = flat[key]
        if array.ndim == 3 and array.shape[0] == 1:  # 1x1-convolution weights: (1, in, out)
            array = array[0]
        if array.shape != shape:
            raise CorruptCheckpointError(_damaged(
                source, f"{key} has shape {array.shape} but the settings imply {shape}"))
        flat[key] = array
    return _unflatten({key: flat[key] for key in shapes})


def _check_size_and_source(model_size: str, source: str) -> None:
    if model_size not in GPT2_SIZES:
        raise ValueError(f"unknown GPT-2 size {model_size!r}; "
                         f"choose one of {', '.join(GPT2_SIZES)}")
    if source not in GPT2_SOURCES:
        raise ValueError(f"unknown source {source!r} for the GPT-2 weights; "
                         f"choose one of {', '.join(GPT2_SOURCES)}")


def download_gpt2_files(model_size: str, models_dir="gpt2", progress: bool = True) -> Path:
    """Fetch OpenAI's seven files for `model_size` into models_dir/model_size; return the folder."""
    _check_size_and_source(model_size, "openai")
    model_dir = Path(models_dir) / model_size
    try:
        for name in GPT2_FILES:  # a file already there is complete: download_file renames atomically
            size, sha256 = GPT2_PINNED.get(name, (None, None))
            download_file(f"{GPT2_MODELS_URL}/{model_size}/{name}", model_dir / name,
                          progress=progress, size=size, sha256=sha256)
    except DownloadError as err:
        raise DownloadError(
            f"{err}\nThe same weights are also on Hugging Face: download_and_load_gpt2("
            f"{model_size!r}, models_dir, source='huggingface'), or on the command line "
            f"python gpt_download.py --model-size {model_size} --source huggingface") from None
    return model_dir


def download_hf_files(model_size: str, models_dir="gpt2", progress: bool = True) -> Path:
    """Fetch config.json and model.safetensors of Hugging Face's copy of GPT-2 `model_size`
    into models_dir/huggingface/model_size; return the folder."""
    _check_size_and_source(model_size, "huggingface")
    model_dir = Path(models_dir) / "huggingface" / model_size
    for name in HF_FILES:
        download_file(HF_URL.format(repo=GPT2_SIZES[model_size].hf_repo, name=name), model_dir / name,
                      progress=progress)
    return model_dir


def gpt2_array_name(name: str) -> str | None:
    """Hugging Face's name -> our flat name ("h.0.ln_1.weight" -> "blocks.0.ln_1.g"), or None for
    the attention-mask buffers and the tied output head, which hold no weights of their own."""
    name = name.removeprefix("transformer.")
    if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
        return None
    *path, leaf = name.split(".")
    if path in (["wte"], ["wpe"]):
        return path[0]
    is_norm = path[-1:] in (["ln_1"], ["ln_2"], ["ln_f"])
    leaf = {"weight": "g" if is_norm else "w", "bias": "b"}.get(leaf, leaf)
    if path == ["ln_f"]:
        return leaf
    if path[:1] == ["h"]:
        path = ["blocks", *path[1:]]
    return ".".join([*path, leaf])


def read_hf_settings(model_dir) -> dict:
    """OpenAI's hparams (n_vocab, n_ctx, n_embd, n_head, n_layer) from Hugging Face's config.json."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        settings = {"n_vocab": config.get("vocab_size"),
                    "n_ctx": config.get("n_positions", config.get("n_ctx")),
                    "n_embd": config.get("n_embd"), "n_head": config.get("n_head"),
                    "n_layer": config.get("n_layer")}
    except (OSError, ValueError, AttributeError) as err:
        raise CorruptCheckpointError(_damaged(path, err)) from err
    missing = [k for k, v in settings.items() if not isinstance(v, int)]
    if missing:
        raise CorruptCheckpointError(_damaged(path, f"no integer for {', '.join(missing)}"))
    return settings


def read_hf_checkpoint(model_dir) -> tuple[dict, dict]:
    """(settings, params) from Hugging Face's config.json and model.safetensors in `model_dir`.

    Hugging Face's Conv1D keeps OpenAI's (in, out) orientation, so the arrays need no transpose:
    `params` is exactly what the OpenAI checkpoint gives.
    """
    from safetensors.numpy import load_file

    settings = read_hf_settings(model_dir)
    path = Path(model_dir) / "model.safetensors"
    try:
        tensors = load_file(str(path))
    except Exception as err:  # SafetensorError, OSError: truncated or not a safetensors file
        raise CorruptCheckpointError(_damaged(path, err)) from err
    flat = {gpt2_array_name(name): array for name, array in tensors.items()}
    flat.pop(None, None)
    expected = gpt2_param_shapes(settings)
    missing = [k for k in expected if k not in flat]
    unexpected = [k for k in flat if k not in expected]
    if missing or unexpected:
        raise CorruptCheckpointError(_damaged(
            path, f"missing {missing[:3]}, unexpected {unexpected[:3]}: not GPT-2's arrays"))
    if "lm_head.weight" in tensors and not np.array_equal(tensors["lm_head.weight"], flat["wte"]):
        raise CorruptCheckpointError(_damaged(path, "its output head is not tied to wte"))
    flat = {k: np.asarray(v, dtype=np.float32) for k, v in flat.items()}
    return settings, _checked_params(flat, settings, path)


def download_and_load_gpt2(model_size: str, models_dir="gpt2", progress: bool = True,
                           source: str = "openai"):
    """Download GPT-2 `model_size` ("124M", "355M", "774M", "1558M"); return (settings, params).

    source="openai" (default) fetches OpenAI's TensorFlow checkpoint into models_dir/<size>/ and
    reads it without TensorFlow. source="huggingface" fetches Hugging Face's model.safetensors and
    config.json into models_dir/huggingface/<size>/. Both give the same settings and params.
    Files already complete are not fetched again and nothing is written beside them, so a
    read-only folder of complete files loads.
    """
    _check_size_and_source(model_size, source)
    if source == "huggingface":
        return read_hf_checkpoint(download_hf_files(model_size, models_dir, progress))
    model_dir = download_gpt2_files(model_size, models_dir, progress)
    settings = read_hparams(model_dir)
    return settings, read_tf_checkpoint(model_dir, settings)


def missing_weights_note(model_size: str, models_dir, error: Exception) -> str:
    """What a notebook prints when GPT-2's files cannot be had: what it needed, how to provide
    them, and that it skips only the cells that use them. Starts with "SKIPPED", which
    scripts/run_notebooks.sh collects into its summary."""
    folder = Path(models_dir) / model_size
    first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
    return (f"SKIPPED: OpenAI's GPT-2 {model_size} weights could not be had; provide them with a "
            f"network, in {folder}/, or through LLM_MIRROR (details below).\n"
            f"Why: {first_line}.\n"
            f"These cells need the checkpoint's seven files ({', '.join(GPT2_FILES)}) from "
            f"{GPT2_MODELS_URL}/{model_size}/. Run with a network; or copy the files into "
            f"{folder}/; or set LLM_MIRROR to a folder that holds them as "
            f"openaipublic.blob.core.windows.net/gpt-2/models/{model_size}/<file> "
            "(docs/running.md, 'Working offline'). Then run the notebook again. Until then every "
            "cell that uses GPT-2 is skipped, and the rest of the notebook runs.")


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


# The one map between GPTModel's parameters and GPT-2's arrays, read both ways: by
# load_weights_into_gpt (GPT-2 -> GPTModel) and by gpt2_arrays (GPTModel -> GPT-2, which
# benchmarks/hf.py copies into Hugging Face's GPT2LMHeadModel). Each row: our parameter, GPT-2's
# array, which third of a fused array (None: all of it), and whether it is transposed: TensorFlow
# computes x @ w with w (in, out), nn.Linear stores its weight as (out, in).
# c_attn computes query, key and value in one matmul: its (C, 3C) weight holds the three (C, C)
# matrices side by side, and its bias the three biases. LayerNorm's g (gain) is its weight, b
# (the shift) its bias.
EMBEDDING_WEIGHTS = [("tok_emb.weight", "wte", None, False), ("pos_emb.weight", "wpe", None, False),
                     ("final_norm.weight", "g", None, False), ("final_norm.bias", "b", None, False)]
BLOCK_WEIGHTS = [
    ("att.W_query.weight", "attn.c_attn.w", 0, True), ("att.W_query.bias", "attn.c_attn.b", 0, False),
    ("att.W_key.weight", "attn.c_attn.w", 1, True), ("att.W_key.bias", "attn.c_attn.b", 1, False),
    ("att.W_value.weight", "attn.c_attn.w", 2, True), ("att.W_value.bias", "attn.c_attn.b", 2, False),
    ("att.out_proj.weight", "attn.c_proj.w", None, True), ("att.out_proj.bias", "attn.c_proj.b", None, False),
    ("ff.layers.0.weight", "mlp.c_fc.w", None, True), ("ff.layers.0.bias", "mlp.c_fc.b", None, False),
    ("ff.layers.2.weight", "mlp.c_proj.w", None, True), ("ff.layers.2.bias", "mlp.c_proj.b", None, False),
    ("norm1.weight", "ln_1.g", None, False), ("norm1.bias", "ln_1.b", None, False),
    ("norm2.weight", "ln_2.g", None, False), ("norm2.bias", "ln_2.b", None, False),
]


def gpt2_weight_map(num_layers: int) -> list[tuple[str, str, int | None, bool]]:
    """(our parameter, GPT-2's flat array name, part of a fused array, transposed) for a GPTModel
    of `num_layers` blocks: ("trf_blocks.0.att.W_query.weight", "blocks.0.attn.c_attn.w", 0, True)."""
    rows = list(EMBEDDING_WEIGHTS)
    for i in range(num_layers):
        rows += [(f"trf_blocks.{i}.{ours}", f"blocks.{i}.{theirs}", part, transposed)
                 for ours, theirs, part, transposed in BLOCK_WEIGHTS]
    return rows


def gpt2_arrays(gpt) -> dict:
    """GPTModel's weights as GPT-2's flat arrays ("blocks.0.attn.c_attn.w": (C, 3C) ...): the
    inverse of load_weights_into_gpt. The tensors share no memory with the model."""
    state, parts = gpt.state_dict(), {}
    for ours, theirs, part, transposed in gpt2_weight_map(len(gpt.trf_blocks)):
        tensor = state[ours].T if transposed else state[ours]
        parts.setdefault(theirs, {})[part] = tensor.detach()
    return {name: torch.cat([p[i] for i in sorted(p)], dim=-1) if None not in p else p[None].clone()
            for name, p in parts.items()}


def load_weights_into_gpt(gpt, params: dict) -> None:
    """Copy OpenAI's arrays into every parameter of `gpt`, a GPTModel built with
    config_from_hparams(settings) or gpt2_config(size)."""
    if "blocks" in params and len(params["blocks"]) != len(gpt.trf_blocks):
        raise ValueError(f"the checkpoint has {len(params['blocks'])} transformer blocks, "
                         f"the model {len(gpt.trf_blocks)}; build the model with "
                         "config_from_hparams(settings)")
    not_gpt2 = non_gpt2_switches(gpt.cfg)  # e.g. RMSNorm or RoPE: arrays GPT-2 does not have
    if not_gpt2 or any(block.att.W_query.bias is None for block in gpt.trf_blocks):
        raise ValueError(f"GPT-2 needs qkv_bias=True and its own layout, not {not_gpt2}; build the "
                         "model with config_from_hparams(settings)")
    _check_params(gpt, params)
    flat = _flatten(params)
    for ours, theirs, part, transposed in gpt2_weight_map(len(gpt.trf_blocks)):
        array = torch.as_tensor(flat[theirs])
        if part is not None:
            array = array.chunk(3, dim=-1)[part]
        owner, name = ours.rsplit(".", 1)
        module = gpt.get_submodule(owner)
        setattr(module, name, assign(getattr(module, name), array.T if transposed else array))
    # GPT-2 ties its output head to the token embedding: one (vocab, C) matrix used twice.
    gpt.out_head.weight = gpt.tok_emb.weight


def load_pretrained_gpt2(model_size: str = "124M", models_dir="gpt2", device=None,
                         progress: bool = True, source: str = "openai"):
    """Download (once) and build GPT-2 `model_size` in eval mode; returns (model, settings)."""
    from shared.model import GPTModel

    settings, params = download_and_load_gpt2(model_size, models_dir, progress, source)
    gpt = GPTModel(config_from_hparams(settings))
    load_weights_into_gpt(gpt, params)
    return gpt.to(device or "cpu").eval(), settings
