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
