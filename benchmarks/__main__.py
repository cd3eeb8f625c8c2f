"""Run the three benchmarks and print one markdown report: a table each, then the targets.

    python -m benchmarks                          # default sizes: a few minutes on a laptop CPU
    python -m benchmarks --size large             # longer runs, larger batches and files
    python -m benchmarks --device cuda --size large
    python -m benchmarks --only train generate --threads 1 --out report.md

Each benchmark also runs on its own, with every knob as a flag:
python -m benchmarks.bench_train --help (and bench_generate, bench_data).
"""
import argparse
import multiprocessing
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from benchmarks.common import (device_name, progress, run_benchmark,
                               targets_markdown)
from shared.cli import at_least

BENCHMARKS = ["train", "generate", "data"]

# Flags for each benchmark at each size. "tiny" is a smoke test (seconds, toy model shapes);
# "default" measures the 124M shape, the sizes the targets are stated for.
SIZES = {
    "tiny": {
        "train": "--emb-dim 64 --num-layers 2 --num-heads 4 --vocab-size 512 --batch-size 2 "
                 "--seq-len 32 --repeats 2",
        "generate": "--emb-dim 64 --num-layers 2 --num-heads 4 --new-tokens 16 --repeats 2",
        "data": "--prep-mb 0.3 --memmap-mb 8 --batches 50 --block-size 64 --repeats 1",
    },
    "default": {"train": "", "generate": "", "data": ""},
    "large": {
        "train": "--batch-size 8 --seq-len 512 --repeats 9",
        "generate": "--new-tokens 512 --repeats 5 --no-cache-repeats 2",
        "data": "--prep-mb 64 --memmap-mb 1000 --batches 20000 --repeats 3",
    },
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=list(SIZES), default="default")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS,
                   help="which benchmarks to run (default: all three)")
    p.add_argument("--device", type=device_name, default="cpu",
                   help="'cpu', 'cuda', 'cuda:1', ... (default: cpu)")
    p.add_argument("--threads", type=at_least(int, 1), default=None,
                   help="torch.set_num_threads for every benchmark (default: all cores)")
    p.add_argument("--out", help="also write the markdown report to this file")
    p.add_argument("--in-process", action="store_true",
                   help="run the benchmarks in this process instead of a fresh one each (starts "
                        "faster; bench_data's memory numbers then include what the others left)")
    args = p.parse_args(argv)
    if "data" in args.only:  # it runs last: find out now, not after minutes of the others' work
        from benchmarks import bench_data
        missing = bench_data.missing_sample(bench_data.SAMPLE_DIR)
        if missing:
            p.error(missing.replace("pass --sample-dir with both sample files, or ", ""))
    return args


def run_in_fresh_process(name: str, bench_argv: list):
    """Each benchmark gets a process of its own: memory the previous one freed (and kept in the
    allocator's heap) would otherwise hide the resident-memory growth bench_data measures, and
    thread pools or caches could carry over from one benchmark to the next."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_benchmark, name, bench_argv).result()


def main(argv=None):
    args = parse_args(argv)
    common = ["--device", args.device] + (["--threads", str(args.threads)] if args.threads else [])
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in
                                                 (sys.argv[1:] if argv is None else argv))
    sections, targets = [], []
    for name in args.only:
        bench_argv = shlex.split(SIZES[args.size][name]) + common
        progress(f"== {name}: python -m benchmarks.bench_{name} {' '.join(bench_argv)}")
        start = time.perf_counter()
        run = run_benchmark if args.in_process else run_in_fresh_process
        report = run(name, bench_argv)
        report.notes.append(f"{time.perf_counter() - start:.0f} s for this benchmark; "
                            f"`python -m benchmarks.bench_{name} {' '.join(bench_argv)}`")
        sections.append(report.markdown())
        targets += report.targets
    text = "\n\n".join([f"## Benchmarks (`{command.strip()}`)", *sections,
                        "### Targets", targets_markdown(targets)]) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    return targets


if __name__ == "__main__":
    main()
