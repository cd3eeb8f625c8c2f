"""Token files on disk (chapter 6): train.bin / val.bin and the meta.json beside them, written
and read.

`python -m shared.prepare_tinystories` writes one long array of token ids per split plus a
meta.json (its format version, dtype, vocabulary size, token counts, a build id, the inputs).
The writer publishes a rebuild only once it is complete; the readers are the edge between those
files and the training code: they check what they read and say what to do when a file is damaged,
from another run or of another format, so shared.data.get_batch can assume a good array.
"""
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np

from shared.files import atomic_path

# The layout of meta.json and the .bin files. Bump it when it changes: readers refuse any other
# version, and the advice (re-run the preparation) rebuilds the folder. 2: train.bin and val.bin
# share a build id (format 1 had none, so a mix of two builds could not be told).
FORMAT_VERSION = 2
DTYPE = np.uint16  # every GPT-2 id (< 50257) fits, at half the size of int32
RERUN = "re-run `python -m shared.prepare_tinystories` with the same arguments"


def read_meta(data_dir) -> dict | None:
    """The meta.json that shared.prepare_tinystories writes beside the token files (None if absent)."""
    meta_path = Path(data_dir) / "meta.json"
    if not meta_path.is_file():
        return None
    advice = "; delete it and re-run `python -m shared.prepare_tinystories`"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:  # cut short, or not UTF-8
        raise ValueError(f"{meta_path} is not valid JSON ({err}){advice}") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} is not a JSON object (it holds a {type(meta).__name__})"
                         f"{advice}")
    if meta.get("rebuilding"):  # publish() swaps the files in under this marker
        raise ValueError(f"{Path(data_dir)} is being rebuilt, or its rebuild was stopped before it "
                         "finished, so its files may come from two builds: wait for it, or "
                         f"{RERUN}")
    version = meta.get("format")
    if version != FORMAT_VERSION:
        age = "a newer" if isinstance(version, int) and version > FORMAT_VERSION else "an older"
        raise ValueError(f"{meta_path} is meta.json format {version}, from {age} version of "
                         f"the preparation; this code reads format {FORMAT_VERSION}: {RERUN} to "
                         "rebuild the folder")
    problem = _meta_problem(meta)
    if problem:  # valid JSON with wrong fields, e.g. after a hand edit
        raise ValueError(f"{meta_path}: {problem}{advice}")
    return meta


def _meta_problem(meta: dict) -> str | None:
    """What is wrong with the fields the readers of meta.json use, or None."""
    try:
        np.dtype(meta.get("dtype", "uint16"))
    except (TypeError, ValueError):
        return f"dtype {meta.get('dtype')!r} is not a numpy dtype"
    if not isinstance(meta.get("vocab_size", 0), int):
        return f"vocab_size {meta.get('vocab_size')!r} is not a number"
    splits = meta.get("splits", {})
    if not isinstance(splits, dict):
        return f"splits is a {type(splits).__name__}, not an object"
    for name, split in splits.items():
        if not (isinstance(split, dict) and isinstance(split.get("file"), str)
                and isinstance(split.get("tokens"), int)):
            return f"split {name!r} lacks its file name or token count"
    return None


def load_tokens(path) -> np.memmap:
    """Map a token file read-only; its dtype comes from meta.json beside it (uint16 without one).

    When meta.json lists the file, its size is checked against the recorded token count, so a
    truncated or foreign file fails here instead of training on garbage.

    The file is opened once, here, and stays open with the array (as `.file`): shared.data.get_batch
    maps each batch from this open file, not from the name, so a rebuild that later replaces the
    file under the same name changes nothing for a run that loaded it. `.build` is the build
    meta.json records (None without one): train.bin and val.bin of one dataset share it.
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder; pass a token file in it, e.g. "
                                f"{path / 'train.bin'}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; create it with `python -m shared.prepare_tinystories`")
    file = open(path, "rb")  # first: the size checked is this file's, whatever is renamed over it
    try:
        meta = _check_against_meta(path, os.fstat(file.fileno()).st_size)
        tokens = np.memmap(file, dtype=np.dtype(meta.get("dtype", "uint16")), mode="r")
    except BaseException:
        file.close()
        raise
    tokens.file, tokens.build = file, meta.get("build")
    weakref.finalize(tokens, file.close)
    return tokens


def _check_against_meta(path: Path, size: int) -> dict:
    """meta.json beside `path` ({} without one), once the file's size has been checked against it."""
    meta = read_meta(path.parent) or {}
    dtype = np.dtype(meta.get("dtype", "uint16"))
    split = next((s for s in meta.get("splits", {}).values() if s.get("file") == path.name), None)
    expected = split["tokens"] if split else None
    if size == 0 or size % dtype.itemsize:
        raise ValueError(f"{path} has {size} bytes, not a whole number of {dtype} tokens; "
                         "re-run `python -m shared.prepare_tinystories`")
    if expected is not None and size != expected * dtype.itemsize:
        raise ValueError(f"{path} holds {size // dtype.itemsize} tokens but meta.json says {expected}; "
                         "the file is incomplete or from another run: re-run "
                         "`python -m shared.prepare_tinystories`")
    return meta


def check_vocabulary(data_dir, vocab_size: int, setting="the model's vocab_size", hint="") -> bool:
    """Whether meta.json in `data_dir` records the vocabulary of its token files, once checked
    that their ids fit `vocab_size` rows (`setting` names where that number comes from); without
    a record (False) the caller must look at the ids themselves.

    The one check of a token file's vocabulary: meta.json knows the largest id, so a file of
    hundreds of MB is never read to find it.
    """
    meta = read_meta(data_dir)
    if meta is None or "vocab_size" not in meta:
        return False
    needed = meta["vocab_size"]
    if needed > vocab_size:
        raise ValueError(f"the token files in {data_dir} hold ids up to {needed - 1} (meta.json), "
                         f"but {setting} is {vocab_size}; {setting} must be {needed} or more{hint}")
    return True


# --- writing ------------------------------------------------------------------------------------

def write_tokens(chunks, path: Path, total: int) -> int:
    """Write the id arrays of `chunks`, end to end, to `path` as one DTYPE array of `total` ids;
    `path` appears only once it is complete.

    Plain file writes, not a memory map: on a disk that fills, a write through a map kills the
    process with SIGBUS (no message, no clean-up), while a plain write raises OSError (ENOSPC).
    """
    if total == 0:
        raise ValueError(f"no stories to write to {path}: is the input file empty?")
    written = 0
    with atomic_path(path) as part, open(part, "wb") as f:
        for ids in chunks:
            ids = np.asarray(ids).astype(DTYPE, copy=False)
            f.write(ids.tobytes())
            written += len(ids)
        if written != total:
            raise RuntimeError(f"wrote {written} tokens to {part}, expected {total}")
    return total


@contextlib.contextmanager
def staging_folder(out_dir: Path):
    """A fresh folder inside `out_dir` for a rebuild's files, removed afterwards.

    Inside out_dir: the same disk, so publish() moves the files in by renaming them. Temporaries
    that a killed run left behind (a kill skips all clean-up) are removed first. An OSError in the
    block (a full disk, most often) becomes one line that says where and what is kept.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("meta.json", "train.bin", "val.bin"):
        for leftover in out_dir.glob(f"{name}.*.tmp"):
            leftover.unlink()
    for leftover in out_dir.glob(".prepare-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out_dir))
    try:
        yield staging
    except OSError as err:
        kept = ("it is marked unfinished until a re-run completes it" if _rebuilding(out_dir)
                else "its previous files are kept")
        raise OSError(err.errno, f"could not write the new dataset in {out_dir}: "
                                 f"{err.strerror or err}; {kept}. Free some space, or prepare "
                                 "into a folder on a larger disk") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, out_dir: Path, splits: dict, ids: dict) -> dict:
    """Swap the complete new .bin files of `splits` in from `staging` and write their meta.json
    (with `ids`: what the ids mean, e.g. their encoding and vocabulary); return it.

    The two renames cannot be one step, so meta.json says "rebuilding" while they happen: a kill
    between them leaves new train.bin beside old val.bin under a meta.json that every reader
    refuses (read_meta) and the next run rebuilds, never a mix that trains.
    """
    _write_json_atomic(out_dir / "meta.json", {"format": FORMAT_VERSION, "rebuilding": True})
    for split, info in splits.items():
        os.replace(staging / info["file"], out_dir / info["file"])
    # The build: a digest of what made the files (inputs, counts), so equal inputs give equal ids
    # and train.bin and val.bin can be told apart from a pair that two builds left together.
    build = hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()[:16]
    meta = {"format": FORMAT_VERSION, **ids, "dtype": np.dtype(DTYPE).name, "build": build,
            "splits": splits}
    _write_json_atomic(out_dir / "meta.json", meta)  # last: the files belong together again
    return meta


def _write_json_atomic(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _rebuilding(out_dir: Path) -> bool:
    """Whether out_dir/meta.json is the marker publish() writes before its renames."""
    try:
        return bool(json.loads((out_dir / "meta.json").read_text(encoding="utf-8")).get("rebuilding"))
    except (OSError, ValueError, AttributeError):
        return False


def up_to_date(out_dir: Path, sources: dict) -> dict | None:
    """meta.json's contents if it records these `sources` (what made each split) and both .bin
    files have the recorded size, else None (a damaged or old meta.json too: rebuild)."""
    try:
        meta = read_meta(out_dir)
    except ValueError:
        return None
    if meta is None:
        return None
    try:
        if set(meta.get("splits", {})) != set(sources):
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
