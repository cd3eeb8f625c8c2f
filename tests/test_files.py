"""shared.files.atomic_path: the real name holds the old file or the complete new one, never a part."""
import os
import stat

import pytest

from shared.files import atomic_path


def test_complete_write_replaces_the_file_with_the_usual_permissions(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("old")
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp != path
        tmp.write_text("new")
        assert path.read_text() == "old"  # nothing visible until the block ends
    assert path.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt"]


def test_data_reaches_the_disk_before_the_name_and_the_rename_after(tmp_path, monkeypatch):
    """fsync the file, then rename, then fsync the folder: the order that survives a power cut."""
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        events.append(("fsync folder" if stat.S_ISDIR(info.st_mode) else "fsync file", info.st_size))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.getsize(src)))
        real_replace(src, dst)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with atomic_path(tmp_path / "data.txt") as tmp:
        tmp.write_text("complete")
    assert [name for name, _ in events] == ["fsync file", "replace", "fsync folder"]
    assert events[0][1] == len("complete")  # the synced file is the finished one
    assert (tmp_path / "data.txt").read_text() == "complete"


def test_a_folder_that_refuses_fsync_still_gets_the_file(tmp_path, monkeypatch):
    """Some network and FUSE file systems answer EINVAL to a folder's fsync: the file is in place."""
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument (test)")
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    with atomic_path(tmp_path / "data.txt") as tmp:
        tmp.write_text("complete")
    assert (tmp_path / "data.txt").read_text() == "complete"


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise OSError("disk full")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "new.txt") as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt"]


def test_a_failure_before_the_block_leaves_no_temporary(tmp_path, monkeypatch):
    """Setting the permissions can fail too (some network and Windows-shared folders refuse
    chmod); the empty temporary must not stay behind."""
    def refuse(*args, **kwargs):
        raise PermissionError("chmod not permitted (test)")
    monkeypatch.setattr(os, "chmod", refuse)
    with pytest.raises(PermissionError, match="chmod"):
        with atomic_path(tmp_path / "data.txt") as tmp:
            tmp.write_text("never reached")
    assert list(tmp_path.iterdir()) == []


# --- exclusive_folder: one writer per folder, the kernel's lock -----------------------------------

import multiprocessing  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from lock_holder import held_by_another_process  # noqa: E402
from shared.files import FolderInUse, exclusive_folder  # noqa: E402

RACERS, TRIALS = 8, 20


def _race(folder, barrier, results):
    """One racer: in every trial, start with the others and try to take the folder once."""
    for trial in range(TRIALS):
        barrier.wait(timeout=60)
        try:
            with exclusive_folder(folder):
                barrier.wait(timeout=60)  # hold it until every racer has tried
                results.put((trial, "won"))
        except FolderInUse:
            barrier.wait(timeout=60)
            results.put((trial, "refused"))
        except Exception as err:  # noqa: BLE001 -- reported to the test, which fails on it
            barrier.wait(timeout=60)
            results.put((trial, repr(err)))


@pytest.mark.skipif(sys.platform == "win32", reason="fork start method")
def test_of_many_processes_starting_together_exactly_one_wins(tmp_path):
    """8 processes released by one barrier try to take the same folder, 20 times over."""
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(RACERS), context.Queue()
    folder = tmp_path / "run"
    racers = [context.Process(target=_race, args=(folder, barrier, results))
              for _ in range(RACERS)]
    for racer in racers:
        racer.start()
    outcomes = [results.get(timeout=120) for _ in range(RACERS * TRIALS)]
    for racer in racers:
        racer.join(timeout=30)
    per_trial = {}
    for trial, outcome in outcomes:
        per_trial.setdefault(trial, []).append(outcome)
    assert len(per_trial) == TRIALS
    for trial, seen in per_trial.items():
        assert sorted(seen) == ["refused"] * (RACERS - 1) + ["won"], (trial, seen)
    assert not (folder / ".lock").exists()


def test_a_holder_killed_with_sigkill_frees_the_folder_at_once(tmp_path):
    folder = tmp_path / "run"
    with held_by_another_process(folder) as holder:
        with pytest.raises(FolderInUse, match=rf"in use by process {holder.pid} \(.*--holder-of"):
            with exclusive_folder(folder):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert str(holder.pid) in (folder / ".lock").read_text()  # the dead holder's file stays
        start = time.monotonic()
        with exclusive_folder(folder):  # no waiting, no cleaning up by hand
            assert (folder / ".lock").read_text().split()[0] == str(os.getpid())
        assert time.monotonic() - start < 1
    assert not (folder / ".lock").exists()


def test_a_lock_file_naming_a_live_process_or_another_host_does_not_block(tmp_path):
    """What the file says is only a name: a reused process id or another machine's entry left
    behind never blocks; only the kernel's lock of a live holder does."""
    folder = tmp_path / "run"
    folder.mkdir()
    for stale in (f"{os.getppid()} {socket.gethostname()} python train.py",  # alive, not holding
                  "4242 some-other-host python -m shared.train_tinystories",
                  "", "garbage"):
        (folder / ".lock").write_text(stale)
        with exclusive_folder(folder):
            pass
        assert not (folder / ".lock").exists()


def test_the_same_process_may_take_its_folder_again_inside_the_block(tmp_path):
    """train_tinystories holds its out-dir and calls trainer.train, which locks the same folder."""
    folder = tmp_path / "run"
    with exclusive_folder(folder):
        with exclusive_folder(folder):
            (folder / "last.pt").write_text("x")
        assert (folder / ".lock").exists()  # the inner block did not release the outer lock
    assert not (folder / ".lock").exists()
