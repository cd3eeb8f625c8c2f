"""shared.download.download_prefix: only the first bytes of a file, against real servers on 127.0.0.1."""
import json
import os
import re
from pathlib import Path

import pytest

from fake_http import FakeServer, leftovers, local_only_env  # noqa: F401 (an autouse fixture)
from shared import download
from shared.download import DownloadError, Prefix, download_prefix

BODY = bytes(range(256)) * 40  # 10,240 bytes, every byte value, so any off-by-one shows
PATH = "/files/a.txt"


@pytest.fixture
def server():
    with FakeServer() as s:
        s.files[PATH] = BODY
        yield s


def test_a_server_that_honours_ranges_sends_only_the_prefix(server, tmp_path):
    dest = tmp_path / "a.txt"
    got = download_prefix(server.url(PATH), dest, 1000, progress=False)
    assert got == Prefix(dest, 1000, len(BODY), True)
    assert dest.read_bytes() == BODY[:1000]
    assert server.ranges[PATH] == ["bytes=0-999"]
    assert server.sent[PATH] == 1000
    assert leftovers(tmp_path) == ["a.txt", "a.txt.prefix.json"]
    # the record answers the same request again without the network
    assert download_prefix(server.url(PATH), dest, 1000, progress=False) == got
    assert server.counts[PATH] == 1


def test_a_server_that_ignores_ranges_is_read_only_up_to_the_limit(server, tmp_path):
    big = bytes(range(256)) * (1 << 17)  # 32 MiB: far more than the socket buffers hold
    server.files[PATH] = big
    server.ignore_range.add(PATH)
    dest = tmp_path / "a.txt"
    got = download_prefix(server.url(PATH), dest, 1000, progress=False)
    assert got == Prefix(dest, 1000, len(big), True)
    assert dest.read_bytes() == big[:1000]
    assert server.ranges[PATH] == ["bytes=0-999"]
    # the connection was closed after the prefix, not read to the end
    assert server.sent[PATH] < len(big) // 2
    assert leftovers(tmp_path) == ["a.txt", "a.txt.prefix.json"]


def test_a_server_that_ignores_ranges_without_a_length_says_whether_more_follows(server, tmp_path):
    server.ignore_range.add(PATH)
    server.no_length.add(PATH)
    got = download_prefix(server.url(PATH), tmp_path / "a.txt", 1000, progress=False)
    assert (got.size, got.total, got.cut) == (1000, None, True)
    whole = download_prefix(server.url(PATH), tmp_path / "b.txt", 50_000, progress=False)
    assert (whole.size, whole.total, whole.cut) == (len(BODY), len(BODY), False)
    assert whole.path.read_bytes() == BODY


@pytest.mark.parametrize("ranges", ["honoured", "ignored"])
def test_a_file_shorter_than_the_limit_arrives_whole(server, tmp_path, ranges):
    if ranges == "ignored":
        server.ignore_range.add(PATH)
    dest = tmp_path / "a.txt"
    got = download_prefix(server.url(PATH), dest, 1 << 20, progress=False)
    assert got == Prefix(dest, len(BODY), len(BODY), False)
    assert dest.read_bytes() == BODY
    # a whole file answers any larger limit too; a smaller one is fetched again
    assert download_prefix(server.url(PATH), dest, 2 << 20, progress=False) == got
    assert server.counts[PATH] == 1
    assert download_prefix(server.url(PATH), dest, 100, progress=False).size == 100
    assert dest.read_bytes() == BODY[:100] and server.counts[PATH] == 2


def test_exactly_the_whole_file_is_not_cut(server, tmp_path):
    got = download_prefix(server.url(PATH), tmp_path / "a.txt", len(BODY), progress=False)
    assert (got.size, got.total, got.cut) == (len(BODY), len(BODY), False)


def test_a_directory_mirror_copies_only_the_prefix(server, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "127.0.0.1" / "files").mkdir(parents=True)
    (mirror / "127.0.0.1" / "files" / "a.txt").write_bytes(BODY)
    monkeypatch.setenv("LLM_MIRROR", str(mirror))
    out = tmp_path / "out"
    got = download_prefix(server.url(PATH), out / "a.txt", 1000, progress=False)
    assert got == Prefix(out / "a.txt", 1000, len(BODY), True)
    assert got.path.read_bytes() == BODY[:1000]
    whole = download_prefix(server.url(PATH), out / "b.txt", 1 << 20, progress=False)
    assert whole == Prefix(out / "b.txt", len(BODY), len(BODY), False)
    assert sum(server.counts.values()) == 0
    assert leftovers(out) == ["a.txt", "a.txt.prefix.json", "b.txt", "b.txt.prefix.json"]


def test_an_http_mirror_gets_the_same_range_request(server, tmp_path, monkeypatch):
    with FakeServer() as mirror:
        mirror.files["/m/127.0.0.1" + PATH] = BODY
        monkeypatch.setenv("LLM_MIRROR", mirror.url("/m/"))
        got = download_prefix(server.url(PATH), tmp_path / "a.txt", 1000, progress=False)
        assert mirror.ranges["/m/127.0.0.1" + PATH] == ["bytes=0-999"]
    assert got.path.read_bytes() == BODY[:1000] and got.cut
    assert sum(server.counts.values()) == 0


def test_a_prefix_download_cut_short_is_resumed(server, tmp_path):
    server.drop_first.add(PATH)  # the first answer stops half-way, then the socket closes
    dest = tmp_path / "a.txt"
    with pytest.raises(DownloadError):
        download_prefix(server.url(PATH), dest, 5000, progress=False, retries=0)
    assert not dest.exists()
    assert Path(str(dest) + ".part").read_bytes() == BODY[:2500]
    got = download_prefix(server.url(PATH), dest, 5000, progress=False)
    assert server.ranges[PATH] == ["bytes=0-4999", "bytes=2500-4999"]
    assert got == Prefix(dest, 5000, len(BODY), True)
    assert dest.read_bytes() == BODY[:5000]
    assert leftovers(tmp_path) == ["a.txt", "a.txt.prefix.json"]


def test_a_prefix_of_another_length_or_url_is_fetched_again(server, tmp_path):
    dest = tmp_path / "a.txt"
    download_prefix(server.url(PATH), dest, 1000, progress=False)
    got = download_prefix(server.url(PATH), dest, 3000, progress=False)
    assert got.size == 3000 and dest.read_bytes() == BODY[:3000]
    server.files["/files/b.txt"] = BODY[::-1]
    got = download_prefix(server.url("/files/b.txt"), dest, 3000, progress=False)
    assert dest.read_bytes() == BODY[::-1][:3000]
    assert json.loads(Path(str(dest) + ".prefix.json").read_text())["url"] == server.url("/files/b.txt")
    # a file under the name without its record is not trusted
    Path(str(dest) + ".prefix.json").unlink()
    download_prefix(server.url("/files/b.txt"), dest, 3000, progress=False)
    assert server.counts["/files/b.txt"] == 2


def test_an_html_page_is_not_a_prefix(server, tmp_path):
    server.files[PATH] = b"<!DOCTYPE html>\n<html><body>Please sign in</body></html>" * 100
    with pytest.raises(DownloadError, match="HTML page"):
        download_prefix(server.url(PATH), tmp_path / "a.txt", 1000, progress=False)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("max_bytes", [0, -1, 1.5, True, "1000", None])
def test_max_bytes_must_be_a_whole_number_of_at_least_one(tmp_path, max_bytes):
    with pytest.raises(ValueError, match="max_bytes"):
        download_prefix("http://127.0.0.1:9/a.txt", tmp_path / "a.txt", max_bytes)
    assert leftovers(tmp_path) == []


def test_a_prefix_is_not_taken_for_the_whole_file(server, tmp_path):
    """download_file into a destination that holds only a prefix fetches the whole file."""
    dest = tmp_path / "a.txt"
    download_prefix(server.url(PATH), dest, 1000, progress=False)
    assert download.download_file(server.url(PATH), dest, progress=False).read_bytes() == BODY
    assert leftovers(tmp_path) == ["a.txt"]


def test_an_empty_file_is_an_empty_prefix(server, tmp_path):
    """Range: bytes=0-N of an empty file is unsatisfiable (416): the whole file is no bytes."""
    server.files[PATH] = b""
    got = download_prefix(server.url(PATH), tmp_path / "a.txt", 1000, progress=False)
    assert got == Prefix(tmp_path / "a.txt", 0, 0, False)
    assert got.path.read_bytes() == b""
