"""Fourteen simulated days of the real hourly re-engagement DAG for 1,000 customers.

``reengagement_sim.py`` drives the example DAG hour by hour (in a process of its own) against
the emulator playing customers who click, stall, try again and complete, with Leap's hourly
refresh delaying what the API shows. Along the way: six hours with no runs, a send task that
fails mid-batch and is retried, runs cleared and run again, a refused address, customers in two
regions, customers who complete after a message. This test computes, from the journeys alone,
which messages each customer is due and when, and compares with what the SMTP inbox and the
CRM received: exactly those, none twice, none lost, none early.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import SIMULATION
from reengagement_sim import START

from airflow_provider_leap.contact import ContactPolicy, contact_key
from airflow_provider_leap.testing.journeys import Customer, Population, Step
from airflow_provider_leap.webhooks import LATE_DATA, STALE_MARGIN, stale_from

SEED, CUSTOMERS, DAYS = 5, 1000, 14
DOWN_FROM, DOWN_HOURS = 100, 6  # the scheduler is down from hour 100 to 105
FAIL_HOUR = 0  # the first run has the backlog of late stalls: five sends fail mid-batch
CLEAR_HOURS = (1, 150)
LOOKBACK = timedelta(days=30)  # the example's lookback_days
POLICY = ContactPolicy()  # the example's policy

POPULATION = Population(seed=SEED, customers=CUSTOMERS, start=START, days=DAYS)
# Refuses mail from the earliest plain stall on: every step of its cadence comes due in the run.
REFUSED = min(
    (c for c in POPULATION.customers if c.kind == "stall"),
    key=lambda c: max(j.events[-1].at for j in c.journeys),
).ref_id


def simulation_command(out: Path) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).with_name("reengagement_sim.py")),
        *("--out", str(out), "--seed", str(SEED), "--customers", str(CUSTOMERS)),
        *("--days", str(DAYS), "--down-from", str(DOWN_FROM), "--down-hours", str(DOWN_HOURS)),
        *("--fail-hour", str(FAIL_HOUR), "--clear-hours", *map(str, CLEAR_HOURS)),
        *("--refuse", REFUSED),
    ]


@pytest.fixture(scope="module")
def sim(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The simulation's report; conftest started it in the background when the session began."""
    process, out, log = request.config.stash[SIMULATION]
    try:
        process.wait(timeout=1800)
    finally:
        process.kill()
    assert process.returncode == 0, log.read_text()[-5000:]
    return json.loads(out.read_text())


def _due(
    customer: Customer, at: datetime, sent: dict[str, tuple[int, datetime]], held: list[Any]
) -> Any:
    """The policy, written out plainly from the journeys: the step due at ``at``, if any. A
    customer whose webhook came after the refresh the run reads (less the margin) is held."""
    records = []
    for journey in customer.journeys:
        shown = journey.visible_events(at)
        if shown and shown[-1].at >= at - LOOKBACK:  # the triage's interacted_after filter
            records.append(shown[-1])
    if not records or any(last.step is Step.COMPLETE for last in records):
        return None
    stall = max(last.at for last in records)
    age = at - stall
    if age < POLICY.quiet_period or age > POLICY.horizon:
        return None
    step = max(i for i, offset in enumerate(POLICY.steps) if offset <= age)
    stall_text = stall.strftime("%Y-%m-%dT%H:%M:%SZ")
    previous = sent.get(stall_text)
    if previous and step <= previous[0]:
        return None
    if any(at - when < POLICY.min_gap for _, when in sent.values()):  # in any stall
        return None
    cutoff = stale_from(at)  # an event since the refresh read, or a completion after the stall
    events = [e for j in customer.journeys for e in j.events if e.at < at]
    if any(
        cutoff <= e.at
        or (cutoff - LATE_DATA <= e.at and e.step is Step.COMPLETE and e.at + STALE_MARGIN > stall)
        for e in events
    ):
        held.append((customer.ref_id, at))
        return None
    sent[stall_text] = (step, at)
    return stall_text, step


Expected = dict[str, tuple[str, str, int, datetime]]


def expected_contacts(run_times: list[datetime]) -> tuple[Expected, list[tuple[str, datetime]]]:
    """contact key -> (ref_id, stall, step, run time) for every message due in the runs, and
    the (ref_id, run time) of every message held back."""
    expected, held = {}, []
    for customer in POPULATION.customers:
        sent: dict[str, tuple[int, datetime]] = {}
        for at in run_times:
            due = _due(customer, at, sent, held)
            if due is not None:
                stall, step = due
                expected[contact_key(customer.ref_id, stall, POLICY.offsets[step])] = (
                    customer.ref_id,
                    stall,
                    step,
                    at,
                )
    return expected, held


@pytest.fixture(scope="module")
def oracle(sim: dict[str, Any]) -> tuple[Expected, list[tuple[str, datetime]]]:
    times = sorted({datetime.fromisoformat(run["at"]) for run in sim["runs"]})
    return expected_contacts(times)


@pytest.fixture(scope="module")
def expected(oracle: tuple[Expected, list[tuple[str, datetime]]]) -> Expected:
    return oracle[0]


def test_no_run_is_red(sim: dict[str, Any]) -> None:
    """Failed sends are tried again by Airflow's retries, a step's last attempt by a later run,
    and a step given up is listed for a person (the review file): no run ends red, though a
    relay deferred sends mid-batch and an address is refused every time."""
    runs = sim["runs"]
    assert len({r["hour"] for r in runs}) == DAYS * 24 - DOWN_HOURS
    assert [r for r in runs if not r["state"].endswith("success")] == []
    first = next(r for r in runs if r["hour"] == FAIL_HOUR)
    # Stopped at the third 451, retried: two more 451s, then the retry's failures retried.
    assert first["tasks"]["message_customers"] == ["success", 3]
    assert sum(r["rerun"] for r in runs) == len(CLEAR_HOURS)


def test_the_inbox_holds_exactly_the_due_messages(sim, expected) -> None:  # type: ignore[no-untyped-def]
    emails = sim["emails"]
    keys = Counter(m["contact_key"] for m in emails)
    assert [k for k, n in keys.items() if n > 1] == []  # none twice
    got = {m["contact_key"]: (m["to"], m["at"]) for m in emails}
    # The relay deferred sends at FAIL_HOUR: Airflow's retries of that run sent them.
    want = {
        key: (f"{ref_id}@example.com", at.isoformat())
        for key, (ref_id, _, _, at) in expected.items()
        if ref_id != REFUSED
    }
    assert got == want  # none lost, none extra, each in the run it was due


def test_the_crm_holds_each_contact_once_including_the_refused_address(sim, expected) -> None:  # type: ignore[no-untyped-def]
    keys = Counter(row["contact_key"] for row in sim["crm"])
    assert set(keys.values()) == {1}
    assert set(keys) == set(expected)


def test_no_message_comes_early_or_after_completion(sim) -> None:  # type: ignore[no-untyped-def]
    customers = POPULATION.by_ref_id()
    per_run = Counter()
    times: dict[str, list[datetime]] = {}
    for message in sim["emails"]:
        at = datetime.fromisoformat(message["at"])
        customer = customers[message["to"].split("@")[0]]
        per_run[(customer.ref_id, at)] += 1
        times.setdefault(customer.ref_id, []).append(at)
        shown = customer.visible_events(at)
        assert at - shown[-1].at >= POLICY.quiet_period  # after the last interaction shown
        assert not any(e.step is Step.COMPLETE for e in shown)
    assert max(per_run.values()) == 1  # one message per customer per run, regions or not
    gaps = [b - a for sent in times.values() for a, b in itertools.pairwise(sorted(sent))]
    assert min(gaps) >= POLICY.min_gap  # a new stall included: never two messages within 23 h


def test_nobody_is_messaged_after_completing_when_webhooks_are_delivered(sim, oracle) -> None:  # type: ignore[no-untyped-def]
    """Leap's data lags its webhooks by up to an hour: a customer who completes between the
    refresh and the run still looks stalled, and is held back instead of asked to finish."""
    customers = POPULATION.by_ref_id()
    for message in sim["emails"]:
        at = datetime.fromisoformat(message["at"])
        customer = customers[message["to"].split("@")[0]]
        done = [e.at for j in customer.journeys for e in j.events if e.step is Step.COMPLETE]
        assert not [when for when in done if when < at], message["contact_key"]
    held = {ref_id: at for ref_id, at in oracle[1]}
    finished = {  # held, then completed before the next run: the bug this guards against
        ref_id
        for ref_id, at in held.items()
        if any(
            e.step is Step.COMPLETE and e.at < at
            for j in customers[ref_id].journeys
            for e in j.events
        )
    }
    assert finished
    # The DAG held exactly those the oracle holds, run by run (a cleared run holds them again).
    per_run = Counter(at.isoformat() for _, at in oracle[1])
    assert {r["at"]: r["held"] for r in sim["runs"] if r["held"]} == dict(per_run)


def test_the_refused_address_is_given_up_once_per_message_due(sim, expected) -> None:  # type: ignore[no-untyped-def]
    """Each due step of its stall is tried (a spent step never silences the later reminders),
    given up after its attempts and reported once: no report repeats on later runs."""
    assert not [m for m in sim["emails"] if m["to"] == f"{REFUSED}@example.com"]
    reports = [r for r in sim["review"] if r.get("ref_id") == REFUSED]
    due = sorted((stall, step) for ref_id, stall, step, _ in expected.values() if ref_id == REFUSED)
    assert len(due) == len(POLICY.steps)  # each reminder still tried after the one before failed
    assert sorted((r["stall"], r["step"]) for r in reports) == due
    assert {(r["kind"], r["why"], r["attempt"]) for r in reports} == {("send", "given_up", 3)}


def test_the_scenarios_happened_and_the_totals_are_printed(sim, expected) -> None:  # type: ignore[no-untyped-def]
    customers = POPULATION.by_ref_id()
    emails = sim["emails"]
    steps = Counter(expected[m["contact_key"]][2] for m in emails)
    messaged = {m["to"].split("@")[0] for m in emails}
    completed_after = {
        ref
        for ref in messaged
        if any(e.step is Step.COMPLETE for j in customers[ref].journeys for e in j.events)
    }
    two_regions = {ref for ref in messaged if len(customers[ref].journeys) == 2}
    new_stalls = Counter(ref for ref, _, _, _ in expected.values())
    restalled = {
        ref
        for ref in new_stalls
        if len({stall for r, stall, _, _ in expected.values() if r == ref}) > 1
    }
    late = {ref for ref in messaged if customers[ref].kind == "late"}
    assert completed_after and two_regions and restalled and late
    assert all(steps[i] > 0 for i in range(len(POLICY.steps)))
    totals = {
        "customers": CUSTOMERS,
        "hourly runs": len({r["hour"] for r in sim["runs"]}),
        "cleared and run again": sum(r["rerun"] for r in sim["runs"]),
        "customers messaged": len(messaged),
        "emails": len(emails),
        "by step (first contact, day 1, day 3, day 7)": [steps[i] for i in range(4)],
        "crm records": len(sim["crm"]),
        "customers who completed after a message": len(completed_after),
        "customers in two regions messaged": len(two_regions),
        "customers with a second stall": len(restalled),
        "late stalls (found on the first run)": len(late),
        "messages held back (a webhook newer than the data)": sum(r["held"] for r in sim["runs"]),
        "simulation seconds": sim["seconds"],
    }
    print("\nRe-engagement simulation totals: " + json.dumps(totals, indent=2))
