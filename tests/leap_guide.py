"""The example record of Leap's guide, typed once for every test that needs it.

Kept as the guide's text (not a dict) so a test can check it verbatim against the guide when
``shared/leap`` sits beside the checkout, and independently of the emulator's copy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GUIDE_PATH = Path(__file__).resolve().parents[2] / "shared" / "leap" / "connect-status-guide.txt"

GUIDE_EXAMPLE_TEXT = """{
"id": "CAISO_62631455-9dfd-433b-9482-fd043f2336d4_Test1012",
"transmission_region": "CAISO",
"ref_id": "Test1012",
"start_date_time_utc": "2023-01-11T02:44:57Z",
"last_interaction_date_time_utc": "2023-01-11T02:45:50Z",
"connection_status": "ERROR",
"utility_connections": [
{
"authorization_uuid": "910bfb80-8b22-4341-8b5b-8752a21dccad",
"utility_name": "SDG&E: San Diego Gas & Electric",
"utility_is_required": true,
"status": "ERROR",
"error_code": "USER_CANCELED",
"start_date_time_utc": "2023-01-11T02:44:57Z",
"last_interaction_date_time_utc": "2023-01-11T02:45:50Z"
}
],
"agreements": {
"prohibited_resource_attestation_status": "NOT_REQUIRED",
"demand_response_participation_agreement_status": "NOT_REQUIRED"
}
}"""


def guide_example() -> dict[str, Any]:
    """A fresh dict of the record each call, so a test may change its copy."""
    return json.loads(GUIDE_EXAMPLE_TEXT)  # type: ignore[no-any-return]
