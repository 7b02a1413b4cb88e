"""Deterministic Connect records and meters for the Leap emulator.

Everything is derived from ``seed``, a record count and a reference time ``now``, so a test can
regenerate exactly what a running emulator serves and compute the expected answer itself.

Record 0 is the example record of Leap's guide, verbatim. The next ``len(COVERAGE_SCENARIOS)``
records walk through every scenario once (every connection and utility status, every region,
tricky Reference IDs, a Reference ID in two regions, activity inside the last hour); the rest are
drawn at random with realistic weights. Error codes other than ``USER_CANCELED`` are illustrative:
Leap's full list lives in its non-public "Connect Tab Status guide".
"""

from __future__ import annotations

import bisect
import copy
import functools
import itertools
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow_provider_leap.models import (
    NOT_REQUIRED,
    ConnectionStatus,
    TransmissionRegion,
    UtilityStatus,
)
from airflow_provider_leap.refids import MAX_LENGTH as REF_ID_MAX_LEN
from airflow_provider_leap.refids import is_valid_ref_id
from airflow_provider_leap.timeutil import parse_timestamp

COMPLETED = ConnectionStatus.COMPLETED.value
NOT_STARTED = ConnectionStatus.NOT_STARTED.value
PARTIAL = ConnectionStatus.PARTIAL.value
ERROR = ConnectionStatus.ERROR.value
CONNECTED = UtilityStatus.CONNECTED.value
NOT_CONNECTED = UtilityStatus.NOT_CONNECTED.value
UTILITY_ERROR = UtilityStatus.ERROR.value

REGIONS: tuple[str, ...] = tuple(region.value for region in TransmissionRegion)

# USER_CANCELED is Leap's documented example; the others are illustrative stand-ins.
ERROR_CODES: tuple[str, ...] = (
    "USER_CANCELED",
    "INVALID_CREDENTIALS",
    "ACCOUNT_LOCKED",
    "MFA_TIMEOUT",
    "NO_ELIGIBLE_ACCOUNTS",
)
_ERROR_CODE_CUM = tuple(itertools.accumulate((40, 25, 10, 15, 10)))

PRA_FIELD = "prohibited_resource_attestation_status"
DRPA_FIELD = "demand_response_participation_agreement_status"
AGREEMENT_PENDING = "PENDING"
# Values that mean "form done", per agreement field.
AGREEMENT_DONE: Mapping[str, str] = {PRA_FIELD: "COMPLETED", DRPA_FIELD: "SIGNED"}

# Connect's display name and the Meters API's utility code, per region.
UTILITIES: Mapping[str, tuple[tuple[str, str], ...]] = {
    "CAISO": (
        ("PG&E: Pacific Gas & Electric", "PGE"),
        ("SCE: Southern California Edison", "SCE"),
        ("SDG&E: San Diego Gas & Electric", "SDGE"),
        ("SMUD: Sacramento Municipal Utility District", "SMUD"),
        ("LADWP: Los Angeles Department of Water & Power", "LADWP"),
    ),
    "ERCOT": (
        ("Oncor Electric Delivery", "ONCOR"),
        ("CenterPoint Energy", "CENTERPOINT"),
        ("AEP Texas Central", "AEP_CENTRAL"),
        ("TNMP: Texas-New Mexico Power", "TNMP"),
    ),
    "NYISO": (
        ("Con Edison: Consolidated Edison", "CECONY"),
        ("O&R: Orange & Rockland", "ORU"),
        ("PSEG Long Island", "PSEGLI"),
        ("National Grid: Upstate New York", "NATGRID"),
    ),
    "ISONE": (
        ("Eversource", "EVERSOURCE"),
        ("National Grid: Massachusetts", "NATGRID"),
        ("Rhode Island Energy", "RIE"),
        ("Unitil", "UNITIL"),
    ),
    "PJM": (
        ("ComEd: Commonwealth Edison", "COMED"),
        ("BGE: Baltimore Gas & Electric", "BGE"),
        ("PECO Energy", "PECO"),
        ("PSE&G: Public Service Electric & Gas", "PSEG"),
        ("Dominion Energy", "DOMINION"),
        ("Pepco", "PEPCO"),
    ),
    "SERC": (
        ("TVA: Tennessee Valley Authority", "TVA"),
        ("NES: Nashville Electric Service", "NES"),
        ("MLGW: Memphis Light, Gas & Water", "MLGW"),
        ("KUB: Knoxville Utilities Board", "KUB"),
    ),
    "WECC_SW": (
        ("SRP: Salt River Project", "SRP"),
        ("APS: Arizona Public Service", "OTHER"),
        ("Tucson Electric Power", "OTHER"),
    ),
    "WECC_PC": (
        ("PSE: Puget Sound Energy", "PSE"),
        ("Portland General Electric", "OTHER"),
        ("PacifiCorp: Pacific Power", "OTHER"),
    ),
}
_UTILITY_NAMES: Mapping[str, tuple[str, ...]] = {
    region: tuple(name for name, _ in pairs) for region, pairs in UTILITIES.items()
}
_UTILITY_CODES: Mapping[str, str] = {
    name: code for pairs in UTILITIES.values() for name, code in pairs
}

# The example record of Leap's "Track Connection Status" guide, kept verbatim.
GUIDE_EXAMPLE_RECORD: Mapping[str, Any] = {
    "id": "CAISO_62631455-9dfd-433b-9482-fd043f2336d4_Test1012",
    "transmission_region": "CAISO",
    "ref_id": "Test1012",
    "start_date_time_utc": "2023-01-11T02:44:57Z",
    "last_interaction_date_time_utc": "2023-01-11T02:45:50Z",
    "connection_status": "ERROR",
    "utility_connections": [
        {
            "authorization_uuid": "910bfb80-8b22-4341-8b5b-8752a21dccad",
            "utility_name": "SDG&E: San Diego Gas & Electric",
            "utility_is_required": True,
            "status": "ERROR",
            "error_code": "USER_CANCELED",
            "start_date_time_utc": "2023-01-11T02:44:57Z",
            "last_interaction_date_time_utc": "2023-01-11T02:45:50Z",
        }
    ],
    "agreements": {
        "prohibited_resource_attestation_status": "NOT_REQUIRED",
        "demand_response_participation_agreement_status": "NOT_REQUIRED",
    },
}

# Reference IDs the coverage block uses: each needs care when URL-encoded.
TRICKY_REF_IDS: tuple[str, ...] = (
    "Jane Doe 0001",
    "user+tag@example.com",
    "crm:lead:42",
    "ref=abc=",
    "acct_7.x-y",
    "a.b",
    "Zoë Müller 7",
    "+1-555-0100",
    "L-" + "x" * (REF_ID_MAX_LEN - 2),
)

_SECOND_US = 1_000_000
_HOUR_US = 3600 * _SECOND_US
_DAY_US = 24 * _HOUR_US
HISTORY_DAYS = 30
RECENT_SHARE = 0.03  # share of random records whose last interaction is inside the last hour
DUPLICATE_REF_SHARE = 0.01  # share of random records reusing a Reference ID in another region
FRACTION_SHARE = 0.35  # share of records whose timestamps carry milliseconds

_Builder = Callable[["_Gen", str], tuple[str, list[dict[str, Any]], dict[str, str]]]


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def as_utc(value: datetime | None) -> datetime:
    """``value`` in UTC (the wall clock if None); naive datetimes are refused, not guessed."""
    if value is None:
        return datetime.now(timezone.utc)
    if value.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    return value.astimezone(timezone.utc)


def to_us(value: datetime) -> int:
    """Epoch microseconds of an aware datetime: exact integer arithmetic for filters."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _SECOND_US + delta.microseconds


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


# RFC 3339 date-time (JSON Schema's "date-time" format): the form Leap's filters document.
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")


def parse_utc(text: str) -> int | None:
    """Epoch microseconds of an RFC 3339 timestamp (``Z`` or an offset); None if unusable.

    Stricter than the client's reader (``timeutil``) on purpose: a time without an offset is
    refused, not taken as UTC, so a client that forgets the offset is caught.
    """
    parsed = parse_timestamp(text) if _RFC3339.fullmatch(text) else None
    return None if parsed is None else to_us(parsed)


def format_ts(us: int, *, millis: bool | None = None, suffix: str = "Z") -> str:
    """Connect's ``2023-01-11T02:44:57Z`` / ``...05.892Z``, or (``suffix="+00:00"``) the Meters
    API's ``2000-01-23T04:56:07.000+00:00``; ``millis`` None: only when the time has some.

    Not ``timeutil.format_timestamp``: Leap's two styles are at millisecond precision, and this
    runs a few hundred thousand times for 50k records, from integers.
    """
    seconds, fraction = divmod(us, _SECOND_US)
    day, second = divmod(seconds, 86_400)
    hours, second = divmod(second, 3600)
    text = f"{_day(day)}{hours:02d}:{second // 60:02d}:{second % 60:02d}"
    if millis or (millis is None and fraction >= 1000):
        return f"{text}.{fraction // 1000:03d}{suffix}"
    return text + suffix


@functools.lru_cache(maxsize=4096)
def _day(day: int) -> str:
    """``YYYY-MM-DDT`` of a day since the epoch (a 50k-record data set spans a few dozen)."""
    return from_us(day * 86_400 * _SECOND_US).strftime("%Y-%m-%dT")


def _between(rng: random.Random, low: int, high: int) -> int:
    """Uniform integer in [low, high]."""
    return low + int(rng.random() * (high - low + 1))


def random_uuid(rng: random.Random) -> str:
    """A version-4 UUID string drawn from ``rng`` (``uuid.UUID`` is 3x slower for 50k records)."""
    h = f"{(rng.getrandbits(128) & _UUID_MASK) | _UUID_BITS:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID_MASK = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID_BITS = (0x4000 << 64) | (0x8000 << 48)


class _Gen:
    """Per-dataset random state plus the timeline of the record being built."""

    def __init__(self, rng: random.Random, now_us: int) -> None:
        self.rng = rng
        self.now_us = now_us
        self.start_us = 0
        self.last_us = 0
        self.whole_seconds = True

    def uuid(self) -> str:
        return random_uuid(self.rng)

    def trunc(self, us: int) -> int:
        return us - us % (_SECOND_US if self.whole_seconds else 1000)

    def ts(self, us: int) -> str:
        return format_ts(us, millis=False if self.whole_seconds else None)

    def utilities(self, region: str, count: int) -> list[str]:
        names = _UTILITY_NAMES[region]
        if count == 1:
            return [names[int(self.rng.random() * len(names))]]
        return self.rng.sample(names, count)

    def error_code(self) -> str:
        return ERROR_CODES[bisect.bisect(_ERROR_CODE_CUM, self.rng.random() * _ERROR_CODE_CUM[-1])]

    def entries(self, specs: Sequence[tuple[str, bool, str]]) -> list[dict[str, Any]]:
        """Utility entries with timestamps inside the record's timeline, the last one ending it."""
        rng, start, last = self.rng, self.start_us, self.last_us
        span = last - start
        out: list[dict[str, Any]] = []
        for k, (name, required, status) in enumerate(specs):
            u_start = start if k == 0 else start + int(rng.random() * span * 0.6)
            is_last = k == len(specs) - 1
            u_last = last if is_last else u_start + int(rng.random() * (last - u_start))
            out.append(
                {
                    "authorization_uuid": self.uuid(),
                    "utility_name": name,
                    "utility_is_required": required,
                    "status": status,
                    "error_code": self.error_code() if status == UTILITY_ERROR else None,
                    "start_date_time_utc": self.ts(u_start),
                    "last_interaction_date_time_utc": self.ts(u_last),
                }
            )
        return out

    def agreements(self, state: str) -> dict[str, str]:
        """``none``: no utility picked yet; ``done``: nothing open; ``pending``: a form open."""
        rng = self.rng
        if state == "none":
            return {PRA_FIELD: NOT_REQUIRED, DRPA_FIELD: NOT_REQUIRED}
        out = {
            f: NOT_REQUIRED if rng.random() < 0.3 else done for f, done in AGREEMENT_DONE.items()
        }
        if state == "pending":
            out[rng.choice((PRA_FIELD, DRPA_FIELD))] = AGREEMENT_PENDING
            if rng.random() < 0.3:
                out[PRA_FIELD] = out[DRPA_FIELD] = AGREEMENT_PENDING
        return out


# --- scenarios: each returns (connection_status, utility_connections, agreements) -------------


def _res_completed(g: _Gen, region: str) -> tuple[str, list[dict[str, Any]], dict[str, str]]:
    [name] = g.utilities(region, 1)
    return COMPLETED, g.entries([(name, True, CONNECTED)]), g.agreements("done")


def _com_completed(g: _Gen, region: str) -> tuple[str, list[dict[str, Any]], dict[str, str]]:
    names = g.utilities(region, _between(g.rng, 2, 3))
    return COMPLETED, g.entries([(n, True, CONNECTED) for n in names]), g.agreements("done")


def _multi_click_completed(
    g: _Gen, region: str
) -> tuple[str, list[dict[str, Any]], dict[str, str]]:
    """Residential customer who clicked several utilities (none required) and connected one."""
    names = g.utilities(region, _between(g.rng, 2, 3))
    others = [(n, False, g.rng.choice((NOT_CONNECTED, UTILITY_ERROR))) for n in names[:-1]]
    specs = [*others, (names[-1], False, CONNECTED)]
    return COMPLETED, g.entries(specs), g.agreements("done")


def _not_started(g: _Gen, region: str) -> tuple[str, list[dict[str, Any]], dict[str, str]]:
    """Clicked the URL, never logged in: with or without the utility the URL asked for."""
    if g.rng.random() < 0.5:
        g.start_us = g.last_us - g.rng.randint(0, 120) * _SECOND_US
        return NOT_STARTED, [], g.agreements("none")
    [name] = g.utilities(region, 1)
    return NOT_STARTED, g.entries([(name, True, NOT_CONNECTED)]), g.agreements("none")


def _res_error(g: _Gen, region: str) -> tuple[str, list[dict[str, Any]], dict[str, str]]:
    [name] = g.utilities(region, 1)
    state = "pending" if g.rng.random() < 0.2 else "none"
    return ERROR, g.entries([(name, True, UTILITY_ERROR)]), g.agreements(state)


def _com_error(g: _Gen, region: str) -> tuple[str, list[dict[str, Any]], dict[str, str]]:
    names = g.utilities(region, _between(g.rng, 2, 3))
    specs = [(n, True, g.rng.choice((CONNECTED, NOT_CONNECTED))) for n in names]
    k = g.rng.randrange(len(specs))
    specs[k] = (names[k], True, UTILITY_ERROR)
    return ERROR, g.entries(specs), g.agreements("none")


def _multi_click_error(g: _Gen, region: str) -> tuple[str, list[dict[str, Any]], dict[str, str]]:
    """Several utilities clicked, none required, none connected, at least one failed."""
    names = g.utilities(region, _between(g.rng, 2, 3))
    specs = [(n, False, g.rng.choice((NOT_CONNECTED, UTILITY_ERROR))) for n in names[:-1]]
    specs.append((names[-1], False, UTILITY_ERROR))
    return ERROR, g.entries(specs), g.agreements("none")


def _res_agreement_pending(
    g: _Gen, region: str
) -> tuple[str, list[dict[str, Any]], dict[str, str]]:
    [name] = g.utilities(region, 1)
    return PARTIAL, g.entries([(name, True, CONNECTED)]), g.agreements("pending")


def _res_not_connected(g: _Gen, region: str) -> tuple[str, list[dict[str, Any]], dict[str, str]]:
    [name] = g.utilities(region, 1)
    return PARTIAL, g.entries([(name, True, NOT_CONNECTED)]), g.agreements("none")


def _com_partial(g: _Gen, region: str) -> tuple[str, list[dict[str, Any]], dict[str, str]]:
    """Commercial: some required utilities connected, at least one still NOT_CONNECTED."""
    names = g.utilities(region, _between(g.rng, 2, 3))
    specs = [(n, True, g.rng.choice((CONNECTED, NOT_CONNECTED))) for n in names]
    specs[0] = (names[0], True, CONNECTED)
    specs[-1] = (names[-1], True, NOT_CONNECTED)
    state = g.rng.choice(("none", "done", "pending"))
    return PARTIAL, g.entries(specs), g.agreements(state)


def _com_agreement_pending(
    g: _Gen, region: str
) -> tuple[str, list[dict[str, Any]], dict[str, str]]:
    names = g.utilities(region, _between(g.rng, 2, 3))
    return PARTIAL, g.entries([(n, True, CONNECTED) for n in names]), g.agreements("pending")


def _other_utility(g: _Gen, region: str) -> tuple[str, list[dict[str, Any]], dict[str, str]]:
    """Connected another utility than the one the URL asked for: stays PARTIAL (guide)."""
    requested, other = g.utilities(region, 2)
    specs = [(requested, True, NOT_CONNECTED), (other, False, CONNECTED)]
    return PARTIAL, g.entries(specs), g.agreements(g.rng.choice(("none", "done")))


# Records Leap may send that the triage table cannot act on automatically ("unknown is data"):
# a status this version does not know, a utility status it does not know, a PARTIAL record with
# no utility at all, and a PARTIAL record whose utilities and forms are all done.
UNKNOWN_STATUS = "ON_HOLD"
UNKNOWN_UTILITY_STATUS = "PENDING_VERIFICATION"


def _unknown_status(g: _Gen, region: str) -> tuple[str, list[dict[str, Any]], dict[str, str]]:
    (name,) = g.utilities(region, 1)
    return UNKNOWN_STATUS, g.entries([(name, True, CONNECTED)]), g.agreements("pending")


def _unknown_utility_status(
    g: _Gen, region: str
) -> tuple[str, list[dict[str, Any]], dict[str, str]]:
    (name,) = g.utilities(region, 1)
    return PARTIAL, g.entries([(name, True, UNKNOWN_UTILITY_STATUS)]), g.agreements("none")


def _no_utilities(g: _Gen, region: str) -> tuple[str, list[dict[str, Any]], dict[str, str]]:
    return PARTIAL, [], g.agreements("none")


def _status_mismatch(g: _Gen, region: str) -> tuple[str, list[dict[str, Any]], dict[str, str]]:
    (name,) = g.utilities(region, 1)
    return PARTIAL, g.entries([(name, True, CONNECTED)]), g.agreements("done")


SCENARIOS: Mapping[str, tuple[int, _Builder]] = {
    "res_completed": (30, _res_completed),
    "com_completed": (6, _com_completed),
    "multi_click_completed": (4, _multi_click_completed),
    "not_started": (14, _not_started),
    "res_error": (12, _res_error),
    "com_error": (4, _com_error),
    "multi_click_error": (3, _multi_click_error),
    "res_agreement_pending": (8, _res_agreement_pending),
    "res_not_connected": (5, _res_not_connected),
    "com_partial": (6, _com_partial),
    "com_agreement_pending": (3, _com_agreement_pending),
    "other_utility": (5, _other_utility),
    "unknown_status": (1, _unknown_status),
    "unknown_utility_status": (1, _unknown_utility_status),
    "no_utilities": (1, _no_utilities),
    "status_mismatch": (1, _status_mismatch),
}
_SCENARIO_NAMES = tuple(SCENARIOS)
_SCENARIO_CUM_WEIGHTS = tuple(itertools.accumulate(w for w, _ in SCENARIOS.values()))

# The fixed block after the guide's record: (scenario, recent?, reuse the ref of record #1?).
COVERAGE_SCENARIOS: tuple[tuple[str, bool, bool], ...] = (
    *((name, False, False) for name in SCENARIOS),
    ("not_started", True, False),
    ("res_error", True, False),
    ("res_completed", False, True),
)
# Smallest record count for which every scenario, status and region is guaranteed.
MIN_COVERAGE_RECORDS = 1 + len(COVERAGE_SCENARIOS)

_FIRST_NAMES = ("Ana", "Bo", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "June")
_LAST_NAMES = ("Smith", "Garcia", "Nguyen", "O'Neil", "Kowalski", "Okafor", "Lee", "Ruiz")


def _long_ref_id(rng: random.Random, i: int) -> str:
    head = f"L{i}-"
    return head + "y" * rng.randint(150, REF_ID_MAX_LEN - len(head))


# Partner styles of Reference ID: (share of records up to here, builder; None passes it on).
_REF_ID_STYLES: tuple[tuple[float, Callable[[random.Random, int], str | None]], ...] = (
    (0.35, lambda rng, i: f"cust-{i:06d}"),
    (0.50, lambda rng, i: f"acct_{i}.{rng.getrandbits(16):04x}"),
    (0.60, lambda rng, i: f"user+{i}@example.com"),
    (0.70, lambda rng, i: f"crm:{i}:{rng.randint(100, 999)}"),
    (0.76, lambda rng, i: f"ref={i}"),
    (0.84, lambda rng, i: f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)} {i}"),
    (0.90, lambda rng, i: f"+1-555-{i:07d}"),
    (0.93, lambda rng, i: f"{i:03d}" if i < 1000 else None),
    (0.95, _long_ref_id),
)


def _random_ref_id(rng: random.Random, i: int) -> str:
    """A unique Reference ID (the record index is embedded) in one of several partner styles."""
    style = rng.random()
    for share, build in _REF_ID_STYLES:
        if style < share and (ref_id := build(rng, i)) is not None:
            return ref_id
    return f"Lead.{i}-{rng.choice(_LAST_NAMES)}_{rng.randint(1, 99)}"


def _build(g: _Gen, region: str, ref_id: str, scenario: str, recent: bool) -> dict[str, Any]:
    rng = g.rng
    if recent:
        g.last_us = g.now_us - _between(rng, _SECOND_US, _HOUR_US - _SECOND_US)
    else:
        g.last_us = g.now_us - _between(rng, _HOUR_US + _SECOND_US, HISTORY_DAYS * _DAY_US)
    g.start_us = g.last_us - _between(rng, 5 * _SECOND_US, 3 * _DAY_US)
    g.whole_seconds = rng.random() >= FRACTION_SHARE
    status, utilities, agreements = SCENARIOS[scenario][1](g, region)
    g.start_us, g.last_us = g.trunc(g.start_us), g.trunc(g.last_us)
    return {
        "id": f"{region}_{g.uuid()}_{ref_id}",
        "transmission_region": region,
        "ref_id": ref_id,
        "start_date_time_utc": g.ts(g.start_us),
        "last_interaction_date_time_utc": g.ts(g.last_us),
        "connection_status": status,
        "utility_connections": utilities,
        "agreements": agreements,
    }


def generate_records(
    seed: int = 0, count: int = 500, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Connect records, deterministic for (seed, count, now); record 0 is the guide's example.

    Last interactions spread over the ``HISTORY_DAYS`` before ``now`` (a few % inside the last
    hour); every scenario, status and region appears once ``count >= MIN_COVERAGE_RECORDS``.
    """
    if count < 1:
        raise ValueError("count must be at least 1 (record 0 is the guide's example)")
    rng = random.Random(seed)
    g = _Gen(rng, to_us(as_utc(now)))
    records: list[dict[str, Any]] = [copy.deepcopy(dict(GUIDE_EXAMPLE_RECORD))]
    regions_by_ref: dict[str, set[str]] = {"Test1012": {"CAISO"}}
    tricky = iter(TRICKY_REF_IDS)
    for i in range(1, count):
        duplicate = False
        if i <= len(COVERAGE_SCENARIOS):
            scenario, recent, duplicate = COVERAGE_SCENARIOS[i - 1]
            region = REGIONS[(i - 1) % len(REGIONS)]
            ref_id = next(tricky, None) or f"cov-{i:03d}"
            if duplicate:
                ref_id = records[1]["ref_id"]
        else:
            pick = rng.random()
            scenario = _SCENARIO_NAMES[
                bisect.bisect(_SCENARIO_CUM_WEIGHTS, rng.random() * _SCENARIO_CUM_WEIGHTS[-1])
            ]
            recent = pick < RECENT_SHARE
            duplicate = RECENT_SHARE <= pick < RECENT_SHARE + DUPLICATE_REF_SHARE
            region = rng.choice(REGIONS)
            ref_id = _random_ref_id(rng, i)
            if duplicate:
                ref_id = records[rng.randrange(1, i)]["ref_id"]
        if duplicate:
            free = [r for r in REGIONS if r not in regions_by_ref[ref_id]]
            if not free:
                ref_id, free = _random_ref_id(rng, i), list(REGIONS)
            region = free[rng.randrange(len(free))] if len(free) > 1 else free[0]
        regions_by_ref.setdefault(ref_id, set()).add(region)
        records.append(_build(g, region, ref_id, scenario, recent))
    return records


# --- meters --------------------------------------------------------------------------------

METER_DELAY_US = 24 * _HOUR_US  # "~24 hours" after COMPLETED
LATE_METER_SHARE = 0.15  # "at times significantly longer": 48 to 96 h
TWO_METER_SHARE = 0.3  # of commercial COMPLETED records with two or more utilities connected


# A service address per region (the Meters API requires one); the street number varies.
_ADDRESSES: Mapping[str, tuple[str, str, str]] = {
    "CAISO": ("San Diego", "CA", "92101"),
    "ERCOT": ("Austin", "TX", "78701"),
    "NYISO": ("New York", "NY", "10001"),
    "ISONE": ("Boston", "MA", "02108"),
    "PJM": ("Philadelphia", "PA", "19103"),
    "SERC": ("Nashville", "TN", "37203"),
    "WECC_SW": ("Phoenix", "AZ", "85004"),
    "WECC_PC": ("Seattle", "WA", "98101"),
}


def _classification(record: Mapping[str, Any]) -> str:
    required = [u for u in record.get("utility_connections") or () if u.get("utility_is_required")]
    return "COMMERCIAL" if len(required) >= 2 else "RESIDENTIAL"


def generate_meters(records: Iterable[Mapping[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Every meter the records will ever produce, including those created after ``now``.

    One meter per COMPLETED record (some commercial ones get two), created about 24 h after the
    record's last interaction, sometimes 2 to 4 days later. Sorted by ``audit.created_at`` then
    ``meter_id``: the order the emulator serves them in. Use ``meters_visible_at`` for the subset
    that exists at a given time. Records that do not fit the documented shape (or name a region
    or a Reference ID the Meters API would not accept) are skipped.
    """
    rng = random.Random(f"meters:{seed}")
    meters: list[tuple[int, str, dict[str, Any]]] = []
    for record in records:
        if record.get("connection_status") != COMPLETED:
            continue
        ref_id, region = record.get("ref_id"), record.get("transmission_region")
        last = parse_utc(str(record.get("last_interaction_date_time_utc") or ""))
        if not (isinstance(ref_id, str) and is_valid_ref_id(ref_id)) or last is None:
            continue
        if region not in _ADDRESSES:
            continue
        connected = [
            u.get("utility_name")
            for u in record.get("utility_connections") or ()
            if u.get("status") == CONNECTED
        ]
        classification = _classification(record)
        count = 2 if len(connected) >= 2 and rng.random() < TWO_METER_SHARE else 1
        if classification == "RESIDENTIAL":
            count = 1
        for utility_name in (connected or [None])[:count]:
            created = last + METER_DELAY_US + _between(rng, 0, 90 * 60 * _SECOND_US)
            if rng.random() < LATE_METER_SHARE:
                created = last + _between(rng, 48 * _HOUR_US, 96 * _HOUR_US)
            created -= created % 1000
            updated = created + _between(rng, 0, 600) * _SECOND_US
            meter_id = random_uuid(rng)
            code = _UTILITY_CODES.get(str(utility_name), "OTHER")
            city, state, postal_code = _ADDRESSES[str(region)]
            meter = {
                "meter_id": meter_id,
                "partner_reference": ref_id,
                "transmission_region": region,
                "customer_classification": classification,
                "meter_type": "UTILITY_METER",
                "is_archived": False,
                "connection_references": [ref_id],
                "customer": {
                    "street_1": f"{_between(rng, 1, 9999)} Main Street",
                    "city": city,
                    "state_or_province_code": state,
                    "postal_code": postal_code,
                    "country_code": "US",
                },
                "utility": {"utility_name": code},
                "audit": {
                    "created_by": "LEAP",
                    "created_at": format_ts(created, millis=True, suffix="+00:00"),
                    "updated_at": format_ts(updated, millis=True, suffix="+00:00"),
                },
            }
            meters.append((created, meter_id, meter))
    meters.sort(key=lambda m: (m[0], m[1]))
    return [m for _, _, m in meters]


def meter_created_us(meter: Mapping[str, Any]) -> int:
    """``audit.created_at`` in epoch microseconds; 0 (always visible) when it is missing."""
    audit = meter.get("audit")
    created = audit.get("created_at") if isinstance(audit, Mapping) else None
    return (parse_utc(created) if isinstance(created, str) else None) or 0


def meters_visible_at(
    meters: Iterable[Mapping[str, Any]], now: datetime
) -> list[Mapping[str, Any]]:
    """The meters that exist at ``now`` (``created_at <= now``), in serving order."""
    limit = to_us(as_utc(now))
    return [m for m in meters if meter_created_us(m) <= limit]
