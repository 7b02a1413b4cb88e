"""Where a set of Reference IDs stands against target statuses. No Airflow import.

One evaluation = one pass over the Connect API for all IDs (the client batches them into as few
requests as the URL length allows), shared by the sensor's poke and the deferrable trigger.
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


def record_summary(record: ConnectRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in SUMMARY_FIELDS}


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

    def describe(self, total: int) -> str:
        """The one log line a person needs: how many are still open, and which."""
        parts = [f"{len(self.reached)} of {total} Reference ID(s) reached the target status"]
        if self.waiting:
            parts.append(f"waiting on {len(self.waiting)}: {_sample(self.waiting)}")
        if self.missing:
            parts.append(
                f"not listed by Leap yet (link not clicked?) {len(self.missing)}: "
                f"{_sample(self.missing)}"
            )
        if self.failed:
            parts.append(f"in a fail status {len(self.failed)}: {_sample(self.failed)}")
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
    """Classify each Reference ID from the records Leap returned for them.

    A Reference ID with several records (one per region) has reached the target only when every
    one of them has; any record in a fail status fails it.
    """
    wanted = set(ref_ids)
    statuses: dict[str, list[str]] = {}
    result = WatchResult()
    for record in records:
        if record.ref_id not in wanted:
            continue
        statuses.setdefault(record.ref_id, []).append(str(record.connection_status))
        result.records.append(record_summary(record))
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
    """A sensor's statuses after rendering: one status, a list, or comma-separated; upper-cased
    (Leap's statuses are upper case), any value allowed (Leap may add statuses)."""
    return list(dict.fromkeys(status.strip().upper() for status in rendered_list(value, name)))
