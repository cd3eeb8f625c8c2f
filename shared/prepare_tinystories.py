"""Prepare TinyStories once: tokenise every story with GPT-2's BPE and write train.bin / val.bin.

    python -m shared.prepare_tinystories                      # download the official text files
    python -m shared.prepare_tinystories --train-file T.txt --val-file V.txt
    python -m shared.prepare_tinystories --source hf          # the Hugging Face dataset via `datasets`

Each output file is one long array of uint16 token ids (GPT-2's 50257 ids fit in 16 bits): the
tokens of story 1, then <|endoftext|> (50256), then story 2, then <|endoftext|>, and so on.
Training maps it with np.memmap and reads only the windows each batch needs
(shared.token_files.load_tokens / get_batch), so the corpus is tokenised once, never per run.

Where one story ends:
  * a text file with at least one line that is exactly <|endoftext|> (the official
    TinyStories-train.txt / TinyStories-valid.txt): those lines separate the stories;
  * a text file without such a line (e.g. a small sample): a blank line ends a story. A sample
    that also puts blank lines between the paragraphs of one story therefore gets one
    <|endoftext|> per paragraph.
Stories are stripped of surrounding whitespace; empty ones are dropped. Each is encoded as
encode_ordinary would encode it alone, so a story that contains the text "<|endoftext|>" gets the
ordinary tokens of that text and cannot inject a special token; the only 50256s are the ones
written after stories. (For speed, the stories of a row are joined with <|endoftext|> and
encoded in one call, which gives the same ids; a row whose text holds the marker is encoded
story by story instead.)

In parallel (--num-proc N): the parent cuts each text file into byte ranges of about 1 MB that end
between stories; `datasets.map(num_proc=N)` hands the ranges to N worker processes, and each one
reads, splits and encodes its own. Only seeking to the cut points and copying the finished ids
into the .bin file stay in the parent, so nearly all of the work is shared out. A split too
small to repay starting the workers (under ~2 MB a process) uses fewer.

Crash safety and re-runs: a rebuild writes its .bin files into a staging folder inside OUT_DIR
and moves them over the old ones only once both are complete, so a full disk or a kill during
the work leaves the previous dataset as it was (the files are written with plain writes, so a
full disk is an OSError, not the SIGBUS of a memory map). While the two files are renamed in,
meta.json says "rebuilding", so a kill between the renames leaves a folder every reader refuses;
then meta.json (token counts, dtype, vocabulary, source files and sizes, and a build id that
train.bin and val.bin share) is written, atomically. A run that loaded the old files goes on
reading them (shared.token_files.load_tokens keeps them open). A re-run whose inputs match
meta.json does nothing. One run at a time: OUT_DIR/.lock names the process
that holds the folder (shared.files.exclusive_folder), and tokeniser workers die with their
parent (on Linux), so a killed run leaves none of them working for nobody.
"""
import argparse
import ctypes
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from tqdm.auto import tqdm

from shared.checks import check_positive
from shared.cli import existing_file, positive_float, positive_int, writable_dir
from shared.download import DownloadError
from shared.files import FolderInUse, atomic_path, exclusive_folder
from shared.token_files import read_meta
from shared.tokenizer import END_OF_TEXT, EOT_ID, GPT2_VOCAB_SIZE, get_tokenizer

BASE_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
OFFICIAL_FILES = {"train": "TinyStories-train.txt", "val": "TinyStories-valid.txt"}
SAMPLE_FILES = {  # the excerpt that ships with the repository (bundled/README.md says what it is)
    split: Path(__file__).resolve().parents[1] / "bundled" / "tinystories" / name
    for split, name in (("train", "TinyStories-train-excerpt.txt"),
                        ("val", "TinyStories-valid-excerpt.txt"))}
PREFIX_SLACK = 1 << 16     # a --max-mb download fetches 64 KiB more, so the story it cuts ends in it
SHORT_STORY_TOKENS = 80    # whole TinyStories stories average ~190 tokens, their paragraphs ~40
HF_DATASET = "roneneldan/TinyStories"
HF_SPLITS = {"train": "train", "val": "validation"}
DTYPE = np.uint16          # every GPT-2 id (< 50257) fits, at half the size of int32
FORMAT_VERSION = 1         # bump when the layout of the .bin files changes
CHUNK_BYTES = 1 << 20      # text per datasets row: each worker reads, splits and encodes its own
STORIES_PER_ROW = 256      # stories per row for the hub dataset (one story per row there)
BYTES_PER_PROCESS = 2 << 20  # a worker pool takes ~0.25 s to start: as long as encoding ~2 MB
BLANK_LINES, EOT_LINES = "blank lines", "<|endoftext|> lines"


# --- splitting a text file into stories ---------------------------------------------------------

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


# --- tokenising -------------------------------------------------------------------------------

def encode_stories(stories) -> np.ndarray:
    """The ids of every story, each followed by one <|endoftext|>, as one uint16 array."""
    enc = get_tokenizer()  # cached per process; forked workers inherit the parent's copy
    stories = [story.strip() for story in stories]
    if not stories:
        return np.empty(0, dtype=DTYPE)
    if any(END_OF_TEXT in story for story in stories):
        # Rare: a story that holds the marker's text must get its ordinary tokens, one by one.
        return np.array([i for story in stories for i in enc.encode_ordinary(story) + [EOT_ID]],
                        dtype=DTYPE)
    # One call for the whole row: tiktoken encodes the text between two special tokens on its
    # own, exactly as encode_ordinary encodes each story, and writes the ids straight into a
    # numpy buffer instead of a Python int per token.
    text = END_OF_TEXT.join(stories) + END_OF_TEXT
    return enc.encode_to_numpy(text, allowed_special={END_OF_TEXT}).astype(DTYPE)


def _encoded_rows(story_lists) -> dict:
    """One output row per input row: its ids, token count and story count."""
    ids, counts = [], []
    for stories in story_lists:
        stories = list(stories)
        ids.append(encode_stories(stories))
        counts.append(len(stories))
    return {"ids": ids, "len": [len(x) for x in ids], "stories": counts}


_POOL_PARENT = None  # pid of this process while tokenize() runs its worker pool


def _die_with_parent():
    """In a freshly forked tokeniser worker: have Linux kill it when its parent dies.

    A pool worker whose parent was killed (kill -9, an out-of-memory kill) would otherwise go on
    waiting on its task pipe, or working, for nobody. Runs in every child forked while the pool
    starts (os.register_at_fork below); PR_SET_PDEATHSIG is Linux's, elsewhere nothing happens.
    """
    if _POOL_PARENT is None or os.getppid() != _POOL_PARENT or not sys.platform.startswith("linux"):
        return
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != _POOL_PARENT:  # the parent died before the request took effect
        os._exit(1)


os.register_at_fork(after_in_child=_die_with_parent)


def tokenize_chunks(batch):
    """datasets.map function for text files: each row is a byte range of a file."""
    return _encoded_rows(stories_in_range(*row) for row in
                         zip(batch["path"], batch["start"], batch["end"], batch["separator"]))


def tokenize_story_lists(batch):
    """datasets.map function for the hub dataset: each row is a list of stories."""
    return _encoded_rows(batch["text"])


def tokenize(dataset, num_proc, desc, cache_file=None, work_bytes=None):
    """Encode every row with `tokenize_chunks` (rows of byte ranges) or `tokenize_story_lists`,
    in up to `num_proc` processes; the row order is kept. A worker pool costs a few tenths of a
    second to start, so a split gets one process per BYTES_PER_PROCESS of text at most."""
    function = tokenize_chunks if "start" in dataset.column_names else tokenize_story_lists
    if work_bytes is not None:
        num_proc = min(num_proc, work_bytes // BYTES_PER_PROCESS)
    num_proc = max(1, min(num_proc, len(dataset)))
    desc += f" ({num_proc} process{'es' if num_proc > 1 else ''})"
    global _POOL_PARENT
    _POOL_PARENT = os.getpid()  # workers forked from here die with this process
    try:
        return dataset.map(function, batched=True, batch_size=1,
                           remove_columns=dataset.column_names, desc=desc,
                           num_proc=num_proc if num_proc > 1 else None, cache_file_name=cache_file)
    finally:
        _POOL_PARENT = None


# --- writing ----------------------------------------------------------------------------------

def row_tokens(rows) -> np.ndarray:
    """The ids of a batch of rows, end to end (Arrow flattens them without Python lists)."""
    return pc.list_flatten(rows["ids"]).to_numpy()


def write_tokens(tokenized, path: Path) -> int:
    """Write all ids to `path` as one uint16 array; it gets its final name only when complete.

    Plain file writes, not a memory map: on a disk that fills, a write through a map kills the
    process with SIGBUS (no message, no clean-up), while a plain write raises OSError (ENOSPC).
    """
    tokenized = tokenized.with_format("arrow")  # columns as Arrow arrays: no Python lists
    total = pc.sum(tokenized["len"]).as_py() or 0
    if total == 0:
        raise ValueError(f"no stories to write to {path}: is the input file empty?")
    written = 0
    with atomic_path(path) as part, open(part, "wb") as f:  # `path` appears only once complete
        # One row (at most ~CHUNK_BYTES of text) at a time, read from datasets' memory-mapped
        # Arrow file, so the ids never all sit in RAM.
        for rows in tqdm(tokenized.iter(batch_size=1), total=len(tokenized),
                         desc=f"writing {path.name}"):
            ids = row_tokens(rows).astype(DTYPE, copy=False)
            f.write(ids.tobytes())
            written += len(ids)
        if written != total:
            raise RuntimeError(f"wrote {written} tokens to {part}, expected {total}")
    return total


def _write_json_atomic(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


# --- inputs and the up-to-date check -----------------------------------------------------------

def _file_source(path, url=None, max_bytes=None) -> dict:
    stat = Path(path).stat()
    src = {"path": str(Path(path).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
           "max_bytes": max_bytes}  # the slice is an input too: another slice rebuilds
    if url:
        src["url"] = url
    return src


def up_to_date(out_dir: Path, sources: dict) -> dict | None:
    """meta.json's contents if it records these sources and both .bin files have the recorded
    size, else None."""
    try:
        meta = read_meta(out_dir)
    except ValueError:  # damaged: rebuild
        return None
    if meta is None:
        return None
    try:
        if meta.get("format") != FORMAT_VERSION or set(meta.get("splits", {})) != set(sources):
            return None
        itemsize = np.dtype(meta["dtype"]).itemsize
        for split, source in sources.items():
            info = meta["splits"][split]
            if {k: info["source"].get(k) for k in source} != source:
                return None
            bin_path = out_dir / info["file"]
            if not bin_path.is_file() or bin_path.stat().st_size != info["tokens"] * itemsize:
                return None
    except (KeyError, TypeError, AttributeError):  # valid JSON, wrong fields (a hand edit): rebuild
        return None
    print(f"{out_dir} is up to date; nothing to do")
    return meta


def _meta(splits: dict) -> dict:
    # The build: a digest of what made the files (inputs, counts), so equal inputs give equal ids
    # and train.bin and val.bin can be told apart from a pair that two builds left together.
    build = hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()[:16]
    return {"format": FORMAT_VERSION, "encoding": "gpt2", "vocab_size": GPT2_VOCAB_SIZE,
            "eot_id": EOT_ID, "dtype": np.dtype(DTYPE).name, "build": build, "splits": splits}


# --- the pipeline -----------------------------------------------------------------------------

def prepare(out_dir="data/tinystories", train_file=None, val_file=None, source="download",
            num_proc=1, force=False, max_mb=None) -> dict:
    """Write out_dir/train.bin, val.bin and meta.json; return the meta dict. One run at a time:
    out_dir is locked while it works (FolderInUse names the process that holds it).

    source: "download" (the official text files, through shared.download), "sample" (the
    excerpt in bundled/tinystories, no network), "files" (`train_file` and `val_file`; implied
    when they are given) or "hf" (the `datasets` hub copy).
    max_mb: tokenise only the first `max_mb` MiB (2**20 bytes) of each text file, rounded up to
    the end of a story: a slice of TinyStories that a laptop trains on (None: everything). With
    "download", only that much of each official file is fetched (an HTTP range request).
    Nothing is written when meta.json already records the same inputs (slice included), unless
    force=True.
    """
    if (train_file is None) != (val_file is None):
        raise ValueError("give both --train-file and --val-file, or neither")
    if train_file is not None:
        if source == "hf":
            raise ValueError("--source hf reads the hub dataset; drop --train-file/--val-file")
        source = "files"
    if source not in ("download", "sample", "files", "hf"):
        raise ValueError(f"source must be 'download', 'sample', 'files' or 'hf', got {source!r}")
    check_positive(num_proc=num_proc)
    max_bytes = None
    if max_mb is not None:
        if (isinstance(max_mb, bool) or not isinstance(max_mb, (int, float))
                or not 0 < max_mb < math.inf):
            raise ValueError(f"max_mb must be a positive number of MiB, got {max_mb!r}")
        if source == "hf":
            raise ValueError("--max-mb slices text files; --source hf reads the hub dataset whole")
        max_bytes = max(1, int(max_mb * 2**20))

    with exclusive_folder(out_dir):
        return _prepare(Path(out_dir), train_file, val_file, source, num_proc, force, max_bytes)


def _download(out_dir: Path, force: bool, max_bytes):
    """The official files in out_dir, or with max_bytes only their first max_bytes (plus
    PREFIX_SLACK, so the story cut there ends inside): ({split: path}, {split: source}), or
    (None, meta) when meta.json records the same inputs."""
    from shared.download import download_file, download_prefix

    urls = {split: BASE_URL + name for split, name in OFFICIAL_FILES.items()}
    names = {split: name if max_bytes is None else
             f"{Path(name).stem}.first-{max_bytes + PREFIX_SLACK}B.txt"
             for split, name in OFFICIAL_FILES.items()}
    files = {split: out_dir / name for split, name in names.items()}
    if not force:
        # With the text files at hand their sizes must match too; without them (deleted after an
        # earlier run) the URLs are the inputs, and nothing is fetched again.
        present = all(p.is_file() for p in files.values())
        meta = up_to_date(out_dir, {s: _file_source(files[s], urls[s], max_bytes) if present
                                    else {"url": urls[s], "max_bytes": max_bytes} for s in files})
        if meta:
            return None, meta
    for split, url in urls.items():
        if max_bytes is None:
            download_file(url, files[split], progress=True)
            continue
        got = download_prefix(url, files[split], max_bytes + PREFIX_SLACK, progress=True)
        with open(got.path, "rb") as f:
            f.seek(max_bytes)
            if got.cut and f"\n{END_OF_TEXT}".encode() not in f.read():
                raise ValueError(f"no story ends within {PREFIX_SLACK} bytes after byte "
                                 f"{max_bytes} of {url}: is it TinyStories' text format?")
    return files, {s: _file_source(files[s], urls[s], max_bytes) for s in files}


def _prepare(out_dir, train_file, val_file, source, num_proc, force, max_bytes) -> dict:
    from datasets import Dataset

    if source == "hf":
        files = {}
        sources = {split: {"dataset": HF_DATASET, "split": hf} for split, hf in HF_SPLITS.items()}
    elif source == "download":
        files, sources = _download(out_dir, force, max_bytes)
        if files is None:  # up to date: `sources` is meta.json's contents
            return sources
    else:
        files = SAMPLE_FILES if source == "sample" else {"train": Path(train_file),
                                                         "val": Path(val_file)}
        for split, path in files.items():
            if not path.is_file():
                raise FileNotFoundError(f"{split} file {path} not found")
        sources = {split: _file_source(path, max_bytes=max_bytes) for split, path in files.items()}

    meta = None if force else up_to_date(out_dir, sources)
    if meta:
        return meta

    separators = {}
    if source != "hf":
        for split, path in files.items():
            separators[split] = story_separator(path)
            if next(iter_stories(path, separators[split], max_bytes), None) is None:
                raise ValueError(f"the {split} file {path} holds no story (it is empty, or only "
                                 "whitespace and <|endoftext|> lines)")

    # Rebuild, leaving the old dataset in place until the new one is complete. Temporaries that
    # a killed run left behind (a kill skips all clean-up) are removed first.
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("meta.json", "train.bin", "val.bin"):
        for leftover in out_dir.glob(f"{name}.*.tmp"):
            leftover.unlink()
    for leftover in out_dir.glob(".prepare-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    get_tokenizer()  # load (or fetch) the BPE files once, before any worker starts
    # This run's Arrow files and new .bin files, in a fresh staging folder inside out_dir (the
    # same disk, so the final moves are renames; and datasets' cache cannot hand back the
    # stories of an older file that had the same path).
    tmp = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out_dir))
    splits = {}
    try:
        if source == "hf":
            from datasets import load_dataset
            hub = load_dataset(HF_DATASET)
        for split in ("train", "val"):
            if source == "hf":
                stories = hub[HF_SPLITS[split]].select_columns(["text"])
                stories = stories.filter(lambda b: [bool(t.strip()) for t in b["text"]],
                                         batched=True, desc=f"dropping empty {split} stories")
                rows = stories.batch(STORIES_PER_ROW)  # fewer, larger rows: less overhead
                separator, work_bytes = "one story per row", None
            else:
                separator = separators[split]
                print(f"{files[split]}: stories separated by {separator}")
                ranges = chunk_ranges(files[split], separator, max_bytes=max_bytes)
                rows = Dataset.from_dict({"path": [str(files[split])] * len(ranges),
                                          "start": [a for a, _ in ranges],
                                          "end": [b for _, b in ranges],
                                          "separator": [separator] * len(ranges)})
                work_bytes = ranges[-1][1] if ranges else 0  # the bytes the slice covers
            tokenized = tokenize(rows, num_proc, f"tokenizing {split}",
                                 cache_file=str(tmp / f"{split}.arrow"), work_bytes=work_bytes)
            bin_path = tmp / f"{split}.bin"
            tokens = write_tokens(tokenized, bin_path)
            n_stories = sum(tokenized["stories"])
            splits[split] = {"file": bin_path.name, "tokens": tokens, "stories": n_stories,
                             "story_separator": separator, "source": sources[split]}
            print(f"{out_dir / bin_path.name}: {n_stories:,} stories, {tokens:,} tokens")
            _warn_if_short(split, files.get(split), n_stories, tokens)
            del rows, tokenized
        meta = _publish(tmp, out_dir, splits)
    except OSError as err:  # a full disk, most often: one line that says where and what is kept
        kept = ("it is marked unfinished until a re-run completes it" if _rebuilding(out_dir)
                else "its previous files are kept")
        raise OSError(err.errno, f"could not write the new dataset in {out_dir}: "
                                 f"{err.strerror or err}; {kept}. Free some space, or prepare "
                                 "into a folder on a larger disk") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _warn_if_short(split, path, n_stories, tokens) -> None:
    """Whole TinyStories stories average ~190 tokens; documents far shorter are most likely
    paragraphs, from a file whose story boundaries were lost (say so, as it is easy to miss)."""
    per_story = tokens / max(n_stories, 1)
    if n_stories and per_story < SHORT_STORY_TOKENS:
        warnings.warn(f"the {split} split's {n_stories:,} documents average {per_story:.0f} tokens, "
                      f"far fewer than TinyStories' stories (about 190): {path or 'the input'} "
                      "probably separates paragraphs, not stories, so <|endoftext|> will follow "
                      "every paragraph. The official files end each story with a line "
                      "<|endoftext|>; see the module's docstring", stacklevel=3)


def _publish(staging: Path, out_dir: Path, splits: dict) -> dict:
    """Swap the complete new .bin files in and write their meta.json; return it.

    The two renames cannot be one step, so meta.json says "rebuilding" while they happen: a kill
    between them leaves new train.bin beside old val.bin under a meta.json that every reader
    refuses (shared.token_files.read_meta) and the next run rebuilds, never a mix that trains.
    """
    _write_json_atomic(out_dir / "meta.json", {"format": FORMAT_VERSION, "rebuilding": True})
    for split in splits:
        os.replace(staging / f"{split}.bin", out_dir / f"{split}.bin")
    meta = _meta(splits)
    _write_json_atomic(out_dir / "meta.json", meta)  # last: the files belong together again
    return meta


def _rebuilding(out_dir: Path) -> bool:
    """Whether out_dir/meta.json is the marker _publish writes before its renames."""
    try:
        return bool(json.loads((out_dir / "meta.json").read_text(encoding="utf-8")).get("rebuilding"))
    except (OSError, ValueError, AttributeError):
        return False


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m shared.prepare_tinystories",
        description=("Tokenise TinyStories once with GPT-2's BPE into OUT_DIR/train.bin and "
                     "val.bin (uint16 memmaps, one <|endoftext|> after every story) plus "
                     "meta.json. Stories are separated by lines that are exactly <|endoftext|> "
                     "(the official files); a text file without such a line is split at blank "
                     "lines instead. Re-running with the same inputs does nothing."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out-dir", default="data/tinystories", type=writable_dir,
                        help="where the .bin files go")
    parser.add_argument("--source", choices=("download", "sample", "hf"), default="download",
                        help="download the official text files (into OUT_DIR), use the excerpt "
                             "in bundled/tinystories (no network), or load the Hugging Face "
                             f"dataset {HF_DATASET} through `datasets`")
    parser.add_argument("--train-file", type=existing_file,
                        help="local training text instead of a download")
    parser.add_argument("--val-file", type=existing_file,
                        help="local validation text instead of a download")
    parser.add_argument("--num-proc", type=positive_int, default=max(1, min(8, (os.cpu_count() or 2) // 2)),
                        help="tokeniser processes")
    parser.add_argument("--max-mb", type=positive_float, default=None,
                        help="tokenise only the first MAX_MB MiB (2**20 bytes) of each text file (rounded "
                             "up to the end of a story): a slice for a laptop; default: all")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if meta.json records the same inputs (with --source hf, "
                             "the dataset name is all it records)")
    args = parser.parse_args(argv)
    try:
        prepare(args.out_dir, args.train_file, args.val_file, args.source, args.num_proc, args.force,
                args.max_mb)
    except ValueError as e:  # the arguments do not fit together: a usage error
        parser.error(str(e))
    except (OSError, FolderInUse, DownloadError) as e:  # a full disk, a busy folder, no network
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
