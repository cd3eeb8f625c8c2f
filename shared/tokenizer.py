"""GPT-2's byte-pair encoding through tiktoken, and helpers between text and token-id tensors."""
import functools
from pathlib import Path

import tiktoken
import torch

from shared.checks import check_decodable

ENCODINGS_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
END_OF_TEXT = "<|endoftext|>"
EOT_ID = 50256          # id of <|endoftext|> in GPT-2's vocabulary
GPT2_VOCAB_SIZE = 50257  # ids 0..50256
FILE_SHA256 = {  # OpenAI's two files, as tiktoken knows them
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
FILE_SIZE = {"vocab.bpe": 456318, "encoder.json": 1042301}  # bytes, of the same files
# The repository ships both files (bundled/README.md), laid out as ENCODINGS_URL's host and path.
BUNDLED_ENCODING = (Path(__file__).resolve().parents[1] / "bundled" / "mirror"
                    / "openaipublic.blob.core.windows.net" / "gpt-2" / "encodings" / "main")


def _encoding_from_files(vocab_bpe: str, encoder_json: str) -> tiktoken.Encoding:
    """Build tiktoken's "gpt2" encoding from local copies of OpenAI's two files.

    tiktoken checks both files against the SHA-256 hashes it knows, so a wrong or damaged copy
    cannot produce a subtly different tokenizer.
    """
    from tiktoken_ext import openai_public

    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=vocab_bpe,
        encoder_json_file=encoder_json,
        vocab_bpe_hash=FILE_SHA256["vocab.bpe"],
        encoder_json_hash=FILE_SHA256["encoder.json"],
    )
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=GPT2_VOCAB_SIZE,
        pat_str=openai_public.r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: EOT_ID},
    )


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """tiktoken's "gpt2" encoding, built from OpenAI's `vocab.bpe` and `encoder.json`.

    The two files are read from the copies this repository ships in `bundled/`, so no network is
    needed. Without them (the `shared` folder copied alone) tiktoken fetches and caches the same
    two files itself (TIKTOKEN_CACHE_DIR), checking the same hashes.
    """
    paths = [BUNDLED_ENCODING / name for name in ("vocab.bpe", "encoder.json")]
    if all(path.is_file() for path in paths):
        return _encoding_from_files(str(paths[0]), str(paths[1]))
    return tiktoken.get_encoding("gpt2")


def text_to_token_ids(text: str, tokenizer) -> torch.Tensor:
    """Encode `text` to a (1, n) LongTensor; the literal <|endoftext|> becomes token 50256."""
    ids = tokenizer.encode(text, allowed_special={END_OF_TEXT})
    return torch.tensor(ids, dtype=torch.long).unsqueeze(0)  # add the batch dimension


def token_ids_to_text(token_ids: torch.Tensor, tokenizer) -> str:
    """Decode a (1, n) or (n,) tensor of ids back to text."""
    ids = token_ids.squeeze(0) if token_ids.dim() == 2 else token_ids
    if ids.dim() != 1:
        raise ValueError(f"token_ids_to_text decodes one sequence; got shape {tuple(token_ids.shape)}")
    ids = ids.tolist()
    check_decodable(ids, tokenizer.n_vocab)
    return tokenizer.decode(ids)
