"""Re-engagement page: a DAG of your own with the contact policy and the delivery ledger."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG

from airflow_provider_leap.assets import leap_asset
from airflow_provider_leap.contact import Contact, ContactPolicy
from airflow_provider_leap.delivery import ContactUnreachable
from airflow_provider_leap.operators.contact import LeapContactOperator
from airflow_provider_leap.operators.triage import TriageOperator

ADDRESSES = {"cust-000123": "pat@example.com"}  # your contact store


# --8<-- [start:dag]
def send_sms(contact: Contact) -> None:
    """Your channel: raise to fail this attempt; ContactUnreachable when you have no number."""
    number = ADDRESSES.get(contact.ref_id)
    if number is None:
        raise ContactUnreachable(f"no phone number for {contact.ref_id}")
    print(f"SMS to {number}: step {contact.step} about {contact.bucket} ({contact.contact_key})")


with DAG(
    dag_id="my_leap_sms",
    schedule="17 * * * *",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
) as dag:
    triage = TriageOperator(
        task_id="triage",
        now="{{ dag_run.run_after }}",  # every run has it, manual runs with no logical date too
        active_after="{{ (dag_run.run_after - macros.timedelta(days=30)).isoformat() }}",
    )
    sms = LeapContactOperator(
        task_id="sms_customers",
        send=send_sms,
        channel="sms",  # its own ledger: an SMS and an email of the same step are two messages
        policy=ContactPolicy(
            quiet_period=timedelta(hours=2),
            cadence=(timedelta(days=2), timedelta(days=5)),  # two reminders, then silence
            horizon=timedelta(days=30),
            max_attempts=3,
        ),
        ledger_url="s3://aws_default@my-bucket/leap-ledger",  # shared by every worker
        hold_on_events=leap_asset("leap_default"),  # with Leap's webhooks set up (see below)
    )
    triage >> sms
# --8<-- [end:dag]
