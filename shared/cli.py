"""Argument types for the command lines: a bad flag becomes one usage line, not a traceback.

argparse calls each type with the flag's text; an ArgumentTypeError becomes
"error: argument --lr: must be a finite number > 0, got 'inf'" and exit status 2.
"""
import argparse
import contextlib
import math
import os
import sys
from pathlib import Path


def _number(text, kind):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def at_least(kind, low, strict=False):
    """An argparse type: a finite `kind` (int or float) >= low, or > low when strict."""
    word, sign = ("an integer" if kind is int else "a finite number"), (">" if strict else ">=")

    def parse(text):
        value = _number(text, kind)
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {word} {sign} {low}, got {text!r}")
        return value
    return parse


positive_int = at_least(int, 1)
non_negative_int = at_least(int, 0)
positive_float = at_least(float, 0, strict=True)
non_negative_float = at_least(float, 0)


def seed(text):
    """A random seed torch takes, with room for the ranks and restarts the trainer adds: 0 .. 2**63 - 1."""
    value = _number(text, int)
    if not 0 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**63 - 1, got {text!r}")
    return value


@contextlib.contextmanager
def stdout_may_close():
    """`command | head`: when the reader of stdout goes away, stop quietly as Unix tools do
    (exit status 141, what a shell shows for a tool ended by SIGPIPE) instead of a traceback.
    Use it around code that writes to stdout but sends nothing over sockets: a BrokenPipeError
    from a socket would end the command quietly too."""
    try:
        yield
    except BrokenPipeError:
        # Python flushes stdout again at exit, which would fail once more: point it at nothing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(141) from None


def probability(text):
    value = _number(text, float)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


def existing_file(text):
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return path


def writable_dir(text):
    """A folder that exists and can be written to, or that can be created."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    parent = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write to {str(parent)!r}")
    return path

