"""Triage of Connect records into follow-up buckets: docs/triage.md's decision table, row by row.

``triage`` depends on its arguments only (no clock, no per-record log) and never raises because
of a record: unknown values and unreadable records go to ``needs_review``, so one bad record
cannot hide the others. Items are small JSON-ready dicts, for XCom.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

from airflow_provider_leap.gc_pause import gc_paused
from airflow_provider_leap.models import (
    IDENTITY_FIELDS,
    NOT_REQUIRED,
    ConnectionStatus,
    ConnectRecord,
    UtilityConnection,
    UtilityStatus,
    connect_record_from_mapping,
)
from airflow_provider_leap.timeutil import UTC, format_timestamp, parse_timestamp


class Bucket:
    """Bucket names, the keys of ``TriageResult.buckets``: plain strings (not enum members) for
    XCom, f-strings and the per-record path's speed."""

    COMPLETED = "completed"
    NOT_STARTED = "not_started"
    UTILITY_NOT_CONNECTED = "utility_not_connected"
    UTILITY_ERROR = "utility_error"
    AGREEMENTS_PENDING = "agreements_pending"
    OTHER_UTILITY = "other_utility"
    TOO_RECENT = "too_recent"
    NEEDS_REVIEW = "needs_review"


class Reason:
    """Item ``reason`` codes (plain strings, like ``Bucket``); the parameterised ones are
    prefixes of ``<prefix>:<value>``, see ``format_reason``."""

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


BUCKETS: tuple[str, ...] = tuple(v for k, v in vars(Bucket).items() if k.isupper())
REASONS: frozenset[str] = frozenset(v for k, v in vars(Reason).items() if k.isupper())
DEFAULT_QUIET_PERIOD = timedelta(hours=1)
DEFAULT_AGREEMENT_DONE_STATUSES: frozenset[str] = frozenset({"COMPLETED", "SIGNED", "ACCEPTED"})
UNKNOWN_ERROR_CODE = "UNKNOWN"
"""Shown for a utility in ERROR without an ``error_code``, and for a utility without a name."""
REASON_SEPARATOR = ":"
_PARAMETERISED = frozenset(
    {Reason.UNKNOWN_STATUS, Reason.UNKNOWN_UTILITY_STATUS, Reason.ERROR, Reason.AGREEMENT}
)
_KNOWN_STATUSES = frozenset(status.value for status in ConnectionStatus)
# The statuses the per-record path compares with, as plain strings (enum access is slow).
_COMPLETED, _NOT_STARTED = ConnectionStatus.COMPLETED.value, ConnectionStatus.NOT_STARTED.value
_ATTEMPTED = frozenset({ConnectionStatus.PARTIAL.value, ConnectionStatus.ERROR.value})
_CONNECTED, _NOT_CONNECTED, _UTILITY_ERROR = (s.value for s in UtilityStatus)

_BATCH = 10_000  # records sorted between two reads of the input
# Extra item fields of utility_error and utility_not_connected: with no utility marked required,
# any one of ``utilities`` will do (a message then says "A or B"). Shared, only ever unpacked.
_ANY_ONE: dict[str, bool] = {"any_one": True}
_REQUIRED: dict[str, bool] = {}
Decision = tuple[str, str, dict[str, Any] | None]  # bucket, reason, bucket-specific fields


def format_reason(prefix: str, value: object) -> str:
    """``error:<CODE>`` and the like; a missing value leaves the part after the colon empty."""
    if prefix not in _PARAMETERISED:
        raise ValueError(f"{prefix!r} takes no value")
    if value is None:
        value = ""
    return prefix + REASON_SEPARATOR + (value if isinstance(value, str) else repr(value))


def split_reason(reason: str) -> tuple[str, str | None]:
    """Inverse of ``format_reason``: lets a downstream task pick its message by the prefix."""
    prefix, separator, value = reason.partition(REASON_SEPARATOR)
    if prefix not in REASONS or bool(separator) != (prefix in _PARAMETERISED):
        raise ValueError(f"{reason!r} is not a triage reason")
    return prefix, (value if separator else None)


@dataclass
class TriageResult:
    """Every bucket (possibly empty) and the run's counts."""

    buckets: dict[str, list[dict[str, Any]]]
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The whole result as one JSON-ready dict (for XCom)."""
        return {"buckets": self.buckets, "summary": self.summary}


def _utilities(record: ConnectRecord, done: frozenset[str]) -> Decision:
    """Rows 4 (unknown utility status) to 9, for a PARTIAL or ERROR record with utilities
    (plain loops, no comprehensions or ``any()``: this runs for most records)."""
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
        if not isinstance(name, str) or not name.strip():  # a blank name is no name
            name = UNKNOWN_ERROR_CODE
        if status == _NOT_CONNECTED:
            missing.append(name)
        elif status == _UTILITY_ERROR:
            missing.append(name)
            code = utility.error_code
            if not code or not isinstance(code, str):
                code = UNKNOWN_ERROR_CODE
            error_codes.setdefault(name, code)
            if first_code is None:
                first_code = code
        else:  # row 4 outranks row 5 wherever the unknown status sits in the list
            return Bucket.NEEDS_REVIEW, format_reason(Reason.UNKNOWN_UTILITY_STATUS, status), None
    if missing:  # every utility in error is missing too
        either = _REQUIRED if required else _ANY_ONE
        if first_code is not None:
            details = {"error_codes": error_codes, "utilities": missing, **either}
            return Bucket.UTILITY_ERROR, format_reason(Reason.ERROR, first_code), details
        if other_connected:  # with nothing required, this already met the requirement above
            return Bucket.OTHER_UTILITY, Reason.OTHER_UTILITY, {"utilities": missing}
        details = {"utilities": missing, **either}
        return Bucket.UTILITY_NOT_CONNECTED, Reason.NOT_CONNECTED, details
    outstanding: list[str] = []
    for field, value in record.agreements.items():
        if value != NOT_REQUIRED and not (isinstance(value, str) and value in done):
            outstanding.append(field)
    if outstanding:
        reason = format_reason(Reason.AGREEMENT, outstanding[0])
        return Bucket.AGREEMENTS_PENDING, reason, {"agreements": outstanding}
    return Bucket.NEEDS_REVIEW, Reason.STATUS_MISMATCH, None


def _decide(
    record: ConnectRecord, when: datetime | None, cutoff: datetime | None, done: frozenset[str]
) -> Decision:
    """The decision table, first match wins; ``cutoff`` None means everything is too recent."""
    status = record.connection_status
    ref_id = record.ref_id
    if (
        record.parse_error is not None
        or when is None
        or not ref_id
        or not status
        or not isinstance(ref_id, str)
        or not isinstance(status, str)
        or not (record.id is None or isinstance(record.id, str))
        or not (record.transmission_region is None or isinstance(record.transmission_region, str))
    ):
        return Bucket.NEEDS_REVIEW, Reason.MALFORMED, None
    if status not in _KNOWN_STATUSES:
        return Bucket.NEEDS_REVIEW, format_reason(Reason.UNKNOWN_STATUS, status), None
    if status == _COMPLETED:
        return Bucket.COMPLETED, Reason.COMPLETED, None
    if cutoff is None or when > cutoff:  # now - when < quiet_period, the future included
        return Bucket.TOO_RECENT, Reason.QUIET_PERIOD, None
    if status == _NOT_STARTED:
        return Bucket.NOT_STARTED, Reason.NOT_STARTED, None
    if not record.utility_connections:
        return Bucket.NEEDS_REVIEW, Reason.NO_UTILITIES, None
    return _utilities(record, done)


def _malformed_item(obj: object, last_interaction: str | None = None) -> dict[str, Any]:
    """Item for input that is not a record, or whose triage failed: the identifying strings
    that can be read, so that a person can find the record."""
    item: dict[str, Any] = dict.fromkeys(IDENTITY_FIELDS)
    for name in IDENTITY_FIELDS:
        try:
            value = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
        except Exception:  # an exotic Mapping whose get() fails: keep the None placeholder
            value = None
        if isinstance(value, str):
            item[name] = value
    item["last_interaction"] = last_interaction
    item["reason"] = Reason.MALFORMED
    return item


def _item(
    obj: Mapping[str, Any] | ConnectRecord, cutoff: datetime | None, done: frozenset[str]
) -> tuple[str, dict[str, Any], datetime | None]:
    """One input's bucket, item and last interaction (what picks among duplicates)."""
    if isinstance(obj, ConnectRecord):
        record = obj
    elif isinstance(obj, Mapping):
        record = connect_record_from_mapping(obj if isinstance(obj, dict) else dict(obj))
    else:
        return Bucket.NEEDS_REVIEW, _malformed_item(obj), None
    text = record.last_interaction_date_time_utc
    when = parse_timestamp(text)
    # Leap's last interaction is the last utility attempt, and it asks for one an hour old
    # before acting: a PARTIAL or ERROR record, which says an attempt was made, is never counted
    # from its start and messaged without one (Leap renaming or dropping the field): review.
    if when is None and record.connection_status not in _ATTEMPTED:
        text = record.start_date_time_utc
        when = parse_timestamp(text)
    bucket, reason, details = _decide(record, when, cutoff, done)
    last = None if when is None else format_timestamp(when, text)
    if reason == Reason.MALFORMED:  # a hand-built record may hold fields of other types
        return bucket, _malformed_item(record, last), when
    item = {
        "id": record.id,
        "ref_id": record.ref_id,
        "transmission_region": record.transmission_region,
        "connection_status": record.connection_status,
        "last_interaction": last,
        "reason": reason,
    }
    if details is not None:
        item.update(details)
    return bucket, item, when


def _sort(
    records: Iterable[Mapping[str, Any] | ConnectRecord],
    cutoff: datetime | None,
    done: frozenset[str],
) -> tuple[dict[str, list[dict[str, Any]]], int, int]:
    """The buckets (one item per ``id``: the latest last interaction), records read and
    duplicates dropped."""
    buckets: dict[str, list[dict[str, Any]]] = {name: [] for name in BUCKETS}
    kept: dict[str, dict[str, Any]] = {}  # id -> the item kept for it
    read = dropped = 0
    records = iter(records)
    while batch := list(islice(records, _BATCH)):  # reading a batch may wait on the network
        read += len(batch)
        # The cyclic GC is paused while a batch is sorted, never while the next one is read:
        # building a million small items sets off full collections with nothing to free, a
        # quarter of triage's time in bench/ (docs/performance.md).
        with gc_paused():
            for obj in batch:
                try:
                    bucket, item, when = _item(obj, cutoff, done)
                except Exception:  # a record breaking the rules of its own type: review, go on
                    bucket, item, when = Bucket.NEEDS_REVIEW, _malformed_item(obj), None
                record_id = item["id"]
                if record_id:  # records without an id are never duplicates
                    previous = kept.get(record_id)
                    if previous is not None:
                        dropped += 1
                        # Unreadable time = oldest; the later copy wins ties (fetched later).
                        previous_when = parse_timestamp(previous["last_interaction"])
                        if previous_when is not None and (when is None or when < previous_when):
                            continue
                        previous.clear()  # an item is never empty: marks the one to drop
                    kept[record_id] = item
                buckets[bucket].append(item)
    if dropped:
        for name, items in buckets.items():
            buckets[name] = [item for item in items if item]
    return buckets, read, dropped


def _utc_now(now: datetime) -> datetime:
    """``now`` as a plain stdlib UTC datetime (not, say, pendulum's): fast, exact comparisons."""
    if not isinstance(now, datetime):
        raise TypeError(f"now must be a datetime, not {type(now).__name__}")
    if now.utcoffset() is None:
        raise ValueError(
            "now must be an aware datetime (e.g. datetime.now(timezone.utc)); got a naive one, "
            "which cannot be compared with Leap's UTC timestamps"
        )
    n = now.astimezone(UTC)
    return datetime(n.year, n.month, n.day, n.hour, n.minute, n.second, n.microsecond, UTC)


def triage(
    records: Iterable[Mapping[str, Any] | ConnectRecord],
    *,
    now: datetime,
    quiet_period: timedelta = DEFAULT_QUIET_PERIOD,
    agreement_done_statuses: Iterable[str] = DEFAULT_AGREEMENT_DONE_STATUSES,
) -> TriageResult:
    """Sort Connect records into the buckets, one bucket per record (latest per ``id``).

    ``records`` (API mappings, ``ConnectRecord``s, or both) is consumed once, as a stream.
    ``now`` must be aware: the function never reads the clock, so runs are reproducible. The
    fields of items and ``summary``: docs/triage.md ("Items" and "Summary").
    """
    utc_now = _utc_now(now)
    if not isinstance(quiet_period, timedelta):
        raise TypeError(f"quiet_period must be a timedelta, not {type(quiet_period).__name__}")
    if quiet_period < timedelta(0):
        raise ValueError(f"quiet_period must not be negative, got {quiet_period}")
    if isinstance(agreement_done_statuses, str):
        raise TypeError("agreement_done_statuses must be a collection of statuses, not one str")
    try:
        cutoff: datetime | None = utc_now - quiet_period
    except OverflowError:  # a quiet period reaching before year 1: everything is recent
        cutoff = None
    buckets, read, dropped = _sort(records, cutoff, frozenset(agreement_done_statuses))
    reviews = buckets[Bucket.NEEDS_REVIEW]
    summary: dict[str, Any] = {
        "counts": {name: len(items) for name, items in buckets.items()},
        "records_read": read,
        "duplicates_dropped": dropped,
        "malformed": sum(1 for item in reviews if item["reason"] == Reason.MALFORMED),
        "now": format_timestamp(utc_now),
        "quiet_period_seconds": quiet_period.total_seconds(),
    }
    return TriageResult(buckets=buckets, summary=summary)
