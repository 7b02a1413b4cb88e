"""ConnectStatusTrigger on an event loop like the triggerer's, against the emulator: events,
cancellation, restart resume, rows of the previous version, coalesced polls and outages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Coroutine
from typing import Any

import pytest
from emulator_refs import connect_requests, refs

from airflow_provider_leap.async_client import AsyncLeapClient
from airflow_provider_leap.client import connect_queries
from airflow_provider_leap.hooks.leap import connection_json
from airflow_provider_leap.polls import grid_time
from airflow_provider_leap.testing import EMULATOR_API_KEY, FaultKind
from airflow_provider_leap.triggers.connect import ConnectStatusTrigger, _hub
from airflow_provider_leap.wire import WireNames


async def first_event(trigger: ConnectStatusTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("trigger ended without an event")


def make_trigger(ids: list[str], **kwargs: Any) -> ConnectStatusTrigger:
    kwargs.setdefault("end_time", time.time() + 30)
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("leap_conn_id", "leap_default")
    return ConnectStatusTrigger(ref_ids=ids, target_statuses=["COMPLETED"], **kwargs)


def run(coro: Coroutine[Any, Any, Any], limit: float = 60) -> Any:
    """Run ``coro`` on a fresh loop, as the triggerer runs its triggers on one."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, limit)

    return asyncio.run(bounded())


async def wait_until(condition: Any, limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def use_connection(monkeypatch: pytest.MonkeyPatch, url: str, name: str = "leap_default",
                   **extra: Any) -> str:  # fmt: skip
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{name.upper()}", connection_json(url, EMULATOR_API_KEY, **extra)
    )
    return name


# -- events ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("leap_conn")
def test_success_event_carries_counts_not_records(leap_emulator) -> None:
    ids = refs(leap_emulator, "COMPLETED", 3)
    event = run(first_event(make_trigger(ids)))
    assert event["status"] == "success"
    assert event["counts"] == {"reached": 3, "waiting": 0, "missing": 0, "failed": 0}
    assert "records" not in event and "3 of 3 Reference ID(s) reached" in event["message"]


def test_rides_out_transient_faults_until_the_next_poll(monkeypatch, leap_emulator) -> None:
    use_connection(monkeypatch, leap_emulator.url, max_retries=0)
    leap_emulator.faults.fail_next(2, FaultKind.UNAVAILABLE)
    event = run(first_event(make_trigger(refs(leap_emulator, "COMPLETED", 1))))
    assert event["status"] == "success"
    assert [r.status for r in leap_emulator.requests] == [503, 503, 200]


@pytest.mark.usefixtures("leap_conn")
def test_times_out_at_end_time_with_the_last_poll(leap_emulator) -> None:
    started = time.monotonic()
    trigger = make_trigger(
        refs(leap_emulator, "PARTIAL", 1), end_time=time.time() + 1.0, poll_interval=0.1
    )
    event = run(first_event(trigger))
    assert event["status"] == "timeout"
    assert "waiting on 1" in event["message"] and event["counts"]["waiting"] == 1
    assert time.monotonic() - started < 5
    assert len(connect_requests(leap_emulator)) >= 2


def test_end_time_during_a_retrying_poll_ends_the_wait_then(monkeypatch, leap_emulator) -> None:
    use_connection(monkeypatch, leap_emulator.url, max_retries=5, retry_backoff=2.0)
    leap_emulator.faults.outage()  # the first retry is due 2 to 4 s after the first 503
    started = time.monotonic()
    trigger = make_trigger(["abc-123"], end_time=time.time() + 1.0, poll_interval=60)
    event = run(first_event(trigger))
    assert event["status"] == "timeout" and "no successful poll yet" in event["message"]
    assert 0.9 <= time.monotonic() - started < 2.5
    assert len(connect_requests(leap_emulator)) == 1


@pytest.mark.usefixtures("leap_conn")
def test_a_fail_status_ends_with_the_failed_ids(leap_emulator) -> None:
    failing = refs(leap_emulator, "ERROR", 1)
    trigger = make_trigger(
        failing + refs(leap_emulator, "COMPLETED", 1), fail_on_statuses=["ERROR"]
    )
    event = run(first_event(trigger))
    assert event["status"] == "failed" and event["failed"] == failing
    assert event["counts"]["failed"] == 1


def test_a_refused_key_is_an_error_at_once(monkeypatch, leap_emulator) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_LEAP_DEFAULT", connection_json(leap_emulator.url, "wrong:key"))
    event = run(first_event(make_trigger(["abc"], poll_interval=60)))
    assert event["status"] == "error" and "HTTP 403" in event["message"]
    assert "wrong:key" not in event["message"]
    assert len(connect_requests(leap_emulator)) == 1  # not retried: waiting would not help


def test_a_connection_that_cannot_be_read_is_tried_again_until_end_time(leap_emulator) -> None:
    # Airflow reports a secrets backend or database blip as "not found": the connection was
    # readable when the sensor deferred, so the wait goes on, and the timeout says why.
    trigger = make_trigger(
        ["abc"], leap_conn_id="leap_nowhere", end_time=time.time() + 0.5, poll_interval=0.1
    )
    event = run(first_event(trigger))
    assert event["status"] == "timeout", event
    failed = "the polls since failed: could not read the Airflow connection 'leap_nowhere'"
    assert failed in event["message"]
    assert connect_requests(leap_emulator) == []


@pytest.mark.usefixtures("leap_conn")
def test_a_lookup_that_fails_once_is_ridden_out(monkeypatch, leap_emulator) -> None:
    from airflow_provider_leap.hooks.leap import LeapHook

    real, calls = LeapHook.aget_connection, []

    async def blip_once(conn_id: str) -> Any:  # a secrets backend down for one poll
        calls.append(conn_id)
        if len(calls) == 1:
            raise ConnectionError("secrets backend unreachable")
        return await real(conn_id)

    monkeypatch.setattr(LeapHook, "aget_connection", staticmethod(blip_once))
    event = run(first_event(make_trigger(refs(leap_emulator, "COMPLETED", 1))))
    assert event["status"] == "success" and len(calls) == 2


@pytest.mark.usefixtures("leap_conn")
def test_a_slow_answer_does_not_block_the_loop(leap_emulator) -> None:
    leap_emulator.faults.fail_next(1, "slow")  # a 1 s answer: the loop must keep ticking meanwhile

    async def main() -> tuple[dict[str, Any], int]:
        ticks = 0
        task = asyncio.create_task(first_event(make_trigger(refs(leap_emulator, "COMPLETED", 1))))
        while not task.done():
            await asyncio.sleep(0.01)
            ticks += 1
        return task.result(), ticks

    event, ticks = run(main())
    assert event["status"] == "success"
    assert ticks > 20


def test_the_event_stays_small_for_10000_ids(monkeypatch, leap_emulator, leap_emulator_factory):
    template = leap_emulator.records[0]
    records = [
        {
            **template,
            "id": f"CAISO_bulk-{i:05d}",
            "ref_id": f"bulk-{i:05d}",
            "connection_status": "COMPLETED",
        }
        for i in range(10_000)
    ]
    emulator = leap_emulator_factory(records=records)
    use_connection(monkeypatch, emulator.url)
    ids = [r["ref_id"] for r in records]
    event = run(first_event(make_trigger(ids, poll_interval=60)))
    assert event["status"] == "success" and event["counts"]["reached"] == 10_000
    # The records would be about 2 MB (about 200 bytes each as XCom dicts).
    assert len(json.dumps(event)) < 1_000


# -- cancellation ---------------------------------------------------------------------------------


def test_cancelled_mid_retry_sends_nothing_more_and_closes_on_its_loop(
    monkeypatch, leap_emulator, mocker
) -> None:
    # Waits before retries 1, 2, 3: 0.1-0.2 s, 0.2-0.4 s, 0.4-0.8 s.
    use_connection(monkeypatch, leap_emulator.url, max_retries=5, retry_backoff=0.2)
    leap_emulator.faults.outage()
    closed_on: list[asyncio.AbstractEventLoop] = []
    aclose = AsyncLeapClient.aclose

    async def recording_aclose(self: AsyncLeapClient) -> None:
        closed_on.append(asyncio.get_running_loop())
        await aclose(self)

    mocker.patch.object(AsyncLeapClient, "aclose", recording_aclose)

    async def main() -> tuple[int, int, asyncio.AbstractEventLoop]:
        task = asyncio.create_task(first_event(make_trigger(["abc-123"], poll_interval=60)))
        await wait_until(lambda: len(connect_requests(leap_emulator)) >= 2)
        task.cancel()  # during the wait before retry 2
        with contextlib.suppress(asyncio.CancelledError):
            await task
        at_cancel = len(connect_requests(leap_emulator))
        await asyncio.sleep(1.0)  # retry 2 was due within 0.4 s
        return at_cancel, len(connect_requests(leap_emulator)), asyncio.get_running_loop()

    at_cancel, later, loop = run(main())
    assert at_cancel == later == 2
    assert closed_on == [loop]


@pytest.mark.usefixtures("leap_conn")
def test_cancelled_as_its_poll_answers_it_stops(leap_emulator) -> None:
    """The cancellation lands between the poll's answer and the trigger's turn: it still wins
    (on Python 3.10 and 3.11, ``asyncio.wait_for`` returned the answer and lost it)."""
    ids = refs(leap_emulator, "PARTIAL", 1)  # never done: a lost cancellation polls on

    async def main() -> tuple[bool, int]:
        at = time.time() + 0.3
        task = asyncio.create_task(first_event(make_trigger(ids, next_poll_at=at, poll_interval=1)))
        await asyncio.sleep(0.1)  # the trigger waits for the poll at ``at``

        async def cancel_once_answered() -> None:  # woken by the same poll, after the trigger
            await _hub().records("leap_default", at, ids, until=at + 30)
            task.cancel()

        await cancel_once_answered()
        await asyncio.wait({task}, timeout=3)  # a lost cancellation polls twice a second
        return task.cancelled(), len(connect_requests(leap_emulator))

    assert run(main()) == (True, 1)


# -- restart: the schedule is absolute ------------------------------------------------------------


@pytest.mark.parametrize(
    ("first_poll", "expected"),
    [
        (-59.5, 0.0),  # restarted after a poll was due: that poll at once, not the next
        (-0.5, 0.0),  # restarted just after a grid time: that poll at once, not 59.5 s later
        (-119.5, 0.0),  # two grid times missed: one poll at once, not two
        (1.0, 1.0),  # restarted before its first poll: that poll, not earlier
    ],
)
@pytest.mark.usefixtures("leap_conn")
def test_a_restarted_trigger_resumes_its_schedule(leap_emulator, first_poll, expected) -> None:
    now = time.time()
    kwargs = make_trigger(
        refs(leap_emulator, "COMPLETED", 1), poll_interval=60, next_poll_at=now + first_poll
    ).serialize()[1]
    started = time.monotonic()
    restarted = ConnectStatusTrigger(**kwargs)  # what a new triggerer builds from the row
    event = run(first_event(restarted), limit=20)
    assert event["status"] == "success"
    [poll] = connect_requests(leap_emulator)
    assert expected - 0.1 <= poll.at - started <= expected + 5


def test_the_sleep_until_the_next_poll_is_on_the_grid() -> None:
    assert grid_time(0.0, 3600, 7200.0) == 7200.0
    assert grid_time(0.0, 3600, 7200.5) == 10800.0
    assert grid_time(100.0, 60, 50.0) == 100.0  # never before the anchor
    assert grid_time(100.0, 60, 161.0) == 220.0
    assert grid_time(5.0, 0, 6.0) == pytest.approx(6.0)  # a zero interval: at once


@pytest.mark.usefixtures("airflow_db", "leap_conn")
def test_a_row_of_the_previous_version_deserializes_and_runs(leap_emulator) -> None:
    from airflow.models.trigger import Trigger
    from airflow.serialization.decoders import smart_decode_trigger_kwargs

    # What the previous version's sensor deferred with: no next_poll_at, poll_first=False.
    old = {
        "leap_conn_id": "leap_default",
        "ref_ids": refs(leap_emulator, "COMPLETED", 2),
        "target_statuses": ["COMPLETED"],
        "fail_on_statuses": [],
        "poll_interval": 1.0,
        "end_time": time.time() + 60,
        "poll_first": False,
    }
    row = Trigger._decrypt_kwargs(Trigger.encrypt_kwargs(old))  # as the triggerer reads it
    trigger = ConnectStatusTrigger(**{k: smart_decode_trigger_kwargs(v) for k, v in row.items()})
    started = time.monotonic()
    event = run(first_event(trigger), limit=20)
    assert event["status"] == "success"
    [poll] = connect_requests(leap_emulator)
    assert poll.at - started <= 1.0 + 2  # at its grid's next time: within one interval
    assert trigger.serialize()[1]["next_poll_at"] % 1.0 == 0


# -- coalescing -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("leap_conn")
def test_triggers_of_one_connection_share_one_pass_per_poll(leap_emulator) -> None:
    completed, partial = refs(leap_emulator, "COMPLETED", 60), refs(leap_emulator, "PARTIAL", 50)
    failing = refs(leap_emulator, "ERROR", 1)
    groups = [completed[i : i + 10] for i in range(0, 60, 10)]
    groups += [partial[i : i + 10] for i in range(0, 50, 10)]
    groups += [failing + completed[:9]]
    at = time.time() + 1.5
    triggers = [
        make_trigger(ids, next_poll_at=at, poll_interval=60, fail_on_statuses=["ERROR"])
        for ids in groups
    ]
    left_early = make_trigger(["left-early"], next_poll_at=at, poll_interval=60)

    async def main() -> list[dict[str, Any] | None]:
        tasks = [asyncio.create_task(first_event(t)) for t in [*triggers, left_early]]
        await asyncio.sleep(0.1)
        tasks[-1].cancel()  # its ID is no longer asked for
        await wait_until(lambda: sum(t.done() for t in tasks) == 8)
        await asyncio.sleep(0.2)
        for task in tasks:
            task.cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        return [d if isinstance(d, dict) else None for d in done]

    events = run(main())
    assert [e and e["status"] for e in events] == ["success"] * 6 + [None] * 5 + ["failed", None]
    assert events[-2] and events[-2]["failed"] == failing
    merged = list(dict.fromkeys(ref for ids in groups for ref in ids))
    sent = connect_requests(leap_emulator)
    # One pass over the merged IDs: what one trigger watching all of them would cost.
    assert len(sent) == len(connect_queries(WireNames(), 500, merged, {}))
    assert sorted(v for r in sent for k, v in r.query if k == "ref-id") == sorted(merged)


def test_a_shared_pass_hands_its_outcome_to_every_trigger(monkeypatch, leap_emulator) -> None:
    """More triggers than the hub wakes in one turn of the loop: each still gets the outcome."""
    monkeypatch.setenv("AIRFLOW_CONN_LEAP_DEFAULT", connection_json(leap_emulator.url, "wrong:key"))
    at = time.time() + 1.5  # room for 45 triggers to join on a loaded machine
    triggers = [
        make_trigger([f"ref-{i:03d}"], next_poll_at=at, poll_interval=60) for i in range(45)
    ]

    async def main() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(first_event(t) for t in triggers)))

    events = run(main())
    assert [e["status"] for e in events] == ["error"] * 45
    assert all("HTTP 403" in e["message"] for e in events)
    [request] = connect_requests(leap_emulator)  # one pass, one request, for all 45
    assert len([v for k, v in request.query if k == "ref-id"]) == 45


def test_other_connections_and_times_poll_apart(monkeypatch, leap_emulator) -> None:
    use_connection(monkeypatch, leap_emulator.url)
    use_connection(monkeypatch, leap_emulator.url, "leap_other")
    ids = refs(leap_emulator, "COMPLETED", 3)
    at = time.time() + 1.5
    triggers = [
        make_trigger(ids[:1], next_poll_at=at, poll_interval=60),
        make_trigger(ids[1:2], next_poll_at=at, poll_interval=60, leap_conn_id="leap_other"),
        make_trigger(ids[2:], next_poll_at=at + 0.3, poll_interval=60),
    ]

    async def main() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(first_event(t) for t in triggers)))

    assert [e["status"] for e in run(main())] == ["success"] * 3
    assert len(connect_requests(leap_emulator)) == 3


# -- outage ---------------------------------------------------------------------------------------


def test_an_outage_holds_no_thread_of_the_loop(monkeypatch, leap_emulator) -> None:
    """50 triggers on 50 connections retry through an outage; the loop's default thread pool
    (shared with every other trigger of the triggerer) stays free."""
    names = [
        use_connection(monkeypatch, leap_emulator.url, f"leap_out_{i}", max_retries=5)
        for i in range(50)
    ]
    leap_emulator.faults.outage()

    async def main() -> float:
        tasks = [
            asyncio.create_task(first_event(make_trigger([f"ref-{i:03d}"], leap_conn_id=name)))
            for i, name in enumerate(names)
        ]
        await wait_until(lambda: len(connect_requests(leap_emulator)) >= 100)  # all retrying
        started = time.monotonic()
        await asyncio.to_thread(time.monotonic)  # an unrelated call on the same loop
        took = time.monotonic() - started
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return took

    assert run(main()) < 1.0
