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
from collections import Counter
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
    """One shared poll: the IDs of those waiting for it, and its outcome once sent."""

    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()
        self.waiting = 0
        self.result: asyncio.Future[Records] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None


class PollHub:
    """Shares the polls of one event loop: one pass over the Connect API per connection and time.

    ``records(conn_id, at, ids)`` waits until the wall-clock time ``at``, then returns the
    records of ``ids`` from a pass made for everyone who asked for the same connection and
    time. The pass runs in its own task, outside any caller's context (its logs are the
    triggerer's, not one trigger's), with a client opened and closed within it. A caller
    cancelled before the pass ends leaves it; when the last one leaves, the pass is cancelled:
    no request is sent after that, and the client is closed on this loop. The connection is
    read again for every pass (``load_config``), so a changed key is used at the next poll.
    """

    def __init__(
        self,
        load_config: Callable[[str], Awaitable[LeapConfig]],
        *,
        client: Callable[[LeapConfig], AsyncLeapClient] = AsyncLeapClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._load_config, self._client, self._clock = load_config, client, clock
        self._open: dict[tuple[str, float], _Tick] = {}

    async def records(self, conn_id: str, at: float, ref_ids: Iterable[str]) -> Records:
        ids = list(dict.fromkeys(ref_ids))
        key = (conn_id, round(at, 3))
        tick = self._open.get(key)
        if tick is None:
            tick = self._open[key] = _Tick()
            # An empty context: the pass belongs to no one trigger (its log lines included).
            tick.task = contextvars.Context().run(
                asyncio.ensure_future, self._pass(conn_id, key, at, tick)
            )
        tick.ids.update(ids)
        tick.waiting += 1
        try:
            return await asyncio.shield(tick.result)
        finally:
            tick.waiting -= 1
            tick.ids.subtract(ids)
            if tick.result.done() and not tick.result.cancelled():
                tick.result.exception()  # retrieved: one caller's cancellation is no lost error
            elif not tick.waiting and tick.task is not None:
                tick.task.cancel()

    async def _pass(self, conn_id: str, key: tuple[str, float], at: float, tick: _Tick) -> None:
        try:
            await asyncio.sleep(max(at - self._clock(), 0.0))
            self._close(key, tick)  # from now on, a caller for this time makes a pass of its own
            ids = [ref_id for ref_id, count in tick.ids.items() if count > 0]
            config = await self._load_config(conn_id)
            async with self._client(config) as client:
                found: dict[str, list[ConnectRecord]] = {}
                async for page in client.connect_pages(ids):
                    for record in page:
                        if record.ref_id is not None:  # a malformed record matches no one
                            found.setdefault(record.ref_id, []).append(record)
            log.info(
                "Polled Leap (connection %s) for %d trigger(s): %d Reference ID(s), %d listed",
                *(conn_id, tick.waiting, len(ids), len(found)),
            )
            tick.result.set_result(found)
        except Exception as exc:
            tick.result.set_exception(exc)
        finally:
            self._close(key, tick)
            if not tick.result.done():
                tick.result.cancel()

    def _close(self, key: tuple[str, float], tick: _Tick) -> None:
        if self._open.get(key) is tick:
            del self._open[key]
