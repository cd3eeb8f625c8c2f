"""Prepare TinyStories once: tokenise every story with GPT-2's BPE and write train.bin / val.bin.

    python -m shared.prepare_tinystories                      # download the official text files
    python -m shared.prepare_tinystories --train-file T.txt --val-file V.txt
    python -m shared.prepare_tinystories --source hf          # the Hugging Face dataset via `datasets`

Each output file is one long array of uint16 token ids (GPT-2's 50257 ids fit in 16 bits): the
tokens of story 1, then <|endoftext|> (50256), then story 2, then <|endoftext|>, and so on.
Training maps it with np.memmap and reads only the windows each batch needs
(shared.token_files.load_tokens / get_batch), so the corpus is tokenised once, never per run.

The pieces, each in its module: where one story ends and each story's ids (shared.stories),
where the text comes from (shared.tinystories_sources), the token files and their meta.json
(shared.token_files). This module runs them: the command line, the lock, the worker pool.

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
then meta.json (its format version, token counts, dtype, vocabulary, source files and sizes, and
a build id that train.bin and val.bin share) is written, atomically (shared.token_files.publish).
A run that loaded the old files goes on reading them (shared.token_files.load_tokens keeps them
open). A re-run whose inputs match meta.json does nothing. One run at a time: OUT_DIR/.lock names
the process that holds the folder (shared.files.exclusive_folder), and tokeniser workers die with their
parent (on Linux), so a killed run leaves none of them working for nobody.
"""
import argparse
import ctypes
import math
import os
import signal
import sys
import warnings
from pathlib import Path

import pyarrow.compute as pc
from tqdm.auto import tqdm

from shared import tinystories_sources as sources
from shared import token_files
from shared.checks import check_positive
from shared.cli import existing_file, positive_float, positive_int, writable_dir
from shared.download import DownloadError
from shared.files import FolderInUse, exclusive_folder
from shared.stories import (chunk_ranges, encode_stories, iter_stories, looks_like_paragraphs,
                            stories_in_range, story_separator)
from shared.tokenizer import EOT_ID, GPT2_VOCAB_SIZE, get_tokenizer

SOURCES = ("download", "sample", "files", "hf")
IDS = {"encoding": "gpt2", "vocab_size": GPT2_VOCAB_SIZE, "eot_id": EOT_ID}  # meta.json: the ids
BYTES_PER_PROCESS = 2 << 20  # a worker pool takes ~0.25 s to start: as long as encoding ~2 MB


# --- the worker pool ----------------------------------------------------------------------------

def _encoded_rows(story_lists) -> dict:
    """One output row per input row: its ids, token count and story count."""
    ids, counts = [], []
    for stories in story_lists:
        stories = list(stories)
        ids.append(encode_stories(stories, token_files.DTYPE))
        counts.append(len(stories))
    return {"ids": ids, "len": [len(x) for x in ids], "stories": counts}


def tokenize_chunks(batch):
    """datasets.map function for text files: each row is a byte range of a file."""
    return _encoded_rows(stories_in_range(*row) for row in
                         zip(batch["path"], batch["start"], batch["end"], batch["separator"]))


def tokenize_story_lists(batch):
    """datasets.map function for the hub dataset: each row is a list of stories."""
    return _encoded_rows(batch["text"])


_POOL_PARENT = None         # pid of this process while tokenize() runs its worker pool
_HOOK_REGISTERED = False    # whether _die_with_parent runs in every forked child of this process


def _die_with_parent():
    """In a freshly forked tokeniser worker: have Linux kill it when its parent dies.

    A pool worker whose parent was killed (kill -9, an out-of-memory kill) would otherwise go on
    waiting on its task pipe, or working, for nobody. Runs in every child forked after the first
    pool starts (_register_fork_hook); PR_SET_PDEATHSIG is Linux's, elsewhere nothing happens.
    """
    if _POOL_PARENT is None or os.getppid() != _POOL_PARENT or not sys.platform.startswith("linux"):
        return
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != _POOL_PARENT:  # the parent died before the request took effect
        os._exit(1)


def _register_fork_hook():
    """Register _die_with_parent for every later fork, once, as the first pool starts. Not at
    import: os.register_at_fork cannot be undone, and a notebook or test that merely imports this
    module should fork as it always does."""
    global _HOOK_REGISTERED
    if not _HOOK_REGISTERED:
        os.register_at_fork(after_in_child=_die_with_parent)
        _HOOK_REGISTERED = True


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
    if num_proc > 1:
        _register_fork_hook()
        _POOL_PARENT = os.getpid()  # workers forked from here die with this process
    try:
        return dataset.map(function, batched=True, batch_size=1,
                           remove_columns=dataset.column_names, desc=desc,
                           num_proc=num_proc if num_proc > 1 else None, cache_file_name=cache_file)
    finally:
        _POOL_PARENT = None


def row_tokens(rows):
    """The ids of a batch of rows, end to end (Arrow flattens them without Python lists)."""
    return pc.list_flatten(rows["ids"]).to_numpy()


def _rows_of_ids(tokenized, path: Path):
    """The ids of each tokenised row in turn, read from datasets' memory-mapped Arrow file one row
    (at most ~CHUNK_BYTES of text) at a time, so the ids never all sit in RAM."""
    for rows in tqdm(tokenized.iter(batch_size=1), total=len(tokenized),
                     desc=f"writing {path.name}"):
        yield row_tokens(rows)


# --- the pipeline -------------------------------------------------------------------------------

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
    if source not in SOURCES:
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
        return _prepare(Path(out_dir), source, train_file, val_file, num_proc, force, max_bytes)


def _inputs(out_dir: Path, source, train_file, val_file, max_bytes):
    """({split: text file} ({} for the hub), {split: what meta.json records of it})."""
    if source == "hf":
        return {}, sources.hub_records()
    if source == "download":
        return sources.official_files(out_dir, max_bytes)
    if source == "sample":
        return sources.bundled_sample(max_bytes)
    return sources.local_files(train_file, val_file, max_bytes)


def _prepare(out_dir: Path, source, train_file, val_file, num_proc, force, max_bytes) -> dict:
    """prepare() once out_dir is locked: the inputs, unless meta.json already records them; their
    stories tokenised split by split into a staging folder; then the files published together."""
    if source == "download" and not force:  # answered from meta.json before anything is fetched
        meta = token_files.up_to_date(out_dir, sources.official_records(out_dir, max_bytes))
        if meta:
            return meta
    files, records = _inputs(out_dir, source, train_file, val_file, max_bytes)
    meta = None if force else token_files.up_to_date(out_dir, records)
    if meta:
        return meta
    separators = {split: _separator(split, path, max_bytes) for split, path in files.items()}
    get_tokenizer()  # load (or fetch) the BPE files once, before any worker starts
    # The staging folder holds this run's Arrow files and new .bin files (a fresh one, so that
    # datasets' cache cannot hand back the stories of an older file that had the same path).
    with token_files.staging_folder(out_dir) as staging:
        if source == "hf":
            from datasets import load_dataset
            hub = load_dataset(sources.HF_DATASET)
            rows = {split: (sources.hub_story_rows(hub, split), None) for split in records}
        else:
            rows = {split: _byte_range_rows(path, separators[split], max_bytes)
                    for split, path in files.items()}
        splits = {}
        for split in ("train", "val"):
            splits[split] = _tokenize_split(split, *rows.pop(split), staging, num_proc)
            splits[split].update(story_separator=separators.get(split, "one story per row"),
                                 source=records[split])
            _warn_if_short(split, files.get(split), splits[split])
        return token_files.publish(staging, out_dir, splits, IDS)


def _separator(split, path: Path, max_bytes) -> str:
    """How the stories of `path` are separated, once sure it holds at least one."""
    separator = story_separator(path)
    if next(iter_stories(path, separator, max_bytes), None) is None:
        raise ValueError(f"the {split} file {path} holds no story (it is empty, or only "
                         "whitespace and <|endoftext|> lines)")
    print(f"{path}: stories separated by {separator}")
    return separator


def _byte_range_rows(path: Path, separator, max_bytes):
    """The datasets rows of a text file (one byte range each) and the bytes they cover."""
    from datasets import Dataset

    ranges = chunk_ranges(path, separator, max_bytes=max_bytes)
    rows = Dataset.from_dict({"path": [str(path)] * len(ranges),
                              "start": [a for a, _ in ranges], "end": [b for _, b in ranges],
                              "separator": [separator] * len(ranges)})
    return rows, (ranges[-1][1] if ranges else 0)


def _tokenize_split(split, rows, work_bytes, staging: Path, num_proc) -> dict:
    """Tokenise one split's rows into staging/SPLIT.bin; what meta.json says of the file."""
    tokenized = tokenize(rows, num_proc, f"tokenizing {split}",
                         cache_file=str(staging / f"{split}.arrow"), work_bytes=work_bytes)
    tokenized = tokenized.with_format("arrow")  # columns as Arrow arrays: no Python lists
    path = staging / f"{split}.bin"
    total = pc.sum(tokenized["len"]).as_py() or 0
    tokens = token_files.write_tokens(_rows_of_ids(tokenized, path), path, total)
    n_stories = pc.sum(tokenized["stories"]).as_py() or 0
    print(f"{staging.parent / path.name}: {n_stories:,} stories, {tokens:,} tokens")
    return {"file": path.name, "tokens": tokens, "stories": n_stories}


def _warn_if_short(split, path, info: dict) -> None:
    """Say so when the documents look like paragraphs (story boundaries lost): easy to miss."""
    n_stories, tokens = info["stories"], info["tokens"]
    if looks_like_paragraphs(n_stories, tokens):
        warnings.warn(f"the {split} split's {n_stories:,} documents average "
                      f"{tokens / n_stories:.0f} tokens, far fewer than TinyStories' stories "
                      f"(about 190): {path or 'the input'} probably separates paragraphs, not "
                      "stories, so <|endoftext|> will follow every paragraph. The official files "
                      "end each story with a line <|endoftext|>; see shared.stories", stacklevel=4)


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
                             f"dataset {sources.HF_DATASET} through `datasets`")
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
