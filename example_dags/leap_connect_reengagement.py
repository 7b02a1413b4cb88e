"""Hourly re-engagement loop over Leap Connect statuses.

Every hour (at minute 17, after Leap's hourly refresh has landed) the DAG triages the connections
with a recent last interaction and hands each actionable bucket to a task that writes one
re-engagement message per customer, worded by bucket and reason (error codes get their own
wording). A CRM task writes one record per item. ``too_recent`` items are left alone on purpose:
the next hourly run looks at them again. ``needs_review`` items go to a person.

Where the output goes, so the DAG runs anywhere:
- messages: Airflow's email (the ``smtp_default`` connection) for customers with an address in
  the ``leap_contacts`` Variable (a JSON map ref_id -> email); otherwise JSON lines in an outbox
  folder (``LEAP_OUTPUT_DIR``, default ``$AIRFLOW_HOME/leap_output``).
- CRM: POSTed as JSON to the ``leap_crm`` HTTP connection when it exists; otherwise JSON lines.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_leap.operators.triage import TriageOperator

ACTIONABLE = (
    "not_started",
    "utility_not_connected",
    "utility_error",
    "agreements_pending",
    "other_utility",
)

# Wording per (bucket, reason); a reason's prefix (``error``, ``agreement``) is the fallback key,
# then the bucket alone. Error codes beyond USER_CANCELED are illustrative.
MESSAGES: dict[str, tuple[str, str]] = {
    "not_started": (
        "Finish connecting your utility account",
        "You opened your enrolment link but have not logged into your utility yet. "
        "It takes two minutes: pick up where you left off with the same link.",
    ),
    "utility_not_connected": (
        "One step left: connect {utilities}",
        "We still need access to {utilities}. Please use your enrolment link to log in.",
    ),
    "utility_error": (
        "We could not connect your utility account",
        "Connecting {utilities} did not finish. Please try again with your enrolment link.",
    ),
    "utility_error/error:USER_CANCELED": (
        "Did you mean to stop?",
        "You cancelled while connecting {utilities}. If that was a mistake, your link still works.",
    ),
    "utility_error/error:INVALID_CREDENTIALS": (
        "Check your utility login",
        "Your utility did not accept the username or password for {utilities}. Reset it on the "
        "utility's website, then try your enrolment link again.",
    ),
    "utility_error/error:ACCOUNT_LOCKED": (
        "Your utility account is locked",
        "{utilities} locked your online account. Unlock it with your utility, then retry.",
    ),
    "utility_error/error:MFA_TIMEOUT": (
        "Your verification code expired",
        "The verification step with {utilities} timed out. Retry and enter the code promptly.",
    ),
    "agreements_pending": (
        "Sign the last form to finish enrolling",
        "Your utility is connected. Please complete: {agreements}.",
    ),
    "other_utility": (
        "Did you connect the right utility?",
        "You connected a different utility than the one we asked for ({utilities}). If you have "
        "an account with it, please connect it too; otherwise no action is needed.",
    ),
}


def render_message(bucket: str, item: dict[str, Any]) -> dict[str, str]:
    """Subject and body for one item: the most specific template of (bucket, reason) wins."""
    reason = str(item.get("reason", ""))
    keys = (f"{bucket}/{reason}", f"{bucket}/{reason.split(':')[0]}", bucket)
    subject, body = next(MESSAGES[k] for k in keys if k in MESSAGES)
    names = list(item.get("utilities") or item.get("error_codes") or [])
    values = {
        "utilities": ", ".join(names) or "your utility",
        "agreements": ", ".join(item.get("agreements") or []) or "the remaining forms",
    }
    return {"subject": subject.format(**values), "body": body.format(**values)}


def output_dir(run_id: str, kind: str) -> Path:
    base = os.environ.get("LEAP_OUTPUT_DIR") or os.path.join(
        os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "leap_output"
    )
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    path = Path(base) / kind / safe
    path.mkdir(parents=True, exist_ok=True)
    return path


def _connection_exists(conn_id: str) -> bool:
    from airflow.sdk import BaseHook

    try:
        BaseHook.get_connection(conn_id)
    except Exception:  # not defined (the SDK raises its own not-found error)
        return False
    return True


with DAG(
    dag_id="leap_connect_reengagement",
    description="Hourly triage of Leap Connect statuses and re-engagement messages",
    schedule="17 * * * *",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    params={
        "lookback_days": Param(
            30,
            type="integer",
            minimum=1,
            maximum=365,
            description="Triage connections with a last interaction this recent",
        ),
    },
    tags=["leap", "example"],
) as dag:
    triage = TriageOperator(
        task_id="triage",
        interacted_after=(
            "{{ ((data_interval_end or dag_run.run_after)"
            " - macros.timedelta(days=params.lookback_days)).isoformat() }}"
        ),
    )

    @task
    def send_messages(bucket: str, items: Any, run_id: str | None = None) -> dict[str, Any]:
        """Render one message per item; email when possible, else write it to the outbox."""
        from airflow.sdk import Variable

        items = items or []
        contacts = Variable.get("leap_contacts", default={}, deserialize_json=True)
        smtp = _connection_exists("smtp_default")
        emailed = 0
        outbox = output_dir(str(run_id), "outbox") / f"{bucket}.jsonl"
        with outbox.open("w", encoding="utf-8") as handle:
            for item in items:
                message = {
                    "ref_id": item["ref_id"],
                    "reason": item["reason"],
                    **render_message(bucket, item),
                }
                address = contacts.get(item["ref_id"]) if smtp else None
                if address:
                    from airflow.providers.smtp.hooks.smtp import SmtpHook

                    with SmtpHook() as hook:
                        hook.send_email_smtp(
                            to=address, subject=message["subject"], html_content=message["body"]
                        )
                    emailed += 1
                else:
                    handle.write(json.dumps(message) + "\n")
        print(f"{bucket}: {len(items)} message(s), {emailed} emailed, the rest in {outbox}")
        return {"bucket": bucket, "messages": len(items), "emailed": emailed, "outbox": str(outbox)}

    @task
    def record_in_crm(buckets: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
        """One CRM record per item; POST to the ``leap_crm`` connection, else JSON lines."""
        rows = [
            {
                "ref_id": item["ref_id"],
                "leap_id": item["id"],
                "bucket": bucket,
                "reason": item["reason"],
                "last_interaction": item["last_interaction"],
            }
            for bucket, value in buckets.items()
            for item in value or []
        ]
        if _connection_exists("leap_crm"):
            import requests
            from airflow.sdk import BaseHook

            conn = BaseHook.get_connection("leap_crm")
            response = requests.post(str(conn.host), json=rows, timeout=30)
            response.raise_for_status()
            target = str(conn.host)
        else:
            path = output_dir(str(run_id), "crm") / "records.jsonl"
            path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
            target = str(path)
        print(f"CRM: {len(rows)} record(s) -> {target}")
        return {"records": len(rows), "target": target}

    @task
    def flag_for_review(items: Any, run_id: str | None = None) -> dict[str, Any]:
        """``needs_review``: a list a person works through, one line per item with its reason."""
        items = items or []
        path = output_dir(str(run_id), "review") / "needs_review.jsonl"
        path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
        print(f"needs_review: {len(items)} item(s) for a person -> {path}")
        return {"items": len(items), "path": str(path)}

    for name in ACTIONABLE:
        send_messages.override(task_id=f"message_{name}")(name, triage.output[name])
    record_in_crm(
        {name: triage.output[name] for name in ("completed", *ACTIONABLE, "needs_review")}
    )
    flag_for_review(triage.output["needs_review"])
