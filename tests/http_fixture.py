"""A loopback HTTP file server for tests, with per-file misbehaviour the test sets.

Binds 127.0.0.1 on a free port in a background thread; nothing leaves the machine. Each served path is a
:class:`Route` that can cut the transfer after N bytes, ignore Range, serve wrong bytes, stall, answer an
error status for its first k requests, or stream far more than its data without a Content-Length. Every
request is logged so tests can assert what the client sent.

    with LoopbackServer() as server:
        route = server.add("/file.bin", data, cut_after=1000)
        download(server.url("/file.bin"), dest)
        assert server.log[1].range == "bytes=1000-"
"""
from __future__ import annotations

import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class Route:
    """What one path serves and how it misbehaves; counters (``requests``) are updated by the server."""

    data: bytes
    cut_after: int | None = None  # send at most this many body bytes, then drop the connection...
    cut_count: int = 1  # ...for this many requests (then serve normally)
    ignore_range: bool = False  # answer 200 with the whole file even when Range is asked
    corrupt: bool = False  # serve bytes of the right length but wrong content
    fail_status: int | None = None  # answer this status...
    fail_count: int = 0  # ...for the first this-many requests (a large number: always)
    retry_after: int | None = None  # Retry-After header sent with fail_status
    stall_s: float = 0.0  # sleep before answering...
    stall_count: int = 0  # ...for the first this-many requests
    endless: int = 0  # instead of data: stream this many bytes (data repeated) with no Content-Length, then close
    requests: int = 0  # how many requests this route has received
    sent: int = 0  # body bytes the server managed to write (the client stopped reading when it is short)


@dataclass(frozen=True)
class Request:
    """One request as the server saw it, and what it answered."""

    path: str
    range: str | None
    status: int
    body_bytes: int


class _Handler(BaseHTTPRequestHandler):
    """Serves the routes of the owning :class:`LoopbackServer` with their configured misbehaviour."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
        """Silence the default stderr access log."""

    def _record(self, status: int, body: int) -> None:
        with self.server.lock:
            self.server.log.append(Request(self.path, self.headers.get("Range"), status, body))

    def _error(self, status: int, route: Route | None) -> None:
        body = f"{status} from the test server\n".encode()
        self._record(status, 0)
        self.send_response(status)
        if route is not None and route.retry_after is not None:
            self.send_header("Retry-After", str(route.retry_after))
        if status == 416 and route is not None:
            self.send_header("Content-Range", f"bytes */{len(route.data)}")
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        """Answer one GET according to the route's settings."""
        with self.server.lock:
            route = self.server.routes.get(self.path)
            if route is not None:
                route.requests += 1
                number = route.requests
        if route is None:
            self._error(404, None)
            return
        if number <= route.stall_count:
            time.sleep(route.stall_s)
        if route.fail_status is not None and number <= route.fail_count:
            self._error(route.fail_status, route)
            return
        if route.endless:
            self._stream(route)
            return
        data = bytes(b ^ 0xFF for b in route.data) if route.corrupt else route.data
        start, status = 0, 200
        asked = _RANGE.match(self.headers.get("Range", "").strip())
        if asked and not route.ignore_range:
            start = int(asked.group(1))
            if start >= len(data):
                self._error(416, route)
                return
            status = 206
        body = data[start:]
        cut = route.cut_after is not None and number <= route.cut_count and route.cut_after < len(body)
        self._record(status, route.cut_after if cut else len(body))  # logged before replying: no race with the client
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        try:
            if cut:
                self.wfile.write(body[: route.cut_after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up mid-body (e.g. a size it refuses)
            self.close_connection = True


    def _stream(self, route: Route) -> None:
        """Send ``route.endless`` bytes with no Content-Length (the body ends when the connection closes)."""
        self._record(200, route.endless)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        block = route.data * max(1, (1 << 16) // max(1, len(route.data)))
        try:
            while route.sent < route.endless:
                piece = block[: route.endless - route.sent]
                self.wfile.write(piece)
                with self.server.lock:
                    route.sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that carries the routes, a request log and a lock shared by handler threads."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.log: list[Request] = []
        self.lock = threading.Lock()

    def handle_error(self, request: object, client_address: object) -> None:
        """Stay quiet when a client hangs up (tests do that on purpose); report anything else."""
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class LoopbackServer:
    """Context manager running a misbehaving file server on 127.0.0.1 (random free port) in a thread."""

    def __init__(self) -> None:
        self._server = _Server()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def log(self) -> list[Request]:
        """Every request answered so far, in order."""
        with self._server.lock:
            return list(self._server.log)

    def add(self, path: str, data: bytes, **behaviour: object) -> Route:
        """Serve ``data`` at ``path`` with the given :class:`Route` settings; returns the route to inspect or change."""
        route = Route(data, **behaviour)  # type: ignore[arg-type]
        with self._server.lock:
            self._server.routes[path] = route
        return route

    def url(self, path: str) -> str:
        """The full http://127.0.0.1:PORT URL of ``path``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{path}"


def dead_url(path: str = "/gone") -> str:
    """A loopback URL on a port nothing listens on, so connecting is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
