"""A real HTTP server on 127.0.0.1 that misbehaves on request, for the download tests."""
import collections
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeServer:
    """Serves `files` (path -> bytes); records every request's path and Range header.

    Paths in `drop_first` get half the body on their first request, then the socket closes.
    Paths in `short` always get half of what Content-Length promises (a lying server).
    Paths in `ignore_range` always answer 200 with the whole body.
    Paths in `fail_first` answer 503 to their first request.
    Paths in `no_length` get no Content-Length: the body ends when the connection closes.
    `sent` counts the body bytes the server managed to send per path.
    """

    def __init__(self):
        self.files, self.counts = {}, collections.Counter()
        self.ranges = collections.defaultdict(list)
        self.drop_first, self.short, self.ignore_range, self.fail_first = set(), set(), set(), set()
        self.no_length, self.sent = set(), collections.Counter()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"

    def url(self, path):
        return self.base + path

    def _handler(server):  # noqa: N805 -- `server` is the FakeServer, `self` the request
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def do_GET(self):
                server.counts[self.path] += 1
                server.ranges[self.path].append(self.headers.get("Range"))
                first = server.counts[self.path] == 1
                if self.path not in server.files:
                    return self.send_error(404)
                if self.path in server.fail_first and first:
                    return self.send_error(503)
                body = server.files[self.path]
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
                etag = f'"v{hash(body) & 0xffffffff:x}"'
                if self.path in server.ignore_range or self.headers.get("If-Range") not in (None, etag):
                    m = None  # ignored, or changed since: the whole file
                start = int(m.group(1)) if m else 0
                end = min(int(m.group(2)), len(body) - 1) if m and m.group(2) else len(body) - 1
                if m and start >= len(body):
                    return self.send_error(416)
                self.send_response(206 if m else 200)
                self.send_header("ETag", etag)
                if m:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
                payload = body[start:end + 1]
                if self.path not in server.no_length:
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.path in server.short or (self.path in server.drop_first and first):
                    payload = payload[:len(payload) // 2]  # then the socket closes
                try:
                    for i in range(0, len(payload), 1 << 16):
                        self.wfile.write(payload[i:i + (1 << 16)])
                        server.sent[self.path] += len(payload[i:i + (1 << 16)])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client closed the connection: it had what it wanted
        return Handler

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()



def closed_port() -> int:
    """A port nothing listens on, so connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
