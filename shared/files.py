"""Writing files safely: never half a file under the real name, never two writers in one folder."""
import contextlib
import os
import socket
import tempfile
from pathlib import Path

import psutil


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` to write to; rename it to `path` when the block ends.

    The rename is atomic (same folder, os.replace), so readers see the old file or the complete
    new one, never a partial one. If the block raises, the temporary file is deleted and `path`
    is left as it was. The file's data is flushed to disk (fsync) before the rename and the folder
    after it: without that, a power cut soon after can leave an empty file under `path` on file
    systems that write data later than names (ext4's delayed allocation, for one).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        yield Path(tmp)
        _sync_file(tmp)
        os.replace(tmp, path)
        _sync_folder(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sync_file(path):
    # POSIX syncs through a read-only handle (the file may be read-only); Windows needs write access
    with open(path, "rb" if os.name == "posix" else "r+b") as f:
        os.fsync(f.fileno())


def _sync_folder(folder):
    if os.name != "posix":  # Windows cannot open a folder; NTFS journals the rename itself
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some network and FUSE file systems refuse it; the rename is done regardless
        pass


class FolderInUse(RuntimeError):
    """Another live process holds the folder's lock."""


@contextlib.contextmanager
def exclusive_folder(folder, lock_name=".lock"):
    """Hold `folder`/.lock for the block, so two runs never write into one folder at once.

    The lock file holds the owner's process id and host. A second process refuses with
    FolderInUse naming the holder; a lock whose process has died (killed, crashed) is taken over.
    The file is created with O_EXCL, so two processes that start together cannot both win.
    A folder this call created is removed again if it is still empty at the end.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / lock_name
    me = f"{os.getpid()} {socket.gethostname()}"
    for _ in range(2):  # the second try follows the removal of a dead owner's lock
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _live_owner(lock)
            if owner:
                raise FolderInUse(f"{folder} is in use by process {owner}; wait for it to "
                                  f"finish, stop it, or use another folder") from None
            lock.unlink(missing_ok=True)  # its process is gone: take the folder over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    else:
        raise FolderInUse(f"could not take {lock}: another process keeps creating it")
    try:
        yield folder
    finally:
        with contextlib.suppress(OSError):
            if lock.read_text() == me:
                lock.unlink()
            if created:  # a run that failed before writing anything leaves no empty folder
                folder.rmdir()


def _live_owner(lock):
    """'PID (command) on HOST' of the lock's process if it still runs, else None."""
    try:
        pid_text, _, host = lock.read_text().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None  # unreadable or half-written: treat as stale
    if host and host != socket.gethostname():
        return f"{pid} on {host}"  # cannot check another machine: assume it is alive
    if not psutil.pid_exists(pid) or pid == os.getpid():
        return None
    try:
        name = " ".join(psutil.Process(pid).cmdline()[:4]) or psutil.Process(pid).name()
    except psutil.Error:
        name = "?"
    return f"{pid} ({name})"
