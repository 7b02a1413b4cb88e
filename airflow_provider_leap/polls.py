"""Coalesced Connect polls and their schedule, for the triggerer's event loop. No Airflow.

A deferred sensor's trigger polls on a grid, ``anchor + k * interval``: the sensor anchors it on
the epoch (``grid_time(0, interval, ...)``), so that sensors deferred at different moments poll
at the same moments, and a trigger restarted from its kwargs resumes the same grid. At each grid
time, the triggers of one event loop that poll the same connection share one pass over the
Connect API (``PollHub``): their Reference IDs are merged into as few requests as the URL length
allows (``client.ConnectQuery``), and each trigger gets the records of its own IDs.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from airflow_provider_leap.async_client import AsyncLeapClient
from airflow_provider_leap.config import LeapConfig
from airflow_provider_leap.models import ConnectRecord

log = logging.getLogger(__name__)
Records = Mapping[str, list[ConnectRecord]]  # Reference ID -> its records (one per region)
MIN_INTERVAL = 0.001  # a zero poke_interval polls back to back, not by dividing by zero


def grid_time(anchor: float, interval: float, not_before: float) -> float:
    """The first time ``anchor + k * interval`` (``k >= 0``) at or after ``not_before``."""
    interval = max(interval, MIN_INTERVAL)
    return anchor + max(0, math.ceil((not_before - anchor) / interval)) * interval


class _Tick:
    """One shared poll: who waits for it (each caller's future and IDs), and its task."""

    def __init__(self) -> None:
        self.waiters: dict[asyncio.Future[Records], list[str]] = {}
        self.task: asyncio.Task[None] | None = None


class PollHub:
    """Shares the polls of one event loop: one pass over the Connect API per connection and time.

    ``records(conn_id, at, ids, until=...)`` waits until the wall-clock time ``at``, then
    returns the records of ``ids`` from a pass made for everyone who asked for the same
    connection and time. The pass runs in its own task, outside any caller's context (its logs
    are the triggerer's, not one trigger's), with a client opened and closed within it. A caller
    cancelled before the pass ends leaves it; when the last one leaves, the pass is cancelled:
    no request is sent after that, and the client is closed on this loop. The connection is
    read again for every pass (``load_config``), so a changed key is used at the next poll.

    The outcome reaches the callers ``FAN_OUT`` at a time, one turn of the loop apart: each
    caller then logs and decides, and hundreds of them at once would stall the loop.
    """

    FAN_OUT = 20

    def __init__(
        self,
        load_config: Callable[[str], Awaitable[LeapConfig]],
        *,
        client: Callable[[LeapConfig], AsyncLeapClient] = AsyncLeapClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._load_config, self._client, self._clock = load_config, client, clock
        self._open: dict[tuple[str, float], _Tick] = {}

    async def records(
        self, conn_id: str, at: float, ref_ids: Iterable[str], *, until: float
    ) -> Records | None:
        """The records of ``ref_ids`` from the pass at ``at``; ``None`` if ``until`` (wall
        clock) comes first. A cancellation always wins, even over an answer just in (unlike
        ``asyncio.wait_for`` before Python 3.12, which could return the answer and drop it)."""
        key = (conn_id, round(at, 3))
        tick = self._open.get(key)
        if tick is None:
            tick = self._open[key] = _Tick()
            # An empty context: the pass belongs to no one trigger (its log lines included).
            tick.task = contextvars.Context().run(
                asyncio.ensure_future, self._pass(conn_id, key, at, tick)
            )
        mine: asyncio.Future[Records] = asyncio.get_running_loop().create_future()
        tick.waiters[mine] = list(ref_ids)
        try:
            await asyncio.wait((mine,), timeout=max(until - self._clock(), 0.0))
            return mine.result() if mine.done() else None
        finally:
            del tick.waiters[mine]
            if mine.done() and not mine.cancelled():
                mine.exception()  # retrieved, even when this caller was cancelled meanwhile
            else:
                mine.cancel()
                if not tick.waiters and tick.task is not None:
                    tick.task.cancel()

    async def _pass(self, conn_id: str, key: tuple[str, float], at: float, tick: _Tick) -> None:
        try:
            await asyncio.sleep(max(at - self._clock(), 0.0))
            self._close(key, tick)  # from now on, a caller for this time makes a pass of its own
            outcome = await self._poll(conn_id, tick)
            for number, waiter in enumerate(list(tick.waiters), 1):
                if waiter.done():  # its caller was cancelled meanwhile
                    continue
                if isinstance(outcome, Exception):
                    waiter.set_exception(outcome)
                else:
                    waiter.set_result(outcome)
                if number % self.FAN_OUT == 0:
                    await asyncio.sleep(0)
        finally:
            self._close(key, tick)
            for waiter in tick.waiters:  # cancelled (the loop is closing): no one waits for nothing
                waiter.cancel()

    async def _poll(self, conn_id: str, tick: _Tick) -> Records | Exception:
        """One pass over the Reference IDs of everyone waiting: their records, or the error."""
        ids = list(dict.fromkeys(ref_id for ids in tick.waiters.values() for ref_id in ids))
        try:
            config = await self._load_config(conn_id)
            async with self._client(config) as client:
                found: dict[str, list[ConnectRecord]] = {}
                async for page in client.connect_pages(ids):
                    for record in page:
                        if record.ref_id is not None:  # a malformed record matches no one
                            found.setdefault(record.ref_id, []).append(record)
        except Exception as exc:
            return exc
        log.info(
            "Polled Leap (connection %s) for %d trigger(s): %d Reference ID(s), %d listed",
            *(conn_id, len(tick.waiters), len(ids), len(found)),
        )
        return found

    def _close(self, key: tuple[str, float], tick: _Tick) -> None:
        if self._open.get(key) is tick:
            del self._open[key]
