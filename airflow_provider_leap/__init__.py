"""Apache Airflow provider for Leap's partner API.

Cheap to import on purpose (Airflow imports it while parsing DAG files): no Airflow, HTTP or JSON.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
DEFAULT_CONN_ID = "leap_default"

# The ``leap`` connection form, declared once: Airflow 3 reads it from the provider info without
# importing the hook. Each field is stored as the extra of the same name.
# No field has a default: Airflow's form saves every default into the extra on Save, which would
# freeze today's values into each saved connection (and a default environment would contradict
# a staging host typed into Base URL). An empty field is the provider's default, named in its help.
_FIELDS = (  # extra, label, JSON type, help text
    ("environment", "Environment", "string", "Empty: the Base URL's, else production."),
    ("timeout", "Timeout (seconds)", "number", "Longest wait on the socket. Empty: 30."),
    ("max_retries", "Retry limit", "integer", "Retries of 429, 5xx, timeouts. Empty: 5."),
    ("max_retry_wait", "Longest total retry wait (seconds)", "number", "Empty: 300."),
    ("retry_backoff", "First retry backoff (seconds)", "number", "Doubles per retry. Empty: 1."),
    ("page_size", "Page size", "integer", "Records per page. Empty: 500."),
    (
        "allow_insecure_http",
        "Allow plain http:// to a non-loopback host",
        "boolean",
        "Empty: false.",
    ),
)
CONNECTION_FORM: dict[str, Any] = {
    "conn-fields": {
        name: {
            "label": label,
            "description": text,
            "schema": {
                "type": [kind, "null"],
                **({"enum": ["production", "staging"]} if name == "environment" else {}),
            },
        }
        for name, label, kind, text in _FIELDS
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


def _modules(*names: str) -> list[dict[str, Any]]:
    return [{"integration-name": "Leap", "python-modules": [f"{__name__}.{n}" for n in names]}]


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
        "hooks": _modules("hooks.leap"),
        "operators": _modules("operators.triage", "operators.buckets", "operators.contact"),
        "sensors": _modules("sensors.connect"),
        "triggers": _modules("triggers.connect"),
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
                            "Where the delivery ledger of LeapContactOperator lives: an "
                            "absolute folder path or an object storage URL, shared by every "
                            "worker. Empty: $AIRFLOW_HOME/leap_ledger, which suits a single "
                            "machine only.\n"
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "s3://aws_default@my-bucket/leap-ledger",
                        "default": "",
                    },
                    "max_run_lag": {
                        "description": (
                            "How many seconds behind the clock a run's run_after (or its "
                            "triage moment, when later) may be for "
                            "LeapContactOperator to send. Leap's API has no "
                            "history: a backfill, a catch-up or a run cleared hours later reads "
                            "today's records, and planning them at a past moment would replay "
                            "the cadence in minutes. Such a run sends nothing; the run for the "
                            "present sends what is due. 0 turns the check off, and the one "
                            "that holds a try whose triage read Leap before its latest hourly "
                            "refresh.\n"
                        ),
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "7200",
                        "default": "7200",
                    },
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
