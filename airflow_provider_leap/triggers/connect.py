"""ConnectStatusTrigger: the deferrable half of ConnectStatusSensor, run by the triggerer.

It holds no thread: its polls go through the async client, shared with every Leap trigger of the
same connection and time on this event loop (``polls.PollHub``); cancelling it stops them at once.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timezone
from itertools import chain
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_leap.config import LeapConfig
from airflow_provider_leap.errors import LeapAPIError, LeapError, is_transient
from airflow_provider_leap.polls import PollHub, grid_time
from airflow_provider_leap.watch import evaluate

_HUBS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PollHub] = weakref.WeakKeyDictionary()


async def _load_config(conn_id: str) -> LeapConfig:
    """The connection, read at each poll. A failed lookup is transient: it was readable when the
    sensor deferred, so a lookup failing now is far more often a secrets backend or database
    blip than a deleted connection (Airflow reports both as not found)."""
    from airflow_provider_leap.hooks.leap import LeapHook

    try:
        conn = await LeapHook.aget_connection(conn_id)
    except Exception as exc:
        raise LeapAPIError(
            f"could not read the Airflow connection {conn_id!r} ({type(exc).__name__}: {exc})",
            transient=True,
        ) from exc
    return LeapConfig.from_connection(conn)


def _hub() -> PollHub:
    """This event loop's hub: the triggerer runs all its triggers on one loop."""
    return _HUBS.setdefault(asyncio.get_running_loop(), PollHub(_load_config))


class ConnectStatusTrigger(BaseTrigger):
    """Poll Leap until every Reference ID is in a target status, one fails, or ``end_time``.

    Times are absolute (epoch seconds), so a trigger rebuilt from its kwargs after a triggerer
    restart keeps its schedule: it polls at ``next_poll_at`` and every ``poll_interval`` after it
    (without it: at once, then on the epoch's grid). ``poll_first=False`` (rows of the previous
    version) joins the epoch's grid without polling at once.

    Events carry ``status``, ``message`` (the last poll, one line) and ``counts``, never records:
    ``success``, ``failed`` (with the ``failed`` IDs), ``timeout``, or ``error`` (a refused
    request or a connection whose settings are wrong: trying again would not help). A transient
    failure that outlasts the client's retries, or a connection lookup that fails, is logged and
    tried again at the next poll.
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
        if next_poll_at is None and not poll_first:
            next_poll_at = grid_time(0.0, self.poll_interval, time.time())
        self.next_poll_at = None if next_poll_at is None else float(next_poll_at)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        kwargs = {
            "leap_conn_id": self.leap_conn_id,
            "ref_ids": self.ref_ids,
            "target_statuses": self.target_statuses,
            "fail_on_statuses": self.fail_on_statuses,
            "poll_interval": self.poll_interval,
            "end_time": self.end_time,
            "next_poll_at": self.next_poll_at,
        }
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    def _next_poll(self, previous: float | None) -> float:
        """On the grid, after the previous poll. The first poll of a run that finds a grid time
        passed unpolled (a restart straddling it) polls at once rather than an interval late."""
        now = time.time()
        if previous is None and self.next_poll_at is None:
            return now
        anchor, interval = self.next_poll_at or 0.0, self.poll_interval
        if previous is None:
            due = grid_time(anchor, interval, now)
            return due - interval if due > now and due - interval >= anchor else due
        return grid_time(anchor, interval, max(now, previous + interval / 2))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # Between polls only the last payload is kept, never records: a triggerer holds hundreds.
        hub, at = _hub(), None
        last: dict[str, Any] = {"message": "no successful poll yet", "counts": None}
        failing = ""  # why the polls since the last successful one failed
        while True:
            at = self._next_poll(at)
            if at >= self.end_time:
                await asyncio.sleep(max(self.end_time - time.time(), 0.0))
                break
            try:
                payload = await self._poll(hub, at)
            except Exception as exc:
                if not is_transient(exc):
                    why = str(exc) if isinstance(exc, LeapError) else f"{type(exc).__name__}: {exc}"
                    yield TriggerEvent({"status": "error", "message": why})
                    return
                self.log.warning("Leap poll failed, trying again next poll: %s", exc)
                failing = f"; the polls since failed: {exc}"
                continue
            if payload is None:  # end_time came during the poll
                break
            if payload["status"] is not None:
                yield TriggerEvent(payload)
                return
            last, failing = payload, ""
        end = datetime.fromtimestamp(self.end_time, tz=timezone.utc).isoformat()
        message = f"Timed out at {end}; last poll: {last['message']}{failing}"
        yield TriggerEvent({"status": "timeout", "message": message, "counts": last["counts"]})

    async def _poll(self, hub: PollHub, at: float) -> dict[str, Any] | None:
        """The poll at ``at`` as an event payload (``status`` None: keep waiting); None when
        ``end_time`` comes first. The pass's records (every trigger's) are let go on return."""
        found = await hub.records(self.leap_conn_id, at, self.ref_ids, until=self.end_time)
        if found is None:
            return None
        ids = dict.fromkeys(self.ref_ids)
        records = chain.from_iterable(found.get(ref_id, ()) for ref_id in ids)
        result = evaluate(records, ids, self.target_statuses, self.fail_on_statuses)
        payload = {"status": None, "message": result.describe(len(ids)), "counts": result.counts()}
        self.log.info("%s", payload["message"])
        if result.failed:
            return {**payload, "status": "failed", "failed": sorted(result.failed)}
        return {**payload, "status": "success" if result.done else None}
