"""shared.tokenizer against independent GPT-2 BPE implementations and hand-checked ids."""
import hashlib
from pathlib import Path

import pytest
import tiktoken
import torch

from shared.download import download_file
from shared.tokenizer import (END_OF_TEXT, ENCODINGS_URL, EOT_ID, GPT2_VOCAB_SIZE, get_tokenizer,
                              text_to_token_ids, token_ids_to_text)


VARIED_TEXTS = [
    "Hello, world",
    "  leading spaces, \ttabs\n\nand blank lines   ",
    "Ünïcödé — “curly quotes” 日本語 🤖👍🏽",
    "numbers 1234567 3.14159 -42 1e-5",
    "It's don't I'll we've they're",
    "def f(x):\n    return x ** 2  # code",
    "I HAD always thought Jack Gisburn rather a cheap genius",
]


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory):
    """OpenAI's vocab.bpe and encoder.json (through the offline mirror when LLM_MIRROR is set)."""
    folder = tmp_path_factory.mktemp("gpt2-encoding")
    return {name: download_file(ENCODINGS_URL + name, folder / name, progress=False)
            for name in ("vocab.bpe", "encoder.json")}


def test_matches_tiktoken_gpt2(tokenizer, gpt2_files, tmp_path, monkeypatch):
    """Our offline build gives the same ids as tiktoken's stock get_encoding("gpt2").

    Offline, tiktoken's download cache is seeded from the mirror under the names tiktoken looks
    for (sha1 of the URL); tiktoken still checks the files' SHA-256 itself.
    """
    for name, path in gpt2_files.items():
        key = hashlib.sha1((ENCODINGS_URL + name).encode()).hexdigest()
        (tmp_path / key).write_bytes(Path(path).read_bytes())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    stock = tiktoken.get_encoding("gpt2")
    for text in VARIED_TEXTS:
        assert tokenizer.encode(text) == stock.encode(text), text


def test_matches_huggingface_bpe(tokenizer, gpt2_files, verdict_text):
    """Hugging Face's Rust BPE, built from OpenAI's two files, gives the same ids on varied text."""
    tokenizers = pytest.importorskip("tokenizers")
    reference = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(
        str(gpt2_files["encoder.json"]), str(gpt2_files["vocab.bpe"])))
    reference.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    for text in VARIED_TEXTS + [verdict_text]:
        assert tokenizer.encode(text) == reference.encode(text).ids, text[:40]


def test_hand_checked_ids(tokenizer):
    """Ids anyone can look up in GPT-2's encoder.json."""
    assert tokenizer.encode("Hello, world") == [15496, 11, 995]
    assert tokenizer.encode(" the") == [262]
    assert tokenizer.encode(END_OF_TEXT, allowed_special={END_OF_TEXT}) == [EOT_ID] == [50256]
    assert tokenizer.n_vocab == GPT2_VOCAB_SIZE == 50257
    assert tokenizer.eot_token == EOT_ID


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_round_trip(tokenizer, text):
    """Byte-level BPE loses nothing: decode(encode(text)) == text, even for emoji and tabs."""
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_text_to_token_ids_shape_dtype_and_endoftext(tokenizer):
    """A (1, n) LongTensor with the batch dimension added; <|endoftext|> becomes 50256."""
    ids = text_to_token_ids("Every effort moves you<|endoftext|>Hello", tokenizer)
    assert ids.dtype == torch.long and ids.dim() == 2 and ids.size(0) == 1
    expected = tokenizer.encode("Every effort moves you") + [EOT_ID] + tokenizer.encode("Hello")
    assert ids[0].tolist() == expected


def test_token_ids_to_text_round_trip(tokenizer):
    """(1, n) and (n,) tensors decode to the original text; a real batch is refused."""
    text = "Every effort moves you<|endoftext|>forward."
    ids = text_to_token_ids(text, tokenizer)
    assert token_ids_to_text(ids, tokenizer) == text
    assert token_ids_to_text(ids[0], tokenizer) == text
    with pytest.raises(ValueError, match="one sequence"):
        token_ids_to_text(ids.repeat(2, 1), tokenizer)


def test_get_tokenizer_is_cached():
    """Built once per process: the notebooks call it freely."""
    assert get_tokenizer() is get_tokenizer()


@pytest.mark.parametrize("bad", [GPT2_VOCAB_SIZE, 50303, -1])
def test_token_ids_to_text_names_an_id_outside_the_vocabulary(tokenizer, bad):
    """A padded vocabulary (50304 rows) has ids no text maps to; tiktoken would raise a bare
    KeyError (or OverflowError) that names neither the valid range nor a way out."""
    with pytest.raises(ValueError, match=rf"token id {bad} .*\[0, 50257\).*generate"):
        token_ids_to_text(torch.tensor([15496, bad]), tokenizer)


def test_the_tokenizer_is_read_from_the_bundled_files_and_their_hashes_are_checked(tmp_path,
                                                                                   monkeypatch):
    """get_tokenizer reads the two files the repository ships (no download), and a changed byte
    in one of them is refused by tiktoken's hash check instead of giving another tokenizer.
    (Each read gets an empty tiktoken cache: it would serve the good copy it kept of the path.)"""
    from shared import tokenizer as tok

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache-1"))

    for name in ("vocab.bpe", "encoder.json"):
        (tmp_path / name).write_bytes((tok.BUNDLED_ENCODING / name).read_bytes())
    monkeypatch.setattr(tok, "BUNDLED_ENCODING", tmp_path)
    tok.get_tokenizer.cache_clear()
    try:
        assert tok.get_tokenizer().encode("Hello, world") == [15496, 11, 995]  # hand-checked above
        text = (tmp_path / "encoder.json").read_text(encoding="utf-8")
        (tmp_path / "encoder.json").write_text(text.replace('"Hello"', '"Hellp"', 1), encoding="utf-8")
        tok.get_tokenizer.cache_clear()
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache-2"))
        with pytest.raises(ValueError, match="[Hh]ash mismatch"):
            tok.get_tokenizer()
    finally:
        tok.get_tokenizer.cache_clear()
