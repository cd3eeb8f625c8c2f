"""A real HTTP server on 127.0.0.1 that misbehaves on request, for the download tests."""
import collections
import gzip
import re
import socket
import struct
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class FakeServer:
    """Serves `files` (path -> bytes); records every request's path and Range header.

    Paths in `drop_first` get half the body on their first request, then the socket closes;
    `cut_next[path] = n` does the same to the next n answers.
    Paths in `short` always get half of what Content-Length promises (a lying server).
    Paths in `ignore_range` always answer 200 with the whole body.
    Paths in `ignore_if_range` honour Range even when If-Range names an older version.
    Paths in `fail_first` answer 503 to their first request.
    Paths in `no_length` get no Content-Length: the body ends when the connection closes.
    Paths in `chunked` are sent in chunks (Transfer-Encoding: chunked); a cut one lacks the end.
    Paths in `gzip` are compressed although the client asks for identity.
    Paths in `stall_first` get half the body on their first request, then nothing for 2 s.
    Paths in `reset` are cut with a TCP reset instead of a clean close.
    `validator[path]`: "etag" (the default), "weak" (one weak ETag for every version),
    "last-modified", or None.
    `pace[path] = (n, delay_s, max_s)`: send n bytes every delay_s seconds, for at most max_s
    seconds, then the rest at once.
    `redirects[path] = (target, headers)`: a 302 to `target`, with extra headers.
    `sent` counts the body bytes the server managed to send per path.
    """

    def __init__(self):
        self.files, self.counts = {}, collections.Counter()
        self.ranges = collections.defaultdict(list)
        self.drop_first, self.short, self.ignore_range, self.fail_first = set(), set(), set(), set()
        self.no_length, self.chunked, self.reset, self.ignore_if_range = set(), set(), set(), set()
        self.gzip, self.stall_first = set(), set()
        self.cut_next, self.sent = collections.Counter(), collections.Counter()
        self.validator, self.pace, self.redirects = {}, {}, {}
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.fake = self
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"

    def url(self, path):
        return self.base + path

    def validator_header(self, path):
        """(header, value) that identifies the current version of `path`, or None."""
        version = hash(self.files[path]) & 0xffffffff
        kind = self.validator.get(path, "etag")
        if kind == "etag":
            return "ETag", f'"v{version:x}"'
        if kind == "weak":  # kept while the server deems versions equivalent: here, always
            return "ETag", 'W/"v1"'
        if kind == "last-modified":
            return "Last-Modified", formatdate(1_500_000_000 + version % 10**8, usegmt=True)
        return None

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    """Answers as `self.server.fake`, the FakeServer, says."""

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def do_GET(self):
        server = self.server.fake
        server.counts[self.path] += 1
        server.ranges[self.path].append(self.headers.get("Range"))
        first = server.counts[self.path] == 1
        if self.path in server.redirects:
            return self.redirect(*server.redirects[self.path])
        if self.path not in server.files:
            return self.send_error(404)
        if self.path in server.fail_first and first:
            return self.send_error(503)
        body, version = server.files[self.path], server.validator_header(self.path)
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if_range = self.headers.get("If-Range")
        changed = if_range is not None and (version is None or if_range != version[1])
        if self.path in server.ignore_range or (changed and self.path not in server.ignore_if_range):
            m = None  # ignored, or changed since: the whole file
        start = int(m.group(1)) if m else 0
        end = min(int(m.group(2)), len(body) - 1) if m and m.group(2) else len(body) - 1
        if m and start >= len(body):
            return self.send_error(416)
        self.send_response(206 if m else 200)
        if version:
            self.send_header(*version)
        if m:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
        payload = body[start:end + 1]
        if self.path in server.gzip:  # although the client asked for identity
            payload = gzip.compress(payload)
            self.send_header("Content-Encoding", "gzip")
        if self.path in server.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif self.path not in server.no_length:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        cut = self.path in server.short or (first and (self.path in server.drop_first
                                                       or self.path in server.stall_first))
        if server.cut_next[self.path] > 0:
            server.cut_next[self.path] -= 1
            cut = True
        self.send_body(payload[:len(payload) // 2] if cut else payload, not cut)

    def redirect(self, target, headers):
        server = self.server.fake
        self.send_response(302)
        self.send_header("Location", server.url(target))
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send_body(self, payload, complete):
        server = self.server.fake
        chunked = self.path in server.chunked
        n, delay, max_s = server.pace.get(self.path, (1 << 16, 0, 0))
        stop_pacing = time.monotonic() + max_s
        try:
            sent = 0
            while sent < len(payload):
                if delay and time.monotonic() < stop_pacing:
                    time.sleep(delay)
                else:
                    n = 1 << 16  # done pacing: the rest at once
                piece = payload[sent:sent + n]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
                server.sent[self.path] += len(piece)
            if chunked and complete:
                self.wfile.write(b"0\r\n\r\n")
            if not complete and self.path in server.stall_first:
                time.sleep(2)  # longer than the tests' read timeout
            if not complete and self.path in server.reset:
                # SO_LINGER 0: close() sends a reset (RST), not an orderly end (FIN)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.connection.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client closed the connection: it had what it wanted


def closed_port() -> int:
    """A port nothing listens on, so connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_only(monkeypatch):
    """No mirror unless a test sets one, no waiting between retries, no proxy for 127.0.0.1."""
    from shared import download

    monkeypatch.delenv("LLM_MIRROR", raising=False)
    monkeypatch.setattr(download, "BACKOFF_BASE_S", 0)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(autouse=True)
def local_only_env(monkeypatch):
    """local_only for every test of a module that imports this fixture."""
    local_only(monkeypatch)


def leftovers(folder) -> list[str]:
    """The names in a folder, sorted: what a download left behind."""
    return sorted(p.name for p in folder.iterdir())
