"""shared.download against real HTTP servers on 127.0.0.1 (stdlib http.server, no network)."""
import json
import os
import re
from pathlib import Path

import pytest
import requests

from shared import download
from shared.download import DownloadError, download_file, get_the_verdict, mirror_bases, sources_for
from fake_http import FakeServer, closed_port, local_only_env  # noqa: F401 (an autouse fixture)

REAL_MIRROR = Path(__file__).resolve().parents[2] / "shared" / "mirror"
BODY = bytes(range(256)) * 40  # 10,240 bytes, every byte value, so any off-by-one shows


@pytest.fixture
def server():
    with FakeServer() as s:
        s.files["/files/a.bin"] = BODY
        yield s


@pytest.fixture
def mirror_server():
    with FakeServer() as s:
        yield s


def test_full_download(server, tmp_path):
    dest = tmp_path / "sub" / "dir" / "a.bin"  # parent directories do not exist yet
    got = download_file(server.url("/files/a.bin"), str(dest))  # str accepted, progress bar on
    assert got == dest and isinstance(got, Path)
    assert dest.read_bytes() == BODY
    assert not Path(str(dest) + ".part").exists()
    assert server.ranges["/files/a.bin"] == [None]


def test_skip_when_complete(server, tmp_path):
    dest = tmp_path / "a.bin"
    download_file(server.url("/files/a.bin"), dest, progress=False)
    assert server.counts["/files/a.bin"] == 1
    dest.write_bytes(b"already here")  # whatever is under the final name is used as it is
    assert download_file(server.url("/files/a.bin"), dest, progress=False) == dest
    assert server.counts["/files/a.bin"] == 1  # the second call made no request
    assert dest.read_bytes() == b"already here"


def test_resume_after_dropped_connection(server, tmp_path):
    server.drop_first.add("/files/a.bin")
    dest = tmp_path / "a.bin"
    download_file(server.url("/files/a.bin"), dest, progress=False)
    first, second = server.ranges["/files/a.bin"]
    assert first is None
    n = int(re.fullmatch(r"bytes=(\d+)-", second).group(1))
    assert n == len(BODY) // 2  # asked only for the missing half
    assert dest.read_bytes() == BODY
    assert not Path(str(dest) + ".part").exists()


def test_resume_part_file_from_earlier_run(server, tmp_path):
    dest = tmp_path / "a.bin"
    Path(str(dest) + ".part").write_bytes(BODY[:3000])
    origin = {"url": server.url("/files/a.bin"), "validator": server.validator_header("/files/a.bin")}
    Path(str(dest) + ".part.src").write_text(json.dumps(origin))  # started from this URL, version
    download_file(server.url("/files/a.bin"), dest, progress=False)
    assert server.ranges["/files/a.bin"] == ["bytes=3000-"]
    assert dest.read_bytes() == BODY


def test_server_ignoring_range_starts_over(server, tmp_path):
    server.ignore_range.add("/files/a.bin")
    dest = tmp_path / "a.bin"
    Path(str(dest) + ".part").write_bytes(b"x" * 3000)  # would corrupt the file if appended to
    origin = {"url": server.url("/files/a.bin"), "validator": server.validator_header("/files/a.bin")}
    Path(str(dest) + ".part.src").write_text(json.dumps(origin))
    download_file(server.url("/files/a.bin"), dest, progress=False)
    assert server.ranges["/files/a.bin"] == ["bytes=3000-"]
    assert dest.read_bytes() == BODY


def test_404_raises_without_retry(server, tmp_path):
    url = server.url("/files/missing.bin")
    with pytest.raises(DownloadError) as info:
        download_file(url, tmp_path / "missing.bin", progress=False)
    assert url in str(info.value) and "404" in str(info.value)
    assert server.counts["/files/missing.bin"] == 1  # 4xx: no retry
    assert not (tmp_path / "missing.bin").exists()


def test_5xx_is_retried(server, tmp_path):
    server.fail_first.add("/files/a.bin")
    dest = tmp_path / "a.bin"
    download_file(server.url("/files/a.bin"), dest, progress=False)
    assert server.counts["/files/a.bin"] == 2
    assert dest.read_bytes() == BODY


def test_content_length_mismatch_never_renames(server, tmp_path):
    server.short.add("/files/a.bin")
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError, match="gave up after 3 attempts"):
        download_file(server.url("/files/a.bin"), dest, progress=False, retries=2)
    assert server.counts["/files/a.bin"] == 3  # the first attempt and two retries
    assert not dest.exists()


def test_mirror_dir_used_before_network(server, tmp_path, monkeypatch):
    # the mirror drops the port: http://127.0.0.1:PORT/files/a.bin -> BASE/127.0.0.1/files/a.bin
    mirror = tmp_path / "mirror"
    (mirror / "127.0.0.1" / "files").mkdir(parents=True)
    (mirror / "127.0.0.1" / "files" / "a.bin").write_bytes(b"from the mirror")
    monkeypatch.setenv("LLM_MIRROR", str(mirror))
    dest = tmp_path / "a.bin"
    download_file(server.url("/files/a.bin"), dest, progress=False)
    assert dest.read_bytes() == b"from the mirror"
    assert sum(server.counts.values()) == 0
    assert not Path(str(dest) + ".part").exists()


def test_mirror_dir_without_the_file_falls_back_to_network(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_MIRROR", str(tmp_path / "empty-mirror"))
    dest = tmp_path / "a.bin"
    download_file(server.url("/files/a.bin"), dest, progress=False)
    assert dest.read_bytes() == BODY
    assert server.counts["/files/a.bin"] == 1


def test_http_mirror_tried_before_original(server, mirror_server, tmp_path, monkeypatch):
    mirror_server.files["/m/127.0.0.1/files/a.bin"] = b"from the http mirror"
    bases = [str(tmp_path / "empty"), mirror_server.url("/m/")]
    monkeypatch.setenv("LLM_MIRROR", os.pathsep.join(bases))
    dest = tmp_path / "a.bin"
    download_file(server.url("/files/a.bin"), dest, progress=False)
    assert dest.read_bytes() == b"from the http mirror"
    assert mirror_server.counts["/m/127.0.0.1/files/a.bin"] == 1
    assert sum(server.counts.values()) == 0


def test_mirror_bases_keeps_urls_with_ports(monkeypatch):
    bases = ["/data/mirror", "http://127.0.0.1:8000/m", "https://example.com", "relative/dir"]
    monkeypatch.setenv("LLM_MIRROR", os.pathsep + os.pathsep.join(bases) + os.pathsep)
    assert mirror_bases() == bases
    monkeypatch.setenv("LLM_MIRROR", "")
    assert mirror_bases() == []


def test_sources_for_order(monkeypatch):
    monkeypatch.setenv("LLM_MIRROR", os.pathsep.join(["/data/mirror", "http://127.0.0.1:8000/m/"]))
    assert sources_for("https://example.com:443/a/b.txt") == [
        str(Path("/data/mirror", "example.com", "a", "b.txt")),
        "http://127.0.0.1:8000/m/example.com/a/b.txt",
        "https://example.com:443/a/b.txt",
    ]


def test_error_lists_every_place_tried(mirror_server, tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/files/a.bin"  # the original: connection refused
    bases = [str(tmp_path / "mirror"), mirror_server.base]
    monkeypatch.setenv("LLM_MIRROR", os.pathsep.join(bases))
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError) as info:
        download_file(url, dest, progress=False, retries=1)
    message = str(info.value)
    local, remote, original = sources_for(url)
    assert f"{local}: not in mirror dir" in message
    assert f"{remote}: 404" in message
    assert re.search(re.escape(original) + r": connection refused", message, re.IGNORECASE)
    assert "LLM_MIRROR" in message and "network" in message
    assert not dest.exists()


def test_get_the_verdict_from_real_mirror(tmp_path, monkeypatch):
    if not (REAL_MIRROR / "raw.githubusercontent.com").is_dir():
        pytest.skip(f"{REAL_MIRROR} not found")
    monkeypatch.setenv("LLM_MIRROR", str(REAL_MIRROR))
    monkeypatch.setattr(requests, "get", lambda *a, **k: pytest.fail("used the network"))
    path = get_the_verdict(tmp_path / "data")
    assert path == tmp_path / "data" / "the-verdict.txt"
    text = path.read_text(encoding="utf-8")
    assert len(text) == 20479 and text.startswith("I HAD always thought Jack Gisburn")
    assert get_the_verdict(tmp_path / "data") == path


# --- what arrived is checked before it gets the final name ----------------------------------------

def test_an_html_page_served_with_200_never_lands(server, tmp_path):
    server.files["/files/a.bin"] = b"<!DOCTYPE html>\n<html><body>Please sign in</body></html>"
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError, match="HTML page"):
        download_file(server.url("/files/a.bin"), dest, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("check, message", [({"size": len(BODY) + 1}, f"got {len(BODY)} bytes, expected"),
                                            ({"sha256": "0" * 64}, "SHA-256 does not match")])
def test_wrong_size_or_digest_never_lands(server, tmp_path, check, message):
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError, match=message):
        download_file(server.url("/files/a.bin"), dest, progress=False, **check)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    import hashlib
    good = {"size": len(BODY)} if "size" in check else {"sha256": hashlib.sha256(BODY).hexdigest()}
    assert download_file(server.url("/files/a.bin"), dest, progress=False, **good).read_bytes() == BODY


@pytest.mark.parametrize("src", [None, "http://elsewhere.example/other.bin"])
def test_a_part_file_of_another_download_is_not_resumed(server, tmp_path, src):
    """A leftover .part whose origin is unknown, or another URL's, is discarded, not spliced."""
    dest = tmp_path / "a.bin"
    Path(str(dest) + ".part").write_bytes(b"y" * 3000)
    if src:
        Path(str(dest) + ".part.src").write_text(src)
    download_file(server.url("/files/a.bin"), dest, progress=False)
    assert server.ranges["/files/a.bin"] == [None]  # no Range: it started from byte 0
    assert dest.read_bytes() == BODY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_a_file_changed_on_the_server_is_not_spliced(server, tmp_path):
    """Resuming sends If-Range with the ETag of the first attempt; a changed file comes whole."""
    server.drop_first.add("/files/a.bin")
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError):
        download_file(server.url("/files/a.bin"), dest, progress=False, retries=0)
    assert Path(str(dest) + ".part").stat().st_size == len(BODY) // 2
    new_body = bytes(reversed(BODY))
    server.files["/files/a.bin"] = new_body
    download_file(server.url("/files/a.bin"), dest, progress=False)
    assert dest.read_bytes() == new_body


def test_a_damaged_file_under_the_final_name_is_replaced_when_its_digest_is_known(server, tmp_path):
    import hashlib
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"damaged")
    got = download_file(server.url("/files/a.bin"), dest, progress=False,
                        sha256=hashlib.sha256(BODY).hexdigest())
    assert got.read_bytes() == BODY and server.counts["/files/a.bin"] == 1


def test_a_file_with_the_wrong_digest_is_kept_when_no_source_can_replace_it(tmp_path):
    """Nothing is deleted before its replacement is complete; upper-case digests match too."""
    import hashlib
    dest = tmp_path / "a.bin"
    dest.write_bytes(BODY)
    url = f"http://127.0.0.1:{closed_port()}/files/a.bin"
    assert download_file(url, dest, progress=False, retries=0,
                         sha256=hashlib.sha256(BODY).hexdigest().upper()) == dest
    with pytest.raises(DownloadError):
        download_file(url, dest, progress=False, retries=0, sha256="0" * 64)
    assert dest.read_bytes() == BODY
