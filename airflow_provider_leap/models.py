"""Typed, immutable records of Leap's Connect and Meters APIs, under the API's field names.

Enumerated values stay plain ``str`` (compare them with the enums below): a status or error code
Leap adds later flows through as data. Each record keeps its exact JSON (``record.raw``), so
fields Leap adds later are never lost.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import Enum
from itertools import repeat
from typing import Any, ClassVar, TypeVar

import msgspec

from airflow_provider_leap.timeutil import parse_timestamp as parse_timestamp  # re-exported

NOT_REQUIRED = "NOT_REQUIRED"
# A Connect record's top-level string fields: the ones triage items, sensor results and a
# salvaged record carry.
IDENTITY_FIELDS = ("id", "ref_id", "transmission_region", "connection_status")
TIME_FIELDS = ("start_date_time_utc", "last_interaction_date_time_utc")


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


class TransmissionRegion(str, Enum):
    """``transmission_region`` values Leap lists."""

    CAISO = "CAISO"
    ERCOT = "ERCOT"
    NYISO = "NYISO"
    ISONE = "ISONE"
    PJM = "PJM"
    SERC = "SERC"
    WECC_SW = "WECC_SW"
    WECC_PC = "WECC_PC"


_REGIONS = frozenset(region.value for region in TransmissionRegion)
# Leap's record id: ``<REGION>_<uuid>_<ref_id>``.
_RECORD_ID = re.compile(
    r"(?P<region>.+?)_[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}_(?P<ref_id>.*)",
    re.DOTALL,
)


def record_region(record: Mapping[str, Any]) -> str | None:
    """The transmission region of a Connect record (its JSON, or a triage item).

    Its ``transmission_region`` when set (a region Leap adds later too); else the region its
    ``id`` starts with, when the id has Leap's shape ``<REGION>_<uuid>_<ref_id>`` for this
    record's Reference ID and the region is one Leap lists; else None: nobody can know it, and a
    Connect link without it would not work.
    """
    region = record.get("transmission_region")
    if isinstance(region, str) and region:
        return region
    record_id, ref_id = record.get("id"), record.get("ref_id")
    found = _RECORD_ID.fullmatch(record_id) if isinstance(record_id, str) else None
    if found is None or found["region"] not in _REGIONS:
        return None
    return found["region"] if ref_id is None or found["ref_id"] == ref_id else None


class _Record(
    msgspec.Struct, frozen=True, kw_only=True, gc=False, rename={"raw_json": "__leap_raw__"}
):
    """Base of decoded records: the source JSON next to the typed fields. ``gc=False``: immutable
    records cannot form cycles, so the cyclic collector need never walk them."""

    raw_json: msgspec.Raw | None = None

    @property
    def raw(self) -> dict[str, Any]:
        """The record exactly as the API sent it, including fields this version does not know."""
        if self.raw_json is None:
            return msgspec.to_builtins(self)  # type: ignore[no-any-return]
        decoded = msgspec.json.decode(self.raw_json)
        return decoded if isinstance(decoded, dict) else {"value": decoded}


class UtilityConnection(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One utility the customer was asked for, or picked, in the Connect flow."""

    authorization_uuid: str | None = None
    utility_name: str | None = None
    utility_is_required: bool | None = None
    status: str | None = None
    error_code: str | None = None
    start_date_time_utc: str | None = None
    last_interaction_date_time_utc: str | None = None


class ConnectRecord(_Record, frozen=True, kw_only=True):
    """One Reference ID's connection. ``parse_error`` is None but on a record whose JSON did not
    fit the documented shape (the typed fields hold what could be salvaged): triage sends those to
    review. It is no field, so no key of Leap's JSON can set it."""

    id: str | None = None
    transmission_region: str | None = None
    ref_id: str | None = None
    connection_status: str | None = None
    utility_connections: tuple[UtilityConnection, ...] = ()
    agreements: dict[str, Any] = {}
    start_date_time_utc: str | None = None
    last_interaction_date_time_utc: str | None = None
    parse_error: ClassVar[str | None] = None

    @property
    def last_interaction(self) -> datetime | None:
        """Top-level last interaction, else the connection start (the triage's notion of "when")."""
        return parse_timestamp(self.last_interaction_date_time_utc) or parse_timestamp(
            self.start_date_time_utc
        )


class _UnfitRecord(ConnectRecord, frozen=True, kw_only=True):
    parse_error: str | None = None  # type: ignore[misc]  # the one record type that has it


class Meter(_Record, frozen=True, kw_only=True):
    """A meter from ``POST /v2/meters/search``; the full detail stays in ``raw``."""

    meter_id: str | None = None
    partner_reference: str | None = None
    transmission_region: str | None = None
    customer_classification: str | None = None
    connection_references: tuple[str, ...] = ()
    audit: Any = None  # as sent: Leap's schema allows any JSON value here


R = TypeVar("R", bound=_Record)
_ANY = msgspec.json.Decoder()
_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])
_CONNECT = msgspec.json.Decoder(ConnectRecord)
_CONNECT_LIST = msgspec.json.Decoder(list[ConnectRecord])
_METER = msgspec.json.Decoder(Meter)
_METER_LIST = msgspec.json.Decoder(list[Meter])
# Collections Leap may send as null instead of empty (say before the customer picks a utility).
_NULLABLE_COLLECTIONS: dict[str, Any] = {"utility_connections": [], "agreements": {}}
_RAW_KEY = "__leap_raw__"  # raw_json's name: in Leap's JSON, a key like any other


def _attach(record: R, raw: msgspec.Raw) -> R:
    msgspec.structs.force_setattr(record, "raw_json", raw)
    return record


def _retry(
    raw: msgspec.Raw, decoder: msgspec.json.Decoder[R]
) -> tuple[R | None, dict[str, Any], str]:
    """Second reading of a record the typed decode refused (off the hot path): a null for a list
    or an object is read as empty, a key named like ``raw_json`` is left to ``raw``. Returns the
    record (None: still unfit), the JSON object it was read from ({} if none) and, when still
    unfit, why ("" if not a JSON object: the first reading's error says it better)."""
    try:
        data = _ANY.decode(raw)
    except msgspec.DecodeError:
        return None, {}, ""
    if not isinstance(data, dict):
        return None, {}, ""
    fixed = {k: v for k, v in data.items() if k != _RAW_KEY}
    fixed |= {k: v for k, v in _NULLABLE_COLLECTIONS.items() if data.get(k, v) is None}
    try:
        return _attach(decoder.decode(msgspec.json.encode(fixed)), raw), data, ""
    except msgspec.DecodeError as exc:
        return None, data, str(exc)


def _salvage(raw: msgspec.Raw, error: str) -> ConnectRecord:
    """A record that does not fit: what ``_retry`` reads, else its identity and times, unfit
    (``parse_error``: what is wrong once the nulls read as empty are set aside)."""
    record, data, still_wrong = _retry(raw, _CONNECT)
    if record is not None:
        return record
    text = {k: data[k] for k in IDENTITY_FIELDS + TIME_FIELDS if isinstance(data.get(k), str)}
    return _UnfitRecord(raw_json=raw, parse_error=still_wrong or error, **text)


def decode_connect_record(raw: msgspec.Raw | bytes) -> ConnectRecord:
    """Decode one Connect record; a record of the wrong shape comes back with ``parse_error``."""
    if not isinstance(raw, msgspec.Raw):
        raw = msgspec.Raw(raw)
    try:
        return _attach(_CONNECT.decode(raw), raw)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        return _salvage(raw, str(exc))


def connect_record_from_mapping(data: Any) -> ConnectRecord:
    """Build a record from an already-decoded mapping (tests, webhooks, the triage's raw input)."""
    return decode_connect_record(msgspec.json.encode(data))


def _decode_list(
    records: msgspec.Raw,
    whole: msgspec.json.Decoder[list[R]],
    one: Callable[[msgspec.Raw], R | None],
) -> tuple[list[R], int]:
    """A JSON list of records decoded in one call, each keeping its own JSON as ``raw``; only
    when one does not fit, one by one through ``one`` (None: left out, counted second). Raises
    ``msgspec.DecodeError`` when ``records`` is not a JSON list."""
    raws = _RAW_LIST.decode(records)
    try:
        typed = whole.decode(records)
    except msgspec.ValidationError:
        kept = [record for raw in raws if (record := one(raw)) is not None]
        return kept, len(raws) - len(kept)
    list(map(msgspec.structs.force_setattr, typed, repeat("raw_json"), raws))
    return typed, 0


def decode_connect_records(records: msgspec.Raw) -> tuple[list[ConnectRecord], int]:
    """A page's Connect records; one of the wrong shape comes back with ``parse_error`` set."""
    return _decode_list(records, _CONNECT_LIST, decode_connect_record)


def _meter_or_none(raw: msgspec.Raw) -> Meter | None:
    try:
        return _attach(_METER.decode(raw), raw)
    except msgspec.DecodeError:
        return _retry(raw, _METER)[0]


def decode_meters(records: msgspec.Raw) -> tuple[list[Meter], int]:
    """A page's meters, and how many did not fit the schema and were left out."""
    return _decode_list(records, _METER_LIST, _meter_or_none)
