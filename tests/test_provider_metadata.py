"""The provider info, as Airflow reads it: valid against the installed Airflow's own schema, and
every entry Airflow resolves (CLI commands, the leap:// scheme's handler and OpenLineage
converter, links, config) found and working through ProvidersManager."""

from __future__ import annotations

import json
from pathlib import Path

import airflow
from jsonschema import Draft7Validator

from airflow_provider_leap import datasets, get_provider_info

PACKAGE = "airflow-provider-leap"


def test_every_key_is_valid_for_the_installed_airflow() -> None:
    schema_path = Path(airflow.__file__).with_name("provider_info.schema.json")
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in Draft7Validator(schema).iter_errors(get_provider_info())
    ]
    assert errors == [], f"against Airflow {airflow.__version__}'s schema: {errors}"


def test_airflow_registers_the_cli_the_scheme_and_the_config() -> None:
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    manager = ProvidersManager()
    assert PACKAGE in manager.providers
    assert PACKAGE in manager.cli_command_providers
    (group,) = [
        command
        for function in manager.cli_command_functions
        if function.__module__ == "airflow_provider_leap.cli"
        for command in function()
    ]
    assert group.name == "leap" and [c.name for c in group.subcommands] == ["probe"]
    runtime = ProvidersManagerTaskRuntime()
    assert runtime.asset_uri_handlers["leap"] is datasets.normalize_uri
    assert runtime.asset_to_openlineage_converters["leap"] is datasets.asset_to_openlineage
    assert dict(manager.provider_configs)[PACKAGE] == get_provider_info()["config"]


def test_config_is_only_what_is_better_global() -> None:
    """Per-connection settings live in the connection; the ledger is shared by every DAG and
    connection that sends on a channel, so it is the one provider-wide option."""
    info = get_provider_info()
    assert list(info["config"]) == ["leap"]
    assert list(info["config"]["leap"]["options"]) == ["ledger_url"]
    assert "notifications" not in info  # no notifier is shipped
