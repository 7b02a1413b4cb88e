"""The delivery ledger and ``deliver``: exactly once across retries, kills, concurrent senders."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from airflow.exceptions import AirflowException

from airflow_provider_leap.contact import Contact, ContactPlan, ContactPolicy, plan_contacts
from airflow_provider_leap.delivery import (
    ChannelDown,
    ContactUnreachable,
    SendUnconfirmed,
    deliver,
)
from airflow_provider_leap.ledger import DeliveryLedger, LedgerError, Mark, OlderCopy
from airflow_provider_leap.refids import FORBIDDEN, validate_ref_ids

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
POLICY = ContactPolicy()
H = timedelta(hours=1)
MINUTE = timedelta(minutes=1)


class Clock:
    """The ledger's wall clock, moved by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 29, 9, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def buckets(n: int, stall: datetime = T0 - timedelta(hours=2)) -> dict[str, list[dict[str, str]]]:
    when = stall.strftime("%Y-%m-%dT%H:%M:%SZ")
    items = [
        {
            "id": f"CAISO_{i}",
            "ref_id": f"cust-{i:04d}",
            "transmission_region": "CAISO",
            "last_interaction": when,
            "reason": "not_started",
        }
        for i in range(n)
    ]
    return {"not_started": items}


class Outbox:
    """A send function that records what it sent; fails or raises for chosen Reference IDs."""

    def __init__(self, fail: set[str] = frozenset(), unreachable: set[str] = frozenset()):
        self.sent: list[str] = []
        self.fail, self.unreachable = set(fail), set(unreachable)

    def __call__(self, contact) -> None:  # type: ignore[no-untyped-def]
        if contact.ref_id in self.unreachable:
            raise ContactUnreachable("no address")
        if contact.ref_id in self.fail:
            raise OSError("550 mailbox unavailable")
        self.sent.append(contact.contact_key)


def run(ledger: DeliveryLedger, items, send, now=T0):  # type: ignore[no-untyped-def]
    view = ledger.load(now)
    plan = plan_contacts(items, now=now, policy=POLICY, ledger=view.states)
    return plan, deliver(plan.due, send, ledger, now=now, max_attempts=POLICY.max_attempts)


def test_what_was_sent_is_never_sent_again(tmp_path: Path) -> None:
    ledger = DeliveryLedger(tmp_path, channel="email")
    outbox = Outbox()
    _, report = run(ledger, buckets(20), outbox)
    assert report.sent == 20 == len(set(outbox.sent))
    again, report2 = run(DeliveryLedger(tmp_path, channel="email"), buckets(20), outbox)
    assert again.due == [] and again.outcomes["already_sent"] == 20 and report2.sent == 0
    assert len(outbox.sent) == 20


def test_channels_keep_separate_records(tmp_path: Path) -> None:
    run(DeliveryLedger(tmp_path, channel="email"), buckets(3), Outbox())
    crm = Outbox()
    _, report = run(DeliveryLedger(tmp_path, channel="crm"), buckets(3), crm)
    assert report.sent == 3


def test_one_refused_address_blocks_nobody_and_is_retried_then_given_up(tmp_path: Path) -> None:
    outbox = Outbox(fail={"cust-0002"})
    _, report = run(DeliveryLedger(tmp_path), buckets(5), outbox)
    assert (report.sent, report.failed, report.given_up) == (4, 1, 0)
    for attempt, now in ((2, T0), (3, T0 + H)):  # a retry, then the next run: the last waits
        plan, report = run(DeliveryLedger(tmp_path), buckets(5), outbox, now)
        assert [(c.ref_id, c.attempt) for c in plan.due] == [("cust-0002", attempt)]
    assert report.given_up == 1 and report.attention[0]["why"] == "given_up"
    assert "550" in report.attention[0]["detail"]
    plan, _ = run(DeliveryLedger(tmp_path), buckets(5), outbox, T0 + H)
    assert plan.due == [] and plan.outcomes["given_up_before"] == 1
    assert len(outbox.sent) == 4


def test_unreachable_is_reported_and_not_an_attempt(tmp_path: Path) -> None:
    outbox = Outbox(unreachable={"cust-0001"})
    _, report = run(DeliveryLedger(tmp_path), buckets(3), outbox)
    assert report.unreachable == 1 and report.attention[0]["why"] == "unreachable"
    plan, _ = run(DeliveryLedger(tmp_path), buckets(3), Outbox())
    assert [(c.ref_id, c.attempt) for c in plan.due] == [("cust-0001", 1)]


@pytest.mark.parametrize("bug", [AttributeError, NameError, TypeError, ImportError, KeyError])
def test_a_bug_in_send_stops_the_delivery_when_the_first_two_sends_raise_it(
    tmp_path: Path, bug: type[Exception]
) -> None:
    """Review s13b F1: every send raised the same AttributeError (a misspelt Contact field),
    and each was a failed attempt: a try and its retry gave every due step up. Review s13d F1:
    not charging them instead sent a message whose send raised after it went out again, on
    every try, without end. Now each is charged, and two alike before any success stop."""

    def broken(contact) -> None:  # type: ignore[no-untyped-def]
        raise bug("the wording of this bucket")

    _, report = run(DeliveryLedger(tmp_path), buckets(5), broken)
    assert (report.sent, report.failed, report.code_errors, report.not_tried) == (0, 2, 2, 3)
    assert report.code_error.startswith(f"{bug.__name__}: ") and "wording" in report.code_error
    plan, _ = run(DeliveryLedger(tmp_path), buckets(5), Outbox())
    assert sorted(contact.attempt for contact in plan.due) == [1, 1, 1, 2, 2]


def _two_buckets(first: int, second: int):  # type: ignore[no-untyped-def]
    """``first`` not_started customers, then ``second`` with a utility not connected."""
    items = buckets(first + second)["not_started"]
    for item in items[first:]:
        item["utilities"] = ["PG&E"]
    return {"not_started": items[:first], "utility_not_connected": items[first:]}


def test_a_field_only_another_buckets_items_have_stops_nobody_else(tmp_path: Path) -> None:
    """Review s13f F1: a send reading contact.item["utilities"], which not_started items lack,
    raised the same KeyError for the first two customers (the plan sends bucket by bucket), so
    each try stopped there and everyone else waited runs for them to be given up."""
    outbox = Outbox()

    def send(contact) -> None:  # type: ignore[no-untyped-def]
        ", ".join(contact.item["utilities"])
        outbox(contact)

    _, report = run(DeliveryLedger(tmp_path), _two_buckets(4, 3), send)
    assert (report.sent, report.failed, report.not_tried) == (3, 4, 0)

    def broken(contact) -> None:  # type: ignore[no-untyped-def]
        contact.transmission_region  # noqa: B018  # the same bug in every bucket: stopped
        outbox(contact)

    _, report = run(DeliveryLedger(tmp_path / "another"), _two_buckets(4, 3), broken)
    assert (report.sent, report.failed, report.not_tried) == (0, 3, 4)  # two, then one more


def test_a_bug_met_after_a_send_went_out_or_raised_differently_stops_nothing(
    tmp_path: Path,
) -> None:
    """A bug in one bucket's wording, or one customer's odd data or missing address: those
    customers' failed attempts, given up and reported as any, and the others sent."""
    errors = {"cust-0001": "a", "cust-0002": "b", "cust-0003": "a"}
    addresses: dict[str, str] = {}

    def send(contact) -> None:  # type: ignore[no-untyped-def]
        if contact.ref_id in errors:
            raise TypeError(errors[contact.ref_id])
        outbox(contact)

    def no_addresses(contact) -> None:  # type: ignore[no-untyped-def]
        addresses[contact.ref_id]  # each customer's own KeyError

    outbox = Outbox()
    _, report = run(DeliveryLedger(tmp_path), buckets(5), send)
    assert (report.sent, report.failed, report.code_errors, report.not_tried) == (2, 3, 3, 0)
    _, report = run(DeliveryLedger(tmp_path / "another"), buckets(4), no_addresses)
    assert (report.sent, report.failed, report.code_errors, report.not_tried) == (0, 4, 4, 0)


class Killed(BaseException):  # what a SIGTERM or a timeout raises in a task
    pass


def killed(contact) -> None:  # type: ignore[no-untyped-def]
    raise Killed


def test_an_unconfirmed_send_counts_as_sent_and_is_listed_not_failed(tmp_path: Path) -> None:
    def send(contact) -> None:  # type: ignore[no-untyped-def]
        if contact.ref_id in ("cust-0001", "cust-0002"):  # in a row: no streak stops the run
            raise SendUnconfirmed("connection lost before the answer")
        outbox(contact)

    outbox = Outbox()
    _, report = run(DeliveryLedger(tmp_path), buckets(5), send)
    assert (report.sent, report.unconfirmed, report.failed, report.not_tried) == (3, 2, 0, 0)
    assert report.counts()["unconfirmed"] == 2
    assert [(a["ref_id"], a["why"]) for a in report.attention] == [
        ("cust-0001", "unconfirmed"),
        ("cust-0002", "unconfirmed"),
    ]
    assert "connection lost" in report.attention[0]["detail"]
    plan, _ = run(DeliveryLedger(tmp_path), buckets(5), send, T0 + H)
    assert plan.due == [] and plan.outcomes["already_sent"] == 5


def test_a_send_killed_midway_is_never_repeated_and_reported_once(tmp_path: Path) -> None:
    clock = Clock()
    with pytest.raises(Killed):
        run(DeliveryLedger(tmp_path, clock=clock), buckets(1), killed)
    # A retry minutes later: the claim is fresh, held by the killed try: not sent.
    clock.now += timedelta(minutes=5)
    plan, _ = run(DeliveryLedger(tmp_path, clock=clock), buckets(1), Outbox())
    assert plan.due == [] and plan.outcomes["in_flight"] == 1
    # Once stale it counts as sent (it may have gone out), and a person hears of it once.
    clock.now += timedelta(hours=1)
    ledger = DeliveryLedger(tmp_path, clock=clock)
    view = ledger.load(T0)
    assert [u["ref_id"] for u in view.unconfirmed] == ["cust-0000"]
    assert ledger.load(T0).unconfirmed == []
    plan, _ = run(ledger, buckets(1), Outbox())
    assert plan.due == [] and plan.outcomes["already_sent"] == 1


def test_an_unconfirmed_send_is_listed_again_by_a_retry_of_its_run_only(tmp_path: Path) -> None:
    clock = Clock()
    with pytest.raises(Killed):
        run(DeliveryLedger(tmp_path, clock=clock), buckets(1), killed)
    clock.now += timedelta(hours=1)

    def load(owner: str, run: str) -> list[str]:
        view = DeliveryLedger(tmp_path, clock=clock, owner=owner).load(T0, run=run)
        return [u["ref_id"] for u in view.unconfirmed]

    assert load("d/r1/t/try 1", "d/r1/t/") == ["cust-0000"]  # found and folded
    assert load("d/r1/t/try 2", "d/r1/t/") == ["cust-0000"]  # its retry: Airflow cleared try 1
    assert load("d/r2/t/try 1", "d/r2/t/") == []  # another run
    assert load("d/r1/t/try 3", "") == []  # no run given: only what this load folds


def test_a_claim_is_taken_by_one_sender_only(tmp_path: Path) -> None:
    first, second = DeliveryLedger(tmp_path, owner="a"), DeliveryLedger(tmp_path, owner="b")
    contact = plan_contacts(buckets(1), now=T0, policy=POLICY, ledger={}).due[0]
    assert first.claim(contact, T0) is True
    assert second.claim(contact, T0) is False
    report = deliver([contact], Outbox(), second, now=T0, max_attempts=3)
    assert report.claimed_elsewhere == 1 and report.sent == 0


def _race(root: str, out: str, start: str) -> None:
    def send(contact) -> None:  # type: ignore[no-untyped-def]
        with open(out, "a", encoding="utf-8") as handle:
            handle.write(contact.contact_key + "\n")

    while not os.path.exists(start):  # both processes are up: go together
        time.sleep(0.001)
    ledger = DeliveryLedger(Path(root), owner=str(os.getpid()))
    run(ledger, buckets(300), send)


def test_two_workers_sending_the_same_run_send_each_contact_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    start, out = tmp_path / "go", tmp_path / "sent.txt"
    workers = [
        context.Process(target=_race, args=(str(tmp_path / "ledger"), str(out), str(start)))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    start.touch()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    sent = Counter(out.read_text().split())
    assert len(sent) == 300 and set(sent.values()) == {1}


def test_compaction_folds_claims_and_forgets_stalls_past_the_horizon(tmp_path: Path) -> None:
    ledger = DeliveryLedger(tmp_path)
    run(ledger, buckets(10), Outbox())
    claims = tmp_path / "email" / "claims"
    assert len(list(claims.iterdir())) == 20  # a claim and an outcome per message
    view = ledger.load(T0)
    assert view.compacted and view.stalls == 10 and list(claims.iterdir()) == []
    snapshot = json.loads((tmp_path / "email" / "ledger.json").read_text())
    assert len(snapshot["entries"]) == 10
    assert ledger.load(T0 + timedelta(days=31)).stalls == 0


def test_a_moment_ahead_of_the_clock_forgets_nothing_early(tmp_path: Path) -> None:
    """Review s14a F2: an events run whose wait was marked done by hand, its moment a month
    ahead, compacted at that moment: every stall was forgotten, and both DAGs sent no more."""
    clock = Clock()
    clock.now = T0
    run(DeliveryLedger(tmp_path, clock=clock), buckets(3), Outbox())
    ahead = DeliveryLedger(tmp_path, clock=clock).load(T0 + timedelta(days=40))
    assert ahead.stalls == 3 and ahead.forgotten_before == T0 - POLICY.horizon
    plan, report = run(DeliveryLedger(tmp_path, clock=clock), buckets(3), Outbox())
    assert plan.outcomes["already_sent"] == 3 and report.sent == 0  # still known, not expired


def test_a_task_with_a_shorter_horizon_does_not_forget_another_tasks_stalls(
    tmp_path: Path,
) -> None:
    # Two DAGs share the channel: one reminds for 30 days, the other's policy stops at 8.
    run(DeliveryLedger(tmp_path, horizon=timedelta(days=30)), buckets(1), Outbox())
    ten_days_on = T0 + timedelta(days=10)
    short = DeliveryLedger(tmp_path, horizon=timedelta(days=8)).load(ten_days_on)
    assert short.compacted and short.stalls == 1
    assert short.forgotten_before == ten_days_on - timedelta(days=30)
    later = DeliveryLedger(tmp_path, horizon=timedelta(days=8)).load(T0 + timedelta(days=20))
    assert later.stalls == 1  # the snapshot keeps the longest horizon once the claims are gone
    plan, _ = run(DeliveryLedger(tmp_path), buckets(1), Outbox(), now=ten_days_on)
    assert plan.due == [] or plan.due[0].step > 0  # not answered again as a new stall
    assert plan.outcomes["expired"] == 0


def test_a_damaged_ledger_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "ledger.json").write_text("{not json")
    with pytest.raises(LedgerError, match="damaged"):
        DeliveryLedger(tmp_path).load(T0)


def test_an_unwritable_ledger_fails_before_anything_is_sent(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the ledger folder should be")
    with pytest.raises(LedgerError, match="cannot be written"):
        DeliveryLedger(blocker).check_writable()


def test_bad_channel_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="channel"):
        DeliveryLedger(tmp_path, channel="../x")


def test_airflow_object_storage_paths_work_the_same(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    root = ObjectStoragePath(tmp_path.as_uri())
    outbox = Outbox()
    run(DeliveryLedger(root), buckets(5), outbox)
    plan, _ = run(DeliveryLedger(root), buckets(5), outbox)
    assert len(outbox.sent) == 5 and plan.due == []
    contact = plan_contacts(buckets(6), now=T0, policy=POLICY, ledger={}).due[-1]
    assert DeliveryLedger(root).claim(contact, T0) is True
    assert DeliveryLedger(root).claim(contact, T0) is False


# -- concurrency: compaction, the read order, half-made files, cleared old runs -----------------


def _plan(ledger: DeliveryLedger, items, now=T0):  # type: ignore[no-untyped-def]
    view = ledger.load(now)
    return plan_contacts(
        items, now=now, policy=POLICY, ledger=view.states, forgotten_before=view.forgotten_before
    )


def _deliver(ledger: DeliveryLedger, due, send, now=T0):  # type: ignore[no-untyped-def]
    return deliver(due, send, ledger, now=now, max_attempts=POLICY.max_attempts)


def _customers(*ref_ids: str, stall: datetime = T0 - timedelta(hours=2)):  # type: ignore[no-untyped-def]
    picked = {f"cust-{i:04d}" for i in range(10)} & set(ref_ids)
    return {"not_started": [i for i in buckets(10, stall)["not_started"] if i["ref_id"] in picked]}


def _hold_lock(root: Path, channel: str = "email") -> Path:
    """The compaction lock, fresh, as another task that is compacting right now holds it."""
    lock = root / channel / "compact.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"owner": "another task", "at": "2999-01-01T00:00:00.000000Z"}))
    return lock


class BetweenReads(DeliveryLedger):
    """A ledger whose ``load`` runs ``between`` once, between reading the claims and reading the
    snapshot (in whichever order ``load`` reads them): where another task's compaction hurts."""

    between = None

    def _read_claims(self):  # type: ignore[no-untyped-def]
        self._reads = getattr(self, "_reads", 0) + 1
        self._interleave()
        return super()._read_claims()

    def _read_snapshot(self):  # type: ignore[no-untyped-def]
        self._reads = getattr(self, "_reads", 0) + 1
        self._interleave()
        return super()._read_snapshot()

    def _interleave(self) -> None:
        if self._reads == 2 and self.between is not None:
            between, self.between = self.between, None
            between()


@pytest.mark.parametrize("fails", [False, True], ids=["sent", "failed"])
def test_a_compaction_between_plan_and_claim_lets_no_second_send_through(
    tmp_path: Path, fails: bool
) -> None:
    # The hourly run plans three customers and sends them one by one; meanwhile a webhook run
    # sends cust-0001 (or fails to), and another's load compacts, deleting those claim files.
    hourly, outbox = DeliveryLedger(tmp_path, owner="hourly"), Outbox()
    plan = _plan(hourly, _customers("cust-0000", "cust-0001", "cust-0002"))
    assert [c.attempt for c in plan.due] == [1, 1, 1]
    _deliver(hourly, plan.due[:1], outbox)
    webhook = DeliveryLedger(tmp_path, owner="webhook")
    event = _plan(webhook, _customers("cust-0001"))
    _deliver(
        webhook, event.due, Outbox(fail={"cust-0001"} if fails else set()) if fails else outbox
    )
    assert _plan(DeliveryLedger(tmp_path, owner="other"), _customers("cust-0009")).due
    assert list((tmp_path / "email" / "claims").iterdir()) == []  # compacted: files gone
    report = _deliver(hourly, plan.due[1:], outbox)
    assert report.claimed_elsewhere == 1 and report.sent == 1
    assert Counter(outbox.sent) == Counter(set(outbox.sent)) and len(outbox.sent) == 3 - fails
    # The refused claim is given back: the next attempt (or step) is still free for the next run.
    assert sorted(p.name.split(".")[-1] for p in (tmp_path / "email" / "claims").iterdir()) == [
        "claim",
        "outcome",
    ]
    nxt = _plan(DeliveryLedger(tmp_path), _customers("cust-0001"))
    assert [c.attempt for c in nxt.due] == ([2] if fails else [])


def test_a_load_that_reads_while_another_task_compacts_plans_nothing_again(
    tmp_path: Path,
) -> None:
    outbox = Outbox()
    items = _customers("cust-0000", "cust-0001")
    _deliver(DeliveryLedger(tmp_path), _plan(DeliveryLedger(tmp_path), items).due, outbox)
    lock = _hold_lock(tmp_path)  # another task is compacting: this load only reads

    def other_task_compacts() -> None:
        lock.unlink()
        assert DeliveryLedger(tmp_path, owner="other").load(T0).compacted

    reader = BetweenReads(tmp_path, owner="reader")
    reader.between = other_task_compacts
    view = reader.load(T0)
    assert not view.compacted and reader.between is None
    plan = plan_contacts(items, now=T0, policy=POLICY, ledger=view.states)
    assert plan.due == [] and plan.outcomes["already_sent"] == 2


def test_a_compaction_never_writes_over_a_newer_snapshot(tmp_path: Path) -> None:
    # A webhook run about cust-0009 loads; between its two reads another task compacts run 1's
    # sends of cust-0000/1 and a third sender leaves a fresh outcome for it to fold.
    outbox = Outbox()
    items = _customers("cust-0000", "cust-0001")
    _deliver(DeliveryLedger(tmp_path), _plan(DeliveryLedger(tmp_path), items).due, outbox)

    def compaction_then_a_send() -> None:
        DeliveryLedger(tmp_path, owner="other").load(T0)
        third = DeliveryLedger(tmp_path, owner="third")
        _deliver(third, _plan(third, _customers("cust-0005")).due, outbox)

    webhook = BetweenReads(tmp_path, owner="webhook")
    webhook.between = compaction_then_a_send
    webhook.load(T0)
    nxt = DeliveryLedger(tmp_path)
    nxt.load(T0)  # folds whatever is left
    snapshot = json.loads((tmp_path / "email" / "ledger.json").read_text())
    assert sorted(e[0] for e in snapshot["entries"]) == ["cust-0000", "cust-0001", "cust-0005"]
    later = T0 + timedelta(hours=1)
    assert _plan(DeliveryLedger(tmp_path), items, later).due == []
    assert len(outbox.sent) == 3


def _stress_sender(root: str, out: str, folder: str, kind: str, seed: int) -> None:
    import random

    def send(contact) -> None:  # type: ignore[no-untyped-def]
        with open(out, "a", encoding="utf-8") as handle:
            handle.write(contact.contact_key + "\n")

    def wait_for(name: str) -> None:
        while not os.path.exists(os.path.join(folder, name)):
            time.sleep(0.001)

    wait_for("go")  # every process is up: go together
    everyone = buckets(120)
    if kind == "hourly":
        # Plans everyone, then its (slow) send loop runs on while the first webhook process
        # is done (its sends compacted by its own later loads) and the second still runs.
        ledger = DeliveryLedger(Path(root), owner=kind)
        plan = plan_contacts(everyone, now=T0, policy=POLICY, ledger=ledger.load(T0).states)
        wait_for("webhook-0")
        deliver(plan.due, send, ledger, now=T0, max_attempts=POLICY.max_attempts)
        return
    rnd = random.Random(seed)
    for _ in range(30):  # webhook runs: load (compacting), plan three customers, send them
        picked = {"not_started": rnd.sample(everyone["not_started"], 3)}
        run(DeliveryLedger(Path(root), owner=kind), picked, send)
    Path(folder, kind).touch()


def test_the_hourly_run_and_webhook_runs_at_once_send_each_contact_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    out = tmp_path / "sent.txt"
    workers = [
        context.Process(
            target=_stress_sender,
            args=(str(tmp_path / "ledger"), str(out), str(tmp_path), kind, seed),
        )
        for seed, kind in enumerate(["hourly", "webhook-0", "webhook-1"])
    ]
    for worker in workers:
        worker.start()
    (tmp_path / "go").touch()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    sent = Counter(out.read_text().split())
    assert len(sent) == 120 and set(sent.values()) == {1}


@pytest.mark.parametrize("between", ["nothing", "a compaction", "a failure and a compaction"])
def test_two_senders_that_planned_different_steps_send_one_message(
    tmp_path: Path, between: str
) -> None:
    """Reviews s10a F6 and s10b 1: the hourly run plans at 12:17, a webhook run at 12:25; a stall
    of yesterday 12:20 is at step 0 for one and step 1 for the other. Both claims succeeded
    (their keys differ) and the customer got two first contacts within minutes."""
    stall = T0.replace(day=1, hour=12, minute=20)
    items = buckets(1, stall)
    hourly_now, events_now = T0.replace(minute=17), T0.replace(minute=25)
    hourly, events = (
        DeliveryLedger(tmp_path, owner="hourly"),
        DeliveryLedger(tmp_path, owner="events"),
    )
    early = plan_contacts(
        items, now=hourly_now, policy=POLICY, ledger=hourly.load(hourly_now).states
    )
    late = plan_contacts(
        items, now=events_now, policy=POLICY, ledger=events.load(events_now).states
    )
    assert [(c.step, c.sent_before) for c in early.due + late.due] == [(0, 0), (1, 0)]
    first = Outbox(fail={"cust-0000"}) if "failure" in between else Outbox()
    deliver(late.due, first, events, now=events_now, max_attempts=3)
    if "compaction" in between:  # another task's load folds the claim and deletes its files
        DeliveryLedger(tmp_path, owner="other").load(events_now)
    second = Outbox()
    report = deliver(early.due, second, hourly, now=hourly_now, max_attempts=3)
    # The earlier step stands aside: the later one went out, or failed and is tried again.
    assert (second.sent, report.claimed_elsewhere) == ([], 1)
    assert len(first.sent) == (0 if "failure" in between else 1)
    # A refused claim leaves nothing behind: the next run plans from what was sent.
    nxt = DeliveryLedger(tmp_path, owner="next")
    tomorrow = events_now + timedelta(days=1)
    plan = plan_contacts(items, now=tomorrow, policy=POLICY, ledger=nxt.load(tomorrow).states)
    assert list((tmp_path / "email" / "slots").iterdir()) == []
    if "failure" in between:
        assert [(c.step, c.attempt, c.sent_before) for c in plan.due] == [(1, 2, 0)]
    else:
        assert plan.due == [] and plan.outcomes["already_sent"] == 1


OLD_STALL, NEW_STALL = T0 - timedelta(days=1, hours=3), T0 - timedelta(hours=2)


def _reminder_due(tmp_path: Path) -> tuple[DeliveryLedger, ContactPlan]:
    """Yesterday's stall answered, its day-1 reminder due now for the hourly run."""
    run(DeliveryLedger(tmp_path, owner="day0"), buckets(1, OLD_STALL), Outbox(), now=OLD_STALL + H)
    hourly = DeliveryLedger(tmp_path, owner="hourly")
    now = OLD_STALL + timedelta(days=1)
    plan = plan_contacts(
        buckets(1, OLD_STALL), now=now, policy=POLICY, ledger=hourly.load(now).states
    )
    assert [(c.step, c.first) for c in plan.due] == [(1, False)]
    return hourly, plan


@pytest.mark.parametrize("between", ["nothing", "a compaction"])
def test_two_senders_that_planned_two_stalls_send_one_message(tmp_path: Path, between: str) -> None:
    """Review s12a F1: the hourly run's data still shows yesterday's stall, due its day-1
    reminder; the webhook run read a newer refresh, where the customer acted again this morning
    (a new stall, its first contact due). Both claims succeeded (two stalls, two slots) and the
    customer got two messages minutes apart. One goes out; the other waits for the gap."""
    hourly, early = _reminder_due(tmp_path)
    events = DeliveryLedger(tmp_path, owner="events")
    late = plan_contacts(
        buckets(1, NEW_STALL), now=T0, policy=POLICY, ledger=events.load(T0).states
    )
    assert [(c.step, c.first) for c in late.due] == [(0, True)]
    sent = Outbox()
    deliver(early.due, sent, hourly, now=OLD_STALL + timedelta(days=1), max_attempts=3)
    if between == "a compaction":  # another task's load folds the claim and deletes its slot
        DeliveryLedger(tmp_path, owner="other").load(T0)
    second = Outbox()
    report = deliver(late.due, second, events, now=T0, max_attempts=3)
    assert (len(sent.sent), second.sent, report.claimed_elsewhere) == (1, [], 1)
    # The new stall's first contact comes once the gap has passed since the reminder.
    nxt = DeliveryLedger(tmp_path, owner="next")
    for gap, due in ((POLICY.min_gap - H, []), (POLICY.min_gap, [(0, True)])):
        at = OLD_STALL + timedelta(days=1) + gap
        plan = plan_contacts(
            buckets(1, NEW_STALL), now=at, policy=POLICY, ledger=nxt.load(at).states
        )
        assert [(c.step, c.first) for c in plan.due] == due


def test_a_new_stall_waits_while_a_message_of_the_older_one_is_being_sent(tmp_path: Path) -> None:
    """Review s12a F1: a live claim of the older stall made the newer stall's plan start from
    nothing sent, in flight or not."""
    hourly, early = _reminder_due(tmp_path)
    assert hourly.claim(early.due[0], OLD_STALL + timedelta(days=1))
    events = DeliveryLedger(tmp_path, owner="events")
    late = plan_contacts(
        buckets(1, NEW_STALL), now=T0, policy=POLICY, ledger=events.load(T0).states
    )
    assert late.due == [] and late.outcomes["in_flight"] == 1


def test_a_failed_first_contact_of_a_new_stall_and_its_retry_send_one_message(
    tmp_path: Path,
) -> None:
    """Review s12b F1: the hourly run plans a new stall's first contact (held a day by the gap),
    a webhook run a little later its day-1 step. The hourly send fails and its retry sends; the
    webhook run's step went out too. The failed attempt also erased when the customer's last
    message went out (the new stall's entry started empty)."""
    old = T0 - timedelta(days=1, hours=3)
    new, hourly_now = old + timedelta(minutes=90), old + timedelta(days=1, hours=1)
    events_now = hourly_now + timedelta(minutes=35)
    run(DeliveryLedger(tmp_path, owner="day0"), buckets(1, old), Outbox(), now=old + H)
    hourly, events = DeliveryLedger(tmp_path, owner="h/1"), DeliveryLedger(tmp_path, owner="e/1")
    early, late = (
        plan_contacts(buckets(1, new), now=at, policy=POLICY, ledger=ledger.load(at).states).due
        for ledger, at in ((hourly, hourly_now), (events, events_now))
    )
    assert [(c.step, c.first) for c in early + late] == [(0, True), (1, True)]
    deliver(early, Outbox(fail={"cust-0000"}), hourly, now=hourly_now, max_attempts=3)
    retried, report = run(
        DeliveryLedger(tmp_path, owner="h/2"), buckets(1, new), Outbox(), hourly_now
    )
    assert report.sent == 1 and retried.due[0].last_sent == int((old + H).timestamp())
    second = Outbox()
    assert deliver(late, second, events, now=events_now, max_attempts=3).claimed_elsewhere == 1
    assert second.sent == []


@pytest.mark.parametrize("hourly_first", [True, False])
def test_two_senders_either_side_of_an_old_stall_leaving_the_horizon_send_one_message(
    tmp_path: Path, hourly_first: bool
) -> None:
    """Review s12b F2: the hourly run's moment still knows the customer's old stall, the webhook
    run's, twenty minutes later, has forgotten it: they saw two different last messages, so
    their customer slots differed, and they picked two steps of the new stall."""
    old = T0 - timedelta(days=31)
    new = old + timedelta(days=29, minutes=5)
    hourly_now, events_now = old + POLICY.horizon - 10 * MINUTE, old + POLICY.horizon + 10 * MINUTE
    run(DeliveryLedger(tmp_path, owner="day0"), buckets(1, old), Outbox(), now=old + H)
    senders = [
        (
            ledger,
            at,
            plan_contacts(
                buckets(1, new), now=at, policy=POLICY, ledger=ledger.load(at).states
            ).due,
        )
        for ledger, at in (
            (DeliveryLedger(tmp_path, owner="hourly"), hourly_now),
            (DeliveryLedger(tmp_path, owner="events"), events_now),
        )
    ]
    assert [(c.step, c.last_sent is None) for _, _, due in senders for c in due] == [
        (0, False),
        (1, True),
    ]
    outbox = Outbox()
    for ledger, at, due in senders if hourly_first else senders[::-1]:
        deliver(due, outbox, ledger, now=at, max_attempts=3)
    assert len(outbox.sent) == 1


@pytest.mark.parametrize("hourly_loads_first", [True, False])
@pytest.mark.parametrize("hourly_sends_first", [True, False])
def test_two_stalls_planned_either_side_of_an_old_stall_leaving_the_horizon_get_one_message(
    tmp_path: Path, hourly_loads_first: bool, hourly_sends_first: bool
) -> None:
    """Review s12c F1: the customer acted twice within minutes, just as their stall of a month
    ago left the horizon. The hourly run, still knowing the old stall's message, planned the
    first new stall; the webhook run, which had forgotten it, the second. Two stalls and two
    views of the last message: both of their slots differed, and both sent."""
    old = T0 - timedelta(days=31)
    first, second = old + POLICY.horizon - 70 * MINUTE, old + POLICY.horizon - 65 * MINUTE
    hourly_now, events_now = old + POLICY.horizon - 10 * MINUTE, old + POLICY.horizon + 10 * MINUTE
    run(DeliveryLedger(tmp_path, owner="day0"), buckets(1, old), Outbox(), now=old + H)
    senders = [
        (DeliveryLedger(tmp_path, owner="hourly"), hourly_now, buckets(1, first)),
        (DeliveryLedger(tmp_path, owner="events"), events_now, buckets(1, second)),
    ]
    plans = {}
    for ledger, at, items in senders if hourly_loads_first else senders[::-1]:
        view = ledger.load(at)
        plan = plan_contacts(
            items, now=at, policy=POLICY, ledger=view.states, forgotten_before=view.forgotten_before
        )
        plans[ledger.owner] = (ledger, at, plan.due)
    [hourly], [events] = plans["hourly"][2], plans["events"][2]
    assert (hourly.stall, events.stall) == (
        buckets(1, first)["not_started"][0]["last_interaction"],
        buckets(1, second)["not_started"][0]["last_interaction"],
    )
    assert (hourly.last_sent is None, events.last_sent) == (not hourly_loads_first, None)
    outbox = Outbox()
    for ledger, at, due in plans.values() if hourly_sends_first else list(plans.values())[::-1]:
        deliver(due, outbox, ledger, now=at, max_attempts=3)
    assert len(outbox.sent) == 1


@pytest.mark.parametrize("compacted_past_the_horizon", [False, True])
def test_a_message_of_a_stall_the_sender_forgot_sent_since_its_plan_holds_its_claim(
    tmp_path: Path, compacted_past_the_horizon: bool
) -> None:
    """Review s13a F5: a stall found late got its one message right at its horizon (the hourly
    run); the webhook run, past the horizon, had planned the customer's new stall. A compaction
    in between either kept the old stall, whose message the webhook run then ignored as one it
    forgot, or forgot it, message and all: both sent, twenty minutes apart."""
    old = T0 - timedelta(days=31)
    new = old + POLICY.horizon - 50 * MINUTE
    hourly_now, events_now = old + POLICY.horizon - 10 * MINUTE, old + POLICY.horizon + 10 * MINUTE
    hourly, events = DeliveryLedger(tmp_path, owner="h"), DeliveryLedger(tmp_path, owner="e")
    [late] = _plan(hourly, buckets(1, old), hourly_now).due
    [first] = _plan(events, buckets(1, new), events_now).due
    assert (late.step, first.step, first.last_sent) == (3, 0, None)
    outbox = Outbox()
    _deliver(hourly, [late], outbox, hourly_now)
    third = events_now + 2 * MINUTE if compacted_past_the_horizon else hourly_now + MINUTE
    assert DeliveryLedger(tmp_path, owner="third").load(third).compacted
    assert _deliver(events, [first], outbox, events_now).claimed_elsewhere == 1
    assert outbox.sent == [late.contact_key]


def test_the_horizon_keeps_a_stalls_last_message_until_the_gap_has_passed(tmp_path: Path) -> None:
    """Review s12a F2: a stall answered in its last hour before the horizon was forgotten with
    its message's time, so the customer's new stall got a first contact two hours later."""
    old = T0 - timedelta(days=31)
    at = old + POLICY.horizon - 10 * MINUTE
    outbox = Outbox()
    run(DeliveryLedger(tmp_path), buckets(1, old), outbox, now=at)  # found late: one message
    new = buckets(1, at + 5 * MINUTE)  # the customer acts again
    plan, _ = run(DeliveryLedger(tmp_path), new, outbox, now=at + 2 * H)
    assert plan.outcomes["waiting"] == 1 and len(outbox.sent) == 1
    plan, _ = run(DeliveryLedger(tmp_path), new, outbox, now=at + POLICY.min_gap)
    assert plan.outcomes["due"] == 1 and len(outbox.sent) == 2


def test_a_send_time_carried_from_a_forgotten_stall_does_not_refuse_a_due_message(
    tmp_path: Path,
) -> None:
    """Review s12c F2: a failed attempt on one new stall carried the customer's weeks-old last
    send time into its entry; the webhook run's claim for their next stall, planned having
    forgotten that old stall, took it for a message sent since its plan and gave it back."""
    old = T0 - timedelta(days=31)
    for step in POLICY.steps:  # the old stall answered on its whole cadence
        run(DeliveryLedger(tmp_path), buckets(1, old), Outbox(), now=old + step)
    hourly_now, events_now = old + POLICY.horizon - 10 * MINUTE, old + POLICY.horizon + 10 * MINUTE
    other, events = DeliveryLedger(tmp_path, owner="other"), DeliveryLedger(tmp_path, owner="e")
    assert other._lock()  # another task compacts: the webhook run's load only reads
    [first] = _plan(events, buckets(1, old + POLICY.horizon - 65 * MINUTE), events_now).due
    other._unlock()
    assert first.last_sent is None
    hourly = DeliveryLedger(tmp_path, owner="h")
    [failing] = _plan(hourly, buckets(1, old + POLICY.horizon - 70 * MINUTE), hourly_now).due
    deliver([failing], Outbox(fail={"cust-0000"}), hourly, now=hourly_now, max_attempts=1)
    entry = DeliveryLedger(tmp_path, owner="c").load(hourly_now).states["cust-0000"]
    assert entry.sent_count == 0 and entry.sent_at is not None  # carried from the old stall
    outbox = Outbox()
    assert _deliver(events, [first], outbox, events_now).sent == 1


def test_an_old_stall_forgotten_by_the_sender_is_no_message_since_its_plan(tmp_path: Path) -> None:
    """Review s12b F3: a sender whose load forgot the customer's old stall (past the horizon at
    its moment) planned the new stall's first contact; a compaction by a sender with an earlier
    moment kept the old stall, and its weeks-old message counted as sent since the plan."""
    old = T0 - timedelta(days=31)
    new, hourly_now = old + timedelta(days=29, hours=2), old + POLICY.horizon - 5 * MINUTE
    events_now = old + POLICY.horizon + 10 * MINUTE
    run(DeliveryLedger(tmp_path, owner="day0"), buckets(1, old), Outbox(), now=old + H)
    compacting, events = (
        DeliveryLedger(tmp_path, owner="other"),
        DeliveryLedger(tmp_path, owner="e"),
    )
    assert compacting._lock()  # another task is compacting: the webhook run's load only reads
    due = plan_contacts(
        buckets(1, new), now=events_now, policy=POLICY, ledger=events.load(events_now).states
    ).due
    compacting._unlock()
    assert [(c.step, c.last_sent) for c in due] == [(0, None)]
    other = {"not_started": [{**buckets(1, new)["not_started"][0], "ref_id": "z9"}]}
    run(DeliveryLedger(tmp_path, owner="hourly"), other, Outbox(), now=hourly_now)
    DeliveryLedger(tmp_path, owner="next").load(hourly_now)  # a new snapshot, the old stall kept
    outbox = Outbox()
    deliver(due, outbox, events, now=events_now, max_attempts=3)
    assert len(outbox.sent) == 1


def test_a_slot_is_deleted_by_a_compaction_only_never_by_its_sender(tmp_path: Path) -> None:
    """Review s10d F1: a claim found covered gave its slot back; between a compaction's listings
    of slots and of claims that let a third sender take the slot, the compaction delete it live,
    and a fourth send too. A slot taken stays until a compaction that sees no live claim."""
    stall = T0.replace(day=1, hour=12, minute=20)
    items = buckets(1, stall)
    now = T0.replace(minute=17)
    first, second = DeliveryLedger(tmp_path, owner="w1"), DeliveryLedger(tmp_path, owner="w2")
    planned = [
        plan_contacts(items, now=now, policy=POLICY, ledger=ledger.load(now).states).due
        for ledger in (first, second)
    ]
    deliver(planned[0], Outbox(fail={"cust-0000"}), first, now=now, max_attempts=3)
    DeliveryLedger(tmp_path, owner="other").load(now)  # folds the failure, frees its slot
    slots = tmp_path / "email" / "slots"
    assert list(slots.iterdir()) == []
    report = deliver(planned[1], Outbox(), second, now=now, max_attempts=3)  # covered: refused
    assert report.claimed_elsewhere == 1 and len(list(slots.iterdir())) == 1  # the customer's
    DeliveryLedger(tmp_path, owner="next").load(now)
    assert list(slots.iterdir()) == []


def test_a_slot_held_after_a_failed_attempt_names_its_holder(tmp_path: Path, caplog) -> None:
    """Review s13a F3: a retry before a compaction counted its own earlier try's failed attempt
    ``claimed_elsewhere``, which reads as "the other DAG sent it"; the log says whose it is."""
    first = DeliveryLedger(tmp_path, owner="dag/run/contact/try 1")
    [contact] = _plan(first, buckets(1)).due
    _deliver(first, [contact], Outbox(fail={"cust-0000"}))
    lock = _hold_lock(tmp_path)  # another task compacts: the retry's load only reads
    retry = DeliveryLedger(tmp_path, owner="dag/run/contact/try 2")
    [again] = _plan(retry, buckets(1)).due
    caplog.set_level("INFO", logger="airflow_provider_leap.ledger")
    assert _deliver(retry, [again], Outbox()).claimed_elsewhere == 1
    assert "held by dag/run/contact/try 1's claim of " + contact.contact_key in caplog.text
    lock.unlink()
    assert _deliver(retry, _plan(retry, buckets(1)).due, Outbox()).sent == 1


def test_a_slot_holder_that_cannot_be_read_costs_only_the_log_line(
    tmp_path: Path, monkeypatch
) -> None:
    """Review s13d F4: a failed read of the holder (a transient GET error) failed the delivery."""
    first = DeliveryLedger(tmp_path, owner="try 1")
    _deliver(first, _plan(first, buckets(2)).due, Outbox(fail={"cust-0000"}))
    _hold_lock(tmp_path)
    retry = DeliveryLedger(tmp_path, owner="try 2")
    due = _plan(retry, buckets(2)).due

    def unreadable(path):  # type: ignore[no-untyped-def]
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(DeliveryLedger, "_read_claim", staticmethod(unreadable))
    assert _deliver(retry, due, Outbox()).claimed_elsewhere == 1


def test_a_compaction_leaves_a_slot_being_created_alone(tmp_path: Path, monkeypatch) -> None:
    """Review s10d F2: a compaction deleted the temporary file another sender was about to link
    as its slot, and that sender's whole delivery failed."""
    import airflow_provider_leap.ledger as ledger_module

    sender = DeliveryLedger(tmp_path, owner="hourly")
    due = plan_contacts(buckets(3), now=T0, policy=POLICY, ledger=sender.load(T0).states).due
    link, other = os.link, DeliveryLedger(tmp_path, owner="webhook")

    def link_after_a_compaction(src, dst):  # type: ignore[no-untyped-def]
        if Path(dst).parent.name == "slots":
            other.load(T0)  # another task's load compacts now: the tmp file is in slots/
        return link(src, dst)

    monkeypatch.setattr(ledger_module.os, "link", link_after_a_compaction)
    outbox = Outbox()
    report = deliver(due, outbox, sender, now=T0, max_attempts=3)
    assert (report.sent, len(outbox.sent)) == (3, 3)


@pytest.mark.parametrize("where", ["local", "object store"])
def test_a_file_is_created_whole_or_not_at_all(tmp_path: Path, where: str) -> None:
    from upath import UPath

    from airflow_provider_leap.ledger import ExclusiveCreate

    folder = tmp_path if where == "local" else UPath(f"memory://ledger-test/{tmp_path.name}")
    folder.mkdir(parents=True, exist_ok=True)
    create = ExclusiveCreate()
    assert create(folder / "a.claim", b"first") is True
    assert create(folder / "a.claim", b"second") is False
    with pytest.raises(TypeError):  # the write fails after the create (as a full disk would)
        create(folder / "b.claim", "not bytes")  # type: ignore[arg-type]
    assert sorted(p.name for p in folder.iterdir()) == ["a.claim"]  # no temporary, no empty b
    assert (folder / "a.claim").read_bytes() == b"first" and create.exclusive


def test_a_stall_the_ledger_forgot_stays_expired_for_a_cleared_old_run(tmp_path: Path) -> None:
    stall = T0 - timedelta(hours=2)
    items = _customers("cust-0000", stall=stall)
    outbox = Outbox()
    for offset in (timedelta(hours=1), *(timedelta(days=d, hours=1) for d in (1, 3, 7))):
        now = stall + offset
        ledger = DeliveryLedger(tmp_path)
        _deliver(ledger, _plan(ledger, items, now).due, outbox, now)
    assert len(outbox.sent) == 4
    # Day 31: the stall is forgotten. Then the failed run of day 29 is cleared and runs again.
    forgetting = DeliveryLedger(tmp_path)
    assert forgetting.load(stall + timedelta(days=31)).stalls == 0
    old_now = stall + timedelta(days=29)
    cleared = DeliveryLedger(tmp_path)
    plan = _plan(cleared, items, old_now)
    assert plan.due == [] and plan.outcomes["expired"] == 1
    # A plan made without forgotten_before (a user's own code) is still refused at the claim.
    due = plan_contacts(items, now=old_now, policy=POLICY, ledger={}).due
    assert _deliver(cleared, due, outbox, old_now).claimed_elsewhere == 1
    assert len(outbox.sent) == 4
    snapshot = json.loads((tmp_path / "email" / "ledger.json").read_text())
    assert snapshot["forgotten_before"] == (stall + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")


def test_a_snapshot_written_before_generations_is_read(tmp_path: Path) -> None:
    (tmp_path / "email").mkdir()
    stall = (T0 - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    entries = [["cust-0000", stall, 3600]]
    old = {"version": 2, "written_at": "2026-03-02T11:00:00Z", "entries": entries}
    (tmp_path / "email" / "ledger.json").write_text(json.dumps(old))
    ledger = DeliveryLedger(tmp_path)
    view = ledger.load(T0)
    assert view.stalls == 1 and view.forgotten_before == T0 - POLICY.horizon
    assert plan_contacts(buckets(1), now=T0, policy=POLICY, ledger=view.states).due == []


def test_a_snapshot_that_numbers_its_steps_is_refused_not_misread(tmp_path: Path) -> None:
    """Format 1 (development builds) recorded step numbers: read as offsets in seconds, step 2
    would look like "nothing sent yet" and every customer would get their message again."""
    (tmp_path / "email").mkdir()
    stall = (T0 - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    old = {"version": 1, "written_at": "2026-03-02T11:00:00Z", "entries": [["cust-0000", stall, 0]]}
    (tmp_path / "email" / "ledger.json").write_text(json.dumps(old))
    with pytest.raises(LedgerError, match="has format 1, and this provider reads format 2"):
        DeliveryLedger(tmp_path).load(T0)


# -- second review: a stale lock, stores that decide at commit, a failed check, old texts --------


def test_a_stale_lock_is_broken_by_one_task_only_and_never_unlocked_by_another(
    tmp_path: Path,
) -> None:
    stale = tmp_path / "email" / "compact.lock"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"owner": "killed", "at": "2000-01-01T00:00:00.000000Z"}))
    second = DeliveryLedger(tmp_path)

    class SawTheSameStaleLock(DeliveryLedger):
        """Reads the stale lock, then ``second`` breaks it and takes the lock, then goes on."""

        def _read_lock(self):  # type: ignore[no-untyped-def]
            held = super()._read_lock()
            if not getattr(self, "_interleaved", False):
                self._interleaved = True
                assert second._lock() is True
            return held

    first = SawTheSameStaleLock(tmp_path)
    assert first._lock() is False  # it must not break the lock ``second`` holds now
    assert json.loads(stale.read_text())["token"] == second._token
    first._unlock()  # a task whose lock was broken as stale removes nothing of another's
    assert stale.exists()
    second._unlock()
    assert not stale.exists()


def test_a_breaker_that_died_before_removing_a_stale_lock_is_followed_by_another(
    tmp_path: Path,
) -> None:
    """Review s13a F1: a task that made a stale lock's break marker and died (or whose storage
    failed) before removing the lock left the marker, so no load compacted the channel again:
    no customer's message slot was freed, and nobody got a second message."""
    clock = Clock()
    stale = tmp_path / "email" / "compact.lock"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"owner": "killed", "at": "2000-01-01T00:00:00.000000Z"}))

    class DiesBreaking(DeliveryLedger):
        def _read_lock(self):  # type: ignore[no-untyped-def]
            held = super()._read_lock()
            if any(p.name.startswith("compact.lock.broken-") for p in stale.parent.iterdir()):
                raise OSError(5, "Input/output error")  # right after its marker was made
            return held

    with pytest.raises(LedgerError, match="Input/output error"):
        DiesBreaking(tmp_path, clock=clock).load(T0)
    assert DeliveryLedger(tmp_path, clock=clock).load(T0).compacted is False  # being broken
    clock.now += timedelta(minutes=31)  # the marker is stale too
    outbox = Outbox()
    run(DeliveryLedger(tmp_path, clock=clock), buckets(1), outbox)
    assert len(outbox.sent) == 1
    view = DeliveryLedger(tmp_path, clock=clock).load(T0)
    assert view.compacted and view.states["cust-0000"].sent_count == 1
    assert list((tmp_path / "email" / "slots").iterdir()) == []  # freed for the next message


def test_a_break_marker_without_a_time_is_taken_for_a_breaker_at_work(tmp_path: Path) -> None:
    """Review s13d F3: an empty marker (a version before rounds, whose breaker may be between
    its check and its unlink) counted as stale, so two tasks broke one lock and compacted."""
    stale = tmp_path / "email" / "compact.lock"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"owner": "killed", "at": "2000-01-01T00:00:00.000000Z"}))
    digest = DeliveryLedger(tmp_path)._read_lock()["digest"]  # type: ignore[index]
    (stale.parent / f"compact.lock.broken-{digest}").write_bytes(b"")
    assert DeliveryLedger(tmp_path)._lock() is False


class _CommitTimeStore:
    """An object-store path whose exclusive create is decided when the object is committed, at
    close (S3's If-None-Match, GCS's ifGenerationMatch=0): not a ``pathlib.Path``, no links."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name

    def __truediv__(self, key: str) -> _CommitTimeStore:
        return _CommitTimeStore(self.path / key)

    def exists(self) -> bool:
        return self.path.exists()

    def unlink(self, missing_ok: bool = False) -> None:
        self.path.unlink(missing_ok=missing_ok)

    def open(self, mode: str = "rb"):  # type: ignore[no-untyped-def]
        if mode != "xb":
            return open(self.path, mode)
        target, chunks = self.path, []

        class Upload:
            def write(self, body: bytes) -> None:
                chunks.append(body)

            def __enter__(self) -> Upload:
                return self

            def __exit__(self, *exc: object) -> None:
                if target.exists():
                    raise FileExistsError(f"412 Precondition Failed: {target.name}")
                target.write_bytes(b"".join(chunks))

        return Upload()


def test_a_store_that_refuses_the_name_at_commit_never_loses_the_winners_file(
    tmp_path: Path,
) -> None:
    from airflow_provider_leap.ledger import ExclusiveCreate, _fill

    claim = _CommitTimeStore(tmp_path) / "lc1-abc.1.claim"
    loser = claim.open("xb")  # opened before the winner committed, committed after it
    assert ExclusiveCreate()(claim, b"winner") is True
    with pytest.raises(FileExistsError):
        _fill(claim, loser, b"loser")  # how ExclusiveCreate writes: the store refuses at commit
    assert ExclusiveCreate()(claim, b"third") is False  # refused at close: "it existed"
    assert claim.path.read_bytes() == b"winner"


def test_a_commit_that_fails_otherwise_never_removes_the_object_either(tmp_path: Path) -> None:
    """Review s10d F4: S3 answers 409 (s3fs: OSError EIO) when a DELETE of the name ran during
    the PUT; the loser then removed what was under the name: another sender's live slot."""
    from airflow_provider_leap.ledger import _fill

    slot = _CommitTimeStore(tmp_path) / "ms-abc"
    slot.path.write_bytes(b"another sender's")

    class Conflict:
        def write(self, body: bytes) -> None:
            pass

        def __enter__(self) -> Conflict:
            return self

        def __exit__(self, *exc: object) -> None:
            raise OSError(5, "ConditionalRequestConflict: 409")

    with pytest.raises(OSError, match="409"):
        _fill(slot, Conflict(), b"ours")
    assert slot.path.read_bytes() == b"another sender's"


def test_a_claim_whose_check_fails_is_given_back_not_left_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = _customers("cust-0000")
    ledger = DeliveryLedger(tmp_path)
    [contact] = _plan(ledger, items).due

    def storage_hiccup() -> str:
        raise OSError("503 SlowDown")

    monkeypatch.setattr(ledger, "_read_generation", storage_hiccup)
    with pytest.raises(LedgerError, match="Cannot record a claim"):
        ledger.claim(contact, T0)
    assert list((tmp_path / "email" / "claims").iterdir()) == []
    retry = DeliveryLedger(tmp_path)  # Airflow's retry: nothing was sent, so it is due again
    assert [c.contact_key for c in _plan(retry, items).due] == [contact.contact_key]


def test_an_entry_in_an_older_text_of_the_same_instant_keeps_what_was_sent(
    tmp_path: Path,
) -> None:
    stall = T0 - timedelta(days=1, hours=1)
    old_text = stall.strftime("%Y-%m-%dT%H:%M:%S.000Z")  # as a version before one text per instant
    items = _customers("cust-0000", stall=stall)
    items["not_started"][0]["last_interaction"] = old_text
    ledger = DeliveryLedger(tmp_path)
    [first] = _plan(ledger, items, T0 - timedelta(days=1)).due
    assert first.stall.endswith(":00Z")  # the one text
    ledger.claim(first, T0 - timedelta(days=1))
    ledger.settle(first, T0 - timedelta(days=1), sent=True)
    DeliveryLedger(tmp_path).load(T0)  # compacted: the entry holds the canonical text
    snapshot = json.loads((tmp_path / "email" / "ledger.json").read_text())
    snapshot["entries"][0][1] = old_text  # as the older version would have written it
    (tmp_path / "email" / "ledger.json").write_text(json.dumps(snapshot))
    ledger = DeliveryLedger(tmp_path)
    [reminder] = _plan(ledger, items).due
    assert (reminder.step, reminder.first) == (1, False)
    _deliver(ledger, [reminder], Outbox(fail={"cust-0000"}))  # the reminder fails once
    entry = DeliveryLedger(tmp_path).load(T0).states["cust-0000"]
    assert (entry.sent_offset, entry.failed_offset, entry.failures) == (3600, 86400, 1)
    assert entry.sent_at is not None


def test_the_ledger_id_lasts_a_lost_file_and_is_never_read_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = DeliveryLedger(tmp_path)
    name = ledger.identity()
    assert DeliveryLedger(tmp_path).identity() == name  # one name, whoever asks
    run(ledger, buckets(1), Outbox())
    ledger.load(T0)  # compacted: ledger.json keeps the name too
    (tmp_path / "email" / "ledger-id").unlink()  # an object store's expiry rule took the file
    assert DeliveryLedger(tmp_path).identity() == name
    # Created by another task that has not written it yet: never read as a name ("").
    other = tmp_path / "other"
    (other / "email").mkdir(parents=True)
    (other / "email" / "ledger-id").write_bytes(b"")
    monkeypatch.setattr("airflow_provider_leap.ledger.time.sleep", lambda seconds: None)
    with pytest.raises(LedgerError, match="another task is creating it"):
        DeliveryLedger(other).identity()


def test_a_claim_of_another_format_is_refused_not_ignored(tmp_path: Path) -> None:
    """A format 1 claim (a step number, no offset) left unread would let its message go again."""
    claims = tmp_path / "email" / "claims"
    claims.mkdir(parents=True)
    old = {"contact_key": "lc1-" + "0" * 40, "ref_id": "cust-0000", "stall": "2026-03-02T10:00:00Z"}
    old |= {"step": 0, "attempt": 1, "state": "sent", "now": "2026-03-02T11:17:00.000000Z"}
    old |= {"claimed_at": "2026-03-02T11:17:01.000000Z"}
    (claims / f"{old['contact_key']}.1.outcome").write_text(json.dumps(old))
    with pytest.raises(LedgerError, match="is not a claim of format 2"):
        DeliveryLedger(tmp_path).load(T0)


def test_a_stalls_steps_are_counted_once_in_whatever_order_their_claims_are_read(
    tmp_path: Path,
) -> None:
    """Two sends of a stall folded at once (a ledger with no snapshot yet), then both claims read
    again beside the snapshot that holds them (listed before a compaction deleted them): two
    messages, not four (the count decides whether a step after a cadence change would be one
    message too many)."""
    items = _customers("cust-0000", stall=T0 - 2 * timedelta(days=1))
    ledger = DeliveryLedger(tmp_path / "sent")
    claims = tmp_path / "sent" / "email" / "claims"
    kept: dict[str, bytes] = {}
    for now in (T0 - timedelta(hours=47), T0):  # an hour after the stall, then a day after
        [contact] = _plan(ledger, items, now).due  # each load compacts: the slot is free again
        _deliver(ledger, [contact], Outbox(), now)
        kept |= {path.name: path.read_bytes() for path in claims.iterdir()}
    assert len(kept) == 4  # two claims, two outcomes
    for root in (tmp_path / "fresh", tmp_path / "sent"):
        (root / "email" / "claims").mkdir(parents=True, exist_ok=True)
        for name, body in kept.items():
            (root / "email" / "claims" / name).write_bytes(body)
        entry = DeliveryLedger(root).load(T0).states["cust-0000"]
        assert (entry.sent_count, entry.sent_offset, entry.finished) == (2, 86400, False)


# -- an older copy of the ledger (a backup restored, a rollback): told apart by a sender's mark --


def _sender_run(ledger: DeliveryLedger, items, send, mark: Mark | None, now=T0):  # type: ignore[no-untyped-def]
    """One run as the operator makes it: load checking the mark, send, leave the next mark."""
    try:
        view = ledger.load(now, expect=mark)
    except OlderCopy as exc:
        return exc.why, None
    plan = plan_contacts(items, now=now, policy=POLICY, ledger=view.states)
    deliver(plan.due, send, ledger, now=now, max_attempts=POLICY.max_attempts)
    return None, ledger.mark(view, mark)


def _restore(copy: Path, folder: Path) -> None:
    shutil.rmtree(folder)
    shutil.copytree(copy, folder)


def test_an_older_copy_is_found_before_it_is_compacted_so_a_retry_finds_it_too(
    tmp_path: Path,
) -> None:
    """An object store's previous version of ledger.json alone: the load that finds it must not
    compact it first (that would bring its count level with the mark and fold the newer claims
    into it, so Airflow's retry would pass and message everyone the lost version held again)."""
    outbox = Outbox()
    _, mark = _sender_run(DeliveryLedger(tmp_path), _customers("cust-0001"), outbox, None)
    items = _customers("cust-0001", "cust-0002")
    _, mark = _sender_run(DeliveryLedger(tmp_path), items, outbox, mark)
    snapshot = tmp_path / "email" / "ledger.json"
    old = snapshot.read_bytes()
    items = _customers("cust-0001", "cust-0002", "cust-0003")
    _, mark = _sender_run(DeliveryLedger(tmp_path), items, outbox, mark)  # folds cust-0002
    assert mark is not None and mark.sequence == 2 and len(outbox.sent) == 3
    snapshot.write_bytes(old)  # the previous version restored: cust-0002's send is not in it
    claims = sorted(path.name for path in (tmp_path / "email" / "claims").iterdir())
    for owner in ("try 1", "try 2"):  # the try and Airflow's retry
        why, _ = _sender_run(DeliveryLedger(tmp_path, owner=owner), items, outbox, mark)
        assert why is not None and "compaction 1" in why and "compaction 2" in why
    assert snapshot.read_bytes() == old  # left as found
    assert sorted(path.name for path in (tmp_path / "email" / "claims").iterdir()) == claims
    assert len(outbox.sent) == 3


def test_an_older_copy_of_the_ledger_is_told_from_the_ledger_itself(tmp_path: Path) -> None:
    folder, copy = tmp_path / "email", tmp_path / "backup"
    outbox = Outbox()
    why, mark = _sender_run(DeliveryLedger(tmp_path), _customers("cust-0001"), outbox, None)
    shutil.copytree(folder, copy)  # yesterday's backup
    why, mark = _sender_run(
        DeliveryLedger(tmp_path), _customers("cust-0001", "cust-0002"), outbox, mark
    )
    assert why is None and mark is not None and mark.claim is not None
    assert mark.claim.ref_id == "cust-0002" and mark.sequence == 1 and len(outbox.sent) == 2
    newer = tmp_path / "newer"
    shutil.copytree(folder, newer)
    _restore(copy, folder)  # the backup put back: c2's message is not in it
    why, _ = _sender_run(
        DeliveryLedger(tmp_path), _customers("cust-0001", "cust-0002"), outbox, mark
    )
    assert why is not None and "compaction 0" in why and "compaction 1" in why
    # Another task sharing the channel compacts the copy (its own mark is older than the copy):
    # the count catches up, but the copy still lacks the message the mark names.
    _sender_run(DeliveryLedger(tmp_path, owner="webhooks"), _customers("cust-0003"), outbox, None)
    assert DeliveryLedger(tmp_path).load(T0).sequence >= mark.sequence
    why, _ = _sender_run(
        DeliveryLedger(tmp_path), _customers("cust-0001", "cust-0002"), outbox, mark
    )
    assert why is not None and "does not record" in why and mark.claim.contact_key in why
    assert len(outbox.sent) == 3  # c1, c2, c3: none twice
    # The newer folder put back: it holds everything the mark says.
    _restore(newer, folder)
    why, _ = _sender_run(
        DeliveryLedger(tmp_path), _customers("cust-0001", "cust-0002"), outbox, mark
    )
    assert why is None and len(outbox.sent) == 3


def test_only_ledger_json_rolled_back_is_an_older_copy_too(tmp_path: Path) -> None:
    """An object store's rollback of ledger.json alone: the claims it had folded are gone."""
    outbox = Outbox()
    _, mark = _sender_run(DeliveryLedger(tmp_path), _customers("cust-0001"), outbox, None)
    _, mark = _sender_run(
        DeliveryLedger(tmp_path), _customers("cust-0001", "cust-0002"), outbox, mark
    )
    snapshot = tmp_path / "email" / "ledger.json"
    old = snapshot.read_bytes()
    _, mark = _sender_run(
        DeliveryLedger(tmp_path), _customers("cust-0001", "cust-0002", "cust-0003"), outbox, mark
    )
    assert mark is not None and mark.sequence == 2
    snapshot.write_bytes(old)
    why, _ = _sender_run(
        DeliveryLedger(tmp_path), _customers("cust-0001", "cust-0002", "cust-0003"), outbox, mark
    )
    assert why is not None and "compaction 1" in why


def test_a_mark_raises_no_false_alarm_in_the_ways_the_ledger_is_used(tmp_path: Path) -> None:
    clock = Clock()
    outbox = Outbox(fail={"cust-0004"})
    items = _customers("cust-0001", "cust-0002")

    def check(mark: Mark | None, now=T0) -> None:  # type: ignore[no-untyped-def]
        assert mark is not None
        assert DeliveryLedger(tmp_path, clock=clock).load(now).older_than(mark) is None

    why, mark = _sender_run(DeliveryLedger(tmp_path, clock=clock), items, outbox, None)
    first = mark
    # Another task sharing the channel compacts and sends in between.
    _sender_run(
        DeliveryLedger(tmp_path, owner="webhooks", clock=clock),
        _customers("cust-0003"),
        outbox,
        None,
    )
    check(mark)
    # A run that sends nothing keeps the attempt of the mark it passed.
    why, mark = _sender_run(DeliveryLedger(tmp_path, clock=clock), items, outbox, mark)
    assert why is None and mark is not None and mark.claim == first.claim
    check(mark)
    # A failed attempt as the last one recorded, compacted or not.
    why, mark = _sender_run(
        DeliveryLedger(tmp_path, clock=clock), _customers("cust-0004"), outbox, mark
    )
    assert mark is not None and mark.claim is not None and mark.claim.state == "failed"
    check(mark)
    check(mark)
    # Killed after sending, before leaving its mark: the mark before stands, and holds.
    killed_run = DeliveryLedger(tmp_path, clock=clock)
    _deliver(killed_run, _plan(killed_run, _customers("cust-0005")).due, outbox)
    check(mark)
    # Two tries of one run at once: whichever mark is written last, it holds.
    tries = [DeliveryLedger(tmp_path, owner=f"d/r/t/try {n}", clock=clock) for n in (1, 2)]
    views = [ledger.load(T0) for ledger in tries]
    for ledger, view in zip(tries, views, strict=True):
        due = plan_contacts(
            _customers("cust-0006", "cust-0007"), now=T0, policy=POLICY, ledger=view.states
        ).due
        deliver(due, outbox, ledger, now=T0, max_attempts=3)
    for ledger, view in zip(tries, views, strict=True):
        check(ledger.mark(view, mark))
    assert outbox.sent.count(outbox.sent[-1]) == 1
    # The ledger-id file lost: restored from the snapshot, nothing else changes.
    (tmp_path / "email" / "ledger-id").unlink()
    check(mark)
    # A month later the attempt's stall is forgotten, by this ledger as by any copy.
    month = T0 + timedelta(days=31)
    assert DeliveryLedger(tmp_path, clock=clock).load(month).stalls == 0
    check(mark, month)


def test_a_ledger_or_mark_from_before_the_check_gives_no_verdict(tmp_path: Path) -> None:
    (tmp_path / "email").mkdir()
    stall = (T0 - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    old = {"version": 2, "written_at": "2026-03-02T11:00:00Z", "entries": [["cust-0001", stall, 0]]}
    (tmp_path / "email" / "ledger.json").write_text(json.dumps(old))
    view = DeliveryLedger(tmp_path).load(T0)
    assert view.sequence == 0 and view.older_than(Mark()) is None
    _deliver(
        DeliveryLedger(tmp_path),
        _plan(DeliveryLedger(tmp_path), _customers("cust-0002")).due,
        Outbox(),
    )
    assert DeliveryLedger(tmp_path).load(T0).compacted
    assert json.loads((tmp_path / "email" / "ledger.json").read_text())["sequence"] == 1
    assert Mark.parse(None) is None and Mark.parse({"claim": {"ref_id": 1}}) is None
    assert Mark.parse({"sequence": 3}) == Mark(sequence=3)


def test_a_channel_downs_reason_reaches_the_report_whole(tmp_path: Path) -> None:
    """The task's error quotes the relay's reply, however long (a Gmail refusal runs to 300
    characters); other failures are cut to a line of 200."""
    ledger = DeliveryLedger(tmp_path)
    due = _plan(ledger, buckets(3)).due

    def refusing(contact: Contact) -> None:
        raise ChannelDown("the relay answered 554 5.7.1\n" + "refused " * 40)

    report = deliver(due, refusing, ledger, now=T0, max_attempts=3)
    assert (report.sent, report.failed, report.not_tried) == (0, 0, 3)
    assert report.channel_down is not None and report.channel_down.endswith("refused")
    assert len(report.channel_down) > 300


@pytest.mark.parametrize(
    "client", ["requests", "httpx", "urllib", "smtplib", "requests-unanswered"]
)
def test_a_channel_that_cannot_be_connected_to_stops_the_run(tmp_path: Path, client: str) -> None:
    """Review s15a: a send function of one's own meeting a CRM or relay that refuses
    connections charged every customer due an attempt, try after try, until their steps were
    all given up. The second in a row stops the run: two customers are charged, not all (a
    send function may have done its part elsewhere first: an attempt bounds the repeats).
    Review s15c: a host that does not answer while connecting (a firewall) is the same.
    Review s16d: httpx's refusal is raised ``from None`` inside httpcore, and was missed."""
    import smtplib
    import socket
    import urllib.request

    import httpx
    import requests

    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    full = socket.socket()  # a listener whose queue is full: a new connection gets no answer
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    waiting = [socket.socket() for _ in range(3)]
    for queued in waiting:
        queued.setblocking(False)
        queued.connect_ex(full.getsockname())
    session = requests.Session()
    session.trust_env = False  # no proxy between us and loopback

    def send(contact: Contact) -> None:
        if client == "requests":
            session.post(f"http://127.0.0.1:{port}/records", json={}, timeout=5)
        elif client == "httpx":
            httpx.post(f"http://127.0.0.1:{port}/records", json={}, timeout=5)
        elif client == "urllib":
            urllib.request.urlopen(f"http://127.0.0.1:{port}/records", timeout=5)
        elif client == "requests-unanswered":
            session.post(f"http://127.0.0.1:{full.getsockname()[1]}/", json={}, timeout=(0.3, 5))
        else:
            smtplib.SMTP("127.0.0.1", port, timeout=5)

    ledger = DeliveryLedger(tmp_path)
    plan, report = run(ledger, buckets(5), send)
    assert (report.sent, report.failed, report.not_tried) == (0, 2, 3)
    assert report.channel_down is not None
    assert client == "requests-unanswered" or "refused" in report.channel_down.lower()
    for queued in (*waiting, full):
        queued.close()
    plan, report = run(ledger, buckets(5), Outbox())
    assert report.sent == 5 and sorted(c.attempt for c in plan.due) == [1, 1, 1, 2, 2]


def _crm_sender(url: str, client: str):  # type: ignore[no-untyped-def]
    """A send function as partners write one: post the contact, raise on an error status."""
    import urllib.request

    import httpx
    import requests

    session = requests.Session()
    session.trust_env = False  # no proxy between us and loopback

    def send(contact: Contact) -> None:
        body = {"bucket": contact.bucket, "ref_id": contact.ref_id}
        if client == "requests":
            session.post(url, json=body, timeout=(5, 0.3)).raise_for_status()
        elif client == "httpx":
            httpx.post(url, json=body, timeout=httpx.Timeout(5, read=0.3)).raise_for_status()
        else:
            request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
            urllib.request.urlopen(request, timeout=0.3).close()

    return send


@pytest.mark.parametrize("client", ["requests", "httpx", "urllib"])
@pytest.mark.parametrize("answer", [503, 429, 500, "no answer"])
def test_a_channel_in_trouble_stops_the_run(tmp_path: Path, client: str, answer: object) -> None:
    """Review s15a/s16a: a send function of one's own posting to a CRM that answered 503 (or
    429, or did not answer in time) charged every customer due an attempt, try after try, so a
    CRM down for the hour of a run gave up every step due in it, in a green run. The second
    failure in a row alike stops the run; a CRM answering again sends the rest."""
    from fake_server import Reply, fake_leap

    def respond(seen):  # type: ignore[no-untyped-def]
        if answer == "no answer":  # the head comes after the sender's read timeout
            return Reply(200, drip_head=True, pause=1.0)
        return Reply(int(answer), {"error": "try later"})  # type: ignore[call-overload]

    ledger = DeliveryLedger(tmp_path)
    with fake_leap(respond) as crm:
        plan, report = run(ledger, buckets(5), _crm_sender(f"{crm.url}/crm", client))
    assert (report.sent, report.failed, report.not_tried) == (0, 2, 3)
    expected = "timed out" if answer == "no answer" else str(answer)
    assert report.channel_down is not None and expected in report.channel_down.lower()
    with fake_leap(lambda seen: Reply(200, {})) as crm:
        plan, report = run(ledger, buckets(5), _crm_sender(f"{crm.url}/crm", client))
    assert report.sent == 5 and sorted(c.attempt for c in plan.due) == [1, 1, 1, 2, 2]


def test_a_channel_down_through_a_run_and_its_retries_gives_no_step_up(tmp_path: Path) -> None:
    """Each try of a run met the same first customers, so a CRM down through a run's three
    tries charged those two three times and gave their steps up. First attempts go before
    retried ones: each try charges others, and nobody's step is given up."""
    from fake_server import Reply, fake_leap

    ledger = DeliveryLedger(tmp_path)
    with fake_leap(lambda seen: Reply(503, {"error": "down"})) as crm:
        for _retry in range(3):  # a run and its two retries
            _, report = run(ledger, buckets(8), _crm_sender(f"{crm.url}/crm", "requests"))
            assert (report.failed, report.given_up, report.not_tried) == (2, 0, 6)
    with fake_leap(lambda seen: Reply(200, {})) as crm:
        plan, report = run(ledger, buckets(8), _crm_sender(f"{crm.url}/crm", "requests"))
    assert report.sent == 8 and [c.attempt for c in plan.due] == [1, 1, 2, 2, 2, 2, 2, 2]


def _raised(call) -> BaseException:  # type: ignore[no-untyped-def]
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("nothing raised")


def test_what_says_a_channel_is_in_trouble() -> None:
    """Review s16b F1, F3: senders as partners write them, against a CRM on loopback. A
    session retrying 503s (urllib3's ``Retry``) raises a ``RetryError`` whose status is only
    text: trouble. A record's own answer (a 400 from a fallback tried after a 503, an error
    raised ``from None``) is not, whatever was handled before it; nor is a bug in the handler
    of a timeout (the bug rule stops that)."""
    import requests
    from fake_server import Reply, fake_leap
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    from airflow_provider_leap.delivery import channel_trouble

    def respond(seen):  # type: ignore[no-untyped-def]
        return Reply(400 if seen.path == "/fallback" else 503, {"error": seen.path})

    with fake_leap(respond) as crm:
        retrying = requests.Session()
        retrying.trust_env = False
        retry = Retry(total=1, status_forcelist=[503], allowed_methods=None, backoff_factor=0)
        retrying.mount("http://", HTTPAdapter(max_retries=retry))
        spent = _raised(lambda: retrying.post(f"{crm.url}/crm", json={}, timeout=5))
        assert isinstance(spent, requests.exceptions.RetryError)
        assert channel_trouble(spent) == "got a server error (5xx)"

        def fallback() -> None:
            try:
                requests.post(f"{crm.url}/crm", json={}, timeout=5).raise_for_status()
            except requests.HTTPError:
                requests.post(f"{crm.url}/fallback", json={}, timeout=5).raise_for_status()

        record = _raised(fallback)
        assert "400" in str(record) and "503" in str(record.__context__)
        assert channel_trouble(record) is None

        def from_none() -> None:
            try:
                requests.post(f"{crm.url}/crm", json={}, timeout=5).raise_for_status()
            except requests.HTTPError:
                raise ValueError("no such lead") from None

        assert channel_trouble(_raised(from_none)) is None
    throttled = type("ClientError", (Exception,), {})("throttled")  # botocore's shape
    throttled.response = {"ResponseMetadata": {"HTTPStatusCode": 429}}  # type: ignore[attr-defined]
    assert channel_trouble(throttled) == "were throttled (429)"
    unavailable = type("HTTPError", (Exception,), {})("503")  # SendGrid's client
    unavailable.status_code = 503  # type: ignore[attr-defined]
    assert channel_trouble(unavailable) == "got a server error (5xx)"
    # An AirflowException about a record (its class says 500 for the API server): not trouble.
    assert channel_trouble(AirflowException("400:Bad Request")) is None


def test_a_connection_reset_or_a_certificate_refused_is_trouble(tmp_path: Path) -> None:
    """Review s16d F2: a server closing the connection without an answer (a crashed process, a
    load balancer with no backend) and a certificate the client refuses gave every step up."""
    import socket
    import threading

    import httpx
    import requests
    from fake_server import Reply, fake_leap, self_signed_certificate

    from airflow_provider_leap.delivery import channel_trouble

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def hang_up() -> None:  # read the request, close without a word
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connection.recv(65536)
            connection.close()

    threading.Thread(target=hang_up, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/crm"
    for post in (requests.post, httpx.post):
        lost = _raised(lambda post=post: post(url, json={}, timeout=5))  # type: ignore[misc]
        assert channel_trouble(lost) == "could not connect", repr(lost)
    listener.close()
    with fake_leap(lambda seen: Reply(200, {}), self_signed_certificate(tmp_path)) as crm:
        refused = _raised(lambda: requests.post(crm.url, json={}, timeout=5))
    assert isinstance(refused, requests.exceptions.SSLError)
    assert channel_trouble(refused) == "could not connect"


def test_a_403_once_a_send_went_through_is_the_records(tmp_path: Path) -> None:
    """Review s16d F4: a CRM answering 403 to the leads we may not edit stopped every run at
    the first ones, red for hours. A 403 says the channel refuses us only before anything went
    through; after, it is each record's failed attempt."""
    from fake_server import Reply, fake_leap

    def respond(seen):  # type: ignore[no-untyped-def]
        return Reply(200 if len(crm.requests) == 1 else 403, {"error": "forbidden"})

    with fake_leap(respond) as crm:
        _, report = run(DeliveryLedger(tmp_path), buckets(6), _crm_sender(crm.url, "requests"))
    assert (report.sent, report.failed, report.not_tried) == (1, 5, 0)
    with fake_leap(lambda seen: Reply(403, {})) as crm:
        send = _crm_sender(crm.url, "requests")
        _, report = run(DeliveryLedger(tmp_path / "token"), buckets(6), send)
        assert (report.sent, report.failed, report.not_tried) == (0, 2, 4)
        # Review s17a F1: a retry meeting a 403 wall after its run's first try sent some (a
        # WAF after a burst) read each 403 as the record's: every due step given up, green.
        plan = plan_contacts(buckets(6), now=T0, policy=POLICY, ledger={})
        retry = DeliveryLedger(tmp_path / "retry")
        report = deliver(plan.due, send, retry, now=T0, max_attempts=3, took_before=5)
    assert (report.sent, report.failed, report.not_tried) == (0, 4, 2)  # 4 after the run's sends


def test_a_retry_counts_the_sends_of_the_runs_earlier_tries(tmp_path: Path) -> None:
    """Review s16c: a retry holding only the first try's failures had sent nothing itself, so
    it stopped at the 2nd failure in a row although the channel took the run's other sends
    minutes before (a CRM failing one request in five, or the records of the last bucket that
    break it: red runs, and those steps charged two a try). ``took_before`` counts them."""
    from fake_server import Reply, fake_leap

    def respond(seen):  # type: ignore[no-untyped-def]
        return Reply(500 if b"utility_not_connected" in seen.body else 201, {})

    ledger = DeliveryLedger(tmp_path)
    with fake_leap(respond) as crm:
        send = _crm_sender(crm.url, "requests")
        _, report = run(ledger, _two_buckets(3, 6), send)
        assert (report.sent, report.failed, report.not_tried) == (3, 4, 2)
        states = ledger.load(T0).states  # the retry: that bucket alone is due
        for took_before, failed in ((3, 4), (0, 2)):
            plan = plan_contacts(_two_buckets(3, 6), now=T0, policy=POLICY, ledger=states)
            assert {c.bucket for c in plan.due} == {"utility_not_connected"}
            retry = DeliveryLedger(tmp_path / str(took_before))
            report = deliver(plan.due, send, retry, now=T0, max_attempts=3, took_before=took_before)
            assert (report.sent, report.failed, report.not_tried) == (0, failed, 6 - failed)


def test_the_provider_s_own_settings_error_in_a_send_charges_nobody(tmp_path: Path) -> None:
    """Review s17b F2: a Connect link on a staging connection with no ``connect_base_url``
    raised in every send, each a failed attempt: a run gave every due step up. It is this
    provider's setting, the same for every customer: the delivery stops, nobody charged."""
    from airflow_provider_leap.errors import LeapConfigError

    def send(contact: Contact) -> None:
        try:
            raise LeapConfigError("set the extra connect_base_url")
        except LeapConfigError as exc:  # as the hook re-raises it, or a send function wraps it
            raise RuntimeError("could not build the message") from exc

    ledger = DeliveryLedger(tmp_path)
    _, report = run(ledger, buckets(4), send)
    assert (report.sent, report.failed, report.not_tried) == (0, 0, 4)
    assert report.stopped == "The Leap connection's settings are unusable"
    assert report.channel_down == "RuntimeError: could not build the message"
    assert all(state.failures == 0 for state in ledger.load(T0).states.values())

    def lookup(contact: Contact) -> None:  # Leap's record holds an ID our rule refuses
        validate_ref_ids([f"{contact.ref_id}{FORBIDDEN[0]}"])

    _, report = run(DeliveryLedger(tmp_path / "one"), _two_buckets(1, 3), lookup)
    assert (report.failed, report.not_tried, report.channel_down) == (4, 0, None)  # each its own


def test_a_send_records_who_sent_it_while_within_the_gap(tmp_path: Path) -> None:
    """Review s17a F2, F3: a retry counts only its run's earlier sends (``Entry.sent_by``),
    not another run's or DAG's since its moment, nor a send killed mid-way; kept within the
    gap only (a snapshot of 100,000 customers holds no owner each)."""
    owner = "dag/run-1/task/try 1"
    ledger = DeliveryLedger(tmp_path, owner=owner)
    _, report = run(ledger, buckets(2), Outbox())
    assert report.sent == 2
    states = DeliveryLedger(tmp_path).load(T0).states
    assert {state.sent_by for state in states.values()} == {owner}
    later = T0 + POLICY.min_gap + timedelta(seconds=1)
    states = DeliveryLedger(tmp_path, clock=lambda: later).load(later).states
    assert {state.sent_by for state in states.values()} == {None}

    class Killed(BaseException):  # what a SIGKILL leaves: a claim still "sending"
        pass

    def killed(contact: Contact) -> None:
        raise Killed

    killer = DeliveryLedger(tmp_path / "killed", owner=owner, clock=lambda: T0)
    plan = plan_contacts(buckets(1), now=T0, policy=POLICY, ledger={})
    with pytest.raises(Killed):
        deliver(plan.due, killed, killer, now=T0, max_attempts=3)
    on = T0 + timedelta(hours=1)  # stale: counted as sent, by nobody
    states = DeliveryLedger(tmp_path / "killed", clock=lambda: on).load(on).states
    assert [(state.sent_offset, state.sent_by) for state in states.values()] == [(3600, None)]


def test_another_bucket_is_moved_up_once_per_streak(tmp_path: Path) -> None:
    """Review s16d F5: when the customer moved up from another bucket could not be tried (no
    address, or claimed by another task), each failure moved up the next, and a channel that
    was down charged the whole first bucket in one try."""
    from fake_server import Reply, fake_leap

    with fake_leap(lambda seen: Reply(503, {})) as crm:
        post = _crm_sender(crm.url, "requests")

        def send(contact: Contact) -> None:
            if contact.bucket != "not_started":
                raise ContactUnreachable("no address")
            post(contact)

        _, report = run(DeliveryLedger(tmp_path), _two_buckets(4, 3), send)
    assert (report.failed, report.unreachable, report.not_tried) == (3, 1, 3)


def test_a_channel_failing_now_and_then_does_not_stop_the_run(tmp_path: Path) -> None:
    """Review s16b F4: a CRM answering 503 to one request in five stopped runs at the first two
    in a row, and customers waited hours. Once a send has gone through, it takes 4 in a row."""
    from fake_server import Reply, fake_leap

    failing = {2, 3, 7, 8, 9, 14, 15, 16, 17}  # requests answered 503 (0-based)

    def respond(seen):  # type: ignore[no-untyped-def]
        return Reply(503 if len(crm.requests) - 1 in failing else 200, {})

    with fake_leap(respond) as crm:
        _, report = run(DeliveryLedger(tmp_path), buckets(20), _crm_sender(crm.url, "requests"))
    assert (report.sent, report.failed, report.not_tried) == (2 + 3 + 4, 2 + 3 + 4, 2)
    assert report.channel_down is not None


def test_a_bug_handling_a_timeout_is_a_bug(tmp_path: Path) -> None:
    """Review s16b F3: a KeyError raised while handling a timeout stopped the run as a channel
    down, after sends had gone through; it is the send function's bug (the bug rule)."""
    import requests
    from fake_server import Reply, fake_leap

    def respond(seen):  # type: ignore[no-untyped-def]
        slow = len(crm.requests) > 2  # the head comes after the sender's read timeout
        return Reply(200, {}, drip_head=slow, pause=1.0 if slow else 0.0)

    def send(contact: Contact) -> None:
        try:
            requests.post(crm.url, json={}, timeout=(5, 0.3))
        except requests.Timeout:
            {}["retry_queue"].append(contact)  # type: ignore[index]

    with fake_leap(respond) as crm:
        _, report = run(DeliveryLedger(tmp_path), buckets(5), send)
    assert (report.sent, report.failed, report.code_errors, report.not_tried) == (2, 3, 3, 0)
    assert report.channel_down is None


def test_a_crm_failing_one_buckets_records_stops_nobody_else(tmp_path: Path) -> None:
    """A CRM that answers 500 to every record of one bucket (its fields break the CRM) is not
    down: another bucket's customer is tried between two of them, and goes through, so every
    customer of the other bucket is sent and each of the failing bucket is charged its own
    attempt. A 400 is about the record: charged, never the channel's trouble; but the same
    400 to each send before any went through (the CRM refusing what we send: review s17b F2)
    stops the delivery, as every customer would be charged so."""
    from fake_server import Reply, fake_leap

    def respond(seen):  # type: ignore[no-untyped-def]
        return Reply(500 if seen.path.endswith("not_started") else 200, {})

    ledger = DeliveryLedger(tmp_path)
    with fake_leap(respond) as crm:

        def posting(contact: Contact) -> None:
            import requests

            url = f"{crm.url}/crm/{contact.bucket}"
            requests.post(url, json={}, timeout=5).raise_for_status()

        _, report = run(ledger, _two_buckets(3, 3), posting)
    assert (report.sent, report.failed, report.not_tried) == (3, 3, 0)
    assert report.channel_down is None

    def invalid(seen):  # type: ignore[no-untyped-def]
        bad = b"cust-0001" in seen.body or b"cust-0002" in seen.body or b"cust-0004" in seen.body
        return Reply(400 if bad else 200, {"error": "invalid phone"})

    with fake_leap(invalid) as crm:
        send = _crm_sender(f"{crm.url}/crm", "httpx")
        _, report = run(DeliveryLedger(tmp_path / "other"), buckets(5), send)
    assert (report.sent, report.failed, report.not_tried) == (2, 3, 0)
    assert report.channel_down is None and report.same_failure is None
    with fake_leap(lambda seen: Reply(400, {"error": "invalid phone"})) as crm:
        send = _crm_sender(f"{crm.url}/crm", "httpx")
        _, report = run(DeliveryLedger(tmp_path / "third"), buckets(5), send)
    assert (report.sent, report.failed, report.not_tried) == (0, 2, 3)
    assert report.channel_down is None and report.same_failure is not None
    assert report.same_failure.startswith("HTTPStatusError: Client error '400 Bad Request'")


def test_marks_of_two_senders_join_to_the_higher_count_and_the_later_attempt(
    tmp_path: Path,
) -> None:
    """Two tasks share a ledger's mark; a task writing late must not put back an earlier
    attempt in place of another's later one (a copy taken between them would then pass)."""
    outbox = Outbox()
    _, hourly = _sender_run(DeliveryLedger(tmp_path, owner="hourly"), buckets(1), outbox, None)
    items = _customers("cust-0000", "cust-0001")
    _, webhooks = _sender_run(DeliveryLedger(tmp_path, owner="webhooks"), items, outbox, None)
    assert hourly is not None and webhooks is not None
    assert hourly.claim is not None and webhooks.claim is not None
    assert hourly.claim.claimed_at < webhooks.claim.claimed_at
    joined = hourly.join(webhooks)
    assert joined == webhooks.join(hourly) == Mark(sequence=1, claim=webhooks.claim)
    assert hourly.join(None) == hourly
