"""One measurement per fresh process: ``python -m bench.worker KIND ...`` prints one JSON line.

A fresh process per run makes peak RSS (``ru_maxrss``) mean "this run's peak", keeps the peer's
gigabytes of dicts from fragmenting the heap the hook runs in, and imports Airflow only for the
runs that use it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import requests

PAGE_SIZE = "500"


def peak_rss_kb() -> int:
    """Peak resident set of this process so far, in KiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def current_rss_kb() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _params(token: str | None) -> list[tuple[str, str]]:
    params = [("page-size", PAGE_SIZE)]
    if token is not None:
        params.append(("page-token", token))
    return params


def page_floor(url: str, key: str) -> Callable[[], int]:
    """The floor: one keep-alive session, ``json.loads`` each page, follow the token."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"

    def run() -> int:
        count = 0
        token = None
        while True:
            response = session.get(url, params=_params(token))
            response.raise_for_status()
            page = json.loads(response.content)
            count += len(page["connections"])
            token = page.get("nextPageToken")
            if not token:
                return count

    return run


def page_peer(url: str, key: str) -> Callable[[], int]:
    """The peer: what a DAG author writes by hand, ``requests.get`` per page into one list."""
    headers = {"Authorization": f"Bearer {key}"}
    kept: list[list[dict[str, Any]]] = []

    def run() -> int:
        records: list[dict[str, Any]] = []
        token = None
        while True:
            response = requests.get(url, headers=headers, params=_params(token), timeout=30)
            response.raise_for_status()
            page = response.json()
            records.extend(page["connections"])
            token = page.get("nextPageToken")
            if not token:
                kept.append(records)  # alive until the peak RSS is read, as in a real task
                return len(records)

    return run


def page_hook(url: str, key: str) -> Callable[[], int]:
    """The provider: ``LeapHook.iter_connect_records()``, typed records consumed one at a time."""
    from airflow_provider_leap.hooks.leap import LeapHook, connection_json

    parts = urlsplit(url)
    origin, path = f"{parts.scheme}://{parts.netloc}", parts.path
    os.environ["AIRFLOW_CONN_LEAP_BENCH"] = connection_json(origin, key, connections_path=path)
    hook = LeapHook(leap_conn_id="leap_bench")
    hook.client  # noqa: B018 - resolve the connection and open the session before the clock

    def run() -> int:
        count = 0
        for _ in hook.iter_connect_records():
            count += 1
        return count

    return run


def page_wire(url: str, key: str) -> Callable[[], int]:
    """The serving ceiling: raw socket, no HTTP library, no JSON; only finds the token.

    Shows what the page server and loopback can deliver, so a client figure far below it is the
    client's own cost.
    """
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    path = "/" + path
    marker = b'"nextPageToken":"'

    def run() -> int:
        count = 0
        token = None
        with socket.create_connection((host, int(port))) as sock:
            reader = sock.makefile("rb")
            while True:
                query = f"page-size={PAGE_SIZE}"
                if token is not None:
                    query += "&page-token=" + quote(token, safe="")
                sock.sendall(
                    f"GET {path}?{query} HTTP/1.1\r\nHost: {host_port}\r\n"
                    f"Authorization: Bearer {key}\r\n\r\n".encode()
                )
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = reader.read(length)
                count += body.count(b'"ref_id":')
                start = body.rfind(marker)
                if start < 0:
                    return count
                token = body[start + len(marker) : body.index(b'"', start + len(marker))].decode()

    return run


PAGERS: dict[str, Callable[[str, str], Callable[[], int]]] = {
    "floor": page_floor,
    "peer": page_peer,
    "hook": page_hook,
    "wire": page_wire,
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_paging(kind: str, url: str, key: str, profile: str | None = None) -> dict[str, Any]:
    """One paging run; ``cpu_seconds`` is this process's own CPU, less sensitive to neighbours."""
    run = PAGERS[kind](url, key)
    if profile is not None:
        import cProfile

        profiler = cProfile.Profile()
        inner = run

        def run() -> int:
            profiler.enable()
            try:
                return inner()
            finally:
                profiler.disable()
                profiler.dump_stats(profile)

    rss_start = current_rss_kb()
    peak_start = peak_rss_kb()
    cpu_start = cpu_seconds()
    started = time.perf_counter()
    records = run()
    seconds = time.perf_counter() - started
    return {
        "kind": kind,
        "records": records,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu_start,
        "rss_start_kb": rss_start,
        "peak_start_kb": peak_start,
        "peak_end_kb": peak_rss_kb(),
    }


def measure_triage(count: int, repeats: int, sample: int) -> dict[str, Any]:
    """Time ``triage`` alone over ``count`` typed records with distinct ids (best of repeats)."""
    try:
        from airflow_provider_leap.triage import triage
    except ImportError as exc:
        return {"skipped": f"airflow_provider_leap.triage is not importable: {exc}"}
    records = typed_records(count)
    from bench.records import NOW

    runs: list[float] = []
    cpu_runs: list[float] = []
    result = None
    for _ in range(repeats):
        result = None  # free the previous run's buckets before the next one is timed
        started, cpu_started = time.perf_counter(), cpu_seconds()
        result = triage(records, now=NOW)
        runs.append(time.perf_counter() - started)
        cpu_runs.append(cpu_seconds() - cpu_started)
    assert result is not None
    item_bytes: dict[str, Any] = {}
    for name, items in result.buckets.items():
        sizes = [len(json.dumps(item)) for item in items[:sample]]
        item_bytes[name] = {
            "items": len(items),
            "mean_bytes": sum(sizes) / len(sizes) if sizes else None,
            "max_bytes": max(sizes) if sizes else None,
        }
    return {
        "records": count,
        "runs_seconds": runs,
        "best_seconds": min(runs),
        "records_per_second": count / min(runs),
        "records_per_cpu_second": count / min(cpu_runs),
        "summary": {k: v for k, v in result.summary.items() if k != "counts"},
        "xcom_item_bytes": item_bytes,
        "xcom_sample_per_bucket": sample,
    }


def typed_records(count: int, distinct: int = 5000) -> list[Any]:
    """``count`` ``ConnectRecord``s cycled from ``distinct`` decoded ones, each with its own id.

    One in 500 of the distinct records is malformed (a string where a list belongs), so the
    salvage path and the needs_review bucket take part as they do on live data.
    """
    import msgspec

    from airflow_provider_leap.models import decode_connect_record
    from bench.records import make_records

    base = []
    for i, data in enumerate(make_records(distinct, seed=23)):
        if i % 500 == 499:
            data["utility_connections"] = "unavailable"
        base.append(decode_connect_record(msgspec.json.encode(data)))
    replace = msgspec.structs.replace
    records = []
    for i in range(count):
        record = base[i % distinct]
        ref_id = f"cust-{i:07d}"
        records.append(
            replace(record, id=f"{record.transmission_region}_{i:08x}_{ref_id}", ref_id=ref_id)
        )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    paging = sub.add_parser("paging")
    paging.add_argument("kind", choices=sorted(PAGERS))
    paging.add_argument("url", help="the Connect URL: PageServer.url(total, shape)")
    paging.add_argument("key")
    paging.add_argument("--profile", metavar="PATH", help="write cProfile stats of the run here")
    tri = sub.add_parser("triage")
    tri.add_argument("count", type=int)
    tri.add_argument("--repeats", type=int, default=3)
    tri.add_argument("--sample", type=int, default=20000)
    args = parser.parse_args()
    if args.command == "paging":
        result = measure_paging(args.kind, args.url, args.key, args.profile)
    else:
        result = measure_triage(args.count, args.repeats, args.sample)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
