"""``python -m bench.triggers``: 500 deferred sensors' triggers on one event loop, as a triggerer.

The measured process runs ``ConnectStatusTrigger.run()`` of ``--triggers`` triggers (``--ids``
Reference IDs each, all different, none of them done) as tasks of one asyncio loop, the way the
triggerer runs its triggers, against the Leap emulator in a second process (so that serving
costs this loop nothing). Every trigger has the ``next_poll_at`` a sensor deferring now would
give it: the same grid of ``--interval`` seconds. The run:

1. starts ``--warm`` triggers and lets them poll once (the imports, the TLS context and the first
   pass are paid before memory is measured);
2. starts the others under ``tracemalloc``, lets all poll once, and reads the memory they added
   (RSS and traced Python memory, per trigger);
3. counts the requests of ``--ticks`` polls of everyone: one pass over all Reference IDs per poll
   time, split only where the URL would get too long;
4. answers 503 to everything for ``--outage`` seconds, then ends the outage and waits for a pass
   that succeeds again;
5. cancels every trigger and checks that no request follows.

Throughout, a task sleeping 10 ms at a time records the event loop's lag (how late each wake-up
was), and during the outage, a call through ``asyncio.to_thread`` every second records how long
the loop's default thread pool makes an unrelated caller wait. The trigger logs go to a file, at
INFO, as a triggerer writes them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from airflow_provider_leap.cli import stdout_to
from bench.worker import current_rss_kb, peak_rss_kb

ROOT = Path(__file__).resolve().parent.parent
CONN_ID = "leap_bench"
LAG_STEP = 0.01
TARGET_LAG_P99_MS = 50.0
TARGET_KB_PER_TRIGGER = 50.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ref_id(i: int) -> str:
    return f"bench-ref-{i:06d}"


# -- the emulator's process -----------------------------------------------------------------------


def serve(records: int) -> None:
    """Serve ``records`` Connect records (one per Reference ID, all PARTIAL) and obey stdin:
    ``outage``, ``end``, ``stats`` (each answers with the Connect requests since the last
    ``stats``, which starts the count again), ``quit``."""
    from airflow_provider_leap.testing import LeapEmulator

    templates = LeapEmulator(records=200).records
    rows = [
        {**templates[i % len(templates)], "id": f"CAISO_{ref_id(i)}", "ref_id": ref_id(i),
         "connection_status": "PARTIAL"}
        for i in range(records)
    ]  # fmt: skip
    with LeapEmulator(records=rows) as emulator:
        print(f"READY {emulator.url}", flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "quit":
                break
            if command == "outage":
                emulator.faults.outage()
            elif command == "end":
                emulator.faults.end_outage()
            seen = [r for r in emulator.requests if r.path == emulator.wire.connections_path]
            if command == "stats":
                emulator.reset_requests()
            answer = {
                "requests": len(seen),
                "statuses": Counter(str(r.status) for r in seen),
                "ids": [sum(1 for k, _ in r.query if k == "ref-id") for r in seen],
                "at": [r.at for r in seen],
            }
            print(json.dumps(answer), flush=True)


class Emulator:
    """The emulator's process, driven over its stdin/stdout (from a thread: never the loop's)."""

    def __init__(self, records: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.triggers", "--serve", str(records)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None and self.process.stdin is not None
        self._in, self._out = self.process.stdin, self.process.stdout
        ready = self._out.readline().split()
        if not ready or ready[0] != "READY":
            raise RuntimeError(f"the emulator did not start: {ready}")
        self.url = ready[1]

    def _ask(self, command: str) -> Any:
        self._in.write(command + "\n")
        self._in.flush()
        return json.loads(self._out.readline())

    async def ask(self, command: str) -> Any:
        return await asyncio.to_thread(self._ask, command)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._in.write("quit\n")
            self._in.flush()
        self.process.wait(timeout=30)


# -- the measured loop ----------------------------------------------------------------------------


class LagMonitor:
    """How late a 10 ms sleep wakes up, all the time: the event loop's lag."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (monotonic start, lag in seconds)

    async def run(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(LAG_STEP)
            self.samples.append((start, max(time.monotonic() - start - LAG_STEP, 0.0)))

    def between(self, start: float, end: float) -> dict[str, float]:
        lags = sorted(lag for at, lag in self.samples if start <= at < end)
        if not lags:
            return {"samples": 0, "p50_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan}
        return {
            "samples": len(lags),
            "p50_ms": 1000 * lags[len(lags) // 2],
            "p99_ms": 1000 * lags[min(len(lags) - 1, math.ceil(0.99 * len(lags)) - 1)],
            "max_ms": 1000 * lags[-1],
        }


async def sleep_until(when: float) -> None:
    await asyncio.sleep(max(when - time.time(), 0.0))


async def thread_probe(waits: list[float], every: float = 1.0) -> None:
    """An unrelated ``asyncio.to_thread`` call every second, timed."""
    while True:
        started = time.monotonic()
        await asyncio.to_thread(time.monotonic)
        waits.append(time.monotonic() - started)
        await asyncio.sleep(every)


async def measure(args: argparse.Namespace, emulator: Emulator) -> dict[str, Any]:
    from airflow_provider_leap.client import connect_queries
    from airflow_provider_leap.polls import grid_time
    from airflow_provider_leap.triggers.connect import ConnectStatusTrigger, _hub
    from airflow_provider_leap.wire import WireNames

    interval, n, per = args.interval, args.triggers, args.ids
    ids = [ref_id(i) for i in range(n * per)]
    end_time = time.time() + 86_400

    def trigger(k: int) -> ConnectStatusTrigger:
        return ConnectStatusTrigger(
            leap_conn_id=CONN_ID,
            ref_ids=ids[k * per : (k + 1) * per],
            target_statuses=["COMPLETED"],
            poll_interval=interval,
            end_time=end_time,
            next_poll_at=first,
        )

    async def consume(t: ConnectStatusTrigger) -> None:
        async for event in t.run():
            raise RuntimeError(f"a trigger fired unexpectedly: {event.payload}")

    lag = LagMonitor()
    background = [asyncio.create_task(lag.run())]
    tasks: list[asyncio.Task[None]] = []
    result: dict[str, Any] = {"triggers": n, "ids_per_trigger": per, "interval_s": interval}

    log(f"0. the loop alone for {args.idle:g} s: what this machine's load does to its lag")
    idle_start = time.monotonic()
    await asyncio.sleep(args.idle)
    result["idle_lag"] = lag.between(idle_start, time.monotonic())
    first = grid_time(0.0, interval, time.time() + min(interval / 2, 3.0))

    log(f"1. {args.warm} triggers, first poll at +{first - time.time():.1f} s")
    tasks += [asyncio.create_task(consume(trigger(k))) for k in range(args.warm)]
    await sleep_until(first + interval / 2)
    await emulator.ask("stats")

    log(f"2. {n - args.warm} more triggers: memory while they wait, and after a poll")
    gc.collect()
    rss_before = current_rss_kb()
    tracemalloc.start()  # only while they start: under tracemalloc a pass is ten times slower
    tasks += [asyncio.create_task(consume(trigger(k))) for k in range(args.warm, n)]
    await asyncio.sleep(min(1.0, interval / 4))  # each is waiting for the next poll by now
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    tick = first + interval
    await sleep_until(tick + interval / 2)
    gc.collect()
    added = n - args.warm
    result["memory"] = {
        "traced_kb_per_waiting_trigger": traced / 1024 / added,
        "rss_kb_per_trigger_after_a_poll": (current_rss_kb() - rss_before) / added,
    }
    await emulator.ask("stats")
    rss_after_first = current_rss_kb()

    log(f"3. {args.ticks} polls of all {n} triggers")
    per_tick = []
    healthy_start = time.monotonic()
    for _ in range(args.ticks):
        tick += interval
        await sleep_until(tick + interval / 2)
        stats = await emulator.ask("stats")
        per_tick.append(stats)
        log(f"   {stats['requests']} requests, {sum(stats['ids'])} IDs, {stats['statuses']}")
    healthy = lag.between(healthy_start, time.monotonic())
    gc.collect()
    result["memory"]["rss_growth_kb_over_the_polls"] = current_rss_kb() - rss_after_first
    batch = max(max(s["ids"]) for s in per_tick)
    expected = len(connect_queries(WireNames(), 500, ids, {}))
    result["ticks"] = {
        "requests": [s["requests"] for s in per_tick],
        "ids_sent": [sum(s["ids"]) for s in per_tick],
        "batch_size": batch,
        "bound": math.ceil(len(ids) / batch) + 1,
        "one_pass_over_all_ids": expected,
        "lag": healthy,
        "pass_seconds": [max(s["at"]) - min(s["at"]) for s in per_tick if s["at"]],
    }

    log(f"4. outage: 503 to everything for {args.outage:g} s")
    waits: list[float] = []
    await emulator.ask("outage")
    outage_start = time.monotonic()
    probe = asyncio.create_task(thread_probe(waits))
    await asyncio.sleep(args.outage)
    probe.cancel()
    await emulator.ask("end")
    outage_end = time.monotonic()
    during = await emulator.ask("stats")
    result["outage"] = {
        "seconds": args.outage,
        "lag": lag.between(outage_start, outage_end),
        "requests": during["requests"],
        "statuses": during["statuses"],
        "to_thread_max_s": max(waits),
        "to_thread_calls": len(waits),
    }
    log(f"   lag {result['outage']['lag']}, {during['requests']} requests")

    deadline, recovered = time.monotonic() + max(4 * interval, 90.0), None
    while recovered is None and time.monotonic() < deadline:
        await asyncio.sleep(interval / 2)
        stats = await emulator.ask("stats")
        if int(stats["statuses"].get("200", 0)) >= expected:
            recovered = min(at for at, _ in zip(stats["at"], stats["ids"], strict=True))
    result["outage"]["recovered_after_s"] = None if recovered is None else recovered - outage_end
    log(f"   first whole pass after the outage: {result['outage']['recovered_after_s']}")

    log("5. cancel every trigger")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await emulator.ask("stats")
    await asyncio.sleep(2 * interval)
    result["after_cancel"] = {
        "requests": (await emulator.ask("stats"))["requests"],
        "open_passes": len(_hub()._open),
    }
    for task in background:
        task.cancel()
    result["peak_rss_mb"] = peak_rss_kb() / 1024
    return result


def verdicts(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, value, target, met/missed) rows."""
    ticks, outage, memory = result["ticks"], result["outage"], result["memory"]
    worst = max(ticks["requests"])
    rows = [
        ("requests per poll tick", f"{worst} (IDs per request <= {ticks['batch_size']})",
         f"<= ceil({result['triggers'] * result['ids_per_trigger']:,} / {ticks['batch_size']}) + 1"
         f" = {ticks['bound']}", "met" if worst <= ticks["bound"] else "missed"),
        ("event-loop lag during the outage, p99", f"{outage['lag']['p99_ms']:.1f} ms",
         f"< {TARGET_LAG_P99_MS:g} ms",
         "met" if outage["lag"]["p99_ms"] < TARGET_LAG_P99_MS else "missed"),
        ("event-loop lag during the outage, max", f"{outage['lag']['max_ms']:.1f} ms", "-", "info"),
        ("memory per trigger: RSS growth, after a poll",
         f"{memory['rss_kb_per_trigger_after_a_poll']:.1f} KB", f"< {TARGET_KB_PER_TRIGGER:g} KB",
         "met" if memory["rss_kb_per_trigger_after_a_poll"] < TARGET_KB_PER_TRIGGER else "missed"),
        ("memory per trigger: Python objects, waiting (tracemalloc)",
         f"{memory['traced_kb_per_waiting_trigger']:.1f} KB", f"< {TARGET_KB_PER_TRIGGER:g} KB",
         "met" if memory["traced_kb_per_waiting_trigger"] < TARGET_KB_PER_TRIGGER else "missed"),
        ("RSS growth over the next polls (a leak would show)",
         f"{memory['rss_growth_kb_over_the_polls'] / 1024:+.1f} MB", "-", "info"),
        ("peak RSS of the process", f"{result['peak_rss_mb']:.0f} MB", "-", "info"),
        ("event-loop lag with no trigger (this machine's noise), p99 / max",
         f"{result['idle_lag']['p99_ms']:.1f} / {result['idle_lag']['max_ms']:.1f} ms", "-",
         "info"),
        ("event-loop lag while polling, p99 / max",
         f"{ticks['lag']['p99_ms']:.1f} / {ticks['lag']['max_ms']:.1f} ms", "-", "info"),
        ("unrelated to_thread call during the outage, slowest",
         f"{outage['to_thread_max_s'] * 1000:.1f} ms ({outage['to_thread_calls']} calls)",
         "< 1 s", "met" if outage["to_thread_max_s"] < 1 else "missed"),
        ("requests during the outage", f"{outage['requests']} ({outage['seconds']:g} s)", "-",
         "info"),
        ("requests after cancelling every trigger", str(result["after_cancel"]["requests"]), "0",
         "met" if result["after_cancel"]["requests"] == 0 else "missed"),
    ]  # fmt: skip
    return rows


def markdown(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| metric | value | target | met/missed |", "| --- | --- | --- | --- |"]
    return "\n".join(lines + [f"| {' | '.join(row)} |" for row in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.triggers", description=__doc__)
    parser.add_argument("--triggers", type=int, default=500)
    parser.add_argument("--ids", type=int, default=10, help="Reference IDs per trigger")
    parser.add_argument("--warm", type=int, default=50, help="triggers started first")
    parser.add_argument("--interval", type=float, default=10.0, help="poll interval, seconds")
    parser.add_argument("--ticks", type=int, default=3, help="polls whose requests are counted")
    parser.add_argument("--outage", type=float, default=120.0, help="seconds of 503s")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of lag, no trigger")
    parser.add_argument("--quick", action="store_true", help="--outage 20 --interval 5")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results-triggers.json")
    parser.add_argument("--serve", type=int, metavar="RECORDS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0
    if args.quick:
        args.outage, args.interval = 20.0, 5.0
    home = tempfile.mkdtemp(prefix="leap-bench-triggers-")
    os.environ.update(AIRFLOW_HOME=home, AIRFLOW__CORE__LOAD_EXAMPLES="False")
    emulator = Emulator(args.triggers * args.ids)
    try:
        from airflow_provider_leap.hooks.leap import connection_json
        from airflow_provider_leap.testing import EMULATOR_API_KEY

        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = connection_json(
            emulator.url, EMULATOR_API_KEY
        )
        started = time.monotonic()
        with _stdout_to(Path(home) / "triggers.log"):  # Airflow logs to stdout: as to a file
            result = asyncio.run(measure(args, emulator))
        result["seconds"] = time.monotonic() - started
    finally:
        emulator.close()
    result["machine"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(markdown(verdicts(result)))
    log(f"{result['seconds']:.0f} s; every figure in {args.out}")
    return 0


@contextlib.contextmanager
def _stdout_to(path: Path) -> Iterator[None]:
    """This process's stdout (where Airflow's logging writes) into a file, as a triggerer's
    logs go to files; restored after."""
    with path.open("wb") as sink, stdout_to(sink.fileno()):
        yield


if __name__ == "__main__":
    sys.exit(main())
