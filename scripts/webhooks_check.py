"""End-to-end check of Leap's webhooks in real Airflow processes: emulator -> receiver -> asset
event -> a run of ``leap_connect_events`` created by the scheduler.

Two ways to run it:

``python scripts/webhooks_check.py`` (standalone) makes a throwaway Airflow home (SQLite,
LocalExecutor), starts the Leap emulator in this process and the API server (two workers),
scheduler and DAG processor as processes of their own on 127.0.0.1, runs the checks, stops
everything and prints a table. Exit status 0 when every check passed.

Against a running deployment, call :func:`run_checks` (what ``scripts/deploy_check`` does):
the API server must mount the provider's plugin, its ``leap_default`` connection must point at
an emulator (``python -m airflow_provider_leap.testing``) and carry the extra
``webhook_secret``, the DAG ``leap_connect_events`` must be in its DAGs folder, and the REST API
must answer without a login (``[core] simple_auth_manager_all_admins``). The checks create a
subscription, deliver events through Leap's test endpoint and directly, and read the results
back through Airflow's REST API. Secrets come in as arguments or environment variables, never
on the command line, and are never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import requests

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "example_dags"
DAG_ID = "leap_connect_events"
NUDGE_AFTER = 15.0  # seconds without a new run before one more event is sent (see below)
MAX_NUDGES = 3
T = TypeVar("T")


class CheckFailed(Exception):
    """A check's condition did not hold; the message goes into the table."""


class ServerError(CheckFailed):
    """Airflow's REST API answered 5xx. Airflow 3.3's asset event listings do that while a run
    created from an event is still queued (its ``start_date`` is null): wait and ask again."""


@dataclass
class Row:
    check: str
    ok: bool
    seconds: float
    detail: str


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    @contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        """Time one check; the body appends its detail text; an exception fails the row."""
        detail: list[str] = []
        started = time.monotonic()
        try:
            yield detail
        except Exception as exc:  # every failure becomes a row, and the next check still runs
            text = str(exc) if isinstance(exc, CheckFailed) else f"{type(exc).__name__}: {exc}"
            self.rows.append(Row(name, False, time.monotonic() - started, text[:300]))
        else:
            self.rows.append(Row(name, True, time.monotonic() - started, "; ".join(detail)))

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(row.ok for row in self.rows)

    def table(self) -> str:
        width = max(len(row.check) for row in self.rows)
        lines = [f"{'check':<{width}}  result  seconds  detail"]
        for row in self.rows:
            result = "ok" if row.ok else "FAILED"
            lines.append(f"{row.check:<{width}}  {result:<6}  {row.seconds:7.1f}  {row.detail}")
        return "\n".join(lines)


def wait_for(what: str, probe: Callable[[], T | None], until: float, every: float = 0.5) -> T:
    """Call ``probe`` until it returns a value; a ServerError counts as "not yet"."""
    last = ""
    while True:
        try:
            value = probe()
        except ServerError as exc:
            value, last = None, f" (last: {exc})"
        if value is not None:
            return value
        if time.monotonic() >= until:
            raise CheckFailed(f"deadline passed waiting for {what}{last}")
        time.sleep(every)


class Airflow:
    """The few REST calls the checks make (no login: simple auth manager, all admins)."""

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.session = requests.Session()

    def get(self, path: str, **params: Any) -> Any:
        try:
            response = self.session.get(self.api_url + path, params=params, timeout=30)
        except requests.ConnectionError as exc:  # uvicorn drops a keep-alive after a 500
            raise ServerError(f"GET {path}: {exc}") from None
        if response.status_code >= 500:
            raise ServerError(f"GET {path}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise CheckFailed(f"GET {path}: HTTP {response.status_code} {response.text[:200]}")
        return response.json()

    def patch(self, path: str, body: dict[str, Any]) -> Any:
        response = self.session.patch(self.api_url + path, json=body, timeout=30)
        if response.status_code >= 400:
            raise CheckFailed(f"PATCH {path}: HTTP {response.status_code} {response.text[:200]}")
        return response.json()

    def asset_id(self, uri: str) -> int | None:
        assets = self.get("/api/v2/assets", uri_pattern=uri, limit=10)["assets"]
        return next((a["id"] for a in assets if a["uri"] == uri), None)

    def asset_events(self, asset_id: int) -> list[dict[str, Any]]:
        path = "/api/v2/assets/events"
        return list(self.get(path, asset_id=asset_id, limit=1000)["asset_events"])

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.get(f"/api/v2/dags/{dag_id}/dagRuns", limit=100)["dag_runs"])

    def run_path(self, dag_id: str, run_id: str) -> str:
        return f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"


def _envelope(payload: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    return {"webhook_event_id": event_id or str(uuid.uuid4()), "payload": payload}


def run_checks(
    *,
    api_url: str,
    leap_url: str,
    api_key: str,
    webhook_secret: str,
    conn_id: str = "leap_default",
    webhook_header: str | None = None,
    emulator: Any = None,
    timeout: float = 180.0,
    report: Report | None = None,
) -> Report:
    """Check the receiver and the DAG it triggers in a running deployment.

    ``emulator``: an in-process ``LeapEmulator`` (standalone mode) whose customers then act as
    its clock moves; without it, events come only through Leap's test endpoint.
    """
    from airflow_provider_leap.assets import asset_uri
    from airflow_provider_leap.client import LeapClient
    from airflow_provider_leap.webhooks import (
        CONNECT_AUTHORIZATION_UPDATED,
        CONNECT_SESSION_UPDATED,
        MAX_BODY_BYTES,
        ensure_webhook,
        receiver_secret,
        send_test_event,
    )

    report = report or Report()
    until = time.monotonic() + timeout
    airflow = Airflow(api_url)
    receiver = f"{airflow.api_url}/leap/webhooks/{conn_id}"
    header, secret = receiver_secret(webhook_header, webhook_secret)
    good = {header: secret}
    post = requests.Session()
    leap = LeapClient(leap_url, api_key, allow_insecure_http=True)
    uri = asset_uri(conn_id)
    tag = uuid.uuid4().hex[:8]  # this run's Reference IDs: whcheck-<tag>-<n>
    accepted: dict[str, str] = {}  # webhook_event_id -> ref_id of every event recorded

    def deliver(envelope: dict[str, Any], headers: dict[str, str]) -> requests.Response:
        return post.post(receiver, json=envelope, headers=headers, timeout=30)

    with report.step("DAG parsed, unpaused, asset known") as detail:
        path = f"/api/v2/dags/{DAG_ID}"

        def parsed() -> dict[str, Any] | None:
            response = airflow.session.get(airflow.api_url + path, timeout=30)
            return response.json() if response.status_code == 200 else None

        dag = wait_for(f"{DAG_ID} to be parsed", parsed, until)
        if dag["is_paused"]:
            airflow.patch(path, {"is_paused": False})
            detail.append("unpaused")
        asset_id = wait_for(f"asset {uri}", lambda: airflow.asset_id(uri), until)
        detail.append(f"{uri} is asset {asset_id}")

    with report.step("subscription (ensure_webhook twice)") as detail:
        first = ensure_webhook(leap, receiver, headers=good)
        again = ensure_webhook(leap, receiver, headers=good)
        if again.action != "unchanged" or again.webhook_id != first.webhook_id:
            raise CheckFailed(f"second ensure_webhook: {again.action}, not unchanged")
        webhook_id = first.webhook_id
        detail.append(f"{first.action}, then unchanged")

    with report.step("refused without the secret (401)") as detail:
        payload = {
            "webhook_event_type": CONNECT_SESSION_UPDATED,
            "partner_reference": f"whcheck-{tag}-refused",
            "status": "CREATED",
        }
        codes = [
            deliver(_envelope(payload), {}).status_code,
            deliver(_envelope(payload), {header: secret[::-1]}).status_code,
        ]
        if codes != [401, 401]:
            raise CheckFailed(f"missing and wrong secret answered {codes}")
        detail.append("missing 401, wrong 401")

    with report.step("bad input (400, 413) and unknown types (202)") as detail:
        answers = {
            "malformed": post.post(receiver, data=b"{not json", headers=good, timeout=30),
            "wrong schema": deliver({"webhook_event_id": "x", "payload": {}}, good),
            "over 1 MiB": post.post(
                receiver, data=b" " * (MAX_BODY_BYTES + 1), headers=good, timeout=30
            ),
            "unknown type": deliver(_envelope({"webhook_event_type": "invoice.paid"}), good),
        }
        codes = {name: r.status_code for name, r in answers.items()}
        if codes != {"malformed": 400, "wrong schema": 400, "over 1 MiB": 413, "unknown type": 202}:
            raise CheckFailed(f"answers {codes}")
        detail.append(", ".join(f"{k} {v}" for k, v in codes.items()))

    # Delivered by Leap (the emulator) itself; its event id is Leap's, so it is found by this
    # Reference ID in the asset events and the runs below.
    test_ref = f"whcheck-{tag}-test"
    with report.step("Leap's test delivery (2xx)") as detail:
        result = send_test_event(
            leap,
            webhook_id,
            {
                "webhook_event_type": CONNECT_SESSION_UPDATED,
                "partner_reference": test_ref,
                "status": "CREATED",
            },
        )
        if not result.is_successful:
            raise CheckFailed(f"Leap's test delivery: {result}")
        detail.append(f"HTTP {result.status_code} in {result.response_time_ms} ms")

    first_accepted = datetime.now(timezone.utc).isoformat()
    with report.step("events delivered three times each") as detail:
        for n in range(5):
            event_type = CONNECT_AUTHORIZATION_UPDATED if n % 2 else CONNECT_SESSION_UPDATED
            payload = {
                "webhook_event_type": event_type,
                "partner_reference": f"whcheck-{tag}-{n}",
                "status": "FAILED" if n % 2 else "CLOSED",
            }
            if n % 2:
                payload["utility_name"] = "PGE"
            envelope = _envelope(payload)
            outcomes = [deliver(envelope, good) for _ in range(3)]
            statuses = [(r.status_code, r.json().get("status")) for r in outcomes]
            if statuses != [(200, "accepted"), (200, "duplicate"), (200, "duplicate")]:
                raise CheckFailed(f"event {n}: {statuses}")
            accepted[envelope["webhook_event_id"]] = payload["partner_reference"]
        detail.append(f"{len(accepted)} events: accepted once, then duplicate twice")

    if emulator is not None:
        with report.step("customers acting (emulator journeys)") as detail:
            sent_before = len(emulator.webhooks.deliveries)
            emulator.advance(timedelta(hours=2))
            if not emulator.webhooks.wait_idle(60):
                raise CheckFailed("the emulator's deliveries did not finish")
            new = emulator.webhooks.deliveries[sent_before:]
            if not new:
                raise CheckFailed("no customer acted in two simulated hours")
            failed = [d for d in new if d.status is None or not 200 <= d.status < 300]
            if failed:
                raise CheckFailed(f"{len(failed)} deliveries failed, e.g. {failed[0]}")
            journey_events = {d.event_id for d in new}
            detail.append(f"{len(journey_events)} events, {len(new)} deliveries, all 2xx")

    with report.step("each accepted event recorded once") as detail:

        def recorded() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
            events = airflow.asset_events(asset_id)
            ours = [e for e in events if e["extra"].get("webhook_event_id") in accepted]
            tests = [e for e in events if e["extra"].get("ref_id") == test_ref]
            return (ours, tests) if len(ours) >= len(accepted) and tests else None

        ours, tests = wait_for("the asset events", recorded, until)
        ids = [e["extra"]["webhook_event_id"] for e in ours]
        if sorted(ids) != sorted(accepted):
            raise CheckFailed(f"{len(ids)} asset events for {len(accepted)} events")
        bad = [
            e for e in ours if e["extra"].get("ref_id") != accepted[e["extra"]["webhook_event_id"]]
        ]
        if bad:
            raise CheckFailed(f"asset event extra does not match the delivery: {bad[0]['extra']}")
        if len(tests) != 1:
            raise CheckFailed(f"Leap's test delivery became {len(tests)} asset events")
        detail.append(f"{len(ours) + 1} asset events on {uri} (1 from Leap's test), extras match")

    with report.step("scheduler created runs from the events") as detail:

        def triggered() -> list[dict[str, Any]] | None:
            runs = [r for r in airflow.runs(DAG_ID) if r["run_type"] == "asset_triggered"]
            return [r for r in runs if r["run_after"] >= first_accepted] or None

        runs = wait_for(f"an asset-triggered run of {DAG_ID}", triggered, until)
        detail.append(f"{len(runs)} run(s) so far, e.g. {runs[0]['dag_run_id']}")

    with report.step("the runs read the events, then wait deferred") as detail:
        # The runs' own view: the Reference IDs of the events that triggered them. (Airflow
        # 3.3's listings of consumed events answer 500 while such a run is still queued.)
        wanted = {*accepted.values(), test_ref}
        handled: dict[str, tuple[list[str], str]] = {}  # run id -> (ref_ids, answer_at)
        states: dict[str, str | None] = {}
        # Airflow 3.3 keeps one queued run request per DAG and asset: an event recorded while
        # the scheduler turns that request into a run joins no run until a later event queues
        # the next one (docs/webhooks.md, "What is guaranteed"). Leap keeps sending events; here,
        # when every run has read its events and some are still in none, one more event does.
        nudges: list[str] = []
        grew = [time.monotonic(), 0]  # when the number of runs last changed, and to what

        def nudge() -> None:
            ref = f"whcheck-{tag}-nudge-{len(nudges)}"
            payload = {
                "webhook_event_type": CONNECT_SESSION_UPDATED,
                "partner_reference": ref,
                "status": "CREATED",
            }
            answer = deliver(_envelope(payload), good)
            if answer.status_code != 200:
                raise CheckFailed(f"nudge event answered {answer.status_code}")
            nudges.append(ref)
            wanted.add(ref)
            grew[0] = time.monotonic()

        def waiting() -> bool | None:
            runs = [r for r in airflow.runs(DAG_ID) if r["run_type"] == "asset_triggered"]
            if len(runs) != grew[1]:
                grew[:] = [time.monotonic(), len(runs)]
            for run in runs:
                run_id = run["dag_run_id"]
                if run_id in handled:
                    continue
                path = airflow.run_path(DAG_ID, run_id)
                tis = airflow.get(path + "/taskInstances")["task_instances"]
                state = {ti["task_id"]: ti["state"] for ti in tis}
                states[run_id] = state.get("wait_for_leap")
                if state.get("what_to_answer") == "failed":
                    raise CheckFailed(f"what_to_answer failed in {run_id}")
                if state.get("wait_for_leap") != "deferred":
                    continue
                xcoms = path + "/taskInstances/what_to_answer/xcomEntries/"
                ref_ids = airflow.get(xcoms + "ref_ids")["value"]
                ref_ids = json.loads(ref_ids) if isinstance(ref_ids, str) else ref_ids
                handled[run_id] = (ref_ids, airflow.get(xcoms + "answer_at")["value"])
            seen = {ref for ref_ids, _ in handled.values() for ref in ref_ids}
            if wanted <= seen:
                return True
            quiet = time.monotonic() - grew[0] > NUDGE_AFTER
            if quiet and len(handled) == len(runs) and len(nudges) < MAX_NUDGES:
                nudge()
            return None

        try:
            wait_for("runs that read every event and defer", waiting, until)
        except CheckFailed as exc:
            raise CheckFailed(f"{exc}; wait_for_leap per run: {states}; nudges: {nudges}") from None
        answers = sorted({answer for _, answer in handled.values()})
        detail.append(
            f"{len(wanted)} Reference IDs read by {len(handled)} deferred run(s), waiting until "
            + ", ".join(answers)
        )
        if nudges:
            detail.append(
                f"{len(nudges)} later event(s) needed: Airflow's scheduler had left events "
                "queued without a run"
            )
    leap.close()
    return report


# -- standalone: a throwaway Airflow around the checks ---------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """Airflow components started by this script, each in its own process group."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs = logs
        self.env = env
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        airflow = str(Path(sys.executable).with_name("airflow"))
        self.started[name] = subprocess.Popen(
            [airflow, *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def check_alive(self) -> None:
        for name, process in self.started.items():
            if process.poll() is not None:
                raise CheckFailed(f"{name} exited with {process.returncode} (see {name}.log)")

    def stop(self) -> None:
        for process in self.started.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.started.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def standalone(out: Path, timeout: float, keep: bool, workers: int) -> Report:
    from airflow_provider_leap.testing import EMULATOR_API_KEY, LeapEmulator
    from airflow_provider_leap.testing.journeys import Population

    report = Report()
    home = Path(tempfile.mkdtemp(prefix="leap-webhooks-check-"))
    dags = home / "dags"
    dags.mkdir()
    for name in (f"{DAG_ID}.py", "leap_reengagement_common.py", ".airflowignore"):
        shutil.copy(EXAMPLES / name, dags / name)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    secret = "whcheck-" + uuid.uuid4().hex
    start = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    population = Population(seed=11, customers=40, start=start - timedelta(hours=1), days=1)
    processes: Processes | None = None
    with LeapEmulator(records=[], now=start) as emulator:
        emulator.play(population)
        connection = {
            "conn_type": "leap",
            "host": emulator.url,
            "password": EMULATOR_API_KEY,
            "extra": {"webhook_secret": secret, "connect_account": "webhooks-check"},
        }
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": api_url,
            "AIRFLOW__API__WORKERS": str(workers),
            "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex,
            "AIRFLOW__API__SECRET_KEY": uuid.uuid4().hex,
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW__LEAP__LEDGER_URL": (home / "ledger").as_uri(),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "LEAP_OUTPUT_DIR": str(home / "output"),
            "AIRFLOW_CONN_LEAP_DEFAULT": json.dumps(connection),
        }
        env.pop("AIRFLOW_CONN_LEAP_DEFAULT_URI", None)
        processes = Processes(logs, env)
        try:
            with report.step("Airflow up (db migrate, api-server, scheduler, dag-processor)") as d:
                until = time.monotonic() + timeout
                migrate = subprocess.run(
                    [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
                    env=env,
                    capture_output=True,
                    timeout=timeout,
                    check=False,
                )
                (logs / "db-migrate.log").write_bytes(migrate.stdout + migrate.stderr)
                if migrate.returncode:
                    raise CheckFailed("airflow db migrate failed (see db-migrate.log)")
                for component in ("api-server", "scheduler", "dag-processor"):
                    processes.start(component, component)

                def healthy() -> bool | None:
                    processes.check_alive()
                    try:
                        response = requests.get(api_url + "/api/v2/monitor/health", timeout=2)
                    except requests.ConnectionError:
                        return None
                    return True if response.status_code == 200 else None

                wait_for("the API server", healthy, until)
                d.append(f"API server at {api_url}")
            if report.ok:
                run_checks(
                    api_url=api_url,
                    leap_url=emulator.url,
                    api_key=EMULATOR_API_KEY,
                    webhook_secret=secret,
                    emulator=emulator,
                    timeout=timeout,
                    report=report,
                )
        finally:
            processes.stop()
    if keep:
        print(f"Airflow home kept at {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".webhooks-check", help="logs go here")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per phase")
    parser.add_argument("--keep", action="store_true", help="keep the Airflow home")
    parser.add_argument("--workers", type=int, default=2, help="API server workers")
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    report = standalone(args.out.resolve(), args.timeout, args.keep, args.workers)
    print(report.table())
    print(f"\n{len(report.rows)} checks in {time.monotonic() - started:.0f} s; logs in {args.out}")
    if args.json:
        rows = [row.__dict__ for row in report.rows]
        args.json.write_text(json.dumps({"ok": report.ok, "rows": rows}), encoding="utf-8")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
