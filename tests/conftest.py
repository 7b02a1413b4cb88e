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
os.environ.pop("AIRFLOW_CONN_LEAP_DEFAULT", None)
