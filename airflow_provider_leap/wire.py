"""Hosts and wire names of Leap's partner API, each defined exactly once.

Leap publishes the hosts, the ``nextPageToken``/``page-token`` paging rule and the meters search.
The Connect endpoint's path and query names sit behind a partner login, so the ``WireNames``
defaults below are *assumptions* (see ``API-NOTES.md``). Every one of them can be overridden from
the Airflow connection's extras under the same name, e.g. ``{"ref_id_param": "refId"}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PRODUCTION_URL = "https://api.leap.energy"
STAGING_URL = "https://api.staging.leap.energy"
ENVIRONMENT_URLS: Mapping[str, str] = {"production": PRODUCTION_URL, "staging": STAGING_URL}

# Partner Portal's Connections tab, for the operator extra link (assumed path, overridable as
# the ``portal_url`` extra).
PORTAL_URLS: Mapping[str, str] = {
    "production": "https://app.leap.energy/connect",
    "staging": "https://app.staging.leap.energy/connect",
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

    @classmethod
    def from_extras(cls, extras: Mapping[str, Any]) -> WireNames:
        """Build from connection extras; only keys naming a field are used, others are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        overrides = {k: str(v) for k, v in extras.items() if k in names and v not in (None, "")}
        return cls(**overrides)


# Shapes Leap's services have been seen to use besides the adopted ones: accepted when reading.
RECORDS_KEY_FALLBACKS = ("data", "items")
NEXT_TOKEN_KEY_FALLBACKS = ("next_page_token",)
