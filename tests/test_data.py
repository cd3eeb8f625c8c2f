"""Chapter 2's sliding-window dataset and the loaders chapter 5 trains on."""
import pytest
import torch

from shared.data import GPTDatasetV1, create_dataloader_v1
from shared.tokenizer import EOT_ID


class CountingTokenizer:
    """Encodes "0 1 2 ... n-1" to the ids [0, 1, ..., n-1], so every window is known by hand."""

    def encode(self, text, allowed_special=()):
        return [int(word) for word in text.split()]


def numbers(n):
    return " ".join(str(i) for i in range(n))


@pytest.mark.parametrize("n, max_length, stride", [
    (20, 4, 4),   # back to back
    (20, 4, 1),   # every position
    (20, 4, 6),   # gaps between windows
    (21, 4, 4),   # n - max_length divisible by stride: the last window's target just fits
    (5, 4, 1),    # exactly one window
])
def test_windows_and_targets_by_hand(n, max_length, stride):
    """Window i is ids [i*stride, i*stride + max_length); its target is that span shifted by one."""
    dataset = GPTDatasetV1(numbers(n), CountingTokenizer(), max_length, stride)
    assert len(dataset) == len(range(0, n - max_length, stride))
    for i in range(len(dataset)):
        inputs, targets = dataset[i]
        start = i * stride
        assert inputs.tolist() == list(range(start, start + max_length))
        assert targets.tolist() == list(range(start + 1, start + max_length + 1))
        assert inputs.dtype == targets.dtype == torch.long
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_endoftext_is_a_token(tokenizer):
    """The literal <|endoftext|> in a text becomes id 50256, not a string of punctuation."""
    dataset = GPTDatasetV1("one story<|endoftext|>another story", tokenizer, max_length=3, stride=1)
    all_ids = torch.cat([dataset[i][0] for i in range(len(dataset))]).tolist()
    assert EOT_ID in all_ids


def test_short_text_error_says_what_it_has_and_needs():
    """Too few tokens for one window: the message gives both counts and a way out."""
    with pytest.raises(ValueError, match=r"has 5 tokens.*needs max_length \+ 1 = 9"):
        create_dataloader_v1(numbers(5), batch_size=1, max_length=8, stride=8,
                             tokenizer=CountingTokenizer())


@pytest.mark.parametrize("max_length, stride", [(0, 1), (4, 0)])
def test_nonpositive_sizes_raise(max_length, stride):
    with pytest.raises(ValueError, match=">= 1"):
        create_dataloader_v1(numbers(20), batch_size=1, max_length=max_length, stride=stride,
                             tokenizer=CountingTokenizer())


def test_drop_last_with_too_few_windows_raises():
    """drop_last would silently leave an empty loader: refuse, and say what to change."""
    with pytest.raises(ValueError, match="drop_last=False"):
        create_dataloader_v1(numbers(10), batch_size=4, max_length=4, stride=4,
                             tokenizer=CountingTokenizer())


def test_a_path_instead_of_the_text_is_refused(tmp_path, tokenizer):
    """A path (Path or str) would be tokenised as a short text of its own; say how to read it."""
    path = tmp_path / "story.txt"
    path.write_text(numbers(50), encoding="utf-8")
    with pytest.raises(TypeError, match=r"Path\(p\)\.read_text"):
        create_dataloader_v1(path, batch_size=1, max_length=4, stride=4)
    with pytest.raises(ValueError, match=r"path of a file.*Path\(p\)\.read_text"):
        create_dataloader_v1(str(path), batch_size=1, max_length=4, stride=4)
    # Text is never taken for a path: not with a newline, not when no such file exists.
    assert len(GPTDatasetV1(numbers(50) + "\n", CountingTokenizer(), 4, 4)) == 12
    assert len(GPTDatasetV1(numbers(50), CountingTokenizer(), 4, 4)) == 12


@pytest.fixture(scope="module")
def verdict_split(verdict_text):
    split = int(0.9 * len(verdict_text))  # chapter 5: 90 % of the characters for training
    return verdict_text[:split], verdict_text[split:]


def test_verdict_loaders_with_the_chapters_settings(verdict_split, tokenizer):
    """Context 256, stride 256, batch 2: 9 full training batches and 1 validation batch."""
    train_text, val_text = verdict_split
    torch.manual_seed(123)
    train_loader = create_dataloader_v1(train_text, batch_size=2, max_length=256, stride=256,
                                        drop_last=True, shuffle=True, tokenizer=tokenizer)
    val_loader = create_dataloader_v1(val_text, batch_size=2, max_length=256, stride=256,
                                      drop_last=False, shuffle=False, tokenizer=tokenizer)
    train_batches, val_batches = list(train_loader), list(val_loader)
    assert len(train_loader) == len(train_batches) == 9
    assert len(val_loader) == len(val_batches) == 1
    for x, y in train_batches:
        assert x.shape == y.shape == (2, 256)
    x, y = val_batches[0]
    assert x.shape == y.shape == (2, 256)  # 534 validation tokens: windows start at 0 and 256

    # Validation is not shuffled: its windows come in order.
    val_ids = tokenizer.encode(val_text)
    assert x.flatten().tolist() == val_ids[:512] and y.flatten().tolist() == val_ids[1:513]
    # Shuffled training batches hold each window of 257 tokens (every 256) exactly once.
    train_ids = torch.tensor(tokenizer.encode(train_text))
    windows = train_ids.unfold(0, 257, 256)  # (18, 257)
    seen = [torch.cat((x_row, y_row[-1:])) for x, y in train_batches for x_row, y_row in zip(x, y)]
    assert sorted(tuple(w.tolist()) for w in seen) == sorted(tuple(w.tolist()) for w in windows)
    for x, y in train_batches:
        assert torch.equal(x[:, 1:], y[:, :-1])  # the target is the input shifted by one


def test_verdict_validation_at_context_1024_raises(verdict_split, tokenizer):
    """Context 1024 does not fit the 534 validation tokens: say so rather than loop over nothing."""
    with pytest.raises(ValueError, match="1025"):
        create_dataloader_v1(verdict_split[1], batch_size=2, max_length=1024, stride=1024,
                             drop_last=False, shuffle=False, tokenizer=tokenizer)
