"""Typed, immutable records of Leap's Connect and Meters APIs.

Attributes carry the API's own field names. Enumerated values stay plain ``str`` on the records
(compare them with the enums below): Leap may add statuses or error codes at any time and those
must flow through as data, not fail decoding. Each record keeps the exact JSON it came from
(``record.raw``), so fields Leap adds later are never lost.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any

import msgspec

NOT_REQUIRED = "NOT_REQUIRED"


class ConnectionStatus(str, Enum):
    """Top-level ``connection_status`` values Leap documents."""

    COMPLETED = "COMPLETED"
    NOT_STARTED = "NOT_STARTED"
    PARTIAL = "PARTIAL"
    ERROR = "ERROR"


class UtilityStatus(str, Enum):
    """``utility_connections[].status`` values Leap documents."""

    CONNECTED = "CONNECTED"
    NOT_CONNECTED = "NOT_CONNECTED"
    ERROR = "ERROR"


def parse_timestamp(value: object) -> datetime | None:
    """Parse Leap's ISO-8601 UTC timestamps (``Z`` suffix, optional fraction); None if unusable."""
    if not isinstance(value, str) or not value:
        return None
    text = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError):  # e.g. 0001-01-01T00:00:00+01:00 has no UTC time
        return None


class _Record(msgspec.Struct, frozen=True, kw_only=True, rename={"raw_json": "__leap_raw__"}):
    """Base of decoded records: keeps the source JSON next to the typed fields."""

    raw_json: msgspec.Raw | None = None

    @property
    def raw(self) -> dict[str, Any]:
        """The record exactly as the API sent it, including fields this version does not know."""
        if self.raw_json is None:
            return msgspec.to_builtins(self)  # type: ignore[no-any-return]
        decoded = msgspec.json.decode(self.raw_json)
        return decoded if isinstance(decoded, dict) else {"value": decoded}


class UtilityConnection(msgspec.Struct, frozen=True, kw_only=True):
    """One utility the customer was asked for, or picked, in the Connect flow."""

    authorization_uuid: str | None = None
    utility_name: str | None = None
    utility_is_required: bool | None = None
    status: str | None = None
    error_code: str | None = None
    start_date_time_utc: str | None = None
    last_interaction_date_time_utc: str | None = None


class ConnectRecord(_Record, frozen=True, kw_only=True):
    """One Reference ID's connection, as the Connect API reports it.

    ``parse_error`` is set (and the typed fields hold only what could be salvaged) when the
    record's JSON did not fit the documented shape; triage then sends it to review.
    """

    id: str | None = None
    transmission_region: str | None = None
    ref_id: str | None = None
    start_date_time_utc: str | None = None
    last_interaction_date_time_utc: str | None = None
    connection_status: str | None = None
    utility_connections: tuple[UtilityConnection, ...] = ()
    agreements: dict[str, Any] = {}
    parse_error: str | None = msgspec.field(default=None, name="__leap_parse_error__")

    @property
    def last_interaction(self) -> datetime | None:
        """Top-level last interaction, else the connection start (the triage's notion of "when")."""
        return parse_timestamp(self.last_interaction_date_time_utc) or parse_timestamp(
            self.start_date_time_utc
        )


class MeterAudit(msgspec.Struct, frozen=True, kw_only=True):
    created_by: str | None = None
    created_at: str | None = None
    updated_at: str | None = None


class Meter(_Record, frozen=True, kw_only=True):
    """A meter from ``POST /v2/meters/search``; the full detail stays in ``raw``."""

    meter_id: str | None = None
    partner_reference: str | None = None
    transmission_region: str | None = None
    customer_classification: str | None = None
    connection_references: tuple[str, ...] = ()
    audit: MeterAudit | None = None


_CONNECT_DECODER = msgspec.json.Decoder(ConnectRecord)
_METER_DECODER = msgspec.json.Decoder(Meter)
_ANY_DECODER = msgspec.json.Decoder()

_STR_FIELDS = (
    "id",
    "transmission_region",
    "ref_id",
    "start_date_time_utc",
    "last_interaction_date_time_utc",
    "connection_status",
)


# Collections Leap may send as null instead of empty (say before the customer picks a utility).
_NULLABLE_COLLECTIONS: dict[str, Any] = {"utility_connections": [], "agreements": {}}


def _salvage(raw: msgspec.Raw, error: str) -> ConnectRecord:
    """Keep what is readable from a record that does not fit the documented shape.

    Off the hot path: only records that failed the typed decode come here. A null where a list
    or an object belongs is read as empty; anything else keeps ``parse_error``.
    """
    try:
        data = _ANY_DECODER.decode(raw)
    except msgspec.DecodeError:
        data = None
    if not isinstance(data, dict):
        return ConnectRecord(raw_json=raw, parse_error=error)
    nulls = {k: v for k, v in _NULLABLE_COLLECTIONS.items() if k in data and data[k] is None}
    if nulls:
        try:
            record = _CONNECT_DECODER.decode(msgspec.json.encode({**data, **nulls}))
        except msgspec.DecodeError as exc:
            error = str(exc)
        else:
            msgspec.structs.force_setattr(record, "raw_json", raw)
            return record
    fields = {k: data[k] for k in _STR_FIELDS if isinstance(data.get(k), str)}
    return ConnectRecord(raw_json=raw, parse_error=error, **fields)


def decode_connect_record(raw: msgspec.Raw | bytes) -> ConnectRecord:
    """Decode one Connect record; a record of the wrong shape comes back with ``parse_error``."""
    if not isinstance(raw, msgspec.Raw):
        raw = msgspec.Raw(raw)
    try:
        record = _CONNECT_DECODER.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        return _salvage(raw, str(exc))
    msgspec.structs.force_setattr(record, "raw_json", raw)
    return record


def connect_record_from_mapping(data: Any) -> ConnectRecord:
    """Build a record from an already-decoded mapping (tests, webhooks, the triage's raw input)."""
    return decode_connect_record(msgspec.json.encode(data))


def decode_meter(raw: msgspec.Raw) -> Meter:
    """Decode one meter; raises ``msgspec.DecodeError`` (the client logs and skips such a meter)."""
    meter = _METER_DECODER.decode(raw)
    msgspec.structs.force_setattr(meter, "raw_json", raw)
    return meter
