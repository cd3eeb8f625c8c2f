"""Writing files safely: never half a file under the real name, never two writers in one folder."""
import contextlib
import os
import socket
import sys
import tempfile
import time
from pathlib import Path


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


# Locks this process holds: {lock file: (process id, depth)}. train_tinystories holds its out-dir
# and then calls trainer.train, which takes the same folder's lock: the same writer, so it nests.
# The process id tells a forked child (which inherits the dict, not the right to write) apart.
_held = {}


@contextlib.contextmanager
def exclusive_folder(folder, lock_name=".lock"):
    """Hold `folder`/.lock for the block, so two runs never write into one folder at once.

    The lock is the kernel's (flock on Linux and macOS, msvcrt.locking on Windows), taken without
    waiting: a second process gets FolderInUse at once, and the operating system releases the lock
    when its holder ends in any way (finished, crashed, SIGKILL), so a lock file left behind, one
    naming another host or a process id that was reused, never blocks anyone. Only after the lock
    is held does the holder write its process id, host and command into the file, which is what
    FolderInUse quotes. The same process may take the same folder again inside the block (nested).
    A folder this call created is removed again if it is still empty at the end.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / lock_name
    key = os.path.realpath(lock)
    pid, depth = _held.get(key, (None, 0))
    if pid == os.getpid():  # this process holds it already: nested, e.g. train() inside a CLI run
        _held[key] = (pid, depth + 1)
        try:
            yield folder
        finally:
            _held[key] = (pid, depth)
        return
    fd = _take(lock, folder)
    _held[key] = (os.getpid(), 1)
    try:
        yield folder
    finally:
        _held.pop(key, None)
        _release(lock, fd)
        if created:  # a run that failed before writing anything leaves no empty folder
            with contextlib.suppress(OSError):
                folder.rmdir()


def _take(lock, folder):
    """An open descriptor of `lock` that holds the kernel's lock on it, or FolderInUse."""
    for _ in range(100):  # more than one turn only when a holder removed the file meanwhile
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock_now(fd)
        except OSError:
            os.close(fd)
            raise FolderInUse(f"{folder} is in use by {_holder(lock)}; wait for it to finish or "
                              "stop it, or use another folder (the operating system frees the "
                              "lock when its holder ends: there is no file to delete)") from None
        # The holder before us deletes the file before it unlocks: a lock on a deleted file
        # is worth nothing, so it must be the file the name points to now.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            _write_holder(fd)
            return fd
        os.close(fd)
    raise FolderInUse(f"could not take {lock}: other processes keep replacing it")


def _release(lock, fd):
    if os.name == "posix":  # delete, then unlock: a waiter that locked the old file sees it is gone
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)
    else:  # Windows cannot delete an open file; once closed, deleting fails while others have it open
        os.close(fd)
        with contextlib.suppress(OSError):
            lock.unlink()


_WINDOWS_LOCK_OFFSET = 1 << 30  # Windows locks bytes: one far past the holder's text, which stays readable


def _lock_now(fd):
    """The kernel's exclusive lock on the open file, or OSError (BlockingIOError) at once."""
    try:
        import fcntl
    except ImportError:  # Windows: a byte-range lock, also released when its process ends
        import msvcrt
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _write_holder(fd):
    """'PID HOST COMMAND': for the message a second process prints, and for a person reading it."""
    command = " ".join(sys.argv) or "python"
    text = f"{os.getpid()} {socket.gethostname()} {command[:200]}\n".encode()
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, text)


def _holder(lock):
    """'process PID (COMMAND) on HOST', as the holder wrote it into the lock file."""
    text = ""
    for _ in range(20):  # the holder writes its name just after it took the lock
        with contextlib.suppress(OSError):
            text = Path(lock).read_text(errors="replace").strip()
        if text:
            break
        time.sleep(0.01)
    pid, _, rest = text.partition(" ")
    host, _, command = rest.partition(" ")
    if not pid.isdigit():
        return f"another process (it has not written its name into {lock} yet)"
    where = "" if host == socket.gethostname() else f" on {host}"
    return f"process {pid} ({command or '?'}){where}"
