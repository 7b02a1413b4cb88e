"""``python -m bench.ledger``: the delivery ledger's cost for 100,000 customers.

One hourly run at scale, in a fresh process per size: the ledger already holds 100,000
stalls (every customer was messaged before); the run loads it (reading the snapshot and folding
the claims the previous run left), plans the contacts of 100,000 triaged customers against it,
and delivers the ones that are due (``--due`` of them, to a send function that does nothing),
which writes one claim file each; then the next run's load folds those claims into the
snapshot. Reported: seconds per phase (timed on its own), the peak of Python memory the run
allocates (the same run again under ``tracemalloc``; the triage buckets it reads are not
counted, they exist anyway), and the process's peak RSS. Target: under 2 s and under 50 MB for
100,000 customers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bench.worker import peak_rss_kb

NOW = datetime(2026, 3, 10, 12, 17, tzinfo=timezone.utc)


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _buckets(customers: int, due: int) -> dict[str, list[dict[str, Any]]]:
    """Triage items: the first ``due`` customers stalled anew (a first contact is due), the
    rest stalled two days ago and already got their day-1 reminder."""
    items = []
    for i in range(customers):
        stall = NOW - (timedelta(hours=3) if i < due else timedelta(days=2))
        items.append(
            {
                "id": f"CAISO_{i:036d}_cust-{i:07d}",
                "ref_id": f"cust-{i:07d}",
                "transmission_region": "CAISO",
                "connection_status": "ERROR",
                "last_interaction": _iso(stall),
                "reason": "error:USER_CANCELED",
                "error_codes": {"PG&E: Pacific Gas & Electric": "USER_CANCELED"},
                "utilities": ["PG&E: Pacific Gas & Electric"],
            }
        )
    return {"utility_error": items}


def _seed_ledger(root: Path, customers: int) -> None:
    """A compacted ledger with every customer's day-1 reminder sent yesterday."""
    import msgspec

    from airflow_provider_leap.ledger import FORMAT, Entry, Snapshot

    sent_at = int((NOW - timedelta(days=1)).timestamp())
    stall = _iso(NOW - timedelta(days=2))
    day_1 = 86400  # the day-1 reminder's offset, the customer's second message
    entries = [
        Entry(f"cust-{i:07d}", stall, day_1, sent_at, sent_count=2) for i in range(customers)
    ]
    (root / "email").mkdir(parents=True)
    snapshot = Snapshot(FORMAT, _iso(NOW - timedelta(days=1)), entries)
    (root / "email" / "ledger.json").write_bytes(msgspec.json.encode(snapshot))


def _one_run(root: Path, buckets: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    from airflow_provider_leap.contact import ContactPolicy, plan_contacts
    from airflow_provider_leap.delivery import deliver
    from airflow_provider_leap.ledger import DeliveryLedger

    marks = [time.perf_counter()]
    ledger = DeliveryLedger(root)
    view = ledger.load(NOW)
    marks.append(time.perf_counter())
    plan = plan_contacts(buckets, now=NOW, policy=ContactPolicy(), ledger=view.states)
    marks.append(time.perf_counter())
    report = deliver(plan.due, lambda contact: None, ledger, now=NOW, max_attempts=3)
    marks.append(time.perf_counter())
    due = len(plan.due)
    del view, plan  # the run is over: the next run (another process) loads afresh
    after = ledger.load(NOW)  # the next run folds this run's claims into the snapshot
    marks.append(time.perf_counter())
    phases = ("load", "plan", "deliver", "next_load")
    return {
        "due": due,
        "sent": report.sent,
        "stalls_after": after.stalls,
        "seconds": {k: round(b - a, 3) for k, a, b in zip(phases, marks, marks[1:], strict=False)},
        "total_seconds": round(marks[-1] - marks[0], 3),
    }


def child(customers: int, due: int) -> None:
    """Runs in a fresh process: the run timed, then again under tracemalloc for its memory."""
    buckets = _buckets(customers, due)
    with tempfile.TemporaryDirectory() as timed, tempfile.TemporaryDirectory() as traced:
        _seed_ledger(Path(timed), customers)
        _seed_ledger(Path(traced), customers)
        result = {"customers": customers, **_one_run(Path(timed), buckets)}
        tracemalloc.start()
        _one_run(Path(traced), buckets)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    result["peak_python_mb"] = round(peak / 2**20, 1)
    result["peak_rss_mb"] = round(peak_rss_kb() / 1024, 1)
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--due", type=int, default=1_000, help="customers due a message")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.customers[0], args.due)
        return 0
    print(
        f"{'customers':>10} {'due':>6} {'load':>6} {'plan':>6} {'send':>6} {'next':>6} "
        f"{'total s':>8} {'py MB':>6} {'RSS MB':>7}"
    )
    for customers in args.customers:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.ledger",
                "--child",
                "--customers",
                str(customers),
                "--due",
                str(args.due),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        s = r["seconds"]
        print(
            f"{r['customers']:>10} {r['due']:>6} {s['load']:>6} {s['plan']:>6} "
            f"{s['deliver']:>6} {s['next_load']:>6} {r['total_seconds']:>8} "
            f"{r['peak_python_mb']:>6} {r['peak_rss_mb']:>7}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
