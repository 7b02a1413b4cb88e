"""The emulator's admin endpoints: change what it serves while it runs, from another process.

A deployment check (or a person with ``curl``) needs a customer to finish Connect *while* a
sensor waits on them in a separate triggerer process, so ``LeapEmulator.set_records`` alone (in
the emulator's own process) is not enough. Off unless asked for (``LeapEmulator(admin=True)``,
``--admin`` on the command line); the paths live under ``/_emulator/``, which Leap's API does not
use. No authentication: the emulator listens on loopback only, and these endpoints never see
the API key.

- ``GET /_emulator/records[?ref_id=X][&connection_status=Y]``: the records served, as Leap
  would send them (``{"records": [...]}``).
- ``POST /_emulator/records/status`` with ``{"ref_ids": [...], "connection_status": "COMPLETED"}``:
  every record of those Reference IDs gets the status and the emulator's clock as its last
  interaction. ``COMPLETED`` also connects the required utilities and signs pending agreements,
  so the record reads as a real completion; any other status (known or not) is set as given.
  Answers ``{"changed": N}``; an unknown Reference ID is a 404 and changes nothing.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import msgspec

from airflow_provider_leap.testing.data import (
    AGREEMENT_DONE,
    AGREEMENT_PENDING,
    COMPLETED,
    CONNECTED,
    UTILITIES,
    format_ts,
    to_us,
)

if TYPE_CHECKING:
    from airflow_provider_leap.testing.server import LeapEmulator

PREFIX = "/_emulator/"
RECORDS_PATH = PREFIX + "records"
STATUS_PATH = PREFIX + "records/status"


def _error(status: int, title: str, details: Mapping[str, Any] | None = None) -> Exception:
    from airflow_provider_leap.testing.server import ApiError

    return ApiError(status, title, details)


def with_status(record: Mapping[str, Any], status: str, at: str) -> dict[str, Any]:
    """A copy of ``record`` in ``status`` with last interaction ``at`` (consistent if COMPLETED)."""
    out = copy.deepcopy(dict(record))
    out["connection_status"] = status
    out["last_interaction_date_time_utc"] = at
    if status != COMPLETED:
        return out
    utilities = out.get("utility_connections") or []
    if not utilities:
        region = str(out.get("transmission_region"))
        name = UTILITIES[region][0][0] if region in UTILITIES else "Local utility"
        utilities = [{"utility_name": name, "utility_is_required": True}]
    for utility in utilities:
        if utility.get("utility_is_required", True) or utility is utilities[-1]:
            utility["status"] = CONNECTED
            utility.pop("error_code", None)
            utility["last_interaction_date_time_utc"] = at
    out["utility_connections"] = utilities
    agreements = out.get("agreements") or {}
    out["agreements"] = {
        name: AGREEMENT_DONE.get(name, value) if value == AGREEMENT_PENDING else value
        for name, value in agreements.items()
    }
    return out


class EmulatorAdmin:
    """Serves ``/_emulator/...`` for one emulator; one change at a time."""

    def __init__(self, emulator: LeapEmulator) -> None:
        self._emulator = emulator
        self._lock = threading.Lock()

    @staticmethod
    def owns(path: str) -> bool:
        return path.startswith(PREFIX)

    def handle(self, method: str, path: str, query: str, body: bytes) -> bytes:
        """The JSON answer to one admin request; raises the server's ``ApiError`` otherwise."""
        routes = {RECORDS_PATH: "GET", STATUS_PATH: "POST"}
        expected = routes.get(path)
        if expected is None:
            raise _error(404, "Not found", {"path": path, "admin_paths": sorted(routes)})
        if method != expected:
            raise _error(405, "Method not allowed", {"method": method, "allowed": [expected]})
        if expected == "GET":
            return self._records(query)
        return self._set_status(body)

    def _records(self, query: str) -> bytes:
        wanted = dict(parse_qsl(query))
        unknown = sorted(set(wanted) - {"ref_id", "connection_status"})
        if unknown:
            raise _error(400, "Unknown query parameter", {"parameters": unknown})
        records = [
            r
            for r in self._emulator.records
            if all(str(r.get(key)) == value for key, value in wanted.items())
        ]
        return msgspec.json.encode({"records": records})

    def _set_status(self, body: bytes) -> bytes:
        try:
            request = msgspec.json.decode(body or b"null")
        except msgspec.DecodeError as exc:
            raise _error(400, "Invalid JSON body", {"error": str(exc)}) from None
        refs = request.get("ref_ids") if isinstance(request, dict) else None
        status = request.get("connection_status") if isinstance(request, dict) else None
        if (
            not isinstance(refs, list)
            or not refs
            or not all(isinstance(r, str) for r in refs)
            or not isinstance(status, str)
            or not status
        ):
            raise _error(
                400,
                "Invalid request body",
                {"expected": {"ref_ids": ["<Reference ID>"], "connection_status": "COMPLETED"}},
            )
        emulator = self._emulator
        at = format_ts(to_us(emulator.now))
        with self._lock:
            records = emulator.records
            missing = sorted(set(refs) - {str(r.get("ref_id")) for r in records})
            if missing:
                raise _error(404, "Unknown Reference ID", {"ref_ids": missing})
            wanted = set(refs)
            changed = 0
            updated = []
            for record in records:
                if record.get("ref_id") in wanted:
                    record = with_status(record, status, at)
                    changed += 1
                updated.append(record)
            emulator.set_records(updated)
        return msgspec.json.encode({"changed": changed})
