"""The wire-name probe: ask a Leap environment which Connect path and names it answers to.

Leap publishes the Connect operation's wire names only behind the partner login, so
``wire.WireNames`` holds assumptions. The probe tries candidate names with page size 1 and
harmless filters (a Reference ID that cannot exist, a date tomorrow), read-only and within
``MAX_REQUESTS``, and tells for each name whether the server honours it, refuses it, or ignores
it, which a lenient server does silently. It never prints the key or a customer's data. No Airflow
import: ``cli.py`` runs it as ``airflow leap probe``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow_provider_leap.client import LeapClient
from airflow_provider_leap.errors import LeapAPIError, LeapAuthError, LeapError
from airflow_provider_leap.retry import RetryPolicy
from airflow_provider_leap.timeutil import format_timestamp
from airflow_provider_leap.wire import NEXT_TOKEN_KEY_FALLBACKS, RECORDS_KEY_FALLBACKS, WireNames

MAX_REQUESTS = 40
PROBE_RETRY = RetryPolicy(max_retries=2, max_wait=30.0)  # a 429 or 503 is waited out, briefly
NO_SUCH_REF_ID = "leap-probe-no-such-reference-id"  # a valid Reference ID no customer has
LONG_AGO = datetime(2000, 1, 1, tzinfo=timezone.utc)

# Names seen in Leap's other APIs and in common REST styles; the connection's own come first.
CANDIDATES: Mapping[str, tuple[str, ...]] = {
    "connections_path": ("/v1.1/connections", "/v1/connections", "/v2/connections",
                         "/v1.1/connect/connections", "/v1.1/connection-statuses"),
    "page_size_param": ("page-size", "pageSize", "page_size", "limit"),
    "page_token_param": ("page-token", "pageToken", "page_token", "next-page-token", "cursor"),
    "ref_id_param": ("ref-id", "refId", "ref_id", "reference-id", "referenceId", "ref-ids"),
    "start_date_param": ("start-date", "startDate", "start_date", "start-date-time"),
    "last_interaction_param": ("last-interaction-date", "lastInteractionDate",
                               "last_interaction_date", "last-interaction-date-time"),
    "records_key": ("connections", *RECORDS_KEY_FALLBACKS, "results", "records"),
    "next_token_key": ("nextPageToken", *NEXT_TOKEN_KEY_FALLBACKS, "nextToken", "next_token",
                       "pageToken"),
}  # fmt: skip
WIRE_FIELDS = tuple(f.name for f in fields(WireNames))


class ProbeStopped(LeapError):
    """The probe cannot go on: no key accepted, no answer, or the request budget spent."""


@dataclass
class Finding:
    """One wire name: what answered (None: nothing did), and how that was told."""

    value: str | None
    how: str


@dataclass
class ProbeReport:
    """Every finding by ``WireNames`` field, and the requests it took."""

    base_url: str
    environment: str
    findings: dict[str, Finding] = field(default_factory=dict)
    requests: int = 0
    stopped: str | None = None  # why the probe ended early

    def found(self) -> dict[str, str]:
        return {k: f.value for k, f in self.findings.items() if f.value is not None}

    def extras(self) -> dict[str, str]:
        """The connection extras that make the provider use what the server answers to."""
        defaults = asdict(WireNames())
        return {k: v for k, v in self.found().items() if v != defaults[k]}

    def differences(self, assumed: Mapping[str, str]) -> dict[str, tuple[str, str | None]]:
        """Field -> (assumed, found) where the server disagrees with ``assumed`` or answered to
        none of the candidates (found None)."""
        return {
            name: (assumed[name], finding.value)
            for name, finding in self.findings.items()
            if name in assumed and finding.value != assumed[name]
        }

    @property
    def complete(self) -> bool:
        return self.stopped is None and all(
            self.findings.get(name, Finding(None, "")).value is not None for name in WIRE_FIELDS
        )

    def to_dict(self, assumed: Mapping[str, str]) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "environment": self.environment,
            "requests": self.requests,
            "stopped": self.stopped,
            "complete": self.complete,  # False: differences and extras cover only what was found
            "findings": {k: asdict(f) for k, f in self.findings.items()},
            "differences": {
                k: {"assumed": a, "found": f} for k, (a, f) in self.differences(assumed).items()
            },
            "extras": self.extras(),
        }


@dataclass
class _Page:
    """What one answer held: the records' key and list, the token's key and value."""

    status: int
    title: str | None = None
    records_key: str | None = None
    records: list[Any] = field(default_factory=list)
    token_key: str | None = None
    token: str | None = None

    @property
    def ref_ids(self) -> list[Any]:
        return [r.get("ref_id") if isinstance(r, dict) else None for r in self.records]

    @property
    def first(self) -> Any:
        return self.records[0] if self.records else None


def _read_page(body: bytes, record_keys: Sequence[str], token_keys: Sequence[str]) -> _Page:
    try:
        data = json.loads(body)
    except ValueError:
        return _Page(200, title="the answer is not JSON")
    if isinstance(data, list):
        return _Page(200, records_key="(a bare JSON array)", records=data)
    if not isinstance(data, dict):
        return _Page(200, title="the answer is neither a JSON object nor an array")
    page = _Page(200)
    lists = [k for k in (*record_keys, *data) if isinstance(data.get(k), list)]
    if lists:
        page.records_key, page.records = lists[0], data[lists[0]]
    tokens = [k for k in (*token_keys, *data) if isinstance(data.get(k), str) and data[k]]
    tokens = [k for k in tokens if k in token_keys or "token" in k.lower() or "cursor" in k]
    if tokens:
        page.token_key, page.token = tokens[0], data[tokens[0]]
    return page


def _ordered(*groups: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(name for group in groups for name in group))


class Probe:
    """One probe run over a client; ``run()`` returns the report (see the module docstring)."""

    def __init__(self, client: LeapClient, ref_id: str | None = None) -> None:
        self.client = client
        self.names = client.config.wire
        self.ref_id = ref_id
        self.report = ProbeReport(client.config.base_url, client.config.environment)
        self.path = self.names.connections_path
        self.size_param: str | None = None
        self.first = _Page(0)  # page 1 at page size 1: the records the later steps compare with
        self.candidates = {
            name: _ordered([getattr(self.names, name), getattr(WireNames(), name)], options)
            for name, options in CANDIDATES.items()
        }

    # -- one request ----------------------------------------------------------------------------

    def get(self, query: Sequence[tuple[str, str]], path: str | None = None) -> _Page:
        if self.report.requests >= MAX_REQUESTS:
            raise ProbeStopped(f"stopped at the budget of {MAX_REQUESTS} requests")
        self.report.requests += 1
        try:
            answer = self.client.request(
                "GET", path or self.path, params=list(query), retry=PROBE_RETRY
            )
        except LeapAuthError as exc:
            raise ProbeStopped(str(exc)) from None
        except LeapAPIError as exc:
            if exc.status is None:  # no answer at all (DNS, TLS, refused, timeout)
                raise ProbeStopped(str(exc)) from None
            return _Page(exc.status, title=exc.title)
        return _read_page(
            answer.body, self.candidates["records_key"], self.candidates["next_token_key"]
        )

    def sized(self, size: int) -> list[tuple[str, str]]:
        return [] if self.size_param is None else [(self.size_param, str(size))]

    def note(self, name: str, value: str | None, how: str) -> None:
        self.report.findings[name] = Finding(value, how)

    # -- the steps --------------------------------------------------------------------------------

    def run(self) -> ProbeReport:
        steps: list[Callable[[], bool]] = [
            self.find_path, self.find_page_size, self.find_page_token, self.find_ref_id,
            lambda: self.find_time_filter("start_date_param"),
            lambda: self.find_time_filter("last_interaction_param"),
        ]  # fmt: skip
        try:
            for step in steps:
                if not step():
                    break
        except ProbeStopped as exc:
            self.report.stopped = str(exc)
        return self.report

    def find_path(self) -> bool:
        size = [(self.names.page_size_param, "1")]
        tried = []
        for path in self.candidates["connections_path"]:
            page = self.get(size, path)
            if page.status < 300 or page.status in (400, 422):
                self.path = path
                self.keys_from(page)
                what = "answered" if page.status < 300 else "exists but refused the query:"
                detail = f"HTTP {page.status}" + (f" {page.title}" if page.title else "")
                self.note("connections_path", path, f"GET {what} {detail}")
                return True
            tried.append(f"{path} ({page.status})")
        self.note("connections_path", None, "no candidate answered: " + ", ".join(tried))
        return False

    def find_page_size(self) -> bool:
        refused = []
        for param in self.candidates["page_size_param"]:
            one = self.get([(param, "1")])
            if one.status >= 300:
                refused.append(f"{param} ({one.status})")
                continue
            self.keys_from(one)
            if len(one.records) != 1:
                refused.append(f"{param} (ignored: {len(one.records)} records for 1)")
                continue
            two = self.get([(param, "2")])
            self.size_param = param
            if len(two.records) == 2:
                self.note("page_size_param", param, "1 asked: 1 record; 2 asked: 2 records")
            else:
                self.note(
                    "page_size_param", param, "1 record for 1; the account holds too few records "
                    "to confirm with 2",
                )  # fmt: skip
            self.first = one
            return True
        self.note("page_size_param", None, "none honoured: " + ", ".join(refused))
        self.first = self.get([])
        self.keys_from(self.first)
        return self.first.status < 300

    def keys_from(self, page: _Page) -> None:
        """The records key and token key, from the first answer that shows them."""
        if page.records_key and "records_key" not in self.report.findings:
            self.note("records_key", page.records_key, "the list in the answer")
        if page.token_key and "next_token_key" not in self.report.findings:
            self.note("next_token_key", page.token_key, "the token beside the records")

    def find_page_token(self) -> bool:
        first = self.first
        if first.token is None or first.first is None:
            self.note("page_token_param", None, "one page only: nothing to follow")
            if "next_token_key" not in self.report.findings:
                self.note("next_token_key", None, "no page had a next-page token")
            return True
        refused = []
        for param in self.candidates["page_token_param"]:
            page = self.get([*self.sized(1), (param, first.token)])
            if page.status >= 300:
                refused.append(f"{param} ({page.status})")
            elif page.first is not None and page.first != first.first:
                self.note("page_token_param", param, "page 2 starts with another record")
                return True
            else:
                refused.append(f"{param} (ignored: page 1 again)")
        self.note("page_token_param", None, "none honoured: " + ", ".join(refused))
        return True

    def matches_nothing(self, param: str, value: str, size: int, what: str) -> str | None:
        """Filter on ``param=value``, which no record matches: None when the answer is empty,
        else why ``param`` is not the filter (refused, or ignored)."""
        page = self.get([*self.sized(size), (param, value)])
        if page.status >= 300:
            return f"{param} ({page.status})"
        if page.records:
            return f"{param} (ignored: {what} gave records)"
        return None

    def find_ref_id(self) -> bool:
        known = self.ref_id or next((r for r in self.first.ref_ids if isinstance(r, str)), None)
        refused = []
        for param in self.candidates["ref_id_param"]:
            problem = self.matches_nothing(param, NO_SUCH_REF_ID, 2, "an unknown ID")
            if problem:
                refused.append(problem)
                continue
            how = "an unknown ID: no record"
            if known is not None:
                both = self.get([*self.sized(2), (param, known), (param, NO_SUCH_REF_ID)])
                if both.status >= 300 or set(both.ref_ids) != {known}:
                    how += "; a known ID with it, repeated: not that ID's records alone"
                    refused.append(f"{param} ({how})")
                    continue
                how += "; repeated with a known ID: that ID's records alone"
            self.note("ref_id_param", param, how)
            return True
        self.note("ref_id_param", None, "none honoured: " + ", ".join(refused))
        return True

    def find_time_filter(self, name: str) -> bool:
        tomorrow = format_timestamp(datetime.now(timezone.utc) + timedelta(days=1))
        refused = []
        for param in self.candidates[name]:
            problem = self.matches_nothing(param, tomorrow, 1, "a date tomorrow")
            if problem:
                refused.append(problem)
                continue
            past = self.get([*self.sized(1), (param, format_timestamp(LONG_AGO))])
            if past.status < 300 and past.records:
                self.note(name, param, "tomorrow: no record; 2000-01-01: records")
                return True
            refused.append(f"{param} (no record for 2000-01-01 either)")
        self.note(name, None, "none honoured: " + ", ".join(refused))
        return True


def probe(client: LeapClient, ref_id: str | None = None) -> ProbeReport:
    """Probe the Connect API behind ``client`` (see the module docstring)."""
    return Probe(client, ref_id).run()


def assumed_names(spec: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The assumed wire names: from an OpenAPI document's ``x-leap-wire-name`` marks (the
    project's ``spec/connect-openapi.assumed.yml``), else the ``WireNames`` defaults."""
    if spec is None:
        return asdict(WireNames())
    names: dict[str, str] = {}

    def walk(node: Any, key: str | None) -> None:
        if isinstance(node, dict):
            mark = node.get("x-leap-wire-name")
            if isinstance(mark, str) and mark in WIRE_FIELDS:
                names[mark] = str(node.get("name") or key)
            for child_key, child in node.items():
                walk(child, child_key)
        elif isinstance(node, list):
            for child in node:
                walk(child, key)

    walk(spec, None)
    return names


def format_report(report: ProbeReport, assumed: Mapping[str, str], source: str) -> str:
    """The report as a person reads it: a table, the differences, the extras to set."""
    lines = [
        f"Leap Connect API at {report.base_url} ({report.environment}): "
        f"{report.requests} read-only request(s)."
    ]
    if report.stopped:
        lines.append(f"Stopped early: {report.stopped}")
    width = max(len(name) for name in WIRE_FIELDS)
    lines.append("")
    for name in WIRE_FIELDS:
        finding = report.findings.get(name)
        value = "(not tried)" if finding is None else finding.value or "(none found)"
        how = "" if finding is None else finding.how
        lines.append(f"{name:<{width}}  {value:<24}  {how}")
    differences = report.differences(assumed)
    unknown = [name for name in WIRE_FIELDS if name not in report.findings]
    same = "no difference in what was checked." if unknown else "no difference."
    if len(unknown) == len(WIRE_FIELDS):
        same = "nothing was checked."
    lines += ["", f"Against {source}: " + ("" if differences else same)]
    for name, (expected, found) in differences.items():
        lines.append(f"  {name}: assumed {expected!r}, server: {found or 'none of the candidates'}")
    extras = report.extras()
    lines.append("")
    if extras:
        lines.append("Set these extras on the Airflow connection (merged into its Extra JSON):")
        lines.append("  " + json.dumps(extras))
    if not report.complete:
        lines.append(
            "Not every wire name was found, so this is no verdict on the others"
            + (f" (not tried: {', '.join(unknown)})" if unknown else "")
            + ": fix what stopped the probe, or set those extras by hand."
        )
    elif not extras:
        lines.append("The provider's default wire names fit: no extra to set.")
    return "\n".join(lines)
