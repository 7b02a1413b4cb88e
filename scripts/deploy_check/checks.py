"""The checks, in the order they run; each is a row of the table, with its own deadline."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import requests
from airflow_api import CheckFailed, wait_for
from deployment import REPO, Deployment
from report import Report, Step

REENGAGEMENT = "leap_connect_reengagement"
EVENTS = "leap_connect_events"  # the example DAG scheduled on Leap's webhooks
WATCH = "leap_connection_watch"
FAST_WATCH = "leap_deploy_check_watch"  # scripts/deploy_check/dags/: polls every 5 s
SENSOR = "wait_for_completed"
# The connection the browser adds through the form: Leap's staging host and a made-up key typed,
# every other field left as the form shows it.
UI_CONNECTION = {
    "id": "leap_ui_staging",
    "host": "https://api.staging.leap.energy",
    "key": "lk_test_DEPLOYCHECKFORM",
}
ACTIONABLE = ("not_started", "utility_error", "utility_not_connected", "agreements_pending")
POLL_LINE = "reached the target status"  # what the provider's trigger logs on every poll


def run_checks(d: Deployment, report: Report) -> None:
    with report.check("PostgreSQL on loopback", 60) as c:
        c.detail = d.start_postgres()
    if report.failed:
        return  # nothing below can run without what failed
    with report.check("emulator (admin on, key from env)", 30) as c:
        c.detail = d.start_emulator(c.until)
    if report.failed:
        return
    with report.check("AIRFLOW_HOME", 10) as c:
        customers = pick_customers(d)
        c.detail = d.prepare_home(customers["contacts"])
    if report.failed:
        return
    with report.check("airflow db migrate", 240) as c:
        c.detail = d.migrate()
    if report.failed:
        return
    with report.check("components up, loopback only", 180) as c:
        c.detail = d.start_components(c.until)
    if report.failed:
        return
    with report.check("Leap connection form (hook_meta) = docs", 30) as c:
        c.detail = check_connection_form(d)
    with report.check("POST /connections/test: good and bad key", 60) as c:
        c.detail = check_connection_test(d)
    with report.check("watch: scheduled-style run (CLI, logical date)", 120) as c:
        when = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
        c.detail = cli_trigger(d, c, WATCH, "deploy_watch_logical_date", "-l", when)
    with report.check("watch: manual, no logical date (CLI)", 120) as c:
        c.detail = cli_trigger(d, c, WATCH, "deploy_watch_cli")
    with report.check("watch: manual, no logical date (REST)", 120) as c:
        c.detail = rest_trigger(d, c, WATCH, "deploy_watch_rest")
    scheduled = None
    with report.check("re-engagement: on schedule", 180) as c:
        scheduled = wait_scheduled_run(d, c)
    with report.check("large XComs in the object store", 10) as c:
        c.detail = check_xcom_store(d, scheduled)
    with report.check("re-engagement: manual, no logical date (CLI)", 120) as c:
        c.detail = cli_trigger(d, c, REENGAGEMENT, "deploy_reengagement_cli")
    with report.check("re-engagement: manual, no logical date (REST)", 120) as c:
        c.detail = rest_trigger(d, c, REENGAGEMENT, "deploy_reengagement_rest")
    with report.check("sensor defers, trigger runs, resumes on change", 120) as c:
        c.detail = check_defer_resume(d, c, customers["resume"])
    with report.check("triggerer SIGKILLed while deferred: still on time", 180) as c:
        c.detail = check_triggerer_kill(d, c, customers["kill"])
    with report.check("cleared re-engagement run sends nothing twice", 150) as c:
        c.detail = check_clear_sends_nothing_twice(d, c, scheduled)
    with report.check("webhooks: emulator -> receiver -> asset event -> run", 240) as c:
        c.detail = check_webhooks(d, c)
    with report.check("API key and webhook secret appear nowhere", 120) as c:
        c.detail = check_secret_nowhere(d)
    with report.check("screenshots in chromium, no page error", 120) as c:
        c.detail = check_screenshots(d, c)
    with report.check("Leap connection saved from the UI form resolves as typed", 30) as c:
        c.detail = check_form_saved(d)


# --- customers ----------------------------------------------------------------------------


def pick_customers(d: Deployment) -> dict[str, Any]:
    """Reference IDs for each check, from what the emulator serves (one record each).

    ``contacts``: customers the re-engagement example will message (actionable buckets, last
    interaction 2 h to 20 days ago: inside the 30-day lookback, past the 1-hour quiet period),
    given email addresses. ``resume`` and ``kill``: NOT_STARTED customers the sensor waits on.
    """
    from airflow_provider_leap.triage import triage

    records = requests.get(d.emulator_url + "/_emulator/records", timeout=30).json()["records"]
    per_ref = Counter(r["ref_id"] for r in records)
    now = datetime.now(timezone.utc)
    result = triage(records, now=now)
    contacts: dict[str, str] = {}
    for bucket in ACTIONABLE:
        for item in result.buckets[bucket]:
            last = datetime.fromisoformat(str(item["last_interaction"]).replace("Z", "+00:00"))
            if per_ref[item["ref_id"]] == 1 and timedelta(hours=2) < now - last < timedelta(20):
                contacts[item["ref_id"]] = f"customer{len(contacts) + 1}@example.com"
                break
    waiting = [
        r["ref_id"]
        for r in records
        if r["connection_status"] == "NOT_STARTED"
        and per_ref[r["ref_id"]] == 1
        and r["ref_id"] not in contacts
    ]
    return {"contacts": contacts, "resume": waiting[0], "kill": waiting[1]}


def complete(d: Deployment, ref_id: str) -> None:
    """The customer finishes Leap Connect (the emulator's admin endpoint)."""
    body = {"ref_ids": [ref_id], "connection_status": "COMPLETED"}
    answer = requests.post(d.emulator_url + "/_emulator/records/status", json=body, timeout=10)
    if answer.status_code != 200 or answer.json() != {"changed": 1}:
        raise CheckFailed(f"emulator admin: HTTP {answer.status_code} {answer.text[:200]}")


# --- connection form and test ---------------------------------------------------------------


def documented_form() -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """From docs/connection.md: relabelled standard fields, and per extra (label, default)."""
    text = (REPO / "docs" / "connection.md").read_text(encoding="utf-8")
    relabels = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| (\w+) \| \*\*([^*]+)\*\* \|", text, re.MULTILINE)
        if m.group(1) != "extra"
    }
    table = re.search(r"^\| extra \| UI label \| default \|.*?\n\n", text, re.M | re.S)
    if not table:
        raise CheckFailed("docs/connection.md has no '| extra | UI label | default |' table")
    extras = {}
    for line in table.group(0).strip().splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        name, label, default = cells[0].strip("`"), cells[1], cells[2]
        if not label.startswith("("):  # "(Extra JSON only)": no form field
            extras[name] = (label, default)
    return relabels, extras


def check_connection_form(d: Deployment) -> str:
    meta = d.api.call("GET", "/ui/connections/hook_meta")
    leap = next((m for m in meta if m.get("connection_type") == "leap"), None)
    if leap is None:
        raise CheckFailed("connection type 'leap' missing from /ui/connections/hook_meta")
    relabels, extras = documented_form()
    problems = []
    standard = leap["standard_fields"]
    for field, label in relabels.items():
        shown = standard.get(field) or {}
        if shown.get("hidden") or shown.get("title") != label:
            problems.append(f"{field}: UI {shown!r}, docs {label!r}")
    for field in ("login", "port", "url_schema"):
        if not (standard.get(field) or {}).get("hidden"):
            problems.append(f"{field} is not hidden")
    got = leap["extra_fields"]
    if set(got) != set(extras):
        problems.append(f"extra fields: UI {sorted(got)}, docs {sorted(extras)}")
    # No field has a default (the form would save it into every connection): each starts
    # empty and its help names the provider's default, the one the docs give.
    for name, (label, default) in extras.items():
        shown_extra = got.get(name) or {}
        schema = shown_extra.get("schema") or {}
        title, value = schema.get("title"), shown_extra.get("value")
        help_text = shown_extra.get("description") or schema.get("description") or ""
        if title != label or value is not None:
            problems.append(f"{name}: UI ({title!r}, {value!r}), docs ({label!r}, empty)")
        if default != "empty" and f"Empty: {default}." not in help_text:
            problems.append(f"{name}: help {help_text!r} does not name the default {default}")
    if problems:
        raise CheckFailed("; ".join(problems))
    return f"{len(relabels)} relabelled fields, {len(extras)} extra fields, as documented"


def check_connection_test(d: Deployment) -> str:
    def test(password: str) -> dict[str, Any]:
        body = {
            "connection_id": "leap_deploy_check",
            "conn_type": "leap",
            "host": d.emulator_url,
            "password": password,
        }
        answer: dict[str, Any] = d.api.call("POST", "/api/v2/connections/test", body)
        return answer

    good, bad = test(d.api_key), test("lk_live_not_the_key")
    if good.get("status") is not True:
        raise CheckFailed(f"good key: {good}")
    if bad.get("status") is not False or "403" not in str(bad.get("message")):
        raise CheckFailed(f"bad key: {bad}")
    return f"good key: {good['message'][:40]}...; bad key: HTTP 403 named"


# --- runs -----------------------------------------------------------------------------------


def cli_trigger(d: Deployment, c: Step, dag_id: str, run_id: str, *args: str) -> str:
    d.api.unpause(dag_id)
    done = d.airflow("dags", "trigger", dag_id, "-r", run_id, *args)
    if done.returncode:
        raise CheckFailed(f"airflow dags trigger exited {done.returncode} (logs/cli.log)")
    return _finished(d, c, dag_id, run_id)


def rest_trigger(d: Deployment, c: Step, dag_id: str, run_id: str) -> str:
    d.api.unpause(dag_id)
    d.api.trigger(dag_id, run_id, logical_date=None)
    return _finished(d, c, dag_id, run_id)


def _finished(d: Deployment, c: Step, dag_id: str, run_id: str) -> str:
    run = d.api.wait_run(dag_id, run_id, c.until)
    tasks = d.api.task_instances(dag_id, run_id, keep=True)
    logical = run["logical_date"] or "none"
    return f"{run_id}: success, {len(tasks)} tasks, logical date {logical}"


def wait_scheduled_run(d: Deployment, c: Step) -> str:
    """Unpausing creates the latest scheduled run (catchup off); it must succeed."""
    d.api.unpause(REENGAGEMENT)

    def scheduled() -> str | None:
        runs = [r for r in d.api.runs(REENGAGEMENT) if r["run_type"] == "scheduled"]
        return runs[0]["dag_run_id"] if runs else None

    run_id = wait_for("the scheduler to create a scheduled run", scheduled, c.until)
    c.detail = _finished(d, c, REENGAGEMENT, run_id)
    return run_id


def check_xcom_store(d: Deployment, run_id: str | None) -> str:
    """Buckets above the threshold were written to the store and read back downstream."""
    if run_id is None:
        raise CheckFailed("no successful scheduled run to look at")
    folder = d.xcom_store / REENGAGEMENT / run_id  # the backend's <dag>/<run>/<task>/<uuid>
    files = [p for p in folder.rglob("*") if p.is_file()]
    if not files:
        raise CheckFailed(f"no XCom of {run_id} in {d.xcom_store}")
    size = sum(p.stat().st_size for p in files)
    return f"{len(files)} XCom value(s) of {run_id} in the store ({size // 1024} KiB)"


# --- deferral -------------------------------------------------------------------------------


def _trigger_log(d: Deployment, run_id: str, triggerer_id: int) -> Path:
    return (
        d.home
        / "logs"
        / f"dag_id={FAST_WATCH}"
        / f"run_id={run_id}"
        / f"task_id={SENSOR}"
        / f"attempt=1.log.trigger.{triggerer_id}.log"
    )


def _trigger_logs(d: Deployment, run_id: str) -> dict[int, Path]:
    """The run's sensor trigger logs, by the id of the triggerer that wrote them."""
    folder = _trigger_log(d, run_id, 0).parent
    return {int(p.name.split(".")[-2]): p for p in folder.glob("attempt=1.log.trigger.*.log")}


def _polls(path: Path) -> int:
    return path.read_text(encoding="utf-8").count(POLL_LINE) if path.exists() else 0


def wait_deferred(d: Deployment, c: Step, run_id: str, polls: int) -> tuple[int, int]:
    """Wait until the sensor is deferred and the triggerer has logged ``polls`` polls.

    Returns (trigger id, triggerer job id).
    """

    def deferred() -> tuple[int, int] | None:
        ti = d.api.task_instance(FAST_WATCH, run_id, SENSOR)
        if ti["state"] in ("success", "failed", "up_for_retry"):
            raise CheckFailed(f"the sensor ended {ti['state']} instead of waiting deferred")
        trigger = ti.get("trigger") or {}
        if ti["state"] != "deferred" or not trigger.get("triggerer_id"):
            return None
        if not trigger["classpath"].endswith("ConnectStatusTrigger"):
            raise CheckFailed(f"unexpected trigger {trigger['classpath']}")
        if _polls(_trigger_log(d, run_id, trigger["triggerer_id"])) < polls:
            return None
        return int(trigger["id"]), int(trigger["triggerer_id"])

    return wait_for(f"{run_id} deferred with {polls} poll(s) logged", deferred, c.until)


def check_defer_resume(d: Deployment, c: Step, ref_id: str) -> str:
    run_id = "deploy_defer_resume"
    d.api.unpause(FAST_WATCH)
    d.api.trigger(FAST_WATCH, run_id, conf={"ref_ids": [ref_id]})
    trigger_id, triggerer_id = wait_deferred(d, c, run_id, polls=2)
    complete(d, ref_id)
    changed = time.monotonic()
    d.api.wait_run(FAST_WATCH, run_id, c.until)
    resumed = time.monotonic() - changed
    ti = d.api.task_instance(FAST_WATCH, run_id, SENSOR)
    if ti["try_number"] != 1:
        raise CheckFailed(f"the sensor needed try {ti['try_number']}, not a resume")
    log = _trigger_log(d, run_id, triggerer_id)
    return (
        f"deferred; trigger {trigger_id} in triggerer {triggerer_id} logged "
        f"{_polls(log)} polls ({log.name}); success {resumed:.0f} s after the record changed"
    )


def check_triggerer_kill(d: Deployment, c: Step, ref_id: str) -> str:
    run_id = "deploy_triggerer_sigkill"
    d.api.trigger(FAST_WATCH, run_id, conf={"ref_ids": [ref_id]})
    _, first = wait_deferred(d, c, run_id, polls=1)
    killed = time.monotonic()
    d.processes.kill("triggerer", signal.SIGKILL)
    complete(d, ref_id)  # the customer completes while no triggerer runs
    d.start_component("triggerer")
    # On time: a dead triggerer's triggers move once its heartbeat is older than
    # [triggerer] triggerer_health_check_threshold (30 s), then one 5 s poll.
    on_time = killed + 90
    d.api.wait_run(FAST_WATCH, run_id, min(c.until, on_time))
    took = time.monotonic() - killed
    ti = d.api.task_instance(FAST_WATCH, run_id, SENSOR)
    if ti["try_number"] != 1:
        raise CheckFailed(f"the sensor needed try {ti['try_number']}, not a resume")
    moved = sorted(_trigger_logs(d, run_id))
    if len(moved) < 2:
        raise CheckFailed(f"trigger logs of one triggerer only: {moved}")
    return (
        f"killed triggerer {first}; the trigger ran on triggerers {moved}; "
        f"success {took:.0f} s after the kill (limit 90 s)"
    )


# --- re-engagement sends --------------------------------------------------------------------


def messages_per_contact(d: Deployment, run_id: str) -> Counter[str]:
    """Emails the re-engagement run ``run_id`` sent, per contact (recipient).

    The SMTP sink is the customers' inbox: what reached it was sent, whatever a file or the
    ledger says. An email belongs to the run when it arrived while one of the run's task tries
    was running (the DAG allows one active run, so runs never overlap).
    """
    windows = []
    for ti in d.api.task_instances(REENGAGEMENT, run_id):
        for attempt in d.api.tries(REENGAGEMENT, run_id, ti["task_id"]):
            if attempt.get("start_date"):
                start = _epoch(attempt["start_date"])
                end = _epoch(attempt["end_date"]) if attempt.get("end_date") else time.time()
                windows.append((start, end + 1))
    assert d.smtp is not None
    return Counter(
        mail.to for mail in d.smtp.inbox if any(start <= mail.at <= end for start, end in windows)
    )


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def check_clear_sends_nothing_twice(d: Deployment, c: Step, run_id: str | None) -> str:
    if run_id is None:
        raise CheckFailed("no successful scheduled run to clear")
    before = messages_per_contact(d, run_id)
    if not before:
        raise CheckFailed(f"{run_id} emailed nobody before the clear: the check proves nothing")
    d.api.clear_run(REENGAGEMENT, run_id)
    time.sleep(2)  # let the scheduler pick the cleared run up before polling its state
    d.api.wait_run(REENGAGEMENT, run_id, c.until)
    after = messages_per_contact(d, run_id)
    again = {k: after[k] - before[k] for k in after if after[k] > before[k]}
    assert d.smtp is not None
    keys = Counter(m.contact_key for m in d.smtp.inbox if m.contact_key)
    twice = sorted(k for k, n in keys.items() if n > 1)
    if again or twice:
        raise CheckFailed(
            f"sent again after the clear ({len(again)} contact(s)): "
            + ", ".join(f"{k} +{n}" for k, n in sorted(again.items())[:5])
            + (f"; contact keys delivered twice: {twice[:3]}" if twice else "")
        )
    return (
        f"{run_id}: {sum(before.values())} email(s) to {len(before)} contact(s) before the "
        f"clear, none after; {len(keys)} contact key(s), each delivered once"
    )


# --- webhooks -------------------------------------------------------------------------------


def check_webhooks(d: Deployment, c: Step) -> str:
    """``scripts/webhooks_check.py``'s checks against this deployment: a subscription made with
    ``ensure_webhook`` in the emulator process, Leap's test delivery from it and direct
    deliveries (refused, bad, repeated) to the plugin's receiver in the API server, each event
    one asset event in PostgreSQL, runs of ``leap_connect_events`` created by the scheduler
    that read every event and wait in the triggerer."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import webhooks_check
    finally:
        sys.path.remove(str(REPO / "scripts"))
    result = webhooks_check.run_checks(
        api_url=d.api_url,
        leap_url=d.emulator_url,
        api_key=d.api_key,
        webhook_secret=d.webhook_secret,
        timeout=max(c.until - time.monotonic() - 5, 10),
    )
    (d.logs / "webhooks-check.log").write_text(result.table() + "\n", encoding="utf-8")
    failed = [row for row in result.rows if not row.ok]
    if failed:
        raise CheckFailed("; ".join(f"{row.check}: {row.detail}" for row in failed))
    return f"{len(result.rows)} steps (logs/webhooks-check.log); {result.rows[-1].detail}"


# --- the key --------------------------------------------------------------------------------


def check_secret_nowhere(d: Deployment) -> str:
    """Every log, task and trigger log, rendered field, XCom, the DB dump and argv: no key."""
    for dag_id in (REENGAGEMENT, EVENTS, WATCH, FAST_WATCH):
        for run in d.api.runs(dag_id):
            for ti in d.api.task_instances(dag_id, run["dag_run_id"], keep=True):
                base = f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances"
                d.api.call("GET", f"{base}/{ti['task_id']}")  # rendered fields, trigger
                xcoms = d.api.call("GET", f"{base}/{ti['task_id']}/xcomEntries")
                for entry in xcoms["xcom_entries"]:
                    d.api.call("GET", f"{base}/{ti['task_id']}/xcomEntries/{entry['key']}")
    assert d.postgres is not None
    d.postgres.dump(d.out / "pg_dump.sql")
    needles = []
    for secret in (d.api_key, d.webhook_secret):
        needles += [secret.encode(), base64.b64encode(secret.encode())]
        random_part = secret.split("_")[-1]  # the random part, however wrapped
        if len(random_part) >= 16:  # a short one (a key of the user's own) is in any log
            needles.append(random_part.encode())
    hits, scanned = [], 0
    for path in sorted(d.out.rglob("*")):
        if not path.is_file() or "tools" in path.relative_to(d.out).parts:
            continue
        scanned += 1
        data = path.read_bytes()
        if any(n in data for n in needles):
            hits.append(str(path.relative_to(d.out)))
    from stack import ours, read_proc

    for pid in ours(d.marker, d.processes.sessions):
        if any(n in read_proc(str(pid), "cmdline") for n in needles):
            hits.append(f"argv of pid {pid}")
    task_logs = len(list((d.home / "logs").rglob("attempt=*.log")))
    trigger_logs = len(list((d.home / "logs").rglob("*.log.trigger.*.log")))
    if hits:
        raise CheckFailed(f"the key or webhook secret is in: {', '.join(hits[:10])}")
    if not task_logs or not trigger_logs:
        raise CheckFailed(f"too little to search: {task_logs} task, {trigger_logs} trigger logs")
    return (
        f"0 hits in {scanned} files ({task_logs} task logs incl. {trigger_logs} trigger logs, "
        "component logs, REST answers, pg_dump) and the argv of every process"
    )


# --- browser --------------------------------------------------------------------------------


def check_screenshots(d: Deployment, c: Step) -> str:
    from airflow_provider_leap import CONNECTION_FORM

    tools = d.out / "tools" / "node_modules"
    script = Path(__file__).resolve().parent / "browser" / "screenshots.js"
    labels = [*CONNECTION_FORM["ui-field-behaviour"]["relabeling"].values()]
    labels += [f["label"] for f in CONNECTION_FORM["conn-fields"].values()]
    argv = ["node", str(script), d.api_url, str(d.out / "screenshots"), REENGAGEMENT]
    argv += [json.dumps(labels), json.dumps(UI_CONNECTION)]
    done = subprocess.run(
        argv,
        env={**d.env, "NODE_PATH": str(tools)},
        capture_output=True,
        text=True,
        timeout=max(c.until - time.monotonic(), 10),
        check=False,
    )
    (d.logs / "screenshots.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise CheckFailed(f"screenshots: {lines[-1]} (logs/screenshots.log)")
    return done.stdout.strip().splitlines()[-1]


def check_form_saved(d: Deployment) -> str:
    """What Airflow stored when the browser saved ``UI_CONNECTION``, parsed as the hook parses it.

    Airflow's form saves every extra field's default along with what the user typed
    (apache/airflow#57984): a default environment would contradict the staging host, and a
    default timeout would freeze today's value into the connection. The form has no defaults."""
    from airflow_provider_leap import CONNECTION_FORM
    from airflow_provider_leap.config import LeapConfig, LeapConfigError

    name, path = UI_CONNECTION["id"], f"/api/v2/connections/{UI_CONNECTION['id']}"
    try:
        saved = d.api.call("GET", path)
    except CheckFailed as exc:
        raise CheckFailed(f"{name} was not saved by the browser (screenshots row): {exc}") from None
    try:
        extra = json.loads(saved["extra"] or "{}")
        stored = f"stored host {saved['host']!r}, extra {json.dumps(extra, sort_keys=True)}"
        # The REST answer masks the password ("***"): it stands in for the key, present or not.
        conn = SimpleNamespace(
            conn_id=name,
            host=saved["host"],
            schema=saved["schema"],
            port=saved["port"],
            password=saved["password"],
            extra=saved["extra"],
        )
        try:
            config = LeapConfig.from_connection(conn)
        except LeapConfigError as exc:
            raise CheckFailed(f"{stored}; the hook refuses it: {exc}") from None
        if (config.environment, config.base_url) != ("staging", UI_CONNECTION["host"]):
            raise CheckFailed(f"{stored}; resolves as {config.environment} at {config.base_url}")
        frozen = [k for k in CONNECTION_FORM["conn-fields"] if extra.get(k) not in (None, "")]
        if frozen:
            raise CheckFailed(f"{stored}; untyped form fields saved a value: {', '.join(frozen)}")
    finally:
        with contextlib.suppress(CheckFailed):  # nothing to delete: the error above says why
            d.api.call("DELETE", path)
    keys = ", ".join(f"{k}={json.dumps(v)}" if k == "environment" else k for k, v in extra.items())
    return f"{name}: staging at {config.base_url}; extra keys stored: {keys}"
