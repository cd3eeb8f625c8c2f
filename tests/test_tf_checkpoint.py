"""shared/tf_checkpoint.py against TensorFlow's own checkpoint reading, array by array.

TensorFlow writes every checkpoint here (tf.raw_ops.SaveV2, as tf.train.Saver does) and reads it
back with tf.train.load_variable / list_variables; our reader must agree exactly, and must refuse
a truncated data file, corrupted bytes and a damaged index with an error that names the file.
"""
import os
import sys

import numpy as np
import pytest

from fake_gpt2 import random_tf_variables, write_tf_checkpoint
from shared.tf_checkpoint import CheckpointFileError, list_variables, load_variables

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

HPARAMS = {"n_vocab": 50257, "n_ctx": 32, "n_embd": 16, "n_head": 2, "n_layer": 3}
DATA = "model.ckpt.data-00000-of-00001"


def save(prefix, arrays):
    names = sorted(arrays)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[arrays[n] for n in names])
    return str(prefix)


def assert_same_as_tensorflow(prefix):
    ours = load_variables(prefix)
    assert list_variables(prefix) == tf.train.list_variables(prefix)
    assert sorted(ours) == [name for name, _ in tf.train.list_variables(prefix)]
    for name, array in ours.items():
        reference = tf.train.load_variable(prefix, name)
        assert array.dtype == reference.dtype and array.shape == reference.shape, name
        np.testing.assert_array_equal(array, reference, err_msg=name)
    return ours


@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory):
    """A random GPT-2 in OpenAI's layout: model/wte, model/h0/attn/c_attn/w (1, C, 3C), ..."""
    folder = tmp_path_factory.mktemp("gpt2")
    tf_vars = random_tf_variables(HPARAMS, seed=3)
    write_tf_checkpoint(folder, HPARAMS, tf_vars)
    return folder, tf_vars


def test_gpt2_layout_equals_tensorflow(gpt2_checkpoint):
    folder, tf_vars = gpt2_checkpoint
    ours = assert_same_as_tensorflow(str(folder / "model.ckpt"))
    assert ours.keys() == tf_vars.keys()  # 40 entries: more than one restart point in the block
    assert ours["model/h2/mlp/c_fc/w"].shape == (1, 16, 64)
    assert ours["model/wte"].flags.writeable  # torch.as_tensor shares it without a warning


def test_dtypes_scalars_and_empty_tensors_equal_tensorflow(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"f32": rng.standard_normal((3, 4)).astype(np.float32),
              "f64": rng.standard_normal(5), "f16": rng.standard_normal((2, 2)).astype(np.float16),
              "i8": np.arange(-4, 4, dtype=np.int8), "i32": np.arange(7, dtype=np.int32),
              "i64": np.arange(-3, 3, dtype=np.int64) * 2**40, "u8": np.arange(9, dtype=np.uint8),
              "bool": np.array([True, False, True]), "c64": np.array([1 + 2j], np.complex64),
              "scalar": np.float32(3.5), "empty": np.zeros((0, 3), np.float32)}
    ours = assert_same_as_tensorflow(save(tmp_path / "model.ckpt", arrays))
    assert ours["scalar"].shape == () and ours["empty"].shape == (0, 3)


@pytest.mark.slow  # TensorFlow writes and reads 3000 entries (6 s on two busy cores)
def test_many_entries_span_several_index_blocks(tmp_path):
    """3000 long names make an index of several data blocks, with prefix-compressed keys."""
    arrays = {f"layer_{i:04d}/" + "weights_" * 12 + str(i % 7): np.full(2, i, np.int32)
              for i in range(3000)}
    prefix = save(tmp_path / "model.ckpt", arrays)
    assert os.path.getsize(prefix + ".index") > 262144  # TensorFlow cuts table blocks at 256 KiB
    ours = assert_same_as_tensorflow(prefix)
    assert len(ours) == 3000


def damaged_copy(folder, tmp_path, name, damage):
    for file in ("model.ckpt.index", DATA):
        data = (folder / file).read_bytes()
        (tmp_path / file).write_bytes(damage(data) if file == name else data)
    return str(tmp_path / "model.ckpt")


def flip_byte(at):
    return lambda data: data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


@pytest.mark.parametrize("name, damage, words", [
    (DATA, lambda d: d[:len(d) // 2], "truncated"),
    (DATA, flip_byte(5000), "corrupted"),                 # one bit, inside some tensor
    ("model.ckpt.index", flip_byte(100), "damaged index"),  # inside the first block
    ("model.ckpt.index", lambda d: d[:-10], "damaged index"),
    ("model.ckpt.index", lambda d: b"not a checkpoint index" * 50, "bad magic number"),
])
def test_damaged_files_are_named_as_tensorflow_also_refuses_them(gpt2_checkpoint, tmp_path,
                                                                   name, damage, words):
    folder, _ = gpt2_checkpoint
    prefix = damaged_copy(folder, tmp_path, name, damage)
    with pytest.raises(CheckpointFileError, match=words) as err:
        load_variables(prefix)
    assert err.value.path == tmp_path / name and str(tmp_path / name) in str(err.value)
    with pytest.raises(Exception):  # the reference agrees that the checkpoint is broken
        for variable, _ in tf.train.list_variables(prefix):
            tf.train.load_variable(prefix, variable)


def test_checksums_need_google_crc32c_and_say_so_without_it(gpt2_checkpoint, tmp_path,
                                                            monkeypatch):
    folder, tf_vars = gpt2_checkpoint
    prefix = damaged_copy(folder, tmp_path, DATA, flip_byte(5000))
    monkeypatch.setitem(sys.modules, "google_crc32c", None)  # `import google_crc32c` fails
    with pytest.warns(UserWarning, match="pip install google-crc32c"):
        arrays = load_variables(prefix)  # unverified: the flipped bit goes through
    changed = [n for n in tf_vars if not np.array_equal(arrays[n], tf_vars[n])]
    assert len(changed) == 1


def test_missing_tensor_and_missing_data_file_are_named(gpt2_checkpoint, tmp_path):
    folder, _ = gpt2_checkpoint
    prefix = str(folder / "model.ckpt")
    with pytest.raises(CheckpointFileError, match="lists no tensor 'model/h9/ln_1/g'"):
        load_variables(prefix, ["model/wte", "model/h9/ln_1/g"])
    (tmp_path / "model.ckpt.index").write_bytes((folder / "model.ckpt.index").read_bytes())
    with pytest.raises(CheckpointFileError) as err:
        load_variables(str(tmp_path / "model.ckpt"))
    assert err.value.path == tmp_path / DATA


def test_string_tensors_are_refused_clearly(tmp_path):
    prefix = save(tmp_path / "model.ckpt", {"text": np.array([b"abc"], dtype=object)})
    with pytest.raises(CheckpointFileError, match="dtype 7"):
        load_variables(prefix)
