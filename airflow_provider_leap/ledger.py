"""The delivery ledger: what was sent to whom, so nothing is ever sent twice. No Airflow import.

It lives in storage every Airflow deployment already has: a folder, local or in an object store
(any ``pathlib.Path`` or Airflow ``ObjectStoragePath``, e.g. ``s3://bucket/leap-ledger``), one
subfolder per channel::

    <root>/<channel>/ledger.json               compacted: one entry per customer's latest stall
    <root>/<channel>/claims/<key>.<n>.claim    attempt n of one contact, claimed before the send
    <root>/<channel>/claims/<key>.<n>.outcome  written right after it: sent or failed
    <root>/<channel>/slots/<slot>              the customer's next message
    <root>/<channel>/generation                a new id per compaction, written before it deletes
    <root>/<channel>/compact.lock              held by the one task folding claims into ledger.json
    <root>/<channel>/compact.lock.broken-<d>   made by the one task breaking a stale lock (.2, .3
                                               ...: the next, when that one died breaking it)

A sender *claims* attempt ``n`` of a contact by creating its claim file exclusively, so however
Airflow runs the task (a retry, a clear, two workers, the webhook DAG beside the hourly one)
only one process ever sends that attempt; with it, it creates the customer's message slot, which
only a compaction deletes. So two senders that planned at different times, and picked two steps
of a stall, or read two refreshes and picked two stalls, never both send. Right after the send,
a second file records the outcome (a new file, not a rewrite: cheaper, and never a half-written
claim). A claim with no outcome (the process was killed mid-send) may or may not have gone out:
once stale it counts as sent, never repeated, and is reported for a person.

Compaction folds settled claims into ``ledger.json`` and then deletes them, which would let a
sender that planned earlier claim an attempt already sent: so every compaction first writes
the snapshot, then a new ``generation``, then deletes; a claim checks the generation (see
:meth:`DeliveryLedger.claim`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import msgspec

from airflow_provider_leap.contact import (
    DEFAULT_HORIZON,
    DEFAULT_MIN_GAP,
    Contact,
    same_stall,
    stall_order,
)
from airflow_provider_leap.errors import LeapError
from airflow_provider_leap.gc_pause import gc_paused
from airflow_provider_leap.models import parse_timestamp

log = logging.getLogger(__name__)

SNAPSHOT = "ledger.json"
# ``ledger.json``'s format: 2 knows steps by their offset from the stall (1, in development
# builds only, by their number).
FORMAT = 2
CLAIMS = "claims"
# One file per customer with a message being sent (``message_slot``): created exclusively with the
# claim, so two senders planning different messages to one customer collide.
SLOTS = "slots"
SLOT_PREFIX = "ms-"
CLAIM, OUTCOME = "claim", "outcome"  # the suffixes of an attempt's two files
LOCK = "compact.lock"
GENERATION = "generation"
IDENTITY = "ledger-id"
DEFAULT_STALE_AFTER = timedelta(minutes=30)

SENDING, SENT, FAILED = "sending", "sent", "failed"


class LedgerError(LeapError):
    """The ledger cannot be read or written: nothing is sent without it."""


class OlderCopy(LedgerError):
    """The ledger is older than a sender's ``Mark`` says (``why``): found before it was
    compacted, so the copy is left as it was found."""

    def __init__(self, why: str) -> None:
        super().__init__(f"the delivery ledger is an older copy: {why}")
        self.why = why


class StoragePath(Protocol):
    """What the ledger needs of a path: ``pathlib.Path`` and ``ObjectStoragePath`` both fit."""

    @property
    def name(self) -> str: ...
    def __truediv__(self, key: str) -> StoragePath: ...
    def open(self, mode: str = ...) -> Any: ...
    def iterdir(self) -> Iterator[StoragePath]: ...
    def mkdir(self, *, parents: bool = ..., exist_ok: bool = ...) -> None: ...
    def unlink(self, missing_ok: bool = ...) -> None: ...
    def exists(self) -> bool: ...
    def replace(self, target: Any) -> Any: ...


class Claim(msgspec.Struct, kw_only=True):
    """One attempt to send one contact, as stored in its claim file."""

    contact_key: str
    ref_id: str
    stall: str
    offset: int  # the step's (``Contact.offset``)
    final: bool = False  # the cadence's last step (``Contact.final``)
    attempt: int
    state: str
    now: str  # the run's notion of now: when the message counts as sent (cadence spacing)
    claimed_at: str  # wall clock: tells a live claim from one a killed process left behind
    owner: str = ""
    error: str | None = None
    horizon: float = 0.0  # the sender's, in seconds: see ``Snapshot.horizon``
    slot: str = ""  # its ``message_slot``: kept while the claim is live


def message_slot(ref_id: str) -> str:
    """The name of the customer's next message, whichever step and stall are planned as it.

    The customer alone, not their last message on record: two senders' views of it differ when
    one has forgotten an old stall at the horizon. Only a compaction deletes the slot, after the
    send settled, and ``_covered`` checks that compaction's snapshot: so a customer's next
    message waits for one compaction after their last (each run's load makes one, unless a
    killed compaction holds the lock: ``stale_after``)."""
    digest = hashlib.sha256(f"{ref_id}\x1fcustomer".encode()).hexdigest()
    return f"{SLOT_PREFIX}{digest[:40]}"


class Entry(msgspec.Struct, array_like=True):
    """A customer's latest stall in the compacted ledger (array-like: 100,000 stay small).

    It is also what ``plan_contacts`` reads (a ``contact.StallRecord``), so loading the ledger
    builds no second object per customer.
    """

    ref_id: str
    stall: str
    sent_offset: int = -1  # steps by their offset from the stall, as ``contact.StallRecord``
    sent_at: int | None = None  # epoch s of the last send: its run's moment, or later
    failed_offset: int = -1
    failures: int = 0
    in_flight: bool = False  # set in memory only, after the snapshot was written
    # Who made the latest failed attempt (its claim's ``owner``): a retry of the run that gave a
    # step up reports it again (Airflow clears the failed try's report).
    failed_by: str | None = None
    # Who found the send of ``sent_offset`` unconfirmed (killed mid-way): reported again by a
    # retry of that run, for the same reason.
    unconfirmed_by: str | None = None
    sent_count: int = 0  # steps sent (claims are folded in offset order: see ``fold``)
    finished: bool = False  # the final step went out
    # Who sent ``sent_offset`` (state sent: not a send killed mid-way), while it is within the
    # gap: a retry of that run counts the sends its earlier tries made (review s17a F2).
    sent_by: str | None = None
    failed_at: int | None = None  # epoch s of the latest failed attempt's run moment (spacing)

    def fold(self, claim: Claim) -> None:
        if claim.state == FAILED:
            if (claim.offset, claim.attempt) > (self.failed_offset, self.failures):
                self.failed_offset, self.failures = claim.offset, claim.attempt
                self.failed_by, self.failed_at = claim.owner, _epoch(claim.now)
        elif claim.offset >= self.sent_offset:  # sent, or sending and stale (counted as sent)
            if claim.offset > self.sent_offset:  # a claim folded again counts once
                self.unconfirmed_by = None
                self.sent_count += 1
            self.sent_by = claim.owner if claim.state == SENT else None
            self.sent_offset = claim.offset
            self.finished = self.finished or claim.final
            sent_at = _epoch(claim.now)
            if self.sent_at is None or (sent_at is not None and sent_at > self.sent_at):
                self.sent_at = sent_at


def _epoch(text: str) -> int | None:
    when = parse_timestamp(text)
    return None if when is None else int(when.timestamp())


class Snapshot(msgspec.Struct):
    version: int
    written_at: str
    entries: list[Entry]
    generation: str = ""  # the compaction that wrote it (also in the ``generation`` file)
    # The highest expiry cutoff ever applied ("YYYY-MM-DDTHH:MM:SS"): stalls before it were
    # forgotten, so they stay expired for a run whatever its own "now" (a cleared old run).
    forgotten_before: str = ""
    # The longest horizon (seconds) any task sharing the channel forgets with: a task with a
    # shorter policy must not forget the stalls another task still reminds.
    horizon: float = 0.0
    # The folder's ``ledger-id``, so a lost file (an object store's expiry rule: it is the oldest
    # object of the folder) is restored rather than replaced by a new name.
    ledger_id: str = ""
    # How many compactions wrote it (+1 each; 0: none yet, or a version before this field): a
    # copy of the ledger with a lower number than a sender saw is older (see ``Mark``).
    sequence: int = 0


class Mark(msgspec.Struct, kw_only=True):
    """What the senders of a ledger leave (the operator: in one Airflow Variable per ledger) to
    tell the next run whether the ledger it finds is older than the one they sent with
    (``LedgerView.older_than``)."""

    sequence: int = 0  # the compactions behind the ledger after its load
    claim: Claim | None = None  # the last attempt it recorded (sent or failed)

    def join(self, other: Mark | None) -> Mark:
        """This mark and another sender's as one: the higher count, the later attempt (by the
        wall clock of its claim). Both are recorded in the ledger, so is the join."""
        if other is None:
            return self
        claims = [claim for claim in (self.claim, other.claim) if claim is not None]
        claim = max(claims, key=lambda claim: claim.claimed_at, default=None)
        return Mark(sequence=max(self.sequence, other.sequence), claim=claim)

    @classmethod
    def parse(cls, data: Any) -> Mark | None:
        """A mark as ``msgspec.to_builtins`` stored it; None when there is none or it does not
        read (written by another version): no verdict then, rather than a false alarm."""
        try:
            return None if data is None else msgspec.convert(data, cls)
        except msgspec.ValidationError:
            return None


_SNAPSHOT_DECODER = msgspec.json.Decoder(Snapshot)
_CLAIM_DECODER = msgspec.json.Decoder(Claim)


def _entry_for(entries: dict[str, Entry], claim: Claim) -> Entry | None:
    """The customer's entry for the claim's stall: a later stall starts a new entry; a claim
    for an earlier stall than the one on record no longer matters (None)."""
    entry = entries.get(claim.ref_id)
    if entry is not None and entry.stall != claim.stall:
        if same_stall(entry.stall, claim.stall):  # the same instant in another text
            entry.stall = claim.stall
            return entry
        if stall_order(entry.stall) > stall_order(claim.stall):
            return None
        # A later stall: a new entry, which keeps when the customer's last message went out.
        entry = entries[claim.ref_id] = Entry(claim.ref_id, claim.stall, sent_at=entry.sent_at)
    if entry is None:
        entry = entries[claim.ref_id] = Entry(claim.ref_id, claim.stall)
    return entry


def _covers(entry: Entry | None, contact: Contact, recent: int) -> bool:
    """Whether a customer's compacted entry already records this attempt (sent, failed as
    often, or superseded by a later step or stall), or a message of another stall, sent since
    the plan and after ``recent`` (epoch s), so this one would come too close: a stall the
    sender forgot at the horizon included, whose messages its plan could not see."""
    if entry is None:
        return False
    if not same_stall(entry.stall, contact.stall):
        # an older stall's message, or one carried to a newer stall
        since = (entry.sent_at or 0) > max(contact.last_sent or 0, recent)
        return stall_order(entry.stall) > stall_order(contact.stall) or since
    if entry.sent_offset >= contact.offset or entry.failed_offset > contact.offset:
        return True
    if entry.sent_count > contact.sent_before:  # another step went out since the plan
        return True
    return entry.failed_offset == contact.offset and entry.failures >= contact.attempt


def _read_text(path: StoragePath) -> str:
    """A small ASCII file's text; "" when there is no such file."""
    try:
        with path.open("rb") as handle:
            return bytes(handle.read()).decode("ascii", "replace")
    except FileNotFoundError:
        return ""


def _read_identity(path: StoragePath) -> str:
    """The ``ledger-id`` in ``path``; "" when there is none yet (or not all of it)."""
    text = _read_text(path).strip()
    return text if len(text) == 32 and text.isalnum() else ""


def _unconfirmed(ref_id: str, stall: str, offset: int) -> dict[str, Any]:
    return {"ref_id": ref_id, "stall": stall, "offset": offset}


def _by_ref_id(snapshot: Snapshot) -> dict[str, Entry]:
    return {entry.ref_id: entry for entry in snapshot.entries}


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LedgerView:
    """The ledger as one run sees it: ``states`` is what ``plan_contacts`` takes."""

    states: dict[str, Entry] = field(default_factory=dict)  # by Reference ID
    # Sends killed mid-way, found by this load (or, with ``load(run=...)``, by a try of the run).
    unconfirmed: list[dict[str, Any]] = field(default_factory=list)
    compacted: bool = False
    stalls: int = 0
    # Stalls before this were forgotten: expired for the plan whatever the run's "now"
    # (``plan_contacts(forgotten_before=...)``).
    forgotten_before: datetime | None = None
    sequence: int = 0  # ``Snapshot.sequence`` of the snapshot read, before this load compacted

    def older_than(self, mark: Mark) -> str | None:
        """Why this ledger is an older copy of the one a sender left ``mark`` on (a backup
        restored, a rollback, a folder copied back), or None when it holds all the mark says.

        The ledger only grows: its compactions are counted, and what an attempt recorded stays
        recorded (folded into ``ledger.json``, or forgotten with its stall past the horizon). So
        a ledger that lacks either was copied before the sender wrote them, and lacks every
        message sent after the copy too. Costs one lookup, whatever the ledger's size.
        """
        if self.sequence < mark.sequence:
            return (
                f"its ledger.json was written by compaction {self.sequence}, the last run "
                f"sending with it saw compaction {mark.sequence}"
            )
        claim = mark.claim
        if claim is None or self._records(claim):
            return None
        return (
            f"it does not record the last message a run sending with it recorded ({claim.state}: "
            f"{claim.contact_key} attempt {claim.attempt}, to {claim.ref_id} at {claim.now})"
        )

    def _records(self, claim: Claim) -> bool:
        """Whether the ledger holds ``claim``: folding it in again would change nothing."""
        if self.forgotten_before is not None and stall_order(claim.stall) < self.forgotten_before:
            return True  # forgotten with its stall, as every copy would
        known = self.states.get(claim.ref_id)
        entries = {} if known is None else {claim.ref_id: msgspec.structs.replace(known)}
        entry = _entry_for(entries, claim)
        if entry is None:  # a later stall of the customer is on record
            return True
        before = msgspec.structs.replace(entry)
        entry.fold(claim)
        return entry == before


# What ``os.link`` raises where a file system has no hard links.
_NO_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})


class ExclusiveCreate:
    """Create a file, body included, only if it does not exist yet: what every claim rests on.

    Calling it returns True when this call created ``path``, False when it existed. The file
    appears whole or not at all, so a process killed mid-way or a full disk never leaves an
    empty file that blocks the name: on a local or network disk the body goes into a temporary
    file in the same folder, hard-linked to ``path`` (a link fails when the name exists); an
    object store writes the object at close of ``open("xb")``, and a write that fails removes
    what it made. A store without exclusive create falls back, once and with a warning, to
    check-then-write: concurrent writers then need an Airflow pool of one slot (see the docs);
    a retry or a clear is still safe.
    """

    def __init__(self) -> None:
        self.exclusive = True
        self.links = True

    def __call__(self, path: StoragePath, body: bytes) -> bool:
        local = _local(path)
        if local is not None and self.links:
            try:
                return _link_new(local, body)
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
                log.warning("%s takes no hard links (%s); creating files in place", path, exc)
                self.links = False
        if self.exclusive:
            try:
                handle = path.open("xb")
            except FileExistsError:
                return False
            except (ValueError, NotImplementedError, TypeError):
                log.warning("%s has no exclusive create; relying on one writer at a time", path)
                self.exclusive = False
            else:
                try:
                    _fill(path, handle, body)
                except FileExistsError:  # a store that decides at commit (S3, GCS): it existed
                    return False
                return True
        if path.exists():
            return False
        _fill(path, path.open("wb"), body)
        return True


def _local(path: StoragePath) -> Path | None:
    """The ``pathlib.Path`` of a path on this machine's file systems (``file://`` included)."""
    if isinstance(path, Path):
        return path
    if getattr(path, "protocol", None) in ("file", "local"):
        return Path(str(getattr(path, "path", "")))
    return None


def _link_new(path: Path, body: bytes) -> bool:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "xb") as handle:
            handle.write(body)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        temporary.unlink(missing_ok=True)


def _fill(path: StoragePath, handle: Any, body: bytes) -> None:
    """Write a file just created; if the write fails, remove it: no half-made file blocks the
    name. A failure at close is left alone: S3's and GCS's exclusive create decide there, and
    whatever refused the commit (the name taken, or S3's 409 when a delete of the name ran at
    the same time) means the object under the name, if any, is another writer's."""
    written = False
    try:
        with handle:
            handle.write(body)
            written = True
    except BaseException:
        if not written:
            with contextlib.suppress(Exception):
                path.unlink(missing_ok=True)
        raise


def _write(path: StoragePath, body: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(body)


@contextlib.contextmanager
def _storage_failure(message: Callable[[Exception], str]) -> Iterator[None]:
    """Any failure of the storage inside, as a ``LedgerError`` that says what it stopped."""
    try:
        yield
    except Exception as exc:
        raise LedgerError(message(exc)) from exc


class DeliveryLedger:
    """One channel's ledger (``email``, ``sms``, ``crm`` ...) under ``root``.

    :param root: the ledger folder (``pathlib.Path`` or ``ObjectStoragePath``).
    :param channel: a name per delivery channel: each keeps its own record of what it sent.
    :param owner: who claims (e.g. ``dag/run/task/try``), written into claims for people and
        kept for a failed attempt (``Entry.failed_by``).
    :param horizon: stalls older than this are forgotten (the policy never contacts them); a
        longer horizon of another task sharing the channel wins.
    :param min_gap: the policy's ``min_gap``: a claim made after another task's compaction is
        given back when that compaction recorded a message to the customer this close before;
        a stall past the horizon is kept until this long after its last message.
    :param stale_after: a ``sending`` claim older than this was left by a killed process.
    :param clock: wall clock, injectable for tests.
    """

    def __init__(
        self,
        root: StoragePath,
        *,
        channel: str = "email",
        owner: str = "",
        horizon: timedelta = DEFAULT_HORIZON,
        min_gap: timedelta = DEFAULT_MIN_GAP,
        stale_after: timedelta = DEFAULT_STALE_AFTER,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if not channel or not channel.replace("_", "").replace("-", "").isalnum():
            raise LedgerError(f"channel {channel!r} must be letters, digits, '-' or '_'")
        self.folder = root / channel
        self.claims = self.folder / CLAIMS
        self.channel = channel
        self.owner = owner
        self.horizon = horizon
        self.min_gap = min_gap
        self.stale_after = stale_after
        self._clock = clock
        self._create_exclusive = ExclusiveCreate()
        self._prepared = False
        # The compaction behind the snapshot last read, and that snapshot when it is newer
        # than the one the plan came from (read by ``claim`` after another task compacted).
        self._generation = ""
        self._newer: dict[str, Entry] | None = None
        self._forgotten_before = ""
        self._token = ""  # of the compaction lock this ledger last took
        self._name = ""  # the folder's ledger-id, once read (it never changes)
        self._recorded: Claim | None = None  # the last attempt ``settle`` recorded

    def __repr__(self) -> str:
        return f"DeliveryLedger({str(self.folder)!r})"

    # -- set-up ----------------------------------------------------------------------------------

    def _prepare(self) -> None:
        if not self._prepared:
            self.claims.mkdir(parents=True, exist_ok=True)
            (self.folder / SLOTS).mkdir(parents=True, exist_ok=True)
            self._prepared = True

    def check_writable(self) -> None:
        """Fail before any send when the ledger cannot be written (wrong path, permissions)."""
        with _storage_failure(
            lambda exc: (
                f"The delivery ledger at {self.folder} cannot be written ({exc}); nothing "
                "was sent. Fix the location or its permissions ([leap] ledger_url)."
            )
        ):
            self._prepare()
            probe = self.folder / f".probe-{uuid.uuid4().hex}"
            _write(probe, b"ok")
            probe.unlink()

    def identity(self) -> str:
        """The channel folder's lasting name, made by its first user and kept when the folder is
        copied: a task that finds another name than its earlier runs recorded is not looking at
        the record it sent with (moved without its contents, wiped, renamed, a worker's disk)."""
        return self._identity(None)

    def _identity(self, snapshot: Snapshot | None) -> str:
        """``identity``; ``snapshot``: the one in hand, not read again (100,000 entries)."""
        if self._name:
            return self._name
        path = self.folder / IDENTITY
        with _storage_failure(lambda exc: f"Cannot read the delivery ledger {self.folder}: {exc}"):
            self._prepare()
            found = _read_identity(path)
            if not found:
                kept = (snapshot or self._read_snapshot()).ledger_id
                self._create_exclusive(path, (kept or uuid.uuid4().hex).encode())
            for _ in range(20):  # created by another task, maybe not written yet (no hard links)
                found = found or _read_identity(path)
                if found:
                    self._name = found
                    return found
                time.sleep(0.05)
        raise LedgerError(f"{path} is still empty: another task is creating it; try again")

    # -- reading ---------------------------------------------------------------------------------

    def load(
        self, now: datetime, *, run: str | None = None, expect: Mark | None = None
    ) -> LedgerView:
        """Everything known about each stall, with claims not yet compacted folded in.

        Compacts (persists the fold, forgets stalls past the horizon) when no other task is
        compacting; otherwise reads only. A send found unconfirmed is listed by the load that
        compacts it, and again by any load whose ``run`` prefixes the ``owner`` of that one (a
        retry of the run: Airflow cleared the earlier try's report). ``expect``: the mark a
        sender left, raising :class:`OlderCopy` before anything is written when the ledger is
        older (compacting it would make it look as new to the next check, a retry's included).
        A ``now`` ahead of the ledger's clock (a wait marked done by hand) is read as the clock:
        forgetting at it would drop stalls before their horizon, for good.
        """
        now = min(now, self._clock())
        with _storage_failure(lambda exc: f"Cannot lock the delivery ledger {self.folder}: {exc}"):
            locked = self._lock()
        try:
            return self._load(now, compact=locked, run=run, expect=expect)
        finally:
            if locked:
                self._unlock()

    def _load(
        self, now: datetime, *, compact: bool, run: str | None, expect: Mark | None
    ) -> LedgerView:
        # The lock is taken before anything is read, so the snapshot a compaction writes is
        # built on the latest one (no other compaction can slip in between and be overwritten).
        # Claims are read before the snapshot: a claim deleted before it was listed was folded
        # into a snapshot written before its deletion, so the snapshot read next holds it; a
        # claim seen in both is folded twice, which changes nothing (``Entry.fold`` keeps the
        # highest offset, attempt and time, and counts a step once).
        # Slots before the claims (see ``claim``); only a compaction deletes them.
        slots = self._list(self.folder / SLOTS) if compact else []
        claims = self._read_claims()
        snapshot = self._read_snapshot()
        entries = _by_ref_id(snapshot)
        stale_before = _iso(self._clock() - self.stale_after)
        view = LedgerView()
        live: list[Claim] = []
        folded: list[StoragePath] = []
        for paths, claim in claims:
            if claim.state == SENDING and claim.claimed_at >= stale_before:
                live.append(claim)
                continue
            if claim.state == SENDING:
                view.unconfirmed.append(_unconfirmed(claim.ref_id, claim.stall, claim.offset))
            entry = _entry_for(entries, claim)
            if entry is not None:
                entry.fold(claim)
                if claim.state == SENDING and entry.sent_offset == claim.offset:
                    entry.unconfirmed_by = self.owner
            folded += paths
        # Stalls are canonical "YYYY-MM-DDTHH:MM:SS[.f]Z" texts: comparing their first 19
        # characters compares the times, to the second, without parsing 100,000 of them.
        longest = max([snapshot.horizon, *(claim.horizon for _, claim in claims)])
        horizon = max(self.horizon, timedelta(seconds=longest))
        cutoff = max(_iso(now - horizon)[:19], snapshot.forgotten_before)
        # A stall past the horizon is forgotten, once the gap has passed since its last message:
        # until then it spaces the customer's next one (a new stall's first contact).
        recent = self._gap_start(now)
        expired = []
        for ref_id, entry in entries.items():
            if (entry.sent_at or 0) > recent:
                continue
            if entry.stall[:19] < cutoff:
                expired.append(ref_id)
            entry.sent_by = None  # a run's tries are hours apart at most: kept small
        for ref_id in expired:
            del entries[ref_id]
        view.states, view.sequence = entries, snapshot.sequence
        view.forgotten_before = parse_timestamp(cutoff + "Z") if cutoff else None
        why = None if expect is None else view.older_than(expect)
        if why is not None:
            raise OlderCopy(why)
        generation = snapshot.generation
        if compact and (folded or expired):
            generation = uuid.uuid4().hex
            name = self._identity(snapshot)
            self._write_snapshot(entries, generation, cutoff, horizon, name, snapshot.sequence + 1)
            # Written after the snapshot and before any claim is deleted: see ``_covered``.
            self._replace(GENERATION, generation.encode())
            for path in folded:
                path.unlink(missing_ok=True)
            view.compacted = True
        if compact:  # a slot whose claim is not live: its message is in this snapshot, or failed
            held = {claim.slot for claim in live}
            for path in slots:  # not another sender's slot still being created (a tmp file)
                if path.name.startswith(SLOT_PREFIX) and path.name not in held:
                    path.unlink(missing_ok=True)
        self._generation, self._newer = generation, None
        self._forgotten_before = cutoff
        if view.unconfirmed and not view.compacted:
            view.unconfirmed = []  # reported by the task that folds them, once
        if run:  # and by a retry of its run, whose earlier try's report Airflow has cleared
            view.unconfirmed += [
                _unconfirmed(e.ref_id, e.stall, e.sent_offset)
                for e in entries.values()
                if e.unconfirmed_by
                and e.unconfirmed_by != self.owner
                and e.unconfirmed_by.startswith(run)
            ]
        view.stalls = len(entries)
        for claim in live:
            entry = _entry_for(entries, claim)
            if entry is not None:
                entry.in_flight = True
        return view

    def _read_snapshot(self) -> Snapshot:
        path = self.folder / SNAPSHOT
        try:
            with path.open("rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return Snapshot(FORMAT, "", [])
        except Exception as exc:
            raise LedgerError(f"The delivery ledger {path} cannot be read: {exc}") from exc
        try:
            with gc_paused():  # 100,000 entries at once (bench.ledger)
                snapshot = _SNAPSHOT_DECODER.decode(data)
        except msgspec.DecodeError as exc:
            raise LedgerError(
                f"The delivery ledger {path} is damaged ({exc}); restore it from a backup or "
                "move it aside (every stall in it would then be contacted again)"
            ) from None
        if snapshot.version != FORMAT:
            raise LedgerError(
                f"The delivery ledger {path} has format {snapshot.version}, and this provider "
                f"reads format {FORMAT}: use the provider version that wrote it"
            )
        return snapshot

    @staticmethod
    def _list(folder: StoragePath) -> list[StoragePath]:
        try:
            return list(folder.iterdir())
        except (FileNotFoundError, NotADirectoryError):  # nothing claimed yet
            return []

    def _read_claims(self) -> list[tuple[list[StoragePath], Claim]]:
        """Each attempt's files and what they say: the outcome when written, else the claim."""
        paths = self._list(self.claims)
        attempts: dict[str, tuple[list[StoragePath], Claim]] = {}
        for path in paths:
            attempt, _, kind = path.name.rpartition(".")
            if kind not in (CLAIM, OUTCOME):
                continue
            claim = self._read_claim(path)
            if claim is None:
                continue
            known = attempts.get(attempt)
            if known is None:
                attempts[attempt] = ([path], claim)
            else:
                known[0].append(path)
                if kind == OUTCOME:
                    attempts[attempt] = (known[0], claim)
        # A stall's steps in order: ``Entry.fold`` counts a step only past the one recorded.
        return sorted(attempts.values(), key=lambda found: found[1].offset)

    @staticmethod
    def _read_claim(path: StoragePath) -> Claim | None:
        try:
            with path.open("rb") as handle:
                return _CLAIM_DECODER.decode(handle.read())
        except FileNotFoundError:  # folded by a concurrent compaction
            return None
        except msgspec.ValidationError as exc:  # whole, in another shape: not to be ignored
            raise LedgerError(
                f"{path} is not a claim of format {FORMAT} ({exc}): use the provider version "
                "that wrote it"
            ) from None
        except msgspec.DecodeError:
            # A claim whose write was cut short: its sender died while claiming, so nothing
            # was sent yet. Left alone; it blocks only that one attempt number.
            log.warning("Unreadable file %s in the delivery ledger: left as is", path)
            return None

    # -- compaction ------------------------------------------------------------------------------

    def _write_snapshot(
        self,
        entries: dict[str, Entry],
        generation: str,
        forgotten_before: str,
        horizon: timedelta,
        ledger_id: str,
        sequence: int,
    ) -> None:
        snapshot = Snapshot(
            version=FORMAT,
            written_at=_iso(self._clock()),
            entries=list(entries.values()),
            generation=generation,
            forgotten_before=forgotten_before,
            horizon=horizon.total_seconds(),
            ledger_id=ledger_id,
            sequence=sequence,
        )
        self._replace(SNAPSHOT, msgspec.json.encode(snapshot))

    def _replace(self, name: str, body: bytes) -> None:
        """Write a file of the channel folder so readers see the old one or the new one whole
        (a marker truncated mid-write would read as "never compacted")."""
        temporary = self.folder / f"{name}.{uuid.uuid4().hex}.tmp"
        _write(temporary, body)
        temporary.replace(self.folder / name)

    def _lock(self) -> bool:
        """Take the compaction lock; False while another task holds it (that one compacts).

        A lock that vanished between our create and our read was released just now: this load
        only reads (breaking it could remove the next holder's fresh lock, and two compactions
        would then write over each other). Only a lock older than ``stale_after``, or damaged,
        was left by a killed compaction and is broken.
        """
        self._prepare()
        self._token = uuid.uuid4().hex
        body = msgspec.json.encode(
            {"owner": self.owner, "at": _iso(self._clock()), "token": self._token}
        )
        if self._create_exclusive(self.folder / LOCK, body):
            return True
        held = self._read_lock()
        if held is None:
            return False
        stale_before = _iso(self._clock() - self.stale_after)
        if held["at"] and held["at"] >= stale_before:
            return False
        # One breaker per stale lock: whoever creates its break marker; the others only read.
        # The marker is named after that lock's content, so a later lock is not affected, and
        # holds when it was made: a breaker that died (or whose storage failed) before removing
        # the lock leaves it, and once it is stale too, the next round's marker may be taken.
        # Else no load would compact again, and no customer's message slot would be freed.
        marker, stamp = f"{LOCK}.broken-{held['digest']}", _iso(self._clock()).encode()
        for turn in itertools.count(1):
            path = self.folder / (marker if turn == 1 else f"{marker}.{turn}")
            if self._create_exclusive(path, stamp):
                break
            # No time in it: a version's before rounds, whose breaker may be at work; taken as
            # fresh, so that two tasks never break one lock and compact at once.
            since = _read_text(path)
            if not since or since >= stale_before:
                log.warning("Another task is breaking the stale compaction lock (since %s)", since)
                return False
        if self._read_lock() != held:  # released and taken again meanwhile: not stale any more
            return False
        log.warning("Breaking the stale compaction lock (held since %r)", held["at"])
        (self.folder / LOCK).unlink(missing_ok=True)
        return self._create_exclusive(self.folder / LOCK, body)

    def _read_lock(self) -> dict[str, str] | None:
        """The lock's time and token ("" when unreadable) and a digest of its content; None
        when there is no lock."""
        try:
            with (self.folder / LOCK).open("rb") as handle:
                raw = bytes(handle.read())
        except FileNotFoundError:
            return None
        try:
            data = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        held = {key: str(data.get(key) or "") for key in ("at", "token")}
        return held | {"digest": hashlib.sha256(raw).hexdigest()[:24]}

    def _unlock(self) -> None:
        """Remove the lock if it is still ours (a lock broken as stale is another's by now)."""
        held = self._read_lock()
        if held is not None and held["token"] == self._token:
            (self.folder / LOCK).unlink(missing_ok=True)

    # -- claims ----------------------------------------------------------------------------------

    def _attempt_path(self, contact: Contact, kind: str) -> StoragePath:
        return self.claims / f"{contact.contact_key}.{contact.attempt}.{kind}"

    def _claim(self, contact: Contact, state: str, now: datetime, error: str | None) -> Claim:
        return Claim(
            contact_key=contact.contact_key,
            ref_id=contact.ref_id,
            stall=contact.stall,
            offset=contact.offset,
            final=contact.final,
            attempt=contact.attempt,
            state=state,
            now=_iso(now),
            claimed_at=_iso(self._clock()),
            owner=self.owner,
            error=error,
            horizon=self.horizon.total_seconds(),
            slot=message_slot(contact.ref_id),
        )

    def claim(self, contact: Contact, now: datetime) -> bool:
        """Take attempt ``contact.attempt`` of this contact, and the customer's message slot;
        False if another sender has either, or a compaction since this ledger's ``load`` recorded
        the attempt or another message to the customer.

        The slot is created after the claim and listed before the claims by a compaction, so a
        slot it finds has its claim listed too, and it deletes the slot only when that claim is
        no longer live: sent (then in its snapshot, which ``_covered`` reads), failed or given
        back. Until a compaction, a slot whose claim was given back (or failed, or released)
        holds the customer's next message: a retry before then counts it ``claimed_elsewhere``."""
        claim = self._claim(contact, SENDING, now, None)
        body = msgspec.json.encode(claim)
        path = self._attempt_path(contact, CLAIM)
        with _storage_failure(lambda exc: f"Cannot record a claim in {self.claims}: {exc}"):
            self._prepare()
            if not self._create_exclusive(path, body):
                return False
            try:
                # A slot taken is never given back here, only deleted by a compaction (under its
                # lock): deleted now, between a compaction's listings of slots and of claims,
                # another sender could take it and the compaction delete that live slot.
                slot = self.folder / SLOTS / claim.slot
                taken = self._create_exclusive(slot, body)
                if not taken:
                    self._say_who_holds(contact, slot)
                covered = not taken or self._covered(contact, now)
            except BaseException:  # nothing was sent: give the attempt back, not "in flight"
                covered = True
                raise
            finally:
                if covered:
                    path.unlink(missing_ok=True)
            return not covered

    def _say_who_holds(self, contact: Contact, slot: StoragePath) -> None:
        """Log the claim holding the customer's message slot: counted ``claimed_elsewhere``,
        it may be this run's own earlier try, failed or given back, until a compaction."""
        with contextlib.suppress(Exception):  # one small read, for a person only: never fatal
            holder = self._read_claim(slot)
            if holder is not None:
                log.info(
                    "Not sending %s to %s now: their message slot is held by %s's claim of "
                    "%s (attempt %d, %s), freed by the first compaction after it settles",
                    contact.contact_key,
                    contact.ref_id,
                    holder.owner or "another sender",
                    holder.contact_key,
                    holder.attempt,
                    holder.claimed_at,
                )

    def _covered(self, contact: Contact, now: datetime) -> bool:
        """Whether a compaction this ledger has not seen recorded the attempt just claimed.

        A compaction writes the snapshot, then a new generation, and only then deletes the
        claims it folded. So if our exclusive create succeeded only because a compaction had
        deleted an earlier claim of this attempt, that compaction's generation was written
        before the create, the generation read here (after it) differs from the one this
        ledger last read, and the snapshot read next is that compaction's or a later one: it
        records the attempt (later compactions keep it, or forget the whole stall and move
        ``forgotten_before`` past it). The same generation: nothing was deleted since the
        snapshot the plan was made from. One small read per claim; the snapshot is read again
        only after another task compacted.
        """
        generation = self._read_generation()
        if generation != self._generation:
            snapshot = self._read_snapshot()
            self._generation, self._newer = snapshot.generation, _by_ref_id(snapshot)
            self._forgotten_before = max(self._forgotten_before, snapshot.forgotten_before)
        if contact.stall[:19] < self._forgotten_before:
            return True
        entry = None if self._newer is None else self._newer.get(contact.ref_id)
        return _covers(entry, contact, self._gap_start(now))

    def _gap_start(self, now: datetime) -> int:
        """Epoch s: a message sent after it is within the policy's gap before ``now``."""
        return int((now - self.min_gap).timestamp())

    def _read_generation(self) -> str:
        # "": never compacted (or by a version before generations)
        return _read_text(self.folder / GENERATION)

    def settle(
        self, contact: Contact, now: datetime, *, sent: bool, error: str | None = None
    ) -> None:
        """Record the outcome of a claimed attempt, right after the send."""
        claim = self._claim(contact, SENT if sent else FAILED, now, error)
        with _storage_failure(
            lambda exc: (
                f"Sent {contact.contact_key} but could not record it in {self.claims}: "
                f"{exc}; its claim stays 'sending', so it is never sent again"
            )
        ):
            # Created whole, like the claim: a reader never sees a half-written outcome.
            self._create_exclusive(self._attempt_path(contact, OUTCOME), msgspec.json.encode(claim))
        self._recorded = msgspec.structs.replace(claim, error=None)  # for ``mark``: no error text

    def mark(self, view: LedgerView, earlier: Mark | None = None) -> Mark:
        """What this ledger holds at least, after ``view``'s load and the attempts recorded since:
        the sender's next run checks the ledger it finds against it (``LedgerView.older_than``).
        ``earlier``: the mark this run's check passed, whose attempt stands when none was
        recorded now (a run that sent nothing)."""
        claim = self._recorded or (earlier.claim if earlier else None)
        return Mark(sequence=view.sequence + view.compacted, claim=claim)

    def release(self, contact: Contact) -> None:
        """Give a claim back without an attempt (nothing was sent, e.g. no address known)."""
        self._attempt_path(contact, CLAIM).unlink(missing_ok=True)
