"""TriageOperator: sort every Reference ID into the bucket that says what to do next."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow.sdk import BaseOperator
from airflow.sdk.definitions.xcom_arg import PlainXComArg

from airflow_provider_leap import DEFAULT_CONN_ID
from airflow_provider_leap.errors import LeapConfigError
from airflow_provider_leap.links import LeapConnectionsLink
from airflow_provider_leap.refids import ref_ids_argument
from airflow_provider_leap.timeutil import UTC, as_utc, format_timestamp
from airflow_provider_leap.triage import (
    BUCKETS,
    DEFAULT_AGREEMENT_DONE_STATUSES,
    DEFAULT_QUIET_PERIOD,
    Bucket,
    Reason,
    TriageResult,
    triage,
)
from airflow_provider_leap.xcom_store import offloaded

if TYPE_CHECKING:
    from airflow.sdk import Context


class _Read(NamedTuple):
    """What a run read, in the arguments of its lineage input (``lineage.connect_input``)."""

    base_url: str
    ref_ids: int | None  # how many were asked for; None: every customer
    started_after: datetime | None
    interacted_after: datetime | None
    active_after: datetime | None
    rows: int


class _TriageOutput(PlainXComArg):
    """``TriageOperator.output``: ``["<bucket>"]`` checks the name when the DAG is parsed, where
    a misspelt one would fail only when its task runs (Airflow's ``XComNotFound``)."""

    __slots__ = ()

    def __getitem__(self, item: str) -> Any:
        if isinstance(item, str) and item not in (*BUCKETS, self.key):
            raise ValueError(
                f"{self.operator.task_id}.output[{item!r}]: TriageOperator pushes no such XCom; "
                f"its buckets are {', '.join(BUCKETS)}"
            )
        return super().__getitem__(item)


def format_counts(result: TriageResult) -> str:
    """A short aligned table of counts per bucket, for the task log."""
    width = max(len(name) for name in result.buckets)
    rows = [(name, len(items)) for name, items in result.buckets.items()]
    rows.append(("total read", result.summary["records_read"]))
    if result.summary.get("duplicates_dropped"):
        rows.append(("duplicates", result.summary["duplicates_dropped"]))
    return "\n".join(f"{name:<{width}}  {count:>8}" for name, count in rows)


class TriageOperator(BaseOperator):
    """Read Connect records from Leap and push one XCom per triage bucket.

    Every bucket of :data:`airflow_provider_leap.triage.BUCKETS`, empty ones too, is pushed under
    its name (``triage.output["utility_error"]``; to map over one, see
    :func:`airflow_provider_leap.operators.buckets.bucket_items`), and only after the last page:
    a failure part-way pushes nothing, so a retry starts clean. Returns the summary. Large
    buckets stay out of the metadata database with Airflow's ``XComObjectStorageBackend``.

    :param leap_conn_id: Airflow connection of type ``leap``. Templated.
    :param ref_ids: only these Reference IDs: a list or comma-separated. ``None``: every
        customer; anything that renders empty is an error, never "everyone". Templated.
    :param started_after: only connections started at or after this time; a string is read as
        ISO-8601 (e.g. ``{{ data_interval_end - macros.timedelta(days=30) }}``). Templated.
    :param interacted_after: likewise, for the last interaction. Templated.
    :param active_after: only connections whose last interaction, or start when they have no
        last interaction, is at or after this time: the window an hourly re-engagement DAG
        wants (two reads, see ``LeapClient.iter_active_records``); not with
        ``interacted_after``. Templated.
    :param now: the time the triage runs for (the quiet period counts back from it): ``None``
        (wall clock), a datetime or ISO-8601 text. ``"{{ dag_run.run_after }}"`` keeps retries
        and clears at one instant and works for manual runs with no logical date. Templated.
    :param quiet_period: records touched more recently go to ``too_recent``: Leap refreshes
        hourly, so acting sooner risks stale data.
    :param agreement_done_statuses: agreement values that count as done (besides NOT_REQUIRED).
    :param page_size: records per API page (default: the connection's, else 500).
    """

    template_fields = (
        "ref_ids",
        "started_after",
        "interacted_after",
        "active_after",
        "now",
        "leap_conn_id",
    )
    template_fields_renderers = {"ref_ids": "json"}
    ui_color = "#e8f4ea"
    operator_extra_links = (LeapConnectionsLink(),)

    def __init__(
        self,
        *,
        leap_conn_id: str = DEFAULT_CONN_ID,
        ref_ids: str | Collection[str] | None = None,
        started_after: datetime | str | None = None,
        interacted_after: datetime | str | None = None,
        active_after: datetime | str | None = None,
        now: datetime | str | None = None,
        quiet_period: timedelta | float = DEFAULT_QUIET_PERIOD,
        agreement_done_statuses: Collection[str] = DEFAULT_AGREEMENT_DONE_STATUSES,
        page_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.leap_conn_id = leap_conn_id
        self.ref_ids = ref_ids
        self.started_after = started_after
        self.interacted_after = interacted_after
        if active_after is not None and interacted_after is not None:
            raise ValueError("give active_after or interacted_after, not both")
        self.active_after = active_after
        self.now = now
        if not isinstance(quiet_period, timedelta):
            quiet_period = timedelta(seconds=float(quiet_period))
        if quiet_period < timedelta(0):
            raise ValueError(f"quiet_period must not be negative, got {quiet_period!r}")
        self.quiet_period = quiet_period
        if isinstance(agreement_done_statuses, str):
            raise TypeError("agreement_done_statuses must be a collection of statuses, not a str")
        self.agreement_done_statuses = frozenset(agreement_done_statuses)
        self.page_size = page_size
        # For the lineage, asked for after execute: what was read, the result, the offloaded files.
        self._triaged: tuple[_Read, TriageResult, dict[str, str]] | None = None

    @property
    def output(self) -> PlainXComArg:
        return _TriageOutput(operator=self)

    def _time(self, name: str) -> datetime | None:
        value = getattr(self, name)
        try:
            return None if value is None else as_utc(value, name)
        except ValueError as exc:  # e.g. a template that rendered nothing
            raise LeapConfigError(f"TriageOperator: {exc}") from None

    def execute(self, context: Context) -> dict[str, Any]:
        # Imported here: the hook loads the HTTP stack, which parsing a DAG file need not pay for.
        from airflow_provider_leap.hooks.leap import LeapHook, airflow_errors

        with airflow_errors():  # arguments checked once rendered
            ref_ids = None if self.ref_ids is None else ref_ids_argument(self.ref_ids)
            names = ("started_after", "interacted_after", "active_after", "now")
            started_after, interacted_after, active_after, now = map(self._time, names)
        hook = LeapHook(leap_conn_id=self.leap_conn_id)
        read_at = format_timestamp(datetime.now(UTC))  # which hourly refresh the buckets show
        size = self.page_size
        if active_after is None:
            records = hook.iter_connect_records(
                ref_ids=ref_ids,
                started_after=started_after,
                interacted_after=interacted_after,
                page_size=size,
            )
        else:
            records = hook.iter_active_records(
                active_after, ref_ids=ref_ids, started_after=started_after, page_size=size
            )
        result = triage(
            records,
            now=now or datetime.now(UTC),
            quiet_period=self.quiet_period,
            agreement_done_statuses=self.agreement_done_statuses,
        )
        self.log.info(
            "Triaged %d Leap record(s) as of %s (quiet period %s):\n%s",
            result.summary["records_read"],
            result.summary["now"],
            self.quiet_period,
            format_counts(result),
        )
        if result.summary["malformed"]:
            self._warn_malformed(result)
        self._warn_unknown_values(result.buckets[Bucket.NEEDS_REVIEW])
        ti = context["ti"]
        for name, items in result.buckets.items():
            ti.xcom_push(key=name, value=items)
        count = None if ref_ids is None else len(ref_ids)
        rows = result.summary["records_read"]
        times = (started_after, interacted_after, active_after)
        read = _Read(hook.config.base_url, count, *times, rows)
        self._triaged = read, result, offloaded(ti, self.task_id, result.buckets, mapped=True)
        return {**result.summary, "read_at": read_at}

    def _warn_malformed(self, result: TriageResult) -> None:
        """Unreadable records go to review and the run goes on; the log says so at WARNING, since
        many at once mean Leap changed the record shape (no customer of those is acted on)."""
        items = [i for i in result.buckets[Bucket.NEEDS_REVIEW] if i["reason"] == Reason.MALFORMED]
        self.log.warning(
            "%d of %d Leap record(s) are unreadable (%s): they are in needs_review as malformed, "
            "and nobody is contacted about them. If most records are, Leap may have renamed a "
            "field: see Troubleshooting, Malformed or unexpected records",
            result.summary["malformed"],
            result.summary["records_read"],
            ", ".join(repr(i["id"] or i["ref_id"] or "no id") for i in items[:3])
            + (", ..." if len(items) > 3 else ""),
        )

    def _warn_unknown_values(self, review: list[dict[str, Any]]) -> None:
        """A status the decision table does not know sends its customers to review, uncontacted,
        while the run stays green: at WARNING, since it most likely means Leap added a value."""
        prefixes = (Reason.UNKNOWN_STATUS + ":", Reason.UNKNOWN_UTILITY_STATUS + ":")
        found = Counter(i["reason"] for i in review if i["reason"].startswith(prefixes))
        if found:
            self.log.warning(
                "%d Leap record(s) carry a status the triage table does not know (%s): they are "
                "in needs_review, and nobody is contacted about them. See Troubleshooting, "
                "Malformed or unexpected records",
                found.total(),
                ", ".join(f"{reason} x{count}" for reason, count in found.most_common()),
            )

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (docs: Lineage): the Connect records read, one output per bucket with its
        row count, and the counts per bucket and reason; on failure, the input alone."""
        from airflow.providers.openlineage.extractors import OperatorLineage

        from airflow_provider_leap.lineage import connect_input, triage_lineage

        if self._triaged is None:  # failed before a result: what it read from is still worth saying
            return OperatorLineage(inputs=[connect_input(self.leap_conn_id, None, ref_ids=None)])
        read, result, locations = self._triaged
        source = connect_input(self.leap_conn_id, **read._asdict())
        return triage_lineage(task_instance, source, result, locations)
