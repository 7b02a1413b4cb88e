"""Emulator page: the conftest.py of a test suite that runs your DAGs with dag.test()."""

# --8<-- [start:conftest]
# conftest.py
import os
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["airflow_provider_leap.testing.pytest_plugin"]


def pytest_configure(config: pytest.Config) -> None:
    """Before Airflow is imported: a throwaway AIRFLOW_HOME for each test session."""
    home = tempfile.mkdtemp(prefix="airflow-test-")
    os.environ["AIRFLOW_HOME"] = home
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home}/airflow.db"
    os.environ["AIRFLOW__LEAP__LEDGER_URL"] = f"file://{home}/leap_ledger"
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).parent.parent / "dags")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__LEAP__MAX_RUN_LAG"] = "0"


@pytest.fixture(scope="session")
def airflow_db() -> None:
    from airflow.utils.db import initdb

    initdb()


# --8<-- [end:conftest]
