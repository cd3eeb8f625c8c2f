"""Token files on disk (chapter 6): reading train.bin / val.bin and the meta.json beside them.

`python -m shared.prepare_tinystories` writes one long array of token ids per split plus a
meta.json (dtype, vocabulary size, token counts). These readers are the edge between those files
and the training code: they check what they read and say what to do when a file is damaged or
from another run, so shared.data.get_batch can assume a good array.
"""
import json
import os
import weakref
from pathlib import Path

import numpy as np


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
    if meta.get("rebuilding"):  # prepare_tinystories swaps the files in under this marker
        raise ValueError(f"{Path(data_dir)} is being rebuilt, or its rebuild was stopped before it "
                         "finished, so its files may come from two builds: wait for it, or re-run "
                         "`python -m shared.prepare_tinystories` with the same arguments")
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
