"""Data pipelines: chapter 2's sliding-window dataset over one text, and chapter 6's memmap batches."""
import json
import mmap
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from shared.tokenizer import END_OF_TEXT, get_tokenizer


class GPTDatasetV1(Dataset):
    """Windows of `max_length` tokens every `stride` tokens; each target is its input shifted by one.

    Window i covers tokens [i*stride, i*stride + max_length) as input and the same span one token
    later as target, so position t learns to predict token t+1.
    """

    def __init__(self, txt, tokenizer, max_length, stride):
        if max_length < 1 or stride < 1:
            raise ValueError(f"max_length and stride must be >= 1, got {max_length} and {stride}")
        _check_text(txt)
        ids = tokenizer.encode(txt, allowed_special={END_OF_TEXT})
        if len(ids) < max_length + 1:
            raise ValueError(
                f"the text has {len(ids)} tokens, but one training window needs max_length + 1 = "
                f"{max_length + 1} (inputs plus the shifted target); use a shorter context length "
                "or more text")
        self.token_ids = torch.tensor(ids, dtype=torch.long)
        self.max_length = max_length
        self.stride = stride
        # Same count as range(0, len(ids) - max_length, stride): every window whose target fits.
        self.num_windows = (len(ids) - max_length - 1) // stride + 1

    def __len__(self):
        return self.num_windows

    def __getitem__(self, i):
        if not 0 <= i < self.num_windows:
            raise IndexError(i)
        start = i * self.stride
        chunk = self.token_ids[start:start + self.max_length + 1]
        return chunk[:-1], chunk[1:]  # input (max_length,), target (max_length,)


def _check_text(txt) -> None:
    """Refuse a file's path where its text belongs: the path would be tokenised as a short text."""
    read = "pass the text itself, e.g. Path(p).read_text(encoding='utf-8')"
    if not isinstance(txt, str):
        raise TypeError(f"txt must be the text (a str), got {type(txt).__name__}; {read}")
    # Text with a newline, or longer than any path (PATH_MAX is 4096), is never a path.
    if "\n" not in txt and len(txt) <= 4096 and os.path.isfile(txt):
        raise ValueError(f"txt is the path of a file ({txt!r}), not its text; {read}")


def create_dataloader_v1(txt, batch_size=4, max_length=256, stride=128, shuffle=True,
                         drop_last=True, num_workers=0, tokenizer=None):
    """A DataLoader of (inputs, targets) batches, each (batch_size, max_length)."""
    dataset = GPTDatasetV1(txt, tokenizer or get_tokenizer(), max_length, stride)
    if drop_last and len(dataset) < batch_size:
        raise ValueError(
            f"the text gives {len(dataset)} windows, fewer than batch_size={batch_size}, and "
            "drop_last=True would leave no batch at all; use drop_last=False, a smaller batch or "
            "a shorter context")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers)


# --- Chapter 6: random batches from a token file on disk -------------------------------------------
#
# `python -m shared.prepare_tinystories` turns TinyStories into train.bin / val.bin: one long array of
# uint16 token ids per split (GPT-2's 50257 ids fit in 16 bits). Training never loads such a file:
# np.memmap maps it into the address space and each batch copies only the B windows it needs, so a
# 1 GB file costs no more RAM than a 1 MB one.

def read_meta(data_dir) -> dict | None:
    """The meta.json that shared.prepare_tinystories writes beside the token files (None if absent)."""
    meta_path = Path(data_dir) / "meta.json"
    if not meta_path.is_file():
        return None
    advice = "; delete it and re-run `python -m shared.prepare_tinystories`"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:  # cut short, or not UTF-8
        raise ValueError(f"{meta_path} is not valid JSON ({err}){advice}") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} is not a JSON object (it holds a {type(meta).__name__})"
                         f"{advice}")
    problem = _meta_problem(meta)
    if problem:  # valid JSON with wrong fields, e.g. after a hand edit
        raise ValueError(f"{meta_path}: {problem}{advice}")
    return meta


def _meta_problem(meta: dict) -> str | None:
    """What is wrong with the fields the readers of meta.json use, or None."""
    try:
        np.dtype(meta.get("dtype", "uint16"))
    except (TypeError, ValueError):
        return f"dtype {meta.get('dtype')!r} is not a numpy dtype"
    if not isinstance(meta.get("vocab_size", 0), int):
        return f"vocab_size {meta.get('vocab_size')!r} is not a number"
    splits = meta.get("splits", {})
    if not isinstance(splits, dict):
        return f"splits is a {type(splits).__name__}, not an object"
    for name, split in splits.items():
        if not (isinstance(split, dict) and isinstance(split.get("file"), str)
                and isinstance(split.get("tokens"), int)):
            return f"split {name!r} lacks its file name or token count"
    return None


def load_tokens(path) -> np.memmap:
    """Map a token file read-only; its dtype comes from meta.json beside it (uint16 without one).

    When meta.json lists the file, its size is checked against the recorded token count, so a
    truncated or foreign file fails here instead of training on garbage.
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder; pass a token file in it, e.g. "
                                f"{path / 'train.bin'}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; create it with `python -m shared.prepare_tinystories`")
    dtype, expected = np.dtype(np.uint16), None
    meta = read_meta(path.parent)
    if meta is not None:
        dtype = np.dtype(meta.get("dtype", "uint16"))
        split = next((s for s in meta.get("splits", {}).values() if s.get("file") == path.name), None)
        expected = split["tokens"] if split else None
    size = path.stat().st_size
    if size == 0 or size % dtype.itemsize:
        raise ValueError(f"{path} has {size} bytes, not a whole number of {dtype} tokens; "
                         "re-run `python -m shared.prepare_tinystories`")
    if expected is not None and size != expected * dtype.itemsize:
        raise ValueError(f"{path} holds {size // dtype.itemsize} tokens but meta.json says {expected}; "
                         "the file is incomplete or from another run: re-run "
                         "`python -m shared.prepare_tinystories`")
    return np.memmap(path, dtype=dtype, mode="r")


def _map_for_one_batch(data):
    """A fresh map of `data`'s file, used for one batch and then closed (nanoGPT does the same).

    Pages read through a map stay mapped, and counted in the process's resident memory, for as
    long as the map lives; over many random batches a long-lived map would slowly pull the whole
    file into RSS. A map that lives for one batch releases its pages when it is closed. Anything
    other than a whole-file memmap (an ndarray, a slice of a memmap) is used as it is.
    """
    if isinstance(data, np.memmap) and isinstance(data.base, mmap.mmap) and data.filename:
        return np.memmap(data.filename, dtype=data.dtype, mode="r", offset=data.offset,
                         shape=data.shape)
    return data


def get_batch(data, batch_size, block_size, device="cpu", generator=None):
    """B random windows of `block_size` + 1 tokens from `data`, as inputs x and targets y.

    x[b, t] is token start_b + t and y[b, t] the one after it, both int64 (B, T) on `device`.
    Window starts come from torch.randint(len(data) - block_size, (B,), generator=generator), so
    a seeded CPU torch.Generator makes the batches reproducible. Only the B windows are read from
    the file. On CUDA the batch goes through pinned memory with a non-blocking copy, so the
    transfer overlaps with the GPU work already queued.
    """
    if batch_size < 1 or block_size < 1:
        raise ValueError(f"batch_size and block_size must be >= 1, got {batch_size} and {block_size}")
    if np.ndim(data) != 1:  # rows of a 2-D array would become windows of rows, silently
        raise ValueError(f"get_batch needs a 1-D array of token ids (one stream, as load_tokens "
                         f"returns), got shape {np.shape(data)}; flatten it with .reshape(-1)")
    n = len(data)
    if n < block_size + 1:
        raise ValueError(f"the token file has {n} tokens, but a window of block_size={block_size} "
                         f"needs {block_size + 1} (inputs plus the shifted target); use a smaller "
                         "block_size or more data")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError("get_batch draws window starts on the CPU: pass a CPU torch.Generator")
    starts = torch.randint(n - block_size, (batch_size,), generator=generator).tolist()
    source = _map_for_one_batch(data)
    windows = np.stack([source[i:i + block_size + 1] for i in starts])  # (B, T+1), copies B windows
    del source  # close the batch's map before returning
    windows = torch.from_numpy(windows.astype(np.int64))
    device = torch.device(device)
    if device.type == "cuda":
        windows = windows.pin_memory().to(device, non_blocking=True)
    else:
        windows = windows.to(device)
    x = windows[:, :-1].contiguous()  # (B, T) tokens start .. start+T-1
    y = windows[:, 1:].contiguous()   # (B, T) tokens start+1 .. start+T: the next token at each t
    return x, y
