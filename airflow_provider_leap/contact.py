"""The re-engagement cadence: who is due for a message, and which one. No Airflow import.

A *stall* is a customer (Reference ID) standing still since a given last interaction. Each stall
is answered once, then reminded on a cadence, then left alone: step 0 (the first contact) is due
one quiet period after the stall, step ``i`` at ``cadence[i - 1]`` after it. A new interaction
is a new stall. A stall found late (first run ever, scheduler down) gets one message for the
latest step already due, never a burst of the missed ones, and two messages to a customer are
never closer than the tightest gap of the schedule, even across stalls (a new stall's first
contact waits for it). A step is known by its offset from the stall, not its number, so a
cadence changed mid-sequence repeats no step; and step ``i`` is never a customer's message
number ``i + 2`` or later, nor follows a final one.

Planning is pure: it reads triage buckets, a time ``now`` and what the delivery ledger says was
sent, so every Airflow run, retry or clear computes the same contacts with the same keys.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any, Protocol

from airflow_provider_leap.gc_pause import gc_paused
from airflow_provider_leap.timeutil import format_timestamp, parse_timestamp
from airflow_provider_leap.triage import BUCKETS, Bucket

DEFAULT_QUIET_PERIOD = timedelta(hours=1)
DEFAULT_CADENCE = (timedelta(days=1), timedelta(days=3), timedelta(days=7))
DEFAULT_HORIZON = timedelta(days=30)
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_LAST_ATTEMPT_AFTER = timedelta(minutes=50)

# Most actionable first: the bucket whose message a customer with several records (one per
# region) receives. Closest to completion wins: a signature beats a utility login beats a click.
DEFAULT_CONTACT_BUCKETS: tuple[str, ...] = (
    Bucket.AGREEMENTS_PENDING,
    Bucket.UTILITY_ERROR,
    Bucket.UTILITY_NOT_CONNECTED,
    Bucket.NOT_STARTED,
    Bucket.OTHER_UTILITY,
)
# No automatic message, whatever the policy: a completed customer is done, a too_recent one is
# inside the quiet period, and a needs_review item is for a person.
_NEVER_CONTACTED: frozenset[str] = frozenset(
    {Bucket.COMPLETED, Bucket.TOO_RECENT, Bucket.NEEDS_REVIEW}
)
CONTACT_BUCKETS: tuple[str, ...] = tuple(b for b in BUCKETS if b not in _NEVER_CONTACTED)
"""The buckets a policy may message (``ContactPolicy.buckets``)."""


class Outcome(str, Enum):
    """What the plan says about one customer this run."""

    DUE = "due"
    COMPLETED = "completed"  # a record is COMPLETED: never contacted again
    WAITING = "waiting"  # inside the quiet period, or too soon after the last message
    ALREADY_SENT = "already_sent"  # the step due now went out before: nothing new to say
    FINISHED = "finished"  # every step of the stall was sent
    EXPIRED = "expired"  # the stall is older than the horizon
    GIVEN_UP = "given_up_before"  # the step due was given up by an earlier send: a person's
    IN_FLIGHT = "in_flight"  # another sender holds a fresh claim on this stall
    NO_ACTION = "no_action"  # only records no message is for (needs_review, excluded buckets)
    HELD = "held"  # due, but Leap announced news the data read may not show: the next run decides
    # The step due failed all its attempts but the last, which waits ``last_attempt_after``
    # after the one before (a relay's hourly quota or a short outage cannot spend them all).
    RETRY_LATER = "retry_later"


def _positive_increasing(name: str, steps: Sequence[timedelta]) -> None:
    previous = timedelta(0)
    for step in steps:
        if not isinstance(step, timedelta):
            raise TypeError(f"{name} holds {step!r}: every step must be a timedelta")
        if step <= previous:
            raise ValueError(
                f"{name} must be positive and strictly increasing, got {[str(s) for s in steps]}"
            )
        previous = step


@dataclass(frozen=True)
class ContactPolicy:
    """When messages are due: a quiet period, then a cadence of reminders, within a horizon.

    :param quiet_period: the first contact waits this long after the last interaction (Leap
        asks partners to act only on data at least an hour old).
    :param cadence: reminders, as offsets from the stall; each must be later than the one
        before and than the quiet period. Empty: first contact only.
    :param horizon: stalls older than this are never contacted; the ledger forgets them then.
        Must exceed the last step, so a stall found late still gets its one message.
    :param max_attempts: failed sends of one step before that step is given up (reported for a
        person); the stall's next step, when due, is tried afresh.
    :param last_attempt_after: a step's last attempt waits this long after its previous
        failure (by the runs' moments, whichever run or DAG failed it): the next hourly run,
        not a retry minutes later, so a relay's hourly quota or a short outage cannot spend
        every attempt. The earlier attempts come as soon as a retry or a run plans them.
    :param buckets: the triage buckets that get messages, most actionable first: a tuple,
        from ``CONTACT_BUCKETS`` (completed, too_recent and needs_review never get one).
    """

    quiet_period: timedelta = DEFAULT_QUIET_PERIOD
    cadence: tuple[timedelta, ...] = DEFAULT_CADENCE
    horizon: timedelta = DEFAULT_HORIZON
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    last_attempt_after: timedelta = DEFAULT_LAST_ATTEMPT_AFTER
    buckets: tuple[str, ...] = DEFAULT_CONTACT_BUCKETS

    def __post_init__(self) -> None:
        object.__setattr__(self, "cadence", tuple(self.cadence))
        if isinstance(self.buckets, str):
            raise ValueError(
                f"buckets={self.buckets!r} is one string: pass a tuple of bucket names, "
                f"e.g. ({self.buckets!r},)"
            )
        object.__setattr__(self, "buckets", tuple(self.buckets))
        if not isinstance(self.quiet_period, timedelta) or self.quiet_period < timedelta(0):
            raise ValueError(f"quiet_period must be a timedelta >= 0, got {self.quiet_period!r}")
        _positive_increasing("cadence", self.cadence)
        if self.cadence and self.cadence[0] <= self.quiet_period:
            raise ValueError(
                f"the first reminder ({self.cadence[0]}) must come after the quiet period "
                f"({self.quiet_period})"
            )
        if not isinstance(self.horizon, timedelta) or self.horizon <= self.steps[-1]:
            raise ValueError(
                f"horizon ({self.horizon}) must be a timedelta beyond the last step "
                f"({self.steps[-1]})"
            )
        if any(step.microseconds for step in self.steps):
            raise ValueError(f"quiet_period and cadence must be whole seconds, got {self.steps}")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        spacing = self.last_attempt_after
        if not isinstance(spacing, timedelta) or spacing < timedelta(0):
            raise ValueError(f"last_attempt_after must be a timedelta >= 0, got {spacing!r}")
        if not self.buckets or not set(self.buckets) <= set(CONTACT_BUCKETS):
            raise ValueError(
                f"buckets must name the triage buckets that may get messages, "
                f"{', '.join(CONTACT_BUCKETS)}; got {list(self.buckets)} ("
                f"{', '.join(sorted(_NEVER_CONTACTED))} never get an automatic message)"
            )

    @functools.cached_property
    def steps(self) -> tuple[timedelta, ...]:
        """Offset of every step from the stall: the first contact, then the reminders."""
        return (self.quiet_period, *self.cadence)

    @functools.cached_property
    def offsets(self) -> tuple[int, ...]:
        """Every step's offset in seconds: what the ledger and the contact key know it by."""
        return tuple(int(step.total_seconds()) for step in self.steps)

    @functools.cached_property
    def min_gap(self) -> timedelta:
        """The tightest spacing of the schedule: no two messages to a customer come closer."""
        steps = self.steps
        gaps = [later - earlier for earlier, later in itertools.pairwise(steps)]
        return min(gaps, default=timedelta(0))

    def step_at(self, age: timedelta) -> int | None:
        """The latest step due at this age of a stall; None before the first or past horizon."""
        if age < self.quiet_period or age > self.horizon:
            return None
        return bisect.bisect_right(self.steps, age) - 1


DEFAULT_MIN_GAP = ContactPolicy().min_gap  # 23 h: a day between the first contact and the next


def contact_key(ref_id: str, stall: str, offset: int) -> str:
    """Stable idempotency key of one message: the same customer, stall and step (its offset in
    seconds, so a changed cadence never gives one key to two messages), the same key.

    Fixed length and free of the Reference ID's characters, so any email, SMS or CRM system
    can take it as an idempotency or upsert key.
    """
    digest = hashlib.sha256(f"{ref_id}\x1f{stall}\x1f{offset}".encode()).hexdigest()
    return f"lc1-{digest[:40]}"


class StallRecord(Protocol):
    """What the delivery ledger knows about a customer's latest stall (``ledger.Entry``)."""

    stall: str  # the stall's last interaction, as ``Contact.stall`` (one text per instant)
    # Steps by their offset (``ContactPolicy.offsets``); -1: none.
    sent_offset: int  # the last step delivered (or whose delivery is unconfirmed)
    sent_at: int | None  # the run's "now" when it was sent, in seconds since the epoch
    failed_offset: int  # the step whose sends failed, and how often
    failures: int
    in_flight: bool  # a claim another sender holds right now
    failed_by: str | None  # the ledger owner of the latest failed attempt
    failed_at: int | None  # its run's moment, as ``sent_at``
    sent_count: int  # messages of the stall delivered (or unconfirmed)
    finished: bool  # one of them was the final step of the cadence it was sent under


@dataclass(frozen=True)
class StallState:
    """A :class:`StallRecord` built by hand (tests, a user's own ledger)."""

    stall: str
    sent_offset: int = -1
    sent_at: int | None = None
    failed_offset: int = -1
    failures: int = 0
    in_flight: bool = False
    failed_by: str | None = None
    failed_at: int | None = None
    sent_count: int = 0
    finished: bool = False


_NOTHING_SENT = StallState("")


def stall_order(stall: str) -> datetime:
    """A stall's time, for telling which of two stalls of a customer is the later."""
    return parse_timestamp(stall) or _EPOCH


def same_stall(one: str, other: str) -> bool:
    """Whether two stall texts are one stall: the same instant in any form, or less than a
    second apart, as Leap writing its times with milliseconds from one hour on (or no longer,
    rounded or cut) must not make a stall a new one, or an older one never reminded again."""
    return one == other or abs(stall_order(one) - stall_order(other)) < _SAME_STALL


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SAME_STALL = timedelta(seconds=1)


@dataclass(frozen=True)
class Contact:
    """One message that is due: hand it to email, SMS or CRM with ``contact_key`` as the key.

    ``item`` is the triage item the message is about (the most actionable of the customer's
    records); ``also`` holds the customer's other actionable items (other regions), so the
    message can mention them.
    """

    contact_key: str
    ref_id: str
    stall: str
    step: int  # its number in the cadence (0: the first contact), for the wording
    offset: int  # its offset from the stall in seconds: what the ledger knows it by
    first: bool  # no earlier message in this stall
    final: bool  # the last step of the cadence
    bucket: str
    reason: str
    attempt: int
    item: Mapping[str, Any]
    also: tuple[dict[str, Any], ...] = ()
    # Messages of the stall, and the customer's last message (epoch s, any stall), on record
    # when it was planned: a claim made after another task's compaction is given back when that
    # compaction recorded another step of the stall, or a message within the policy's gap since
    # (two senders planning at once may pick two steps, or two stalls).
    sent_before: int = 0
    last_sent: int | None = None


@dataclass
class ContactPlan:
    """The due contacts of one run, and how many customers ended in each outcome."""

    due: list[Contact] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # Reference IDs that were due but held back
    # Steps an earlier try of this run gave up (``run`` of ``plan_contacts``): Airflow cleared
    # that try's report when it retried, so the retry reports them again (``attempt``: the last).
    given_up: list[Contact] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_OUTCOMES, 0))


_OUTCOMES: tuple[str, ...] = tuple(outcome.value for outcome in Outcome)

_Item = tuple[str, Mapping[str, Any]]  # (bucket, triage item)


def _customers(
    buckets: Mapping[str, Iterable[Mapping[str, Any]]],
) -> dict[str, _Item | list[_Item]]:
    """Every triaged item grouped by Reference ID: one (bucket, item) pair, or a list of them.

    A bare pair for the usual customer with one record: this holds the partner's whole
    portfolio at once (see bench.ledger for the memory it takes).
    """
    customers: dict[str, _Item | list[_Item]] = {}
    for bucket, items in buckets.items():
        for item in items or ():
            ref_id = item.get("ref_id")
            if not isinstance(ref_id, str) or not ref_id:
                continue
            seen = customers.get(ref_id)
            if seen is None:
                customers[ref_id] = (bucket, item)
            elif isinstance(seen, tuple):
                customers[ref_id] = [seen, (bucket, item)]
            else:
                seen.append((bucket, item))
    return customers


def _stall(items: list[_Item]) -> tuple[str | None, datetime | None, bool]:
    """The customer's stall (latest last interaction of any record) and whether any record
    is COMPLETED."""
    stall: str | None = None
    when: datetime | None = None
    completed = False
    for bucket, item in items:
        completed = completed or bucket == Bucket.COMPLETED
        text = item.get("last_interaction")
        time = parse_timestamp(text)
        if time is not None and (when is None or time > when):
            stall, when = str(text), time
    return stall, when, completed


def _pick(
    items: list[_Item], rank: Mapping[str, int]
) -> tuple[str, Mapping[str, Any], list[dict[str, Any]]]:
    """The most actionable item (bucket order, then the latest) and the customer's others."""
    actionable = [(b, i) for b, i in items if b in rank]
    actionable.sort(key=lambda bi: str(bi[1].get("last_interaction") or ""), reverse=True)
    actionable.sort(key=lambda bi: rank[bi[0]])  # stable: the latest first within a bucket
    (bucket, item), others = actionable[0], actionable[1:]
    also = [
        {"bucket": b, **{k: i.get(k) for k in ("id", "transmission_region", "reason")}}
        for b, i in others
    ]
    return bucket, item, also


def _holds(
    hold: Container[str] | Mapping[str, datetime | None], ref_id: str, stall: datetime
) -> bool:
    """Whether ``hold`` (which has ``ref_id``) holds that customer's ``stall``."""
    before = hold.get(ref_id) if isinstance(hold, Mapping) else None
    return before is None or stall < before


def plan_contacts(
    buckets: Mapping[str, Iterable[Mapping[str, Any]]],
    *,
    now: datetime,
    policy: ContactPolicy,
    ledger: Mapping[str, StallRecord],
    forgotten_before: datetime | None = None,
    hold: Container[str] | Mapping[str, datetime | None] = frozenset(),
    run: str = "",
) -> ContactPlan:
    """Decide, for every customer in the triage buckets, whether a message is due now.

    At most one contact per Reference ID, however many records (regions) Leap returned.
    ``ledger`` maps a Reference ID to what was sent in its latest stall; a missing key, or an
    older stall, means nothing was sent for this one (an older stall's last message still
    spaces this one's first, and one being sent holds it). Stalls are instants: a ledger's text
    of the same instant in another form (``...05.000Z`` for ``...05Z``) is the same stall. Stalls
    before ``forgotten_before`` (the ledger's ``LedgerView.forgotten_before``) are expired
    whatever ``now`` is: the ledger no longer knows what they were sent, so a cleared old run
    must not answer them again. A customer in ``hold`` who would be due is counted ``held``
    instead: their record is older than what Leap announced since (see
    :func:`~airflow_provider_leap.webhooks.held_back`), and nothing is recorded, so a later run
    decides afresh. A mapping holds only stalls before the customer's time (None: any stall).
    ``run`` starts the ledger owner of each try of this run (the operator's ``dag/run/task/``):
    a step whose last attempt such a try gave up is listed in ``given_up``. A step whose next
    attempt is its last is counted ``retry_later`` until ``policy.last_attempt_after`` has passed
    since its previous failure (review s17c F2: a run's retries, minutes apart, charged a
    customer over the relay's quota all three attempts).
    """
    if now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    plan = ContactPlan()
    with gc_paused():  # grouping 100,000 customers: collections would walk them all (bench.ledger)
        customers = _customers(buckets)
    counts = plan.outcomes
    rank = {name: index for index, name in enumerate(policy.buckets)}
    offsets = policy.offsets
    last_step = len(offsets) - 1
    min_gap_seconds = policy.min_gap.total_seconds()
    last_attempt_after = policy.last_attempt_after.total_seconds()
    for ref_id, group in customers.items():
        items = [group] if isinstance(group, tuple) else group
        stall, stall_time, completed = _stall(items)
        if completed:
            counts["completed"] += 1
            continue
        if stall is None or stall_time is None or not any(b in rank for b, _ in items):
            counts["no_action"] += 1
            continue
        if forgotten_before is not None and stall_time < forgotten_before:
            counts["expired"] += 1
            continue
        age = now - stall_time
        step = policy.step_at(age)
        if step is None:
            counts["expired" if age > policy.horizon else "waiting"] += 1
            continue
        state = ledger.get(ref_id, _NOTHING_SENT)
        last_sent = state.sent_at  # in any stall: a new one's first contact keeps the gap too
        if state.in_flight:  # a message of this stall, or of an older one, is being sent
            counts["in_flight"] += 1
            continue
        if not same_stall(state.stall, stall):
            if stall_order(state.stall) > stall_time:
                counts["waiting"] += 1  # Leap shows an older stall than one already answered
                continue
            state = _NOTHING_SENT
        offset = offsets[step]
        # After a cadence change: no step the customer is past, no second first contact or
        # last reminder, no more messages before a step than the cadence puts before it.
        finished = state.finished or state.sent_offset >= offsets[-1]
        past = state.sent_count > step if step < last_step else state.finished
        if offset <= state.sent_offset or past:
            counts["finished" if finished else "already_sent"] += 1
            continue
        spent = offset == state.failed_offset and state.failures >= policy.max_attempts
        if offset < state.failed_offset or spent:
            # That step's attempts are spent (reported by the send that gave up); the stall's
            # next step starts anew at attempt 1. An earlier step's turn is over.
            counts["given_up_before"] += 1
            if not (spent and run and (state.failed_by or "").startswith(run)):
                continue
        elif (
            offset == state.failed_offset
            and state.failures == policy.max_attempts - 1
            and state.failed_at is not None
            and now.timestamp() - state.failed_at < last_attempt_after
        ):
            counts["retry_later"] += 1
            continue
        elif last_sent is not None and now.timestamp() - last_sent < min_gap_seconds:
            counts["waiting"] += 1
            continue
        elif ref_id in hold and _holds(hold, ref_id, stall_time):
            plan.held.append(ref_id)
            counts["held"] += 1
            continue
        bucket, item, also = _pick(items, rank)
        stall = format_timestamp(stall_time, stall)
        attempt = 1  # the step's next attempt; for a spent step, its last
        if state.failed_offset == offset:
            attempt = state.failures if spent else state.failures + 1
        contact = Contact(
            contact_key=contact_key(ref_id, stall, offset),
            ref_id=ref_id,
            stall=stall,
            step=step,
            offset=offset,
            first=state.sent_offset < 0,
            final=step == last_step,
            bucket=bucket,
            reason=str(item.get("reason") or ""),
            attempt=attempt,
            item=item,
            also=tuple(also),
            sent_before=state.sent_count,
            last_sent=last_sent,
        )
        if spent:
            plan.given_up.append(contact)
        else:
            plan.due.append(contact)
            counts["due"] += 1
    # First attempts before retried ones (stable: buckets stay in blocks): a channel that stops
    # the run after a failure or two then charges other customers on the next try, so an
    # outage spreads its attempts over everyone due instead of giving the same steps up.
    plan.due.sort(key=lambda contact: contact.attempt)
    return plan
