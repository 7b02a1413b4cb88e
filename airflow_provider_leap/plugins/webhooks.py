"""The Airflow plugin of the provider: the Leap webhook receiver on the API server.

Registered through the ``airflow.plugins`` entry point. Cheap to import: every Airflow process
that loads plugins imports this module, only the API server builds the app (``receiver.py``).
"""

from __future__ import annotations

import functools
from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/leap"


class LeapWebhooksPlugin(AirflowPlugin):
    """Mounts the Leap webhook receiver on Airflow's API server at ``/leap/webhooks/{conn_id}``."""

    name = "leap_webhooks"

    @functools.cached_property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        from airflow_provider_leap.plugins.receiver import create_app

        return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Leap webhook receiver"}]
