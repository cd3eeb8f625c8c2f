"""Random batches from a uint16 token file: shared.token_files.load_tokens and shared.data.get_batch."""
import json
import os
import re

import numpy as np
import psutil
import pytest
import torch

from shared.data import get_batch
from shared.token_files import FORMAT_VERSION, load_tokens


@pytest.fixture
def token_file(tmp_path):
    """2,000 tokens 0, 25, 50, ...: distinct, and above 32767 near the end (a sign bug would show)."""
    data = (np.arange(2000, dtype=np.int64) * 25).astype(np.uint16)
    path = tmp_path / "train.bin"
    data.tofile(path)
    return path, data


def reference_starts(seed, n, batch_size, block_size):
    """The window starts get_batch is documented to draw, from an independent generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(n - block_size, (batch_size,), generator=g).tolist()


def test_windows_are_the_documented_slices(token_file):
    path, data = token_file
    B, T = 6, 17
    x, y = get_batch(load_tokens(path), B, T, generator=torch.Generator().manual_seed(3))
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (B, T)
    for b, start in enumerate(reference_starts(3, len(data), B, T)):
        assert x[b].tolist() == data[start:start + T].astype(np.int64).tolist()
        assert y[b].tolist() == data[start + 1:start + T + 1].astype(np.int64).tolist()


def test_large_ids_survive_the_uint16_to_int64_cast(tmp_path):
    data = np.full(40, 50256, dtype=np.uint16)  # <|endoftext|>, above int16's range
    data.tofile(tmp_path / "t.bin")
    x, y = get_batch(load_tokens(tmp_path / "t.bin"), 2, 8)
    assert (x == 50256).all() and (y == 50256).all()


def test_same_generator_seed_same_batch_other_seed_other_batch(token_file):
    path, _ = token_file
    data = load_tokens(path)
    a = get_batch(data, 4, 32, generator=torch.Generator().manual_seed(0))
    b = get_batch(data, 4, 32, generator=torch.Generator().manual_seed(0))
    c = get_batch(data, 4, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_every_start_can_be_drawn_including_the_last(tmp_path):
    # 9 tokens, block 8: exactly one window fits (start 0), and its target is the last token
    np.arange(9, dtype=np.uint16).tofile(tmp_path / "t.bin")
    x, y = get_batch(load_tokens(tmp_path / "t.bin"), 3, 8)
    assert x.tolist() == [list(range(8))] * 3 and y.tolist() == [list(range(1, 9))] * 3


def test_plain_arrays_and_slices_of_a_memmap_work_too(token_file):
    path, data = token_file
    mm = load_tokens(path)
    for source, ref in ((data, data), (mm[500:900], data[500:900])):
        g = torch.Generator().manual_seed(5)
        x, y = get_batch(source, 3, 10, generator=g)
        for b, start in enumerate(reference_starts(5, len(ref), 3, 10)):
            assert x[b].tolist() == ref[start:start + 10].tolist()
            assert y[b].tolist() == ref[start + 1:start + 11].tolist()


def test_too_short_split_is_refused_by_the_trainer_with_both_counts(tmp_path):
    """get_batch assumes a long enough array (core); train() checks it first (edge)."""
    from shared.model import GPTModel
    from tiny import tiny_cfg
    from shared.trainer import TrainConfig, train

    np.arange(10, dtype=np.uint16).tofile(tmp_path / "t.bin")
    model = GPTModel(tiny_cfg())
    cfg = TrainConfig(max_iters=1, warmup_iters=0, batch_size=2, block_size=16, device="cpu")
    with pytest.raises(ValueError, match=r"the train split has 10 tokens.*block_size \+ 1 = 17"):
        train(model, tmp_path / "t.bin", tmp_path / "t.bin", cfg, tmp_path / "out", progress=False)


def test_load_tokens_reads_dtype_from_meta_json(tmp_path):
    data = np.array([70000, 1, 2, 100000, 5], dtype=np.uint32)  # ids a 16-bit file could not hold
    data.tofile(tmp_path / "train.bin")
    (tmp_path / "meta.json").write_text(json.dumps(
        {"format": FORMAT_VERSION, "dtype": "uint32",
         "splits": {"train": {"file": "train.bin", "tokens": 5}}}))
    tokens = load_tokens(tmp_path / "train.bin")
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint32 and tokens.mode == "r"
    assert tokens.tolist() == data.tolist()


def test_load_tokens_rejects_a_file_that_disagrees_with_meta_json(tmp_path):
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "train.bin")
    (tmp_path / "meta.json").write_text(json.dumps(
        {"format": FORMAT_VERSION, "dtype": "uint16",
         "splits": {"train": {"file": "train.bin", "tokens": 120}}}))
    with pytest.raises(ValueError, match=r"holds 100 tokens but .*meta.json says 120"):
        load_tokens(tmp_path / "train.bin")


def test_damaged_meta_json_says_to_re_run_prepare(tmp_path):
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "train.bin")
    (tmp_path / "meta.json").write_text('{"dtype": "uint16", "splits": ')  # cut short by a crash
    with pytest.raises(ValueError, match=r"meta.json is not valid JSON .*re-run `python -m shared.prepare_tinystories`"):
        load_tokens(tmp_path / "train.bin")


@pytest.mark.parametrize("content", [b'["uint16"]', b'"uint16"', b'\xff\xfe{\x00}\x00'],
                         ids=["a list", "a string", "UTF-16"])
def test_meta_json_not_a_utf8_json_object_says_to_re_run_prepare(tmp_path, content):
    """Valid JSON that is not an object, or a file in another encoding: the same advice as a cut
    file, not an AttributeError or a UnicodeDecodeError that names no file."""
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "train.bin")
    (tmp_path / "meta.json").write_bytes(content)
    with pytest.raises(ValueError, match=r"meta.json is not .*re-run `python -m shared.prepare_tinystories`"):
        load_tokens(tmp_path / "train.bin")


@pytest.mark.parametrize("meta, problem", [
    ({"dtype": "uint13"}, "dtype 'uint13' is not a numpy dtype"),
    ({"splits": ["train"]}, "splits is a list"),
    ({"splits": {"train": {"file": "train.bin"}}}, "split 'train' lacks its file name or token count"),
    ({"splits": {"train": "train.bin"}}, "split 'train' lacks"),
    ({"vocab_size": "50257"}, "vocab_size '50257' is not a number"),
])
def test_hand_edited_meta_json_says_what_is_wrong(tmp_path, meta, problem):
    """Valid JSON with wrong fields: not an AttributeError or KeyError from inside load_tokens."""
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "train.bin")
    (tmp_path / "meta.json").write_text(json.dumps({"format": FORMAT_VERSION, **meta}))
    with pytest.raises(ValueError, match=rf"meta.json: {re.escape(problem)}.*re-run `python -m "
                                         r"shared.prepare_tinystories`"):
        load_tokens(tmp_path / "train.bin")


def test_load_tokens_on_the_data_folder_names_the_files_inside(tmp_path):
    """The folder prepare_tinystories wrote exists: "not found; create it" would mislead."""
    with pytest.raises(FileNotFoundError, match=r"is a folder; pass a token file in it, e.g. .*train\.bin"):
        load_tokens(tmp_path)


def test_load_tokens_rejects_missing_empty_and_odd_sized_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_tinystories"):
        load_tokens(tmp_path / "nope.bin")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="0 bytes"):
        load_tokens(tmp_path / "empty.bin")
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="3 bytes"):
        load_tokens(tmp_path / "odd.bin")


def test_the_vocabulary_meta_json_records_is_what_training_checks(tmp_path):
    """train() takes a token file's largest id from meta.json (one check, shared with
    train_tinystories): ids that would fit a 20-row model are still refused when meta.json says
    the files hold GPT-2's 50257, and the message names meta.json's number."""
    from shared.model import GPTModel
    from tiny import tiny_cfg
    from shared.trainer import TrainConfig, train

    ids = np.arange(200, dtype=np.uint16) % 20
    for split in ("train", "val"):
        ids.tofile(tmp_path / f"{split}.bin")
    (tmp_path / "meta.json").write_text(json.dumps(
        {"format": FORMAT_VERSION, "vocab_size": 50257, "dtype": "uint16",
         "splits": {s: {"file": f"{s}.bin", "tokens": 200} for s in ("train", "val")}}))
    model = GPTModel(tiny_cfg())
    cfg = TrainConfig(max_iters=1, warmup_iters=0, batch_size=2, block_size=8, device="cpu")
    with pytest.raises(ValueError, match=r"ids up to 50256 \(meta.json\).*vocab_size is 20"):
        train(model, tmp_path / "train.bin", tmp_path / "val.bin", cfg, tmp_path / "out",
              progress=False)
    assert not (tmp_path / "out" / "last.pt").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu_batches(token_file):
    data = load_tokens(token_file[0])
    cpu = get_batch(data, 4, 64, generator=torch.Generator().manual_seed(7))
    gpu = get_batch(data, 4, 64, device="cuda", generator=torch.Generator().manual_seed(7))
    assert gpu[0].is_cuda and gpu[1].is_cuda
    assert torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[1], gpu[1].cpu())


@pytest.mark.slow  # writes and samples a 300 MB file (5 s on two busy cores)
def test_resident_memory_stays_flat_on_a_300_mb_file(tmp_path):
    """Drawing many batches must not pull the file into RAM (a long-lived map grows by ~300 MB)."""
    path = tmp_path / "big.bin"
    n, chunk = 150_000_000, 1 << 23  # 300 MB of uint16, written 16 MB at a time
    writer = np.memmap(path, dtype=np.uint16, mode="w+", shape=(n,))
    rng = np.random.default_rng(0)
    for start in range(0, n, chunk):
        writer[start:start + chunk] = rng.integers(0, 50257, min(chunk, n - start), dtype=np.uint16)
    writer.flush()
    del writer
    try:
        data = load_tokens(path)
        g = torch.Generator().manual_seed(0)
        process = psutil.Process()
        get_batch(data, 8, 256, generator=g)  # warm up allocators before the baseline
        before = process.memory_info().rss
        for _ in range(2000):  # 16,000 windows spread over the whole file
            x, y = get_batch(data, 8, 256, generator=g)
        growth_mb = (process.memory_info().rss - before) / 2**20
        assert growth_mb < 50, f"resident memory grew by {growth_mb:.0f} MB"
        assert int(x.max()) < 50257 and x.shape == (8, 256)
    finally:
        os.remove(path)
