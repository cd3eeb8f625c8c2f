"""Yardsticks for a language model's loss: count-based baselines and bits per byte.

A loss in nats per token depends on the tokenizer (a token of 4 bytes is harder to predict than one
of 1 byte), so losses of models with different tokenizers or texts do not compare. Bits per byte
do: the same total information, spread over the bytes of the text instead of its tokens,

    bits per byte = loss / ln 2 * (tokens / bytes).

The baselines say what the loss means on a given text: a unigram model predicts every token by its
frequency in the training split, a bigram model by its frequency after the previous token. A
model that does not beat the bigram has learned little more than which token follows which.
"""
import math

import numpy as np

from shared.tokenizer import END_OF_TEXT, EOT_ID


def bits_per_byte(loss: float, n_tokens: int, n_bytes: int) -> float:
    """A mean loss in nats per token, over a text of n_tokens tokens and n_bytes bytes."""
    return loss / math.log(2) * n_tokens / n_bytes


def text_bytes(ids, tokenizer) -> int:
    """UTF-8 bytes of the text that `ids` encode; each <|endoftext|> counts as one byte (it stands
    for one separator between documents, like a newline), not as its 13 characters."""
    ids = np.asarray(ids)
    n_eot = int((ids == EOT_ID).sum())
    text = tokenizer.decode(ids.tolist())
    return len(text.encode("utf-8")) - n_eot * (len(END_OF_TEXT) - 1)


def unigram_loss(train_ids, val_ids, vocab_size: int, smoothing: float = 0.01) -> float:
    """Mean cross-entropy (nats) on val_ids of token frequencies counted on train_ids."""
    counts = np.bincount(np.asarray(train_ids, np.int64), minlength=vocab_size) + smoothing
    probs = counts / counts.sum()
    return float(-np.log(probs[np.asarray(val_ids, np.int64)]).mean())


def bigram_loss(train_ids, val_ids, vocab_size: int, mix: float) -> float:
    """Mean cross-entropy (nats) on val_ids of a bigram model counted on train_ids.

    P(next | prev) = mix * count(prev, next) / count(prev) + (1 - mix) * P_unigram(next), and the
    unigram alone for a `prev` never seen in training (Jelinek-Mercer interpolation: the unigram
    gives every pair the bigram never saw a probability above zero).
    """
    train_ids, val_ids = np.asarray(train_ids, np.int64), np.asarray(val_ids, np.int64)
    unigram = np.bincount(train_ids, minlength=vocab_size) + 0.01
    unigram = unigram / unigram.sum()
    pairs, pair_counts = np.unique(train_ids[:-1] * vocab_size + train_ids[1:], return_counts=True)
    prev_counts = np.bincount(train_ids[:-1], minlength=vocab_size)
    wanted = val_ids[:-1] * vocab_size + val_ids[1:]                   # the pairs to score
    where = np.minimum(np.searchsorted(pairs, wanted), len(pairs) - 1)
    seen = np.where(pairs[where] == wanted, pair_counts[where], 0)    # count(prev, next)
    prev = prev_counts[val_ids[:-1]]                                   # count(prev)
    bigram = np.where(prev > 0, seen / np.maximum(prev, 1), 0.0)
    weight = np.where(prev > 0, mix, 0.0)
    return float(-np.log(weight * bigram + (1 - weight) * unigram[val_ids[1:]]).mean())


def best_bigram_loss(train_ids, val_ids, vocab_size: int) -> tuple[float, float]:
    """(loss, mix) of the best mix in 0.05, 0.10, ..., 0.95, chosen on val_ids itself: a baseline
    that is if anything too good, so a model below it is below any of these bigram models."""
    return min((bigram_loss(train_ids, val_ids, vocab_size, mix), mix)
               for mix in np.round(np.arange(0.05, 1.0, 0.05), 2))
