"""Drive the real ``leap_connect_reengagement`` DAG hour by hour over simulated days.

Run by ``test_reengagement_simulation.py`` in a process of its own (a fresh Airflow home whose
DAGs folder holds only the example DAG): the emulator plays a population of customers whose
journeys move with its clock, a real SMTP server on loopback is their inbox, and every hour at
minute 17 the DAG runs with ``dag.test()`` for that simulated hour, Leap's webhooks for every
step taken before then recorded as the receiver records them (``WebhookLog``). Along the way:
hours with no runs (the scheduler down), a send task that fails mid-batch and is retried, a run
cleared and run again, a refused address. Writes what happened as JSON for the test to check.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "example_dags" / "leap_connect_reengagement.py"
COMMON = EXAMPLE.with_name("leap_reengagement_common.py")  # what the example imports
START = datetime(2026, 3, 1, tzinfo=timezone.utc)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--down-from", type=int, default=100, help="first hour with no run")
    parser.add_argument("--down-hours", type=int, default=6)
    parser.add_argument("--fail-hour", type=int, default=30, help="a send fails mid-batch")
    parser.add_argument("--clear-hours", type=int, nargs="*", default=[31, 200])
    parser.add_argument("--refuse", nargs="*", default=[], help="Reference IDs whose mail bounces")
    return parser.parse_args(argv)


def prepare(home: Path) -> None:
    dags = home / "dags"
    dags.mkdir(parents=True)
    shutil.copy(EXAMPLE, dags / EXAMPLE.name)
    shutil.copy(COMMON, dags / COMMON.name)
    sys.path.insert(0, str(dags))  # as Airflow does for the DAGs folder
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "AIRFLOW__LEAP__LEDGER_URL": (home / "ledger").as_uri(),
            # Simulated days, months from the clock: the check that a run is for the present off.
            "AIRFLOW__LEAP__MAX_RUN_LAG": "0",
            "LEAP_OUTPUT_DIR": str(home / "output"),
        }
    )


def load_dag(path: Path):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


class WebhookLog:
    """Leap's webhooks for the steps customers take, recorded as the receiver records them.

    Each step becomes Leap's event(s) (the emulator's mapping, ``journey_events``), read from
    Leap's envelope (``read_event``) and recorded by Airflow's asset manager on
    ``leap://<conn_id>/connect_session`` (the receiver's ``_register_asset_events``), received
    when the step was taken: webhooks do not wait for the hourly refresh. The simulation's clock
    is the receiver's, so the event's time in the database is set to it too. Customers in
    ``silent`` send none (their subscription was down).
    """

    def __init__(self, population, conn_id: str = "leap_default", silent=()) -> None:  # type: ignore[no-untyped-def]
        self.uri = f"leap://{conn_id}/connect_session"
        self.steps = sorted(
            (
                (step.at, index, journey)
                for customer in population.customers
                if customer.ref_id not in silent
                for journey in customer.journeys
                for index, step in enumerate(journey.events)
            ),
            key=lambda taken: taken[0],
        )
        self.recorded = 0  # steps recorded so far, in time order

    def record(self, until: datetime) -> None:
        """Every step taken before ``until`` not yet recorded."""
        from airflow.models.asset import AssetEvent
        from airflow.utils.session import create_session
        from sqlalchemy import func, select, update

        from airflow_provider_leap.plugins.receiver import RECORDED, _register_asset_events
        from airflow_provider_leap.testing.webhooks import journey_events
        from airflow_provider_leap.webhooks import read_event

        extras = []
        while self.recorded < len(self.steps) and self.steps[self.recorded][0] < until:
            at, index, journey = self.steps[self.recorded]
            self.recorded += 1
            for payload in journey_events(journey, index):
                body = {"webhook_event_id": str(uuid.uuid4()), "payload": payload}
                extras.append(read_event(json.dumps(body).encode()).extra(at))
        if not extras:
            return
        with create_session() as session:
            last = session.scalar(select(func.max(AssetEvent.id))) or 0
        outcomes = _register_asset_events([(self.uri, extra, False) for extra in extras])
        assert set(outcomes) == {RECORDED}, outcomes
        with create_session() as session:
            rows = session.execute(
                select(AssetEvent.id, AssetEvent.extra).where(AssetEvent.id > last)
            )
            for row_id, extra in rows.all():
                when = datetime.fromisoformat(extra["event_time"])
                session.execute(
                    update(AssetEvent).where(AssetEvent.id == row_id).values(timestamp=when)
                )


def held(dagrun) -> int:  # type: ignore[no-untyped-def]
    """The customers the run's ``message_customers`` held back (its returned counts)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(
            run_id=dagrun.run_id,
            dag_ids=dagrun.dag_id,
            task_ids="message_customers",
            key="return_value",
        )
        row = session.scalars(query).first()
        return int(XComModel.deserialize_value(row)["held"]) if row is not None else 0


def task_states(dagrun) -> dict[str, list[object]]:  # type: ignore[no-untyped-def]
    from airflow.utils.session import create_session

    with create_session() as session:
        return {
            ti.task_id: [str(ti.state), ti.try_number]
            for ti in dagrun.get_task_instances(session=session)
        }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="leap-sim-"))
    prepare(home)
    from airflow.utils.db import initdb

    from airflow_provider_leap.hooks.leap import connection_json
    from airflow_provider_leap.testing import EMULATOR_API_KEY, LeapEmulator
    from airflow_provider_leap.testing.journeys import Population
    from airflow_provider_leap.testing.smtp import SmtpSink
    from airflow_provider_leap.testing.webhooks import add_consumer_dag

    initdb()
    add_consumer_dag(home / "consumer", "leap_default", "leap_events_consumer")
    population = Population(seed=args.seed, customers=args.customers, start=START, days=args.days)
    webhooks = WebhookLog(population)
    runs: list[dict[str, object]] = []
    started = time.monotonic()
    with LeapEmulator(records=[], now=START) as emulator, SmtpSink() as sink:
        emulator.play(population)
        os.environ["AIRFLOW_CONN_LEAP_DEFAULT"] = connection_json(
            emulator.url, EMULATOR_API_KEY, connect_account="sim-partner"
        )
        os.environ["AIRFLOW_CONN_SMTP_DEFAULT"] = json.dumps(sink.connection())
        os.environ["AIRFLOW_VAR_LEAP_CONTACTS"] = json.dumps(
            {c.ref_id: f"{c.ref_id}@example.com" for c in population.customers}
        )
        sink.refuse = {f"{ref_id}@example.com" for ref_id in args.refuse}
        dag = load_dag(home / "dags" / EXAMPLE.name)
        for task in dag.tasks:  # time compressed: Airflow's retries come at once
            task.retry_delay = timedelta(0)
        logging.disable(logging.WARNING)
        for hour in range(args.days * 24):
            if args.down_from <= hour < args.down_from + args.down_hours:
                continue  # the scheduler is down: no run this hour
            at = START + timedelta(hours=hour, minutes=17)
            emulator.now = at
            webhooks.record(until=at)
            sink.tag = at.isoformat()
            if hour == args.fail_hour:
                sink.fail_next = 5  # mid-batch: five sends answered 451
            reruns = 2 if hour in args.clear_hours else 1
            for attempt in range(reruns):  # the second: the run cleared and run again
                dagrun = dag.test(logical_date=at, run_after=at)
                runs.append(
                    {
                        "hour": hour,
                        "at": at.isoformat(),
                        "rerun": attempt > 0,
                        "state": str(dagrun.state),
                        "tasks": task_states(dagrun),
                        "held": held(dagrun),
                    }
                )
    output = home / "output"
    crm = output / "crm" / "records.jsonl"
    report = {
        "seconds": round(time.monotonic() - started, 1),
        "runs": runs,
        "emails": [
            {
                "to": m.to,
                "contact_key": m.contact_key,
                "at": m.tag,
                "subject": m.subject,
                "body": m.body,
            }
            for m in sink.inbox
        ],
        "crm": [json.loads(line) for line in crm.read_text().splitlines()] if crm.exists() else [],
        "review": [
            json.loads(line)
            for path in sorted((output / "review").glob("*.jsonl"))
            for line in path.read_text().splitlines()
        ],
    }
    args.out.write_text(json.dumps(report), encoding="utf-8")
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
