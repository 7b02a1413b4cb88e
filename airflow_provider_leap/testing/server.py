"""The Leap emulator: a real HTTP server speaking the project's adopted Connect and Meters wire.

It is deliberately stricter than Leap is known to be where strictness exposes client bugs: unknown
or repeated query parameters, unknown body fields, naive timestamps and page tokens that were not
URL-encoded exactly once are all 400s, instead of being silently ignored (which would make a
misnamed filter return *every* record). Each rule is an emulator choice, not a Leap fact.

Request handling order: unknown path -> 404; auth -> 401/403; wrong method -> 405; validation ->
400; only then faults (see ``faults.py``) and the normal answer.
"""

from __future__ import annotations

import base64
import bisect
import email.utils
import hashlib
import hmac
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import msgspec

from airflow_provider_leap import wire
from airflow_provider_leap.gc_pause import gc_paused
from airflow_provider_leap.testing import EMULATOR_API_KEY
from airflow_provider_leap.testing.data import (
    as_utc,
    generate_meters,
    generate_records_timed,
    is_valid_ref_id,
    parse_utc,
    to_us,
)
from airflow_provider_leap.testing.faults import Fault, FaultKind, Faults
from airflow_provider_leap.testing.journeys import Population
from airflow_provider_leap.testing.webhooks import Answer, WebhookApiError, WebhookHub

if TYPE_CHECKING:
    from airflow_provider_leap.testing.admin import EmulatorAdmin

HOST = "127.0.0.1"
CONNECTIONS_DEFAULT_PAGE_SIZE = 100
CONNECTIONS_MAX_PAGE_SIZE = 1000
METERS_MIN_PAGE_SIZE, METERS_MAX_PAGE_SIZE = wire.METERS_PAGE_SIZE_RANGE
SERVER_ERROR_TEXT = "An error happened whilst processing your request"  # Leap's documented 500

# Page tokens: "lp1/" + base64(offset, origin MAC, filter MAC) + " &%+". The fixed characters
# (and base64's "/", "+", "=") change meaning unless the token is URL-encoded exactly once.
_TOKEN_HEAD, _TOKEN_TAIL = "lp1/", " &%+"
_TOKEN_BYTES = 4 + 8 + 8

# Meter search fields the emulator filters on (exclude_archived is a no-op: no meter is archived),
# and fields of Leap's spec it does not emulate (400, so a test never trusts a silent no-op).
_METER_FIELDS = frozenset(
    {
        "page_token",
        "page_size",
        "connection_reference_ids",
        "created_after_date_time",
        "created_before_date_time",
        "last_modified_date_time",
        "transmission_region",
        "customer_classification",
        "meter_ids",
        "partner_references",
        "meter_types",
        "exclude_archived",
        "partner_action_required",
    }
)
_METER_FIELDS_NOT_EMULATED = frozenset(
    {"global_enrollment_statuses", "load_types", "customer_groups", "tags", "action_type"}
)

_JSON = "application/json"
_encode = msgspec.json.encode
_decode = msgspec.json.decode


class ApiError(Exception):
    """An error answer in the v2 shape ``{"title", "status", "details"}``."""

    def __init__(
        self,
        status: int,
        title: str,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.details = dict(details or {})
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        return _encode({"title": self.title, "status": self.status, "details": self.details})


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the emulator saw it, and what it answered (``status`` None = reset)."""

    method: str
    path: str
    query: list[tuple[str, str]]
    raw_query: str
    body: Any
    headers: dict[str, str]
    status: int | None
    fault: str | None
    at: float = field(default_factory=time.monotonic)


class RequestLog:
    """Thread-safe list of ``RecordedRequest``; tests count requests per poke with it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[RecordedRequest] = []

    def append(self, item: RecordedRequest) -> None:
        with self._lock:
            self._items.append(item)

    def snapshot(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._items)

    def reset(self) -> None:
        with self._lock:
            self._items.clear()

    def count(self, path: str | None = None, *, status: int | None = None) -> int:
        """Requests seen, optionally only those to ``path`` and/or answered with ``status``."""
        return sum(
            1
            for r in self.snapshot()
            if (path is None or r.path == path) and (status is None or r.status == status)
        )

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __iter__(self) -> Iterator[RecordedRequest]:
        return iter(self.snapshot())


class _Tokens:
    """Issues and checks page tokens bound to (endpoint, offset, filters) with HMACs."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, *parts: object) -> bytes:
        message = "\n".join(str(p) for p in parts).encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:8]

    def issue(self, scope: str, offset: int, filters: str) -> str:
        raw = (
            struct.pack(">I", offset) + self._mac(scope, offset) + self._mac(scope, offset, filters)
        )
        return _TOKEN_HEAD + base64.b64encode(raw).decode("ascii") + _TOKEN_TAIL

    def open(self, scope: str, token: str, param: str) -> int:
        """The offset a token encodes; 400 unless this server issued it for this endpoint."""
        raw = b""
        if token.startswith(_TOKEN_HEAD) and token.endswith(_TOKEN_TAIL):
            try:
                raw = base64.b64decode(token[len(_TOKEN_HEAD) : -len(_TOKEN_TAIL)], validate=True)
            except ValueError:
                raw = b""
        if len(raw) == _TOKEN_BYTES:
            offset = int(struct.unpack(">I", raw[:4])[0])
            if hmac.compare_digest(raw[4:12], self._mac(scope, offset)):
                return offset
        reason = "not a page token this server issued (was it URL-encoded exactly once?)"
        raise ApiError(400, "Invalid page token", {param: token, "reason": reason})

    def check_filters(self, scope: str, token: str, filters: str, param: str) -> None:
        """400 when an (authentic) token is replayed with other filters than it was issued for."""
        offset = self.open(scope, token, param)
        raw = base64.b64decode(token[len(_TOKEN_HEAD) : -len(_TOKEN_TAIL)])
        if not hmac.compare_digest(raw[12:], self._mac(scope, offset, filters)):
            reason = "the token was issued for different filters"
            raise ApiError(400, "Invalid page token", {param: token, "reason": reason})


def _parse_time(value: str, name: str) -> int:
    """Epoch µs of an ISO-8601 filter value; a date means midnight UTC; naive times are 400."""
    parsed = parse_utc(value)
    if parsed is None and len(value) == 10:
        try:
            day = date.fromisoformat(value)
        except ValueError:
            day = None
        if day is not None:
            parsed = to_us(datetime(day.year, day.month, day.day, tzinfo=timezone.utc))
    if parsed is None:
        raise ApiError(
            400,
            "Invalid date",
            {name: value, "error": "expected ISO-8601 UTC, e.g. 2024-10-21T11:43:05Z"},
        )
    return parsed


def _record_time(record: Mapping[str, Any], key: str) -> int | None:
    value = record.get(key)
    return parse_utc(value) if isinstance(value, str) else None


class _Dataset:
    """Records and meters, pre-serialised once, with the indices the filters need."""

    def __init__(
        self,
        records: list[dict[str, Any]],
        meters: list[dict[str, Any]],
        starts: list[int | None] | None = None,
        lasts: list[int | None] | None = None,
    ) -> None:
        self.records = records
        self.encoded = [_encode(r) for r in records]
        self.starts = starts or [_record_time(r, "start_date_time_utc") for r in records]
        self.lasts = lasts or [_record_time(r, "last_interaction_date_time_utc") for r in records]
        self.by_ref: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            self.by_ref.setdefault(str(r.get("ref_id")), []).append(i)
        self.meters = meters
        self.meter_encoded = [_encode(m) for m in meters]
        self.meter_created = [parse_utc(m["audit"]["created_at"]) or 0 for m in meters]
        self.meter_updated = [parse_utc(m["audit"].get("updated_at") or "") or 0 for m in meters]
        self.meters_by_ref: dict[str, list[int]] = {}
        for i, m in enumerate(meters):
            for ref in m.get("connection_references") or ():
                self.meters_by_ref.setdefault(ref, []).append(i)
        self._cache: dict[Any, list[int]] = {}
        self._lock = threading.Lock()

    def _cached(self, key: Any, build: Callable[[], list[int]]) -> list[int]:
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        value = build()
        with self._lock:
            if len(self._cache) >= 256:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = value
        return value

    def select_connections(
        self, refs: tuple[str, ...], start: int | None, last: int | None
    ) -> list[int]:
        def build() -> list[int]:
            if refs:
                found = {i for ref in refs for i in self.by_ref.get(ref, ())}
                indices: Sequence[int] = sorted(found)
            else:
                indices = range(len(self.records))
            starts, lasts = self.starts, self.lasts
            return [
                i
                for i in indices
                if (start is None or ((s := starts[i]) is not None and s >= start))
                and (last is None or ((li := lasts[i]) is not None and li >= last))
            ]

        return self._cached(("c", refs, start, last), build)

    def select_meters(self, now_us: int, filters: Mapping[str, Any]) -> list[int]:
        visible = bisect.bisect_right(self.meter_created, now_us)
        key = ("m", visible, _canonical(filters))

        def build() -> list[int]:
            refs = filters.get("connection_reference_ids")
            if refs:
                found = {i for ref in refs for i in self.meters_by_ref.get(ref, ())}
                indices: Sequence[int] = sorted(i for i in found if i < visible)
            else:
                indices = range(visible)
            if filters.get("partner_action_required"):
                return []
            after = filters.get("created_after_date_time")
            before = filters.get("created_before_date_time")
            modified = filters.get("last_modified_date_time")
            region = filters.get("transmission_region")
            classification = filters.get("customer_classification")
            meter_ids = set(filters.get("meter_ids") or ())
            partner_refs = set(filters.get("partner_references") or ())
            meter_types = set(filters.get("meter_types") or ())
            out = []
            for i in indices:
                m = self.meters[i]
                # Inclusive: a search "created after <last interaction>" must not drop a meter
                # stamped exactly then.
                if after is not None and self.meter_created[i] < after:
                    continue
                if before is not None and self.meter_created[i] >= before:
                    continue
                if modified is not None and self.meter_updated[i] < modified:
                    continue
                if region is not None and m.get("transmission_region") != region:
                    continue
                if (
                    classification is not None
                    and m.get("customer_classification") != classification
                ):
                    continue
                if meter_ids and m.get("meter_id") not in meter_ids:
                    continue
                if partner_refs and m.get("partner_reference") not in partner_refs:
                    continue
                if meter_types and m.get("meter_type") not in meter_types:
                    continue
                out.append(i)
            return out

        return self._cached(key, build)


def _canonical(value: Any) -> str:
    return _encode(value, order="sorted").decode()


@dataclass(frozen=True)
class _Page:
    """A successful page, rendered late so faults can tamper with its token or body."""

    items: list[bytes]
    records_key: str
    token_key: str
    page: int
    issue: Callable[[int], str]
    offset: int
    next_offset: int | None

    def render(self, *, repeat_token: bool = False) -> bytes:
        parts = [b'{"', self.records_key.encode(), b'":[', b",".join(self.items), b"]"]
        target = self.offset if repeat_token else self.next_offset
        if target is not None:
            parts += [b',"', self.token_key.encode(), b'":', _encode(self.issue(target))]
        parts.append(b"}")
        return b"".join(parts)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, emulator: LeapEmulator) -> None:
        self.emulator = emulator
        super().__init__((HOST, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn): slow, and not needed.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = HOST, self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if self.emulator.verbose:
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LeapEmulator/1"
    sys_version = ""
    timeout = 60
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid 40 ms stalls
    server: _HTTPServer

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.emulator.verbose:
            super().log_message(format, *args)

    # --- request ---------------------------------------------------------------------------

    def _serve(self) -> None:
        emulator = self.server.emulator
        split = urlsplit(self.path)
        self._log_path, self._raw_query = split.path, split.query
        self._log_query = parse_qsl(split.query, keep_blank_values=True, errors="replace")
        self._log_body: Any = None
        try:
            body = self._read_body()
            headers = {k.lower(): v for k, v in self.headers.items()}
            if emulator.admin is not None and emulator.admin.owns(split.path):
                answer = emulator.admin.handle(self.command, split.path, split.query, body)
                self._send(200, answer, _JSON, {}, None)
                return
            page = emulator._route(self.command, split.path, split.query, headers, body)
        except (ApiError, WebhookApiError) as exc:
            self._send(exc.status, exc.body(), _JSON, exc.headers, None)
            return
        fault = emulator.faults.pick(split.path, page.page)
        self._answer(page, fault)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            raise ApiError(411, "Length Required", {"error": "chunked bodies are not supported"})
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "Invalid Content-Length") from None
        body = self.rfile.read(length) if length > 0 else b""
        if body:
            try:
                self._log_body = _decode(body)
            except msgspec.DecodeError:
                self._log_body = body.decode("utf-8", "replace")
        return body

    # --- response --------------------------------------------------------------------------

    def _answer(self, page: _Page, fault: Fault | None) -> None:
        if fault is None:
            self._send(200, page.render(), _JSON, {}, None)
            return
        kind = fault.kind
        if kind is FaultKind.RESET:
            self._reset(fault)
        elif kind is FaultKind.SLOW:
            self.server.emulator._stopping.wait(fault.delay)
            self._send(200, page.render(), _JSON, {}, fault)
        elif kind is FaultKind.MALFORMED:
            body = page.render()
            self._send(200, body[: len(body) // 2], _JSON, {}, fault)
        elif kind is FaultKind.REPEAT_TOKEN:
            self._send(200, page.render(repeat_token=True), _JSON, {}, fault)
        else:
            self._send_fault_status(fault)

    def _send_fault_status(self, fault: Fault) -> None:
        status = fault.status or 500
        headers: dict[str, str] = {}
        if fault.kind is FaultKind.SERVER_ERROR:
            body = _encode(SERVER_ERROR_TEXT)
        else:
            body = ApiError(status, _REASONS.get(status, "Error")).body()
        if fault.kind is FaultKind.RATE_LIMIT and fault.retry_after is not None:
            if fault.retry_after_http_date:
                when = time.time() + fault.retry_after
                headers["Retry-After"] = email.utils.formatdate(when, usegmt=True)
            else:
                headers["Retry-After"] = str(fault.retry_after)
        if fault.body is not None:
            body = fault.body
        self._send(status, body, fault.content_type or _JSON, headers, fault)

    def _record(self, status: int | None, fault: Fault | None) -> None:
        self.server.emulator.request_log.append(
            RecordedRequest(
                method=self.command,
                path=self._log_path,
                query=self._log_query,
                raw_query=self._raw_query,
                body=self._log_body,
                headers={k: v for k, v in self.headers.items()},
                status=status,
                fault=fault.kind.value if fault else None,
            )
        )

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: Mapping[str, str],
        fault: Fault | None,
    ) -> None:
        self._record(status, fault)
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _reset(self, fault: Fault) -> None:
        """Abort the connection: SO_LINGER 0 makes close() send RST instead of FIN."""
        self._record(None, fault)
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            self.connection.close()


_REASONS = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class LeapEmulator:
    """Local stand-in for Leap's partner API; see the package docstring for the contract.

    ``records`` is a count of generated records or a ready list of record dicts (e.g. to serve
    deliberately odd records). ``now`` is the reference time of the generated data and the
    clock that decides which meters exist; it stays fixed until set (``now = ...``/``advance``).
    ``admin=True`` serves the ``/_emulator/`` endpoints of ``testing/admin.py`` as well.
    """

    def __init__(
        self,
        seed: int = 0,
        records: int | Sequence[Mapping[str, Any]] = 500,
        api_key: str = EMULATOR_API_KEY,
        now: datetime | None = None,
        faults: Faults | None = None,
        port: int = 0,
        *,
        wire_names: wire.WireNames | None = None,
        verbose: bool = False,
        admin: bool = False,
    ) -> None:
        self.seed = seed
        self.api_key = api_key
        self.wire = wire_names or wire.WireNames()
        self.faults = faults if faults is not None else Faults()
        self.request_log = RequestLog()
        self.verbose = verbose
        self._initial_now = now_ = as_utc(now)
        self._now_us = to_us(self._initial_now)
        self._port = port
        self._tokens = _Tokens(hashlib.sha256(f"leap-emulator-token:{seed}".encode()).digest())
        with gc_paused():
            if isinstance(records, int):
                record_list, starts, lasts = generate_records_timed(seed, records, now=now_)
                meters = generate_meters(record_list, seed)
                dataset = _Dataset(record_list, meters, starts, lasts)
            else:
                record_list = [dict(r) for r in records]
                dataset = _Dataset(record_list, generate_meters(record_list, seed))
        self._initial_dataset = self._dataset = dataset
        self._journeys: Population | None = None
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.webhooks = WebhookHub(self._authorize)  # subscriptions and deliveries (webhooks.py)
        self.admin: EmulatorAdmin | None = None
        if admin:
            from airflow_provider_leap.testing.admin import EmulatorAdmin

            self.admin = EmulatorAdmin(self)

    # --- data and clock --------------------------------------------------------------------

    @property
    def records(self) -> list[dict[str, Any]]:
        """The Connect records served, in serving order (mutating them changes no answer)."""
        return self._dataset.records

    @property
    def meters(self) -> list[dict[str, Any]]:
        """Every meter, including those whose ``created_at`` is still after ``now``."""
        return self._dataset.meters

    def visible_meters(self) -> list[dict[str, Any]]:
        """The meters that exist at ``now``, in serving order."""
        data = self._dataset
        return data.meters[: bisect.bisect_right(data.meter_created, self._now_us)]

    @property
    def initial_now(self) -> datetime:
        """The reference time the records were generated for (``reset`` returns the clock here)."""
        return self._initial_now

    @property
    def now(self) -> datetime:
        """The emulator's clock: decides which meters exist."""
        return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=self._now_us)

    @now.setter
    def now(self, value: datetime) -> None:
        self._now_us = to_us(as_utc(value))
        self._follow_journeys()

    def advance(self, delta: timedelta) -> datetime:
        """Move the emulator's clock (e.g. 25 h, so meters of recent completions appear)."""
        self._now_us += delta // timedelta(microseconds=1)
        self._follow_journeys()
        return self.now

    def play(self, population: Population) -> None:
        """Serve customers who move over time: from now on the records follow the clock."""
        self._journeys = population
        self._follow_journeys()

    def _follow_journeys(self) -> None:
        if self._journeys is not None:
            self.set_records(self._journeys.records_at(self.now))
            self.webhooks.clock_moved(self._journeys, self.now)

    def set_records(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Serve other records from now on (meters are regenerated from them)."""
        with gc_paused():
            record_list = [dict(r) for r in records]
            self._dataset = _Dataset(record_list, generate_meters(record_list, self.seed))

    # --- observability ---------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every request received since the last reset."""
        return self.request_log.snapshot()

    def reset_requests(self) -> None:
        self.request_log.reset()

    def reset(self) -> None:
        """Back to the start state: no faults, empty request log, initial clock and records."""
        self.faults.clear()
        self.request_log.reset()
        self._now_us = to_us(self._initial_now)
        self._dataset = self._initial_dataset
        self._journeys = None
        self.webhooks.reset()

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> LeapEmulator:
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self._stopping.clear()
        self._server = _HTTPServer(self._port, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"leap-emulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self.webhooks.stop()
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LeapEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL to configure a client with, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{HOST}:{self.port}"

    @property
    def connections_url(self) -> str:
        return self.url + self.wire.connections_path

    @property
    def meters_search_url(self) -> str:
        return self.url + wire.METERS_SEARCH_PATH

    # --- routing ---------------------------------------------------------------------------

    def _route(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> _Page | Answer:
        if self.webhooks.handles(path):
            return self.webhooks.route(method, path, headers, body)
        routes = {self.wire.connections_path: "GET", wire.METERS_SEARCH_PATH: "POST"}
        expected = routes.get(path)
        if expected is None:
            raise ApiError(404, "Not found", {"path": path})
        self._authorize(headers.get("authorization"))
        if method != expected:
            raise ApiError(
                405,
                "Method not allowed",
                {"method": method, "allowed": [expected]},
                {"Allow": expected},
            )
        if expected == "GET":
            return self._connections(query)
        return self._meters(headers, body)

    def _authorize(self, header: str | None) -> None:
        if header is None:
            raise ApiError(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"})
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key or key != key.strip():
            raise ApiError(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            raise ApiError(403, "You do not have the necessary permissions for this operation")

    def _connections(self, query: str) -> _Page:
        names = self.wire
        try:
            pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise ApiError(400, "Invalid query string", {"error": "not UTF-8"}) from None
        singles = (
            names.start_date_param,
            names.last_interaction_param,
            names.page_size_param,
            names.page_token_param,
        )
        values: dict[str, str] = {}
        for key, value in pairs:
            if key in values:
                raise ApiError(400, "Repeated query parameter", {"parameter": key})
            if key in singles:
                values[key] = value
        # The token first: a token sent without URL-encoding splits into odd parameters, and
        # "Invalid page token" says what went wrong better than "Unknown query parameter".
        token = values.get(names.page_token_param)
        offset = 0
        if token is not None:
            offset = self._tokens.open("connections", token, names.page_token_param)
        unknown = sorted({k for k, _ in pairs} - {names.ref_id_param, *singles})
        if unknown:
            raise ApiError(400, "Unknown query parameter", {"parameters": unknown})
        refs = [v for k, v in pairs if k == names.ref_id_param]
        bad_refs = [r for r in refs if not 0 < len(r) <= 256]
        if bad_refs:
            raise ApiError(400, "Invalid reference ID", {names.ref_id_param: bad_refs})
        start = values.get(names.start_date_param)
        last = values.get(names.last_interaction_param)
        start_us = None if start is None else _parse_time(start, names.start_date_param)
        last_us = None if last is None else _parse_time(last, names.last_interaction_param)
        size_text = values.get(names.page_size_param)
        page_size = CONNECTIONS_DEFAULT_PAGE_SIZE
        if size_text is not None:
            if not size_text.isdigit() or not 1 <= int(size_text) <= CONNECTIONS_MAX_PAGE_SIZE:
                raise ApiError(
                    400,
                    "Invalid page size",
                    {names.page_size_param: size_text, "min": 1, "max": CONNECTIONS_MAX_PAGE_SIZE},
                )
            page_size = int(size_text)
        ref_key = tuple(sorted(set(refs)))
        filters = _canonical([list(ref_key), start_us, last_us])
        data = self._dataset
        indices = data.select_connections(ref_key, start_us, last_us)
        if token is not None:
            self._tokens.check_filters("connections", token, filters, names.page_token_param)
            if offset > len(indices):
                raise ApiError(400, "Invalid page token", {names.page_token_param: token})
        end = offset + page_size
        return _Page(
            items=[data.encoded[i] for i in indices[offset:end]],
            records_key=names.records_key,
            token_key=names.next_token_key,
            page=offset // page_size + 1,
            issue=lambda at: self._tokens.issue("connections", at, filters),
            offset=offset,
            next_offset=end if end < len(indices) else None,
        )

    def _meters(self, headers: Mapping[str, str], body: bytes) -> _Page:
        request: Any = {}
        if body.strip():
            content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
            if content_type != _JSON:
                raise ApiError(415, "Unsupported Media Type", {"content_type": content_type})
            try:
                request = _decode(body)
            except msgspec.DecodeError as exc:
                raise ApiError(400, "Invalid JSON body", {"error": str(exc)}) from None
        if not isinstance(request, dict):
            raise ApiError(400, "Invalid request body", {"error": "expected a JSON object"})
        not_emulated = sorted(set(request) & _METER_FIELDS_NOT_EMULATED)
        if not_emulated:
            raise ApiError(
                400,
                "Filter not supported by the emulator",
                {"fields": not_emulated, "note": "in Leap's spec, not emulated"},
            )
        unknown = sorted(set(request) - _METER_FIELDS)
        if unknown:
            raise ApiError(400, "Unknown field", {"fields": unknown})
        filters = _meter_filters(request)
        page_size = request.get("page_size")
        if page_size is None:
            page_size = METERS_MAX_PAGE_SIZE
        if (
            not isinstance(page_size, int)
            or isinstance(page_size, bool)
            or not METERS_MIN_PAGE_SIZE <= page_size <= METERS_MAX_PAGE_SIZE
        ):
            raise ApiError(
                400,
                "Invalid page size",
                {"page_size": page_size, "min": METERS_MIN_PAGE_SIZE, "max": METERS_MAX_PAGE_SIZE},
            )
        key = _canonical(filters)
        data = self._dataset
        indices = data.select_meters(self._now_us, filters)
        offset = 0
        token = request.get("page_token")
        if token is not None:
            if not isinstance(token, str):
                raise ApiError(400, "Invalid page token", {"page_token": token})
            offset = self._tokens.open("meters", token, "page_token")
            self._tokens.check_filters("meters", token, key, "page_token")
            if offset > len(indices):
                raise ApiError(400, "Invalid page token", {"page_token": token})
        end = offset + page_size
        return _Page(
            items=[data.meter_encoded[i] for i in indices[offset:end]],
            records_key="meters",
            token_key="next_page_token",
            page=offset // page_size + 1,
            issue=lambda at: self._tokens.issue("meters", at, key),
            offset=offset,
            next_offset=end if end < len(indices) else None,
        )


def _string_list(request: Mapping[str, Any], name: str, max_items: int) -> list[str] | None:
    value = request.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, f"Invalid {name}", {name: value, "error": "expected a list of strings"})
    if not value:
        raise ApiError(400, f"Invalid {name}", {name: value, "error": "at least one item"})
    if len(value) > max_items:
        raise ApiError(400, f"Too many {name}", {name: len(value), "max": max_items})
    if len(set(value)) != len(value):
        raise ApiError(400, f"Invalid {name}", {"error": "items must be unique"})
    return value


def _meter_filters(request: Mapping[str, Any]) -> dict[str, Any]:
    """Validated filters in canonical form (times as epoch µs); page fields excluded."""
    filters: dict[str, Any] = {}
    refs = _string_list(request, "connection_reference_ids", wire.METERS_MAX_REFERENCE_IDS)
    if refs is not None:
        bad = [r for r in refs if not is_valid_ref_id(r)]
        if bad:
            raise ApiError(400, "Invalid connection_reference_ids", {"invalid": bad})
        filters["connection_reference_ids"] = sorted(refs)
    for name, limit in (("meter_ids", 1000), ("partner_references", 1000), ("meter_types", 20)):
        items = _string_list(request, name, limit)
        if items is not None:
            filters[name] = sorted(items)
    for name in ("created_after_date_time", "created_before_date_time", "last_modified_date_time"):
        value = request.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ApiError(400, "Invalid date", {name: value})
        filters[name] = _parse_time(value, name)
    for name in ("transmission_region", "customer_classification"):
        value = request.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise ApiError(400, f"Invalid {name}", {name: value})
            filters[name] = value
    for name in ("exclude_archived", "partner_action_required"):
        value = request.get(name)
        if value is not None and not isinstance(value, bool):
            raise ApiError(400, f"Invalid {name}", {name: value})
        if value:
            filters[name] = True
    return filters
