"""Keep large triage buckets out of the metadata database: JSON lines in object storage."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from airflow.sdk import ObjectStoragePath


def write_bucket(folder: ObjectStoragePath, name: str, items: Iterable[dict[str, Any]]) -> str:
    """Write one bucket as ``<folder>/<name>.jsonl`` and return the file's URL for XCom."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item, separators=(",", ":")))
            handle.write("\n")
    return str(path)


def load_bucket(
    value: str | list[dict[str, Any]] | None, conn_id: str | None = None
) -> list[dict[str, Any]]:
    """A bucket's items from its XCom value, whether the list itself or a file URL."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    path = ObjectStoragePath(value, conn_id=conn_id)
    with path.open("r", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
