"""gpt_download.py: fetching OpenAI's seven files, reading the TensorFlow checkpoint, no cache,
and clear errors for damaged files. A random GPT-2 in OpenAI's layout stands in for the real one."""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fake_gpt2 import fake_model_dir, use_offline_mirror, write_fake_gpt2
from gpt_download import download_and_load_gpt2
from shared.download import DownloadError
from shared.gpt2 import GPT2_FILES, CorruptCheckpointError

REPO = Path(__file__).resolve().parents[1]
HPARAMS = {"n_vocab": 50257, "n_ctx": 32, "n_embd": 16, "n_head": 2, "n_layer": 2}
DATA = "model.ckpt.data-00000-of-00001"


@pytest.fixture(scope="module")
def fake_mirror(tmp_path_factory):
    mirror = tmp_path_factory.mktemp("mirror")
    return mirror, write_fake_gpt2(mirror, "124M", HPARAMS)


@pytest.fixture
def mirror(fake_mirror, monkeypatch):
    """LLM_MIRROR = the fake mirror, then the usual one; the network is never tried."""
    return use_offline_mirror(fake_mirror[0], monkeypatch)


def array_at(params, tf_name):
    """The array `params` holds for an OpenAI variable name, found by walking the name."""
    parts = tf_name.split("/")[1:]  # drop "model"
    if parts[0] == "ln_f":
        return params[parts[1]]
    if parts[0].startswith("h"):
        node = params["blocks"][int(parts[0][1:])]
        for part in parts[1:]:
            node = node[part]
        return node
    return params[parts[0]]


def digest(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.hexdigest()


def test_fake_checkpoint_has_openai_names(fake_mirror):
    import tensorflow as tf
    path, tf_vars = fake_mirror
    stored = dict(tf.train.list_variables(str(fake_model_dir(path, "124M") / "model.ckpt")))
    assert stored["model/h0/attn/c_attn/w"] == [1, 16, 48]
    assert stored["model/h1/mlp/c_proj/w"] == [1, 64, 16]
    assert stored["model/wte"] == [50257, 16] and stored["model/ln_f/g"] == [16]
    assert len(stored) == 4 + 12 * HPARAMS["n_layer"] == len(tf_vars)


def test_unknown_size_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="124M, 355M, 774M, 1558M"):
        download_and_load_gpt2("125M", tmp_path)
    assert not any(tmp_path.iterdir())  # nothing fetched


@pytest.mark.slow  # a fresh process imports torch (4 s on two busy cores)
def test_reads_every_array_without_tensorflow_and_writes_nothing_beside_it(mirror, fake_mirror,
                                                                            tmp_path):
    _, tf_vars = fake_mirror
    settings, params = download_and_load_gpt2("124M", tmp_path, progress=False)
    assert settings == HPARAMS
    files = sorted(p.name for p in (tmp_path / "124M").iterdir())
    assert files == sorted(GPT2_FILES)  # OpenAI's seven files and nothing else
    for name, expected in tf_vars.items():  # leading 1 of the conv weights squeezed, values intact
        if expected.ndim == 3:
            expected = expected.reshape(expected.shape[1:])
        np.testing.assert_array_equal(array_at(params, name), expected)

    # A fresh interpreter reads the same arrays and never imports TensorFlow.
    names = sorted(tf_vars)
    code = ("import sys; from gpt_download import download_and_load_gpt2; "
            "from test_gpt_download import array_at, digest; "
            f"s, p = download_and_load_gpt2('124M', {str(tmp_path)!r}, progress=False); "
            f"print('tensorflow' in sys.modules, digest(array_at(p, n) for n in {names!r}))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), str(REPO / "tests" / "support")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", digest(tf_vars[n] for n in names)]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="needs POSIX permissions that apply (root ignores them)")
def test_a_read_only_folder_of_complete_files_loads(mirror, fake_mirror, tmp_path):
    """Nothing is written beside complete files, so a read-only models folder loads as it is."""
    _, tf_vars = fake_mirror
    download_and_load_gpt2("124M", tmp_path, progress=False)
    model_dir = tmp_path / "124M"
    for extra in [p for p in model_dir.iterdir() if p.name not in GPT2_FILES]:
        extra.unlink()  # the seven files alone, as copied from another machine
    model_dir.chmod(0o555)
    try:
        _, params = download_and_load_gpt2("124M", tmp_path, progress=False)
    finally:
        model_dir.chmod(0o755)
    np.testing.assert_array_equal(params["wte"], tf_vars["model/wte"])


def test_a_read_only_folder_is_never_written_to(mirror, fake_mirror, tmp_path, monkeypatch):
    """The same as root (which ignores permissions): any write under the folder fails the test."""
    import builtins
    _, tf_vars = fake_mirror
    download_and_load_gpt2("124M", tmp_path, progress=False)
    for extra in [p for p in (tmp_path / "124M").iterdir() if p.name not in GPT2_FILES]:
        extra.unlink()  # the seven files alone, as copied from another machine
    model_dir = str(tmp_path / "124M")
    real_open = builtins.open

    def read_only_open(file, mode="r", *args, **kwargs):
        if str(file).startswith(model_dir) and any(c in mode for c in "wax+"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only_open)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(PermissionError(13, "no")))
    _, params = download_and_load_gpt2("124M", tmp_path, progress=False)
    np.testing.assert_array_equal(params["wte"], tf_vars["model/wte"])


def test_file_missing_from_the_mirror_is_named(mirror, tmp_path_factory, monkeypatch):
    partial = tmp_path_factory.mktemp("partial-mirror")
    shutil.copytree(mirror, partial, dirs_exist_ok=True)
    (fake_model_dir(partial, "124M") / "model.ckpt.meta").unlink()
    monkeypatch.setenv("LLM_MIRROR", str(partial))
    with pytest.raises(DownloadError, match=r"models/124M/model\.ckpt\.meta"):
        download_and_load_gpt2("124M", tmp_path_factory.mktemp("models"), progress=False)


@pytest.mark.parametrize("name, damage", [
    (DATA, lambda b: b[:len(b) // 2]),                 # truncated
    (DATA, lambda b: b[:100] + bytes(len(b) - 100)),   # right size, wrong bytes
    ("model.ckpt.index", lambda b: b"not a checkpoint index" * 50),
    ("hparams.json", lambda b: b"{\"n_vocab\": 50257,"),
])
def test_damaged_checkpoint_file_is_named(mirror, tmp_path, name, damage):
    model_dir = tmp_path / "124M"
    download_and_load_gpt2("124M", tmp_path, progress=False)
    path = model_dir / name
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CorruptCheckpointError) as err:
        download_and_load_gpt2("124M", tmp_path, progress=False)
    message = str(err.value)
    assert str(path) in message and "Delete it" in message and "re-run" in message

    path.unlink()  # doing what the message says fixes it
    _, params = download_and_load_gpt2("124M", tmp_path, progress=False)
    assert params["wte"].shape == (50257, 16)


@pytest.mark.slow  # the command in a fresh process (6 s on two busy cores)
def test_command_line(mirror, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, str(REPO / "gpt_download.py"), "--model-size", "124M",
                          "--models-dir", str(tmp_path)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "'n_embd': 16" in run.stdout and (tmp_path / "124M" / "model.ckpt.index").exists()

    run = subprocess.run([sys.executable, str(REPO / "gpt_download.py"), "--model-size", "2B"],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 2 and "invalid choice: '2B'" in run.stderr


def test_command_line_failed_download_is_one_message_without_traceback(tmp_path):
    """The DownloadError already lists every source and what to do; a traceback would bury it."""
    code = ("import sys, gpt_download, shared.download as d\n"
            "def offline(url, *args, **kwargs): raise d._SourceError('offline (test)')\n"
            "d._fetch_with_retries = offline\n"
            "sys.exit(gpt_download.main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLM_MIRROR": str(tmp_path / "empty-mirror")}
    run = subprocess.run([sys.executable, "-c", code, "--models-dir", str(tmp_path / "models")],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.startswith("error: could not download") and "LLM_MIRROR" in run.stderr


def test_command_line_os_error_is_one_line(tmp_path):
    """A file where the models folder should be."""
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLM_MIRROR": str(tmp_path / "empty-mirror")}
    run = subprocess.run([sys.executable, str(REPO / "gpt_download.py"), "--models-dir",
                          str(a_file)], env=env, capture_output=True, text=True)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.startswith("error: ") and len(run.stderr.strip().splitlines()) == 1
