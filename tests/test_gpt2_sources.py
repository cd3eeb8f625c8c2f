"""GPT-2 from two sources, OpenAI's TensorFlow checkpoint and Hugging Face's model.safetensors,
without TensorFlow: the same random weights through both give the same logits as Hugging Face's
GPT2LMHeadModel. Both are served from a mirror laid out like the real hosts."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from fake_gpt2 import (hf_gpt2_from_tf_variables, use_offline_mirror, hf_model_dir, write_fake_gpt2,
                       write_fake_hf_gpt2)
from shared import download
from shared.download import DownloadError
from shared.gpt2 import (CorruptCheckpointError, _flatten, config_from_hparams,
                         download_and_load_gpt2, load_weights_into_gpt)
from shared.model import GPTModel

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"124M": {"n_vocab": 50257, "n_ctx": 32, "n_embd": 32, "n_head": 4, "n_layer": 2},
          "355M": {"n_vocab": 50257, "n_ctx": 24, "n_embd": 48, "n_head": 3, "n_layer": 3}}


@pytest.fixture(scope="module")
def fake_mirror(tmp_path_factory):
    """Both sources for two sizes; Hugging Face's names with the "transformer." prefix and the
    mask buffers for 124M, bare names (as on the Hub) without buffers for 355M."""
    mirror = tmp_path_factory.mktemp("mirror")
    tf_vars = {}
    for i, (size, hparams) in enumerate(SHAPES.items()):
        tf_vars[size] = write_fake_gpt2(mirror, size, hparams, seed=10 + i)
        write_fake_hf_gpt2(mirror, size, hparams, tf_vars[size],
                           prefix="transformer." if size == "124M" else "", buffers=size == "124M")
    return mirror, tf_vars


@pytest.fixture
def mirror(fake_mirror, monkeypatch):
    """LLM_MIRROR = the fake mirror, then the usual one; the network is never tried."""
    return use_offline_mirror(fake_mirror[0], monkeypatch)


def tokens(hparams):
    rng = torch.Generator().manual_seed(1)
    return torch.randint(0, hparams["n_vocab"], (2, hparams["n_ctx"]), generator=rng)


def our_logits(settings, params, idx):
    gpt = GPTModel(config_from_hparams(settings)).eval()
    load_weights_into_gpt(gpt, params)
    with torch.no_grad():
        return gpt(idx)


@pytest.mark.parametrize("size", list(SHAPES))
def test_both_sources_give_the_same_weights_and_hugging_faces_logits(mirror, fake_mirror,
                                                                      tmp_path, size):
    _, tf_vars = fake_mirror
    hparams = SHAPES[size]
    openai = download_and_load_gpt2(size, tmp_path, progress=False)
    hf = download_and_load_gpt2(size, tmp_path, progress=False, source="huggingface")
    assert openai[0] == hf[0] == hparams
    assert (tmp_path / "huggingface" / size / "model.safetensors").is_file()
    flat_openai, flat_hf = _flatten(openai[1]), _flatten(hf[1])
    assert flat_openai.keys() == flat_hf.keys()
    for key, array in flat_openai.items():  # same structure, orientation and values
        assert array.shape == flat_hf[key].shape and np.array_equal(array, flat_hf[key]), key

    idx = tokens(hparams)
    reference = hf_gpt2_from_tf_variables(tf_vars[size], hparams)
    with torch.no_grad():
        expected = reference(idx).logits
    from_openai, from_hf = our_logits(*openai, idx), our_logits(*hf, idx)
    assert torch.equal(from_openai, from_hf)
    assert expected.std() > 0.5 and (from_hf - expected).abs().max() <= 1e-4


BLOCK_TENSORFLOW = """
import importlib.abc, sys
attempts = []
class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            attempts.append(name)
            raise ImportError("tensorflow is blocked by the test")
sys.meta_path.insert(0, NoTensorFlow())
for name in [m for m in sys.modules if m.split(".")[0] == "tensorflow"]:
    del sys.modules[name]
"""


@pytest.mark.slow  # a fresh process imports torch (5 s on two busy cores)
def test_openai_checkpoint_loads_with_tensorflow_impossible(mirror, fake_mirror, tmp_path):
    """A fresh interpreter in which `import tensorflow` raises reads the checkpoint (no cache yet),
    and the logits equal Hugging Face's."""
    _, tf_vars = fake_mirror
    hparams = SHAPES["124M"]
    np.save(tmp_path / "idx.npy", tokens(hparams).numpy())
    code = BLOCK_TENSORFLOW + f"""
import numpy, torch
from shared.gpt2 import config_from_hparams, download_and_load_gpt2, load_weights_into_gpt
from shared.model import GPTModel
settings, params = download_and_load_gpt2("124M", {str(tmp_path / 'models')!r}, progress=False)
gpt = GPTModel(config_from_hparams(settings)).eval()
load_weights_into_gpt(gpt, params)
with torch.no_grad():
    logits = gpt(torch.from_numpy(numpy.load({str(tmp_path / 'idx.npy')!r})))
numpy.save({str(tmp_path / 'logits.npy')!r}, logits.numpy())
print("tensorflow attempts:", attempts, "in sys.modules:", "tensorflow" in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "tensorflow attempts: [] in sys.modules: False" in run.stdout
    reference = hf_gpt2_from_tf_variables(tf_vars["124M"], hparams)
    with torch.no_grad():
        expected = reference(tokens(hparams)).logits
    logits = torch.from_numpy(np.load(tmp_path / "logits.npy"))
    assert (logits - expected).abs().max() <= 1e-4

    # The blocker works: the same interpreter set-up cannot import TensorFlow.
    run = subprocess.run([sys.executable, "-c", BLOCK_TENSORFLOW + "import tensorflow"],
                         env=env, capture_output=True, text=True)
    assert run.returncode != 0 and "blocked by the test" in run.stderr


def test_network_failure_of_openai_names_the_huggingface_source(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_MIRROR", str(tmp_path / "empty-mirror"))
    monkeypatch.setattr(download, "BACKOFF_BASE_S", 0)

    def no_network(*args, **kwargs):
        raise requests.ConnectionError("no network (test)")
    monkeypatch.setattr(requests, "get", no_network)
    with pytest.raises(DownloadError) as err:
        download_and_load_gpt2("355M", tmp_path / "models", progress=False)
    message = str(err.value)
    assert "could not download https://openaipublic.blob.core.windows.net" in message
    assert "source='huggingface'" in message and "--source huggingface" in message


def test_unknown_source_or_size_fails_before_any_download(tmp_path):
    with pytest.raises(ValueError, match="unknown source 'tensorflow'.*openai, huggingface"):
        download_and_load_gpt2("124M", tmp_path, source="tensorflow")
    with pytest.raises(ValueError, match="unknown GPT-2 size '125M'.*124M, 355M, 774M, 1558M"):
        download_and_load_gpt2("125M", tmp_path, source="huggingface")
    assert not any(tmp_path.iterdir())


def rewrite_safetensors(path, change):
    from safetensors.numpy import load_file, save_file
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


@pytest.mark.parametrize("name, damage, words", [
    ("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:5000]), "model.safetensors"),
    ("model.safetensors", lambda p: rewrite_safetensors(
        p, lambda t: t.update({"transformer.h.0.attn.c_attn.lora": t["transformer.wpe.weight"]})),
     r"unexpected \['blocks.0.attn.c_attn.lora'\]"),
    ("model.safetensors", lambda p: rewrite_safetensors(
        p, lambda t: t.pop("transformer.h.1.ln_2.bias")), r"missing \['blocks.1.ln_2.b'\]"),
    ("model.safetensors", lambda p: rewrite_safetensors(p, lambda t: t.update(
        {"lm_head.weight": 2 * t["transformer.wte.weight"]})), "not tied to wte"),
    ("config.json", lambda p: p.write_text(json.dumps(
        {k: v for k, v in json.loads(p.read_text()).items() if k != "n_embd"})), "n_embd"),
])
def test_damaged_hugging_face_files_are_named(mirror, tmp_path, name, damage, words):
    model_dir = tmp_path / "huggingface" / "124M"
    download_and_load_gpt2("124M", tmp_path, progress=False, source="huggingface")
    path = model_dir / name
    damage(path)
    with pytest.raises(CorruptCheckpointError, match=words) as err:
        download_and_load_gpt2("124M", tmp_path, progress=False, source="huggingface")
    assert str(path) in str(err.value) and "Delete it" in str(err.value)


@pytest.mark.slow  # the command in a fresh process (10 s on two busy cores)
def test_command_line_huggingface_source(mirror, fake_mirror, tmp_path):
    path, _ = fake_mirror
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLM_MIRROR": str(path)}
    run = subprocess.run([sys.executable, str(REPO / "gpt_download.py"), "--model-size", "355M",
                          "--models-dir", str(tmp_path), "--source", "huggingface"],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "GPT-2 355M from huggingface: {'n_vocab': 50257, 'n_ctx': 24" in run.stdout
    assert sorted(p.name for p in (tmp_path / "huggingface" / "355M").iterdir()) == [
        "config.json", "model.safetensors"]
    assert (hf_model_dir(path, "355M") / "model.safetensors").is_file()

    run = subprocess.run([sys.executable, str(REPO / "gpt_download.py"), "--source", "tf"],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 2 and "invalid choice: 'tf'" in run.stderr


def test_a_tied_output_head_in_the_file_is_accepted(mirror, tmp_path):
    _, params = download_and_load_gpt2("124M", tmp_path, progress=False, source="huggingface")
    rewrite_safetensors(tmp_path / "huggingface" / "124M" / "model.safetensors",
                        lambda t: t.update({"lm_head.weight": t["transformer.wte.weight"].copy()}))
    _, again = download_and_load_gpt2("124M", tmp_path, progress=False, source="huggingface")
    assert np.array_equal(params["wte"], again["wte"])


@pytest.mark.slow  # two sampling commands in fresh processes (10 s on two busy cores)
def test_sample_command_line_gives_the_same_text_from_both_sources(fake_mirror, tmp_path):
    path, _ = fake_mirror
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLM_MIRROR": os.pathsep.join(
        [str(path), os.environ.get("LLM_MIRROR", "")]), "PYTHONIOENCODING": "utf-8"}
    texts = []
    for source in ("openai", "huggingface"):
        run = subprocess.run([sys.executable, "-m", "shared.sample", "--gpt2", "124M", "--models-dir",
                              str(tmp_path), "--source", source, "--max-new-tokens", "12",
                              "--temperature", "0", "--device", "cpu"],
                             env=env, capture_output=True, text=True, encoding="utf-8")
        assert run.returncode == 0, run.stderr
        texts.append(run.stdout)
    assert texts[0] == texts[1] and len(texts[0]) > len("Every effort moves you\n")
