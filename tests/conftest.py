"""Test session setup: a throwaway AIRFLOW_HOME with a SQLite metadata DB, made before Airflow
is imported, so `dag.test()` runs in real Airflow without touching the developer's own home."""

from __future__ import annotations

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="leap-airflow-home-")
os.environ["AIRFLOW_HOME"] = _HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = os.path.join(_HOME, "dags")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME}/airflow.db"
# Tests run DAGs at simulated moments, months from the clock: the contact operator's check that a
# run is for the present (tests/test_contact_operator.py turns it back on) is off.
os.environ["AIRFLOW__LEAP__MAX_RUN_LAG"] = "0"
os.environ.pop("AIRFLOW_CONN_LEAP_DEFAULT", None)

import subprocess  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import shared_execution_api  # noqa: E402

from airflow_provider_leap.client import LeapClient  # noqa: E402
from airflow_provider_leap.hooks.leap import connection_json  # noqa: E402
from airflow_provider_leap.retry import RetryPolicy  # noqa: E402
from airflow_provider_leap.testing import EMULATOR_API_KEY, LeapEmulator  # noqa: E402

SIMULATION = pytest.StashKey[tuple[subprocess.Popen[bytes], Path, Path]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the 14-day re-engagement simulation in its own process as the session begins, when
    its tests are selected: it runs beside the other tests instead of after them."""
    selected = [i for i in session.items if i.module.__name__ == "test_reengagement_simulation"]
    if not selected:
        return
    module = selected[0].module
    folder = Path(tempfile.mkdtemp(prefix="leap-sim-report-"))
    out, log = folder / "sim.json", folder / "sim.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            module.simulation_command(out), stdout=handle, stderr=subprocess.STDOUT
        )
    session.config.stash[SIMULATION] = (process, out, log)
    # Its tests run last, when the simulation has had the whole session to run.
    session.items[:] = [i for i in session.items if i not in selected] + selected


def pytest_sessionfinish(session: pytest.Session) -> None:
    started = session.config.stash.get(SIMULATION, None)
    if started is not None and started[0].poll() is None:
        started[0].kill()  # the session ended early (-x, Ctrl-C): leave nothing running


# The emulator's fixtures are opt-in (no pytest11 entry point): a test suite asks for them.
pytest_plugins = ["airflow_provider_leap.testing.pytest_plugin"]


class SleepRecorder:
    """Stands in for ``time.sleep``: records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def make_client(
    leap_emulator: LeapEmulator, sleeps: SleepRecorder
) -> Iterator[Callable[..., LeapClient]]:
    """Clients to the session's emulator that never really sleep between retries."""
    made: list[LeapClient] = []

    def make(**kwargs: Any) -> LeapClient:
        kwargs.setdefault("retry", RetryPolicy(max_retries=4, max_wait=60.0))
        kwargs.setdefault("sleep", sleeps)
        client = LeapClient(
            kwargs.pop("url", leap_emulator.url), kwargs.pop("key", EMULATOR_API_KEY), **kwargs
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def leap_conn(leap_emulator: LeapEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """``leap_default`` pointing at the session's emulator, as an ``AIRFLOW_CONN_`` variable."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_LEAP_DEFAULT",
        connection_json(leap_emulator.url, EMULATOR_API_KEY, max_retries=3, max_retry_wait=30),
    )
    return "leap_default"


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """The SQLite metadata DB of this session's throwaway AIRFLOW_HOME, migrated once."""
    from airflow.utils.db import initdb

    initdb()
    return _HOME


@pytest.fixture(scope="session")
def one_execution_api() -> None:
    """The session's ``dag.test()`` runs share one in-process Execution API, on Airflow 3.2 as on
    3.3 (see shared_execution_api)."""
    shared_execution_api.share()


@dataclass
class DagRunResult:
    state: str
    xcoms: dict[tuple[str, str], Any]
    task_states: dict[str, str]


def forget_ledger_records(prefix: str) -> None:
    """Delete LeapContactOperator's ledger records (Variables) under ``prefix``: a DAG's
    (``<dag_id>/``), or the channels' (``channel:``), which a new empty ledger is checked
    against. The session shares one metadata DB, and tests use ledgers of their own."""
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    from airflow_provider_leap.operators.contact import LEDGER_VARIABLE_PREFIX

    with create_session() as session:
        key = Variable.key.startswith(LEDGER_VARIABLE_PREFIX + prefix)
        session.execute(delete(Variable).where(key))


@pytest.fixture
def run_dag(airflow_db: str, one_execution_api: None) -> Callable[..., DagRunResult]:
    """Write a DAG file into the DAGs folder and run it with ``dag.test()`` in real Airflow.

    The session shares one metadata DB: each test starts its DAGs' and channels' ledger records
    afresh (earlier tests ran the same DAG ids and channels with other ledgers, which
    LeapContactOperator would refuse to mix)."""
    import importlib.util

    started: set[str] = set()

    def run(name: str, source: str, **test_kwargs: Any) -> DagRunResult:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.py"
        path.write_text(source, encoding="utf-8")
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if module.dag.dag_id not in started:
            if not started:  # the channels' records, which earlier tests' ledgers left
                forget_ledger_records("channel:")
            started.add(module.dag.dag_id)
            forget_ledger_records(f"{module.dag.dag_id}/")
        dagrun = module.dag.test(**test_kwargs)
        with create_session() as session:
            query = XComModel.get_many(run_id=dagrun.run_id, dag_ids=module.dag.dag_id)
            rows = session.scalars(query).all()
            xcoms = {(r.task_id, r.key): XComModel.deserialize_value(r) for r in rows}
            states = {
                ti.task_id: str(ti.state) for ti in dagrun.get_task_instances(session=session)
            }
        return DagRunResult(str(dagrun.state), xcoms, states)

    return run
