"""Stories in a TinyStories text file (chapter 6): where one ends, and the token ids of each.

Where one story ends:
  * a text file with at least one line that is exactly <|endoftext|> (the official
    TinyStories-train.txt / TinyStories-valid.txt): those lines separate the stories;
  * a text file without such a line (e.g. a small sample): a blank line ends a story. A sample
    that also puts blank lines between the paragraphs of one story therefore gets one
    <|endoftext|> per paragraph (`looks_like_paragraphs` tells from the token counts).
Stories are stripped of surrounding whitespace; empty ones are dropped. Each is encoded as
encode_ordinary would encode it alone, so a story that contains the text "<|endoftext|>" gets the
ordinary tokens of that text and cannot inject a special token; the only 50256s are the ones
written after stories. (For speed, the stories of a row are joined with <|endoftext|> and
encoded in one call, which gives the same ids; a row whose text holds the marker is encoded
story by story instead.)

A file is read in byte ranges of about CHUNK_BYTES that end between stories (`chunk_ranges`), never
whole, so that shared.prepare_tinystories can hand the ranges to worker processes.
"""
import re
from pathlib import Path

import numpy as np

from shared.tokenizer import END_OF_TEXT, EOT_ID, get_tokenizer

CHUNK_BYTES = 1 << 20      # text per range: each worker reads, splits and encodes its own
SHORT_STORY_TOKENS = 80    # whole TinyStories stories average ~190 tokens, their paragraphs ~40
BLANK_LINES, EOT_LINES = "blank lines", "<|endoftext|> lines"


def story_separator(path, block_bytes=16 << 20) -> str:
    """EOT_LINES if some line of the file is exactly <|endoftext|>, else BLANK_LINES. "Line" and
    "exactly" as split_stories reads them: CR, CRLF and LF end lines, and str.strip() whitespace
    around the marker does not count.

    Scans blocks of `block_bytes` for the marker's bytes (a C-speed search) and looks at lines only in a
    block that holds them, so a file without markers is not walked line by line in Python, and
    an official file answers at its first story.
    """
    marker = END_OF_TEXT.encode()

    def is_marker(line: bytes) -> bool:  # str.strip, as split_stories: Unicode spaces count too
        return line.decode("utf-8", "replace").strip() == END_OF_TEXT

    with open(path, "rb") as f:
        carry = b""
        while block := f.read(block_bytes):
            # A lone \r ends a line too, as in a text-mode file (a \r\n then adds an empty line,
            # which is no marker line).
            block, carry = carry + block.replace(b"\r", b"\n"), b""
            if marker in block:
                lines = block.split(b"\n")
                carry = lines.pop()  # may be cut by the block's end: looked at with the next one
                if any(marker in line and is_marker(line) for line in lines):
                    return EOT_LINES
            else:
                carry = block[block.rfind(b"\n") + 1:]  # a marker may start in this tail
        if is_marker(carry):
            return EOT_LINES
    return BLANK_LINES


def iter_stories(path, separator=None, max_bytes=None):
    """Yield the stories of a text file (of its first `max_bytes`, rounded up to a story's end),
    reading ~CHUNK_BYTES at a time (never the whole file)."""
    separator = separator or story_separator(path)
    for start, end in chunk_ranges(path, separator, max_bytes=max_bytes):
        yield from stories_in_range(path, start, end, separator)


# A line that ends a story: only whitespace, or <|endoftext|> between whitespace. [^\S\n] is any
# whitespace but the newline (str.strip's set), so a line is judged exactly as line.strip() would.
_STORY_END_LINE = {
    BLANK_LINES: re.compile(r"^[^\S\n]*(?:\n|\Z)", re.MULTILINE),
    EOT_LINES: re.compile(r"^[^\S\n]*<\|endoftext\|>[^\S\n]*(?:\n|\Z)", re.MULTILINE),
}


def split_stories(text: str, separator) -> list:
    """The stories in `text` (whole lines): split at the lines that end a story, each stripped,
    empty ones dropped. Newlines are read as a text-mode file reads them (\r\n and \r become \n)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    stories = (part.strip() for part in _STORY_END_LINE[separator].split(text))
    return [story for story in stories if story]


def stories_in_range(path, start, end, separator) -> list:
    """The stories in bytes [start, end) of a file; the range must start and end at a line end."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        text = data.decode("utf-8")  # ranges end at line ends: whole characters
    except UnicodeDecodeError as err:  # its own message gives the offset in this range only
        raise ValueError(f"{path} is not UTF-8 text: byte {start + err.start} "
                         f"({data[err.start:err.start + 1]!r}) is not valid UTF-8; convert the "
                         "file, e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`") from None
    return split_stories(text, separator)


def chunk_ranges(path, separator, chunk_bytes=None, max_bytes=None) -> list:
    """Byte ranges [(start, end), ...] that cover the file, each about `chunk_bytes` long and
    ending just after a line that ends a story, so that no story is cut in two. With `max_bytes`
    they cover only the first `max_bytes` of the file, rounded up to the end of a story.

    They are the rows that `datasets.map` hands to the workers: each worker reads its own
    ranges, splits them into stories and encodes them. The parent process only seeks to the
    boundaries, so reading and splitting the text run in parallel too, not just the BPE.
    """
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    ends_story = ((lambda s: s == END_OF_TEXT.encode()) if separator == EOT_LINES
                  else (lambda s: s == b""))
    size = Path(path).stat().st_size
    limit = size if max_bytes is None else min(size, max_bytes)
    ranges, start = [], 0
    with open(path, "rb") as f:
        while start < limit:
            f.seek(min(start + chunk_bytes, limit))
            if f.tell() < size:
                f.readline()  # to the end of the line we landed in
                while (line := f.readline()) and not ends_story(line.strip()):
                    pass  # to the end of the story
            end = f.tell()
            ranges.append((start, end))
            start = end
    return ranges


def encode_stories(stories, dtype=np.uint16) -> np.ndarray:
    """The ids of every story, each followed by one <|endoftext|>, as one array (GPT-2's ids
    fit in 16 bits)."""
    enc = get_tokenizer()  # cached per process; forked workers inherit the parent's copy
    stories = [story.strip() for story in stories]
    if not stories:
        return np.empty(0, dtype=dtype)
    if any(END_OF_TEXT in story for story in stories):
        # Rare: a story that holds the marker's text must get its ordinary tokens, one by one.
        return np.array([i for story in stories for i in enc.encode_ordinary(story) + [EOT_ID]],
                        dtype=dtype)
    # One call for the whole row: tiktoken encodes the text between two special tokens on its
    # own, exactly as encode_ordinary encodes each story, and writes the ids straight into a
    # numpy buffer instead of a Python int per token.
    text = END_OF_TEXT.join(stories) + END_OF_TEXT
    return enc.encode_to_numpy(text, allowed_special={END_OF_TEXT}).astype(dtype)


def looks_like_paragraphs(n_stories: int, tokens: int) -> bool:
    """Whether documents of `tokens / n_stories` tokens on average are too short to be whole
    TinyStories stories (~190 tokens) and are most likely their paragraphs: a file whose story
    boundaries were lost, split at blank lines."""
    return n_stories > 0 and tokens / n_stories < SHORT_STORY_TOKENS
