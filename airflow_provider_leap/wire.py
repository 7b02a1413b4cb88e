"""Hosts and wire names of Leap's partner API, each defined exactly once.

Leap publishes the hosts, the paging rule and the meters search; the Connect endpoint's names sit
behind a partner login, so the ``WireNames`` defaults are *assumptions*, each overridable by the
connection extra of the same name, e.g. ``{"ref_id_param": "refId"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from airflow_provider_leap.errors import LeapConfigError

PRODUCTION_URL = "https://api.leap.energy"
STAGING_URL = "https://api.staging.leap.energy"
ENVIRONMENT_URLS: Mapping[str, str] = {"production": PRODUCTION_URL, "staging": STAGING_URL}

PORTAL_URLS: Mapping[str, str] = {  # the extra link's target, unless the portal_url extra is set
    "production": "https://partner.leap.energy",
    "staging": "https://partner.staging.leap.energy",
}

METERS_SEARCH_PATH = "/v2/meters/search"
METERS_MAX_REFERENCE_IDS = 100
METERS_PAGE_SIZE_RANGE = (1, 500)


@dataclass(frozen=True)
class WireNames:
    """The Connect API's wire contract; defaults are the project's adopted (unpublished) names."""

    connections_path: str = "/v1.1/connections"
    ref_id_param: str = "ref-id"
    start_date_param: str = "start-date"
    last_interaction_param: str = "last-interaction-date"
    page_size_param: str = "page-size"
    page_token_param: str = "page-token"
    records_key: str = "connections"
    next_token_key: str = "nextPageToken"

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, str) or not value.strip() or value != value.strip():
                raise LeapConfigError(f"wire name {field.name}={value!r} must be a plain string")
        if not self.connections_path.startswith("/") or "?" in self.connections_path:
            raise LeapConfigError(
                f"connections_path {self.connections_path!r} must be a path starting with '/', "
                "e.g. /v1.1/connections"
            )


# Shapes Leap's services have been seen to use besides the adopted ones: accepted when reading.
RECORDS_KEY_FALLBACKS = ("data", "items")
NEXT_TOKEN_KEY_FALLBACKS = ("next_page_token",)
