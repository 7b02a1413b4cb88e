"""The delivery ledger and ``deliver``: exactly once across retries, kills, concurrent senders."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from airflow_provider_leap.contact import ContactPolicy, plan_contacts
from airflow_provider_leap.delivery import ContactUnreachable, deliver
from airflow_provider_leap.ledger import DeliveryLedger, LedgerError

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
POLICY = ContactPolicy()


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
    for attempt in (2, 3):
        plan, report = run(DeliveryLedger(tmp_path), buckets(5), outbox)
        assert [(c.ref_id, c.attempt) for c in plan.due] == [("cust-0002", attempt)]
    assert report.given_up == 1 and report.attention[0]["why"] == "given_up"
    assert "550" in report.attention[0]["detail"]
    plan, _ = run(DeliveryLedger(tmp_path), buckets(5), outbox)
    assert plan.due == [] and plan.outcomes["given_up"] == 1
    assert len(outbox.sent) == 4


def test_unreachable_is_reported_and_not_an_attempt(tmp_path: Path) -> None:
    outbox = Outbox(unreachable={"cust-0001"})
    _, report = run(DeliveryLedger(tmp_path), buckets(3), outbox)
    assert report.unreachable == 1 and report.attention[0]["why"] == "unreachable"
    plan, _ = run(DeliveryLedger(tmp_path), buckets(3), Outbox())
    assert [(c.ref_id, c.attempt) for c in plan.due] == [("cust-0001", 1)]


def test_a_send_killed_midway_is_never_repeated_and_reported_once(tmp_path: Path) -> None:
    clock = Clock()

    class Killed(BaseException):  # what a SIGTERM or a timeout raises in a task
        pass

    def killed(contact) -> None:  # type: ignore[no-untyped-def]
        raise Killed

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
