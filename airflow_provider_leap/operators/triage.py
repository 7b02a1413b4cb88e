"""TriageOperator: sort every Reference ID into the bucket that says what to do next."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_leap.hooks.leap import LeapHook
from airflow_provider_leap.links import LeapConnectionsLink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_leap.triage import TriageResult


def _seconds(value: timedelta | float | int) -> timedelta:
    return value if isinstance(value, timedelta) else timedelta(seconds=float(value))


def format_counts(result: TriageResult) -> str:
    """A short aligned table of counts per bucket, for the task log."""
    width = max(len(name) for name in result.buckets)
    lines = [f"{name:<{width}}  {len(items):>8}" for name, items in result.buckets.items()]
    summary = result.summary
    lines.append(f"{'total read':<{width}}  {summary['records_read']:>8}")
    if summary.get("duplicates_dropped"):
        lines.append(f"{'duplicates':<{width}}  {summary['duplicates_dropped']:>8}")
    return "\n".join(lines)


class TriageOperator(BaseOperator):
    """Read Connect records from Leap and push one XCom per triage bucket.

    Every bucket of :data:`airflow_provider_leap.triage.BUCKETS` is pushed under an XCom key equal
    to its name, empty buckets too, so ``triage.output["utility_error"]`` feeds a downstream task
    that takes the whole list. Airflow maps (``.expand``) only over return values: pass the bucket
    through :func:`airflow_provider_leap.operators.buckets.bucket_items` first to map one task
    instance per item. The return value
    (``return_value``) is the summary. Records are streamed from the API and triaged as they
    arrive; buckets are pushed only after the last page was read, so a failure part-way pushes
    nothing and a retry starts clean.

    Large buckets: with ``bucket_storage`` (an ``ObjectStoragePath`` or URL such as
    ``file:///data/leap`` or ``s3://bucket/leap``, with ``bucket_storage_conn_id`` when it needs
    credentials) a bucket with more than ``offload_threshold`` items is written there as JSON lines
    and its XCom holds the file's URL instead of the list;
    :func:`airflow_provider_leap.storage.load_bucket` reads either form.

    :param leap_conn_id: Airflow connection of type ``leap``.
    :param ref_ids: only these Reference IDs (default: all). Templated.
    :param started_after: only connections started at or after this time. Templated; a string is
        parsed as ISO-8601 (e.g. ``{{ dag_run.run_after - macros.timedelta(days=30) }}``).
    :param interacted_after: only connections whose last interaction is at or after this time.
        Templated, like ``started_after``.
    :param quiet_period: records touched more recently than this go to ``too_recent``: Leap
        refreshes hourly, so acting sooner risks acting on stale data. Default one hour.
    :param agreement_done_statuses: agreement values that count as done (besides NOT_REQUIRED).
    :param page_size: records per API page (default: the connection's, else 500).
    :param now: the time to triage at (quiet period, and the ``now`` of the summary that a
        downstream ``LeapContactOperator`` plans with). Default: the clock when the task runs.
        Templated: ``"{{ dag_run.run_after }}"`` makes retries and clears of a run triage at the
        same instant, and works for manual runs with no logical date.
    """

    template_fields: Sequence[str] = ("ref_ids", "started_after", "interacted_after", "now")
    template_fields_renderers = {"ref_ids": "json"}
    ui_color = "#e8f4ea"
    operator_extra_links = (LeapConnectionsLink(),)

    def __init__(
        self,
        *,
        leap_conn_id: str = LeapHook.default_conn_name,
        ref_ids: str | Collection[str] | None = None,
        started_after: datetime | str | None = None,
        interacted_after: datetime | str | None = None,
        quiet_period: timedelta | float = timedelta(hours=1),
        agreement_done_statuses: Collection[str] | None = None,
        page_size: int | None = None,
        bucket_storage: Any = None,
        bucket_storage_conn_id: str | None = None,
        offload_threshold: int = 0,
        now: datetime | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.leap_conn_id = leap_conn_id
        self.ref_ids = ref_ids
        self.started_after = started_after
        self.interacted_after = interacted_after
        self.quiet_period = _seconds(quiet_period)
        if self.quiet_period < timedelta(0):
            raise ValueError(f"quiet_period must not be negative, got {quiet_period!r}")
        self.agreement_done_statuses = (
            frozenset(agreement_done_statuses) if agreement_done_statuses is not None else None
        )
        self.page_size = page_size
        self.bucket_storage = bucket_storage
        self.bucket_storage_conn_id = bucket_storage_conn_id
        if offload_threshold < 0:
            raise ValueError("offload_threshold must be >= 0")
        self.offload_threshold = offload_threshold
        self.now = now

    def _now(self) -> datetime:
        from airflow_provider_leap.models import parse_timestamp

        if self.now is None or self.now == "":
            return datetime.now(timezone.utc)
        when = self.now if isinstance(self.now, datetime) else parse_timestamp(str(self.now))
        if when is None:
            raise ValueError(f"now={self.now!r} is not an ISO-8601 timestamp")
        return when if when.tzinfo else when.replace(tzinfo=timezone.utc)

    def _ref_ids(self) -> list[str] | None:
        from airflow_provider_leap.watch import normalise_ref_ids

        if self.ref_ids is None or self.ref_ids == "":
            return None
        return normalise_ref_ids(self.ref_ids)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_leap.triage import DEFAULT_AGREEMENT_DONE_STATUSES, triage

        hook = LeapHook(leap_conn_id=self.leap_conn_id)
        now = self._now()
        records = hook.iter_connections(
            ref_ids=self._ref_ids(),
            started_after=self.started_after or None,
            interacted_after=self.interacted_after or None,
            page_size=self.page_size,
        )
        result = triage(
            records,
            now=now,
            quiet_period=self.quiet_period,
            agreement_done_statuses=DEFAULT_AGREEMENT_DONE_STATUSES
            if self.agreement_done_statuses is None
            else self.agreement_done_statuses,
        )
        self.log.info(
            "Triaged %d Leap connection(s) at %s (quiet period %s):\n%s",
            result.summary["records_read"],
            now.isoformat(),
            self.quiet_period,
            format_counts(result),
        )
        values = self._xcom_values(result, context)
        ti = context["ti"]
        for name, value in values.items():
            ti.xcom_push(key=name, value=value)
        return result.summary

    def _xcom_values(self, result: TriageResult, context: Context) -> dict[str, Any]:
        """Each bucket's XCom value: the list itself, or the URL of the file it was written to."""
        if self.bucket_storage is None:
            return dict(result.buckets)
        from airflow_provider_leap.storage import write_bucket

        folder = _run_folder(self.bucket_storage, self.bucket_storage_conn_id, context)
        values: dict[str, Any] = {}
        for name, items in result.buckets.items():
            if len(items) > self.offload_threshold:
                values[name] = write_bucket(folder, name, items)
                self.log.info("Bucket %s: %d item(s) written to %s", name, len(items), values[name])
            else:
                values[name] = items
        return values


def _run_folder(base: Any, conn_id: str | None, context: Context) -> Any:
    from airflow.sdk import ObjectStoragePath

    root = base if isinstance(base, ObjectStoragePath) else ObjectStoragePath(base, conn_id=conn_id)
    ti = context["ti"]
    safe_run = "".join(c if c.isalnum() or c in "-_." else "_" for c in ti.run_id)
    return root / ti.dag_id / safe_run / ti.task_id
