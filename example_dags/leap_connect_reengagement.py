"""Hourly re-engagement over Leap Connect statuses: each stall answered once, a few reminders, then
silence, and no message twice.

Every hour (at minute 17, after Leap's hourly refresh has landed) ``triage`` sorts the customers
active recently (a last interaction, or a start for those who only opened the link) into
buckets. ``message_customers`` asks the contact policy who is due: a first message one hour after
a customer stalls, reminders 1, 3 and 7 days after the stall, then nothing; one message per
customer per run, about the most actionable of their records, with their Leap Connect link.
Every send is recorded in the delivery ledger before the next one, so a retry, a clear, a manual
run, the next hour or a second worker never repeats a message, and one refused address never
blocks the others. ``record_in_crm`` does the same for the CRM, with the contact key as the
upsert key. ``flag_for_review`` lists what a person should look at.

The policy, the senders and the review step live in ``leap_reengagement_common.py``, shared with
``leap_connect_events``, which answers Leap's webhooks sooner: both use the same channels and so
the same delivery ledger (the ``[leap] ledger_url`` option, default
``$AIRFLOW_HOME/leap_ledger``), so neither sends a message the other sent. Where the messages
and CRM records go is described there.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG, Param
from leap_reengagement_common import (
    HOURLY_SCHEDULE,
    POLICY,
    CrmSender,
    EmailSender,
    flag_for_review,
)

from airflow_provider_leap.assets import leap_asset
from airflow_provider_leap.operators.contact import LeapContactOperator
from airflow_provider_leap.operators.triage import TriageOperator

with DAG(
    dag_id="leap_connect_reengagement",
    description="Hourly triage of Leap Connect statuses and exactly-once re-engagement messages",
    schedule=HOURLY_SCHEDULE,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    # A run that cannot finish (one triggered with a future logical date waits for that date)
    # fails after 2 hours instead of holding every run after it.
    dagrun_timeout=timedelta(hours=2),
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    params={
        "lookback_days": Param(
            POLICY.horizon.days,
            type="integer",
            # A shorter window than the horizon would never see the stalls the last reminders
            # are for: they would go unsent, without a sign.
            minimum=POLICY.horizon.days,
            maximum=365,
            description="Triage connections active this recently (last interaction, else start; "
            "at least the policy's horizon, or the last reminders are never sent)",
        ),
    },
    tags=["leap", "example"],
) as dag:
    # run_after is set for every run, scheduled or manual (with or without a logical date), and
    # stays the same across retries and clears of the run.
    triage = TriageOperator(
        task_id="triage",
        now="{{ dag_run.run_after }}",
        # Active: last interaction, or start for a customer who has none (opened the link only).
        active_after=(
            "{{ (dag_run.run_after - macros.timedelta(days=params.lookback_days)).isoformat() }}"
        ),
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

    triage >> [message, crm] >> flag_for_review()
