"""Local emulator of Leap's partner API, for tests, demos and chaos runs without network access.

Serves ``GET /v1.1/connections`` (Connect statuses; the project's adopted, unpublished wire names
from ``wire.WireNames``) and ``POST /v2/meters/search`` (Leap's published Meters API) over real
HTTP on 127.0.0.1, with Bearer auth, deterministic data, URL-encoding-sensitive page tokens and
switchable faults. Start it with ``LeapEmulator(...)`` as a context manager, from pytest through
the ``leap_emulator`` fixtures, or as ``python -m airflow_provider_leap.testing``.

This module stays cheap to import (the pytest plugin imports it in every session): the server,
data and fault modules load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

EMULATOR_API_KEY = "emulator:local-key"

_LAZY = {
    "LeapEmulator": "server",
    "RecordedRequest": "server",
    "RequestLog": "server",
    "Fault": "faults",
    "FaultKind": "faults",
    "Faults": "faults",
    "DEFAULT_CHAOS_KINDS": "faults",
    "GUIDE_EXAMPLE_RECORD": "data",
    "generate_records": "data",
    "generate_meters": "data",
    "meters_visible_at": "data",
}

__all__ = [
    "DEFAULT_CHAOS_KINDS",
    "EMULATOR_API_KEY",
    "GUIDE_EXAMPLE_RECORD",
    "Fault",
    "FaultKind",
    "Faults",
    "LeapEmulator",
    "RecordedRequest",
    "RequestLog",
    "generate_meters",
    "generate_records",
    "meters_visible_at",
]

if TYPE_CHECKING:
    from airflow_provider_leap.testing.data import (
        GUIDE_EXAMPLE_RECORD,
        generate_meters,
        generate_records,
        meters_visible_at,
    )
    from airflow_provider_leap.testing.faults import DEFAULT_CHAOS_KINDS, Fault, FaultKind, Faults
    from airflow_provider_leap.testing.server import LeapEmulator, RecordedRequest, RequestLog


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
