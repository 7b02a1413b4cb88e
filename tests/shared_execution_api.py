"""One in-process Execution API per process for ``dag.test()``, as Airflow 3.3 has, on 3.2 too.

``dag.test()`` serves each task through an in-process Execution API app. Airflow 3.3 makes it once
per process (apache/airflow#65235); 3.2 makes a new one for every task: a FastAPI app whose Cadwyn
routes for every API version are built on its first request (3-4 s of CPU on the 2-core CI
machine) and an event-loop thread that is never stopped. That was nine tenths of the time of the
example DAG tests on 3.2. ``share()`` gives 3.2 the 3.3 behaviour: the same app code serves each
task, built once; a call without a DAG (a trigger run in process) drops the previous task's DAG
bag override, as 3.3 does. Test processes call it through the ``run_dag`` fixture; a child Python
that runs ``dag.test()`` gets this folder on its path from ``child_env`` and calls it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FOLDER = str(Path(__file__).resolve().parent)


def share() -> None:
    """Make `in_process_api_server` one per process where Airflow does not (3.2)."""
    from airflow.sdk.execution_time import supervisor

    make = supervisor.in_process_api_server
    if hasattr(make, "cache_clear"):
        return  # Airflow 3.3+: already one per process
    from airflow.api_fastapi.common.dagbag import dag_bag_from_app

    shared = functools.lru_cache(maxsize=1)(make)
    api_client = supervisor.InProcessTestSupervisor._api_client

    def client_of_shared_api(dag: Any = None) -> Any:
        if dag is None:
            shared().app.dependency_overrides.pop(dag_bag_from_app, None)
        return api_client(dag)

    supervisor.in_process_api_server = shared
    supervisor.InProcessTestSupervisor._api_client = staticmethod(client_of_shared_api)


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with this folder on ``PYTHONPATH``, so a child can ``import shared_execution_api``
    (this folder holds no copy of the provider: the child still imports the installed one)."""
    paths = [FOLDER, *filter(None, [env.get("PYTHONPATH")])]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}
