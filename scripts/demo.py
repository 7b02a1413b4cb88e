"""Run ``leap_connect_reengagement`` for real against the local Leap emulator, twice.

A throwaway Airflow home (SQLite), delivery ledger and outbox under ``.demo/``, the emulator on
loopback, the connection from ``AIRFLOW_CONN_LEAP_DEFAULT``, then ``dag.test()``: the same code
path as a scheduled run, in one process. Prints the count per bucket, what the customers were
sent, and then runs the DAG again at once, as a manual run with no logical date: on unchanged
data that second run must send nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAGS = ROOT / "example_dags"


def prepare_airflow_home(demo_dir: Path) -> None:
    shutil.rmtree(demo_dir, ignore_errors=True)
    home = demo_dir / "airflow-home"
    home.mkdir(parents=True)
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "LEAP_OUTPUT_DIR": str(demo_dir / "output"),
            "AIRFLOW__LEAP__LEDGER_URL": (demo_dir / "ledger").as_uri(),
        }
    )


def load_dag(dag_id: str):  # type: ignore[no-untyped-def]
    if str(DAGS) not in sys.path:  # the examples import their shared module, as Airflow allows
        sys.path.insert(0, str(DAGS))
    spec = importlib.util.spec_from_file_location(dag_id, DAGS / f"{dag_id}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=2000, help="emulated connections")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=ROOT / ".demo", help="output folder")
    parser.add_argument(
        "--dag",
        default="leap_connect_reengagement",
        choices=["leap_connect_reengagement", "leap_connection_watch"],
        help="which example DAG to run (the watch waits on three COMPLETED Reference IDs)",
    )
    args = parser.parse_args()
    demo_dir = args.dir.resolve()
    prepare_airflow_home(demo_dir)

    from airflow_provider_leap.hooks.leap import connection_json
    from airflow_provider_leap.testing import EMULATOR_API_KEY, LeapEmulator

    with LeapEmulator(seed=args.seed, records=args.records) as emulator:
        os.environ["AIRFLOW_CONN_LEAP_DEFAULT"] = connection_json(
            emulator.url, EMULATOR_API_KEY, connect_account="demo-partner"
        )
        print(f"Leap emulator: {emulator.url} ({args.records} connections, seed {args.seed})")
        from airflow.utils.db import initdb

        initdb()
        dag = load_dag(args.dag)
        conf = {}
        if args.dag == "leap_connection_watch":
            done = [r["ref_id"] for r in emulator.records if r["connection_status"] == "COMPLETED"]
            conf = {"ref_ids": done[:3]}
        print(f"Running {dag.dag_id} with dag.test() {json.dumps(conf) if conf else ''}...")
        logging.disable(logging.INFO)
        dagrun = dag.test(run_conf=conf or None)
        logging.disable(logging.NOTSET)
        requests_served = len(emulator.requests)
        status = report(dag.dag_id, dagrun, demo_dir, requests_served)
        if args.dag == "leap_connect_reengagement" and status == 0:
            status = second_run(dag, demo_dir, dagrun.run_after)
    return status


def outbox_lines(demo_dir: Path) -> list[dict[str, object]]:
    path = demo_dir / "output" / "outbox" / "messages.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def second_run(dag, demo_dir: Path, run_after) -> int:  # type: ignore[no-untyped-def]
    """The same DAG again, manual with no logical date, for the same moment: nothing is due.

    Same moment: with the wall clock, a record that was 59.9 minutes old in the first run may
    legitimately reach its quiet period in the second.
    """
    before = len(outbox_lines(demo_dir))
    print("\nRunning it again at once (a manual run with no logical date, same data)...")
    logging.disable(logging.INFO)
    dagrun = dag.test(logical_date=None, run_after=run_after)
    logging.disable(logging.NOTSET)
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=dagrun.run_id, dag_ids=dag.dag_id)).all()
        counts = {
            r.task_id: XComModel.deserialize_value(r) for r in rows if r.key == "return_value"
        }
    sent = len(outbox_lines(demo_dir)) - before
    email = counts.get("message_customers") or {}
    print(f"DAG run {dagrun.run_id}: {dagrun.state}")
    print(
        f"  messages sent: {sent}   (already sent: {email.get('already_sent', 0)}, every step "
        f"sent: {email.get('finished', 0)}, waiting for their next step: {email.get('waiting', 0)})"
    )
    ok = str(dagrun.state).endswith("success") and sent == 0
    print("  the second run sent nothing: " + ("yes" if ok else "NO"))
    return 0 if ok else 1


def report(dag_id: str, dagrun, demo_dir: Path, requests_served: int) -> int:  # type: ignore[no-untyped-def]
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=dagrun.run_id, dag_ids=dag_id)).all()
        xcoms = {(r.task_id, r.key): XComModel.deserialize_value(r) for r in rows}
        states = {ti.task_id: ti.state for ti in dagrun.get_task_instances(session=session)}
    summary = xcoms.get(("triage", "return_value"), {})
    print("\n" + "=" * 72)
    print(f"DAG run {dagrun.run_id}: {dagrun.state}   ({requests_served} request(s) to Leap)")
    for task_id, state in sorted(states.items()):
        print(f"  {task_id:<32} {state}")
    if not summary:
        for (task_id, key), value in sorted(xcoms.items()):
            if key == "return_value":
                print(f"  {task_id:<32} -> {_short(json.dumps(value), 200)}")
        return 0 if str(dagrun.state).endswith("success") else 1
    print("\nTriage buckets (XCom key -> items):")
    for bucket, count in summary.get("counts", {}).items():
        items = xcoms.get(("triage", bucket)) or []
        sample = _short(json.dumps(items[0])) if items else ""
        print(f"  {bucket:<24} {count:>6}   {sample}")
    print(f"  {'records read':<24} {summary.get('records_read', 0):>6}")
    print("\nWhat the customers were sent (channel -> outcome counts):")
    for task_id in ("message_customers", "record_in_crm"):
        counts = xcoms.get((task_id, "return_value")) or {}
        shown = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        print(f"  {task_id:<24} {shown}")
    lines = outbox_lines(demo_dir)
    if lines:
        print(f"\n{len(lines)} message(s) in the outbox; one of them:")
        print("  " + _short(json.dumps(lines[0]), 400))
    print(f"\nAll output under {demo_dir}")
    return 0 if str(dagrun.state).endswith("success") else 1


def _short(text: str, limit: int = 110) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
