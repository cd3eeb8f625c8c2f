"""shared.metrics against values computed by hand or by a plain-Python count."""
import math
from collections import Counter

import numpy as np
import pytest

from shared.metrics import best_bigram_loss, bigram_loss, bits_per_byte, text_bytes, unigram_loss
from shared.tokenizer import EOT_ID


def test_bits_per_byte_by_hand():
    # 2 nats per token, 10 tokens over 40 bytes: 2 / ln 2 = 2.885 bits per token, 4 bytes each
    assert bits_per_byte(2.0, 10, 40) == pytest.approx(2 / math.log(2) / 4)
    # a character model on ASCII text: one token per byte, bits per byte = bits per token
    assert bits_per_byte(1.3, 1000, 1000) == pytest.approx(1.3 / math.log(2))


def test_text_bytes_counts_utf8_and_one_byte_per_end_of_text(tokenizer):
    ids = tokenizer.encode_ordinary("héllo") + [EOT_ID] + tokenizer.encode_ordinary(" ok")
    assert text_bytes(ids, tokenizer) == len("héllo".encode()) + 1 + 3 == 10


def reference_losses(train, val, vocab, mix):
    """Plain-Python counts, written independently of the numpy version."""
    uni = Counter(train)
    total = len(train) + 0.01 * vocab
    p_uni = {t: (uni[t] + 0.01) / total for t in range(vocab)}
    pairs = Counter(zip(train[:-1], train[1:]))
    prevs = Counter(train[:-1])
    unigram = -sum(math.log(p_uni[t]) for t in val) / len(val)
    bigram = 0.0
    for a, b in zip(val[:-1], val[1:]):
        p = mix * pairs[(a, b)] / prevs[a] + (1 - mix) * p_uni[b] if prevs[a] else p_uni[b]
        bigram -= math.log(p)
    return unigram, bigram / (len(val) - 1)


def test_unigram_and_bigram_match_a_plain_count():
    rng = np.random.default_rng(0)
    vocab = 12
    train = rng.integers(0, vocab - 2, 400).tolist()   # ids 10, 11 never seen in training
    val = rng.integers(0, vocab, 120).tolist()
    for mix in (0.3, 0.8):
        uni, bi = reference_losses(train, val, vocab, mix)
        assert unigram_loss(train, val, vocab) == pytest.approx(uni, rel=1e-12)
        assert bigram_loss(train, val, vocab, mix) == pytest.approx(bi, rel=1e-12)


def test_a_text_that_repeats_itself_is_nearly_free_for_the_bigram():
    train = [1, 2, 3, 4] * 200
    loss, mix = best_bigram_loss(train, [1, 2, 3, 4] * 10, vocab_size=5)
    assert mix == 0.95 and loss < 0.06 < unigram_loss(train, [1, 2, 3, 4] * 10, 5)
