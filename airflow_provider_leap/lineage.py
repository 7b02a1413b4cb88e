"""OpenLineage for the provider's tasks, through Airflow's OpenLineage provider (optional extra).

Only the OpenLineage listener imports this module, by calling an operator's
``get_openlineage_facets_on_complete``; so importing the provider never loads OpenLineage, and
without ``apache-airflow-providers-openlineage`` nothing here runs.

What is reported (docs: Lineage):

- input: the Connect records, ``leap://<conn_id>/connections`` (``datasets``), with the filters
  asked for (``leapQuery``) and, for the triage, the records read (``inputStatistics``);
- ``TriageOperator`` output: one dataset per bucket with its row count: the XCom, or, where
  Airflow's ``XComObjectStorageBackend`` moved the bucket to object storage, that file (with a
  symlink to the XCom's name); and the run facet ``leapTriage``: counts per bucket and reason;
- ``LeapContactOperator``: the buckets it read as inputs, the channel's delivery ledger as output
  (rows: messages sent), and the run facet ``leapContact`` with its counts.

The custom facets' JSON Schema ships beside this module (``lineage_facets.json``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import attr
from airflow.providers.openlineage import conf as ol_conf
from airflow.providers.openlineage.extractors import OperatorLineage
from openlineage.client.event_v2 import Dataset, InputDataset, OutputDataset
from openlineage.client.facet_v2 import (
    DatasetFacet,
    InputDatasetFacet,
    RunFacet,
    datasource_dataset,
    input_statistics_input_dataset,
    output_statistics_output_dataset,
    symlinks_dataset,
)

from airflow_provider_leap import __version__
from airflow_provider_leap.datasets import CONNECTIONS, dataset_name

if TYPE_CHECKING:
    from datetime import datetime

    from airflow_provider_leap.triage import TriageResult

log = logging.getLogger(__name__)
Lineage = OperatorLineage[Dataset, Any]

# Where the custom facets' schema is published: in the package, beside this module.
SCHEMA_URL = f"https://pypi.org/project/airflow-provider-leap/{__version__}/lineage_facets.json"
XCOM_SCHEME = "xcom"


class _LeapSchema:
    """Names a custom facet's definition in the shipped schema: ``#/$defs/<class name>``."""

    @classmethod
    def _get_schema(cls) -> str:
        return f"{SCHEMA_URL}#/$defs/{cls.__name__}"


@attr.define
class LeapQueryInputDatasetFacet(_LeapSchema, InputDatasetFacet):
    """The filters a task sent to the Connect API: how much of the source it asked for."""

    refIds: int | None = attr.field(default=None)  # None: every customer
    startedAfter: str | None = attr.field(default=None)
    interactedAfter: str | None = attr.field(default=None)
    activeAfter: str | None = attr.field(default=None)
    _additional_skip_redact: ClassVar[list[str]] = [
        "refIds",
        "startedAfter",
        "interactedAfter",
        "activeAfter",
    ]


@attr.define
class LeapTriageRunFacet(_LeapSchema, RunFacet):
    """The funnel of one triage: items (Connect records) per bucket, and per reason in each."""

    recordsRead: int
    duplicatesDropped: int
    now: str
    quietPeriodSeconds: float
    buckets: dict[str, int]
    reasons: dict[str, dict[str, int]]
    _additional_skip_redact: ClassVar[list[str]] = [
        "recordsRead", "duplicatesDropped", "now", "quietPeriodSeconds", "buckets", "reasons",
    ]  # fmt: skip


@attr.define
class LeapContactRunFacet(_LeapSchema, RunFacet):
    """One channel's run of the re-engagement: the counts ``LeapContactOperator`` returned."""

    channel: str
    counts: dict[str, int]
    _additional_skip_redact: ClassVar[list[str]] = ["channel", "counts"]


# -- datasets --------------------------------------------------------------------------------


def connect_input(
    conn_id: str,
    base_url: str | None,
    *,
    ref_ids: int | None,
    started_after: datetime | None = None,
    interacted_after: datetime | None = None,
    active_after: datetime | None = None,
    rows: int | None = None,
) -> InputDataset:
    """The Connect records of one connection, as read with these filters."""
    namespace, name = dataset_name(conn_id, CONNECTIONS)
    facets: dict[str, DatasetFacet] = {}
    if base_url:  # the environment: Leap's production or staging host, or another base URL
        facets["dataSource"] = datasource_dataset.DatasourceDatasetFacet(
            name=namespace, uri=base_url
        )
    input_facets: dict[str, InputDatasetFacet] = {
        "leapQuery": LeapQueryInputDatasetFacet(
            refIds=ref_ids,
            startedAfter=_iso(started_after),
            interactedAfter=_iso(interacted_after),
            activeAfter=_iso(active_after),
        )
    }
    if rows is not None:
        stats = input_statistics_input_dataset.InputStatisticsInputDatasetFacet(rowCount=rows)
        input_facets["inputStatistics"] = stats
    return InputDataset(namespace, name, facets=facets, inputFacets=input_facets)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def xcom_identity(dag_id: str, task_id: str, key: str) -> tuple[str, str]:
    """An XCom's stable dataset name: ``xcom://<OpenLineage namespace>``, ``dag/task/key``."""
    return f"{XCOM_SCHEME}://{ol_conf.namespace()}", f"{dag_id}/{task_id}/{key}"


def stored_dataset(url: str) -> tuple[str, str]:
    """The OpenLineage namespace and name of an object-storage location (a file or a folder):
    Airflow's converter for its scheme where a provider registers one (``file``: common-io),
    else ``scheme://bucket`` and the path. A connection id in the URL (``s3://conn@bucket``) is
    dropped: it names credentials, not data."""
    parts = urlsplit(url)
    location = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    try:
        from airflow.providers.openlineage.utils.utils import translate_airflow_asset
        from airflow.sdk import Asset

        converted = translate_airflow_asset(Asset(uri=location), None)
    except Exception:  # no converter, or a URI Airflow refuses: the generic form below
        converted = None
    if converted is not None:
        return converted.namespace, converted.name
    plain = urlsplit(location)
    return f"{plain.scheme}://{plain.netloc}", plain.path.lstrip("/")


def xcom_dataset(
    task_instance: Any, task_id: str, key: str, location: str | None, cls: type[Dataset]
) -> Dataset:
    """One XCom as a dataset: its stored file when offloaded (with a symlink to the XCom's stable
    name, so a consumer can follow one bucket across runs), else the XCom itself."""
    namespace, name = xcom_identity(task_instance.dag_id, task_id, key)
    if location is None:
        return cls(namespace, name)
    file_namespace, file_name = stored_dataset(location)
    symlink = symlinks_dataset.Identifier(namespace=namespace, name=name, type="XCOM")
    facets: dict[str, DatasetFacet] = {
        "symlinks": symlinks_dataset.SymlinksDatasetFacet(identifiers=[symlink])
    }
    return cls(file_namespace, file_name, facets=facets)


def _with_rows(dataset: Dataset, rows: int) -> OutputDataset:
    stats = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=rows)
    return OutputDataset(
        dataset.namespace,
        dataset.name,
        facets=dataset.facets,
        outputFacets={"outputStatistics": stats},
    )


# -- per operator -----------------------------------------------------------------------------


def reason_counts(buckets: Mapping[str, list[dict[str, Any]]]) -> dict[str, dict[str, int]]:
    """Per bucket, how many items carry each ``reason`` (``error:USER_CANCELED`` and the like)."""
    return {
        name: dict(Counter(str(item.get("reason")) for item in items))
        for name, items in buckets.items()
    }


def triage_lineage(
    task_instance: Any, source: InputDataset, result: TriageResult, locations: Mapping[str, str]
) -> Lineage:
    """The triage's input, its buckets (``locations``: the offloaded ones' files) and funnel."""
    summary = result.summary
    outputs: list[Dataset] = [
        _with_rows(
            xcom_dataset(task_instance, task_instance.task_id, name, locations.get(name), Dataset),
            len(items),
        )
        for name, items in result.buckets.items()
    ]
    facet = LeapTriageRunFacet(
        recordsRead=summary["records_read"],
        duplicatesDropped=summary["duplicates_dropped"],
        now=summary["now"],
        quietPeriodSeconds=summary["quiet_period_seconds"],
        buckets=dict(summary["counts"]),
        reasons=reason_counts(result.buckets),
    )
    return OperatorLineage(inputs=[source], outputs=outputs, run_facets={"leapTriage": facet})


def contact_lineage(
    task_instance: Any,
    triage_task_id: str,
    buckets: Iterable[str],
    locations: Mapping[str, str],
    ledger_folder: str | None,
    channel: str,
    counts: Mapping[str, int] | None,
) -> Lineage:
    """The buckets a contact run read (``locations``: the offloaded ones' files), and the
    channel's ledger it wrote."""
    inputs = [
        xcom_dataset(task_instance, triage_task_id, name, locations.get(name), InputDataset)
        for name in buckets
    ]
    if counts is None or ledger_folder is None:
        return OperatorLineage(inputs=inputs)
    ledger = _with_rows(Dataset(*stored_dataset(ledger_folder)), counts.get("sent", 0))
    facet = LeapContactRunFacet(channel=channel, counts=dict(counts))
    return OperatorLineage(inputs=inputs, outputs=[ledger], run_facets={"leapContact": facet})
