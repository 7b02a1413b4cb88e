"""The contact policy and plan: who is due, which step, one message per customer, stable keys."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from airflow_provider_leap.contact import (
    Contact,
    ContactPlan,
    ContactPolicy,
    StallState,
    contact_key,
    plan_contacts,
)
from airflow_provider_leap.delivery import DeliveryReport, deliver
from airflow_provider_leap.ledger import DeliveryLedger

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)
D = timedelta(days=1)
OFF = ContactPolicy().offsets  # each step's offset in seconds, as the ledger knows it


def iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def item(ref_id: str, when: datetime, region: str = "CAISO", **extra: object) -> dict[str, object]:
    return {
        "id": f"{region}_x_{ref_id}",
        "ref_id": ref_id,
        "transmission_region": region,
        "connection_status": "PARTIAL",
        "last_interaction": iso(when),
        "reason": "not_connected",
        **extra,
    }


def plan(buckets, now, ledger=None, policy=None):  # type: ignore[no-untyped-def]
    return plan_contacts(buckets, now=now, policy=policy or ContactPolicy(), ledger=ledger or {})


@pytest.mark.parametrize(
    ("age", "step"),
    [
        (H - timedelta(seconds=1), None),
        (H, 0),
        (D - timedelta(seconds=1), 0),
        (D, 1),
        (3 * D, 2),
        (7 * D, 3),
        (29 * D, 3),
        (30 * D + timedelta(seconds=1), None),
    ],
)
def test_step_at_follows_quiet_period_cadence_and_horizon(age, step) -> None:
    assert ContactPolicy().step_at(age) == step


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cadence": (3 * D, D)}, "strictly increasing"),
        ({"cadence": (-D,)}, "strictly increasing"),
        ({"cadence": (D, D)}, "strictly increasing"),
        ({"cadence": (timedelta(minutes=30),)}, "after the quiet period"),
        ({"horizon": 7 * D}, "beyond the last step"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"quiet_period": -H}, "quiet_period"),
        ({"buckets": ("completed", "nope")}, "bucket"),
        ({"buckets": ("needs_review", "not_started")}, "may get messages, not_started, "),
        ({"buckets": ("too_recent",)}, "never get an automatic message"),
        ({"buckets": ("completed",)}, "never get an automatic message"),
        ({"buckets": "utility_error"}, r"pass a tuple of bucket names, e.g. \('utility_error',\)"),
        ({"cadence": (1,)}, "timedelta"),
    ],
)
def test_a_bad_policy_is_a_clear_error_when_the_dag_is_parsed(kwargs, message) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        ContactPolicy(**kwargs)


def test_empty_cadence_means_first_contact_only() -> None:
    policy = ContactPolicy(cadence=())
    stall = T0 - 2 * H
    first = plan({"not_started": [item("a1b", stall)]}, T0, policy=policy)
    assert [c.step for c in first.due] == [0] and first.due[0].final
    sent = {"a1b": StallState(iso(stall), sent_offset=OFF[0], sent_at=int(T0.timestamp()))}
    later = plan({"not_started": [item("a1b", stall)]}, T0 + 20 * D, sent, policy)
    assert later.due == [] and later.outcomes["finished"] == 1


def test_first_contact_waits_for_the_quiet_period() -> None:
    buckets = {"not_started": [item("a1b", T0 - 59 * timedelta(minutes=1))]}
    assert plan(buckets, T0).due == []
    assert plan(buckets, T0).outcomes["waiting"] == 1
    due = plan(buckets, T0 + timedelta(minutes=1)).due
    assert [(c.step, c.first, c.attempt) for c in due] == [(0, True, 1)]


def test_a_late_stall_gets_one_message_not_a_burst() -> None:
    stall = T0 - 10 * D  # found ten days late: steps 0 to 3 all passed
    result = plan({"utility_error": [item("a1b", stall)]}, T0)
    assert [(c.step, c.first, c.final) for c in result.due] == [(3, True, True)]


def test_reminders_keep_their_spacing_after_a_late_first_contact() -> None:
    stall = T0 - (3 * D - H)  # first seen just before the 3-day step
    first = plan({"not_started": [item("a1b", stall)]}, T0).due[0]
    assert first.step == 1
    ledger = {"a1b": StallState(iso(stall), sent_offset=OFF[1], sent_at=int(T0.timestamp()))}
    soon = plan({"not_started": [item("a1b", stall)]}, T0 + 2 * H, ledger)
    assert soon.due == [] and soon.outcomes["waiting"] == 1  # step 2 due, but 2 h after step 1
    later = plan({"not_started": [item("a1b", stall)]}, T0 + D, ledger).due
    assert [(c.step, c.first) for c in later] == [(2, False)]


def test_a_new_interaction_is_a_new_stall_with_a_new_key() -> None:
    old, new = T0 - 5 * D, T0 - 2 * H
    ledger = {"a1b": StallState(iso(old), sent_offset=OFF[2], sent_at=int((T0 - D).timestamp()))}
    due = plan({"not_started": [item("a1b", new)]}, T0, ledger).due
    assert [(c.stall, c.step, c.first) for c in due] == [(iso(new), 0, True)]
    assert due[0].contact_key == contact_key("a1b", iso(new), OFF[0])
    assert due[0].contact_key != contact_key("a1b", iso(old), OFF[0])


def test_a_new_stall_soon_after_a_message_waits_for_the_gap_then_gets_its_first_contact() -> None:
    """A customer who acts on a message and stalls again two hours later hears about the new
    stall once the schedule's tightest gap (23 h) has passed since that message, not at once."""
    sent = T0 - 3 * H
    ledger = {"a1b": StallState(iso(T0 - 2 * D), sent_offset=OFF[1], sent_at=int(sent.timestamp()))}
    restall = {"utility_error": [item("a1b", T0 - H)]}
    soon = plan(restall, T0, ledger)
    assert soon.due == [] and soon.outcomes["waiting"] == 1
    just_short = plan(restall, sent + ContactPolicy().min_gap - timedelta(seconds=1), ledger)
    assert just_short.due == []
    due = plan(restall, sent + ContactPolicy().min_gap, ledger).due
    assert [(c.stall, c.step, c.first) for c in due] == [(iso(T0 - H), 0, True)]


def test_completed_customers_are_never_due_even_with_another_region_stalled() -> None:
    buckets = {
        "completed": [item("a1b", T0 - 3 * D, "PJM")],
        "utility_error": [item("a1b", T0 - 3 * D, "CAISO")],
    }
    result = plan(buckets, T0)
    assert result.due == [] and result.outcomes["completed"] == 1


def test_one_message_per_customer_the_most_actionable_mentioning_the_rest() -> None:
    buckets = {
        "not_started": [item("a1b", T0 - 2 * D, "ERCOT")],
        "agreements_pending": [item("a1b", T0 - 3 * D, "NYISO", reason="agreement:x")],
        "utility_error": [item("other", T0 - 2 * D)],
    }
    result = plan(buckets, T0)
    by_ref = {c.ref_id: c for c in result.due}
    assert sorted(by_ref) == ["a1b", "other"]
    contact = by_ref["a1b"]
    assert contact.bucket == "agreements_pending" and contact.reason == "agreement:x"
    assert contact.stall == iso(T0 - 2 * D)  # the latest interaction of any record
    assert [a["transmission_region"] for a in contact.also] == ["ERCOT"]


def test_a_recent_interaction_in_another_region_keeps_the_customer_waiting() -> None:
    buckets = {
        "utility_error": [item("a1b", T0 - 3 * D, "CAISO")],
        "too_recent": [item("a1b", T0 - timedelta(minutes=10), "PJM")],
    }
    result = plan(buckets, T0)
    assert result.due == [] and result.outcomes["waiting"] == 1


def test_needs_review_and_excluded_buckets_get_no_message() -> None:
    policy = ContactPolicy(buckets=("not_started",))
    buckets = {
        "needs_review": [item("a1b", T0 - 3 * D)],
        "other_utility": [item("c3d", T0 - 3 * D)],
    }
    result = plan(buckets, T0, policy=policy)
    assert result.due == [] and result.outcomes["no_action"] == 2


def test_stalls_past_the_horizon_are_left_alone() -> None:
    result = plan({"not_started": [item("a1b", T0 - 31 * D)]}, T0)
    assert result.due == [] and result.outcomes["expired"] == 1


def test_already_sent_steps_are_not_due_again() -> None:
    stall = T0 - 2 * D
    ledger = {"a1b": StallState(iso(stall), sent_offset=OFF[1], sent_at=int((T0 - H).timestamp()))}
    result = plan({"not_started": [item("a1b", stall)]}, T0, ledger)
    assert result.due == [] and result.outcomes["already_sent"] == 1


def test_failed_sends_stay_due_with_the_next_attempt_then_give_up() -> None:
    stall = T0 - 2 * H
    key = "a1b"
    retry = plan(
        {"not_started": [item("a1b", stall)]},
        T0,
        {key: StallState(iso(stall), failed_offset=OFF[0], failures=1)},
    )
    assert [(c.step, c.attempt) for c in retry.due] == [(0, 2)]
    gone = plan(
        {"not_started": [item("a1b", stall)]},
        T0,
        {key: StallState(iso(stall), failed_offset=OFF[0], failures=3)},
    )
    assert gone.due == [] and gone.outcomes["given_up_before"] == 1


def test_a_cleared_older_run_never_starts_a_step_before_one_already_tried() -> None:
    stall = T0 - 2 * H  # step 0 is due at T0; the ledger holds a failed try of step 1
    ledger = {"a1b": StallState(iso(stall), failed_offset=OFF[1], failures=1)}
    result = plan({"not_started": [item("a1b", stall)]}, T0, ledger)
    assert result.due == [] and result.outcomes["given_up_before"] == 1


class Channel:
    """An email channel as the operator runs it: a real ledger in a folder and a mail server
    that refuses every send while ``down``. Each run is a new ledger object, as each task is."""

    def __init__(self, root: Path) -> None:
        self.root, self.down, self.inbox = root, False, []  # inbox: (ref_id, stall, step, key)
        self.policy = ContactPolicy()
        self.offsets: list[timedelta] = []  # of each message sent, from its stall

    def __call__(self, contact: Contact) -> None:
        if self.down:
            raise OSError("451 4.3.0 mail server unavailable, try again later")
        self.inbox.append((contact.ref_id, contact.stall, contact.step, contact.contact_key))
        self.offsets.append(timedelta(seconds=contact.offset))

    def run(
        self, buckets: dict[str, list[dict[str, object]]], now: datetime, run: str = ""
    ) -> tuple[ContactPlan, DeliveryReport]:
        """One try of the operator; ``run`` as its ``dag/run/task/`` (the ledger owner's start)."""
        ledger = DeliveryLedger(self.root, owner=f"{run}try 1")
        states = ledger.load(now).states
        plan = plan_contacts(buckets, now=now, policy=self.policy, ledger=states, run=run)
        max_attempts = self.policy.max_attempts
        return plan, deliver(plan.due, self, ledger, now=now, max_attempts=max_attempts)


def hourly(start: datetime, hours: int) -> Iterable[datetime]:
    return (start + h * H for h in range(hours))


@pytest.mark.parametrize(
    "texts",
    [
        ("2026-03-02T09:30:05Z", "2026-03-02T09:30:05.000Z", "2026-03-02T09:30:05+00:00"),
        ("2026-03-02T09:30:05.892Z", "2026-03-02T09:30:05.892000Z", "2026-03-02T10:30:05.892+0100"),
    ],
)
def test_one_instant_is_one_stall_however_leap_writes_it(tmp_path: Path, texts) -> None:
    """The stall is the instant: a record rewritten in another form is not a new interaction."""
    channel = Channel(tmp_path)
    start = datetime(2026, 3, 2, 11, 17, tzinfo=timezone.utc)
    for now, text in zip(hourly(start, 24 * 8), itertools.cycle(texts), strict=False):
        channel.run({"not_started": [item("a1b", T0, last_interaction=text)]}, now)
    steps = [step for _, _, step, _ in channel.inbox]
    assert steps == [0, 1, 2, 3]  # once per step, never a second first contact
    assert {stall for _, stall, _, _ in channel.inbox} == {texts[0]}  # Leap's form, kept as is
    later = start + 31 * D  # still forgotten after the horizon (the ledger compares stall[:19])
    assert DeliveryLedger(tmp_path).load(later).stalls == 0


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("2026-03-02T09:30:05Z", "2026-03-02T09:30:05.412Z"),
        ("2026-03-02T09:30:05.412Z", "2026-03-02T09:30:05Z"),
        ("2026-03-02T09:30:05.612Z", "2026-03-02T09:30:06Z"),  # rounded (review s15c)
        ("2026-03-02T09:30:06Z", "2026-03-02T09:30:05.612Z"),
    ],
)
def test_leap_adding_or_dropping_milliseconds_is_not_a_new_stall(
    tmp_path: Path, before: str, after: str
) -> None:
    """Review s15b: Leap writing its times with milliseconds from one hour on made every stall
    a new one, its step sent again; without them from one hour on, an older one, never
    reminded again."""
    channel = Channel(tmp_path)
    start = datetime(2026, 3, 2, 11, 17, tzinfo=timezone.utc)
    for hour, now in enumerate(hourly(start, 24 * 8)):
        channel.run(
            {"not_started": [item("a1b", T0, last_interaction=after if hour > 30 else before)]}, now
        )
    assert [step for _, _, step, _ in channel.inbox] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("cadence", "after"),
    [
        ((D, 2 * D, 3 * D, 5 * D, 7 * D), [5 * D, 7 * D]),  # steps added before and after
        ((D, 7 * D), [7 * D]),  # the step last sent removed: the last reminder still goes
        ((2 * D, 4 * D, 7 * D), [7 * D]),  # every step moved: 4 d would be a 4th message of 3
    ],
)
def test_a_cadence_changed_mid_sequence_neither_repeats_nor_skips_a_step(
    tmp_path: Path, cadence: tuple[timedelta, ...], after: list[timedelta]
) -> None:
    """The ledger knows a step by its offset from the stall, not its number: under the new
    cadence, a step no later than the last one sent counts as sent, a step the customer has had
    as many messages as is skipped, and the last reminder goes; each under its own key."""
    channel = Channel(tmp_path)
    buckets = {"not_started": [item("a1b", T0)]}
    for now in hourly(T0 + H, 4 * 24):  # the first contact, the day-1 and day-3 reminders
        channel.run(buckets, now)
    assert channel.offsets == [H, D, 3 * D]
    channel.policy = ContactPolicy(cadence=cadence)
    for now in hourly(T0 + 4 * D + H, 4 * 24):
        channel.run(buckets, now)
    assert channel.offsets == [H, D, 3 * D, *after]
    assert len({key for *_, key in channel.inbox}) == len(channel.inbox)


@pytest.mark.parametrize(
    ("hours", "policy", "sent"),
    [
        (2, ContactPolicy(quiet_period=2 * H), [H, D, 3 * D, 7 * D]),  # one first contact
        (8 * 24, ContactPolicy(cadence=(D, 3 * D, 8 * D)), [H, D, 3 * D, 7 * D]),  # last moved
        (8 * 24, ContactPolicy(cadence=(D, 3 * D, 7 * D, 9 * D)), [H, D, 3 * D, 7 * D]),
    ],
)
def test_a_cadence_change_never_repeats_the_first_contact_or_the_last_reminder(
    tmp_path: Path, hours: int, policy: ContactPolicy, sent: list[timedelta]
) -> None:
    """Moving the first contact or the last reminder later is not a new message for customers
    who had it; nor is a step added after the last for those told it was the last."""
    channel = Channel(tmp_path)
    buckets = {"not_started": [item("a1b", T0)]}
    for now in hourly(T0 + H, hours):
        channel.run(buckets, now)
    channel.policy = policy
    for now in hourly(T0 + H + hours * H, 10 * 24):
        channel.run(buckets, now)
    assert channel.offsets == sent


def test_steps_are_whole_seconds() -> None:
    with pytest.raises(ValueError, match="whole seconds"):
        ContactPolicy(cadence=(D + timedelta(milliseconds=5),))


def test_a_ledger_written_with_another_text_of_the_instant_is_the_same_stall() -> None:
    stall = "2026-03-02T09:30:05Z"
    ledger = {"a1b": StallState("2026-03-02T09:30:05.000Z", sent_offset=OFF[0], sent_at=0)}
    result = plan({"not_started": [item("a1b", T0, last_interaction=stall)]}, T0, ledger)
    assert result.due == [] and result.outcomes["already_sent"] == 1


def test_a_short_outage_costs_no_step_and_a_long_one_gives_up_one(tmp_path: Path) -> None:
    """A ten-minute outage meets the run and Airflow's retry (two attempts); the last attempt
    waits ``last_attempt_after``, so the second retry sends nothing and the next hour's run
    sends the message. An outage of three hours gives the day-1 reminder up, reported once;
    the day-3 and day-7 reminders still go, each from attempt 1."""
    channel = Channel(tmp_path)
    buckets = {"not_started": [item("a1b", T0 - 2 * H)]}
    channel.down = True
    tries = [channel.run(buckets, T0) for _ in range(3)]  # the try and two retries
    assert [report.failed for _, report in tries] == [1, 1, 0]
    assert tries[2][0].outcomes["retry_later"] == 1
    channel.down = False
    planned, attention = [], []
    for now in hourly(T0 + H, 8 * 24):
        # The day-1 reminder, due 23 h after the first contact, fails three times.
        channel.down = T0 + 24 * H <= now < T0 + 27 * H
        plan, report = channel.run(buckets, now)
        planned += [(c.step, c.attempt) for c in plan.due]
        attention += report.attention
    assert [(a["why"], a["step"], a["attempt"], a["first"]) for a in attention] == [
        ("given_up", 1, 3, False),  # the first contact reached them
    ]
    assert planned == [(0, 3), (1, 1), (1, 2), (1, 3), (2, 1), (3, 1)]  # a spent step: never
    assert [step for _, _, step, _ in channel.inbox] == [0, 2, 3]


@pytest.mark.parametrize(
    ("failures", "since", "outcome"),
    [
        (1, timedelta(0), "due"),  # a step's second attempt: as soon as a retry plans it
        (2, timedelta(minutes=49, seconds=59), "retry_later"),  # its last: spaced
        (2, timedelta(minutes=50), "due"),
        (2, -H, "retry_later"),  # failed by a run whose moment is later (another DAG's)
        (3, H, "given_up_before"),
    ],
)
def test_a_steps_last_attempt_waits_after_its_failure_whoever_failed_it(
    failures: int, since: timedelta, outcome: str
) -> None:
    """Review s17e F1 and S7: the last attempt is spaced by time from the one before, not by
    run: another DAG's or a manual run's failure spaces it too, and a retry minutes later may
    make every attempt but the last (a flaky channel's failures, sent within the hour)."""
    stall = T0 - 2 * H
    failed_at = int((T0 - since).timestamp())
    ledger = {
        "a1b": StallState(
            iso(stall),
            failed_offset=OFF[0],
            failures=failures,
            failed_at=failed_at,
            failed_by="other_dag/manual__x/contact/try 1",
        )
    }
    result = plan({"not_started": [item("a1b", stall)]}, T0, ledger)
    assert {k: v for k, v in result.outcomes.items() if v} == {outcome: 1}
    assert [c.attempt for c in result.due] == ([failures + 1] if outcome == "due" else [])


def test_a_retry_of_the_run_that_gave_a_step_up_lists_it_again(tmp_path: Path) -> None:
    """Airflow clears a failed try's XComs, the give-up report with them: a retry of the run
    that gave the step up lists it again, at its last attempt. No other run does: not one at
    the same ``now`` (webhook runs answer at one moment), nor one that failed an earlier
    attempt."""
    channel = Channel(tmp_path)
    channel.down = True
    buckets = {"not_started": [item("a1b", T0 - 2 * H)]}
    runs = [("d/r1/t/", T0), ("d/r2/t/", T0 + H), ("d/r3/t/", T0 + 2 * H)]
    reports = [channel.run(buckets, now, name)[1] for name, now in runs]
    assert [r.given_up for r in reports] == [0, 0, 1]
    key = reports[2].attention[0]["contact_key"]

    def listed(name: str, now: datetime) -> list[tuple[str, int, int]]:
        plan, report = channel.run(buckets, now, name)
        assert report.failed == 0  # nothing is sent again, listed or not
        return [(c.contact_key, c.step, c.attempt) for c in plan.given_up]

    assert listed("d/r3/t/", T0 + 2 * H) == [(key, 0, 3)]
    assert listed("d/r2/t/", T0 + H) == listed("d/other/t/", T0 + 2 * H) == []


def test_a_claim_held_elsewhere_is_not_planned_twice() -> None:
    stall = T0 - 2 * H
    ledger = {"a1b": StallState(iso(stall), in_flight=True)}
    result = plan({"not_started": [item("a1b", stall)]}, T0, ledger)
    assert result.due == [] and result.outcomes["in_flight"] == 1


def test_held_customers_are_only_those_who_would_be_due() -> None:
    """``hold``: customers Leap announced news for since the data was refreshed. Only a due
    message is held (counted ``held``, not due); every other outcome stands."""
    buckets = {
        "not_started": [item("due1", T0 - 2 * H), item("due2", T0 - 2 * H)],
        "utility_error": [item("young", T0 - timedelta(minutes=20))],
        "completed": [item("done", T0 - 2 * H, connection_status="COMPLETED")],
    }
    hold = {"due2", "young", "done", "not-triaged"}
    result = plan_contacts(buckets, now=T0, policy=ContactPolicy(), ledger={}, hold=hold)
    assert [c.ref_id for c in result.due] == ["due1"] and result.held == ["due2"]
    assert {k: v for k, v in result.outcomes.items() if v} == {
        "due": 1,
        "held": 1,
        "waiting": 1,
        "completed": 1,
    }
    assert [c.ref_id for c in plan(buckets, T0).due] == ["due1", "due2"]  # no hold: as before


def test_a_hold_with_a_time_holds_only_the_stalls_before_it() -> None:
    """Review s11a F1: a completion Leap announced holds a stall the data shows from before it
    (the data predates the completion); a stall after it is news the data does show."""
    buckets = {"not_started": [item("before", T0 - 3 * H), item("after", T0 - 2 * H)]}
    completed = T0 - 150 * timedelta(minutes=1)  # between the two stalls
    hold = {"before": completed, "after": completed}
    result = plan_contacts(buckets, now=T0, policy=ContactPolicy(), ledger={}, hold=hold)
    assert [c.ref_id for c in result.due] == ["after"] and result.held == ["before"]
    anyway = plan_contacts(buckets, now=T0, policy=ContactPolicy(), ledger={}, hold={"after": None})
    assert [c.ref_id for c in anyway.due] == ["before"] and anyway.held == ["after"]


def test_an_older_stall_than_the_one_answered_waits() -> None:
    newer = T0 - 2 * D
    ledger = {"a1b": StallState(iso(newer), sent_offset=OFF[1], sent_at=int(T0.timestamp()))}
    result = plan({"not_started": [item("a1b", T0 - 5 * D)]}, T0, ledger)
    assert result.due == [] and result.outcomes["waiting"] == 1


def test_contact_keys_are_stable_fixed_length_and_distinct() -> None:
    key = contact_key("crm:lead/42 ü", "2026-03-02T12:00:00Z", 1)
    assert key == contact_key("crm:lead/42 ü", "2026-03-02T12:00:00Z", 1)
    assert key.startswith("lc1-") and len(key) == 44 and key.isascii()
    others = {contact_key("crm:lead/42 ü", "2026-03-02T12:00:00Z", s) for s in range(4)}
    assert len(others) == 4


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        plan({}, datetime(2026, 3, 2))
