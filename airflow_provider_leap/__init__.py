"""Apache Airflow provider for Leap's partner API.

Importing the package is cheap on purpose (Airflow imports it while parsing DAG files): no
Airflow, HTTP or JSON library is imported here.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """Provider metadata read by Airflow's ``ProvidersManager`` (the entry point)."""
    return {
        "package-name": "airflow-provider-leap",
        "name": "Leap",
        "description": "Leap partner API: Connect status, triage buckets and meters.",
        "versions": [__version__],
        "connection-types": [
            {
                "connection-type": "leap",
                "hook-class-name": "airflow_provider_leap.hooks.leap.LeapHook",
            }
        ],
    }
