"""``python -m bench.emulator_paging``: page the emulator with ``LeapHook`` at page size 500.

For each size (default 5,000 and 50,000 records) it starts the emulator CLI in its own process,
pages every record through ``LeapHook.iter_connections()`` in a fresh child process that keeps
no record, and reports: records seen, whether each record arrived exactly once (an
order-independent checksum of the ids against the emulator's own data), and the child's peak
RSS. Memory that does not grow with the record count is the point.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from typing import Any

from bench.worker import peak_rss_kb

MASK = (1 << 64) - 1


def id_checksum(ids: Iterable[str | None]) -> tuple[int, int]:
    """(count, sum of 64-bit id hashes): equal for two streams with the same ids once each."""
    count = total = 0
    for record_id in ids:
        count += 1
        digest = hashlib.blake2b(str(record_id).encode(), digest_size=8).digest()
        total = (total + int.from_bytes(digest, "big")) & MASK
    return count, total


def child(url: str, key: str) -> None:
    """Runs in a fresh process: page everything, keep nothing, print one JSON line."""
    from airflow_provider_leap.hooks.leap import LeapHook, connection_json

    os.environ["AIRFLOW_CONN_LEAP_BENCH"] = connection_json(url, key, page_size=500)
    hook = LeapHook(leap_conn_id="leap_bench")
    hook.client  # noqa: B018 - open the session before measuring
    before = peak_rss_kb()
    started = time.perf_counter()
    count, total = id_checksum(record.id for record in hook.iter_connections())
    seconds = time.perf_counter() - started
    result = {"count": count, "checksum": total, "seconds": seconds}
    print(json.dumps({**result, "peak_before_kb": before, "peak_end_kb": peak_rss_kb()}))


def measure(records: int, seed: int) -> dict[str, Any]:
    from airflow_provider_leap.testing import EMULATOR_API_KEY
    from airflow_provider_leap.testing.data import generate_records

    emulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_leap.testing",
            "--port",
            "0",
            "--seed",
            str(seed),
            "--records",
            str(records),
            "--now",
            "2026-11-28T00:00:00Z",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert emulator.stdout is not None
        line = emulator.stdout.readline()
        url = line.split("url=")[1].split()[0]
        out = subprocess.run(
            [sys.executable, "-m", "bench.emulator_paging", "--child", url, EMULATOR_API_KEY],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        emulator.terminate()
        emulator.wait(timeout=30)
    run = json.loads(out.strip().splitlines()[-1])
    expected = generate_records(seed, records, _now())
    run["expected_count"], run["expected_checksum"] = id_checksum(r["id"] for r in expected)
    run["every_record_once"] = (run["count"], run["checksum"]) == (
        run["expected_count"],
        run["expected_checksum"],
    )
    return {"records": records, **run}


def _now() -> Any:
    from datetime import datetime, timezone

    return datetime(2026, 11, 28, tzinfo=timezone.utc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, nargs="+", default=[5_000, 50_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=2, metavar=("URL", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    runs = [measure(n, args.seed) for n in args.records]
    print(f"{'records':>9} {'seen':>9} {'once':>5} {'rec/s':>9} {'peak RSS MB':>12}")
    for run in runs:
        rate = run["count"] / run["seconds"]
        peak = run["peak_end_kb"] / 1024
        print(
            f"{run['records']:>9} {run['count']:>9} {run['every_record_once']!s:>5} "
            f"{rate:>9,.0f} {peak:>12.1f}"
        )
    growth = (runs[-1]["peak_end_kb"] - runs[0]["peak_end_kb"]) / 1024
    print(
        f"peak RSS growth {runs[0]['records']:,} -> {runs[-1]['records']:,} records: "
        f"{growth:+.1f} MB"
    )
    if not all(run["every_record_once"] for run in runs):
        sys.exit("some record did not arrive exactly once")


if __name__ == "__main__":
    main()
