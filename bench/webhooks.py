"""``python -m bench.webhooks``: the webhook receiver in a real API server, under load.

A throwaway Airflow home (SQLite by default, ``--db-url`` for another database) with one
unpaused DAG scheduled on ``leap://leap_bench/connect_session``, and ``airflow api-server`` with
``--workers`` workers on 127.0.0.1. Then, from this process:

1. throughput and latency: ``--events`` distinct events POSTed by ``--senders`` concurrent
   senders (one keep-alive session each), every answer checked (200 ``recorded``); reported:
   events per second over the whole batch, and the latency percentiles of single deliveries
   as the senders saw them (sender overhead included);
2. a retry storm: ``--storm`` events, each delivered three times, the copies shuffled among the
   senders so they race each other across the API server's workers; reported: how many were
   recorded and how many answered duplicate, and, counted in the database afterwards, how many
   asset events each event produced (must be exactly one).

Prints one JSON line (the figures of docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import requests

CONN_ID = "leap_bench"
SECRET = "bench-" + uuid.uuid4().hex
HEADER = "x-leap-webhook-secret"
CONSUMER = f'''
from datetime import datetime, timezone
from airflow.sdk import DAG, task
from airflow_provider_leap.assets import leap_asset

with DAG("bench_consumer", schedule=[leap_asset("{CONN_ID}")],
         start_date=datetime(2026, 1, 1, tzinfo=timezone.utc)) as dag:
    @task
    def nothing() -> None:
        pass

    nothing()
'''


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def event(n: int) -> dict[str, Any]:
    payload = {
        "webhook_event_type": "connect_session.authorization_updated",
        "partner_reference": f"bench-{n:07d}",
        "status": "FAILED",
        "utility_name": "PGE",
    }
    return {"webhook_event_id": str(uuid.uuid4()), "payload": payload}


def send_all(
    url: str, bodies: list[bytes], senders: int
) -> tuple[float, list[float], Counter[str]]:
    """POST every body, ``senders`` at a time; (wall seconds, latencies, outcome counts)."""
    lock = threading.Lock()
    queue = list(reversed(bodies))
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    headers = {HEADER: SECRET, "content-type": "application/json"}

    def sender() -> None:
        session = requests.Session()
        while True:
            with lock:
                if not queue:
                    return
                body = queue.pop()
            started = time.perf_counter()
            response = session.post(url, data=body, headers=headers, timeout=30)
            elapsed = time.perf_counter() - started
            outcome = str(response.status_code)
            if response.status_code == 200:
                outcome = response.json()["status"]
            with lock:
                latencies.append(elapsed)
                outcomes[outcome] += 1

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, outcomes


def summary(wall: float, latencies: list[float], count: int) -> dict[str, float]:
    ms = [1000 * s for s in latencies]
    return {
        "events_per_second": round(count / wall, 1),
        "p50_ms": round(percentile(ms, 0.50), 1),
        "p95_ms": round(percentile(ms, 0.95), 1),
        "p99_ms": round(percentile(ms, 0.99), 1),
        "max_ms": round(max(ms), 1),
        "mean_ms": round(statistics.fmean(ms), 1),
    }


def prepare(home: Path, db_url: str | None) -> dict[str, str]:
    """Environment of the API server, and this process's Airflow, for a fresh home."""
    dags = home / "dags"
    dags.mkdir(parents=True)
    (dags / "bench_consumer.py").write_text(CONSUMER, encoding="utf-8")
    connection = {
        "conn_type": "leap",
        "host": "http://127.0.0.1:9",
        "password": "unused",
        "extra": {"webhook_secret": SECRET},
    }
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url or f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LEAP__LEDGER_URL": (home / "ledger").as_uri(),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW__API__ACCESS_LOGFILE": "-",
        "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex,
        "AIRFLOW__API__SECRET_KEY": uuid.uuid4().hex,
        f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(connection),
    }
    os.environ.update(env)
    return {**os.environ, **env}


def register_consumer(home: Path) -> None:
    """Parse the consumer DAG into the database (so the asset exists) and unpause it."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(home / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"consumer DAG: {bag.import_errors}")
    sync_bag_to_db(bag, "dags-folder", None)
    with create_session() as session:
        session.get(DagModel, "bench_consumer").is_paused = False


def asset_events_per_event(event_ids: set[str]) -> Counter[int]:
    """How many asset events each of ``event_ids`` produced: {count: number of events}."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        extras = session.scalars(select(AssetEvent.extra)).all()
    per_event = Counter(x.get("webhook_event_id") for x in extras)
    return Counter(per_event.get(event_id, 0) for event_id in event_ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--storm", type=int, default=500, help="events delivered 3 times each")
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="API server workers")
    parser.add_argument("--db-url", help="SQLAlchemy URL of an empty database (default SQLite)")
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="leap-bench-webhooks-"))
    env = prepare(home, args.db_url)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    url = f"http://127.0.0.1:{port}/leap/webhooks/{CONN_ID}"
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    register_consumer(home)
    server_log = (home / "api-server.log").open("wb")
    server = subprocess.Popen(
        [
            airflow,
            "api-server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
        ],
        env=env,
        stdout=server_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/api/v2/monitor/health").ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the API server did not start: see {home}/api-server.log")
            time.sleep(0.5)
        log(f"API server up with {args.workers} worker(s); warming up")
        send_all(url, [json.dumps(event(n)).encode() for n in range(100)], args.senders)

        log(f"{args.events} distinct events, {args.senders} senders")
        bodies = [json.dumps(event(n)).encode() for n in range(args.events)]
        wall, latencies, outcomes = send_all(url, bodies, args.senders)
        if outcomes != Counter({"recorded": args.events}):
            raise RuntimeError(f"unexpected answers: {dict(outcomes)}")
        load = summary(wall, latencies, args.events)

        log(f"retry storm: {args.storm} events x 3 deliveries")
        storm = [event(n) for n in range(args.storm)]
        copies = [json.dumps(e).encode() for e in storm for _ in range(3)]
        random.Random(1).shuffle(copies)
        s_wall, s_latencies, s_outcomes = send_all(url, copies, args.senders)
        per_event = asset_events_per_event({e["webhook_event_id"] for e in storm})
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    result = {
        "database": (args.db_url or "sqlite").split(":")[0],
        "workers": args.workers,
        "senders": args.senders,
        "events": args.events,
        **load,
        "storm_events": args.storm,
        "storm_deliveries": len(copies),
        "storm_answers": dict(s_outcomes),
        "storm_asset_events_per_event": {str(k): v for k, v in sorted(per_event.items())},
        "storm": summary(s_wall, s_latencies, len(copies)),
    }
    shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(result))
    return 0 if per_event == Counter({1: args.storm}) else 1


if __name__ == "__main__":
    sys.exit(main())
