"""``python -m bench.webhooks``: the webhook receiver in a real API server, under load.

A throwaway Airflow home (SQLite by default, ``--db-url`` for another database) with one
unpaused DAG scheduled on ``leap://leap_bench/connect_session``, and ``airflow api-server`` with
``--workers`` workers on 127.0.0.1. Then, from this process:

1. throughput and latency: ``--events`` distinct events POSTed by ``--senders`` concurrent
   senders (one keep-alive session each), every answer checked (200 ``accepted``); reported:
   events per second over the whole batch, the latency percentiles of single deliveries as
   the senders saw them (sender overhead included), and when the last of them was recorded as
   an asset event (recording runs behind the answers, in batches);
2. a retry storm: ``--storm`` events, each delivered three times, the copies shuffled among the
   senders so they race each other across the API server's workers; reported: how many were
   accepted and how many answered duplicate, and, counted in the database once recording has
   settled, how many asset events each event produced (must be exactly one).

Prints one JSON line (the figures of docs/performance.md).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from airflow_provider_leap.testing.webhooks import add_consumer_dag

CONN_ID = "leap_bench"
SECRET = "bench-" + uuid.uuid4().hex
HEADER = "x-leap-webhook-secret"


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
    url: str, bodies: list[bytes], senders: int, rate: float | None = None
) -> tuple[float, list[float], Counter[str]]:
    """POST every body, ``senders`` at a time; (wall seconds, latencies, outcome counts).

    Without ``rate`` each sender sends its next body as soon as the last was answered (the
    server saturated); with it, body ``i`` leaves at ``i / rate`` seconds (an open loop).
    """
    lock = threading.Lock()
    queue = list(enumerate(bodies))[::-1]
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    headers = {HEADER: SECRET, "content-type": "application/json"}
    begin = time.perf_counter() + 0.2

    def sender() -> None:
        session = requests.Session()
        while True:
            with lock:
                if not queue:
                    return
                index, body = queue.pop()
            if rate:
                time.sleep(max(0.0, begin + index / rate - time.perf_counter()))
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
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - begin, latencies, outcomes


@contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (run as the ``postgres`` user when root)."""
    bindir = next(Path("/usr/lib/postgresql").glob("*/bin"), None)
    initdb = str(bindir / "initdb") if bindir else "initdb"
    pg_ctl = str(bindir / "pg_ctl") if bindir else "pg_ctl"
    data = Path(tempfile.mkdtemp(prefix="leap-bench-pg-"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(data, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    run = functools.partial(subprocess.run, check=True, capture_output=True)
    run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust"])
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=on"
    run([*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(data / "log"), "-w", "start"])
    try:
        url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
        yield url
    finally:
        run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(data, ignore_errors=True)


def server_cpu(pgid: int) -> float:
    """CPU seconds used so far by the API server's processes (its process group), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields: state ppid pgrp ... utime (11) stime (12)
            total += int(fields[11]) + int(fields[12])
    return total / ticks


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


def asset_events_per_event(
    event_ids: set[str], settle: float = 300.0
) -> tuple[Counter[int], float]:
    """How many asset events each of ``event_ids`` produced, {count: number of events}, once
    every one has at least one and nothing changed for two seconds; and the monotonic time at
    which every one first had one."""
    deadline = time.monotonic() + settle
    last: Counter[int] | None = None
    complete = float("nan")
    while True:
        counts = _asset_events_per_event(event_ids)
        if 0 not in counts and complete != complete:
            complete = time.monotonic()
        if (counts == last and 0 not in counts) or time.monotonic() > deadline:
            return counts, complete
        last = counts
        time.sleep(0.5 if complete != complete else 2)


def _asset_events_per_event(event_ids: set[str]) -> Counter[int]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        extras = session.scalars(select(AssetEvent.extra)).all()
    per_event = Counter(x.get("webhook_event_id") for x in extras)
    return Counter(per_event.get(event_id, 0) for event_id in event_ids)


def start_server(
    env: dict[str, str], home: Path, port: int, workers: int
) -> subprocess.Popen[bytes]:
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    add_consumer_dag(home / "dags", CONN_ID, "bench_consumer")
    argv = [airflow, "api-server", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        [*argv, "--workers", str(workers)],
        env=env,
        stdout=(home / "api-server.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=5).ok:
                return server
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            raise RuntimeError(f"the API server did not start: see {home}/api-server.log")
        time.sleep(0.5)


def measure(url: str, args: argparse.Namespace, pgid: int) -> dict[str, Any]:
    log(f"warming up; then {args.events} distinct events, {args.senders} senders, saturated")
    send_all(url, [json.dumps(event(n)).encode() for n in range(100)], args.senders)
    batch = [event(n) for n in range(args.events)]
    cpu = server_cpu(pgid)
    started = time.monotonic()
    wall, latencies, outcomes = send_all(url, [json.dumps(e).encode() for e in batch], args.senders)
    if outcomes != Counter({"accepted": args.events}):
        raise RuntimeError(f"unexpected answers: {dict(outcomes)}")
    result: dict[str, Any] = {"saturated": summary(wall, latencies, args.events)}
    recorded, complete = asset_events_per_event({e["webhook_event_id"] for e in batch}, 900)
    if recorded != Counter({1: args.events}):
        raise RuntimeError(f"asset events per event: {dict(recorded)}")
    result["saturated"]["all_recorded_after_s"] = round(complete - started, 1)
    result["saturated"]["recorded_per_second"] = round(args.events / (complete - started), 1)
    # Accepting and recording, all of it: the figure the machine's other load does not change.
    result["saturated"]["server_cpu_ms_per_event"] = round(
        1000 * (server_cpu(pgid) - cpu) / args.events, 1
    )

    log(f"{args.paced} events at {args.rate}/s from {args.senders} senders")
    paced = [json.dumps(event(n)).encode() for n in range(args.paced)]
    wall, latencies, outcomes = send_all(url, paced, args.senders, rate=args.rate)
    if outcomes != Counter({"accepted": args.paced}):
        raise RuntimeError(f"unexpected answers: {dict(outcomes)}")
    result["paced"] = {"rate": args.rate, **summary(wall, latencies, args.paced)}

    log(f"retry storm: {args.storm} events x 3 deliveries")
    storm = [event(n) for n in range(args.storm)]
    copies = [json.dumps(e).encode() for e in storm for _ in range(3)]
    random.Random(1).shuffle(copies)
    wall, latencies, outcomes = send_all(url, copies, args.senders)
    per_event, _ = asset_events_per_event({e["webhook_event_id"] for e in storm}, 900)
    result["storm"] = {
        "events": args.storm,
        "deliveries": len(copies),
        "answers": dict(outcomes),
        "asset_events_per_event": {str(k): v for k, v in sorted(per_event.items())},
        **summary(wall, latencies, len(copies)),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="saturated phase")
    parser.add_argument("--paced", type=int, default=1000, help="open-loop phase")
    parser.add_argument("--rate", type=float, default=50.0, help="events/s of the paced phase")
    parser.add_argument("--storm", type=int, default=500, help="events delivered 3 times each")
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="API server workers")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL")
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="leap-bench-webhooks-"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    url = f"http://127.0.0.1:{port}/leap/webhooks/{CONN_ID}"
    load_before = os.getloadavg()[0]
    with postgres() if args.postgres else contextlib.nullcontext(None) as db_url:
        env = prepare(home, db_url)
        server = start_server(env, home, port, args.workers)
        try:
            result = measure(url, args, server.pid)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
    result = {
        "database": "postgresql" if args.postgres else "sqlite",
        "workers": args.workers,
        "senders": args.senders,
        "cpus": os.cpu_count(),
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        **result,
    }
    shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(result))
    return 0 if result["storm"]["asset_events_per_event"] == {"1": args.storm} else 1


if __name__ == "__main__":
    sys.exit(main())
