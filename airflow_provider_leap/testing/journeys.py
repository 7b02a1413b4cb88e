"""Customers who move over time, as Leap's Connect API would show them hour by hour.

A :class:`Population` holds one scripted journey per customer: the link is clicked, the customer
stalls (no utility login yet, a utility error, a missing utility, an unsigned form), maybe tries
again later (a new stall), maybe completes. ``records_at(t)`` is what the Connect API answers at
time ``t``: Leap refreshes its data once an hour, so an interaction shows only from the first
full hour after it. Attach a population to the emulator with ``LeapEmulator.play(population)``
and move the emulator's clock; the records follow.

The journeys are the ground truth a test compares the provider's behaviour with (see
``Customer.visible_events``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from airflow_provider_leap.testing.data import (
    AGREEMENT_DONE,
    AGREEMENT_PENDING,
    DRPA_FIELD,
    ERROR_CODES,
    PRA_FIELD,
    REGIONS,
    UTILITIES,
    random_uuid,
)

REFRESH = timedelta(hours=1)


class Step(str, Enum):
    """What a customer did at one moment; the record shows the state it leaves them in."""

    CLICK = "click"  # opened the Connect link: NOT_STARTED
    ERROR = "error"  # a utility login failed or was cancelled: ERROR
    NOT_CONNECTED = "not_connected"  # picked a utility, did not log in: PARTIAL
    CONNECTED = "connected"  # utility connected, a form still to sign: PARTIAL
    COMPLETE = "complete"  # everything done: COMPLETED


@dataclass(frozen=True)
class Event:
    at: datetime
    step: Step
    error_code: str | None = None


@dataclass
class Journey:
    """One customer's record in one region: its id and its events, in time order."""

    ref_id: str
    region: str
    record_id: str
    utility: str
    events: list[Event] = field(default_factory=list)

    def visible_events(self, at: datetime) -> list[Event]:
        """The events the API shows at ``at``: those before the last hourly refresh."""
        refreshed = last_refresh(at)
        return [event for event in self.events if event.at < refreshed]

    def record_at(self, at: datetime) -> dict[str, Any] | None:
        """The Connect record at ``at`` (None before the first visible click)."""
        shown = self.visible_events(at)
        if not shown:
            return None
        start, last = shown[0], shown[-1]
        utility: dict[str, Any] = {
            "authorization_uuid": self.record_id[len(self.region) + 1 :][:36],
            "utility_name": self.utility,
            "utility_is_required": True,
            "start_date_time_utc": _ts(start.at),
            "last_interaction_date_time_utc": _ts(last.at),
        }
        agreements = {PRA_FIELD: "NOT_REQUIRED", DRPA_FIELD: "NOT_REQUIRED"}
        status, utilities = "NOT_STARTED", []
        if last.step is Step.ERROR:
            status = "ERROR"
            utilities = [{**utility, "status": "ERROR", "error_code": last.error_code}]
        elif last.step is Step.NOT_CONNECTED:
            status = "PARTIAL"
            utilities = [{**utility, "status": "NOT_CONNECTED", "error_code": None}]
        elif last.step in (Step.CONNECTED, Step.COMPLETE):
            done = last.step is Step.COMPLETE
            status = "COMPLETED" if done else "PARTIAL"
            utilities = [{**utility, "status": "CONNECTED", "error_code": None}]
            agreements = {
                name: value if done else AGREEMENT_PENDING for name, value in AGREEMENT_DONE.items()
            }
        return {
            "id": self.record_id,
            "transmission_region": self.region,
            "ref_id": self.ref_id,
            "start_date_time_utc": _ts(start.at),
            "last_interaction_date_time_utc": _ts(last.at),
            "connection_status": status,
            "utility_connections": utilities,
            "agreements": agreements,
        }


@dataclass
class Customer:
    """A Reference ID and its journeys (two for a customer who clicked in two regions)."""

    ref_id: str
    kind: str
    journeys: list[Journey]

    def visible_events(self, at: datetime) -> list[Event]:
        """Every region's visible events, in time order."""
        return sorted((e for j in self.journeys for e in j.visible_events(at)), key=_at)


def _at(event: Event) -> datetime:
    return event.at


def last_refresh(at: datetime) -> datetime:
    """The latest hourly refresh at or before ``at`` (Leap refreshes on the hour)."""
    return at.replace(minute=0, second=0, microsecond=0)


def _ts(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# Kinds of journey and their weights. "late" customers stalled before the simulation starts:
# a first run finds them days old.
KINDS: tuple[tuple[str, int], ...] = (
    ("stall", 30),
    ("complete_later", 15),
    ("stall_again", 15),
    ("quick_complete", 12),
    ("unsigned", 10),
    ("late", 13),
    ("two_regions", 5),
)


class Population:
    """``customers`` journeys drawn from ``seed``, clicking between ``start - 25 days`` (the
    late ones) and ``start + days``."""

    def __init__(
        self, *, seed: int = 0, customers: int = 1000, start: datetime, days: int = 14
    ) -> None:
        if start.utcoffset() is None:
            raise ValueError("start must be an aware datetime")
        self.start = start.astimezone(timezone.utc)
        self.days = days
        self._rng = random.Random(seed)
        names, weights = zip(*KINDS, strict=True)
        kinds = self._rng.choices(names, weights=weights, k=customers)
        self.customers = [self._customer(i, kind) for i, kind in enumerate(kinds)]

    def records_at(self, at: datetime) -> list[dict[str, Any]]:
        """What the Connect API shows at ``at``, every region's record of every customer."""
        records = (j.record_at(at) for c in self.customers for j in c.journeys)
        return [record for record in records if record is not None]

    def by_ref_id(self) -> dict[str, Customer]:
        return {customer.ref_id: customer for customer in self.customers}

    # -- drawing journeys ------------------------------------------------------------------------

    def _minutes(self, low: float, high: float) -> timedelta:
        return timedelta(minutes=round(self._rng.uniform(low, high)))

    def _journey(self, ref_id: str, region: str | None = None) -> Journey:
        rng = self._rng
        region = region or rng.choice(REGIONS)
        utility = rng.choice(UTILITIES[region])[0]
        return Journey(ref_id, region, f"{region}_{random_uuid(rng)}_{ref_id}", utility)

    def _stall(self, journey: Journey, at: datetime) -> datetime:
        """Click, then maybe a failed step a few minutes later; returns the stall time."""
        rng = self._rng
        journey.events.append(Event(at, Step.CLICK))
        roll = rng.random()
        if roll < 0.3:
            return at
        at += self._minutes(2, 25)
        if roll < 0.7:
            journey.events.append(Event(at, Step.ERROR, rng.choice(ERROR_CODES)))
        else:
            journey.events.append(Event(at, Step.NOT_CONNECTED))
        return at

    def _customer(self, index: int, kind: str) -> Customer:
        rng = self._rng
        ref_id = f"sim-{index:05d}"
        journey = self._journey(ref_id)
        journeys = [journey]
        click = self.start + self._minutes(0, self.days * 24 * 60)
        if kind == "late":
            click = self.start - self._minutes(60, 25 * 24 * 60)
        if kind == "quick_complete":
            journey.events += [
                Event(click, Step.CLICK),
                Event(click + self._minutes(3, 40), Step.COMPLETE),
            ]
        elif kind == "unsigned":
            journey.events += [
                Event(click, Step.CLICK),
                Event(click + self._minutes(3, 20), Step.CONNECTED),
            ]
            if rng.random() < 0.5:
                journey.events.append(Event(click + self._minutes(120, 6 * 24 * 60), Step.COMPLETE))
        else:
            stalled = self._stall(journey, click)
            if kind == "complete_later":
                journey.events.append(
                    Event(stalled + self._minutes(90, 5 * 24 * 60), Step.COMPLETE)
                )
            elif kind == "stall_again":
                again = stalled + self._minutes(6 * 60, 6 * 24 * 60)
                journey.events.append(Event(again, Step.ERROR, rng.choice(ERROR_CODES)))
            elif kind == "two_regions":
                other = self._journey(
                    ref_id, rng.choice([r for r in REGIONS if r != journey.region])
                )
                self._stall(other, click + self._minutes(30, 48 * 60))
                journeys.append(other)
        return Customer(ref_id, kind, journeys)
