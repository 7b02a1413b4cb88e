"""LeapContactOperator in real Airflow (``dag.test()``, the emulator): what survives a retry."""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import forget_ledger_records

from airflow_provider_leap.contact import ContactPolicy, plan_contacts
from airflow_provider_leap.delivery import deliver
from airflow_provider_leap.ledger import DeliveryLedger
from airflow_provider_leap.triage import triage

DAG_SOURCE = """
from datetime import datetime, timedelta, timezone
from airflow.sdk import DAG
from airflow_provider_leap.contact import ContactPolicy
from airflow_provider_leap.operators.contact import LeapContactOperator
from airflow_provider_leap.operators.triage import TriageOperator

def send(contact):
{send}

start = datetime(2026, 1, 1, tzinfo=timezone.utc)
with DAG("leap_contact_retry", schedule=None, start_date=start) as dag:
    moment = "{{{{ dag_run.run_after }}}}"
    TriageOperator(task_id="triage", ref_ids={ref_ids!r}, now=moment) >> LeapContactOperator(
        task_id="contact",
        send=send,
        ledger_url={ledger!r},
        policy=ContactPolicy({policy}),
        retries={retries},
        retry_delay=timedelta(seconds=1),
    )
"""
REFUSED = '    raise ConnectionError("the CRM refused the connection")'


def _dag(send: str, ref_ids: list[str], ledger: str, retries: int, policy: str = "") -> str:
    """``DAG_SOURCE``; ``policy``: ``ContactPolicy``'s arguments (default: 2 attempts)."""
    policy = policy or "max_attempts=2"
    return DAG_SOURCE.format(
        send=send, ref_ids=ref_ids, ledger=ledger, retries=retries, policy=policy
    )


def _an_hour_later() -> dict[str, Any]:
    """``dag.test`` arguments of a manual run an hour from now: the triage's moment, and the
    run's (``[leap] max_run_lag`` is off in the tests)."""
    return {"logical_date": None, "run_after": datetime.now(timezone.utc) + timedelta(hours=1)}


def _down_once(marker: Path, ref_ids: list[str]) -> str:
    """Send lines: the channel is down (``ChannelDown``) at the first of ``ref_ids`` sent, once:
    the try stops there, and Airflow retries it."""
    return (
        f"    import os\n"
        f"    if contact.ref_id in {ref_ids!r} and not os.path.exists({str(marker)!r}):\n"
        f"        open({str(marker)!r}, 'w').close()\n"
        f"        from airflow_provider_leap.delivery import ChannelDown\n"
        f"        raise ChannelDown('the relay is down')\n"
    )


def test_a_step_given_up_in_a_try_that_airflow_retries_is_still_reported(
    run_dag, leap_conn, leap_emulator, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A try that gives up one customer's last attempt and stops at another's (the channel
    down) is retried, and Airflow clears its XComs: the report of the given-up step must come
    back with the retry."""
    now = datetime.now(timezone.utc)
    buckets = triage(leap_emulator.records, now=now).buckets
    due = plan_contacts(buckets, now=now, policy=ContactPolicy(), ledger={}).due
    first, second, third = (contact.ref_id for contact in due[:3])
    ledger = (tmp_path / "ledger").as_uri()

    def run(send: str, ref_ids: list[str], retries: int):  # type: ignore[no-untyped-def]
        policy = "max_attempts=2, last_attempt_after=timedelta(0)"
        source = _dag(send=send, ref_ids=ref_ids, ledger=ledger, retries=retries, policy=policy)
        return run_dag("leap_contact_retry", source, logical_date=None)

    # First run: attempt 1 of the first two fails, refused: the channel stops the run (red).
    assert run(REFUSED, [first, second], retries=0).task_states["contact"] == "failed"
    # Second run: its first try sends the third (a first attempt goes first), gives the first
    # up (attempt 2 of 2) and finds the channel down at the second, so Airflow retries; the
    # retry sends the second, and lists the first customer's step given up.
    send = _down_once(tmp_path / "down", [second])
    send += f"    if contact.ref_id == {first!r}:\n        raise ValueError('no such mailbox')"
    result = run(send, [first, second, third], retries=1)
    assert result.task_states["contact"] == "success"
    counts = result.xcoms[("contact", "return_value")]
    assert (counts["sent"], counts["given_up"], counts["given_up_before"]) == (1, 0, 1)
    attention = result.xcoms[("contact", "attention")]
    assert [(a["ref_id"], a["why"], a["attempt"]) for a in attention] == [(first, "given_up", 2)]
    assert "earlier try of this run" in attention[0]["detail"]


def test_a_retry_tries_a_failed_step_again_and_its_last_attempt_waits_an_hour(
    run_dag, leap_conn, leap_emulator, tmp_path: Path, capfd
) -> None:  # type: ignore[no-untyped-def]
    """Review s17c F2: a run's retries, minutes apart, charged a customer over the relay's
    quota (or meeting a minute's outage) all three attempts: given up, often in a green run.
    Then one attempt per step per run made a channel failing one send in five turn nearly
    every hourly run red, its failed steps hours late. Now a retry makes the second attempt,
    the last waits ``last_attempt_after`` (a later run), and failed sends alone leave the task
    green once no retry can try them."""
    now = datetime.now(timezone.utc)
    buckets = triage(leap_emulator.records, now=now).buckets
    due = plan_contacts(buckets, now=now, policy=ContactPolicy(), ledger={}).due
    first, second = (contact.ref_id for contact in due[:2])
    ledger, sent = (tmp_path / "ledger").as_uri(), tmp_path / "sent.txt"
    quota = tmp_path / "quota"  # the relay takes one message, then refuses until it is reset
    send = (
        f"    import os\n    if os.path.exists({str(quota)!r}):\n"
        "        raise RuntimeError('452 4.3.1 quota exceeded')\n"
        f"    open({str(quota)!r}, 'w').close()\n"
        f"    open({str(sent)!r}, 'a').write(contact.ref_id + chr(10))"
    )
    source = _dag(send=send, ref_ids=[first, second], ledger=ledger, retries=2, policy="")
    source = source.replace("ContactPolicy(max_attempts=2)", "ContactPolicy()")  # 3 attempts
    result = run_dag("leap_contact_retry", source, logical_date=None)
    assert result.task_states["contact"] == "success"  # the retry's failure waits: not red
    assert (
        "A retry sends the customers not tried and tries the failed steps" in capfd.readouterr().out
    )
    states = DeliveryLedger(tmp_path / "ledger").load(datetime.now(timezone.utc)).states
    assert sorted(state.failures for state in states.values()) == [0, 2]  # the try, the retry
    again = run_dag("leap_contact_retry", source, logical_date=None)  # minutes later
    counts = again.xcoms[("contact", "return_value")]
    assert (again.task_states["contact"], counts["retry_later"], counts["sent"]) == (
        "success",
        1,
        0,
    )
    assert "1 failed step(s) whose last attempt waits until 0:50:00" in capfd.readouterr().out
    quota.unlink()  # the quota resets: a run an hour later sends the other customer
    later = run_dag("leap_contact_retry", source, **_an_hour_later())
    assert later.task_states["contact"] == "success"
    assert later.xcoms[("contact", "return_value")]["sent"] == 1
    assert sorted(sent.read_text().splitlines()) == sorted([first, second])


@pytest.mark.parametrize("retries", [0, 1])
def test_a_send_failing_once_is_sent_by_the_retry_or_waits_green_for_the_next_run(
    run_dag, leap_conn, leap_emulator, tmp_path: Path, capfd, retries: int
) -> None:  # type: ignore[no-untyped-def]
    """A channel failing now and then (one request in five) must not turn runs red: with a
    retry left, the task fails so Airflow's retry sends what failed (minutes late, not an
    hour); with none, it succeeds and says the next run tries them."""
    now = datetime.now(timezone.utc)
    buckets = triage(leap_emulator.records, now=now).buckets
    due = plan_contacts(buckets, now=now, policy=ContactPolicy(), ledger={}).due
    ref_ids = [contact.ref_id for contact in due[:3]]
    ledger, sent, flaked = (tmp_path / "ledger").as_uri(), tmp_path / "sent.txt", tmp_path / "once"
    send = (
        f"    import os\n    if contact.ref_id == {ref_ids[1]!r}"
        f" and not os.path.exists({str(flaked)!r}):\n"
        f"        open({str(flaked)!r}, 'w').close()\n"
        "        raise RuntimeError('503 Service Unavailable')\n"
        f"    open({str(sent)!r}, 'a').write(contact.ref_id + chr(10))"
    )
    source = _dag(
        send=send, ref_ids=ref_ids, ledger=ledger, retries=retries, policy="max_attempts=3"
    )
    result = run_dag("leap_contact_retry", source, logical_date=None)
    assert result.task_states["contact"] == "success"
    out = capfd.readouterr().out
    got = sorted(sent.read_text().splitlines())
    if retries:
        assert got == sorted(ref_ids)  # the retry sent it
        assert "tries the failed steps again" in out
    else:
        assert got == sorted(ref_ids[::2])
        assert "1 failed send(s), and no retry left: the next run tries them" in out
        assert result.xcoms[("contact", "return_value")]["failed"] == 1


def test_a_retry_after_a_stop_leaves_a_steps_last_attempt_and_says_so(
    run_dag, leap_conn, leap_emulator, tmp_path: Path, capfd
) -> None:  # type: ignore[no-untyped-def]
    """Review s17e F3: a retry (or a clear) left the run's failed steps, and a person expecting
    it to resend them was told nothing. A step's last attempt (the 2nd of 2) waits for a later
    run: the retry says so."""
    now = datetime.now(timezone.utc)
    buckets = triage(leap_emulator.records, now=now).buckets
    due = plan_contacts(buckets, now=now, policy=ContactPolicy(), ledger={}).due
    first, second = (contact.ref_id for contact in due[:2])
    send = f"    if contact.ref_id == {first!r}:\n        raise RuntimeError('no')\n"
    send += _down_once(tmp_path / "down", [second])
    ledger = (tmp_path / "ledger").as_uri()
    source = _dag(send=send, ref_ids=[first, second], ledger=ledger, retries=1)
    result = run_dag("leap_contact_retry", source, logical_date=None)
    assert result.task_states["contact"] == "success"  # the retry sent the second
    counts = result.xcoms[("contact", "return_value")]
    assert (counts["sent"], counts["failed"], counts["retry_later"]) == (1, 0, 1)
    assert "1 failed step(s) whose last attempt waits" in capfd.readouterr().out


def test_a_bug_in_the_send_function_charges_no_customer_an_attempt(
    run_dag, leap_conn, leap_emulator, tmp_path: Path, caplog, capfd
) -> None:  # type: ignore[no-untyped-def]
    """Review s13b F1: a send reading a field Contact does not have raised AttributeError for
    every customer; each counted as a failed attempt, so a try and its retry gave every due
    step up (the run ended green), and after the fix the customers were never messaged. Now
    the first two sends raising it alike stop each try: two customers pay, not everyone. The
    retry tries only the customer not charged yet: none is given up."""
    now = datetime.now(timezone.utc)
    buckets = triage(leap_emulator.records, now=now).buckets
    due = plan_contacts(buckets, now=now, policy=ContactPolicy(), ledger={}).due
    ref_ids = sorted({contact.ref_id for contact in due[:3]})
    ledger, sent = (tmp_path / "ledger").as_uri(), tmp_path / "sent.txt"

    def run(region: str, **when: Any):  # type: ignore[no-untyped-def]
        send = f"    {region}\n    open({str(sent)!r}, 'a').write(contact.ref_id + chr(10))"
        source = _dag(send=send, ref_ids=ref_ids, ledger=ledger, retries=1)
        return run_dag("leap_contact_retry", source, **(when or {"logical_date": None}))

    buggy = run("contact.transmission_region")  # a field Contact does not have
    assert buggy.task_states["contact"] == "failed"  # its retry too: loud, not green
    assert not sent.exists()
    assert "Is the send function broken?" in caplog.text and "AttributeError" in caplog.text
    assert buggy.xcoms[("contact", "attention")] == []  # nobody given up
    assert "Fix it before a retry or a clear" in "".join(capfd.readouterr())
    states = DeliveryLedger(Path(ledger.removeprefix("file://"))).load(now).states
    assert sorted(state.failures for state in states.values()) == [1, 1, 1]
    fixed = run("contact.item['transmission_region']", **_an_hour_later())  # their last attempt
    assert fixed.task_states["contact"] == "success"
    counts = fixed.xcoms[("contact", "return_value")]
    assert (counts["sent"], counts["given_up_before"]) == (3, 0)
    assert sorted(sent.read_text().splitlines()) == ref_ids


def test_a_retry_knows_the_channel_took_the_runs_earlier_sends(
    run_dag, leap_conn, leap_emulator, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Review s16c: records of the last bucket that break the CRM (it hangs up on them). The
    first try sends the other bucket, then stops at the channel down; the retry, holding that
    bucket alone, stopped at the 2nd as a channel down (red, the third never tried). The
    ledger shows the channel took this run's first sends, so the retry needs 4 in a row: each
    of the three is charged its attempt."""
    now = datetime.now(timezone.utc)
    buckets = triage(leap_emulator.records, now=now).buckets
    due = plan_contacts(buckets, now=now, policy=ContactPolicy(), ledger={}).due
    first = due[0].bucket
    last = next(c.bucket for c in reversed(due) if c.bucket != first)
    ref_ids = [c.ref_id for c in due if c.bucket == first][:2]
    ref_ids += [c.ref_id for c in due if c.bucket == last][:3]
    assert len(ref_ids) == 5
    send = _down_once(tmp_path / "down", ref_ids[2:]) + (
        f"    if contact.bucket == {last!r}:\n"
        "        raise ConnectionResetError('the CRM hung up on this record')"
    )
    ledger = tmp_path / "ledger"
    source = _dag(send=send, ref_ids=ref_ids, ledger=ledger.as_uri(), retries=1)
    result = run_dag("leap_contact_retry", source, logical_date=None)
    assert result.task_states["contact"] == "success"  # a later run makes their last attempts
    states = DeliveryLedger(ledger).load(now).states
    assert sorted(states[ref].failures for ref in ref_ids[2:]) == [1, 1, 1]
    assert all(states[ref].sent_by for ref in ref_ids[:2])


def test_sends_of_other_runs_since_the_runs_moment_are_not_its_own(
    run_dag, leap_conn, leap_emulator, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Review s17a F1, F2: the sends another DAG (or a catch-up run, recording at the clock)
    made after this run's moment counted as this run's earlier tries': its stop on a channel
    in trouble took 4 in a row instead of 2, and a 403 wall was read as each record's."""
    now = datetime.now(timezone.utc)
    buckets = triage(leap_emulator.records, now=now).buckets
    due = plan_contacts(buckets, now=now, policy=ContactPolicy(), ledger={}).due
    ledger = tmp_path / "ledger"
    other = DeliveryLedger(ledger, owner="leap_events/manual__1/message/try 1")
    report = deliver(
        due[:2], lambda contact: None, other, now=now + timedelta(minutes=1), max_attempts=2
    )
    assert report.sent == 2
    ref_ids = [contact.ref_id for contact in due[:7]]
    send = "    raise ConnectionResetError('the CRM hung up')"
    source = _dag(send=send, ref_ids=ref_ids, ledger=ledger.as_uri(), retries=0)
    result = run_dag("leap_contact_retry", source, logical_date=None)
    assert result.task_states["contact"] == "failed"
    states = DeliveryLedger(ledger).load(datetime.now(timezone.utc)).states
    assert sorted(state.failures for state in states.values() if state.failures) == [1, 1]


def test_a_send_found_unconfirmed_in_a_try_that_airflow_retries_is_still_reported(
    run_dag, leap_conn, leap_emulator, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The try that finds a send killed mid-way (its claim stale) folds it and reports it; when
    that try fails for another customer, the retry must report it again (XComs cleared)."""
    now = datetime.now(timezone.utc)
    buckets = triage(leap_emulator.records, now=now).buckets
    due = plan_contacts(buckets, now=now, policy=ContactPolicy(), ledger={}).due
    first, second = due[:2]

    class Killed(BaseException):  # what a SIGKILL leaves: a claim still "sending"
        pass

    def killed(contact):  # type: ignore[no-untyped-def]
        raise Killed

    an_hour_ago = now - timedelta(hours=1)  # the claim is stale by now
    ledger = DeliveryLedger(tmp_path / "ledger", clock=lambda: an_hour_ago)
    with pytest.raises(Killed):
        deliver([first], killed, ledger, now=an_hour_ago, max_attempts=2)

    # The run's first try finds the first customer's send unconfirmed and stops at the second
    # (the channel down), so Airflow retries; the retry sends the second.
    source = _dag(
        send=_down_once(tmp_path / "down", [second.ref_id]),
        ref_ids=[first.ref_id, second.ref_id],
        ledger=(tmp_path / "ledger").as_uri(),
        retries=1,
    )
    result = run_dag("leap_contact_retry", source, logical_date=None)
    assert result.task_states["contact"] == "success"
    attention = result.xcoms[("contact", "attention")]
    assert [(a["ref_id"], a["why"]) for a in attention] == [(first.ref_id, "unconfirmed")]
    assert result.xcoms[("contact", "return_value")]["unconfirmed"] == 1
    # Another run does not report it again.
    again = run_dag("leap_contact_retry", source, logical_date=None)
    assert [a["why"] for a in again.xcoms[("contact", "attention")]] == []


DOWN_SOURCE = """
from datetime import datetime, timedelta, timezone
from airflow.sdk import DAG
from airflow_provider_leap.operators.contact import LeapContactOperator
from airflow_provider_leap.operators.triage import TriageOperator

class Sender:  # a channel whose session cannot open, as the example's relay down at the start
    def __enter__(self):
        raise ConnectionRefusedError("relay down: connection refused")
    def __exit__(self, *exc):
        return None
    def __call__(self, contact):
        pass

start = datetime(2026, 1, 1, tzinfo=timezone.utc)
with DAG("leap_contact_down", schedule=None, start_date=start) as dag:
    TriageOperator(task_id="triage", ref_ids={ref_ids!r}) >> LeapContactOperator(
        task_id="contact", send=Sender(), ledger_url={ledger!r}, retries=1,
        retry_delay=timedelta(seconds=1),
    )
"""


def test_a_send_found_unconfirmed_by_a_run_that_never_sends_is_still_reported(
    run_dag, leap_conn, leap_emulator, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Review s10b 2: only the run that folds an unconfirmed send lists it; when every try of
    that run failed before its report (the channel down at the start), nobody ever did."""
    now = datetime.now(timezone.utc)
    buckets = triage(leap_emulator.records, now=now).buckets
    first, second = plan_contacts(buckets, now=now, policy=ContactPolicy(), ledger={}).due[:2]

    def killed(contact):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt  # what a SIGKILL leaves: a claim still "sending"

    an_hour_ago = now - timedelta(hours=1)  # the claim is stale by now
    ledger = DeliveryLedger(tmp_path / "ledger", clock=lambda: an_hour_ago)
    with pytest.raises(KeyboardInterrupt):
        deliver([first], killed, ledger, now=an_hour_ago, max_attempts=2)
    source = DOWN_SOURCE.format(
        ref_ids=[first.ref_id, second.ref_id], ledger=(tmp_path / "ledger").as_uri()
    )
    result = run_dag("leap_contact_down", source, logical_date=None)
    assert result.task_states["contact"] == "failed"
    attention = result.xcoms[("contact", "attention")]
    assert [(a["ref_id"], a["why"]) for a in attention] == [(first.ref_id, "unconfirmed")]


MOVING_SOURCE = """
from datetime import datetime, timezone
from airflow.sdk import DAG
from airflow_provider_leap.operators.contact import LeapContactOperator
from airflow_provider_leap.operators.triage import TriageOperator

def send(contact):
    with open({outbox!r}, "a") as out:
        out.write(contact.ref_id + "\\n")

start = datetime(2026, 1, 1, tzinfo=timezone.utc)
with DAG("leap_contact_ledger", schedule=None, start_date=start) as dag:
    TriageOperator(
        task_id="triage", now="{{{{ dag_run.run_after }}}}", ref_ids={ref_ids!r}
    ) >> LeapContactOperator(
        task_id="contact", send=send, ledger_url={ledger!r}, accept_ledger_id={accept!r}
    )
"""


def test_a_ledger_moved_without_its_record_sends_nothing_until_accepted(
    run_dag, leap_conn, leap_emulator, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A ledger that is not the one the task's earlier runs sent with (moved without its
    contents, wiped, a worker's own disk) would message everyone again: the run fails first."""
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session

    outbox = tmp_path / "outbox.txt"

    def run(folder: str, accept: str | None = None):  # type: ignore[no-untyped-def]
        source = MOVING_SOURCE.format(
            outbox=str(outbox), ledger=(tmp_path / folder).as_uri(), accept=accept, ref_ids=None
        )
        result = run_dag("leap_contact_ledger", source, logical_date=None)
        return result, outbox.read_text().splitlines() if outbox.exists() else []

    result, sent = run("first")
    assert result.task_states["contact"] == "success" and sent
    shutil.copytree(tmp_path / "first", tmp_path / "copied")  # moved the right way: nothing new
    result, after = run("copied")
    assert result.task_states["contact"] == "success" and after == sent
    result, after = run("empty")  # moved without its contents
    assert result.task_states["contact"] == "failed" and after == sent
    with create_session() as session:
        key = "leap_ledger:leap_contact_ledger/contact"
        (recorded,) = session.query(Variable).filter_by(key=key)
        assert json.loads(recorded.val)["folder"] == (tmp_path / "copied" / "email").as_uri()
    fresh = DeliveryLedger(tmp_path / "empty").identity()  # the id the error named
    result, after = run("empty", accept=fresh)  # a fresh start, on purpose
    assert result.task_states["contact"] == "success" and sorted(after) == sorted(sent * 2)
    assert run("empty")[0].task_states["contact"] == "success"  # from now on, this one
    # Left set, it accepts that ledger only: another empty one still stops the run.
    result, after = run("another", accept=fresh)
    assert result.task_states["contact"] == "failed" and sorted(after) == sorted(sent * 2)


def test_a_renamed_dag_with_an_empty_ledger_sends_nothing_until_accepted(
    run_dag, leap_conn, leap_emulator, tmp_path: Path, capfd
) -> None:  # type: ignore[no-untyped-def]
    """Review s14b F2: a DAG (or task) renamed while the ledger was moved without its contents
    or wiped has no ledger on record, so any ledger passed: 43 customers got the same message
    again. The channel's record names the ledger its last sender used."""
    outbox = tmp_path / "outbox.txt"

    def run(dag_id: str, folder: str, accept: str | None = None):  # type: ignore[no-untyped-def]
        source = MOVING_SOURCE.format(
            outbox=str(outbox), ledger=(tmp_path / folder).as_uri(), accept=accept, ref_ids=None
        ).replace('DAG("leap_contact_ledger"', f"DAG({dag_id!r}")
        capfd.readouterr()
        result = run_dag(dag_id, source, logical_date=None)
        log = "".join(capfd.readouterr())
        sent = outbox.read_text().splitlines() if outbox.exists() else []
        return result.task_states["contact"], sent, log

    state, sent, _ = run("leap_contact_ledger", "ledger")
    assert state == "success" and sent
    assert run("leap_contact_renamed", "ledger")[:2] == ("success", sent)  # same ledger: fine
    state, after, log = run("leap_contact_moved", "empty")  # renamed, and the ledger not copied
    assert (state, after) == ("failed", sent), log
    assert "is empty and this task has none on record" in log and "renamed" in log
    fresh = DeliveryLedger(tmp_path / "empty").identity()
    state, after, _ = run("leap_contact_moved", "empty", accept=fresh)  # other customers, say
    assert state == "success" and sorted(after) == sorted(sent * 2)


def test_an_older_copy_of_the_ledger_sends_nothing_until_the_newer_is_back_or_accepted(
    run_dag, leap_conn, leap_emulator, tmp_path: Path, capfd
) -> None:  # type: ignore[no-untyped-def]
    """A backup restored (or a rollback, a folder copied back) has the ledger's id but not what
    was sent since the copy: the run fails before sending, as it would send that again."""
    now = datetime.now(timezone.utc)
    buckets = triage(leap_emulator.records, now=now).buckets
    first, second = (
        c.ref_id for c in plan_contacts(buckets, now=now, policy=ContactPolicy(), ledger={}).due[:2]
    )
    outbox, folder = tmp_path / "outbox.txt", tmp_path / "ledger" / "email"
    backup, newer = tmp_path / "backup", tmp_path / "newer"

    def run(accept: str | None = None, only_first: bool = False) -> tuple[str, list[str], str]:
        source = MOVING_SOURCE.format(
            outbox=str(outbox),
            ledger=(tmp_path / "ledger").as_uri(),
            accept=accept,
            ref_ids=[first] if only_first else [first, second],
        )
        capfd.readouterr()
        result = run_dag("leap_contact_ledger", source, logical_date=None)
        log = "".join(capfd.readouterr())
        return result.task_states["contact"], outbox.read_text().splitlines(), log

    def restore(copy: Path, keep: Path | None = None) -> None:
        if keep is None:
            shutil.rmtree(folder)
        else:
            folder.rename(keep)
        shutil.copytree(copy, folder)

    assert run(only_first=True)[:2] == ("success", [first])
    shutil.copytree(folder, backup)  # the nightly backup
    assert run()[:2] == ("success", [first, second])
    restore(backup, keep=newer)  # the backup put back: the message to `second` is not in it
    state, sent, log = run()
    assert (state, sent) == ("failed", [first, second])
    assert "is an older copy than the one the last run sending with it left" in log
    assert "Put the newer ledger back" in log
    # The newer folder back (its ledger-id file lost on the way): nothing is sent twice.
    restore(newer)
    (folder / "ledger-id").unlink()
    assert run()[:2] == ("success", [first, second])
    # The older copy on purpose: the error names the value that accepts it, and only it.
    shutil.rmtree(newer)
    restore(backup, keep=newer)
    state, sent, log = run()
    assert state == "failed"
    (accept,) = set(re.findall(r"accept_ledger_id='([0-9a-f]{32}@[0-9a-f]+)'", log))
    state, sent, _ = run(accept)
    assert (state, sorted(sent)) == ("success", sorted([first, second, second]))
    assert run(accept)[:2] == ("success", [first, second, second])  # left set: harmless
    restore(backup)  # the same backup once more, after the accepted run's sends
    state, sent, log = run(accept)
    assert (state, sent[2:]) == ("failed", [second]) and "is an older copy" in log


def test_an_older_copy_lacking_only_another_dags_sends_stops_this_dag_too(
    run_dag, leap_conn, leap_emulator, tmp_path: Path, capfd
) -> None:  # type: ignore[no-untyped-def]
    """The hourly and the webhook DAG share a channel: a backup taken after the hourly task's
    last send but before the webhook DAG's lacks only the latter; the mark is the ledger's, left
    by every task sending with it, so the hourly task's next run stops too, sending nothing."""
    now = datetime.now(timezone.utc)
    buckets = triage(leap_emulator.records, now=now).buckets
    first, second = (
        c.ref_id for c in plan_contacts(buckets, now=now, policy=ContactPolicy(), ledger={}).due[:2]
    )
    outbox, folder = tmp_path / "outbox.txt", tmp_path / "ledger" / "email"

    def run(dag_id: str, ref_ids: list[str]) -> tuple[str, list[str], str]:
        source = MOVING_SOURCE.format(
            outbox=str(outbox), ledger=(tmp_path / "ledger").as_uri(), accept=None, ref_ids=ref_ids
        ).replace('"leap_contact_ledger"', repr(dag_id))
        capfd.readouterr()
        result = run_dag(dag_id, source, logical_date=None)
        return (
            result.task_states["contact"],
            outbox.read_text().splitlines(),
            "".join(capfd.readouterr()),
        )

    assert run("leap_hourly", [first])[:2] == ("success", [first])
    shutil.copytree(folder, tmp_path / "backup")
    assert run("leap_webhooks", [second])[:2] == ("success", [first, second])
    shutil.rmtree(folder)
    shutil.copytree(tmp_path / "backup", folder)  # lacks only the webhook DAG's send
    state, sent, log = run("leap_hourly", [first, second])
    assert (state, sent) == ("failed", [first, second]) and "is an older copy" in log


def test_the_old_folder_of_a_moved_ledger_used_again_stops_the_run(
    run_dag, leap_conn, leap_emulator, tmp_path: Path, capfd
) -> None:  # type: ignore[no-untyped-def]
    """Moved the right way (copied, the old folder left in place), then the old location used
    again (ledger_url pointed back, a worker configured with it): the same ledger-id, but it
    lacks what was sent at the new one, which the ledger's mark names."""
    now = datetime.now(timezone.utc)
    buckets = triage(leap_emulator.records, now=now).buckets
    first, second = (
        c.ref_id for c in plan_contacts(buckets, now=now, policy=ContactPolicy(), ledger={}).due[:2]
    )
    outbox = tmp_path / "outbox.txt"

    def run(where: str, ref_ids: list[str]) -> tuple[str, list[str], str]:
        source = MOVING_SOURCE.format(
            outbox=str(outbox), ledger=(tmp_path / where).as_uri(), accept=None, ref_ids=ref_ids
        )
        capfd.readouterr()
        result = run_dag("leap_contact_ledger", source, logical_date=None)
        log = "".join(capfd.readouterr())
        return result.task_states["contact"], outbox.read_text().splitlines(), log

    assert run("old", [first])[:2] == ("success", [first])
    shutil.copytree(tmp_path / "old", tmp_path / "new")  # moved; the old folder left in place
    assert run("new", [first, second])[:2] == ("success", [first, second])
    state, sent, log = run("old", [first, second])
    assert (state, sent) == ("failed", [first, second]) and "two folders carry ledger-id" in log


def test_a_run_for_another_moment_than_the_present_sends_nothing(
    run_dag, leap_conn, leap_emulator, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Leap's API has no history: a backfill, a catch-up or a run cleared hours later reads
    today's records; planned at its own past moment, run after run would send the next step."""
    monkeypatch.setenv("AIRFLOW__LEAP__MAX_RUN_LAG", str(2 * 3600))
    outbox = tmp_path / "outbox.txt"
    source = MOVING_SOURCE.format(
        outbox=str(outbox), ledger=(tmp_path / "ledger").as_uri(), accept=None, ref_ids=None
    )
    clock = datetime.now(timezone.utc)
    for moment in (
        clock - timedelta(days=1),
        clock - timedelta(hours=3),
        clock + timedelta(hours=1),
    ):
        result = run_dag("leap_contact_ledger", source, logical_date=None, run_after=moment)
        counts = result.xcoms[("contact", "return_value")]
        assert counts["not_now"] == counts["due"] > 0 and counts["sent"] == 0, moment
        assert result.task_states["contact"] == "success" and not outbox.exists()
    # A DAG that triages at its logical date (a day before the run, as a daily schedule's
    # interval start) is for the present all the same: its run_after is now.
    at_logical_date = source.replace("dag_run.run_after", "logical_date")
    yesterday = clock - timedelta(days=1)
    result = run_dag(
        "leap_contact_ledger", at_logical_date, logical_date=yesterday, run_after=clock
    )
    assert result.xcoms[("contact", "return_value")]["sent"] > 0 and outbox.exists()


def test_a_try_after_leaps_next_refresh_sends_nothing_from_the_older_read(
    run_dag, leap_conn, leap_emulator, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Review s14a F1: the contact task of the 11:17 run, failed (its relay down) and cleared at
    12:45, sent from the 11:00 data: customers the 12:00 refresh showed COMPLETED were asked to
    finish. Here the triage read Leap 80 minutes ago (a refresh landed since, more than
    CLOCK_SKEW ago, whatever the minute): nothing is sent. Review s14d: a read seconds before
    the refresh's minute (a worker clock behind) is not that, or the hourly run sent nothing."""
    monkeypatch.setenv("AIRFLOW__LEAP__MAX_RUN_LAG", str(2 * 3600))
    outbox = tmp_path / "outbox.txt"
    source = MOVING_SOURCE.format(
        outbox=str(outbox), ledger=(tmp_path / "ledger").as_uri(), accept=None, ref_ids=None
    )

    def read(minutes_ago: int) -> str:
        read_at = (datetime.now(timezone.utc) - timedelta(minutes=minutes_ago)).isoformat()
        older_read = source.replace("    TriageOperator(\n", "    ReadEarlier(\n").replace(
            "start = datetime(",
            "class ReadEarlier(TriageOperator):\n"
            "    def execute(self, context):\n"
            f"        return {{**super().execute(context), 'read_at': {read_at!r}}}\n\n"
            "start = datetime(",
        )
        assert "ReadEarlier(\n" in older_read
        return older_read

    result = run_dag("leap_contact_ledger", read(80), logical_date=None)
    counts = result.xcoms[("contact", "return_value")]
    assert counts["not_now"] == counts["due"] > 0 and counts["sent"] == 0
    assert result.task_states["contact"] == "success" and not outbox.exists()
    # Read 5 minutes ago: a refresh landing since is within CLOCK_SKEW (whatever the minute).
    result = run_dag("leap_contact_ledger", read(5), logical_date=None)
    assert result.xcoms[("contact", "return_value")]["sent"] > 0 and outbox.exists()


@pytest.mark.parametrize(
    ("minute", "second", "warned"),
    [(0, 0, True), (5, 0, True), (15, 59, True), (16, 0, False), (17, 3, False), (59, 0, False)],
)
def test_a_read_before_the_hours_refresh_is_warned_of(
    minute: int, second: int, warned: bool
) -> None:
    """Review s15a F3: an @hourly schedule (or a manual run at :05) reads Leap before the hour's
    refresh lands, on data up to an hour older: customers who had completed were asked to
    finish, with nothing in the log. The contact task warns, leaving a minute's leeway for the
    :17 run on clocks seconds apart."""
    from airflow_provider_leap.operators.contact import _before_refresh

    assert _before_refresh(datetime(2026, 3, 2, 3, minute, second, tzinfo=timezone.utc)) is warned


def test_the_contact_task_warns_of_a_read_before_the_hours_refresh(
    run_dag, leap_conn, leap_emulator, tmp_path: Path, capfd
) -> None:  # type: ignore[no-untyped-def]
    """The warning above, in a real run (max_run_lag off, as in every test): a read at :05
    warns, a read at :20 does not (review s15c: the warning never fired, as ``hold`` was {})."""
    warning = "before the hour's refresh lands"
    for minute, warned in ((5, True), (20, False)):
        forget_ledger_records("")  # a new ledger per run, on purpose: the task's and channel's
        ledger = (tmp_path / f"ledger-{minute}").as_uri()
        source = MOVING_SOURCE.format(
            outbox=str(tmp_path / "outbox.txt"), ledger=ledger, accept=None, ref_ids=None
        )
        read_at = f"2026-03-02T03:{minute:02d}:00+00:00"
        read_then = source.replace("    TriageOperator(\n", "    ReadThen(\n").replace(
            "start = datetime(",
            "class ReadThen(TriageOperator):\n"
            "    def execute(self, context):\n"
            f"        return {{**super().execute(context), 'read_at': {read_at!r}}}\n\n"
            "start = datetime(",
        )
        assert "ReadThen(\n" in read_then
        capfd.readouterr()
        result = run_dag("leap_contact_ledger", read_then, logical_date=None)
        assert result.xcoms[("contact", "return_value")]["due"] > 0
        assert (warning in "".join(capfd.readouterr())) is warned


def test_a_run_past_max_run_lag_is_not_told_to_clear_from_triage(monkeypatch) -> None:
    """Review s15a F4: a contact task cleared six hours after its run was told to clear the
    run from its triage task to send now; doing so sent nothing, as the run was past
    max_run_lag. Such a run is told the run for the present sends."""
    from airflow_provider_leap.operators.contact import LeapContactOperator

    monkeypatch.setenv("AIRFLOW__LEAP__MAX_RUN_LAG", str(2 * 3600))
    operator = LeapContactOperator(task_id="contact", send=print)
    clock = datetime.now(timezone.utc)
    late, recent = clock - timedelta(hours=6), clock - timedelta(minutes=80)
    why = operator._not_now(late, late, late) or ""
    assert "behind the clock" in why and "Clear the run" not in why
    assert "Clear the run from its triage task" in (operator._not_now(recent, recent, recent) or "")


def test_a_run_that_answers_later_than_its_run_after_is_for_the_present(
    run_dag, leap_conn, leap_emulator, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Review s10a F3: the webhook DAG's run_after is when the event came, and it triages later,
    once the refresh shows the event (``answer_time``, up to 1.5 h on): a max_run_lag of an hour
    blocked every such run. Its moment, now, is what tells it is for the present."""
    monkeypatch.setenv("AIRFLOW__LEAP__MAX_RUN_LAG", "3600")
    outbox = tmp_path / "outbox.txt"
    source = MOVING_SOURCE.format(
        outbox=str(outbox), ledger=(tmp_path / "ledger").as_uri(), accept=None, ref_ids=None
    )
    present = datetime.now(timezone.utc).replace(microsecond=0)
    answers_now = source.replace("dag_run.run_after", f"'{present.isoformat()}'")
    assert answers_now != source
    event = present - timedelta(hours=1, minutes=27)
    result = run_dag("leap_contact_ledger", answers_now, logical_date=None, run_after=event)
    counts = result.xcoms[("contact", "return_value")]
    assert counts["sent"] == counts["due"] > 0 and counts["not_now"] == 0


def test_a_late_run_spaces_the_next_message_from_when_it_sent(
    run_dag, leap_conn, leap_emulator, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Review s11a F5: a catch-up run within max_run_lag sends now, so its sends are recorded
    now, not at its past moment: the next message keeps min_gap from the real one."""
    monkeypatch.setenv("AIRFLOW__LEAP__MAX_RUN_LAG", str(2 * 3600))
    source = MOVING_SOURCE.format(
        outbox=str(tmp_path / "outbox.txt"),
        ledger=(tmp_path / "ledger").as_uri(),
        accept=None,
        ref_ids=None,
    )
    clock = datetime.now(timezone.utc).replace(microsecond=0)
    result = run_dag(
        "leap_contact_ledger", source, logical_date=None, run_after=clock - timedelta(minutes=40)
    )
    assert result.xcoms[("contact", "return_value")]["sent"] > 0
    view = DeliveryLedger(tmp_path / "ledger").load(datetime.now(timezone.utc))
    sent_at = [state.sent_at for state in view.states.values()]
    assert sent_at and all(when is not None and when >= clock.timestamp() for when in sent_at)


def _mapped(tmp_path: Path, partial: str, expand: str) -> tuple[Path, str]:
    """``MOVING_SOURCE`` with its contact task mapped: ``partial``'s arguments after its task_id,
    then ``.expand(<expand>)``; and the outbox its send writes."""
    outbox = tmp_path / "outbox.txt"
    source = MOVING_SOURCE.format(
        outbox=str(outbox), ledger=(tmp_path / "ledger").as_uri(), accept=None, ref_ids=None
    )
    mapped = source.replace(
        'LeapContactOperator(\n        task_id="contact", send=send,',
        f'LeapContactOperator.partial(\n        task_id="contact",{partial}',
    ).replace("accept_ledger_id=None\n    )", f"accept_ledger_id=None\n    ).expand({expand})")
    assert f".expand({expand})" in mapped
    return outbox, mapped


def test_a_contact_task_mapped_over_channels_sends_on_each_once(
    run_dag, leap_conn, leap_emulator, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Each map index is a sender of its own: its own ledger record, its own owner prefix."""
    outbox, mapped = _mapped(tmp_path, " send=send,", 'channel=["email", "sms"]')
    for _ in range(2):
        result = run_dag("leap_contact_ledger", mapped, logical_date=None)
        assert result.state == "success", result.task_states
    sent = outbox.read_text().splitlines()
    assert sent and all(sent.count(ref_id) == 2 for ref_id in sent)  # once per channel


def test_a_contact_task_mapped_over_send_functions_on_one_channel_sends_nothing(
    run_dag, leap_conn, leap_emulator, tmp_path: Path, capfd
) -> None:  # type: ignore[no-untyped-def]
    """Review s17e F4: mapped over ``send`` on one channel, the map indexes shared its ledger
    and split the customers, each sent by one of the send functions."""
    outbox, mapped = _mapped(tmp_path, "", "send=[send, send]")
    result = run_dag("leap_contact_ledger", mapped, logical_date=None)
    assert result.task_states["contact"] == "failed" and not outbox.exists()
    assert "every map index sends on channel 'email'" in capfd.readouterr().out


def test_a_run_on_time_records_its_sends_at_its_moment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Review s11d: an on-time run's sends recorded at the clock (seconds after its moment) left
    the next step's run, one cadence gap later, short of min_gap: each reminder went a run late.
    Only a run sending more than LATE_SEND after its moment records the clock."""
    from airflow_provider_leap.operators.contact import LATE_SEND, _sending_time

    monkeypatch.setenv("AIRFLOW__LEAP__MAX_RUN_LAG", str(2 * 3600))
    clock = datetime.now(timezone.utc)
    on_time = clock - LATE_SEND + timedelta(minutes=1)
    late = clock - LATE_SEND - timedelta(minutes=1)
    assert _sending_time(on_time) == on_time and _sending_time(late) >= clock
    monkeypatch.setenv("AIRFLOW__LEAP__MAX_RUN_LAG", "0")  # off: the moment, always
    assert _sending_time(late) == late


def test_the_triage_task_is_the_one_triage_operator_upstream_unless_named(
    run_dag, leap_conn, leap_emulator, tmp_path: Path, capfd
) -> None:  # type: ignore[no-untyped-def]
    """Review s13b F3: a TriageOperator named other than "triage" failed the task at run time,
    with an error that named neither triage_task_id nor the triage task."""
    outbox = tmp_path / "outbox.txt"
    source = MOVING_SOURCE.format(
        outbox=str(outbox), ledger=(tmp_path / "ledger").as_uri(), accept=None, ref_ids=None
    ).replace('task_id="triage"', 'task_id="triage_leap"')
    assert 'task_id="triage_leap"' in source
    result = run_dag("leap_contact_ledger", source, logical_date=None)
    assert result.task_states["contact"] == "success" and outbox.exists()
    named = source.replace(
        "accept_ledger_id=None", 'accept_ledger_id=None, triage_task_id="triage"'
    )
    capfd.readouterr()
    assert (
        run_dag("leap_contact_ledger", named, logical_date=None).task_states["contact"] == "failed"
    )
    log = "".join(capfd.readouterr())
    assert "set triage_task_id= to the TriageOperator" in log and "['triage_leap']" in log
    # Review s15a F6: not wired, it was told to set triage_task_id (and then raced the triage)
    unwired = source.replace(") >> LeapContactOperator(", ")\n    LeapContactOperator(")
    assert unwired != source
    outbox.unlink()
    result = run_dag("leap_contact_ledger", unwired, logical_date=None)
    assert result.task_states == {"triage_leap": "success", "contact": "failed"}
    assert "wire `triage >> contact`" in "".join(capfd.readouterr()) and not outbox.exists()


def test_a_relative_ledger_url_is_refused_before_anything_is_sent(
    run_dag, leap_conn, leap_emulator, tmp_path: Path, capfd, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Review s13b F7: a relative ledger_url was resolved against the worker's current
    directory, a ledger of each worker's own; [leap] ledger_url goes the same way (the webhook
    receiver's inbox too)."""
    from airflow.sdk.exceptions import AirflowException

    from airflow_provider_leap.plugins.receiver import Receiver

    monkeypatch.chdir(tmp_path)
    outbox = tmp_path / "outbox.txt"
    source = MOVING_SOURCE.format(
        outbox=str(outbox), ledger="leap_ledger_rel", accept=None, ref_ids=None
    )
    capfd.readouterr()
    result = run_dag("leap_contact_ledger", source, logical_date=None)
    log = "".join(capfd.readouterr())
    assert result.task_states["contact"] == "failed" and not outbox.exists()
    assert not (tmp_path / "leap_ledger_rel").exists()
    assert "ledger_url 'leap_ledger_rel' is a relative path" in log
    monkeypatch.setenv("AIRFLOW__LEAP__LEDGER_URL", "file://leap_ledger_rel")
    with pytest.raises(AirflowException, match=r"\[leap\] ledger_url 'file://leap_ledger_rel'"):
        Receiver().root  # noqa: B018


@pytest.mark.parametrize(
    ("counts", "starts"),
    [
        ({"sent": 4, "failed": 2}, "Sends on channel email failed, of 6 due: 4 sent and recorded"),
        ({"not_tried": 6, "channel_down": "ChannelDown: 421"}, "Channel email stopped (Channel "),
        (
            {"failed": 2, "code_errors": 2, "code_error": "KeyError: 'x'", "not_tried": 4}
            | {"same_failure": "KeyError: 'x'"},
            "Is the send function of channel email broken? Sends in a row raised [KeyError",
        ),
        (  # review s17b F2: a CRM refusing every record alike, its error naming no status
            {"failed": 2, "same_failure": "RuntimeError: CRM said no", "not_tried": 4},
            "Does every send on channel email fail alike? Sends in a row raised [RuntimeError",
        ),
        (
            {"sent": 1, "failed": 5, "code_errors": 5, "code_error": "KeyError: 'ns01'"},
            "Sends on channel email failed, of 6 due: 1 sent and recorded, 5 failed; 5 raised",
        ),
    ],
)
def test_the_task_failure_leads_with_its_cause(counts: dict[str, Any], starts: str) -> None:
    """Review s13f F3: a channel down read "0 of 6 send(s) failed"; customers' own lookup
    errors were told to charge "the first customers due again", as for a stopped run."""
    from airflow_provider_leap.delivery import DeliveryReport
    from airflow_provider_leap.operators.contact import LeapContactOperator

    operator = LeapContactOperator(task_id="contact", send=print)
    message = operator._failure(DeliveryReport(**counts), 6)
    assert message.startswith(starts), message
    assert ("Fix it before a retry" in message) == ("Sends in a row" in starts)


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("/srv/leap-ledger", None),
        ("file:///srv/leap-ledger", None),
        ("file:/srv/leap-ledger", None),  # one slash: absolute all the same (review s13e F3)
        ("s3://aws_default@bucket/leap-ledger", None),
        ("leap_ledger", "a relative path"),
        ("./leap_ledger", "a relative path"),
        ("~/leap_ledger", "a relative path"),
        ("file:leap_ledger", "a relative path"),
        ("file://leap_ledger", "a file URL with a host"),
        ("File://leap_ledger", "a file URL with a host"),
        ("file://localhost/srv/leap-ledger", "a file URL with a host"),  # review s13f F2
        ("memory://leap-ledger", "in the memory of one process"),  # review s13e
        ("Memory:///leap-ledger", "in the memory of one process"),
    ],
)
def test_a_ledger_url_is_an_absolute_path_or_a_url(url: str, refused: str | None) -> None:
    from airflow.sdk.exceptions import AirflowException

    from airflow_provider_leap.operators.contact import absolute_ledger_url
    from airflow_provider_leap.plugins.receiver import storage_root

    if refused is None:
        assert absolute_ledger_url(url, "ledger_url") == url
        if "s3:" not in url:  # the webhook receiver's inbox: the same folder
            assert str(storage_root(url)) == "/srv/leap-ledger"
    else:
        with pytest.raises(AirflowException, match=f"ledger_url '{re.escape(url)}' is {refused}"):
            absolute_ledger_url(url, "ledger_url")


def test_two_tasks_of_a_dag_on_one_channel_are_refused_when_parsed() -> None:
    """Review s17b F4: a CRM task added without ``channel=`` shared the email task's ledger
    (the default ``email``): green, each customer sent by one of the two send functions."""
    from airflow.sdk import DAG

    from airflow_provider_leap.operators.contact import LeapContactOperator

    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with DAG("two_senders", schedule=None, start_date=start):
        LeapContactOperator(task_id="message", send=print)
        LeapContactOperator(task_id="record_in_crm", send=print, channel="crm")
        LeapContactOperator(task_id="templated", send=print, channel="{{ params.channel }}")
        with pytest.raises(ValueError, match="'message' and 'sms' of DAG 'two_senders' both"):
            LeapContactOperator(task_id="sms", send=print)
