"""What the sensor and trigger tests pick from the emulator, and count on it."""

from __future__ import annotations

from typing import Any

CONNECTIONS = "/v1.1/connections"


def refs(leap_emulator: Any, status: str, count: int = 3) -> list[str]:
    """Reference IDs whose every record has ``status`` (an ID may exist in two regions)."""
    by_ref: dict[str, set[str]] = {}
    for record in leap_emulator.records:
        by_ref.setdefault(record["ref_id"], set()).add(record["connection_status"])
    return [ref for ref, statuses in by_ref.items() if statuses == {status}][:count]


def connect_requests(leap_emulator: Any) -> list[Any]:
    """The Connect requests the emulator has seen, in order."""
    return [r for r in leap_emulator.requests if r.path == CONNECTIONS]
