"""Accepted webhook events, kept in shared storage until they are recorded. No Airflow import.

Leap retries a delivery until it gets a 2xx (up to 10 times over about 8 hours), and a 2xx can be
lost on the way back, so one event may arrive several times, at several API server workers or
machines, before and after a restart. The receiver *accepts* an event by creating its marker
exclusively, in the same storage as the delivery ledger, with what is to be recorded inside::

    <root>/.webhooks/<conn_id>/<YYYY-MM-DD>/<webhook_event_id>       accepted: the event to record
    <root>/.webhooks/<conn_id>/<YYYY-MM-DD>/<webhook_event_id>.taken  someone is recording it

Exactly one creation of a marker succeeds however many workers race, so the receiver answers
2xx as soon as it exists: the event is durable, and every later delivery of it is a duplicate.
Recording it (an Airflow asset event) happens right after, off the request path; whoever
creates ``.taken`` exclusively records it, so the worker that accepted it and a worker
recovering markers left by a dead process never both do. Markers are grouped by the UTC day of
acceptance: a delivery looks in its own day and the day before (Leap's retries span 8 hours),
and older days are deleted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import msgspec

from airflow_provider_leap.ledger import ExclusiveCreate, StoragePath

log = logging.getLogger(__name__)

FOLDER = ".webhooks"  # a name no delivery channel can take (channels have no dots)
TAKEN = ".taken"
KEEP_DAYS = 3  # today, yesterday (Leap's retry window) and one more for clock skew


class Accepted(msgspec.Struct, frozen=True):
    """What an accepted event's marker holds: enough to record it after a restart."""

    uri: str  # the Airflow asset to record it on
    extra: dict[str, Any]
    accepted_at: str


_ACCEPTED = msgspec.json.Decoder(Accepted)


class Marker(StoragePath, Protocol):
    """A path with a parent and ``rmdir``: ``pathlib.Path`` and ``ObjectStoragePath`` both fit."""

    @property
    def parent(self) -> Marker: ...
    def __truediv__(self, key: str) -> Marker: ...
    def iterdir(self) -> Iterator[Marker]: ...
    def rmdir(self) -> None: ...


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def valid_folder_name(name: str) -> bool:
    """True for a name that is safe as one path segment (Airflow connection ids are)."""
    return bool(name) and name.strip(".") != "" and all(c.isalnum() or c in "-_." for c in name)


def inbox_folders(root: Marker) -> list[str]:
    """The connection ids that have accepted events under ``root``."""
    try:
        return [p.name for p in (root / FOLDER).iterdir() if valid_folder_name(p.name)]
    except (FileNotFoundError, NotADirectoryError):
        return []


class WebhookInbox:
    """The webhook events one connection has accepted.

    :param root: the folder to keep markers under (``pathlib.Path`` or ``ObjectStoragePath``),
        normally the delivery ledger's root (``[leap] ledger_url``).
    :param conn_id: the Airflow connection the events were addressed to.
    :param clock: wall clock, injectable for tests.
    """

    def __init__(
        self, root: Marker, conn_id: str, *, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        if not valid_folder_name(conn_id):
            raise ValueError(f"connection id {conn_id!r} cannot name a folder")
        self.conn_id = conn_id
        self.folder = root / FOLDER / conn_id
        self._clock = clock
        self._ready_days: set[str] = set()
        self._pruned_day = ""
        self._lock = threading.Lock()
        self._create = ExclusiveCreate()

    def __repr__(self) -> str:
        return f"WebhookInbox({str(self.folder)!r})"

    def _day_folder(self, day: str) -> Marker:
        folder = self.folder / day
        if day not in self._ready_days:
            folder.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._ready_days.add(day)
        return folder

    def accept(self, event_id: str, uri: str, extra: dict[str, Any]) -> Marker | None:
        """The new marker of the first delivery of ``event_id``; None for a repeat.

        ``event_id`` must already be validated (a canonical UUID: it becomes a file name).
        """
        now = self._clock()
        today = now.strftime("%Y-%m-%d")
        yesterday = (now - timedelta(days=1)).strftime("%Y-%m-%d")
        if (self.folder / yesterday / event_id).exists():
            return None
        marker = self._day_folder(today) / event_id
        body = msgspec.json.encode(Accepted(uri, extra, now.isoformat()))
        if not self._create(marker, body):
            return None
        self._prune(now)
        return marker

    def take(self, marker: Marker) -> bool:
        """Become the one recorder of an accepted event; False when another has it."""
        return self._create(marker.parent / (marker.name + TAKEN), b"")

    @staticmethod
    def give_back(marker: Marker) -> None:
        """Undo :meth:`take` after a failed recording, so it is recorded later."""
        (marker.parent / (marker.name + TAKEN)).unlink(missing_ok=True)

    @staticmethod
    def read(marker: Marker) -> Accepted:
        with marker.open("rb") as handle:
            return _ACCEPTED.decode(handle.read())

    def unrecorded(self, older_than: timedelta) -> Iterator[tuple[Marker, Accepted]]:
        """Accepted events nobody took, accepted more than ``older_than`` ago: those a worker
        that died after accepting them left behind (today's and yesterday's)."""
        now = self._clock()
        before = (now - older_than).isoformat()
        for day in (now - timedelta(days=1), now):
            try:
                names = {p.name: p for p in (self.folder / day.strftime("%Y-%m-%d")).iterdir()}
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name, marker in names.items():
                if name.endswith(TAKEN) or name + TAKEN in names:
                    continue
                try:
                    accepted = self.read(marker)
                except (FileNotFoundError, msgspec.DecodeError) as exc:
                    log.warning("Unreadable webhook marker %s: %s", marker, exc)
                    continue
                if accepted.accepted_at < before:
                    yield marker, accepted

    def _prune(self, now: datetime) -> None:
        """Delete day folders past the retry window, at most once per process and day."""
        today = now.strftime("%Y-%m-%d")
        with self._lock:
            if self._pruned_day == today:
                return
            self._pruned_day = today
        oldest = (now - timedelta(days=KEEP_DAYS - 1)).strftime("%Y-%m-%d")
        try:
            days = [p for p in self.folder.iterdir() if p.name < oldest]
        except (FileNotFoundError, NotADirectoryError):
            return
        for day in days:
            try:
                for marker in day.iterdir():
                    marker.unlink(missing_ok=True)
                day.rmdir()
            except OSError as exc:  # another worker prunes the same day: harmless
                log.debug("Pruning %s: %s", day, exc)
