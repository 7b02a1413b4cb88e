"""Realistic Connect records for the benchmarks, shaped like the example in Leap's guide.

Two shapes: ``guide`` (1 to 3 utility connections, about 830 bytes) and ``small`` (one utility
connection, none for NOT_STARTED; about 600 bytes): per-record costs weigh most on small records.
Self-contained (it does not reuse the emulator's generator) so the figures do not move when the
emulator's data changes. Every record is derived from a seeded ``random.Random``: two runs measure
the same bytes.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

# The reference clock of every generated timestamp; triage benchmarks pass it as ``now``.
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)

UTILITIES: dict[str, tuple[str, ...]] = {
    "CAISO": (
        "SDG&E: San Diego Gas & Electric",
        "PG&E: Pacific Gas & Electric",
        "SCE: Southern California Edison",
    ),
    "ERCOT": ("Oncor Electric Delivery", "CenterPoint Energy", "AEP Texas"),
    "NYISO": ("Con Edison", "National Grid NY", "NYSEG"),
    "ISONE": ("Eversource", "National Grid MA", "Unitil"),
    "PJM": ("PECO", "ComEd", "BGE: Baltimore Gas & Electric"),
}
REGIONS = tuple(UTILITIES)
ERROR_CODES = ("USER_CANCELED", "INVALID_CREDENTIALS", "ACCOUNT_LOCKED", "MFA_TIMEOUT")
PRA = "prohibited_resource_attestation_status"
DRPA = "demand_response_participation_agreement_status"
# Weights of the top-level statuses: mostly finished or stuck part-way, as a live book looks.
STATUSES = (("COMPLETED", 35), ("PARTIAL", 30), ("ERROR", 20), ("NOT_STARTED", 15))


def _ts(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


SHAPES = ("guide", "small")


def make_record(rng: random.Random, ref_id: str, shape: str = "guide") -> dict[str, Any]:
    """One record whose utility statuses agree with the top-level one (see ``SHAPES``)."""
    region = rng.choice(REGIONS)
    status = rng.choices([s for s, _ in STATUSES], [w for _, w in STATUSES])[0]
    start = NOW - timedelta(seconds=rng.randrange(7200, 60 * 86400))
    # About 5 % were active within the last hour: triage's quiet period keeps them back.
    if rng.random() < 0.05:
        last = NOW - timedelta(seconds=rng.randrange(60, 3600))
    else:
        last = start + timedelta(
            seconds=rng.randrange(0, int((NOW - start).total_seconds()) - 3600)
        )
    count = rng.choice((1, 1, 1, 2, 3))
    if shape == "small":
        count = 0 if status == "NOT_STARTED" else 1
    names = rng.sample(UTILITIES[region], count)
    utilities = []
    for i, name in enumerate(names):
        if status == "COMPLETED":
            u_status = "CONNECTED"
        elif status == "NOT_STARTED":
            u_status = "NOT_CONNECTED"
        elif status == "ERROR" and i == 0:
            u_status = "ERROR"
        else:
            u_status = rng.choice(("CONNECTED", "NOT_CONNECTED", "ERROR" if i else "CONNECTED"))
        utilities.append(
            {
                "authorization_uuid": _uuid(rng),
                "utility_name": name,
                "utility_is_required": i == 0 or rng.random() < 0.3,
                "status": u_status,
                "error_code": rng.choice(ERROR_CODES) if u_status == "ERROR" else None,
                "start_date_time_utc": _ts(start),
                "last_interaction_date_time_utc": _ts(last),
            }
        )
    if status == "PARTIAL" and all(u["status"] == "CONNECTED" for u in utilities):
        pending = rng.choice((PRA, DRPA))
        agreements = {PRA: "NOT_REQUIRED", DRPA: "NOT_REQUIRED", pending: "PENDING"}
    elif status == "COMPLETED":
        agreements = {PRA: rng.choice(("NOT_REQUIRED", "COMPLETED")), DRPA: "NOT_REQUIRED"}
    else:
        agreements = {PRA: "NOT_REQUIRED", DRPA: rng.choice(("NOT_REQUIRED", "PENDING"))}
    return {
        "id": f"{region}_{_uuid(rng)}_{ref_id}",
        "transmission_region": region,
        "ref_id": ref_id,
        "start_date_time_utc": _ts(start),
        "last_interaction_date_time_utc": _ts(last),
        "connection_status": status,
        "utility_connections": utilities,
        "agreements": agreements,
    }


def make_records(count: int, seed: int = 7, shape: str = "guide") -> list[dict[str, Any]]:
    """``count`` varied records with Reference IDs ``cust-000000``, ``cust-000001``, ..."""
    rng = random.Random(seed)
    return [make_record(rng, f"cust-{i:06d}", shape) for i in range(count)]
