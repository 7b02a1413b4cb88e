"""``airflow leap ...``: the provider's CLI commands (the ``cli`` entry of the provider info).

Airflow imports this module whenever its CLI starts, so it only declares the commands; the
probe and the HTTP stack load when a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from airflow_provider_leap import DEFAULT_CONN_ID


def get_cli_commands() -> list[Any]:
    """The ``leap`` command group, as Airflow's CLI parser takes it."""
    from airflow.cli.cli_config import ActionCommand, Arg, GroupCommand, lazy_load_command

    arg = cast("Any", Arg)  # untyped in Airflow

    probe = ActionCommand(
        name="probe",
        help="Check which Connect API path and parameter names Leap answers to",
        description=(
            "Tries candidate Connect paths and parameter names with page size 1 and harmless "
            "filters (read-only, at most a few dozen requests; the key is never printed), "
            "reports which the server honours, refuses or ignores, compares them with the "
            "assumed contract, and prints the connection extras to set. Use a staging key."
        ),
        func=lazy_load_command("airflow_provider_leap.cli.probe_command"),
        args=(
            arg(("--conn-id",), help=f"The Leap connection (default {DEFAULT_CONN_ID})",
                default=DEFAULT_CONN_ID),
            arg(("--ref-id",), help="A Reference ID you know exists, to check the ID filter "
                "with (default: one from the first page)"),
            arg(("--spec",), help="An OpenAPI file with x-leap-wire-name marks to compare with "
                "(e.g. spec/connect-openapi.assumed.yml; default: the provider's defaults)"),
            arg(("--json",), help="Print the report as JSON", action="store_true"),
        ),
    )  # fmt: skip
    return [GroupCommand(name="leap", help="Leap partner API tools", subcommands=(probe,))]


def probe_command(args: argparse.Namespace) -> None:
    """Run the probe with the connection ``args.conn_id``; exit 1 unless every name answered."""
    import yaml  # type: ignore[import-untyped]
    from airflow.models.connection import Connection

    from airflow_provider_leap.client import LeapClient
    from airflow_provider_leap.config import LeapConfig
    from airflow_provider_leap.errors import LeapError
    from airflow_provider_leap.probe import assumed_names, format_report, probe

    with stdout_to(2):
        try:
            conn = Connection.get_connection_from_secrets(args.conn_id)
            config = LeapConfig.from_connection(conn)
            spec = None
            if args.spec:
                with open(args.spec, encoding="utf-8") as handle:
                    spec = yaml.safe_load(handle)
        except (LeapError, OSError, yaml.YAMLError) as exc:
            sys.exit(f"airflow leap probe: {exc}")
        except Exception as exc:  # e.g. AirflowNotFoundException: no such connection
            sys.exit(f"airflow leap probe: connection {args.conn_id!r}: {exc}")
        if config.environment == "production" and not args.json:
            print("Probing production; a staging key is recommended.", file=sys.stderr)
        with LeapClient(config) as client:
            report = probe(client, args.ref_id)
    assumed = assumed_names(spec)
    if args.json:
        print(json.dumps(report.to_dict(assumed), indent=2))
    else:
        source = args.spec or "the provider's default wire names (airflow_provider_leap.wire)"
        print(format_report(report, assumed, source))
    if not report.complete:
        sys.exit(1)


@contextmanager
def stdout_to(fd: int) -> Iterator[None]:
    """The process's stdout (file descriptor 1) goes to ``fd`` meanwhile: the probe sends it to
    stderr so that stdout holds the report alone (``--json | jq`` works), as Airflow 3.2's CLI
    logs to stdout, and looking up a connection there logs Alembic's and SQLAlchemy's start-up
    lines."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(fd, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
