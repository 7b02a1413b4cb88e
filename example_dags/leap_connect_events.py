"""Re-engagement driven by Leap's webhooks: a stall answered about one quiet period after it
happens, instead of at the next hourly run after that.

Leap POSTs ``connect_session.*`` events to the receiver this provider mounts on Airflow's API
server (``/leap/webhooks/leap_default``), which records each one as an event of the asset
``leap://leap_default/connect_session``; this DAG is scheduled on that asset. ``what_to_answer``
takes the Reference IDs of the events that triggered the run and the moment the Connect API can
answer for them: a quiet period after the latest event, and after Leap's hourly refresh that
shows it. ``wait_for_leap`` waits for that moment in the triggerer (deferred: no worker slot).
Then the event is only a hint: ``triage`` re-reads those customers from the Connect API, and
``message_customers``/``record_in_crm`` hand whoever is due to the same policy, senders and
delivery ledger as the hourly ``leap_connect_reengagement`` (``leap_reengagement_common.py``).
Whichever DAG reaches a stall first sends; the other finds it sent. The hourly DAG stays the
reconciliation path for anything a webhook did not announce.

Run it by hand with ``{"ref_ids": [...]}`` to answer those customers now, or add
``"received_at": "<ISO time>"`` to answer as if Leap had announced them then (a run that starts
later answers as of its start). A manual run with neither has nothing to do and is skipped.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync
from airflow.sdk import DAG, Param, task
from leap_reengagement_common import POLICY, CrmSender, EmailSender, flag_for_review

from airflow_provider_leap.assets import leap_asset
from airflow_provider_leap.operators.contact import LeapContactOperator
from airflow_provider_leap.operators.triage import TriageOperator

with DAG(
    dag_id="leap_connect_events",
    description="Re-engagement one quiet period after Leap's webhooks report a customer acting",
    schedule=[leap_asset("leap_default")],
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    params={
        "ref_ids": Param(
            [],
            type="array",
            items={"type": "string"},
            description="Manual runs: the Reference IDs to answer",
        ),
        "received_at": Param(
            None,
            type=["null", "string"],
            description="Manual runs: answer as if Leap announced them then",
        ),
    },
    tags=["leap", "example"],
) as dag:

    @task(multiple_outputs=True)
    def what_to_answer(
        triggering_asset_events: Any = None, params: Any = None, dag_run: Any = None
    ) -> dict[str, Any]:
        """The Reference IDs Leap announced, and when the Connect API can answer for them."""
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from airflow_provider_leap.models import parse_timestamp
        from airflow_provider_leap.webhooks import answer_time, received_at

        announced: dict[str, datetime] = {}
        for events in (triggering_asset_events or {}).values():
            for event in events:
                ref_id = event.extra.get("ref_id")
                when = received_at(event.extra, event.timestamp)
                if ref_id and (ref_id not in announced or when > announced[ref_id]):
                    announced[ref_id] = when
        if announced:
            answer_at = max(
                answer_time(when, quiet_period=POLICY.quiet_period) for when in announced.values()
            )
        elif params and params.get("ref_ids"):
            text = params.get("received_at")
            received = parse_timestamp(text)
            if text and received is None:  # a retry would not fix it; a default would hide it
                raise AirflowFailException(f"received_at {text!r} is not an ISO-8601 time")
            announced = dict.fromkeys(params["ref_ids"], received or dag_run.run_after)
            answer_at = (
                answer_time(received, quiet_period=POLICY.quiet_period)
                if received
                else dag_run.run_after
            )
        elif triggering_asset_events:
            raise AirflowSkipException("The triggering Leap events name no Reference ID")
        else:
            raise AirflowSkipException("No triggering Leap events and no ref_ids: nothing to do")
        # A run that starts after that moment (a manual run about old events; asset events queued
        # while the scheduler was down) answers as of its start: an earlier `now` would answer a
        # step the customer is past and record the send as older than it is, so the hourly DAG's
        # next reminder would follow at once.
        asset_run = dag_run.run_type == "asset_triggered"
        started = dag_run.start_date if asset_run else dag_run.run_after
        answer_at = max(answer_at, started or answer_at)
        print(f"{len(announced)} customer(s) announced; the Connect API can answer at {answer_at}")
        return {
            "ref_ids": sorted(announced),
            "answer_at": answer_at.isoformat(),
            "active_after": (answer_at - POLICY.horizon).isoformat(),
        }

    hint = what_to_answer()
    wait = DateTimeSensorAsync(task_id="wait_for_leap", target_time=hint["answer_at"])
    triage = TriageOperator(
        task_id="triage",
        ref_ids=hint["ref_ids"],
        now=hint["answer_at"],
        active_after=hint["active_after"],
    )
    # Customers Leap announced news for since the data read was refreshed wait for a later run.
    hold = leap_asset("leap_default")
    message = LeapContactOperator(
        task_id="message_customers",
        channel="email",
        send=EmailSender(),
        policy=POLICY,
        hold_on_events=hold,
    )
    crm = LeapContactOperator(
        task_id="record_in_crm", channel="crm", send=CrmSender(), policy=POLICY, hold_on_events=hold
    )

    # As in the hourly DAG, but a run with nothing announced (all skipped) has nothing to review.
    review = flag_for_review.override(trigger_rule="none_skipped")()
    hint >> wait >> triage >> [message, crm] >> review
