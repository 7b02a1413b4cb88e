"""Coalesced Connect polls on a shared schedule, for the triggerer's event loop. No Airflow.

Sensors poll on the epoch's grid of their interval (``grid_time``), so those deferred at
different moments poll together: one pass per connection and time (``PollHub``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from airflow_provider_leap.async_client import AsyncLeapClient
from airflow_provider_leap.config import LeapConfig
from airflow_provider_leap.models import ConnectRecord

log = logging.getLogger(__name__)
Records = Mapping[str, list[ConnectRecord]]  # Reference ID -> its records (one per region)


def grid_time(anchor: float, interval: float, not_before: float) -> float:
    """The first time ``anchor + k * interval`` (``k >= 0``) at or after ``not_before``."""
    interval = max(interval, 0.001)  # a zero poke_interval polls back to back
    return anchor + max(0, math.ceil((not_before - anchor) / interval)) * interval


@dataclass
class _Tick:
    """One shared poll: who waits for it (each caller's future and IDs), and its task."""

    waiters: dict[asyncio.Future[Records], list[str]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


class PollHub:
    """One pass over the Connect API per connection and time for all triggers of a loop.

    The pass runs outside any trigger's context (its logs are the triggerer's) and reads the
    connection again, so a changed key is used at the next poll; it is cancelled when its last
    caller is. Callers get the outcome ``FAN_OUT`` per turn of the loop: hundreds deciding and
    logging at once would stall it.
    """

    FAN_OUT = 20

    def __init__(self, load_config: Callable[[str], Awaitable[LeapConfig]]) -> None:
        self._load_config = load_config
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
            await asyncio.wait((mine,), timeout=max(until - time.time(), 0.0))
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
            await asyncio.sleep(max(at - time.time(), 0.0))
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
            async with AsyncLeapClient(await self._load_config(conn_id)) as client:
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
