"""LeapContactOperator: each due re-engagement message handed to your send function, once."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import msgspec
from airflow.sdk import BaseOperator, ObjectStoragePath, Variable
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_leap.contact import ContactPolicy, plan_contacts
from airflow_provider_leap.delivery import DeliveryReport, attention_item, deliver
from airflow_provider_leap.ledger import DeliveryLedger, LedgerError, LedgerView, Mark, OlderCopy
from airflow_provider_leap.models import parse_timestamp
from airflow_provider_leap.triage import BUCKETS
from airflow_provider_leap.webhooks import LATE_DATA, REFRESH_LANDED_BY, held_back, stale_from
from airflow_provider_leap.xcom_store import offloaded

if TYPE_CHECKING:
    from airflow.sdk import Asset, Context

    from airflow_provider_leap.contact import Contact

# The Variables recording, per task, the ledger its runs send with (``<dag_id>/<task_id>``), and
# per ledger, the mark its senders leave (``<ledger-id>``): see ``accept_ledger_id``.
LEDGER_VARIABLE_PREFIX = "leap_ledger:"
# How far a run's moment may be ahead of this worker's clock (skew between machines).
CLOCK_SKEW = timedelta(minutes=10)
# A run sending this long after its moment records its sends at the clock (``_sending_time``).
LATE_SEND = timedelta(minutes=30)


def _sending_time(now: datetime) -> datetime:
    """When a run's sends are recorded: its moment, or this worker's clock when the run sends
    more than ``LATE_SEND`` after it (review s11a F5): a catch-up run within ``max_run_lag``
    sends now, so the next message is spaced from now, never closer than ``min_gap``. A run on
    time keeps its moment, so its next step's run, a cadence gap later, finds the gap whole.
    With ``max_run_lag`` off (simulations, tests at past dates) the moment stands."""
    clock = datetime.now(timezone.utc)
    return clock if max_run_lag() is not None and clock - now > LATE_SEND else now


def max_run_lag() -> timedelta | None:
    """``[leap] max_run_lag`` (seconds; 0 turns the check off): how far behind the clock a run's
    ``run_after`` and its moment (the later of the two) may be and it still sends."""
    from airflow.sdk.configuration import conf

    seconds = conf.getint("leap", "max_run_lag", fallback=7200)
    return timedelta(seconds=seconds) if seconds > 0 else None


def _map_index(ti: Any) -> str:
    """``/<map_index>`` for a mapped task instance, else "": each index is a sender of its own."""
    return f"/{ti.map_index}" if ti.map_index is not None and ti.map_index >= 0 else ""


@dataclass
class _LedgerRecord:
    """A sender's Variables: the task's (``key``) names the ledger its runs send with (``here``:
    id and folder; ``before``, as found), the channel's (``channel_key``) the ledger its last
    sender used (``channel``, as found), and the ledger's (``mark_key``, one per ledger-id)
    holds the ``Mark`` every task sending with it leaves (``shared``, as found)."""

    key: str
    here: dict[str, Any]
    before: dict[str, Any] | None
    mark_key: str
    shared: dict[str, Any] | None
    channel_key: str
    channel: dict[str, Any] | None

    @staticmethod
    def _found(value: Any) -> Mark | None:
        """The mark in a value of the ledger's Variable, whichever folder left it: a copy of
        the ledger elsewhere (moved, and the old folder still used) must hold it too."""
        return Mark.parse(value.get("mark")) if isinstance(value, dict) else None

    def mark(self) -> Mark | None:
        return self._found(self.shared)

    def other_folder(self) -> str:
        """A hint when the mark was left by a run sending with another folder of the same id."""
        folder = self.shared.get("folder") if self.shared else None
        if folder in (None, self.here["folder"]):
            return ""
        return (
            f" The mark was left by a run sending with {folder}: two folders carry ledger-id "
            f"{self.here['id']} (a ledger moved, and the old folder still used?)."
        )

    def acceptance(self) -> str:
        """The ``accept_ledger_id`` that accepts an older copy: the ledger-id and a digest of
        the mark it lacks. Once a run accepts the copy, the mark changes, so the value accepts
        that one copy only."""
        mark = self.shared.get("mark") if self.shared else None
        digest = hashlib.sha256(json.dumps(mark, sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.here['id']}@{digest}"

    def keep(self, mark: Mark, *, replace: bool = False) -> None:
        """Record the ledger and ``mark``, after the sends, each Variable written when changed.
        The mark joins what other tasks left since (``Mark.join``), unless ``replace``: an older
        copy accepted on purpose starts the record afresh."""
        if self.here != self.before:
            Variable.set(self.key, self.here, serialize_json=True)
        if self.here != self.channel:
            Variable.set(self.channel_key, self.here, serialize_json=True)
        latest = Variable.get(self.mark_key, default=None, deserialize_json=True)
        joined = mark if replace else mark.join(self._found(latest))
        value = {"folder": self.here["folder"], "mark": msgspec.to_builtins(joined)}  # for people
        if value != latest:
            Variable.set(self.mark_key, value, serialize_json=True)


# What a try of a failed contact task does; after the next refresh its triage is out of date.
RETRY = (
    "A retry sends the customers not tried and tries the failed steps again, bar a step's last "
    "attempt, which waits for a later run (ContactPolicy.last_attempt_after); after Leap's next "
    "hourly refresh, clear the run from its triage task instead"
)
NEXT_RUN = (
    "A retry would have nothing to send, so this task is not retried: a later run makes each "
    "failed step's last attempt (ContactPolicy.last_attempt_after)"
)


def _before_refresh(read_at: datetime) -> bool:
    """Whether a read came before the refresh of its hour landed (``webhooks.stale_from``), with
    a minute's leeway: the hourly run reads at that very minute, on clocks seconds apart."""
    landed = stale_from(read_at + timedelta(minutes=1), margin=timedelta(0))
    return landed < read_at.replace(minute=0, second=0, microsecond=0)


def absolute_ledger_url(url: str, setting: str) -> str:
    """``url`` (``setting``'s value), unless it is a relative local path (each worker, and the
    API server's webhook receiver, would resolve it against its own current directory) or
    fsspec's ``memory://`` (kept by no process after the task)."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        why = "in the memory of one process, lost when the task ends: every run would send again"
    elif scheme and scheme != "file":
        return url  # an object store: its own checks apply when the ledger is opened
    elif scheme and parts.netloc:  # file://localhost/abs too: ObjectStoragePath reads it relative
        why = "a file URL with a host, which would be read as a relative path"
    elif not os.path.isabs(parts.path if scheme else url):
        why = "a relative path, which each worker would resolve against its own current directory"
    else:
        return url
    raise AirflowException(
        f"{setting} {url!r} is {why}: give an absolute path or a URL (file:///srv/leap-ledger, "
        "s3://conn_id@bucket/prefix)"
    )


def default_ledger_url() -> str:
    """``[leap] ledger_url``, else a folder in ``$AIRFLOW_HOME`` (fine for one machine only)."""
    from airflow.sdk.configuration import conf

    configured = conf.get("leap", "ledger_url", fallback="")
    if configured:
        return absolute_ledger_url(str(configured), "[leap] ledger_url")
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return "file://" + os.path.join(os.path.abspath(home), "leap_ledger")


class LeapContactOperator(BaseOperator):
    """Send every re-engagement message that is due, exactly once, through ``send``.

    Reads the buckets a :class:`~airflow_provider_leap.operators.triage.TriageOperator` pushed
    (``triage_task_id``) and the time it triaged at, asks ``policy`` who is due (a first contact
    one quiet period after a stall, then the cadence's reminders, at most one message per
    customer per run), and calls ``send(contact)`` for each due
    :class:`~airflow_provider_leap.contact.Contact`. Every outcome is recorded at once in the
    delivery ledger of ``channel``, so a retry, a clear, a re-run, the next hourly run or a
    second worker never sends the same contact again.

    ``send`` raises to fail one attempt (tried again by a retry of the task or the next run, up
    to ``policy.max_attempts``, the last no sooner than ``policy.last_attempt_after`` after the
    one before, then left to a person) and raises
    :class:`~airflow_provider_leap.delivery.ContactUnreachable` when it has no address for the
    customer (counted, not an attempt), and
    :class:`~airflow_provider_leap.delivery.SendUnconfirmed` when its message may have gone out
    unanswered (recorded as sent, never repeated, listed for a person). One failing customer
    never stops the others; a channel that can take nothing now does
    (:class:`~airflow_provider_leap.delivery.ChannelDown`: not an attempt; the task fails so a
    retry sends the rest), and so do sends in a row that
    find the channel in trouble (each an attempt; see
    :func:`~airflow_provider_leap.delivery.deliver`).

    :param send: called with each due ``Contact``; use ``contact.contact_key`` as the
        idempotency or upsert key downstream. A ``send`` that is also a context manager is
        entered once around the run's sends (say, to open one SMTP session); an error closing
        it is logged, not raised: every send was recorded already, so none may wait for it.
    :param channel: names this channel's ledger (``email``, ``sms``, ``crm`` ...). Templated.
    :param triage_task_id: the TriageOperator whose buckets to read. Default: the one
        TriageOperator upstream of this task (``triage`` when there are none or several), found
        when the task runs. Templated.
    :param policy: quiet period, cadence, horizon and attempts (default: 1 h, then 1, 3 and 7
        days, within 30 days, 3 attempts, the last 50 minutes or more after the one before).
    :param ledger_url: where the ledger lives: an absolute folder path or a URL (``file:///...``,
        ``s3://conn_id@bucket/prefix``). Default: the ``[leap] ledger_url`` option, else
        ``$AIRFLOW_HOME/leap_ledger``, which suits only a single-machine deployment. Templated.
    :param fail_on_errors: after trying every contact, fail the task when the delivery stopped
        (the channel down or in trouble, every send failing alike), a send raised an error that
        says the send function is broken (``delivery.CODE_ERRORS``), or a send failed whose
        next attempt a retry may make (not the step's last). With a retry when one has something
        to send (customers not tried, such failed steps), else without. A try with failed sends
        and nothing else wrong does not fail when no retry is left: the next run tries them.
        Steps given up are listed in ``attention``, not failed on. Default True.
    :param hold_on_events: the asset Leap's webhooks update, ``leap_asset("leap_default")``
        (the webhook receiver must be set up). A customer who is due but for whom an event was
        received after the hourly refresh the triaged data reflects (less a margin:
        :func:`~airflow_provider_leap.webhooks.stale_from` of the triage's time), or who
        completed their Connect session in the two hours before, after the stall the data
        shows (the data is older than assumed:
        :func:`~airflow_provider_leap.webhooks.held_back`), is held back for this run: the
        record may predate a completion or a new step. Held customers are counted (``held``)
        and logged, not recorded in the ledger; the next run decides. The asset is added to the
        task's inlets, so it is not templated: Airflow reads a task's inlets when the DAG is
        parsed. Default None: no events are read.
    :param accept_ledger_id: the ``ledger-id`` of a ledger to send with although this task's
        earlier runs recorded their sends in another one. Without it such a run fails before
        sending, since every due customer would be messaged again (a ledger moved without its
        contents, wiped, renamed, or on a worker's own disk); the error names the id. It
        accepts that one ledger only, so it is harmless to leave set. (Deleting the task's
        Variable ``leap_ledger:<dag_id>/<task_id>`` does the same.) An older copy of the same
        ledger (a backup restored, a rollback) stops the run too, as what was sent since the copy
        would go out again; the error names the ``<ledger-id>@<mark>`` value that accepts that
        copy. Templated. Default None.

    A run whose ``run_after`` and moment (the triage's ``now``) are both more than
    ``[leap] max_run_lag`` behind this worker's clock, or whose moment is ahead of it, sends
    nothing: a backfill, a catch-up or a run cleared hours later reads today's records (Leap
    keeps no history). Its due customers are counted ``not_now``; what earlier tries of the run
    gave up is reported.

    Returns counts per outcome (``due``, ``sent``, ``already_sent``, ``failed``, ...); XCom
    ``attention`` lists what a person should look at (given up, in this try or an earlier try
    of the run, unreachable, unconfirmed).
    """

    template_fields: Sequence[str] = ("channel", "triage_task_id", "ledger_url", "accept_ledger_id")
    ui_color = "#f4ece2"

    def __init__(
        self,
        *,
        send: Callable[[Contact], Any],
        channel: str = "email",
        triage_task_id: str | None = None,
        policy: ContactPolicy | None = None,
        ledger_url: str | None = None,
        fail_on_errors: bool = True,
        hold_on_events: Asset | None = None,
        accept_ledger_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if hold_on_events is not None:
            from airflow.sdk import Asset

            if not isinstance(hold_on_events, Asset):
                raise TypeError(
                    "hold_on_events must be the Asset Leap's webhooks update, e.g. "
                    f"leap_asset('leap_default'), got {hold_on_events!r}"
                )
            if hold_on_events not in self.inlets:
                self.inlets = [*self.inlets, hold_on_events]
        self.hold_on_events = hold_on_events
        if not callable(send):
            raise TypeError(f"send must be callable (it gets one Contact), got {send!r}")
        self.send = send
        self.channel = channel
        self.triage_task_id = triage_task_id or ""  # "": found when the task runs
        self.policy = policy or ContactPolicy()
        self.ledger_url = ledger_url
        self.fail_on_errors = fail_on_errors
        self.accept_ledger_id = accept_ledger_id
        self._lineage: tuple[dict[str, str], str, dict[str, int]] | None = None
        self._channel_of_its_own()

    def _channel_of_its_own(self) -> None:
        """Refuse a second task of the DAG on this channel (review s17b F4: one left on the
        default ``email`` beside the email task shared its ledger, so each customer went to one
        of the two send functions, and a ``dag.test`` showed the second sending nothing)."""
        dag = self.get_dag()
        if "{{" in self.channel or dag is None:
            return
        for task in dag.tasks:
            mine = isinstance(task, LeapContactOperator) and task.channel == self.channel
            if mine and task is not self:
                raise ValueError(
                    f"Tasks {task.task_id!r} and {self.task_id!r} of DAG {dag.dag_id!r} "
                    f"both send on channel {self.channel!r}: pass each its own channel= "
                    "('email', 'crm', 'sms' ...: it names the task's ledger). On one channel "
                    "they would split the customers between them, each customer sent by one"
                )

    def _channel_per_map_index(self) -> None:
        """Refuse a mapped task whose map indexes share one channel (``expand`` over ``send``,
        say: review s17e F4): as two tasks on one channel, they would split the customers,
        each sent by one send function. Checked when it runs: a mapped task is never built
        at parse time. Mapped over ``channel`` (or with ``expand_kwargs``), it is let be."""
        dag = self.get_dag()
        task = dag.task_dict.get(self.task_id) if dag else None
        mapped = getattr(getattr(task, "expand_input", None), "value", None)
        if isinstance(mapped, dict) and "channel" not in mapped:
            raise AirflowFailException(
                f"Task {self.task_id!r} is mapped over {', '.join(sorted(mapped))} and every "
                f"map index sends on channel {self.channel!r}: they would split the customers "
                "between them, each customer sent by one index. Nothing was sent. Map channel= "
                "too (one per index: .expand(channel=['email', 'sms'], ...)), or give each send "
                "function a task of its own"
            )

    def _triage_output(
        self, context: Context
    ) -> tuple[datetime, datetime | None, dict[str, list[Any]]]:
        """The triage's moment, when it read Leap (None from an older version), its buckets:
        of ``triage_task_id``, by default the one TriageOperator upstream (at any depth)."""
        from airflow_provider_leap.operators.triage import TriageOperator

        ti = context["ti"]
        upstream = self.get_flat_relatives(upstream=True)
        triages = sorted(task.task_id for task in upstream if isinstance(task, TriageOperator))
        if not self.triage_task_id:
            self.triage_task_id = triages[0] if len(triages) == 1 else "triage"
        summary: Any = None  # a task not upstream may not have run yet, or be of another try
        if self.triage_task_id in {task.task_id for task in upstream}:
            summary = ti.xcom_pull(task_ids=self.triage_task_id)
        when = parse_timestamp(summary.get("now")) if isinstance(summary, dict) else None
        if when is None:
            fix = (
                "set triage_task_id= to the TriageOperator upstream of this task whose buckets "
                f"to read (upstream TriageOperators: {triages})"
                if triages
                else f"no TriageOperator is upstream of it: wire `triage >> {self.task_id}`"
            )
            raise AirflowException(
                f"No triage summary from task {self.triage_task_id!r} upstream in this run: {fix}"
            )
        buckets = {
            name: ti.xcom_pull(task_ids=self.triage_task_id, key=name) or [] for name in BUCKETS
        }
        return when, parse_timestamp(summary.get("read_at")), buckets

    def _announced(self, context: Context, now: datetime) -> dict[str, datetime | None]:
        """Reference IDs whose data, read at ``now``, may predate news Leap announced since
        (``webhooks.held_back``)."""
        if self.hold_on_events is None:
            return {}
        since = stale_from(now)
        first = (since - LATE_DATA).isoformat()  # completions this early still hold
        # Airflow records an event when it is received or later: its time never filters one out.
        events = context["inlet_events"][self.hold_on_events].after(first)
        announced = held_back(((e.extra, e.timestamp) for e in events), since)
        self.log.info(
            "%d event(s) on %s since %s: %d customer(s) whose data, read at %s, may not show one",
            len(events),
            self.hold_on_events.uri,
            first,
            len(announced),
            now.astimezone(timezone.utc).isoformat(),
        )
        return announced

    def _not_now(self, now: datetime, run_after: datetime, read_at: datetime | None) -> str | None:
        """Why a run that is not for the present sends nothing, or None. Leap's API has no
        history: a backfill, a catch-up, a late retry or a run cleared hours later reads
        today's records, and sending them at the run's past moment (recorded as sent then)
        replays the cadence in minutes. The later of its ``run_after`` and its moment ``now``
        tells: a DAG may triage at its logical date (earlier), and the webhook DAG once the
        refresh shows the event (later, ``webhooks.answer_time``). And a try well after Leap's
        next refresh would answer what the customers did before it (a completion among them);
        ``CLOCK_SKEW`` after it, as the hourly run reads at the very minute a refresh lands by,
        and its tasks may run on machines whose clocks differ by seconds."""
        lag, clock = max_run_lag(), datetime.now(timezone.utc)
        if lag is None:
            return None
        if now - clock > CLOCK_SKEW:
            return (
                f"its moment {now.isoformat()} is ahead of this worker's clock "
                f"({clock.isoformat()}): was a wait marked done by hand?"
            )
        latest = max(run_after, now)
        if clock - latest > lag:  # before the refresh: clearing the run would not send either
            return (
                f"it is {(clock - latest) / timedelta(hours=1):.1f} h behind the clock "
                f"(run_after {run_after.isoformat()}, moment {now.isoformat()}; [leap] "
                f"max_run_lag {lag / timedelta(hours=1):g} h): a backfill, a catch-up, a late "
                "retry or a run cleared later; the run for the present sends what is due"
            )
        if read_at is not None and stale_from(clock - CLOCK_SKEW) > stale_from(read_at):
            return (
                f"its triage read Leap at {read_at.isoformat()}, and Leap's hourly refresh has "
                "landed since: the buckets may be out of date (a customer may have completed). "
                "Clear the run from its triage task to send now; else the next run sends"
            )
        return None

    def execute(self, context: Context) -> dict[str, int]:
        self._channel_per_map_index()
        now, read_at, buckets = self._triage_output(context)
        hold = self._announced(context, now)
        ti = context["ti"]
        url = (
            absolute_ledger_url(self.ledger_url, "ledger_url")
            if self.ledger_url
            else default_ledger_url()
        )
        run = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}{_map_index(ti)}/"  # every try's owner prefix
        try:
            ledger = DeliveryLedger(
                ObjectStoragePath(url),
                channel=self.channel,
                owner=f"{run}try {ti.try_number}",
                horizon=self.policy.horizon,
                min_gap=self.policy.min_gap,
            )
            ledger.check_writable()
            record = self._check_same_ledger(ti, ledger)
            mark = record.mark()  # checked by the load, before it compacts: see OlderCopy
            accepted = mark is not None and self.accept_ledger_id == record.acceptance()
            view = ledger.load(now, run=run, expect=None if accepted else mark)
        except OlderCopy as exc:
            raise AirflowException(self._older_copy(record, exc.why)) from exc
        except LedgerError as exc:
            raise AirflowException(str(exc)) from exc
        self._check_new_ledger(record, view)
        older = accepted and mark is not None and view.older_than(mark)
        if older:
            self.log.warning("Sending with an older copy of the %s ledger on purpose", self.channel)
        earlier = None if older else mark  # the mark passed: its attempt stands
        plan = plan_contacts(
            buckets,
            now=now,
            policy=self.policy,
            ledger=view.states,
            forgotten_before=view.forgotten_before,
            hold=hold,
            run=run,
        )
        not_now = 0
        why = self._not_now(now, context["dag_run"].run_after, read_at)
        if why:  # the report of this run's earlier tries stands; nothing is sent
            self.log.warning(
                "Channel %s: %d due customer(s) not sent, as %s", self.channel, len(plan.due), why
            )
            not_now, plan.due = len(plan.due), []
        elif plan.due and self.hold_on_events is None and read_at and _before_refresh(read_at):
            self.log.warning(
                "Channel %s: its triage read Leap at %s, before the hour's refresh lands (by "
                ":%02d, assumed): its data is up to an hour older than a read after that, and a "
                "customer who finished since may be asked to. Schedule the DAG at 17 * * * *",
                *(self.channel, read_at.isoformat(), REFRESH_LANDED_BY.seconds // 60),
            )
        if plan.held:
            self.log.warning(
                "Held back %d due customer(s) whose Connect record may predate an event Leap "
                "announced since; not recorded, the next run decides: %s%s",
                len(plan.held),
                ", ".join(plan.held[:5]),
                ", ..." if len(plan.held) > 5 else "",
            )
        self.log.info(
            "Channel %s at %s: %d customer(s) due; ledger %s holds %d stall(s)",
            self.channel,
            now.astimezone(timezone.utc).isoformat(),
            len(plan.due),
            url,
            view.stalls,
        )
        if plan.outcomes["retry_later"]:  # review s17e F3: a clear sent none of them
            self.log.warning(
                "Channel %s: %d failed step(s) whose last attempt waits until %s after the one "
                "before (ContactPolicy.last_attempt_after): not sent by this try",
                self.channel,
                plan.outcomes["retry_later"],
                self.policy.last_attempt_after,
            )
        earlier_try = "given up by an earlier try of this run (its log has the error)"
        interrupted = "a send was interrupted; not repeated"
        step_of = {offset: step for step, offset in enumerate(self.policy.offsets)}
        found = [  # what this load found for a person: pushed before sending, in case no try
            # of this run gets past the sender (a relay down, a timeout), as no later run lists it
            *(attention_item(contact, "given_up", earlier_try) for contact in plan.given_up),
            *(
                {"why": "unconfirmed", "detail": interrupted, **u, "step": step_of.get(u["offset"])}
                for u in view.unconfirmed
            ),
        ]
        if found:
            ti.xcom_push(key="attention", value=found)
        opened: contextlib.AbstractContextManager[Callable[[Contact], Any]] = (
            self.send
            if plan.due and isinstance(self.send, contextlib.AbstractContextManager)
            else contextlib.nullcontext(self.send)  # nothing due: no session to open
        )
        # Sends of this run's earlier tries: the channel took them minutes ago (see
        # ``deliver``). Not other runs' (a catch-up's, another DAG's: review s17a F1, F2).
        took = sum(1 for state in view.states.values() if (state.sent_by or "").startswith(run))
        with contextlib.ExitStack() as stack:
            send = stack.enter_context(opened)
            sent_at = _sending_time(now)
            report = deliver(
                plan.due,
                send,
                ledger,
                now=sent_at,
                max_attempts=self.policy.max_attempts,
                took_before=took,
            )
            closing = stack.pop_all()
        try:  # every send is recorded: a sender failing to close must not lose the report
            closing.close()
        except Exception as exc:
            self.log.warning("Closing the %s sender failed (sends recorded): %r", self.channel, exc)
        record.keep(ledger.mark(view, earlier), replace=bool(older))
        counts = {**plan.outcomes, **report.counts()}
        counts["unconfirmed"] += len(view.unconfirmed)  # interrupted in an earlier run
        counts["not_now"] = not_now
        attention = [*report.attention, *found]
        self.log.info(
            "Channel %s: %s", self.channel, ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        )
        for item in attention:
            self.log.warning("Needs a person: %s", item)
        ti.xcom_push(key="attention", value=attention)
        # For lineage: where the buckets read were stored, the ledger written, the counts.
        self._lineage = (offloaded(ti, self.triage_task_id, BUCKETS), str(ledger.folder), counts)
        if self.fail_on_errors:
            self._fail_on_errors(report, len(plan.due), retries_left=ti.try_number <= ti.max_tries)
        return counts

    def _fail_on_errors(self, report: DeliveryReport, due: int, *, retries_left: bool) -> None:
        """Fail the task for a stop or a bug; for failed sends a retry may try again, only while
        a retry is left (a channel failing one send in five made every hourly run red)."""
        red = report.channel_down or report.same_failure or report.code_errors
        if not red and not (report.retry_soon and retries_left):
            if report.retry_soon:
                self.log.warning(
                    "Channel %s: %d failed send(s), and no retry left: the next run tries them",
                    self.channel,
                    report.retry_soon,
                )
            return
        if report.not_tried or report.retry_soon:  # a retry has something to send
            raise AirflowException(self._failure(report, due))
        raise AirflowFailException(self._failure(report, due))

    def _failure(self, report: DeliveryReport, due: int) -> str:
        """Why the task fails after its sends, the cause first, and what a retry does."""
        done = f"of {due} due: {report.sent} sent and recorded, {report.failed} failed"
        done += f" ({report.given_up} given up: see attention)" if report.given_up else ""
        done += f", {report.not_tried} not tried" if report.not_tried else ""
        done += f", {report.unreachable} unreachable (see attention)" if report.unreachable else ""
        then = RETRY if report.not_tried or report.retry_soon else NEXT_RUN
        if report.channel_down:
            why = report.stopped or "Channel down"
            return f"Channel {self.channel} stopped ({why}: {report.channel_down}); {done}. {then}"
        charges = (
            "a send that raises is a failed attempt (its message may have gone out first), and "
            "each try charges two or three more customers"
        )
        if report.same_failure and report.same_failure == report.code_error:
            return (
                f"Is the send function of channel {self.channel} broken? Sends in a row raised "
                f"[{report.code_error}] (traceback in the log), so the run stopped; {done}. Fix "
                f"it before a retry or a clear: {charges}"
            )
        if report.same_failure:
            return (
                f"Does every send on channel {self.channel} fail alike? Sends in a row raised "
                f"[{report.same_failure}] before any went through, so the run stopped; {done}. "
                "A setting, the channel's credentials, an outage your send function reports "
                f"without its cause? Fix it before a retry or a clear: {charges}. Raise "
                "ChannelDown when the channel can take no message (nobody is charged)"
            )
        bug = (
            f"; {report.code_errors} raised errors that often mean a bug in the send function, "
            f"the first: [{report.code_error}] (traceback in the log)"
        )
        return (
            f"Sends on channel {self.channel} failed, {done}{bug if report.code_errors else ''}. "
            + then
        )

    def _check_same_ledger(self, ti: Any, ledger: DeliveryLedger) -> _LedgerRecord:
        """Fail before any send when this ledger is not the one earlier runs of the task sent
        with: to it, every customer they messaged would be due again. The one they sent with is
        recorded in an Airflow Variable per task (``leap_ledger:<dag_id>/<task_id>``, and
        ``/<map_index>`` for a mapped one; ids never hold a ``/``). Unlike an XCom, it outlives
        cleared and cleaned-up runs, and needs no ordering of past runs."""
        key = f"{LEDGER_VARIABLE_PREFIX}{ti.dag_id}/{ti.task_id}{_map_index(ti)}"
        here = {"id": ledger.identity(), "folder": str(ledger.folder)}
        before = Variable.get(key, default=None, deserialize_json=True)
        mark_key = f"{LEDGER_VARIABLE_PREFIX}{here['id']}"  # no "/": never a task's key
        shared = Variable.get(mark_key, default=None, deserialize_json=True)
        channel_key = f"{LEDGER_VARIABLE_PREFIX}channel:{self.channel}"  # ":" is in no dag_id
        channel = Variable.get(channel_key, default=None, deserialize_json=True)
        found = (mark_key, shared, channel_key, channel if isinstance(channel, dict) else None)
        if not isinstance(before, dict):
            return _LedgerRecord(key, here, None, *found)
        if before.get("id") == here["id"]:
            return _LedgerRecord(key, here, before, *found)
        if here["id"] != self.accept_ledger_id:
            raise AirflowException(
                f"The {self.channel} ledger at {here['folder']} (ledger-id {here['id']}) is "
                f"not the one this task's earlier runs recorded their sends in "
                f"({before.get('folder')}, ledger-id {before.get('id')}, Variable {key}): "
                "moved without its contents, wiped, renamed, or not shared by this worker "
                "([leap] ledger_url must be storage every worker reaches). Nothing was sent: "
                "every due customer would be messaged again. Copy the old channel folder "
                "here, or point ledger_url or channel back; to start afresh on purpose, set "
                f"accept_ledger_id={here['id']!r} on the task."
            )
        self.log.warning("Starting a new %s ledger on purpose: %s", self.channel, here)
        return _LedgerRecord(key, here, None, *found)

    def _check_new_ledger(self, record: _LedgerRecord, view: LedgerView) -> None:
        """Fail before any send when a task with no ledger on record (a DAG or task renamed,
        or new) finds an empty ledger while its channel's last sender used another one: a
        rename together with a ledger moved without its contents, or wiped, would message
        every customer again. A separate ledger on purpose is accepted by its id."""
        other = record.channel
        if record.before is not None or other is None or other.get("id") == record.here["id"]:
            return
        if view.sequence or view.stalls or record.here["id"] == self.accept_ledger_id:
            return
        raise AirflowException(
            f"The {self.channel} ledger at {record.here['folder']} (ledger-id "
            f"{record.here['id']}) is empty and this task has none on record (Variable "
            f"{record.key}), while channel {self.channel}'s last sender recorded its sends in "
            f"{other.get('folder')} (ledger-id {other.get('id')}, Variable {record.channel_key}): "
            "a DAG or task renamed while the ledger was moved without its contents or wiped? "
            "Nothing was sent: every due customer would be messaged again. Point ledger_url at "
            "that ledger, or copy its channel folder here; for a separate ledger on purpose "
            f"(other customers), set accept_ledger_id={record.here['id']!r} on the task."
        )

    def _older_copy(self, record: _LedgerRecord, why: str) -> str:
        """Why the run stops: the ledger is an older copy of the one the last run sending with it
        left (a backup restored, a rollback of the object store, a folder copied back); it lacks
        what was sent since the copy, which would go out again."""
        return (
            f"The {self.channel} ledger at {record.here['folder']} is an older copy than the one "
            f"the last run sending with it left (Variable {record.mark_key}): {why}. A backup "
            "restored, an object store rolled back, a folder copied back? Nothing was sent, and "
            "the copy was left as found: every message sent since the copy was taken would go "
            "out again. Put the newer ledger back (its channel folder as the last run left it); "
            "to send with this one on purpose, messages since the copy included, set "
            f"accept_ledger_id={record.acceptance()!r} on the task.{record.other_folder()}"
        )

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (docs: Lineage): the triage buckets read, and the channel's ledger written
        with the number of messages sent. Called by Airflow's OpenLineage provider only."""
        from airflow_provider_leap.lineage import contact_lineage

        locations, folder, counts = self._lineage or ({}, None, None)
        return contact_lineage(
            task_instance, self.triage_task_id, BUCKETS, locations, folder, self.channel, counts
        )
