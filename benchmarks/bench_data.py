"""Data throughput: tokenising TinyStories once, then drawing random batches from the token file.

Preparation: shared.prepare_tinystories.prepare on a few MB of real TinyStories text (the sample
in ../shared/data repeated until it is large enough), with 1 and with 2 tokeniser processes.
Throughput counts the tokens written (train + val) per second of the whole run: reading the
stories, tokenising, writing the .bin files. Two "tokenising alone" rows give the ceiling: the
same stories encoded by the workers' call in one process, and split over processes that are already
running (no `datasets`, no pool start-up, no reading or writing), i.e. what extra cores give
the tokeniser itself on this machine.

Batches: shared.data.get_batch on a token file of a few hundred MB, with the process's resident
memory (RSS) before and after. A memmap reads only the windows a batch needs, so RSS stays flat;
the row "whole file in RAM" (np.fromfile) shows what loading the file would cost instead.

    python -m benchmarks.bench_data
    python -m benchmarks.bench_data --prep-mb 20 --memmap-mb 1000 --batches 20000
"""
import argparse
import contextlib
import gc
import io
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (Report, Target, common_args, fmt_num, machine,
                               median, print_report, progress, rss_mb, setup,
                               spread, time_alternating)
from shared.cli import at_least, positive_float
from shared.tokenizer import GPT2_VOCAB_SIZE

PREP_TARGET = 1.7      # 2 processes / 1 process, tokens per second
RSS_TARGET_MB = 100.0  # RSS growth while drawing batches from the memmap
SAMPLE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def missing_sample(sample_dir: Path):
    """What is missing of the TinyStories sample preparation is timed on, or None."""
    names = ["tinystories-sample-train.txt", "tinystories-sample-valid.txt"]
    missing = [name for name in names if not (Path(sample_dir) / name).is_file()]
    if missing:
        return (f"{Path(sample_dir) / missing[0]} not found: the data benchmark times preparation on "
                "the TinyStories sample; pass --sample-dir with both sample files, or leave out the "
                "data benchmark (--only train generate)")
    return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(p)
    p.add_argument("--sample-dir", type=Path, default=SAMPLE_DIR,
                   help="folder with tinystories-sample-train.txt and tinystories-sample-valid.txt")
    p.add_argument("--prep-mb", type=positive_float, default=16.0,
                   help="size of the training text to tokenise (prepare_tinystories uses one "
                        "process per 2 MB at most, so below 4 MB num_proc=2 runs as 1)")
    p.add_argument("--num-proc", type=at_least(int, 1), nargs="+", default=[1, 2],
                   help="tokeniser process counts to compare; the first is the baseline")
    p.add_argument("--memmap-mb", type=positive_float, default=300.0, help="size of the token file")
    p.add_argument("--batches", type=at_least(int, 1), default=2000, help="batches drawn per timed run")
    p.add_argument("--batch-size", type=at_least(int, 1), default=16)
    p.add_argument("--block-size", type=at_least(int, 1), default=1024)
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the text and token files go (default: a temporary folder, removed)")
    args = p.parse_args(argv)
    missing = missing_sample(args.sample_dir)
    if missing:
        p.error(missing)
    if args.repeats is None:
        args.repeats = 2
    return args


def repeated_text(sample: Path, megabytes: float, out: Path) -> Path:
    """Write `sample` again and again (stories stay whole) until `out` holds `megabytes` MB."""
    text = sample.read_text(encoding="utf-8").strip() + "\n\n"
    copies = max(1, round(megabytes * 1e6 / len(text.encode("utf-8"))))
    out.write_text(text * copies, encoding="utf-8")
    return out


def write_random_tokens(path: Path, megabytes: float, seed: int) -> int:
    """A uint16 token file of `megabytes` MB, written in chunks (never the whole array in RAM)."""
    n = int(megabytes * 1e6) // 2
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        for start in range(0, n, 1 << 24):
            rng.integers(0, GPT2_VOCAB_SIZE, min(1 << 24, n - start), dtype=np.uint16).tofile(f)
    return n


# ---------------------------------------------------------------- preparation

def bench_prepare(args, workdir: Path, device):
    from shared.prepare_tinystories import prepare

    train_txt = repeated_text(args.sample_dir / "tinystories-sample-train.txt", args.prep_mb,
                              workdir / "train.txt")
    val_txt = args.sample_dir / "tinystories-sample-valid.txt"
    tokens = {}

    def run_prepare(num_proc):
        def call():
            # prepare() prints progress bars and summaries; keep stdout for the tables.
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                meta = prepare(workdir / f"prep{num_proc}", train_file=train_txt, val_file=val_txt,
                               num_proc=num_proc, force=True)
            tokens[num_proc] = sum(s["tokens"] for s in meta["splits"].values())
        return call

    variants = {n: run_prepare(n) for n in args.num_proc}
    progress(f"bench_data: preparing {train_txt.stat().st_size / 1e6:.1f} MB of text with "
             f"{args.num_proc} processes, 1 warm-up + {args.repeats} runs each")
    # Warm-up: imports, the tokenizer's files, the first worker pool.
    times = time_alternating(variants, args.repeats, 1, device,
                             on_result=lambda n, s: progress(f"  num_proc={n}: {s:.2f} s"))
    same = len({tokens[n] for n in args.num_proc}) == 1
    if not same:
        raise AssertionError(f"token counts differ between process counts: {tokens}")
    base = args.num_proc[0]
    rate = {n: tokens[n] / median(t) for n, t in times.items()}
    rows = [[f"prepare_tinystories, num_proc={n}", f"{train_txt.stat().st_size / 1e6:.1f} MB text",
             fmt_num(median(t)), spread(t), fmt_num(rate[n]), f"{rate[n] / rate[base]:.2f}x", "", ""]
            for n, t in times.items()]
    progress("bench_data: tokenising alone in 1 and 2 running processes (the ceiling)")
    alone_tokens, alone_times = bench_tokenizer_alone(args, train_txt, device)
    alone_rate = {n: alone_tokens / median(t) for n, t in alone_times.items()}
    rows += [[f"tokenising alone, {n} running process{'es' if n > 1 else ''}",
              f"{train_txt.stat().st_size / 1e6:.1f} MB text", fmt_num(median(t)), spread(t),
              fmt_num(alone_rate[n]), f"{alone_rate[n] / alone_rate[base]:.2f}x", "", ""]
             for n, t in alone_times.items()]
    for n in args.num_proc:
        if n > 1 and base == 1:
            startup = bench_pool_startup(n, workdir, device, args.repeats + 1)
            rows.append([f"datasets.map start-up, num_proc={n}, no work", "16 empty rows",
                         fmt_num(median(startup)), spread(startup), "", "", "", ""])
            # Even if every other part of the run split perfectly over n processes:
            t1 = median(times[base])
            best = t1 / n + median(startup)
            rows.append([f"bound for num_proc={n}: t1 / {n} + start-up", "", fmt_num(best), "",
                         fmt_num(tokens[base] / best), f"{t1 / best:.2f}x", "", ""])
    targets = [Target(f"preparation tokens/s: num_proc={n} / num_proc={base}", rate[n] / rate[base],
                      PREP_TARGET) for n in args.num_proc if n == 2 and base == 1]
    note = (f"preparation: {round(train_txt.stat().st_size / 1e6, 1):g} MB of TinyStories text "
            f"(the sample repeated) + the validation sample, {tokens[base]:,} tokens; tokens/s "
            f"over the whole run (read, tokenise, write); median of {args.repeats} alternated "
            f"runs after one warm-up each. "
            f"tokenising alone: the training text's ~1 MB rows of stories, split and in memory, "
            f"encoded with the workers' own call (encode_stories) and shared evenly over "
            f"worker processes started and warmed up before the timing. datasets.map start-up: a map "
            f"whose function returns its rows unchanged, i.e. what starting the pool, handing out the "
            f"shards and joining their results costs before any text is read; with one process "
            f"taking t1 seconds, n processes cannot beat t1 / (t1 / n + start-up)")
    return rows, targets, note


# ---------------------------------------------------------------- the tokeniser's own scaling

_ROWS = []  # each pool worker's copy of the rows' stories, loaded by _load_rows before timing


def _load_rows(path: str) -> None:
    """The stories of each ~1 MB row, as prepare_tinystories' workers split them."""
    from shared.stories import chunk_ranges, stories_in_range, story_separator
    from shared.tokenizer import get_tokenizer
    separator = story_separator(path)
    _ROWS[:] = [stories_in_range(path, a, b, separator) for a, b in chunk_ranges(path, separator)]
    get_tokenizer()


def _encode_share(index: int, num_shares: int) -> int:
    """Encode every num_shares-th row with the workers' own call; return the token count."""
    from shared.stories import encode_stories
    return sum(len(encode_stories(stories)) for stories in _ROWS[index::num_shares])


def bench_tokenizer_alone(args, train_txt: Path, device):
    """Seconds to encode the rows' stories in n already running processes (no datasets, no I/O)."""
    pools = {}
    try:
        for n in args.num_proc:
            pools[n] = multiprocessing.get_context("spawn").Pool(
                n, initializer=_load_rows, initargs=(str(train_txt),))
            pools[n].starmap(_encode_share, [(0, 1 << 30)] * 2 * n)  # started and loaded

        def encode_with(n):
            return lambda: sum(pools[n].starmap(_encode_share, [(i, n) for i in range(n)]))

        tokens = encode_with(args.num_proc[0])()
        times = time_alternating({n: encode_with(n) for n in args.num_proc}, args.repeats + 1, 0,
                                 device)
    finally:
        for pool in pools.values():
            pool.terminate()
    return tokens, times


def _unchanged(batch):
    return batch


def bench_pool_startup(num_proc: int, workdir: Path, device, repeats: int) -> list:
    """Seconds for a `datasets.map(num_proc=...)` that does no work: its fixed cost."""
    from datasets import Dataset
    rows = Dataset.from_dict({"x": list(range(16))})
    runs = iter(range(1 << 30))

    def run():
        with contextlib.redirect_stderr(io.StringIO()):  # no progress bars between the tables
            rows.map(_unchanged, batched=True, batch_size=1, num_proc=num_proc,
                     cache_file_name=str(workdir / f"startup{next(runs)}.arrow"))
    return time_alternating({"start-up": run}, repeats, 1, device)["start-up"]


# ---------------------------------------------------------------- batches

def bench_batches(args, workdir: Path, device):
    from shared.data import get_batch
    from shared.token_files import load_tokens

    path = workdir / "tokens.bin"
    n_tokens = write_random_tokens(path, args.memmap_mb, args.seed)
    B, T = args.batch_size, args.block_size
    generator = torch.Generator().manual_seed(args.seed)
    gc.collect()
    rss_before = rss_mb()
    data = load_tokens(path)
    checksum = 0

    def draw():
        nonlocal checksum
        for _ in range(args.batches):
            x, y = get_batch(data, B, T, device, generator)
            checksum += int(x[0, 0])  # use the batch, so nothing can be skipped
    progress(f"bench_data: {args.batches} batches of {B} x {T} from a {path.stat().st_size / 1e6:.0f} "
             f"MB token file, {args.repeats} runs")
    times = time_alternating({"memmap": draw}, args.repeats, 0, device,
                             on_result=lambda _, s: progress(f"  memmap batches: {s:.2f} s"))["memmap"]
    rss_after = rss_mb()
    data = None  # drop the memmap before measuring what is left
    gc.collect()

    # For contrast: read the whole file into RAM first.
    rss_before_ram = rss_mb()
    start = time.perf_counter()
    in_ram = np.fromfile(path, dtype=np.uint16)
    load_seconds = time.perf_counter() - start
    rss_after_ram = rss_mb()
    del in_ram
    gc.collect()

    batch_tokens = args.batches * B * T
    rows = [[f"get_batch from load_tokens (memmap), {B} x {T}",
             f"{path.stat().st_size / 1e6:.0f} MB file", fmt_num(median(times)), spread(times),
             fmt_num(batch_tokens / median(times)), "", f"{rss_before:.0f} -> {rss_after:.0f}",
             f"{rss_after - rss_before:+.0f}"],
            ["whole file in RAM (np.fromfile), for contrast", f"{path.stat().st_size / 1e6:.0f} MB file",
             fmt_num(load_seconds), "", "", "", f"{rss_before_ram:.0f} -> {rss_after_ram:.0f}",
             f"{rss_after_ram - rss_before_ram:+.0f}"]]
    targets = [Target(f"RSS growth drawing {args.batches * args.repeats:,} batches from a "
                      f"{args.memmap_mb:g} MB token file", rss_after - rss_before, RSS_TARGET_MB,
                      unit=" MB", higher_is_better=False)]
    note = (f"batches: {args.batches} per run ({args.repeats} runs) of {B} x {T} tokens from "
            f"{n_tokens:,} random uint16 ids; tokens/s counts the batch tokens; RSS in MB of this "
            f"process, before load_tokens and after the last batch")
    return rows, targets, note


def run(args) -> Report:
    device = setup(args)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-data-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        prep_rows, prep_targets, prep_note = bench_prepare(args, workdir, device)
        batch_rows, batch_targets, batch_note = bench_batches(args, workdir, device)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return Report("Data: preparation and memmap batches",
                  ["step", "input", "seconds (median)", "seconds (min-max)", "tokens/s",
                   "ratio vs 1 process", "RSS MB", "RSS growth MB"],
                  prep_rows + batch_rows, [prep_note, batch_note, f"machine: {machine(device)}"],
                  prep_targets + batch_targets)


def main(argv=None):
    return print_report(run(parse_args(argv)))


if __name__ == "__main__":
    main()
