"""ConnectStatusSensor: wait until Reference IDs reach a Connect status."""

from __future__ import annotations

import time
from collections.abc import Collection
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.configuration import conf
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
)

from airflow_provider_leap import DEFAULT_CONN_ID, wire
from airflow_provider_leap.errors import LeapConfigError
from airflow_provider_leap.links import LeapConnectionsLink
from airflow_provider_leap.models import ConnectionStatus
from airflow_provider_leap.refids import ref_ids_argument
from airflow_provider_leap.watch import statuses_argument

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_leap.hooks.leap import LeapHook

HOURLY = timedelta(hours=1).total_seconds()
Arguments = tuple[list[str], list[str], list[str]]  # Reference IDs, targets, fail statuses


class ConnectStatusSensor(BaseSensorOperator):
    """Wait until every Reference ID is in one of ``target_statuses``.

    A poke is one pass over the Connect API for all IDs, never one request per ID; IDs Leap does
    not list yet (link not clicked) keep it waiting and are named in the log. Leap refreshes
    hourly, hence the hourly ``poke_interval`` (shorter against production logs a warning). Bad
    arguments (checked once rendered) fail the task with ``LeapException``.

    :param ref_ids: Reference IDs: a list or comma-separated; never empty. Templated.
    :param target_statuses: statuses that count as reached: one, a list, or comma-separated, any
        case (default ``COMPLETED``). Templated.
    :param fail_on_statuses: statuses that fail the wait at once (default none; None is none).
        Templated.
    :param leap_conn_id: Airflow connection of type ``leap``. Templated.
    :param deferrable: wait in the triggerer, not a worker slot; default: Airflow's
        ``[operators] default_deferrable``.
    :param return_records: push the matching records (small dicts) to XCom on success. A
        deferred sensor reads them again on resuming (the event carries counts only); ``False``
        spares that pass for thousands of IDs nobody reads.
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
        fail_on_statuses: str | Collection[str] | None = (),
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
        self.fail_on_statuses = () if fail_on_statuses is None else fail_on_statuses
        self.leap_conn_id = leap_conn_id
        if deferrable is None:
            deferrable = conf.getboolean("operators", "default_deferrable", fallback=False)
        self.deferrable = bool(deferrable)
        self._warned = False  # about statuses Leap does not document, at the first poke

    def _warn_undocumented(self, targets: list[str], fails: list[str]) -> None:
        """A typo (``COMPLETE``) would wait in silence until the timeout. Leap may add statuses,
        so an unknown one is no error, but the log says so once."""
        known = sorted(status.value for status in ConnectionStatus)
        for name, statuses, then in (
            ("target_statuses", targets, "waiting for it"),
            ("fail_on_statuses", fails, "failing on it"),
        ):
            for status in statuses:
                if status not in known:
                    self.log.warning(
                        "%s: %r is none of the statuses Leap documents: %s; %s anyway",
                        name,
                        status,
                        ", ".join(known),
                        then,
                    )

    def arguments(self) -> Arguments:
        """The rendered IDs, target statuses and fail statuses, checked."""
        from airflow_provider_leap.hooks.leap import airflow_errors

        with airflow_errors():
            ids = ref_ids_argument(self.ref_ids)
            targets = statuses_argument(self.target_statuses, "target_statuses")
            fails = statuses_argument(self.fail_on_statuses, "fail_on_statuses")
            if not targets:
                raise LeapConfigError("target_statuses is empty: name at least one status")
            if both := sorted(set(targets) & set(fails)):
                raise LeapConfigError(f"{both} cannot be both a target and a fail status")
        return ids, targets, fails

    def _hook(self) -> LeapHook:
        # Imported here: the hook loads the HTTP stack, which parsing a DAG file need not pay for.
        from airflow_provider_leap.hooks.leap import LeapHook

        return LeapHook(leap_conn_id=self.leap_conn_id)

    def poke(self, context: Context) -> PokeReturnValue:
        arguments, hook = self.arguments(), self._hook()
        if not self._warned:
            self._warned = True
            self._warn_undocumented(*arguments[1:])
        if self.poke_interval < HOURLY and hook.config.base_url == wire.PRODUCTION_URL:
            self.log.warning(
                "poke_interval is %.0f s but Leap refreshes Connect data once an hour: polling "
                "production more often returns the same data and spends rate limit.",
                self.poke_interval,
            )
        result = hook.check_ref_ids(*arguments)
        message = result.describe(len(arguments[0]))
        self.log.info("%s", message)
        if result.failed:
            raise AirflowFailException(f"Leap connection(s) in a fail status: {message}")
        return PokeReturnValue(result.done, result.records if self.return_records else None)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        arguments = self.arguments()
        try:  # one check in the worker (through poke: a subclass's own poke is honoured)
            first = self.poke(context)
        except AirflowFailException as exc:
            if self.soft_fail or self.never_fail:
                raise AirflowSkipException(f"Skipped (soft_fail/never_fail): {exc}") from exc
            raise
        if first.is_done:
            return first.xcom_value
        from airflow_provider_leap.polls import grid_time
        from airflow_provider_leap.triggers.connect import ConnectStatusTrigger

        ids, targets, fails = arguments
        now, interval = time.time(), self.poke_interval
        self.defer(
            trigger=ConnectStatusTrigger(
                leap_conn_id=self.leap_conn_id,
                ref_ids=ids,
                target_statuses=targets,
                fail_on_statuses=fails,
                poll_interval=interval,
                end_time=now + self.timeout,
                # The poke above was a poll: the next is on the epoch's grid of the interval (where
                # other sensors of this connection poll too), at least half an interval on.
                next_poll_at=grid_time(0.0, interval, now + interval / 2),
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),  # the trigger's end_time, for Airflow
        )

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (docs: Lineage): the connection's Connect records, and how many IDs."""
        from airflow.providers.openlineage.extractors import OperatorLineage

        from airflow_provider_leap.lineage import connect_input

        try:  # lineage never fails a task: without a readable connection, no environment
            base_url: str | None = self._hook().config.base_url
        except Exception:
            base_url = None
        try:
            watched: int | None = len(self.arguments()[0])
        except Exception:
            watched = None
        return OperatorLineage(inputs=[connect_input(self.leap_conn_id, base_url, ref_ids=watched)])

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Map the trigger's event to success, failure or timeout; nothing is left implicit."""
        status, message = (event or {}).get("status"), (event or {}).get("message", "")
        if status == "success" and event:
            self.log.info("All Reference IDs reached the target status: %s", message)
            if not self.return_records:
                return None
            if "records" in event:  # an event of the previous version carried them
                return event["records"]
            return self._hook().check_ref_ids(*self.arguments()).records
        if status == "timeout":
            raise AirflowSensorTimeout(f"ConnectStatusSensor timed out: {message}")
        if status == "failed":
            raise AirflowFailException(f"Leap connection(s) in a fail status: {message}")
        if status == "error":
            raise AirflowException(f"ConnectStatusSensor could not poll Leap: {message}")
        raise AirflowException(f"ConnectStatusSensor got an unexpected trigger event: {event!r}")
