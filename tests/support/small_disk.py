"""A real, small file system for the tests of a full disk: a tmpfs of a given size.

Mounting needs Linux and root (CI runs the tests as root); elsewhere the test is skipped with the
reason. The file system is always unmounted again, even when the test fails.
"""
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(kib: int):
    """Yield the path of a fresh tmpfs of `kib` KiB (whole 4 KiB pages); unmount it at the end."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs mount: Linux and root (as in CI)")
    folder = tempfile.mkdtemp(prefix="small-disk-")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", folder],
                           capture_output=True, text=True)
    if mount.returncode:
        os.rmdir(folder)
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip() or mount.returncode}")
    try:
        yield Path(folder)
    finally:
        if subprocess.run(["umount", folder]).returncode:
            subprocess.run(["umount", "-l", folder], check=True)  # busy: detach it anyway
        os.rmdir(folder)


def kib_on_disk(*paths) -> int:
    """The KiB that copies of these files take on a tmpfs: whole 4 KiB pages each."""
    return sum(-(-Path(p).stat().st_size // 4096) * 4 for p in paths)
