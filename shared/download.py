"""Robust downloads: resume, retries, an offline mirror, and never a half-written file.

Every download in the repository goes through `download_file`. A file appears under its final
name only once all of its bytes are there, so "the file exists" always means "the file is complete":

    1. bytes stream into `destination + ".part"`;
    2. a dropped connection or a timeout is retried with exponential backoff, and each retry asks
       for the missing bytes only (`Range: bytes=N-`), so a 500 MB file does not restart at 0;
    3. when the byte count matches the server's Content-Length, and the bytes pass the checks
       below, `os.replace` renames the `.part` file to its final name in one atomic step.

What arrived is checked before it gets the final name: an HTML page where a data file was asked
for (a login or error page served with 200), a size other than `size=`, or a SHA-256 other than
`sha256=` sends the source to the list of failures instead. A `.part` is resumed only if it was
started from the same URL (recorded beside it in `.part.src`, with the server's ETag, which is
sent back as If-Range so that a file changed on the server starts over). With `sha256=`, a file
already under the final name is checked too, and replaced when it does not match.

Offline machines set LLM_MIRROR to one or more bases (local directories or http(s) URLs,
separated by os.pathsep). A URL `https://HOST/PATH` is looked up as `BASE/HOST/PATH` in every
base, in order, before the original URL. HOST is the host name without the port, so
`http://127.0.0.1:8000/a.txt` is looked up as `BASE/127.0.0.1/a.txt` (':' is not allowed in
Windows file names).
"""
import hashlib
import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests
import urllib3
from tqdm.auto import tqdm

# Files the repository ships (The Verdict, GPT-2's tokenizer files), laid out like a mirror: looked
# up after LLM_MIRROR and before the network, so every notebook runs on a machine without one.
BUNDLED_MIRROR = Path(__file__).resolve().parents[1] / "bundled" / "mirror"

VERDICT_URL = ("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/"
               "ch02/01_main-chapter-code/the-verdict.txt")

BACKOFF_BASE_S = 0.5   # wait 0.5 s, 1 s, 2 s, ... between retries; tests set this to 0
CHUNK_BYTES = 1 << 16  # 64 KiB: large enough to be fast, small enough for a smooth progress bar

# Failures worth another try: the network hiccupped, the server is not to blame for the request.
RETRYABLE = (
    requests.ConnectionError,                # refused, reset, DNS, read timeout mid-body
    requests.Timeout,                        # no answer within `timeout` seconds
    requests.exceptions.ChunkedEncodingError,  # connection dropped mid-body
    urllib3.exceptions.ProtocolError,        # the same, when it escapes requests' wrappers
)


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
                  sha256=None) -> Path:
    """Download `url` to `destination` (str or Path) and return it as a Path.

    An existing `destination` is returned at once, without touching the network: only complete
    files ever get the final name (with `sha256`, it is checked first and replaced if it does not
    match). Otherwise each source from `sources_for(url)` is tried in turn; an http source gets
    `retries` more attempts after the first, each resuming the `.part` file. What arrives must not
    be an HTML page and must have `size` bytes and the `sha256` digest when those are given.
    Raises DownloadError, listing every source tried, when none of them works.
    """
    destination = Path(destination)
    sha256 = sha256.lower() if sha256 else None
    if destination.is_file() and (sha256 is None or _sha256(destination) == sha256):
        return destination
    # A copy with the wrong digest stays until a good one replaces it (os.replace below).
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = Path(str(destination) + ".part")

    failures = []  # (source, reason) for the error message
    for source in sources_for(url):
        try:
            if _is_url(source):
                _fetch_with_retries(source, part, progress, retries, timeout)
            else:
                _copy_from_mirror_dir(source, part)
            _verify(part, url, size, sha256)
        except _SourceError as e:
            failures.append((source, str(e)))
            continue
        os.replace(part, destination)  # atomic: readers see no file or the whole file
        _src_file(part).unlink(missing_ok=True)
        return destination
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
        head = f.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) and not url.lower().endswith((".html", ".htm")):
        problem = "got an HTML page, not the file (a login, error or redirect page?)"
    elif size is not None and part.stat().st_size != size:
        problem = f"got {part.stat().st_size} bytes, expected {size}"
    elif sha256 is not None and _sha256(part) != sha256:
        problem = "SHA-256 does not match the expected digest: the file is damaged or another one"
    if problem:
        part.unlink()
        _src_file(part).unlink(missing_ok=True)
        raise _SourceError(problem)


def _src_file(part: Path) -> Path:
    """Beside a .part: the URL it was started from and the server's ETag, one per line."""
    return Path(str(part) + ".src")


def _copy_from_mirror_dir(source: str, part: Path) -> None:
    """Copy a file from a local mirror directory to `part` (the caller renames it)."""
    if not os.path.isfile(source):
        raise _SourceError("not in mirror dir")
    try:
        shutil.copyfile(source, part)
    except OSError as e:
        raise _SourceError(f"copy failed: {e}") from e


def _fetch_with_retries(url: str, part: Path, progress: bool, retries: int, timeout: float) -> None:
    """Stream `url` into `part`, retrying network failures with exponential backoff."""
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, progress, timeout)
            return
        except (_RetryableError, *RETRYABLE) as e:
            reason = _reason(e)
            if attempt == retries:
                tries = f"{retries + 1} attempts" if retries else "1 attempt"
                raise _SourceError(f"{reason} (gave up after {tries})") from e
            time.sleep(BACKOFF_BASE_S * 2 ** attempt)


def _fetch_once(url: str, part: Path, progress: bool, timeout: float) -> None:
    """One HTTP request: resume `part` if the server allows it, else start it over."""
    src = _src_file(part)
    started_from = src.read_text().split("\n") if src.exists() else []
    if part.exists() and started_from[:1] != [url]:  # another file's bytes, or of unknown origin
        part.unlink()
    have = part.stat().st_size if part.exists() else 0
    # identity: byte counts must match Content-Length, and Range on gzip'd bodies means nothing
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if len(started_from) > 1 and started_from[1]:  # changed on the server: send it all
            headers["If-Range"] = started_from[1]
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as r:
        if r.status_code == 416:  # we asked past the end: the .part is damaged, start over
            part.unlink()
            raise _RetryableError("416 Range Not Satisfiable; restarting from byte 0")
        if 400 <= r.status_code < 500:  # the request itself is wrong: another try won't help
            raise _SourceError(f"{r.status_code} {r.reason}")
        if r.status_code >= 500:  # the server is struggling: worth another try
            raise _RetryableError(f"{r.status_code} {r.reason}")

        resuming = r.status_code == 206 and _range_start(r) == have
        start = have if resuming else 0  # a 200 (or a strange 206) sends the whole file again
        if not resuming:
            src.write_text(f"{url}\n{r.headers.get('ETag', '')}")
        length = r.headers.get("Content-Length")
        # Count the bytes ourselves (below): urllib3 would raise on a short body and throw away
        # the last chunk it read, bytes the next attempt would then have to fetch again.
        r.raw.enforce_content_length = False
        expected = start + int(length) if length is not None else None
        with open(part, "ab" if resuming else "wb") as f, \
                tqdm(total=expected, initial=start, unit="B", unit_scale=True,
                     desc=part.stem, disable=not progress) as bar:
            for chunk in r.iter_content(CHUNK_BYTES):
                f.write(chunk)
                bar.update(len(chunk))

    size = part.stat().st_size
    if expected is not None and size != expected:
        if size > expected:  # more bytes than the file has: the .part is garbage
            part.unlink()
        raise _RetryableError(f"short body: got {size} of {expected} bytes")


def _range_start(r: requests.Response) -> int | None:
    """First byte of a 206 answer, from `Content-Range: bytes START-END/TOTAL`."""
    m = re.match(r"bytes (\d+)-", r.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None


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
    """Edith Wharton's short story "The Verdict" (about 20 KB), chapter 2's training text."""
    return download_file(VERDICT_URL, Path(data_dir) / "the-verdict.txt")
