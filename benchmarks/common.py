"""What the three benchmarks share: threads and devices, timing, statistics, markdown tables.

Timings on a shared machine are noisy, so every benchmark times its variants *alternately*
(A, B, C, A, B, C, ...) after a warm-up, and reports the median. A slow moment then hurts every
variant about equally, and the ratios between them stay meaningful even when the absolute numbers
move from run to run.
"""
import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass, field

import torch

from shared.cli import at_least, seed
from shared.device import device_disagreement, get_device
from shared.model import GPT_CONFIG_124M


# ---------------------------------------------------------------- setup

def device_name(text: str) -> str:
    """An argparse type: a device this machine has (`--device foo` gets a usage line, not a
    traceback). The name itself is passed on, so each benchmark process can open the device."""
    try:
        get_device(text, check=False)  # only the name here; the benchmark's get_device checks it
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags every benchmark takes: device, threads, repeats, seed."""
    parser.add_argument("--device", type=device_name, default="cpu",
                        help="'cpu', 'cuda', 'cuda:1', ... (default: cpu)")
    parser.add_argument("--threads", type=at_least(int, 1), default=None,
                        help="torch.set_num_threads for every variant (default: all cores)")
    parser.add_argument("--repeats", type=at_least(int, 1), default=None,
                        help="timed runs per variant; the median is reported")
    parser.add_argument("--seed", type=seed, default=123)
    return parser


def setup(args) -> torch.device:
    """Apply --threads and --seed to this process; check and return --device."""
    device = get_device(args.device, check=False)  # a clear error for an unknown or unavailable device
    # A device that computes wrong numbers is not benchmarked: timing it, or the CPU in its place
    # (what get_device would fall back to), would print a table for something that was not asked for.
    problem = None if device.type == "cpu" else device_disagreement(device)
    if problem:
        raise RuntimeError(f"{problem}; not benchmarking it. Try another PyTorch version, or "
                           "--device cpu.")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads or usable_cores())
    torch.manual_seed(args.seed)
    return device


def usable_cores() -> int:
    """Cores this process may run on (a container or taskset can allow fewer than the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer measures the work and not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> str:
    """One line that says where the numbers come from."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        where = f"{cpu}, {os.cpu_count()} logical cores"
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load average {:.1f} (1 min) at the end".format(os.getloadavg()[0])
    threads = torch.get_num_threads()
    return f"{where}; torch {torch.__version__}, {threads} thread{'s' if threads > 1 else ''}{load}"


def rss_mb() -> float:
    """Resident memory of this process in MB (pages of a memory-mapped file that were read count)."""
    import psutil
    return psutil.Process().memory_info().rss / 1e6


def run_benchmark(name: str, argv: list):
    """benchmarks.bench_<name>.run(parse_args(argv)) -> its Report (what the runner calls)."""
    import importlib
    module = importlib.import_module(f"benchmarks.bench_{name}")
    return module.run(module.parse_args(argv))


# ---------------------------------------------------------------- timing

def time_once(fn, device: torch.device) -> float:
    """Seconds one call of fn() takes, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_alternating(variants: dict, repeats, warmup: int, device: torch.device,
                     on_result=None) -> dict:
    """Time every variant `repeats` times, interleaved, after `warmup` untimed calls of each.

    variants: {name: fn}. repeats: one number for all, or {name: number} (a slow variant may run
    fewer times; it then sits out the later rounds). Returns {name: [seconds, ...]}.
    on_result(name, seconds) is called after each timed run (progress output for long benchmarks).
    """
    if not isinstance(repeats, dict):
        repeats = {name: repeats for name in variants}
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in variants}
    names = list(variants)
    for r in range(max(repeats.values())):
        # Rotate the order every round, so no variant always runs right after the same neighbour.
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if len(times[name]) < repeats[name]:
                seconds = time_once(variants[name], device)
                times[name].append(seconds)
                if on_result is not None:
                    on_result(name, seconds)
    return times


def median(values) -> float:
    return statistics.median(values)


def spread(values) -> str:
    """min-max of the timed runs, as a rough error bar."""
    return f"{fmt_num(min(values))}-{fmt_num(max(values))}"


def fmt_num(x: float) -> str:
    """Three significant digits, without exponents: 2137.4 -> '2,140', 12.34 -> '12.3'."""
    if x >= 100:
        return f"{float(f'{x:.3g}'):,.0f}"
    return f"{x:.3g}"


def progress(message: str) -> None:
    """Progress lines go to stderr, so stdout holds only the tables."""
    import sys
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- reporting

def shape_name(cfg: dict) -> str:
    """'124M shape' for GPT-2 small's dimensions, else the dimensions themselves."""
    keys = ("emb_dim", "num_layers", "num_heads", "vocab_size")
    dims = tuple(cfg[k] for k in keys)
    if dims == tuple(GPT_CONFIG_124M[k] for k in keys):
        return "124M shape"
    return "{}-dim, {} layers, {} heads, vocab {}".format(*dims)


@dataclass
class Target:
    """A goal from the issue, checked on a ratio measured in the same run."""
    name: str
    value: float
    goal: float
    unit: str = "x"
    higher_is_better: bool = True

    @property
    def met(self) -> bool:
        return self.value >= self.goal if self.higher_is_better else self.value < self.goal

    def row(self):
        sign = ">=" if self.higher_is_better else "<"
        return [self.name, f"{self.value:.2f}{self.unit}", f"{sign} {self.goal:g}{self.unit}",
                "yes" if self.met else "**no**"]


@dataclass
class Report:
    """What one benchmark measured: a titled markdown table, notes under it, and its targets."""
    title: str
    headers: list
    rows: list
    notes: list = field(default_factory=list)
    targets: list = field(default_factory=list)

    def markdown(self) -> str:
        parts = [f"### {self.title}", "", markdown_table(self.headers, self.rows)]
        if self.notes:
            parts += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(parts)


def markdown_table(headers, rows) -> str:
    """A GitHub markdown table; columns padded so that it also reads well in a terminal."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


def targets_markdown(targets) -> str:
    return markdown_table(["target", "measured", "goal", "met"], [t.row() for t in targets])


def print_report(report: Report) -> Report:
    """What `python -m benchmarks.bench_<name>` prints: its table, notes and targets."""
    print(report.markdown())
    print()
    print(targets_markdown(report.targets))
    return report
