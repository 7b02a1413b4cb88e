"""Timestamps: the one way this package reads and writes them. No Airflow import.

Leap sends ISO-8601 UTC, with or without fractional seconds (``2023-01-11T02:44:57Z``,
``2024-10-21T11:43:05.892Z``). Everything here is UTC-aware; a naive value is taken as UTC.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timezone

UTC = timezone.utc
_fromisoformat = datetime.fromisoformat
# Text already in this form is reused as is: formatting costs more than the rest of triage.
_CANONICAL = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z").fullmatch
# Python 3.10's fromisoformat reads neither "Z" nor fractions other than 3 or 6 digits.
_OLD_PYTHON_FORM = re.compile(r"(.*?)(?:\.(\d+))?([Zz]|[+-]\d\d:?\d\d)?").fullmatch


def parse_timestamp(value: object) -> datetime | None:
    """An aware UTC datetime from ISO-8601 text; None when absent or unreadable, never raises."""
    if not isinstance(value, str):
        return None
    try:
        when: datetime | None = _fromisoformat(value)
    except ValueError:
        when = _parse_on_old_python(value)
    if when is None:
        return None
    if when.tzinfo is UTC:
        return when
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 has no UTC time
        return None


def _parse_on_old_python(value: str) -> datetime | None:
    """What Python 3.11's ``fromisoformat`` reads and 3.10's does not: a ``Z`` suffix, an offset
    without a colon, and fractional seconds of 1 to 6 digits (more are cut, as 3.11 does)."""
    parts = _OLD_PYTHON_FORM(value)
    if parts is None:
        return None
    head, fraction, zone = parts.groups()
    text = head + ("." + fraction[:6].ljust(6, "0") if fraction else "")
    if zone in ("Z", "z"):
        zone = "+00:00"
    elif zone and ":" not in zone:
        zone = zone[:3] + ":" + zone[3:]
    text += zone or ""
    try:
        return _fromisoformat(text)
    except ValueError:
        return None


_TIMESPECS = {20: "seconds", 24: "milliseconds", 27: "microseconds"}  # by the text's length


def format_timestamp(when: datetime, source: str | None = None) -> str:
    """The one text of an instant: ISO-8601 UTC with ``Z``, at the shortest of seconds,
    milliseconds or microseconds that holds it exactly, so ``...05Z``, ``...05.000Z`` and
    ``...05+00:00`` read back as one text (a stall's identity: ``contact.contact_key``).
    ``source``, the text ``when`` was read from, is reused when it is that text already."""
    micro = when.microsecond
    length = 20 if not micro else 24 if not micro % 1000 else 27
    if source is not None and len(source) == length and _CANONICAL(source):
        return source
    naive = when.astimezone(UTC).replace(tzinfo=None)
    return naive.isoformat(timespec=_TIMESPECS[length]) + "Z"


def as_utc(value: datetime | date | str, name: str = "timestamp") -> datetime:
    """A caller's argument as an aware UTC datetime: ISO text, a date (midnight UTC) or a datetime.

    Raises ``ValueError`` naming ``name`` when a string does not parse.
    """
    if isinstance(value, str):
        parsed = parse_timestamp(value.strip())
        if parsed is None:
            raise ValueError(f"{name} {value!r} is not an ISO-8601 date or timestamp")
        return parsed
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
