"""The book's own tests, run against our library: with init="pytorch" and torch.manual_seed(123),
GPTModel builds the same weights as "Build a Large Language Model (From Scratch)" (rasbt/
LLMs-from-scratch), and our data loader and training loop draw random numbers in the book's order,
so a reader on a CPU sees the book's numbers.

Expected values are copied from that repository's test files (cited at each); the test code is ours.
"""
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from shared.data import create_dataloader_v1
from shared.generate import generate_text_simple
from shared.model import GPT_CONFIG_124M, GPTModel
from shared.train import train_model_simple

BOOK_124M = dict(GPT_CONFIG_124M, init="pytorch")  # context 1024, no qkv bias, untied head

# rasbt/LLMs-from-scratch, pkg/llms_from_scratch/tests/test_ch04.py (ids) and
# ch04/01_main-chapter-code/tests.py (text): 10 greedy tokens of the untrained 124M model.
BOOK_CH04_IDS = [15496, 11, 314, 716, 27018, 24086, 47843, 30961, 42348, 7267,
                 49706, 43231, 47062, 34657]
BOOK_CH04_TEXT = "Hello, I am Featureiman Byeswickattribute argue logger Normandy Compton analogous"

# rasbt/LLMs-from-scratch, pkg/llms_from_scratch/tests/test_ch05.py: one training window and one
# validation window of 256 tokens, batch 1, AdamW lr 5e-4 / weight decay 0.1, two epochs,
# evaluation after every step; the first losses rounded to one decimal.
BOOK_CH05_FIRST_TRAIN_LOSS = 7.6
BOOK_CH05_FIRST_VAL_LOSS = 10.1


@pytest.mark.slow
def test_ch04_untrained_model_generates_the_books_tokens(tokenizer):
    torch.manual_seed(123)
    model = GPTModel(BOOK_124M).eval()  # eval(): no dropout
    encoded = torch.tensor([tokenizer.encode("Hello, I am")])  # (1, 4)
    out = generate_text_simple(model, encoded, max_new_tokens=10,
                               context_size=BOOK_124M["context_length"])
    assert out[0].tolist() == BOOK_CH04_IDS
    assert tokenizer.decode(out[0].tolist()) == BOOK_CH04_TEXT


@pytest.mark.slow
def test_ch05_first_losses_match_the_book(verdict_text, tokenizer, capsys):
    cfg = dict(BOOK_124M, context_length=256)
    torch.manual_seed(123)
    split_idx = int(0.90 * len(verdict_text))
    loaders = [create_dataloader_v1(text, batch_size=1, max_length=256, stride=256,
                                    shuffle=shuffle, drop_last=shuffle, tokenizer=tokenizer)
               for text, shuffle in ((verdict_text[:split_idx], True),
                                     (verdict_text[split_idx:], False))]
    # One window each, as the book's test does: its first window, not shuffled.
    train_loader, val_loader = (DataLoader(Subset(loader.dataset, range(1)), batch_size=1)
                                for loader in loaders)

    model = GPTModel(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.1)
    train_losses, val_losses, _ = train_model_simple(
        model, train_loader, val_loader, optimizer, "cpu", num_epochs=2, eval_freq=1,
        eval_iter=1, start_context="Every effort moves you", tokenizer=tokenizer)

    assert round(train_losses[0], 1) == BOOK_CH05_FIRST_TRAIN_LOSS
    assert round(val_losses[0], 1) == BOOK_CH05_FIRST_VAL_LOSS
    assert train_losses[-1] < train_losses[0]
