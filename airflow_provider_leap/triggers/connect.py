"""ConnectStatusTrigger: the deferrable half of ConnectStatusSensor, run by the triggerer.

It reuses the provider's HTTP core (auth, retries, paging, batching) by running the blocking
client in a worker thread, so the triggerer's event loop never blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timezone
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_leap.errors import LeapAPIError, LeapError


class ConnectStatusTrigger(BaseTrigger):
    """Poll Leap until every Reference ID is in a target status, one fails, or ``end_time``.

    ``poll_first=False`` waits one ``poll_interval`` before the first poll: the sensor sets it
    when it has just checked in the worker, since Leap's data changes at most hourly.

    Events (``event["status"]``): ``success`` (with ``records``), ``failed`` (a Reference ID in
    a fail status), ``timeout`` (``end_time`` passed), ``error`` (Leap refused the request, e.g.
    401/403/400: retrying would not help). Transient failures that outlast the client's own
    retries are logged and tried again at the next poll.
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
        poll_first: bool = True,
    ) -> None:
        super().__init__()
        self.leap_conn_id = leap_conn_id
        self.ref_ids = list(ref_ids)
        self.target_statuses = list(target_statuses)
        self.fail_on_statuses = list(fail_on_statuses)
        self.poll_interval = float(poll_interval)
        self.end_time = float(end_time)
        self.poll_first = poll_first

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
                "poll_first": self.poll_first,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_provider_leap.hooks.leap import LeapHook, client_from_connection
        from airflow_provider_leap.watch import check_ref_ids

        try:
            conn = await LeapHook.aget_connection(self.leap_conn_id)
            client = await asyncio.to_thread(client_from_connection, conn)
        except Exception as exc:
            yield TriggerEvent({"status": "error", "message": str(exc)})
            return
        total = len(self.ref_ids)
        last = "no successful poll yet"
        try:
            if not self.poll_first:  # the sensor has just checked: wait one interval first
                await asyncio.sleep(min(self.poll_interval, max(self.end_time - _now(), 0.0)))
            while True:
                if _now() >= self.end_time:
                    yield self._timeout_event(last)
                    return
                try:
                    result = await asyncio.to_thread(
                        check_ref_ids,
                        client,
                        self.ref_ids,
                        self.target_statuses,
                        self.fail_on_statuses,
                    )
                except LeapAPIError as exc:
                    if exc.status is not None and exc.status < 500 and exc.status != 429:
                        yield TriggerEvent({"status": "error", "message": str(exc)})
                        return
                    self.log.warning("Leap poll failed, trying again next poll: %s", exc)
                except LeapError as exc:
                    yield TriggerEvent({"status": "error", "message": str(exc)})
                    return
                else:
                    self.log.info("%s", result.describe(total))
                    if result.failed:
                        yield TriggerEvent(
                            {
                                "status": "failed",
                                "message": result.describe(total),
                                "failed": result.failed,
                                "records": result.records,
                            }
                        )
                        return
                    if result.done:
                        yield TriggerEvent({"status": "success", "records": result.records})
                        return
                    last = result.describe(total)
                remaining = self.end_time - _now()
                if remaining <= 0:
                    yield self._timeout_event(last)
                    return
                await asyncio.sleep(min(self.poll_interval, remaining))
        finally:
            await asyncio.to_thread(client.close)

    def _timeout_event(self, last: str) -> TriggerEvent:
        end = datetime.fromtimestamp(self.end_time, tz=timezone.utc).isoformat()
        return TriggerEvent(
            {"status": "timeout", "message": f"Timed out at {end}; last poll: {last}"}
        )


def _now() -> float:
    return datetime.now(timezone.utc).timestamp()
