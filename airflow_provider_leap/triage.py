"""Triage of Connect records into follow-up buckets: TRIAGE.md's decision table, row by row.

The outcome depends on the arguments only: ``triage`` never reads the clock, never logs per
record and never raises because of a record. Unknown enumeration values and unreadable records
are data, reported in ``needs_review``, so one bad record cannot hide the others from the
follow-up tasks. Items are small JSON-ready dicts, because they travel through Airflow's XCom
to the email and CRM tasks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from airflow_provider_leap.gc_pause import gc_paused
from airflow_provider_leap.models import (
    NOT_REQUIRED,
    ConnectionStatus,
    ConnectRecord,
    UtilityConnection,
    UtilityStatus,
    connect_record_from_mapping,
)

__all__ = [
    "BUCKETS",
    "DEFAULT_AGREEMENT_DONE_STATUSES",
    "DEFAULT_QUIET_PERIOD",
    "REASON_SEPARATOR",
    "UNKNOWN_ERROR_CODE",
    "Bucket",
    "Reason",
    "TriageResult",
    "format_reason",
    "split_reason",
    "triage",
]


class Bucket(str, Enum):
    """Bucket names, as the keys of ``TriageResult.buckets``."""

    COMPLETED = "completed"
    NOT_STARTED = "not_started"
    UTILITY_NOT_CONNECTED = "utility_not_connected"
    UTILITY_ERROR = "utility_error"
    AGREEMENTS_PENDING = "agreements_pending"
    OTHER_UTILITY = "other_utility"
    TOO_RECENT = "too_recent"
    NEEDS_REVIEW = "needs_review"


class Reason(str, Enum):
    """Item ``reason`` codes; the parameterised ones are prefixes, see ``format_reason``."""

    MALFORMED = "malformed"
    UNKNOWN_STATUS = "unknown_status"  # unknown_status:<connection_status>
    COMPLETED = "completed"
    QUIET_PERIOD = "quiet_period"
    NOT_STARTED = "not_started"
    NO_UTILITIES = "no_utilities"
    UNKNOWN_UTILITY_STATUS = "unknown_utility_status"  # unknown_utility_status:<status>
    ERROR = "error"  # error:<first error_code>
    OTHER_UTILITY = "other_utility"
    NOT_CONNECTED = "not_connected"
    AGREEMENT = "agreement"  # agreement:<first outstanding field>
    STATUS_MISMATCH = "status_mismatch"


# Plain strings (not enum members) so bucket keys stay plain in XCom and in f-strings.
BUCKETS: tuple[str, ...] = tuple(bucket.value for bucket in Bucket)
DEFAULT_QUIET_PERIOD = timedelta(hours=1)
DEFAULT_AGREEMENT_DONE_STATUSES: frozenset[str] = frozenset({"COMPLETED", "SIGNED", "ACCEPTED"})
UNKNOWN_ERROR_CODE = "UNKNOWN"
"""Shown for a utility in ERROR without an ``error_code``, and for a utility without a name."""

REASON_SEPARATOR = ":"
_PARAMETERISED = frozenset(
    {Reason.UNKNOWN_STATUS, Reason.UNKNOWN_UTILITY_STATUS, Reason.ERROR, Reason.AGREEMENT}
)


def format_reason(prefix: Reason, value: object) -> str:
    """``error:<CODE>`` and the like; a missing value leaves the part after the colon empty."""
    if prefix not in _PARAMETERISED:
        raise ValueError(f"{prefix.value!r} takes no value")
    return f"{prefix.value}{REASON_SEPARATOR}{_text(value)}"


def split_reason(reason: str) -> tuple[Reason, str | None]:
    """Inverse of ``format_reason``: lets a downstream task pick its message by the prefix."""
    prefix, separator, value = reason.partition(REASON_SEPARATOR)
    return Reason(prefix), (value if separator else None)


@dataclass
class TriageResult:
    """Every bucket (possibly empty) and the run's counts."""

    buckets: dict[str, list[dict[str, Any]]]
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The whole result as one JSON-ready dict (for XCom)."""
        return {"buckets": self.buckets, "summary": self.summary}


# Enum values as plain module constants: the per-record path compares str to str only.
_COMPLETED = ConnectionStatus.COMPLETED.value
_NOT_STARTED = ConnectionStatus.NOT_STARTED.value
_KNOWN_STATUSES = frozenset(status.value for status in ConnectionStatus)
_CONNECTED = UtilityStatus.CONNECTED.value
_NOT_CONNECTED = UtilityStatus.NOT_CONNECTED.value
_UTILITY_ERROR = UtilityStatus.ERROR.value

_B_COMPLETED = Bucket.COMPLETED.value
_B_NOT_STARTED = Bucket.NOT_STARTED.value
_B_UTILITY_NOT_CONNECTED = Bucket.UTILITY_NOT_CONNECTED.value
_B_UTILITY_ERROR = Bucket.UTILITY_ERROR.value
_B_AGREEMENTS_PENDING = Bucket.AGREEMENTS_PENDING.value
_B_OTHER_UTILITY = Bucket.OTHER_UTILITY.value
_B_TOO_RECENT = Bucket.TOO_RECENT.value
_B_NEEDS_REVIEW = Bucket.NEEDS_REVIEW.value

_R_MALFORMED = Reason.MALFORMED.value
_R_COMPLETED = Reason.COMPLETED.value
_R_QUIET_PERIOD = Reason.QUIET_PERIOD.value
_R_NOT_STARTED = Reason.NOT_STARTED.value
_R_NO_UTILITIES = Reason.NO_UTILITIES.value
_R_OTHER_UTILITY = Reason.OTHER_UTILITY.value
_R_NOT_CONNECTED = Reason.NOT_CONNECTED.value
_R_STATUS_MISMATCH = Reason.STATUS_MISMATCH.value
_P_UNKNOWN_STATUS = Reason.UNKNOWN_STATUS.value + REASON_SEPARATOR
_P_UNKNOWN_UTILITY_STATUS = Reason.UNKNOWN_UTILITY_STATUS.value + REASON_SEPARATOR
_P_ERROR = Reason.ERROR.value + REASON_SEPARATOR
_P_AGREEMENT = Reason.AGREEMENT.value + REASON_SEPARATOR

_UTC = timezone.utc
_fromisoformat = datetime.fromisoformat
# Text already in the canonical ISO-8601 UTC form is reused as is: isoformat() costs more than
# the rest of a record's triage. _SEPARATORS covers Leap's usual form cheaply: once the text has
# parsed, "-" at 4 and 7, "T" at 10, ":" at 13 and 16 and "Z" at 19 leave only YYYY-MM-DDTHH:MM:SSZ.
_SEPARATORS = "--T::Z"
_CANONICAL_UTC = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z"
).fullmatch

_Decision = tuple[str, str, dict[str, Any] | None]  # bucket, reason, bucket-specific fields


def _text(value: object) -> str:
    """A value as it goes after a reason's colon (an absent value becomes the empty string)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else repr(value)


def _parse(text: object) -> datetime | None:
    """Like ``models.parse_timestamp`` (always UTC) but faster, and None instead of overflowing.

    Python 3.11's ``fromisoformat`` reads the ``Z`` suffix itself; 3.10 falls back to ``+00:00``.
    """
    if not isinstance(text, str):
        return None
    try:
        when = _fromisoformat(text)
    except ValueError:
        if text[-1:] not in ("Z", "z"):
            return None
        try:
            when = _fromisoformat(text[:-1] + "+00:00")
        except ValueError:
            return None
    tz = when.tzinfo
    if tz is _UTC:
        return when
    if tz is None:
        return when.replace(tzinfo=_UTC)
    try:
        return when.astimezone(_UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 has no UTC equivalent
        return None


def _iso(text: str | None, when: datetime) -> str:
    """ISO-8601 UTC with a ``Z``: the source text when already so, else ``when`` formatted."""
    if text is not None and (
        (len(text) == 20 and text[4::3] == _SEPARATORS) or _CANONICAL_UTC(text)
    ):
        return text
    return when.isoformat()[:-6] + "Z"  # when is UTC: isoformat() ends with +00:00


def _utilities(record: ConnectRecord, done: frozenset[str]) -> _Decision:
    """Rows 4 (unknown utility status) to 9, for a PARTIAL or ERROR record with utilities.

    Plain loops, no comprehensions or ``any()``: this runs for most records.
    """
    utilities = record.utility_connections
    required: list[UtilityConnection] = []
    other_connected = False  # a utility not marked required is CONNECTED
    for utility in utilities:
        if utility.utility_is_required is True:
            required.append(utility)
        elif utility.status == _CONNECTED:
            other_connected = True
    candidates: Sequence[UtilityConnection] = required
    if not required and not other_connected:
        # Nothing marked required: any one CONNECTED utility will do, and none is.
        candidates = utilities
    missing: list[str] = []
    error_codes: dict[str, str] = {}
    first_code: str | None = None
    for utility in candidates:
        status = utility.status
        if status == _CONNECTED:
            continue
        name = utility.utility_name
        if not name or not isinstance(name, str):
            name = UNKNOWN_ERROR_CODE
        if status == _NOT_CONNECTED:
            missing.append(name)
        elif status == _UTILITY_ERROR:
            missing.append(name)
            code = utility.error_code
            if not code or not isinstance(code, str):
                code = UNKNOWN_ERROR_CODE
            if name not in error_codes:
                error_codes[name] = code
            if first_code is None:
                first_code = code
        else:  # row 4 outranks row 5 wherever the unknown status sits in the list
            return _B_NEEDS_REVIEW, _P_UNKNOWN_UTILITY_STATUS + _text(status), None
    if first_code is not None:
        details = {"error_codes": error_codes, "utilities": missing}
        return _B_UTILITY_ERROR, _P_ERROR + first_code, details
    if missing:
        if other_connected:  # with nothing required, this already met the requirement above
            return _B_OTHER_UTILITY, _R_OTHER_UTILITY, {"utilities": missing}
        return _B_UTILITY_NOT_CONNECTED, _R_NOT_CONNECTED, {"utilities": missing}
    outstanding: list[str] = []
    for field, value in record.agreements.items():
        if value != NOT_REQUIRED and not (isinstance(value, str) and value in done):
            outstanding.append(field)
    if outstanding:
        return _B_AGREEMENTS_PENDING, _P_AGREEMENT + outstanding[0], {"agreements": outstanding}
    return _B_NEEDS_REVIEW, _R_STATUS_MISMATCH, None


def _decide(
    record: ConnectRecord, when: datetime | None, cutoff: datetime | None, done: frozenset[str]
) -> _Decision:
    """TRIAGE.md's table, first match wins; ``cutoff`` None means everything is too recent."""
    status = record.connection_status
    ref_id = record.ref_id
    record_id = record.id
    region = record.transmission_region
    if (
        record.parse_error is not None
        or when is None
        or not ref_id
        or not status
        or not isinstance(ref_id, str)
        or not isinstance(status, str)
        or not (record_id is None or isinstance(record_id, str))
        or not (region is None or isinstance(region, str))
    ):
        return _B_NEEDS_REVIEW, _R_MALFORMED, None
    if status not in _KNOWN_STATUSES:
        return _B_NEEDS_REVIEW, _P_UNKNOWN_STATUS + status, None
    if status == _COMPLETED:
        return _B_COMPLETED, _R_COMPLETED, None
    if cutoff is None or when > cutoff:  # now - when < quiet_period, the future included
        return _B_TOO_RECENT, _R_QUIET_PERIOD, None
    if status == _NOT_STARTED:
        return _B_NOT_STARTED, _R_NOT_STARTED, None
    if not record.utility_connections:
        return _B_NEEDS_REVIEW, _R_NO_UTILITIES, None
    return _utilities(record, done)


_COMMON_TEXT_FIELDS = ("id", "ref_id", "transmission_region", "connection_status")


def _malformed_item(obj: object, last_interaction: str | None = None) -> dict[str, Any]:
    """Item for input that is not a record at all, or whose triage failed unexpectedly.

    Keeps whichever identifying strings can be read, so a person can find the record.
    """
    item: dict[str, Any] = dict.fromkeys(_COMMON_TEXT_FIELDS)
    try:
        if isinstance(obj, ConnectRecord):
            values = [getattr(obj, name) for name in _COMMON_TEXT_FIELDS]
        elif isinstance(obj, Mapping):
            values = [obj.get(name) for name in _COMMON_TEXT_FIELDS]
        else:
            values = [None] * len(_COMMON_TEXT_FIELDS)
        for name, value in zip(_COMMON_TEXT_FIELDS, values, strict=True):
            if isinstance(value, str):
                item[name] = value
    except Exception:  # an exotic Mapping whose get() fails: keep the None placeholders
        pass
    item["last_interaction"] = last_interaction
    item["reason"] = _R_MALFORMED
    return item


def _mapping_to_record(obj: object) -> ConnectRecord | None:
    """One code path: API mappings become ``ConnectRecord``s; None for anything else."""
    if isinstance(obj, Mapping):
        return connect_record_from_mapping(obj if isinstance(obj, dict) else dict(obj))
    return None


def triage(
    records: Iterable[Mapping[str, Any] | ConnectRecord],
    *,
    now: datetime,
    quiet_period: timedelta = DEFAULT_QUIET_PERIOD,
    agreement_done_statuses: Iterable[str] = DEFAULT_AGREEMENT_DONE_STATUSES,
) -> TriageResult:
    """Sort Connect records into TRIAGE.md's buckets, one bucket per record (latest per ``id``).

    ``records`` (API mappings, ``ConnectRecord``s, or both) is consumed once, as a stream.
    ``now`` must be aware: the function never reads the clock, so runs are reproducible.

    Every item has ``id``, ``ref_id``, ``transmission_region``, ``connection_status``,
    ``last_interaction`` (``...Z`` or None) and ``reason``; only where they apply, ``error_codes``
    (utility_error), ``utilities`` (utility_error, utility_not_connected, other_utility) and
    ``agreements`` (agreements_pending). ``summary`` has ``counts`` per bucket,
    ``records_read``, ``duplicates_dropped``, ``malformed``, ``now`` and
    ``quiet_period_seconds``.
    """
    if not isinstance(now, datetime):
        raise TypeError(f"now must be a datetime, not {type(now).__name__}")
    if now.utcoffset() is None:
        raise ValueError(
            "now must be an aware datetime (e.g. datetime.now(timezone.utc)); got a naive one, "
            "which cannot be compared with Leap's UTC timestamps"
        )
    if not isinstance(quiet_period, timedelta):
        raise TypeError(f"quiet_period must be a timedelta, not {type(quiet_period).__name__}")
    if quiet_period < timedelta(0):
        raise ValueError(f"quiet_period must not be negative, got {quiet_period}")
    if isinstance(agreement_done_statuses, str):
        raise TypeError("agreement_done_statuses must be a collection of statuses, not one str")
    done = frozenset(agreement_done_statuses)
    # A plain stdlib datetime (not, say, a pendulum subclass): comparisons stay fast and exact.
    n = now.astimezone(_UTC)
    utc_now = datetime(
        n.year, n.month, n.day, n.hour, n.minute, n.second, n.microsecond, tzinfo=_UTC
    )
    cutoff: datetime | None
    try:
        cutoff = utc_now - quiet_period
    except OverflowError:  # a quiet period reaching before year 1: everything is recent
        cutoff = None

    buckets: dict[str, list[dict[str, Any]]] = {name: [] for name in BUCKETS}
    seen: dict[str, dict[str, Any]] = {}  # id -> the item kept for it
    read = dropped = 0
    with gc_paused():
        for obj in records:
            read += 1
            try:
                record = obj if isinstance(obj, ConnectRecord) else _mapping_to_record(obj)
                if record is None:
                    bucket, item, when = _B_NEEDS_REVIEW, _malformed_item(obj), None
                else:
                    text = record.last_interaction_date_time_utc
                    when = _parse(text)
                    if when is None:
                        text = record.start_date_time_utc
                        when = _parse(text)
                    bucket, reason, details = _decide(record, when, cutoff, done)
                    item = {
                        "id": record.id,
                        "ref_id": record.ref_id,
                        "transmission_region": record.transmission_region,
                        "connection_status": record.connection_status,
                        "last_interaction": None if when is None else _iso(text, when),
                        "reason": reason,
                    }
                    if details is not None:
                        item.update(details)
                    elif reason == _R_MALFORMED:  # a hand-built record may hold non-str fields
                        item = _malformed_item(record, item["last_interaction"])
            except Exception:  # a record breaking the rules of its own type: review, go on
                bucket, item, when = _B_NEEDS_REVIEW, _malformed_item(obj), None
            record_id = item["id"]
            if record_id:  # records without an id are never duplicates
                previous = seen.get(record_id)
                if previous is not None:
                    dropped += 1
                    # Unreadable time = oldest; the later copy wins ties (it was fetched later).
                    previous_when = _parse(previous["last_interaction"])
                    if not (previous_when is None or (when is not None and when >= previous_when)):
                        continue
                    previous.clear()  # an item is never empty: marks the one to drop
                seen[record_id] = item
            buckets[bucket].append(item)
    if dropped:
        for name, items in buckets.items():
            buckets[name] = [item for item in items if item]
    malformed = 0
    for item in buckets[_B_NEEDS_REVIEW]:
        if item["reason"] == _R_MALFORMED:
            malformed += 1
    summary: dict[str, Any] = {
        "counts": {name: len(items) for name, items in buckets.items()},
        "records_read": read,
        "duplicates_dropped": dropped,
        "malformed": malformed,
        "now": utc_now.isoformat()[:-6] + "Z",
        "quiet_period_seconds": quiet_period.total_seconds(),
    }
    return TriageResult(buckets=buckets, summary=summary)
