"""The customer's Leap Connect link, so a message can say "continue here". No Airflow import.

Leap's link is ``https://connect.leap.energy?transmissionRegion=&variant=&account=&refId=``: the
partner's ``account`` and ``variant`` (e.g. RESIDENTIAL or COMMERCIAL) come from the extras
``connect_account`` and ``connect_variant``, the region and Reference ID from the Connect record.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode, urlsplit

from airflow_provider_leap.errors import LeapConfigError

DEFAULT_CONNECT_BASE_URL = "https://connect.leap.energy"
DEFAULT_VARIANT = "RESIDENTIAL"


def connect_url(
    ref_id: str,
    *,
    transmission_region: str,
    account: str,
    variant: str = DEFAULT_VARIANT,
    base_url: str = DEFAULT_CONNECT_BASE_URL,
) -> str:
    """The customer's Connect link; every value URL-encoded exactly once."""
    if not account:
        raise LeapConfigError(
            "No Leap partner account for Connect links: set the connection extra "
            "connect_account (your account name in Leap's Connect URLs)"
        )
    if not ref_id or not transmission_region:  # the customer's record, not the settings
        raise ValueError("A Connect link needs the Reference ID and the transmission region")
    parts = urlsplit(base_url)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise LeapConfigError(f"connect_base_url {base_url!r} must be a plain https:// URL")
    query = {
        "transmissionRegion": transmission_region,
        "variant": variant,
        "account": account,
        "refId": ref_id,
    }
    return f"{base_url.rstrip('/')}?{urlencode(query, quote_via=quote, safe='')}"
