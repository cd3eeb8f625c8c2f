"""Downloads that cannot land half-right: each test causes the fault for real,
with a server on 127.0.0.1 that misbehaves, or with processes that race."""
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_http import FakeServer, leftovers, local_only_env  # noqa: F401 (an autouse fixture)
from shared import download
from shared.download import VERDICT_URL, DownloadError, download_file, get_the_verdict

REPO = Path(__file__).resolve().parents[1]
REAL_MIRROR = REPO.parent / "shared" / "mirror"
BODY = bytes(range(256)) * 40  # 10,240 bytes, every byte value, so any off-by-one shows
NEW_BODY = bytes(reversed(BODY))  # the same file after a change on the server
PATH = "/files/a.bin"


@pytest.fixture
def server():
    with FakeServer() as s:
        s.files[PATH] = BODY
        yield s


def cut_download(server, dest: Path) -> None:
    """Leave the .part of a download cut half-way, as a dropped connection does."""
    server.cut_next[PATH] += 1
    with pytest.raises(DownloadError):
        download_file(server.url(PATH), dest, progress=False, retries=0)
    assert Path(str(dest) + ".part").stat().st_size == len(BODY) // 2


# --- a body of unknown length ------------------------------------------------------------------

def real_verdict() -> bytes:
    path = REAL_MIRROR / "raw.githubusercontent.com" / VERDICT_URL.split("githubusercontent.com/")[1]
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path.read_bytes()


def test_the_verdict_cut_short_without_a_length_is_refused_by_its_pins(server, tmp_path, monkeypatch):
    """No Content-Length, the connection closes half-way: nothing says the body was cut, so the
    pinned size and digest of The Verdict must (the old code cached the half for good)."""
    good = real_verdict()
    mirrored = "/m/raw.githubusercontent.com/" + VERDICT_URL.split("githubusercontent.com/")[1]
    server.files[mirrored] = good
    server.no_length.add(mirrored)
    server.cut_next[mirrored] = 10  # every answer of this mirror is cut
    monkeypatch.setenv("LLM_MIRROR", os.pathsep.join([server.url("/m/"), str(REAL_MIRROR)]))
    path = get_the_verdict(tmp_path)
    assert server.counts[mirrored] >= 1  # the cut copy was offered first
    assert path.read_bytes() == good
    assert leftovers(tmp_path) == ["the-verdict.txt"]


def test_a_damaged_cached_verdict_is_fetched_again(tmp_path, monkeypatch):
    good = real_verdict()
    monkeypatch.setenv("LLM_MIRROR", str(REAL_MIRROR))
    (tmp_path / "the-verdict.txt").write_bytes(good[:1000])  # cut short by an older version
    assert get_the_verdict(tmp_path).read_bytes() == good


def test_a_resumed_answer_without_a_length_is_checked_against_its_content_range(server, tmp_path):
    """A 206 with no Content-Length still says where the file ends (Content-Range): cut, it is
    resumed again, not taken as the end of the file."""
    dest = tmp_path / "a.bin"
    cut_download(server, dest)
    server.no_length.add(PATH)
    server.cut_next[PATH] = 1  # the resumed answer is cut too
    assert download_file(server.url(PATH), dest, progress=False).read_bytes() == BODY
    assert server.counts[PATH] == 3


def test_a_digest_the_server_publishes_is_checked(server, tmp_path):
    """Hugging Face names an LFS file's SHA-256 (X-Linked-Etag) on the redirect to its storage,
    as for TinyStories' text files: a body cut without a word there never lands."""
    published = {"X-Linked-Etag": f'"{hashlib.sha256(BODY).hexdigest()}"',
                 "X-Linked-Size": str(len(BODY))}
    server.redirects["/resolve/a.bin"] = (PATH, published)
    server.no_length.add(PATH)
    server.cut_next[PATH] = 1
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError, match="SHA-256"):
        download_file(server.url("/resolve/a.bin"), dest, progress=False)
    assert leftovers(tmp_path) == []
    assert download_file(server.url("/resolve/a.bin"), dest, progress=False).read_bytes() == BODY
    # a git blob's SHA-1 is no SHA-256: not taken as one
    server.redirects["/resolve/b.bin"] = (PATH, {"X-Linked-Etag": '"' + "ab" * 20 + '"'})
    assert download_file(server.url("/resolve/b.bin"), tmp_path / "b.bin", progress=False)


@pytest.mark.parametrize("how", ["chunked", "reset"])
def test_a_body_of_unknown_length_cut_short_is_not_accepted(server, tmp_path, how):
    """Chunked: the missing final chunk says it was cut. No length: a reset (RST), unlike an
    orderly close, says it was cut."""
    getattr(server, how).add(PATH)
    if how == "reset":
        server.no_length.add(PATH)
    server.cut_next[PATH] = 1
    dest = tmp_path / "a.bin"
    assert download_file(server.url(PATH), dest, progress=False).read_bytes() == BODY
    assert server.counts[PATH] == 2


def test_a_server_that_compresses_anyway_gives_the_file_itself(server, tmp_path):
    """Asked for identity, it sends gzip: the file's own bytes land, checked against its pins
    (Content-Length counts compressed bytes, so only they can judge), and a prefix is cut from
    the decompressed bytes."""
    server.gzip.add(PATH)
    server.ignore_range.add(PATH)  # a compressed 206 would be of no use
    dest = tmp_path / "a.bin"
    got = download_file(server.url(PATH), dest, progress=False, size=len(BODY),
                        sha256=hashlib.sha256(BODY).hexdigest())
    assert got.read_bytes() == BODY
    prefix = download.download_prefix(server.url(PATH), tmp_path / "p.bin", 1000, progress=False)
    assert prefix.path.read_bytes() == BODY[:1000] and prefix.cut


def test_a_body_that_stalls_mid_way_is_retried(server, tmp_path):
    """No byte for longer than `timeout` after half the body: a read timeout, tried again."""
    server.stall_first.add(PATH)
    dest = tmp_path / "a.bin"
    assert download_file(server.url(PATH), dest, progress=False, timeout=0.5).read_bytes() == BODY
    assert server.ranges[PATH] == [None, f"bytes={len(BODY) // 2}-"]


def test_a_redirect_loop_is_a_failed_source_not_a_traceback(server, tmp_path):
    server.redirects["/loop/a"] = ("/loop/b", {})
    server.redirects["/loop/b"] = ("/loop/a", {})
    with pytest.raises(DownloadError, match="TooManyRedirects"):
        download_file(server.url("/loop/a"), tmp_path / "a.bin", progress=False)
    assert leftovers(tmp_path) == []


# --- HTML pages that do not start with <html ---------------------------------------------------

@pytest.mark.parametrize("page", [
    b"\xef\xbb\xbf<!DOCTYPE html><html><body>Please sign in</body></html>",
    b"<!-- served by a proxy -->\n<html><body>Access denied</body></html>",
    b"\r\n\t <!--[if IE]><p>old browser</p><![endif]-->\n<!-- two --><!DOCTYPE html>\n<html>",
    b"\xef\xbb\xbf\n  <!-- x -->  <HTML lang=en><head><title>404</title></head></HTML>",
])
def test_an_html_page_behind_a_byte_order_mark_or_a_comment_never_lands(server, tmp_path, page):
    server.files[PATH] = page
    with pytest.raises(DownloadError, match="HTML page"):
        download_file(server.url(PATH), tmp_path / "a.bin", progress=False)
    assert leftovers(tmp_path) == []


def test_a_text_file_that_starts_with_a_comment_is_not_html(server, tmp_path):
    server.files[PATH] = b"<!-- notes -->\nOnce upon a time<|endoftext|>"
    assert download_file(server.url(PATH), tmp_path / "a.txt", progress=False).read_bytes() == \
        server.files[PATH]


# --- resume only with a validator --------------------------------------------------------------

@pytest.mark.parametrize("validator", [None, "weak"])
def test_without_a_validator_a_cut_download_starts_over(server, tmp_path, validator):
    """Range support but no ETag or Last-Modified (or only a weak ETag, which may stay the same
    when the bytes change): the file may have changed in between, and nothing could tell, so
    the bytes already there are not trusted (the old code spliced)."""
    server.validator[PATH] = validator
    dest = tmp_path / "a.bin"
    cut_download(server, dest)
    server.files[PATH] = NEW_BODY
    assert download_file(server.url(PATH), dest, progress=False).read_bytes() == NEW_BODY
    assert server.ranges[PATH][1] is None  # started from byte 0


def test_a_last_modified_date_is_a_validator(server, tmp_path):
    server.validator[PATH] = "last-modified"
    dest = tmp_path / "a.bin"
    cut_download(server, dest)
    assert download_file(server.url(PATH), dest, progress=False).read_bytes() == BODY
    assert server.ranges[PATH][1] == f"bytes={len(BODY) // 2}-"  # resumed
    dest.unlink()
    cut_download(server, dest)
    server.files[PATH] = NEW_BODY  # a new date: the whole new file
    assert download_file(server.url(PATH), dest, progress=False).read_bytes() == NEW_BODY


def test_a_server_that_ignores_if_range_is_caught_by_its_validator(server, tmp_path):
    """The server sends the new version's tail as a 206: its ETag differs from the first one's."""
    server.ignore_if_range.add(PATH)
    dest = tmp_path / "a.bin"
    cut_download(server, dest)
    server.files[PATH] = NEW_BODY
    assert download_file(server.url(PATH), dest, progress=False).read_bytes() == NEW_BODY


# --- arguments checked at the edge -------------------------------------------------------------

@pytest.mark.parametrize("bad", [{"retries": -1}, {"retries": 1.5}, {"retries": True},
                                 {"timeout": 0}, {"timeout": -1}, {"timeout": float("nan")},
                                 {"timeout": "30"}, {"deadline": 0}, {"deadline": float("inf")},
                                 {"deadline": "soon"}, {"size": -1}, {"sha256": "abc"}])
def test_invalid_arguments_are_refused_before_a_stale_part_is_published(server, tmp_path, bad):
    dest = tmp_path / "a.bin"
    cut_download(server, dest)
    with pytest.raises(ValueError, match=next(iter(bad))):
        download_file(server.url(PATH), dest, progress=False, **bad)
    assert not dest.exists()
    assert server.counts[PATH] == 1


# --- an overall deadline -----------------------------------------------------------------------

def test_a_server_that_trickles_is_given_up_at_the_deadline(server, tmp_path):
    """One byte every 50 ms: each read arrives well within `timeout`, the whole never would."""
    server.pace[PATH] = (1, 0.05, 5.0)  # for 5 s at most, then the rest (the old code waited)
    dest = tmp_path / "a.bin"
    start = time.monotonic()
    with pytest.raises(DownloadError, match="deadline"):
        download_file(server.url(PATH), dest, progress=False, deadline=1.0)
    assert time.monotonic() - start < 3.5
    assert not dest.exists()


def test_the_default_deadline_scales_with_the_size(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "DEADLINE_BASE_S", 1.0, raising=False)
    server.pace[PATH] = (1, 0.05, 5.0)
    with pytest.raises(DownloadError, match="deadline"):
        download_file(server.url(PATH), tmp_path / "a.bin", progress=False)
    server.pace.clear()
    assert download_file(server.url(PATH), tmp_path / "a.bin", progress=False).read_bytes() == BODY


# --- two processes, one destination ------------------------------------------------------------

RACER = """
import sys
from shared import download
if sys.argv[3] == "tokenizer":
    from shared.tokenizer import get_tokenizer
print("ready", flush=True)
sys.stdin.readline()
if sys.argv[3] == "file":
    download.download_file(sys.argv[1], sys.argv[2], progress=False)
elif sys.argv[3] == "prefix":
    download.download_prefix(sys.argv[1], sys.argv[2], 5000, progress=False)
else:
    assert get_tokenizer().encode("Hello, world") == [15496, 11, 995]
"""


def race(n: int, *args: str, env: dict) -> None:
    """Start n processes running RACER, release them together, and check that all succeed."""
    procs = [subprocess.Popen([sys.executable, "-c", RACER, *args], cwd=REPO, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    try:
        for p in procs:
            assert p.stdout.readline() == "ready\n"
        for p in procs:  # release them together
            p.stdin.write("go\n")
            p.stdin.flush()
        errors = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0] * n, errors


@pytest.mark.parametrize("kind", ["file", "prefix"])
def test_processes_downloading_one_file_at_once_all_succeed(server, tmp_path, kind):
    """Four processes, released together, download one URL into one destination: one downloads,
    the others wait and use its file."""
    server.pace[PATH] = (1024, 0.05, 5.0)  # about half a second: the others arrive meanwhile
    dest = tmp_path / "cache" / "a.bin"
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    env.pop("LLM_MIRROR", None)
    race(4, server.url(PATH), str(dest), kind, env=env)
    assert dest.read_bytes() == (BODY if kind == "file" else BODY[:5000])
    assert server.counts[PATH] == 1  # the others waited for it instead of fetching again
    assert leftovers(dest.parent) == ["a.bin"] + (["a.bin.prefix.json"] if kind == "prefix" else [])


@pytest.mark.slow  # four processes import torch: about 15 s on two busy cores
def test_four_tokenizer_loads_on_an_empty_cache_all_succeed(tmp_path):
    """Four processes build the tokenizer at once on an empty tiktoken cache: all get GPT-2's
    ids, and the cache ends with the two files' copies and no half-written one."""
    cache = tmp_path / "tiktoken"
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache)}
    race(4, "", "", "tokenizer", env=env)
    names = leftovers(cache)
    assert len(names) == 2 and not [n for n in names if n.endswith(".tmp")], names


# --- pinned sizes and digests ------------------------------------------------------------------

def test_the_pins_match_the_real_files():
    """The Verdict and GPT-2's tokenizer files, as the mirror (byte-identical copies) holds them."""
    from shared.tokenizer import ENCODINGS_URL, FILE_SHA256, FILE_SIZE

    files = {VERDICT_URL: (download.VERDICT_SIZE, download.VERDICT_SHA256)}
    files.update({ENCODINGS_URL + n: (FILE_SIZE[n], FILE_SHA256[n]) for n in FILE_SHA256})
    for url, (size, sha256) in files.items():
        path = REAL_MIRROR / url.split("://")[1]
        if not path.is_file():
            pytest.skip(f"{path} not found")
        data = path.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha256), url


def test_a_damaged_gpt2_checkpoint_pointer_never_lands(server, tmp_path, monkeypatch):
    """`checkpoint` is the one GPT-2 file whose bytes are known (see GPT2_PINNED)."""
    from shared import gpt2

    server.files["/gpt-2/models/124M/checkpoint"] = b'model_checkpoint_path: "model.ckpt-9"\n'
    monkeypatch.setattr(gpt2, "GPT2_MODELS_URL", server.url("/gpt-2/models"))
    with pytest.raises(DownloadError, match="expected 77"):
        gpt2.download_gpt2_files("124M", tmp_path, progress=False)
    assert not (tmp_path / "124M" / "checkpoint").exists()
