"""Apache Airflow provider for Leap's partner API.

Cheap to import on purpose (Airflow imports it while parsing DAG files): no Airflow, HTTP or JSON.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
DEFAULT_CONN_ID = "leap_default"

# The ``leap`` connection form, declared once: Airflow 3 reads it from the provider info without
# importing the hook. Each field is stored as the extra of the same name.
# Airflow's form stores every field's default in the extra on save: the environment has none,
# or a staging host typed into Base URL would be saved with "production" and contradict it.
_FIELDS = (  # extra, label, JSON type, default
    ("environment", "Environment", "string", None),
    ("timeout", "Timeout (seconds)", "number", 30),
    ("max_retries", "Retry limit", "integer", 5),
    ("max_retry_wait", "Longest total retry wait (seconds)", "number", 300),
    ("retry_backoff", "First retry backoff (seconds)", "number", 1),
    ("page_size", "Page size", "integer", 500),
    ("allow_insecure_http", "Allow plain http:// to a non-loopback host", "boolean", False),
)
_HELP = {
    "environment": "Empty: the Base URL's, else production. A key works in one only.",
    "timeout": "Longest wait on the socket, per request.",
    "max_retries": "Retries of 429, 5xx, timeouts and connection errors per request.",
    "retry_backoff": "Doubles on each retry, with jitter; Retry-After wins when sent.",
}
CONNECTION_FORM: dict[str, Any] = {
    "conn-fields": {
        name: {
            "label": label,
            **({"description": _HELP[name]} if name in _HELP else {}),
            "schema": {
                "type": [kind, "null"],
                **({"enum": ["production", "staging"]} if name == "environment" else {}),
                "default": default,
            },
        }
        for name, label, kind, default in _FIELDS
    },
    "ui-field-behaviour": {
        "hidden-fields": ["schema", "port", "login"],
        "relabeling": {"host": "Base URL", "password": "API key"},
        "placeholders": {
            "host": "empty = from Environment; or https://api.staging.leap.energy",
            "password": "the partner API key from Leap's Partner Portal",
            "extra": '{"environment": "staging", "ref_id_param": "ref-id"}',
        },
    },
}


def get_provider_info() -> dict[str, Any]:
    """Provider metadata read by Airflow's ``ProvidersManager`` (the entry point)."""
    return {
        "package-name": "airflow-provider-leap",
        "name": "Leap",
        "description": "Leap partner API: Connect status, triage buckets and meters.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Leap",
                "external-doc-url": "https://leap.energy",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {"integration-name": "Leap", "python-modules": ["airflow_provider_leap.hooks.leap"]}
        ],
        "operators": [
            {
                "integration-name": "Leap",
                "python-modules": [
                    "airflow_provider_leap.operators.triage",
                    "airflow_provider_leap.operators.buckets",
                    "airflow_provider_leap.operators.contact",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "Leap",
                "python-modules": ["airflow_provider_leap.sensors.connect"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Leap",
                "python-modules": ["airflow_provider_leap.triggers.connect"],
            }
        ],
        "extra-links": ["airflow_provider_leap.links.LeapConnectionsLink"],
        "cli": ["airflow_provider_leap.cli.get_cli_commands"],
        "asset-uris": [
            {
                "schemes": ["leap"],
                "handler": "airflow_provider_leap.datasets.normalize_uri",
                "to_openlineage_converter": "airflow_provider_leap.datasets.asset_to_openlineage",
            }
        ],
        "config": {
            "leap": {
                "description": "Provider-wide settings of airflow-provider-leap.",
                "options": {
                    "ledger_url": {
                        "description": (
                            "Where the delivery ledger of LeapContactOperator lives: a folder "
                            "path or an object storage URL, shared by every worker. Empty: "
                            "$AIRFLOW_HOME/leap_ledger, which suits a single machine only.\n"
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "s3://aws_default@my-bucket/leap-ledger",
                        "default": "",
                    }
                },
            }
        },
        "connection-types": [
            {
                "connection-type": "leap",
                "hook-class-name": "airflow_provider_leap.hooks.leap.LeapHook",
                "hook-name": "Leap",
                **CONNECTION_FORM,
            }
        ],
    }
