"""Data pipelines: chapter 2's sliding-window dataset over one text, and chapter 6's memmap batches."""
import mmap

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from shared.checks import check_positive, check_text, check_windows
from shared.tokenizer import END_OF_TEXT, get_tokenizer


class GPTDatasetV1(Dataset):
    """Windows of `max_length` tokens every `stride` tokens; each target is its input shifted by one.

    Window i covers tokens [i*stride, i*stride + max_length) as input and the same span one token
    later as target, so position t learns to predict token t+1.
    """

    def __init__(self, txt, tokenizer, max_length, stride):
        ids = tokenizer.encode(txt, allowed_special={END_OF_TEXT})
        self.token_ids = torch.tensor(ids, dtype=torch.long)
        self.max_length = max_length
        self.stride = stride
        # Same count as range(0, len(ids) - max_length, stride): every window whose target fits.
        self.num_windows = max(0, (len(ids) - max_length - 1) // stride + 1)

    def __len__(self):
        return self.num_windows

    def __getitem__(self, i):
        if not 0 <= i < self.num_windows:
            raise IndexError(i)
        start = i * self.stride
        chunk = self.token_ids[start:start + self.max_length + 1]
        return chunk[:-1], chunk[1:]  # input (max_length,), target (max_length,)


def create_dataloader_v1(txt, batch_size=4, max_length=256, stride=128, shuffle=True,
                         drop_last=True, num_workers=0, tokenizer=None):
    """A DataLoader of (inputs, targets) batches, each (batch_size, max_length).

    The entry point of chapter 2's pipeline: it checks its arguments (shared.checks) so that a
    text too short for one batch is refused with counts, not turned into an empty loader."""
    check_text(txt)
    check_positive(max_length=max_length, stride=stride, batch_size=batch_size)
    dataset = GPTDatasetV1(txt, tokenizer or get_tokenizer(), max_length, stride)
    check_windows(len(dataset.token_ids), max_length, len(dataset), batch_size, drop_last)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers)


# --- Chapter 6: random batches from a token file on disk -------------------------------------------
#
# `python -m shared.prepare_tinystories` turns TinyStories into train.bin / val.bin: one long array of
# uint16 token ids per split (GPT-2's 50257 ids fit in 16 bits). Training never loads such a file:
# np.memmap maps it (shared.token_files.load_tokens) and each batch copies only the B windows it
# needs, so a 1 GB file costs no more RAM than a 1 MB one.

def _map_for_one_batch(data):
    """A fresh map of `data`'s file, used for one batch and then closed (nanoGPT does the same).

    Pages read through a map stay mapped, and counted in the process's resident memory, for as
    long as the map lives; over many random batches a long-lived map would slowly pull the whole
    file into RSS. A map that lives for one batch releases its pages when it is closed. Anything
    other than a whole-file memmap (an ndarray, a slice of a memmap) is used as it is.

    The map is made from the file that load_tokens opened (`data.file`), not from its name: a
    rebuild that renames new files over the old names during a run changes nothing for this run,
    which goes on reading the files it started with.
    """
    if isinstance(data, np.memmap) and isinstance(data.base, mmap.mmap) and data.filename:
        return np.memmap(getattr(data, "file", data.filename), dtype=data.dtype, mode="r",
                         offset=data.offset, shape=data.shape)
    return data


def get_batch(data, batch_size, block_size, device="cpu", generator=None):
    """B random windows of `block_size` + 1 tokens from `data`, as inputs x and targets y.

    x[b, t] is token start_b + t and y[b, t] the one after it, both int64 (B, T) on `device`.
    Window starts come from torch.randint(len(data) - block_size, (B,), generator=generator), so
    a seeded CPU torch.Generator makes the batches reproducible. Only the B windows are read from
    the file. On CUDA the batch goes through pinned memory with a non-blocking copy, so the
    transfer overlaps with the GPU work already queued.
    """
    n = len(data)
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
