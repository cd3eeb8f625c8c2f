"""A real second process that holds a folder's lock (shared.files.exclusive_folder) while a test runs."""
import contextlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time\n"
        "from shared.files import exclusive_folder\n"
        "with exclusive_folder(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n")


def start_holder(folder) -> subprocess.Popen:
    """A process that has taken `folder`'s lock (it says so before this returns) and sleeps."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), "--holder-of-the-lock"],
                              stdout=subprocess.PIPE, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    line = holder.stdout.readline()
    if line != b"held\n":
        holder.kill()
        holder.wait()
        raise RuntimeError(f"the lock holder did not start: {line!r}")
    return holder


@contextlib.contextmanager
def held_by_another_process(folder):
    """Yield the holder process; it is killed (SIGKILL) when the block ends."""
    holder = start_holder(folder)
    try:
        yield holder
    finally:
        holder.kill()
        holder.wait()
