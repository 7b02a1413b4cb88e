"""ConnectStatusTrigger: the deferrable half of ConnectStatusSensor, run by the triggerer.

It waits on the triggerer's event loop and holds no thread: the polls go through the core's
async transport (``async_client``), shared with every other Leap trigger of the same connection
and time in this process (``polls.PollHub``), and cancelling it stops its polling at once.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timezone
from itertools import chain
from typing import Any, NamedTuple

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_leap.config import LeapConfig
from airflow_provider_leap.errors import LeapError, is_transient
from airflow_provider_leap.polls import PollHub, Records, grid_time
from airflow_provider_leap.watch import evaluate

_HUBS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PollHub] = weakref.WeakKeyDictionary()


async def _load_config(conn_id: str) -> LeapConfig:
    from airflow_provider_leap.hooks.leap import LeapHook

    return LeapConfig.from_connection(await LeapHook.aget_connection(conn_id))


def _hub() -> PollHub:
    """This event loop's hub: the triggerer runs all its triggers on one loop."""
    loop = asyncio.get_running_loop()
    hub = _HUBS.get(loop)
    if hub is None:
        hub = _HUBS[loop] = PollHub(_load_config)
    return hub


class ConnectStatusTrigger(BaseTrigger):
    """Poll Leap until every Reference ID is in a target status, one fails, or ``end_time``.

    Times are absolute (seconds since the epoch), so a trigger restarted from its kwargs (a
    triggerer restart, or the trigger moving to another triggerer) resumes its schedule: it
    polls at ``next_poll_at``, then every ``poll_interval`` after it (the next of those times
    still ahead, after a restart), and gives up at ``end_time``. Without ``next_poll_at`` it
    polls at once, then on the epoch's grid of ``poll_interval``. ``poll_first`` is read only
    from rows deferred by the previous version: ``False`` (the sensor had just checked) joins
    that grid without polling at once.

    Events (``event["status"]``), each with a ``message`` (the last poll, one line) and
    ``counts`` (Reference IDs reached, waiting, missing, failed), never the records:
    ``success``; ``failed`` (with ``failed``: the Reference IDs in a fail status); ``timeout``
    (``end_time`` passed); ``error`` (Leap refused the request, e.g. 401/403/400, or the
    connection cannot be used: trying again would not help). A transient failure (429, 5xx, a
    timeout, a dropped connection) that outlasts the client's own retries is logged and tried
    again at the next poll.
    """

    def __init__(
        self,
        *,
        leap_conn_id: str,
        ref_ids: Sequence[str],
        target_statuses: Sequence[str],
        fail_on_statuses: Sequence[str] = (),
        poll_interval: float = 3600.0,
        end_time: float,
        next_poll_at: float | None = None,
        poll_first: bool = True,
    ) -> None:
        super().__init__()
        self.leap_conn_id = leap_conn_id
        self.ref_ids = list(ref_ids)
        self.target_statuses = list(target_statuses)
        self.fail_on_statuses = list(fail_on_statuses)
        self.poll_interval = float(poll_interval)
        self.end_time = float(end_time)
        if next_poll_at is None and not poll_first:  # an older row: the sensor had just checked
            next_poll_at = grid_time(0.0, self.poll_interval, time.time())
        self.next_poll_at = None if next_poll_at is None else float(next_poll_at)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "leap_conn_id": self.leap_conn_id,
                "ref_ids": self.ref_ids,
                "target_statuses": self.target_statuses,
                "fail_on_statuses": self.fail_on_statuses,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "next_poll_at": self.next_poll_at,
            },
        )

    def _next_poll(self, previous: float | None) -> float:
        """When to poll next: on the grid, and after the previous poll. The first poll of a run
        (a new deferral, or a triggerer restarted from the row) that finds a grid time already
        passed, one no triggerer polled, polls at once: waiting for the next one would cost a
        whole interval for every restart that straddles a grid time."""
        now = time.time()
        if previous is None and self.next_poll_at is None:
            return now
        anchor, interval = self.next_poll_at or 0.0, self.poll_interval
        if previous is None:
            due = grid_time(anchor, interval, now)
            return due - interval if due > now and due - interval >= anchor else due
        return grid_time(anchor, interval, max(now, previous + interval / 2))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # Between polls the trigger keeps its last summary only, never the records: the
        # triggerer holds hundreds of these.
        hub, last, at = _hub(), Summary("no successful poll yet", None), None
        while True:
            at = self._next_poll(at)
            if at >= self.end_time:
                await asyncio.sleep(max(self.end_time - time.time(), 0.0))
                yield self._timeout_event(last)
                return
            try:
                event, last = await self._poll(hub, at, last)
            except Exception as exc:
                if not is_transient(exc):
                    why = str(exc) if isinstance(exc, LeapError) else f"{type(exc).__name__}: {exc}"
                    yield TriggerEvent({"status": "error", "message": why})
                    return
                self.log.warning("Leap poll failed, trying again next poll: %s", exc)
                continue
            if event is not None:
                yield event
                return

    async def _poll(
        self, hub: PollHub, at: float, last: Summary
    ) -> tuple[TriggerEvent | None, Summary]:
        """The poll at ``at``: the event it ends the wait with, if any, and its summary. The
        pass's records (every trigger's) are let go on return, not held until the next poll."""
        found = await hub.records(self.leap_conn_id, at, self.ref_ids, until=self.end_time)
        if found is None:  # end_time came during the poll
            return self._timeout_event(last), last
        return self._outcome(found)

    def _outcome(self, found: Records) -> tuple[TriggerEvent | None, Summary]:
        """What this poll's records mean for the trigger's IDs."""
        ids = dict.fromkeys(self.ref_ids)
        records = chain.from_iterable(found.get(ref_id, ()) for ref_id in ids)
        result = evaluate(records, ids, self.target_statuses, self.fail_on_statuses)
        summary = Summary(result.describe(len(ids)), result.counts())
        self.log.info("%s", summary.message)
        if result.failed:
            return summary.event("failed", failed=sorted(result.failed)), summary
        return (summary.event("success") if result.done else None), summary

    def _timeout_event(self, last: Summary) -> TriggerEvent:
        end = datetime.fromtimestamp(self.end_time, tz=timezone.utc).isoformat()
        return Summary(f"Timed out at {end}; last poll: {last.message}", last.counts).event(
            "timeout"
        )


class Summary(NamedTuple):
    """One poll, as an event tells it: one line, and how many Reference IDs stand where."""

    message: str
    counts: dict[str, int] | None

    def event(self, status: str, **extra: Any) -> TriggerEvent:
        return TriggerEvent(
            {"status": status, "message": self.message, "counts": self.counts, **extra}
        )
