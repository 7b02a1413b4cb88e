"""The provider info's ecosystem entries as Airflow reads them: the CLI commands, the leap://
scheme's handler and OpenLineage converter, and the config section, found and working through
ProvidersManager. (Validity against the installed Airflow's provider-info schema, which
scripts/compat_check.sh runs on the oldest and newest supported Airflow, is in
tests/test_provider_info.py.)"""

from __future__ import annotations

from airflow_provider_leap import datasets, get_provider_info

PACKAGE = "airflow-provider-leap"


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
    """Per-connection settings live in the connection. The ledger is shared by every DAG and
    connection that sends on a channel, and how far behind the clock a run may still send is
    one rule for every sender of a deployment: the two provider-wide options."""
    info = get_provider_info()
    assert list(info["config"]) == ["leap"]
    assert list(info["config"]["leap"]["options"]) == ["ledger_url", "max_run_lag"]
    assert "notifications" not in info  # no notifier is shipped
