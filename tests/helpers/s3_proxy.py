"""A small fault-injecting HTTP proxy in front of the test S3 server.

It forwards every request to the real (moto) server, except that it
- answers ``403 AccessDenied`` for every request to a bucket in ``denied``,
- answers ``503 SlowDown`` to a share of requests (``slowdown_rate``), and
- cuts the connection without an answer for another share (``reset_rate``), and
- cuts an upload short (``cut_rate``, PUT only): the server gets the headers and half the body,
  then both connections close.
Faults are drawn from a seeded generator and counted, so a test can check that they happened.
Every request is also logged (method, path without the query, body bytes), so a test can check
what was uploaded.
With no faults it is a request counter: ``Faults.kinds`` counts what reached it by kind (``LIST``,
``GET``, ``HEAD``, ``PUT``, ``DELETE``, ``POST``), so tests and benches can bound what a command
asks of storage (``StorageConfig(endpoint_url=proxy.url)`` or ``--set storage.endpoint_url=...``).
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
    "<BucketName>{bucket}</BucketName></Error>"
)


@dataclass
class Faults:
    denied: set[str] = field(default_factory=set)
    slowdown_rate: float = 0.0
    reset_rate: float = 0.0
    cut_rate: float = 0.0
    seed: int = 0
    counts: dict[str, int] = field(
        default_factory=lambda: {"requests": 0, "slowdown": 0, "reset": 0, "denied": 0, "cut": 0})
    kinds: Counter[str] = field(default_factory=Counter)
    paths: Counter[str] = field(default_factory=Counter)  # "/bucket/key" of every request
    lock: threading.Lock = field(default_factory=threading.Lock)
    log: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, body bytes)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def uploaded(self) -> dict[str, int]:
        """Body bytes sent by PUT and POST requests, by object path (multipart parts summed)."""
        sizes: dict[str, int] = {}
        for method, path, size in self.log:
            if method in ("PUT", "POST"):
                sizes[path] = sizes.get(path, 0) + size
        return sizes

    def draw(self, bucket: str, method: str, kind: str = "", path: str = "") -> str | None:
        with self.lock:
            self.counts["requests"] += 1
            self.kinds[kind or method] += 1
            self.paths[path] += 1
            if bucket in self.denied:
                self.counts["denied"] += 1
                return "denied"
            roll = self.rng.random()
            if roll < self.slowdown_rate:
                self.counts["slowdown"] += 1
                return "slowdown"
            # A reset happens before forwarding: the request never reached the server.
            if roll < self.slowdown_rate + self.reset_rate:
                self.counts["reset"] += 1
                return "reset"
            if method == "PUT" and roll < self.slowdown_rate + self.reset_rate + self.cut_rate:
                self.counts["cut"] += 1
                return "cut"
            return None


class FaultProxy:
    def __init__(self, upstream: str, faults: Faults) -> None:
        self.upstream = urlsplit(upstream)
        self.faults = faults
        handler = _handler(self)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def request_kind(method: str, path: str) -> str:
    """``LIST`` for a GET of a bucket's listing (no key, or ``list-type`` asked), else the method."""
    parts = urlsplit(path)
    has_key = "/" in parts.path.lstrip("/")
    if method == "GET" and (not has_key or "list-type" in parse_qs(parts.query)):
        return "LIST"
    return method


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = urlsplit(self.path).path
            bucket = path.lstrip("/").split("/", 1)[0]
            with proxy.faults.lock:
                proxy.faults.log.append((self.command, path, len(body)))
            fault = proxy.faults.draw(bucket, self.command, request_kind(self.command, self.path), path)
            if fault == "cut":
                self._forward_half(body)
            if fault in ("reset", "cut"):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.connection.close()
                self.close_connection = True
                return
            if fault == "denied":
                return self._error(403, "AccessDenied", "Access Denied", bucket)
            if fault == "slowdown":
                return self._error(503, "SlowDown", "Please reduce your request rate.", bucket)
            self._forward(body)

        def _error(self, status: int, code: str, message: str, bucket: str) -> None:
            payload = _ERROR_XML.format(code=code, message=message, bucket=bucket).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _forward_half(self, body: bytes) -> None:
            """The upload as a dropped connection leaves it: announced whole, half sent."""
            upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for key, value in self.headers.items():
                if key.lower() not in ("connection", "keep-alive"):
                    upstream.putheader(key, value)
            upstream.endheaders()
            upstream.send(body[: len(body) // 2])
            upstream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            upstream.close()

        def _forward(self, body: bytes) -> None:
            upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            self.send_response(response.status, response.reason)
            skip = {"connection", "keep-alive", "transfer-encoding"}
            if self.command != "HEAD":  # a HEAD answer keeps the object's length
                skip.add("content-length")
                self.send_header("Content-Length", str(len(data)))
            for key, value in response.getheaders():
                if key.lower() not in skip:
                    self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            upstream.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    return Handler
