"""Run ``leap_connect_reengagement`` once, for real, against the local Leap emulator.

A throwaway Airflow home (SQLite) under ``.demo/``, the emulator on loopback, the connection
from ``AIRFLOW_CONN_LEAP_DEFAULT``, then ``dag.test()``: the same code path as a scheduled run,
in one process. Prints the count per bucket, sample items, and where messages and CRM records
went.
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
        }
    )


def load_dag(dag_id: str):  # type: ignore[no-untyped-def]
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
        os.environ["AIRFLOW_CONN_LEAP_DEFAULT"] = connection_json(emulator.url, EMULATOR_API_KEY)
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
    return report(dag.dag_id, dagrun, demo_dir, requests_served)


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
    print("\nWhere things went:")
    for (task_id, key), value in sorted(xcoms.items()):
        if key == "return_value" and task_id != "triage" and isinstance(value, dict):
            print(f"  {task_id:<32} {json.dumps(value)}")
    outboxes = sorted((demo_dir / "output" / "outbox").glob("*/utility_error.jsonl"))
    outbox = outboxes[0] if outboxes else None
    if outbox:
        print("\nA rendered message (utility_error):")
        print("  " + _short(outbox.read_text(encoding="utf-8").splitlines()[0], 300))
    print(f"\nAll output under {demo_dir}")
    return 0 if str(dagrun.state).endswith("success") else 1


def _short(text: str, limit: int = 110) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
