"""A minimal keep-alive HTTP/1.1 server of Connect API pages, run as its own process.

The benchmarks measure the *client*, so serving a page must cost next to nothing: pages are
encoded once at start-up and only patched per request. A million records would be ~830 MB of
JSON, so ``DISTINCT_PAGES`` page templates are built and page ``k`` is served from template
``k mod DISTINCT_PAGES`` with the 7-digit page number spliced into every record's ``id`` and
``ref_id`` (same length, so no re-encoding): ids stay unique across a whole run, as the
triage's de-duplication by ``id`` would need. The next-page token ``p/<k>+x=`` needs
URL-encoding, and the server rejects a token that arrives mangled.

Routes: ``GET /n/<N>/<shape>/v1.1/connections`` lists N records of one of ``records.SHAPES``
(size and shape in the path, so one server serves every run; a client gets the path as its
``connections_path`` wire name); with ``ref-id`` parameters it lists only those IDs (about 5 %
not listed, about 5 % listed twice, as an ID used in two regions is), like the sensor's query.
``GET /_stats`` returns the counters, ``GET /_reset`` zeroes them. Only ``page-size=500`` is
served.

Run: ``python -m bench.page_server --key KEY`` prints ``READY <port>`` once it listens.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, unquote

from bench.records import SHAPES, make_record

PAGE_SIZE = 500
DISTINCT_PAGES = 20
SLOT = b"@@@@@@@"  # replaced by the 7-digit page number in every id and ref_id
CONNECTIONS_PATH = re.compile(r"/n/([0-9]+)/([a-z]+)/v1\.1/connections")
PAGE_TOKEN = re.compile(r"p/([0-9]+)\+x=")
REF_TOKEN = re.compile(r"r/([0-9]+)\+x=")
MAX_HEADER_BYTES = 65536


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def page_token(value: int, kind: str = "p") -> str:
    """A token with ``/``, ``+`` and ``=``: a client that forgets to URL-encode it fails."""
    return f"{kind}/{value}+x="


class Pages:
    """Pre-encoded page templates, each split at the page-number slot."""

    def __init__(self, shape: str, distinct: int = DISTINCT_PAGES) -> None:
        rng = random.Random(11)
        self.templates: list[list[bytes]] = []
        for t in range(distinct):
            records = [
                _dumps(make_record(rng, f"cust-{SLOT.decode()}-{t * PAGE_SIZE + i:06d}", shape))
                for i in range(PAGE_SIZE)
            ]
            body = b'{"connections":[' + b",".join(records) + b"]"
            self.templates.append(body.split(SLOT))
        self.sizes = [sum(map(len, parts)) for parts in self.templates]

    def page(self, k: int, total: int) -> bytes:
        """The whole HTTP response of page ``k`` (0-based) of ``total`` records.

        One allocation per request (the head and the token are glued onto the first and last
        template parts, then one ``join``): serving stays at tens of microseconds a page.
        """
        count = min(PAGE_SIZE, total - k * PAGE_SIZE)
        number = b"%07d" % k
        parts = self.templates[k % len(self.templates)]
        more = (k + 1) * PAGE_SIZE < total
        tail = (b',"nextPageToken":' + _dumps(page_token(k + 1)) if more else b"") + b"}"
        if count < PAGE_SIZE:  # a short last page: re-encode the first ``count`` records
            records = json.loads(number.join(parts) + b"}")["connections"][:count]
            return _response("200 OK", b'{"connections":' + _dumps(records) + tail)
        length = self.sizes[k % len(self.templates)] + len(number) * (len(parts) - 1) + len(tail)
        chunks = parts.copy()
        chunks[0] = _head("200 OK", length) + chunks[0]
        chunks[-1] += tail
        return number.join(chunks)


def ref_id_page(ref_ids: list[str], offset: int) -> bytes:
    """The records of these Reference IDs, from ``offset``: some missing, some listed twice."""
    records: list[dict[str, Any]] = []
    for ref_id in ref_ids:
        rng = random.Random(ref_id)
        roll = rng.random()
        if roll < 0.05:
            continue  # the customer never clicked the link: Leap does not list it
        records.append(make_record(rng, ref_id))
        if roll > 0.95:
            records.append(make_record(rng, ref_id))
    page: dict[str, Any] = {"connections": records[offset : offset + PAGE_SIZE]}
    if offset + PAGE_SIZE < len(records):
        page["nextPageToken"] = page_token(offset + PAGE_SIZE, "r")
    return _dumps(page)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Stats:
    """Counters of the server's own work, to show it is never the bottleneck.

    ``build_seconds`` is the time spent making responses; ``cpu_seconds`` is the whole server
    process's CPU (parsing, building, sending). Wall time spent in ``sendall`` is not a cost
    of the server: it waits there for the client to read.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.connections = 0
        self.build_seconds = 0.0
        self.bytes_sent = 0
        self.cpu_start = _cpu_seconds()

    def add(self, build: float, sent: int, new_connection: bool) -> None:
        with self.lock:
            self.requests += 1
            self.connections += new_connection
            self.build_seconds += build
            self.bytes_sent += sent

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "connections": self.connections,
                "build_seconds": self.build_seconds,
                "cpu_seconds": _cpu_seconds() - self.cpu_start,
                "bytes_sent": self.bytes_sent,
            }


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, key: str, pages: dict[str, Pages]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.auth = f"Bearer {key}".encode()
        self.pages = pages
        self.stats = Stats()


def _head(status: str, length: int) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _response(status: str, body: bytes) -> bytes:
    return _head(status, len(body)) + body


def _error(status: str, title: str) -> bytes:
    return _response(status, _dumps({"title": title}))


class Handler(socketserver.StreamRequestHandler):
    """Raw HTTP/1.1: request line and headers only (GET has no body), keep-alive by default."""

    disable_nagle_algorithm = True
    server: Server

    def handle(self) -> None:
        counted = False  # a connection counts once it carries an API request
        while True:
            line = self.rfile.readline(MAX_HEADER_BYTES)
            if not line.strip():
                return  # the client closed the connection
            headers: dict[bytes, bytes] = {}
            while True:
                header = self.rfile.readline(MAX_HEADER_BYTES)
                if header in (b"\r\n", b"\n", b""):
                    break
                name, _, value = header.partition(b":")
                headers[name.strip().lower()] = value.strip()
            started = time.perf_counter()
            answer = self.answer(line, headers)
            built = time.perf_counter() - started
            if not line.split(b" ", 1)[-1].startswith(b"/_"):  # not the harness's own calls
                # Counted before sending: once the client has the answer, /_stats must see it.
                self.server.stats.add(built, len(answer), not counted)
                counted = True
            self.connection.sendall(answer)
            if headers.get(b"connection", b"").lower() == b"close":
                return

    def answer(self, line: bytes, headers: dict[bytes, bytes]) -> bytes:
        try:
            method, target, _ = line.decode("latin-1").split(" ", 2)
        except ValueError:
            return _error("400 Bad Request", "malformed request line")
        path, _, query = target.partition("?")
        if path == "/_stats":
            return _response("200 OK", _dumps(self.server.stats.as_dict()))
        if path == "/_reset":
            self.server.stats.reset()
            return _response("200 OK", b"{}")
        match = CONNECTIONS_PATH.fullmatch(path)
        if method != "GET" or match is None or match[2] not in self.server.pages:
            return _error("404 Not Found", f"no route {method} {unquote(path)}")
        if headers.get(b"authorization") != self.server.auth:
            return _error("401 Unauthorized", "missing or wrong Bearer key")
        params = parse_qsl(query, keep_blank_values=True)
        if dict(params).get("page-size") != str(PAGE_SIZE):
            return _error("400 Bad Request", f"this server only serves page-size={PAGE_SIZE}")
        token = dict(params).get("page-token")
        ref_ids = [value for name, value in params if name == "ref-id"]
        if ref_ids:
            found = REF_TOKEN.fullmatch(token) if token is not None else None
            if token is not None and found is None:
                return _error("400 Bad Request", f"mangled page token {token!r}")
            return _response("200 OK", ref_id_page(ref_ids, int(found[1]) if found else 0))
        total = int(match[1])
        found = PAGE_TOKEN.fullmatch(token) if token is not None else None
        if token is not None and found is None:
            return _error("400 Bad Request", f"mangled page token {token!r}")
        k = int(found[1]) if found else 0
        if k * PAGE_SIZE >= max(total, 1):
            return _response("200 OK", b'{"connections":[]}')
        return self.server.pages[match[2]].page(k, total)


class PageServer:
    """Handle on a page server child process: its URLs, counters, and shutdown."""

    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.port = port
        self.origin = f"http://127.0.0.1:{port}"

    def url(self, total: int, shape: str = "guide") -> str:
        """The Connect URL of ``total`` records of ``shape``: origin + connections path."""
        return f"{self.origin}/n/{total}/{shape}/v1.1/connections"

    def _get(self, path: str) -> dict[str, Any]:
        with socket.create_connection(("127.0.0.1", self.port)) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        result: dict[str, Any] = json.loads(data.partition(b"\r\n\r\n")[2])
        return result

    def stats(self) -> dict[str, Any]:
        return self._get("/_stats")

    def reset(self) -> None:
        self._get("/_reset")


@contextmanager
def start_page_server(key: str) -> Iterator[PageServer]:
    """Start the server in a child process; yields once it listens, stops it on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.page_server", "--key", key],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"page server did not start: {line!r}")
        yield PageServer(process, int(line.split()[1]))
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key", required=True)
    parser.add_argument("--distinct", type=int, default=DISTINCT_PAGES)
    args = parser.parse_args()
    server = Server(args.key, {shape: Pages(shape, args.distinct) for shape in SHAPES})
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever(poll_interval=0.5)


if __name__ == "__main__":
    main()
