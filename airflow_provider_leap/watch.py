"""Where a set of Reference IDs stands against target statuses. No Airflow import.

``evaluate`` is the one rule of the sensor's poke and the trigger's share of a coalesced poll.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_leap.models import IDENTITY_FIELDS, TIME_FIELDS, ConnectRecord
from airflow_provider_leap.refids import rendered_list

if TYPE_CHECKING:
    from airflow_provider_leap.client import LeapClient

# The record fields a sensor hands on: small, JSON-serialisable, enough to follow up on meters.
SUMMARY_FIELDS = IDENTITY_FIELDS + TIME_FIELDS


@dataclass
class WatchResult:
    """Outcome of one evaluation; ``reached``/``waiting``/``failed`` map ref_id -> statuses."""

    reached: dict[str, list[str]] = field(default_factory=dict)
    waiting: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, list[str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return not (self.waiting or self.failed or self.missing)

    def counts(self) -> dict[str, int]:
        """What a trigger event carries instead of the records."""
        parts = ("reached", "waiting", "missing", "failed")
        return {name: len(getattr(self, name)) for name in parts}

    def describe(self, total: int) -> str:
        """The one log line a person needs: how many are still open, and which."""
        parts = [f"{len(self.reached)} of {total} Reference ID(s) reached the target status"]
        still_open = (
            ("waiting on", self.waiting),
            ("not listed by Leap yet (link not clicked?)", self.missing),
            ("in a fail status", self.failed),
        )
        parts += [f"{label} {len(items)}: {_sample(items)}" for label, items in still_open if items]
        return "; ".join(parts)


def _sample(items: dict[str, list[str]] | list[str], limit: int = 10) -> str:
    if isinstance(items, dict):
        shown = [f"{k} ({'/'.join(v)})" for k, v in list(items.items())[:limit]]
    else:
        shown = list(items[:limit])
    more = len(items) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def evaluate(
    records: Iterable[ConnectRecord],
    ref_ids: Collection[str],
    target_statuses: Collection[str],
    fail_on_statuses: Collection[str] = (),
) -> WatchResult:
    """Classify each Reference ID. One with several records (one per region) has reached the
    target only when every one of them has; any record in a fail status fails it."""
    wanted = set(ref_ids)
    statuses: dict[str, list[str]] = {}
    result = WatchResult()
    for record in records:
        if record.ref_id in wanted:
            statuses.setdefault(record.ref_id, []).append(str(record.connection_status))
            result.records.append({name: getattr(record, name) for name in SUMMARY_FIELDS})
    targets, fails = set(target_statuses), set(fail_on_statuses)
    for ref_id in ref_ids:
        seen = statuses.get(ref_id)
        if seen is None:
            result.missing.append(ref_id)
        elif fails.intersection(seen):
            result.failed[ref_id] = seen
        elif targets.issuperset(seen):
            result.reached[ref_id] = seen
        else:
            result.waiting[ref_id] = seen
    return result


def check_ref_ids(
    client: LeapClient,
    ref_ids: Collection[str],
    target_statuses: Collection[str],
    fail_on_statuses: Collection[str] = (),
) -> WatchResult:
    """One evaluation against the API: all IDs in batched requests, never one per ID."""
    records = client.iter_connect_records(ref_ids=ref_ids)
    return evaluate(records, ref_ids, target_statuses, fail_on_statuses)


def statuses_argument(value: str | Iterable[str], name: str) -> list[str]:
    """Rendered statuses: one, a list, or comma-separated; upper-cased as Leap's are, any value
    allowed (Leap may add statuses)."""
    return list(dict.fromkeys(status.strip().upper() for status in rendered_list(value, name)))
