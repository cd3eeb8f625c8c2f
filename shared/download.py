"""Robust downloads: resume, retries, an offline mirror, and never a half-written file.

Every download in the repository goes through `download_file`. A file appears under its final
name only once all of its bytes are there, so "the file exists" always means "the file is complete":

    1. bytes stream into `destination + ".part"`;
    2. a dropped connection or a timeout is retried with exponential backoff, and each retry asks
       for the missing bytes only (`Range: bytes=N-`), so a 500 MB file does not restart at 0;
    3. when the byte count matches what the server announced (Content-Length, Content-Range),
       and the bytes pass the checks below, `os.replace` renames the `.part` file to its final
       name in one atomic step.

What arrived is checked before it gets the final name: an HTML page where a data file was asked
for (a login or error page served with 200, also behind a byte-order mark or HTML comments), a
size other than `size=`, or a SHA-256 other than `sha256=` sends the source to the list of
failures instead. With `sha256=`, a file already under the final name is checked too, and
replaced when it does not match.

A body of unknown length (no Content-Length) is accepted only when nothing says it was cut: a
chunked body needs its final empty chunk, a 206 the end its Content-Range names, and a reset
connection is retried. A body that simply ends when the server closes the connection cannot be
told from one cut short by a proxy: for such a server only the caller's `size=` / `sha256=` can
decide, which is why every file this repository knows in advance is pinned (The Verdict here,
the tokenizer files in shared/tokenizer.py), and why a SHA-256 the server publishes (Hugging
Face's X-Linked-Etag) is checked when the caller gives none.

A `.part` is resumed only if it was started from the same URL and the server named the version
it sent (a strong ETag, or Last-Modified): `.part.src` records both, the version goes back as
If-Range, and a 206 of another version is refused, so a file changed on the server starts over
instead of being spliced from two versions. Without a validator a cut download starts over.

Each source has an overall deadline (`deadline=`), all attempts together: a server that sends a
byte now and then never trips the per-read `timeout`. The default, "auto", allows
DEADLINE_BASE_S plus one second per DEADLINE_MIN_RATE bytes of the file. Two processes that
download into one destination at once take turns (an flock on `destination + ".lock"`, Linux and
macOS; on Windows they are not serialised): the second waits, then finds the file complete.

`download_prefix` fetches only the first bytes of a file (an HTTP range request) through the
same steps, and says whether the file goes on after them.

Offline machines set LLM_MIRROR to one or more bases (local directories or http(s) URLs,
separated by os.pathsep). A URL `https://HOST/PATH` is looked up as `BASE/HOST/PATH` in every
base, in order, before the original URL. HOST is the host name without the port, so
`http://127.0.0.1:8000/a.txt` is looked up as `BASE/127.0.0.1/a.txt` (':' is not allowed in
Windows file names).
"""
import contextlib
import hashlib
import json
import math
import numbers
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests
import urllib3
from tqdm.auto import tqdm

from shared.checks import is_whole

try:
    import fcntl
except ImportError:  # Windows: downloads into one destination are not serialised
    fcntl = None

# Files the repository ships (The Verdict, GPT-2's tokenizer files), laid out like a mirror: looked
# up after LLM_MIRROR and before the network, so every notebook runs on a machine without one.
BUNDLED_MIRROR = Path(__file__).resolve().parents[1] / "bundled" / "mirror"

VERDICT_URL = ("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/"
               "ch02/01_main-chapter-code/the-verdict.txt")
VERDICT_SIZE = 20479
VERDICT_SHA256 = "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"

BACKOFF_BASE_S = 0.5   # wait 0.5 s, 1 s, 2 s, ... between retries; tests set this to 0
CHUNK_BYTES = 1 << 16  # 64 KiB: large enough to be fast, small enough for a smooth progress bar
# deadline="auto": 2 minutes, plus 1 s per 10 kB of the file (a 500 MB file: 14 hours). Slower
# than that on average is a stalled or trickling server, not a slow network.
DEADLINE_BASE_S = 120.0
DEADLINE_MIN_RATE = 10_000  # bytes per second

# Failures worth another try: the network hiccupped, the server is not to blame for the request.
RETRYABLE = (
    requests.ConnectionError,                # refused, reset, DNS, read timeout mid-body
    requests.Timeout,                        # no answer within `timeout` seconds
    requests.exceptions.ChunkedEncodingError,  # connection dropped mid-body
    urllib3.exceptions.ProtocolError,        # the same, read directly from urllib3 (read1)
    urllib3.exceptions.ReadTimeoutError,     # no byte within `timeout` seconds, mid-body
    urllib3.exceptions.SSLError,             # a TLS record broken mid-body
    urllib3.exceptions.DecodeError,          # a compressed body that does not decompress
)
# Failures of the source itself: another try would fail the same way.
SOURCE_FAILURES = (requests.TooManyRedirects, requests.exceptions.InvalidSchema,
                   requests.exceptions.InvalidURL)


class DownloadError(RuntimeError):
    """Every source of a file failed; the message lists each one and why."""


class _RetryableError(Exception):
    """A server error (5xx) or a short body: try the same source again."""


class _SourceError(Exception):
    """This source cannot serve the file (e.g. 404): move on to the next one, do not retry."""


def mirror_bases() -> list[str]:
    """The bases in LLM_MIRROR, in order.

    On Linux and macOS os.pathsep is ':', which URLs also contain (`http://host:8000/m`), so a
    plain split would cut them apart; a regex takes `http(s)://host(:port)/path` as one item.
    """
    value = os.environ.get("LLM_MIRROR", "")
    sep = re.escape(os.pathsep)
    item = re.compile(rf"https?://[^/{sep}]+(?::\d+)?[^{sep}]*|[^{sep}]+")
    return [m.group().strip() for m in item.finditer(value) if m.group().strip()]


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def sources_for(url: str) -> list[str]:
    """Where to look for `url`, in order: `BASE/HOST/PATH` for each mirror base, the repository's
    bundled copy when it has one, then `url`."""
    parts = urlsplit(url)
    host, path = parts.hostname or "", parts.path  # host without the port; see the module doc
    sources = []
    for base in mirror_bases():
        if _is_url(base):
            sources.append(base.rstrip("/") + "/" + host + path)
        else:
            sources.append(str(_local_path(os.path.expanduser(base), host, path)))
    bundled = _local_path(BUNDLED_MIRROR, host, path)
    if bundled.is_file():
        sources.append(str(bundled))
    return sources + [url]


def _local_path(base, host: str, path: str) -> Path:
    """BASE/HOST/PATH in a local directory; %-escapes undone, so `a%20b.txt` is found as `a b.txt`."""
    return Path(base, host, *unquote(path).strip("/").split("/"))


def download_file(url, destination, *, progress=True, retries=3, timeout=30, size=None,
                  sha256=None, deadline="auto") -> Path:
    """Download `url` to `destination` (str or Path) and return it as a Path.

    An existing `destination` is returned at once, without touching the network: only complete
    files ever get the final name (with `sha256`, it is checked first and replaced if it does not
    match). Otherwise each source from `sources_for(url)` is tried in turn; an http source gets
    `retries` more attempts after the first, each resuming the `.part` file, and `deadline`
    seconds for all of them ("auto": scaled to the file's size; None: no deadline); `timeout`
    bounds each connect and each read. What arrives must not be an HTML page and must have
    `size` bytes and the `sha256` digest when those are given.
    Raises DownloadError, listing every source tried, when none of them works, and ValueError
    for arguments that mean nothing (retries=-1, timeout=0, a digest that is not 64 hex digits).
    """
    _check_args(retries, timeout, deadline, size, sha256)
    destination = Path(destination)
    sha256 = sha256.lower() if sha256 else None
    if _complete(destination, sha256):
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    with _one_download_at_a_time(destination, progress):
        if _complete(destination, sha256):  # another process fetched it while this one waited
            return destination
        # A copy with the wrong digest stays until a good one replaces it (os.replace below).
        _fetch_from_sources(url, destination, None, _Options(progress, retries, timeout, deadline),
                            size, sha256)
        part = _part_file(destination)
        os.replace(part, destination)  # atomic: readers see no file or the whole file
        _src_file(part).unlink(missing_ok=True)
        _prefix_record_file(destination).unlink(missing_ok=True)
    return destination


def _complete(destination: Path, sha256: str | None) -> bool:
    """Is the whole file under `destination`? Not when download_prefix left only its start."""
    return (destination.is_file() and not _prefix_record_file(destination).exists()
            and (sha256 is None or _sha256(destination) == sha256))


@dataclass(frozen=True)
class Prefix:
    """What `download_prefix` left on disk: the first `size` bytes of the remote file."""
    path: Path          # the file holding them
    size: int           # bytes in `path`: max_bytes, or fewer when the whole file is shorter
    total: int | None   # the remote file's size, when the source said it (None: not said)
    cut: bool           # True when the file goes on after these bytes (or may: total unknown)


def download_prefix(url, destination, max_bytes, *, progress=True, retries=3, timeout=30,
                    deadline="auto") -> Prefix:
    """Download only the first `max_bytes` bytes of `url` to `destination`; return a Prefix.

    The same machinery as `download_file`: LLM_MIRROR first (a mirror directory copies only the
    first `max_bytes` bytes, an http mirror gets the same range request), a resumable `.part`
    with its origin recorded, retries, a deadline, an HTML check, and a rename once all bytes
    are there. The request says `Range: bytes=0-{max_bytes - 1}`; a 206 must start where asked,
    and a server that ignores Range (200, the whole file) is read only up to `max_bytes`, then
    the connection is closed. A file shorter than `max_bytes` arrives whole (`cut` is False,
    `size` says how long). The bytes are cut wherever `max_bytes` falls, often inside a line or
    a character: finding a boundary is the caller's job (`Prefix.cut` says whether to look).

    `destination + ".prefix.json"` records what the file holds (URL, max_bytes, size, total);
    a later call with the same URL and max_bytes (or a larger one, when the file was whole)
    returns it without touching the network; anything else under `destination` is replaced.
    Use a destination of its own for a prefix, not the name of a complete download.
    """
    from shared.files import atomic_path

    if not is_whole(max_bytes):
        raise ValueError(f"max_bytes must be a whole number >= 1, got {max_bytes!r}")
    _check_args(retries, timeout, deadline)
    destination = Path(destination)
    known = _read_prefix_record(destination, url, max_bytes)
    if known:
        return known
    destination.parent.mkdir(parents=True, exist_ok=True)
    with _one_download_at_a_time(destination, progress):
        known = _read_prefix_record(destination, url, max_bytes)
        if known:  # another process fetched it while this one waited
            return known
        total, cut = _fetch_from_sources(url, destination, max_bytes,
                                         _Options(progress, retries, timeout, deadline))
        part, record = _part_file(destination), _prefix_record_file(destination)
        record.unlink(missing_ok=True)  # no record while the file under the final name changes
        os.replace(part, destination)
        _src_file(part).unlink(missing_ok=True)
        got = Prefix(destination, destination.stat().st_size, total, cut)
        with atomic_path(record) as tmp:
            tmp.write_text(json.dumps({"url": url, "max_bytes": max_bytes, "size": got.size,
                                       "total": total, "cut": cut}))
    return got


@dataclass(frozen=True)
class _Options:
    progress: bool
    retries: int
    timeout: float
    deadline: float | str | None


def _check_args(retries, timeout, deadline, size=None, sha256=None) -> None:
    """Refuse values that mean nothing, before anything is fetched or renamed."""
    def number(x):
        return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)

    if not is_whole(retries, 0):
        raise ValueError(f"retries must be a whole number >= 0, got {retries!r}")
    if not number(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if deadline not in (None, "auto") and not (number(deadline) and deadline > 0):
        raise ValueError(f"deadline must be a number of seconds > 0, 'auto' or None, "
                         f"got {deadline!r}")
    if size is not None and not is_whole(size, 0):
        raise ValueError(f"size must be a whole number of bytes >= 0, got {size!r}")
    if sha256 is not None and not (isinstance(sha256, str)
                                   and re.fullmatch(r"[0-9a-fA-F]{64}", sha256)):
        raise ValueError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")


@contextlib.contextmanager
def _one_download_at_a_time(destination: Path, progress: bool):
    """Hold an exclusive lock on `destination + ".lock"` for the block (Linux, macOS).

    The kernel drops an flock when its holder dies, so a killed download never blocks the next.
    The lock file is removed on the way out; a process that was waiting on the removed file
    sees that it is no longer the one under the name and locks the new one instead.
    """
    if fcntl is None:
        yield
        return
    lock = Path(str(destination) + ".lock")
    for _ in range(1000):  # each turn means another process finished meanwhile
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if progress:
                    print(f"waiting for another process downloading {destination}",
                          file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, lock):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    else:
        raise RuntimeError(f"could not lock {lock}: it keeps being replaced")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # before the unlock: a waiter then sees a stale file
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st, fst = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _prefix_record_file(destination: Path) -> Path:
    return Path(str(destination) + ".prefix.json")


def _read_prefix_record(destination: Path, url: str, max_bytes: int) -> Prefix | None:
    """The Prefix under `destination` if its record says it answers this request, else None."""
    try:
        rec = json.loads(_prefix_record_file(destination).read_text())
        size = destination.stat().st_size
        if rec["url"] != url or rec["size"] != size:
            return None
        if rec["max_bytes"] == max_bytes or (not rec["cut"] and max_bytes >= size):
            return Prefix(destination, size, rec["total"], rec["cut"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no record, or a damaged one: fetch again
    return None


def _part_file(destination: Path) -> Path:
    return Path(str(destination) + ".part")


def _fetch_from_sources(url, destination, limit, opts: _Options, size=None,
                        sha256=None) -> tuple[int | None, bool]:
    """Leave the file (or its first `limit` bytes) in the `.part` beside `destination`, checked.

    Returns (total, cut): the remote file's size when known, and whether bytes follow the ones
    kept. Raises DownloadError, listing every source tried, when none of them works.
    """
    part = _part_file(destination)
    failures = []  # (source, reason) for the error message
    for source in sources_for(url):
        try:
            if _is_url(source):
                total, cut, published = _fetch_with_retries(source, part, opts, limit)
            else:
                total, cut, published = _copy_from_mirror_dir(source, part, limit)
            # the digest a server publishes vouches for the whole file, not for a prefix
            _verify(part, url, size, sha256 or (published if limit is None else None))
        except _SourceError as e:
            failures.append((source, str(e)))
            continue
        return total, cut
    raise DownloadError(_failure_message(url, destination, failures))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(part: Path, url: str, size, sha256) -> None:
    """Refuse what is not the file: an HTML page, the wrong size, the wrong digest."""
    problem = None
    with open(part, "rb") as f:
        head = f.read(8192)
    if _looks_like_html(head) and not url.lower().endswith((".html", ".htm")):
        problem = "got an HTML page, not the file (a login, error or redirect page?)"
    elif size is not None and part.stat().st_size != size:
        problem = f"got {part.stat().st_size} bytes, expected {size}"
    elif sha256 is not None and _sha256(part) != sha256:
        problem = "SHA-256 does not match the expected digest: the file is damaged or another one"
    if problem:
        part.unlink()
        _src_file(part).unlink(missing_ok=True)
        raise _SourceError(problem)


def _looks_like_html(head: bytes) -> bool:
    """Does the file start like an HTML page, once a byte-order mark, blank space and HTML
    comments (a proxy's banner, `<!--[if IE]>`) are skipped?"""
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    while text.startswith(b"<!--"):
        end = text.find(b"-->")
        if end < 0:
            return False  # a comment longer than the head: no telling; let the digest decide
        text = text[end + 3:].lstrip()
    return text.startswith((b"<!doctype html", b"<html"))


def _src_file(part: Path) -> Path:
    """Beside a .part: JSON with the URL it was started from and the version the server named."""
    return Path(str(part) + ".src")


def _read_origin(part: Path) -> dict:
    """{"url": ..., "validator": [header, value] or None} of a .part; {} when unknown."""
    try:
        origin = json.loads(_src_file(part).read_text())
        url, validator = origin["url"], origin["validator"]
    except (OSError, ValueError, TypeError, KeyError):
        return {}  # none, an older version's format, or damaged: start over
    well_formed = validator is None or (isinstance(validator, list) and len(validator) == 2
                                        and all(isinstance(v, str) for v in validator))
    return {"url": url, "validator": validator} if well_formed else {}


def _validator(r: requests.Response) -> list[str] | None:
    """What names the version the server sent: a strong ETag, else Last-Modified, else None.

    A weak ETag (W/"...") may stay the same when the bytes change, so it cannot vouch that two
    pieces belong to one version (RFC 9110 forbids it in If-Range).
    """
    etag = r.headers.get("ETag", "").strip()
    if etag and not etag.startswith("W/"):
        return ["ETag", etag]
    modified = r.headers.get("Last-Modified", "").strip()
    return ["Last-Modified", modified] if modified else None


def _copy_from_mirror_dir(source: str, part: Path, limit: int | None) -> tuple[int, bool, None]:
    """Copy a file (or its first `limit` bytes) from a mirror directory to `part`."""
    if not os.path.isfile(source):
        raise _SourceError("not in mirror dir")
    _src_file(part).unlink(missing_ok=True)  # `part` no longer holds an http download's bytes
    try:
        total = os.path.getsize(source)
        if limit is None:
            shutil.copyfile(source, part)
        else:
            with open(source, "rb") as src, open(part, "wb") as dst:
                for _ in range(0, limit, CHUNK_BYTES):
                    dst.write(src.read(min(CHUNK_BYTES, limit - dst.tell())))
    except OSError as e:
        raise _SourceError(f"copy failed: {e}") from e
    return total, limit is not None and total > limit, None


def _fetch_with_retries(url: str, part: Path, opts: _Options,
                        limit: int | None) -> tuple[int | None, bool, str | None]:
    """Stream `url` into `part`, retrying network failures with exponential backoff."""
    clock = _Deadline(opts.deadline)
    for attempt in range(opts.retries + 1):
        try:
            return _fetch_once(url, part, opts, limit, clock)
        except SOURCE_FAILURES as e:  # e.g. a redirect loop, a redirect to ftp://
            raise _SourceError(f"{type(e).__name__}: {e}"[:200]) from e
        except (_RetryableError, *RETRYABLE) as e:
            reason = _reason(e)
            if attempt == opts.retries:
                tries = f"{attempt + 1} attempts" if attempt else "1 attempt"
                raise _SourceError(f"{reason} (gave up after {tries})") from e
            time.sleep(BACKOFF_BASE_S * 2 ** attempt)
            clock.check()


class _Deadline:
    """The time one source has, all attempts together (see the module's docstring)."""

    def __init__(self, seconds):
        self.seconds, self.start, self.expected = seconds, time.monotonic(), 0

    def check(self, received: int = 0) -> None:
        if self.seconds is None:
            return
        allowed = self.seconds
        if allowed == "auto":
            allowed = DEADLINE_BASE_S + max(self.expected, received) / DEADLINE_MIN_RATE
        if time.monotonic() - self.start > allowed:
            raise _SourceError(f"not complete after {allowed:.0f} s, the deadline for this file "
                               f"(deadline={self.seconds!r}); the server is too slow or stalled")


def _fetch_once(url: str, part: Path, opts: _Options, limit: int | None,
                clock: _Deadline) -> tuple[int | None, bool, str | None]:
    """One HTTP request: resume `part` if the server allows it, else start it over.

    With `limit`, only the first `limit` bytes are asked for and kept. Returns (total, cut) as
    `_fetch_from_sources` does, and the SHA-256 the server publishes for the whole file.
    """
    origin = _read_origin(part)
    if part.exists() and (origin.get("url") != url or not origin.get("validator")
                          or (limit and part.stat().st_size >= limit)):
        part.unlink()  # another file's bytes, of unknown version or origin, or past the limit
    have = part.stat().st_size if part.exists() else 0
    # identity: byte counts must match Content-Length, and Range on gzip'd bodies means nothing
    headers = {"Accept-Encoding": "identity"}
    if have or limit:
        headers["Range"] = f"bytes={have}-{limit - 1 if limit else ''}"
    if have:  # a file changed on the server comes whole (200), not as a 206 of the new version
        headers["If-Range"] = origin["validator"][1]
    with requests.get(url, headers=headers, stream=True, timeout=opts.timeout) as r:
        if r.status_code == 416 and limit and not have:  # bytes=0-N unsatisfiable: an empty file
            part.write_bytes(b"")
            _src_file(part).write_text(json.dumps({"url": url, "validator": None}))
            return 0, False, None
        _check_status(r, part)
        start, promised, total = _answer_span(r, have)
        if start and _validator(r) != origin["validator"]:  # ignored If-Range: another version
            part.unlink()
            raise _RetryableError("the server sent part of another version; starting over")
        if start == 0:  # a fresh start: record where these bytes come from
            validator = None if _compressed(r) else _validator(r)  # None: never resumed
            _src_file(part).write_text(json.dumps({"url": url, "validator": validator}))
        keep = promised  # the bytes of this answer to keep: all of them, or up to the limit
        if limit is not None:
            keep = limit - start if promised is None else min(limit - start, promised)
        # the size `part` must reach; unknown when the server did not say how much it sends
        final = start + keep if promised is not None else None
        clock.expected = final or total or 0  # what this source must deliver, when said
        with open(part, "ab" if start else "wb") as f, \
                tqdm(total=final, initial=start, unit="B", unit_scale=True,
                     desc=part.stem, disable=not opts.progress) as bar:
            _stream(r, f, keep, bar, clock)
        more = None  # for a prefix of unknown length that reached the limit: is there more?
        if limit and promised is None and part.stat().st_size == limit:
            more = bool(r.raw.read1(1))
    return (*_outcome(part.stat().st_size, final, total, limit, more), _published_sha256(r))


def _published_sha256(r: requests.Response) -> str | None:
    """The SHA-256 a server publishes for the file, or None.

    Hugging Face names an LFS file's SHA-256 in X-Linked-Etag, on the redirect from
    huggingface.co to its storage (TinyStories' text files, GPT-2's safetensors): with it, a body
    that ends early without a word is caught. A git blob's 40-digit SHA-1 is not taken.
    """
    for answer in (*r.history, r):
        tag = answer.headers.get("X-Linked-Etag", "").strip().removeprefix("W/").strip('"')
        if re.fullmatch(r"[0-9a-fA-F]{64}", tag):
            return tag.lower()
    return None


def _outcome(size: int, final, total, limit, more) -> tuple[int | None, bool]:
    """(total, cut) once a body has ended; raise if it ended before its announced end."""
    if final is not None and size != final:
        raise _RetryableError(f"short body: got {size} of {final} bytes")
    if total is None and limit and size < limit:
        total = size  # the body ended before the limit: that was the whole file
    if total is not None:
        return total, size < total
    return None, bool(limit) and more is not False  # unknown: a 206 of '*' may go on


def _check_status(r: requests.Response, part: Path) -> None:
    """Raise for an answer that carries no bytes of the file."""
    if r.status_code == 416:  # we asked past the end: the .part is damaged, start over
        part.unlink(missing_ok=True)
        raise _RetryableError("416 Range Not Satisfiable; restarting from byte 0")
    if 400 <= r.status_code < 500:  # the request itself is wrong: another try won't help
        raise _SourceError(f"{r.status_code} {r.reason}")
    if r.status_code >= 500:  # the server is struggling: worth another try
        raise _RetryableError(f"{r.status_code} {r.reason}")
    if _compressed(r) and r.status_code == 206:  # a piece of the compressed bytes: no use
        part.unlink(missing_ok=True)
        raise _SourceError("the server sent a compressed piece of the file (Content-Encoding) "
                           "although asked not to compress")
    # Count the bytes ourselves (_stream): urllib3 would raise on a short body and throw away
    # the last chunk it read, bytes the next attempt would then have to fetch again.
    r.raw.enforce_content_length = False
    r.raw.decode_content = _compressed(r)  # a server that compresses anyway: keep the file's bytes


def _compressed(r: requests.Response) -> bool:
    """Did the server compress the body although asked not to (Accept-Encoding: identity)?

    Then Content-Length counts compressed bytes and byte ranges mean nothing: the body is
    decompressed and taken as one of unknown length, never resumed.
    """
    return r.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")


def _answer_span(r: requests.Response, have: int) -> tuple[int, int | None, int | None]:
    """(first byte, bytes promised, size of the whole file) of an answer; None where not said.

    A 200 sends the whole file from byte 0; a 206 says its span in Content-Range. A 206 that
    starts neither where `part` ends nor at 0 cannot be placed: try again from the start.
    """
    length = r.headers.get("Content-Length")
    length = int(length) if length is not None and length.isdigit() and not _compressed(r) \
        else None
    if r.status_code != 206:
        return 0, length, length
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", r.headers.get("Content-Range", ""))
    if not m or int(m.group(1)) not in (have, 0) or int(m.group(2)) < int(m.group(1)):
        raise _RetryableError(f"206 with an unusable Content-Range "
                              f"{r.headers.get('Content-Range')!r} for a request from byte {have}")
    start, end = int(m.group(1)), int(m.group(2))
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, end - start + 1, total


def _stream(r: requests.Response, f, keep: int | None, bar, clock: _Deadline) -> None:
    """Copy the body into `f`, at most `keep` bytes (all of it when None)."""
    written = 0
    while keep is None or written < keep:
        n = CHUNK_BYTES if keep is None else min(CHUNK_BYTES, keep - written)
        chunk = r.raw.read1(n)  # what has arrived, up to n bytes: never waits for a full chunk
        if not chunk:
            break
        f.write(chunk)
        written += len(chunk)
        bar.update(len(chunk))
        clock.check(f.tell())


def _reason(exc: BaseException) -> str:
    """A short reason for the error message ("Connection refused"), not requests' long repr."""
    if isinstance(exc, _RetryableError):
        return str(exc)
    root = exc
    for _ in range(20):  # the root cause sits at the end of the exception chain
        nxt = root.__cause__ or root.__context__
        if nxt is None:
            break
        root = nxt
    if isinstance(root, TimeoutError) or isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(root, OSError) and root.strerror:  # e.g. "Connection refused"
        return root.strerror
    dropped = (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError)
    if isinstance(exc, dropped):
        return f"connection dropped mid-transfer ({root!r})"[:200]
    return f"{type(exc).__name__}: {exc}"[:200]


def _failure_message(url: str, destination: Path, failures: list[tuple[str, str]]) -> str:
    """Say what was tried, why each failed, and what to do about it."""
    tried = "\n".join(f"  - {source}: {reason}" for source, reason in failures)
    mirror = os.environ.get("LLM_MIRROR")
    now = f"now LLM_MIRROR={mirror!r}" if mirror else "LLM_MIRROR is not set"
    return (f"could not download {url}\n  to {destination}\ntried:\n{tried}\n"
            f"Check your network connection, or set LLM_MIRROR to local directories or http(s) "
            f"URLs (separated by {os.pathsep!r}) holding a copy at BASE/HOST/PATH ({now}).")


def get_the_verdict(data_dir="data") -> Path:
    """Edith Wharton's short story "The Verdict" (about 20 KB), chapter 2's training text.

    Its size and digest are pinned: GitHub's raw server may answer without Content-Length, and
    then only they can tell a cut copy from the whole one (and a damaged cached copy is replaced).
    """
    return download_file(VERDICT_URL, Path(data_dir) / "the-verdict.txt", size=VERDICT_SIZE,
                         sha256=VERDICT_SHA256)
