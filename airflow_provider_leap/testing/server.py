"""The Leap emulator: a real HTTP server speaking Leap's Meters API and the assumed Connect API.

Held to two contracts, both checked in CI with schemathesis: Leap's published
``spec/leap/meters-openapi.yml`` for ``POST /v2/meters/search``, and the project's assumed
``spec/connect-openapi.assumed.yml`` for the Connect endpoint. Every request those specs call
valid is answered 200; a request they call invalid is a 400 in Leap's error shape
``{"title", "status", "details"}``.

On Connect, where the contract is ours, the emulator is strict where strictness exposes client
bugs: unknown or repeated query parameters, and page tokens not URL-encoded exactly once, are
400s. Request handling order: unknown path -> 404; auth -> 401/403; undeclared method -> 405
with ``Allow``; validation -> 400; only then faults (see ``faults.py``) and the normal answer.
"""

from __future__ import annotations

import base64
import bisect
import email.utils
import hmac
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import msgspec

from airflow_provider_leap import wire
from airflow_provider_leap.gc_pause import gc_paused
from airflow_provider_leap.refids import is_valid_ref_id
from airflow_provider_leap.testing import EMULATOR_API_KEY
from airflow_provider_leap.testing.data import (
    REGIONS,
    as_utc,
    from_us,
    generate_meters,
    generate_records,
    meter_created_us,
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

# Page tokens: "lp1/" + base64(endpoint, offset) + " &%+". The fixed characters (and base64's
# "=" padding) change meaning unless the token is URL-encoded exactly once.
_TOKEN_HEAD, _TOKEN_TAIL = "lp1/", " &%+"
_SCOPES = {"connections": 1, "meters": 2}

_JSON = "application/json"
_encode = msgspec.json.encode
_decode = msgspec.json.decode


class ApiError(Exception):
    """An error answer in Leap's v2 shape ``{"title", "status", "details"}``."""

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
    at: float = field(default_factory=time.monotonic)  # when answered (trigger tests, bench)


class RequestLog:
    """Thread-safe list of ``RecordedRequest``; tests count requests per poke with it.

    A request is logged when answered. One that arrived before the last ``reset`` (a slow answer
    a client gave up on) is not logged after it, so it never lands in the next test's log.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[RecordedRequest] = []
        self.generation = 0  # the number of resets so far

    def append(self, item: RecordedRequest, generation: int) -> None:
        """Log ``item``, unless the log was reset since its request (of ``generation``) came."""
        with self._lock:
            if generation == self.generation:
                self._items.append(item)

    def snapshot(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._items)

    def reset(self) -> None:
        with self._lock:
            self._items.clear()
            self.generation += 1

    def count(self, path: str | None = None, *, status: int | None = None) -> int:
        """Requests seen, optionally only those to ``path`` and/or answered with ``status``."""
        return sum(
            1
            for r in self.snapshot()
            if (path is None or r.path == path) and (status is None or r.status == status)
        )


def _issue_token(scope: str, offset: int) -> str:
    raw = struct.pack(">BI", _SCOPES[scope], offset)  # 5 bytes: base64 always ends in "="
    return _TOKEN_HEAD + base64.b64encode(raw).decode("ascii") + _TOKEN_TAIL


def _open_token(scope: str, token: str, param: str) -> int:
    """The offset a token encodes; 400 unless this server issued it for this endpoint."""
    if token.startswith(_TOKEN_HEAD) and token.endswith(_TOKEN_TAIL):
        try:
            raw = base64.b64decode(token[len(_TOKEN_HEAD) : -len(_TOKEN_TAIL)], validate=True)
            kind, offset = struct.unpack(">BI", raw)
        except (ValueError, struct.error):
            pass
        else:
            if kind == _SCOPES[scope]:
                return int(offset)
    reason = "not a page token this server issued (was it URL-encoded exactly once?)"
    raise ApiError(400, "Invalid page token", {param: token, "reason": reason})


def _time(value: str, name: str) -> int:
    parsed = parse_utc(value)
    if parsed is None:
        error = "expected an RFC 3339 date-time with an offset, e.g. 2024-10-21T11:43:05Z"
        raise ApiError(400, "Invalid date", {name: value, "error": error})
    return parsed


class _Dataset:
    """Records and meters, each serialised once, with the indices the filters need."""

    def __init__(self, records: list[dict[str, Any]], meters: list[dict[str, Any]]) -> None:
        self.records = records
        self.encoded = [_encode(r) for r in records]
        self.starts = [_record_time(r, "start_date_time_utc") for r in records]
        self.lasts = [_record_time(r, "last_interaction_date_time_utc") for r in records]
        self.by_ref: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            self.by_ref.setdefault(str(r.get("ref_id")), []).append(i)
        self.meters = sorted(meters, key=meter_created_us)  # stable: equal times keep order
        self.meter_encoded = [_encode(m) for m in self.meters]
        self.meter_created = [meter_created_us(m) for m in self.meters]

    def select_connections(
        self, refs: Sequence[str], start: int | None, last: int | None
    ) -> Sequence[int]:
        if refs:
            indices: Sequence[int] = sorted({i for ref in refs for i in self.by_ref.get(ref, ())})
        else:
            indices = range(len(self.records))
        if start is None and last is None:
            return indices  # no scan per page when paging through everything
        starts, lasts = self.starts, self.lasts
        return [
            i
            for i in indices
            if (start is None or ((s := starts[i]) is not None and s >= start))
            and (last is None or ((li := lasts[i]) is not None and li >= last))
        ]

    def select_meters(self, now_us: int, request: Mapping[str, Any]) -> list[int]:
        visible = bisect.bisect_right(self.meter_created, now_us)
        after, before, modified = (
            None if request.get(name) is None else _time(request[name], name)
            for name in _METER_TIME_FILTERS
        )
        if request.get("partner_action_required"):
            return []  # no emulated meter needs partner action
        wanted = {name: set(request[name]) for name in _METER_LIST_FILTERS if request.get(name)} | {
            name: {request[name]} for name in _METER_EQUAL_FILTERS if name in request
        }
        out = []
        for i in range(visible):
            meter = self.meters[i]
            # Inclusive: a search "created after <last interaction>" keeps a meter made then.
            if after is not None and self.meter_created[i] < after:
                continue
            if before is not None and self.meter_created[i] >= before:
                continue
            if modified is not None and _meter_updated(meter) < modified:
                continue
            if all(_meter_matches(meter, name, values) for name, values in wanted.items()):
                out.append(i)
        return out


def _record_time(record: Mapping[str, Any], key: str) -> int | None:
    value = record.get(key)
    return parse_utc(value) if isinstance(value, str) else None


def _meter_updated(meter: Mapping[str, Any]) -> int:
    audit = meter.get("audit")
    updated = audit.get("updated_at") if isinstance(audit, Mapping) else None
    return (parse_utc(updated) if isinstance(updated, str) else None) or meter_created_us(meter)


def _meter_matches(meter: Mapping[str, Any], name: str, wanted: set[Any]) -> bool:
    """Whether the meter's field for filter ``name`` holds (one of) the wanted values."""
    value = meter.get(_METER_FILTER_FIELDS.get(name, name))
    values = value if isinstance(value, list) else [value]
    return any(v in wanted for v in values if isinstance(v, str))


# --- Leap's MeterFilterRequest (meters-openapi.yml), checked field by field ------------------

_UUID = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


def _one_of(words: str) -> Callable[[Any], bool]:
    return frozenset(words.split()).__contains__


def _any_string(value: str) -> bool:
    return True


_ENUMS: Mapping[str, Callable[[Any], bool]] = {
    "transmission_region": frozenset(REGIONS).__contains__,
    "customer_classification": _one_of("RESIDENTIAL COMMERCIAL"),
}
# List filters: (min items, max items, item check); every list holds unique items.
_METER_LISTS: Mapping[str, tuple[int, int, Callable[[Any], bool]]] = {
    "meter_ids": (0, 1000, lambda v: bool(_UUID.fullmatch(v))),
    "partner_references": (1, 1000, is_valid_ref_id),
    "connection_reference_ids": (1, wire.METERS_MAX_REFERENCE_IDS, is_valid_ref_id),
    "customer_groups": (1, 20, _any_string),
    "tags": (1, 20, _any_string),
    "meter_types": (1, 20, _one_of("UTILITY_METER SUBMETER DEVICE")),
    "global_enrollment_statuses": (
        1,
        5,
        _one_of("ACTIVE ELIGIBLE INELIGIBLE NOT_PARTICIPATING PENDING"),
    ),
    "load_types": (
        1,
        20,
        _one_of(
            "HVAC EV_CHARGING BATTERY_STORAGE COLD_STORAGE PUMPING WATER_HEATING "
            "BUILDING_AUTOMATION GENERATION MANUFACTURING LIGHTING OTHER"
        ),
    ),
    "action_type": (
        1,
        20,
        _one_of(
            "IS_AUTHORIZED DOCUMENTS_SIGNED HAS_AMI NOT_ENROLLED_IN_CONFLICTING_PROGRAM "
            "PARTICIPATING HAS_MARKET_REGISTRATION NO_MISSING_FIELDS GENERATOR ADDRESS "
            "HAS_NOMINATIONS HAS_BIDDING_STRATEGY IS_ELIGIBLE IS_ASSIGNED_TO_A_RESOURCE "
            "MEETS_EXTRA_PROGRAM_REQUIREMENTS"
        ),
    ),
}
_METER_TIME_FILTERS = (
    "created_after_date_time",
    "created_before_date_time",
    "last_modified_date_time",
)
_METER_EQUAL_FILTERS = ("transmission_region", "customer_classification")
# Applied by membership; global_enrollment_statuses and action_type are accepted and ignored:
# a meter in Leap's response schema carries neither, so there is nothing to match them on.
_METER_LIST_FILTERS = (
    "meter_ids",
    "partner_references",
    "connection_reference_ids",
    "meter_types",
    "load_types",
    "customer_groups",
    "tags",
)
_METER_FILTER_FIELDS = {
    "meter_ids": "meter_id",
    "partner_references": "partner_reference",
    "connection_reference_ids": "connection_references",
    "meter_types": "meter_type",
    "customer_groups": "customer_group",
}


def _valid_meter_field(name: str, value: Any) -> bool:
    """Whether ``value`` fits Leap's schema for search field ``name`` (unknown names: yes)."""
    if name in _METER_LISTS:
        low, high, item_ok = _METER_LISTS[name]
        return (
            isinstance(value, list)
            and low <= len(value) <= high
            and all(isinstance(v, str) and item_ok(v) for v in value)
            and len(set(value)) == len(value)
        )
    if name in _ENUMS:
        return isinstance(value, str) and _ENUMS[name](value)
    if name in _METER_TIME_FILTERS:
        return isinstance(value, str) and parse_utc(value) is not None
    if name in ("partner_action_required", "exclude_archived"):
        return isinstance(value, bool)
    if name == "page_token":
        return isinstance(value, str)
    if name == "page_size":
        return type(value) is int and METERS_MIN_PAGE_SIZE <= value <= METERS_MAX_PAGE_SIZE
    return True  # not in Leap's schema, which allows other fields: accepted and ignored


@dataclass(frozen=True)
class _Page:
    """A successful page, rendered late so faults can tamper with its token or body."""

    items: list[bytes]
    records_key: str
    token_key: str
    scope: str
    page: int
    offset: int
    next_offset: int | None

    def render(self, *, repeat_token: bool = False) -> bytes:
        parts = [b'{"', self.records_key.encode(), b'":[', b",".join(self.items), b"]"]
        target = self.offset if repeat_token else self.next_offset
        if target is not None:
            token = _encode(_issue_token(self.scope, target))
            parts += [b',"', self.token_key.encode(), b'":', token]
        parts.append(b"}")
        return b"".join(parts)


def _page(
    items: list[bytes],
    indices: Sequence[int],
    offset: int,
    size: int,
    scope: str,
    keys: tuple[str, str],
) -> _Page:
    end = offset + size  # a token past the end (other filters than it came from): an empty page
    return _Page(
        items=[items[i] for i in indices[offset:end]],
        records_key=keys[0],
        token_key=keys[1],
        scope=scope,
        page=offset // size + 1,
        offset=offset,
        next_offset=end if end < len(indices) else None,
    )


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
    # Errors http.server answers itself (a malformed request line...) in Leap's shape too.
    error_content_type = _JSON
    error_message_format = '{"title": "%(message)s", "status": %(code)d, "details": {}}'
    server: _HTTPServer

    def __getattr__(self, name: str) -> Any:
        # Every method reaches the router, so an undeclared one (PUT, TRACE...) gets a JSON 405
        # with Allow instead of http.server's HTML 501.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.emulator.verbose:
            super().log_message(format, *args)

    def _serve(self) -> None:
        emulator = self.server.emulator
        self._generation = emulator.request_log.generation
        split = urlsplit(self.path)
        self._log_path, self._raw_query = split.path, split.query
        self._log_query = parse_qsl(split.query, keep_blank_values=True, errors="replace")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        try:
            self._log_body: Any = _decode(body) if body else None
        except msgspec.DecodeError:
            self._log_body = body.decode("utf-8", "replace")
        try:
            headers = {k.lower(): v for k, v in self.headers.items()}
            if emulator.admin is not None and emulator.admin.owns(split.path):
                answer = emulator.admin.handle(self.command, split.path, split.query, body)
                self._send(200, answer, _JSON, {}, None)
                return
            page = emulator.route(self.command, split.path, split.query, headers, body)
        except (ApiError, WebhookApiError) as exc:
            self._send(exc.status, exc.body(), _JSON, exc.headers, None)
            return
        fault = emulator.faults.pick(split.path, page.page)
        if fault is None:
            self._send(200, page.render(), _JSON, {}, None)
        elif fault.kind is FaultKind.RESET:
            self._reset(fault)
        elif fault.kind is FaultKind.SLOW:
            emulator.stopping.wait(fault.delay)
            self._send(200, page.render(), _JSON, {}, fault)
        elif fault.kind is FaultKind.MALFORMED:
            rendered = page.render()
            self._send(200, rendered[: len(rendered) // 2], _JSON, {}, fault)
        elif fault.kind is FaultKind.REPEAT_TOKEN:
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
                headers=dict(self.headers.items()),
                status=status,
                fault=fault.kind.value if fault else None,
            ),
            self._generation,
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
        self.stopping = threading.Event()
        self._initial_now = as_utc(now)
        self._now_us = to_us(self._initial_now)
        self._port = port
        self._journeys: Population | None = None
        if isinstance(records, int):
            with gc_paused():
                records = generate_records(seed, records, now=self._initial_now)
        self.set_records(records)
        self._initial_dataset = self._dataset
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
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
        return from_us(self._now_us)

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

    def set_records(
        self,
        records: Sequence[Mapping[str, Any]],
        meters: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Serve other records from now on, and ``meters`` (default: generated from them).

        Meters are served in ``audit.created_at`` order and, like generated ones, only once the
        clock has reached it (a meter without a usable ``created_at`` always exists).
        """
        with gc_paused():
            record_list = [dict(r) for r in records]
            meter_list = [dict(m) for m in meters] if meters is not None else None
            self._dataset = _Dataset(
                record_list,
                generate_meters(record_list, self.seed) if meter_list is None else meter_list,
            )

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
        self.stopping.clear()
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
        self.stopping.set()
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

    def route(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> _Page | Answer:
        """Answer one request: a page to send (a subscription API answer for ``/v1.1/webhooks``),
        or an ``ApiError`` (a ``WebhookApiError`` there)."""
        if self.webhooks.handles(path):
            return self.webhooks.route(method, path, headers, body)
        routes = {self.wire.connections_path: "GET", wire.METERS_SEARCH_PATH: "POST"}
        expected = routes.get(path)
        if expected is None:
            raise ApiError(404, "Not found", {"path": path})
        self._authorize(headers.get("authorization"))
        if method != expected:
            allowed = {"allowed": [expected], "method": method}
            raise ApiError(405, "Method not allowed", allowed, {"Allow": expected})
        if expected == "GET":
            return self._connections(query)
        return self._meters(body)

    def _authorize(self, header: str | None) -> None:
        scheme, _, key = (header or "").partition(" ")
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
        offset = 0 if token is None else _open_token("connections", token, names.page_token_param)
        unknown = sorted({k for k, _ in pairs} - {names.ref_id_param, *singles})
        if unknown:
            raise ApiError(400, "Unknown query parameter", {"parameters": unknown})
        refs = [v for k, v in pairs if k == names.ref_id_param]
        bad_refs = [r for r in refs if not is_valid_ref_id(r)]
        if bad_refs:
            raise ApiError(400, "Invalid reference ID", {names.ref_id_param: bad_refs})
        start, last = (
            None if values.get(name) is None else _time(values[name], name)
            for name in (names.start_date_param, names.last_interaction_param)
        )
        size_text = values.get(names.page_size_param, str(CONNECTIONS_DEFAULT_PAGE_SIZE))
        if not re.fullmatch(r"[0-9]+", size_text) or not (
            1 <= int(size_text) <= CONNECTIONS_MAX_PAGE_SIZE
        ):
            limits = {"min": 1, "max": CONNECTIONS_MAX_PAGE_SIZE}
            raise ApiError(400, "Invalid page size", {names.page_size_param: size_text, **limits})
        data = self._dataset
        indices = data.select_connections(refs, start, last)
        keys = (names.records_key, names.next_token_key)
        return _page(data.encoded, indices, offset, int(size_text), "connections", keys)

    def _meters(self, body: bytes) -> _Page:
        try:
            request = _decode(body) if body.strip() else {}  # the body is optional in the spec
        except msgspec.DecodeError as exc:
            raise ApiError(400, "Invalid JSON body", {"error": str(exc)}) from None
        if not isinstance(request, dict):
            raise ApiError(400, "Invalid request body", {"error": "expected a JSON object"})
        invalid = sorted(
            name for name, value in request.items() if not _valid_meter_field(name, value)
        )
        if invalid:
            raise ApiError(400, "Invalid request body", {"fields": invalid})
        token = request.get("page_token")
        offset = 0 if token is None else _open_token("meters", token, "page_token")
        data = self._dataset
        indices = data.select_meters(self._now_us, request)
        size = request.get("page_size", METERS_MAX_PAGE_SIZE)
        keys = ("meters", "next_page_token")
        return _page(data.meter_encoded, indices, offset, size, "meters", keys)
