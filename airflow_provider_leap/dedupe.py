"""Webhook deliveries seen before, remembered in shared storage. No Airflow import.

Leap retries a delivery until it gets a 2xx (up to 10 times over about 8 hours), and a 2xx can be
lost on the way back, so one event may arrive several times, at several API server workers or
machines, before and after a restart. Each first delivery *claims* its ``webhook_event_id`` by
creating a marker file exclusively, in the same storage as the delivery ledger::

    <root>/.webhooks/<conn_id>/<YYYY-MM-DD>/<webhook_event_id>

Exactly one creation succeeds however many workers race, and the marker outlives any process.
Markers are grouped by the UTC day of the first delivery: a delivery looks in its own day and
the day before (Leap's retries span 8 hours), and whole days older than that are deleted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Protocol

from airflow_provider_leap.ledger import ExclusiveCreate, StoragePath

log = logging.getLogger(__name__)

FOLDER = ".webhooks"  # a name no delivery channel can take (channels have no dots)
KEEP_DAYS = 3  # today, yesterday (Leap's retry window) and one more for clock skew


class _Folder(StoragePath, Protocol):
    def rmdir(self) -> None: ...


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def valid_folder_name(name: str) -> bool:
    """True for a name that is safe as one path segment (Airflow connection ids are)."""
    return bool(name) and name.strip(".") != "" and all(c.isalnum() or c in "-_." for c in name)


class SeenEvents:
    """The webhook events one connection has already accepted.

    :param root: the folder to keep markers under (``pathlib.Path`` or ``ObjectStoragePath``),
        normally the delivery ledger's root (``[leap] ledger_url``).
    :param conn_id: the Airflow connection the events were addressed to.
    :param clock: wall clock, injectable for tests.
    """

    def __init__(
        self, root: StoragePath, conn_id: str, *, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        if not valid_folder_name(conn_id):
            raise ValueError(f"connection id {conn_id!r} cannot name a folder")
        self.folder = root / FOLDER / conn_id
        self._clock = clock
        self._ready_days: set[str] = set()
        self._pruned_day = ""
        self._lock = threading.Lock()
        self._create = ExclusiveCreate()

    def __repr__(self) -> str:
        return f"SeenEvents({str(self.folder)!r})"

    def _day_folder(self, day: str) -> StoragePath:
        folder = self.folder / day
        if day not in self._ready_days:
            folder.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._ready_days.add(day)
        return folder

    def claim(self, event_id: str) -> StoragePath | None:
        """The new marker for the first delivery of ``event_id``; None for a repeat.

        ``event_id`` must already be validated (a canonical UUID: it becomes a file name).
        """
        now = self._clock()
        today = now.strftime("%Y-%m-%d")
        yesterday = (now - timedelta(days=1)).strftime("%Y-%m-%d")
        if (self.folder / yesterday / event_id).exists():
            return None
        marker = self._day_folder(today) / event_id
        if not self._create(marker, now.isoformat().encode()):
            return None
        self._prune(now)
        return marker

    @staticmethod
    def release(marker: StoragePath) -> None:
        """Forget a claim whose event could not be recorded, so Leap's retry records it."""
        marker.unlink(missing_ok=True)

    def _prune(self, now: datetime) -> None:
        """Delete day folders past the retry window, at most once per process and day."""
        today = now.strftime("%Y-%m-%d")
        with self._lock:
            if self._pruned_day == today:
                return
            self._pruned_day = today
        oldest = (now - timedelta(days=KEEP_DAYS - 1)).strftime("%Y-%m-%d")
        try:
            days: list[_Folder] = [p for p in self.folder.iterdir() if p.name < oldest]  # type: ignore[misc]
        except (FileNotFoundError, NotADirectoryError):
            return
        for day in days:
            try:
                for marker in day.iterdir():
                    marker.unlink(missing_ok=True)
                day.rmdir()
            except OSError as exc:  # another worker prunes the same day: harmless
                log.debug("Pruning %s: %s", day, exc)
