"""ConnectStatusSensor: wait until Reference IDs reach a Connect status."""

from __future__ import annotations

import time
from collections.abc import Collection
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
)

from airflow_provider_leap import DEFAULT_CONN_ID, wire
from airflow_provider_leap.errors import LeapConfigError
from airflow_provider_leap.links import LeapConnectionsLink
from airflow_provider_leap.refids import ref_ids_argument
from airflow_provider_leap.watch import statuses_argument

if TYPE_CHECKING:
    from airflow.sdk import Context

HOURLY = timedelta(hours=1).total_seconds()


def _default_deferrable() -> bool:
    from airflow.sdk.configuration import conf

    return bool(conf.getboolean("operators", "default_deferrable", fallback=False))


class ConnectStatusSensor(BaseSensorOperator):
    """Wait until every Reference ID is in one of ``target_statuses``.

    Each poke makes one pass over the Connect API for all IDs (batched by the ``ref-id`` filter,
    split only when the URL would get too long), never one request per ID. Reference IDs that
    Leap does not list yet (the customer never clicked the link) keep the sensor waiting and are
    named in the log. On success the XCom value is the matching records as small dicts
    (``return_records=False``: none).

    Leap refreshes connection data once an hour, so ``poke_interval`` defaults to one hour; a
    shorter interval against a production host is allowed but logged as a warning. Arguments
    are checked once rendered; a bad one fails the task with ``LeapException``.

    :param ref_ids: Reference IDs: a list, or comma-separated IDs; never empty. Templated.
    :param target_statuses: statuses that count as reached: one, a list, or comma-separated
        (default ``COMPLETED``; case does not matter). Templated.
    :param fail_on_statuses: statuses that end the wait with a failure (default none), given
        like ``target_statuses``. Templated.
    :param leap_conn_id: Airflow connection of type ``leap``. Templated.
    :param deferrable: wait in the triggerer instead of a worker slot; defaults to Airflow's
        ``[operators] default_deferrable``. The sensor's ``timeout`` applies the same way.
    :param return_records: return (push to XCom) the records of the Reference IDs on success
        (default ``True``). A deferred sensor's trigger event carries counts and IDs only, so
        the records are read again, in one pass, when the task resumes; ``False`` spares that
        pass and the XCom for thousands of IDs whose records no task reads.
    """

    template_fields = ("ref_ids", "target_statuses", "fail_on_statuses", "leap_conn_id")
    template_fields_renderers = {"ref_ids": "json"}
    ui_color = "#e8eef8"
    operator_extra_links = (LeapConnectionsLink(),)

    def __init__(
        self,
        *,
        ref_ids: str | Collection[str],
        target_statuses: str | Collection[str] = ("COMPLETED",),
        fail_on_statuses: str | Collection[str] = (),
        leap_conn_id: str = DEFAULT_CONN_ID,
        deferrable: bool | None = None,
        poke_interval: timedelta | float = HOURLY,
        return_records: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, **kwargs)
        self.return_records = return_records
        self.ref_ids = ref_ids
        self.target_statuses = target_statuses
        self.fail_on_statuses = fail_on_statuses
        self.leap_conn_id = leap_conn_id
        self.deferrable = _default_deferrable() if deferrable is None else deferrable

    def arguments(self) -> tuple[list[str], list[str], list[str]]:
        """The rendered IDs, target statuses and fail statuses, checked."""
        from airflow_provider_leap.hooks.leap import airflow_errors

        with airflow_errors():
            ids = ref_ids_argument(self.ref_ids)
            targets = statuses_argument(self.target_statuses, "target_statuses")
            fails = statuses_argument(self.fail_on_statuses, "fail_on_statuses")
            if not targets:
                raise LeapConfigError("target_statuses is empty: name at least one status")
            if set(targets) & set(fails):
                raise LeapConfigError(
                    f"{sorted(set(targets) & set(fails))} cannot be both a target and a fail status"
                )
        return ids, targets, fails

    def poke(self, context: Context) -> PokeReturnValue:
        # Imported here: the hook loads the HTTP stack, which parsing a DAG file need not pay for.
        from airflow_provider_leap.hooks.leap import LeapHook

        ids, targets, fails = self.arguments()
        hook = LeapHook(leap_conn_id=self.leap_conn_id)
        if self.poke_interval < HOURLY and hook.config.base_url == wire.PRODUCTION_URL:
            self.log.warning(
                "poke_interval is %.0f s but Leap refreshes Connect data once an hour: polling "
                "production more often returns the same data and spends rate limit.",
                self.poke_interval,
            )
        result = hook.check_ref_ids(ids, targets, fails)
        message = result.describe(len(ids))
        self.log.info("%s", message)
        if result.failed:
            raise AirflowFailException(f"Leap connection(s) in a fail status: {message}")
        records = result.records if self.return_records else None
        return PokeReturnValue(is_done=result.done, xcom_value=records)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        # Check once in the worker: no deferral when the answer is already there.
        try:
            first = self.poke(context)
        except AirflowFailException as exc:
            if self.soft_fail or self.never_fail:
                raise AirflowSkipException(f"Skipped (soft_fail/never_fail): {exc}") from exc
            raise
        if first.is_done:
            return first.xcom_value
        from airflow_provider_leap.polls import grid_time
        from airflow_provider_leap.triggers.connect import ConnectStatusTrigger

        ids, targets, fails = self.arguments()
        now, interval = time.time(), self.poke_interval
        self.defer(
            trigger=ConnectStatusTrigger(
                leap_conn_id=self.leap_conn_id,
                ref_ids=ids,
                target_statuses=targets,
                fail_on_statuses=fails,
                poll_interval=interval,
                end_time=now + self.timeout,
                # The poke above was a poll: the next is on the epoch's grid of the interval, at
                # least half an interval on (one interval on average), where other sensors of
                # this connection poll too.
                next_poll_at=grid_time(0.0, interval, now + interval / 2),
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),  # the trigger's end_time, for Airflow
        )

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (docs: Lineage): the Connect records of the connection, with the number of
        Reference IDs watched. Called by Airflow's OpenLineage provider only."""
        from airflow.providers.openlineage.extractors import OperatorLineage

        from airflow_provider_leap.hooks.leap import LeapHook
        from airflow_provider_leap.lineage import connect_input

        try:  # lineage never fails a task: without a readable connection, no environment
            base_url: str | None = LeapHook(leap_conn_id=self.leap_conn_id).config.base_url
        except Exception:
            base_url = None
        try:
            watched: int | None = len(self.arguments()[0])
        except Exception:
            watched = None
        return OperatorLineage(inputs=[connect_input(self.leap_conn_id, base_url, ref_ids=watched)])

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Map the trigger's event to success, failure or timeout; nothing is left implicit."""
        status = (event or {}).get("status")
        message = (event or {}).get("message", "")
        if status == "success" and event:
            self.log.info("All Reference IDs reached the target status: %s", message)
            if "records" in event:  # an event of the previous version carried them
                return event["records"] if self.return_records else None
            return self._records() if self.return_records else None
        if status == "timeout":
            raise AirflowSensorTimeout(f"ConnectStatusSensor timed out: {message}")
        if status == "failed":
            raise AirflowFailException(f"Leap connection(s) in a fail status: {message}")
        if status == "error":
            raise AirflowException(f"ConnectStatusSensor could not poll Leap: {message}")
        raise AirflowException(f"ConnectStatusSensor got an unexpected trigger event: {event!r}")

    def _records(self) -> list[dict[str, Any]]:
        """The records of the Reference IDs, read in one pass (the event does not carry them)."""
        from airflow_provider_leap.hooks.leap import LeapHook

        ids, targets, fails = self.arguments()
        result = LeapHook(leap_conn_id=self.leap_conn_id).check_ref_ids(ids, targets, fails)
        return result.records
