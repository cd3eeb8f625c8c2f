"""Data pipelines: chapter 2's sliding-window dataset over one text, and chapter 6's memmap batches."""
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
