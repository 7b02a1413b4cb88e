"""Accepted webhook events, kept in shared storage until they are recorded. No Airflow import.

Leap retries a delivery until it gets a 2xx (up to 10 times over about 8 hours), and a 2xx can be
lost on the way back, so one event may arrive several times, at several API server workers or
machines, before and after a restart. The receiver *accepts* an event by creating its marker
exclusively, in the same storage as the delivery ledger, with what is to be recorded inside::

    <root>/.webhooks/<conn_id>/<YYYY-MM-DD>/<event_id>           accepted: the event to record
    <root>/.webhooks/<conn_id>/<YYYY-MM-DD>/<event_id>.taken     claimed: someone records it
    <root>/.webhooks/<conn_id>/<YYYY-MM-DD>/<event_id>.<n>.taken  the n-th claim (see below)
    <root>/.webhooks/<conn_id>/<YYYY-MM-DD>/<event_id>.done      recorded (committed)

(``event_id``: Leap's ``webhook_event_id``.)

Exactly one creation of a marker succeeds however many workers race, so the receiver answers
2xx as soon as it exists: the event is durable, and every later delivery of it is a duplicate.
A marker whose write failed (e.g. a full disk) is empty: the delivery was answered 503, so it
counts as not accepted, and Leap's retry writes it again.

Recording it (an Airflow asset event) happens right after, off the request path; whoever
creates a claim exclusively records it, so the worker that accepted it and a worker recovering
markers left by a dead process never both do. A claim holds when it was taken and lasts a
*lease*: a claim older than that with no ``.done`` was left by a worker that died (or lost its
storage) while recording, and a recovering worker takes it over by creating the next claim
(``.2.taken``, ``.3.taken`` ...), exclusively again. Markers are grouped by the UTC day of
acceptance: a delivery looks in its own day and the days on either side (Leap's retries span 8
hours, and two machines' clocks may sit on either side of midnight), and older days are deleted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple, Protocol

import msgspec

from airflow_provider_leap.ledger import ExclusiveCreate, StoragePath

log = logging.getLogger(__name__)

FOLDER = ".webhooks"  # a name no delivery channel can take (channels have no dots)
TAKEN = ".taken"
DONE = ".done"
KEEP_DAYS = 3  # today, yesterday (Leap's retry window) and one more for clock skew


class Accepted(msgspec.Struct, frozen=True):
    """What an accepted event's marker holds: enough to record it after a restart."""

    uri: str  # the Airflow asset to record it on
    extra: dict[str, Any]
    accepted_at: str


class _Claim(msgspec.Struct, frozen=True):
    """What a claim holds: when it was taken, so a claim a dead worker left can expire."""

    taken_at: str


class Unrecorded(NamedTuple):
    """An accepted event to recover, and the claim (its number) that recovering it takes."""

    marker: Marker
    accepted: Accepted
    claim: int


_ACCEPTED = msgspec.json.Decoder(Accepted)
_CLAIM = msgspec.json.Decoder(_Claim)


class Marker(StoragePath, Protocol):
    """A path with a parent and ``rmdir``: ``pathlib.Path`` and ``ObjectStoragePath`` both fit."""

    @property
    def parent(self) -> Marker: ...
    def __truediv__(self, key: str) -> Marker: ...
    def iterdir(self) -> Iterator[Marker]: ...
    def rmdir(self) -> None: ...


def claim_name(event_id: str, claim: int) -> str:
    """The file name of an event's ``claim``-th claim (the first: ``<id>.taken``)."""
    return event_id + TAKEN if claim == 1 else f"{event_id}.{claim}{TAKEN}"


def utcnow() -> datetime:
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
        self, root: Marker, conn_id: str, *, clock: Callable[[], datetime] = utcnow
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

        ``event_id`` must already be validated (a canonical UUID: it becomes a file name). A
        marker that exists but cannot be read (its write failed, the delivery was answered 503)
        is written again: this delivery is the one accepted. Recording it twice is impossible:
        nothing was queued for the failed one, and recording goes through an exclusive claim.
        """
        now = self._clock()
        body = msgspec.json.encode(Accepted(uri, extra, now.isoformat()))
        # Every day kept, and tomorrow: a repeat may reach a worker whose clock is across
        # midnight from the one that accepted it, or be replayed days later.
        days = [
            (now + timedelta(days=d)).strftime("%Y-%m-%d") for d in (*range(1 - KEEP_DAYS, 0), 1)
        ]
        marker = next(
            (m for m in (self.folder / day / event_id for day in days) if m.exists()), None
        )
        if marker is None:
            marker = self._day_folder(now.strftime("%Y-%m-%d")) / event_id
            if self._create(marker, body):
                self._prune(now)
                return marker
        if self._readable(marker):
            return None
        log.warning(
            "Webhook marker %s is empty or damaged (its write failed): rewriting it", marker
        )
        with marker.open("wb") as handle:
            handle.write(body)
        return marker

    def _readable(self, marker: Marker) -> bool:
        try:
            self.read(marker)
        except FileNotFoundError:  # pruned or rewritten meanwhile: nothing to repair here
            return True
        except msgspec.DecodeError:
            return False
        return True

    def take(self, marker: Marker, claim: int = 1) -> bool:
        """Become the one recorder of an accepted event with its ``claim``-th claim (a higher
        one takes over an expired claim); False when another has it."""
        taken = msgspec.json.encode(_Claim(self._clock().isoformat()))
        return self._create(marker.parent / claim_name(marker.name, claim), taken)

    @staticmethod
    def give_back(marker: Marker, claim: int = 1) -> None:
        """Undo :meth:`take` after a failed recording, so it is recorded later."""
        (marker.parent / claim_name(marker.name, claim)).unlink(missing_ok=True)

    def done(self, marker: Marker) -> None:
        """Say the event is recorded (after the commit): no claim of it ever expires."""
        self._create(marker.parent / (marker.name + DONE), b"")

    @staticmethod
    def read(marker: Marker) -> Accepted:
        with marker.open("rb") as handle:
            return _ACCEPTED.decode(handle.read())

    def unrecorded(self, older_than: timedelta, lease: timedelta) -> Iterator[Unrecorded]:
        """Accepted events not recorded (today's and yesterday's): accepted more than
        ``older_than`` ago and never claimed (or given back), or claimed more than ``lease`` ago
        and not done (a worker died, or lost its storage, while recording them)."""
        now = self._clock()
        before, expired = (now - older_than).isoformat(), (now - lease).isoformat()
        for day in (now - timedelta(days=1), now):
            try:
                paths = list((self.folder / day.strftime("%Y-%m-%d")).iterdir())
            except (FileNotFoundError, NotADirectoryError):
                continue
            markers: dict[str, Marker] = {}
            claims: dict[str, tuple[int, Marker]] = {}  # the latest claim of each event
            done: set[str] = set()
            for path in paths:
                event_id, *rest = path.name.split(".")
                if not rest:
                    markers[event_id] = path
                elif rest == ["done"]:
                    done.add(event_id)
                elif rest[-1] == TAKEN[1:]:
                    number = int(rest[0]) if len(rest) == 2 and rest[0].isdigit() else 1
                    if number >= claims.get(event_id, (0, path))[0]:
                        claims[event_id] = (number, path)
            for event_id, marker in markers.items():
                if event_id in done:
                    continue
                try:
                    accepted = self.read(marker)
                except (FileNotFoundError, msgspec.DecodeError) as exc:
                    # A failed write, answered 503: Leap's retry writes it again.
                    log.info("Unreadable webhook marker %s (not accepted yet): %s", marker, exc)
                    continue
                number, claim = claims.get(event_id, (0, marker))
                if number == 0:
                    if accepted.accepted_at < before:
                        yield Unrecorded(marker, accepted, 1)
                    continue
                claimed_at = self._claimed_at(claim, accepted)
                if claimed_at is not None and claimed_at < expired:
                    yield Unrecorded(marker, accepted, number + 1)

    @staticmethod
    def _claimed_at(claim: Marker, accepted: Accepted) -> str | None:
        """When ``claim`` was taken; for one without a time (an empty claim of an earlier
        version, or a failed write), when the event was accepted: it cannot be earlier. None:
        given back meanwhile (its holder takes the same claim again, or the next look decides)."""
        try:
            with claim.open("rb") as handle:
                return _CLAIM.decode(handle.read()).taken_at
        except FileNotFoundError:
            return None
        except msgspec.DecodeError:
            return accepted.accepted_at

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
