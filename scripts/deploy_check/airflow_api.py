"""The Airflow 3 REST API calls the deployment check makes, and waits with deadlines.

Every call is logged (method, path, status) to ``api.log`` in the output folder, and every
answer body is kept under ``api/`` so the secret sweep reads exactly what clients received.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import requests

T = TypeVar("T")

# A task instance in one of these states means the run will not succeed on this try.
BAD_TASK_STATES = frozenset({"failed", "up_for_retry", "upstream_failed"})


class CheckFailed(Exception):
    """A check's condition did not hold; the message is the table's detail."""


def wait_for(what: str, probe: Callable[[], T | None], until: float, every: float = 1.0) -> T:
    """Call ``probe`` until it returns something other than None, or fail at ``until``."""
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() >= until:
            raise CheckFailed(f"deadline passed waiting for {what}")
        time.sleep(every)


def task_error(task_logs: Path, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
    """The exception a task try failed with, from its log (structured JSON lines)."""
    path = task_logs / f"dag_id={dag_id}/run_id={run_id}/task_id={task_id}/attempt={try_number}.log"
    first = ""
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else ():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("level") != "error":
            continue
        for detail in event.get("error_detail") or ():
            return f"{detail.get('exc_type')}: {detail.get('exc_value')}"
        first = first or str(event.get("event"))
    return first[:200]


class AirflowApi:
    def __init__(self, base_url: str, out: Path, task_logs: Path) -> None:
        self.task_logs = task_logs
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.bodies = out / "api"
        self.bodies.mkdir(parents=True, exist_ok=True)
        self.log = out / "logs" / "api.log"
        self._count = 0

    def call(self, method: str, path: str, body: Any = None, *, keep: bool = True) -> Any:
        response = self.session.request(
            method, self.base_url + path, json=body, timeout=60, allow_redirects=False
        )
        self._count += 1
        with self.log.open("a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%H:%M:%S')} {method} {path} -> {response.status_code}\n")
        if keep:
            name = f"{self._count:04d}-{method}-{path.strip('/').replace('/', '_')[:120]}.json"
            (self.bodies / name).write_bytes(response.content)
        if response.status_code >= 400:
            raise CheckFailed(f"{method} {path}: HTTP {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    # --- dags and runs --------------------------------------------------------------------

    def unpause(self, dag_id: str) -> None:
        self.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(
        self, dag_id: str, run_id: str, *, logical_date: str | None = None, conf: Any = None
    ) -> dict[str, Any]:
        body = {"dag_run_id": run_id, "logical_date": logical_date, "conf": conf or {}}
        result: dict[str, Any] = self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)
        return result

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = self.call(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100", keep=False
        )["dag_runs"]
        return runs

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}", keep=False
        )
        return result

    def set_run_state(self, dag_id: str, run_id: str, state: str) -> None:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"
        self.call("PATCH", path, {"state": state})

    def task_instances(self, dag_id: str, run_id: str, *, keep: bool = False) -> list[Any]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances"
        items: list[Any] = self.call("GET", path, keep=keep)["task_instances"]
        return items

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
        result: dict[str, Any] = self.call("GET", path, keep=False)
        return result

    def tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/tries"
        )
        items: list[dict[str, Any]] = self.call("GET", path, keep=False)["task_instances"]
        return items

    def clear_run(self, dag_id: str, run_id: str) -> None:
        body = {
            "dag_run_id": run_id,
            "dry_run": False,
            "only_failed": False,
            "reset_dag_runs": True,
        }
        self.call("POST", f"/api/v2/dags/{dag_id}/clearTaskInstances", body)

    def wait_run(self, dag_id: str, run_id: str, until: float) -> dict[str, Any]:
        """The finished run; fails as soon as a task fails or goes up for retry.

        The example DAG retries twice, 5 minutes apart, and allows one active run: a failing
        run would hold the DAG for 10 minutes, so a failure is marked on the run at once.
        """

        def probe() -> dict[str, Any] | None:
            run = self.run(dag_id, run_id)
            if run["state"] in ("success", "failed"):
                return run
            bad = [
                ti for ti in self.task_instances(dag_id, run_id) if ti["state"] in BAD_TASK_STATES
            ]
            if bad:
                self.set_run_state(dag_id, run_id, "failed")
                ti = bad[0]
                error = task_error(self.task_logs, dag_id, run_id, ti["task_id"], ti["try_number"])
                raise CheckFailed(f"{run_id}: {ti['task_id']} {ti['state']}: {error}")
            return None

        run = wait_for(f"{dag_id} run {run_id}", probe, until)
        if run["state"] != "success":
            states = {t["task_id"]: t["state"] for t in self.task_instances(dag_id, run_id)}
            raise CheckFailed(f"{run_id} {run['state']}: {json.dumps(states)}")
        return run
