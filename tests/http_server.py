"""A local HTTP server on 127.0.0.1 (ephemeral port) serving archives, for the download tests.

It supports Range requests, records every request, and can misbehave the way real mirrors do:
cut a connection mid-body (full Content-Length announced, part of the body sent, socket closed),
ignore Range like a naive server, stall after the headers, or answer with an error status.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Hit:
    name: str
    range: str | None
    status: int
    sent: int


@dataclass
class ServerState:
    files: dict[str, bytes]
    hits: list[Hit] = field(default_factory=list)
    ignore_range: bool = False
    # name -> for each next request of it, the body bytes sent before the connection is cut
    cut_at: dict[str, list[int]] = field(default_factory=dict)
    # name -> for each next request of it, seconds of silence after the headers (0: none)
    stall_s: dict[str, list[float]] = field(default_factory=dict)
    # name -> for each next request of it, an error status answered instead of the file
    status: dict[str, list[int]] = field(default_factory=dict)
    stopped: threading.Event = field(default_factory=threading.Event)

    def served(self, name: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.name == name]


def _next(plan: dict[str, list], name: str):
    queue = plan.get(name)
    return queue.pop(0) if queue else None


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output clean
        pass

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        name = self.path.rsplit("/", 1)[-1]
        rng = self.headers.get("Range")
        data = state.files.get(name)
        error = _next(state.status, name)
        if data is None or error is not None:
            state.hits.append(Hit(name, rng, error or 404, 0))
            self.send_error(error or 404)
            return
        start, status = 0, 200
        if rng and not state.ignore_range:
            start, status = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)), 206
            if start >= len(data):
                state.hits.append(Hit(name, rng, 416, 0))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        cut, stall = _next(state.cut_at, name), _next(state.stall_s, name)
        sent = body if cut is None else body[:cut]
        # Recorded before sending: the client may finish before this thread runs again.
        state.hits.append(Hit(name, rng, status, 0 if stall else len(sent)))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self.wfile.flush()
        if stall:  # silent, then gone: the client must time out, not wait forever
            state.stopped.wait(stall)
            self.close_connection = True
            return
        self.wfile.write(sent)
        self.wfile.flush()
        if cut is not None:
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True


@contextlib.contextmanager
def serve(files: dict[str, bytes]) -> Iterator[ThreadingHTTPServer]:
    """A fresh server for ``files``; ``.state`` is its :class:`ServerState`, ``.url`` its base URL
    (without a trailing slash on purpose: the URL join must tolerate it). Stopped afterwards."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = ServerState(files=dict(files))  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/pets"  # type: ignore[attr-defined]
    try:
        yield httpd
    finally:
        httpd.state.stopped.set()  # type: ignore[attr-defined]
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connection refused, like no network."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def wait_until(condition, timeout: float = 30.0, step: float = 0.01) -> None:
    """Poll ``condition()`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {condition}")
        time.sleep(step)
