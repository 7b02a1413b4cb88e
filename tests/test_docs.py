"""The documentation: its code samples import and run, its facts match the code. (.ci/run
builds the site, strictly.)

The Python samples of the guides live in ``docs/snippets/*.py`` and are included into the pages,
so a renamed argument or a changed behaviour breaks a test here instead of silently rotting.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from airflow_provider_leap import CONNECTION_FORM, wire
from airflow_provider_leap.config import KNOWN_EXTRAS, LeapConfig
from airflow_provider_leap.triage import BUCKETS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SNIPPETS = DOCS / "snippets"
PACKAGE = ROOT / "airflow_provider_leap"
SNIPPET_FILES = sorted(SNIPPETS.glob("*.py"))


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def all_pages() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md")))


def load_snippet(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"leap_docs_snippet_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- (a) every snippet imports, and every snippet is used by a page ------------------------------


@pytest.mark.parametrize("path", SNIPPET_FILES, ids=lambda p: p.stem)
def test_snippet_imports(path: Path) -> None:
    module = load_snippet(path)
    dag = getattr(module, "dag", None)
    if dag is not None:  # a DAG file: it parsed into tasks (mapping rules are checked at parse)
        assert dag.task_dict, path.name


@pytest.mark.parametrize("path", SNIPPET_FILES, ids=lambda p: p.stem)
def test_snippet_is_included_by_a_page(path: Path) -> None:
    assert f'--8<-- "{path.name}' in all_pages(), f"{path.name} is not shown anywhere"


def test_include_directives_are_intact() -> None:
    """A formatter that mistakes a directive for Python turns it into ``--8 < --"..."``."""
    for name in sorted(DOCS.glob("*.md")):
        for number, line in enumerate(name.read_text(encoding="utf-8").splitlines(), 1):
            if "--8<--" in line:
                assert re.fullmatch(r'--8<-- "[\w.]+\.py(:[a-z_]+)?"', line), (name.name, number)
            assert "--8 <" not in line, (name.name, number, line)


def test_included_sections_exist() -> None:
    for name, section in re.findall(r'--8<-- "([\w.]+\.py):([a-z_]+)"', all_pages()):
        text = (SNIPPETS / name).read_text(encoding="utf-8")
        assert f"[start:{section}]" in text and f"[end:{section}]" in text, (name, section)


MY_LEAP = """
import json
from datetime import datetime, timezone
from pathlib import Path

from airflow.sdk import DAG

from airflow_provider_leap.operators.contact import LeapContactOperator
from airflow_provider_leap.operators.triage import TriageOperator

OUTBOX = Path("outbox.jsonl")


def send(contact):
    with OUTBOX.open("a") as outbox:
        outbox.write(json.dumps({"to": contact.ref_id}) + "\\n")


with DAG("my_leap", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc)) as dag:
    TriageOperator(task_id="triage") >> LeapContactOperator(task_id="contact", send=send)
"""


def test_the_snippets_for_testing_your_own_dag_run_as_shown(tmp_path: Path) -> None:
    """Review s13e F5: the emulator page's conftest.py and test, laid out as the page says
    beside a DAG of the user's, pass in a pytest session of their own."""
    import os
    import subprocess
    import sys

    project = tmp_path / "project"
    (project / "dags").mkdir(parents=True)
    (project / "tests").mkdir()
    (project / "dags" / "my_leap.py").write_text(MY_LEAP)
    for snippet, section, name in (
        ("testing_conftest.py", "conftest", "conftest.py"),
        ("testing_my_dag.py", "test", "test_my_leap.py"),
    ):
        text = (SNIPPETS / snippet).read_text()
        body = text.split(f"# --8<-- [start:{section}]\n")[1].split(f"# --8<-- [end:{section}]")[0]
        (project / "tests" / name).write_text(body)
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
    done = subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-4000:] + done.stderr


# -- (b) the quickstart DAG and the other runnable samples, against the emulator -----------------


@pytest.mark.usefixtures("leap_conn")
def test_quickstart_dag_runs_end_to_end(run_dag, leap_emulator) -> None:
    source = (SNIPPETS / "quickstart_dag.py").read_text(encoding="utf-8")
    result = run_dag("leap_quickstart", source)
    assert result.state == "success", result.task_states
    summary = result.xcoms[("triage", "return_value")]
    assert set(summary["counts"]) == set(BUCKETS)
    for name in BUCKETS:
        assert len(result.xcoms[("triage", name)]) == summary["counts"][name]

    not_started = result.xcoms[("triage", "not_started")]
    assert not_started, "the emulator's data always has not_started items"
    received = result.xcoms[("list_not_started", "return_value")]
    assert received == [item["ref_id"] for item in not_started]

    errors = result.xcoms[("triage", "utility_error")]
    by_reason = result.xcoms[("count_error_codes", "return_value")]
    assert sum(by_reason.values()) == len(errors) > 0
    assert all(reason.startswith("error:") for reason in by_reason)
    assert result.xcoms[("log_summary", "return_value")] == summary["counts"]


def test_mapping_sample_runs(run_dag, leap_emulator_factory, monkeypatch) -> None:
    from airflow_provider_leap.hooks.leap import connection_json
    from airflow_provider_leap.testing import EMULATOR_API_KEY

    small = leap_emulator_factory(seed=3, records=40)
    monkeypatch.setenv("AIRFLOW_CONN_LEAP_DEFAULT", connection_json(small.url, EMULATOR_API_KEY))
    source = (SNIPPETS / "triage_dag.py").read_text(encoding="utf-8")
    result = run_dag("leap_triage_patterns", source)
    assert result.state == "success", result.task_states
    not_started = result.xcoms[("triage", "not_started")]
    assert result.xcoms[("not_started_items", "return_value")] == not_started


def test_triage_function_sample() -> None:
    module = load_snippet(SNIPPETS / "triage_function.py")
    result = module.sort_one_record()
    assert result.summary["records_read"] == 1


@pytest.mark.usefixtures("leap_conn")
def test_hook_samples(leap_emulator) -> None:
    from datetime import datetime, timezone

    module = load_snippet(SNIPPETS / "hook_usage.py")
    counts = module.statuses_last_week()
    assert sum(counts.values()) > 0 and "COMPLETED" in counts
    completed = sorted(
        {r["ref_id"] for r in leap_emulator.records if r["connection_status"] == "COMPLETED"}
    )[:3]
    assert sorted(module.completed_ref_ids(completed)) == completed
    since = datetime(2000, 1, 1, tzinfo=timezone.utc)
    visible = {m["meter_id"] for m in leap_emulator.visible_meters()}
    assert set(module.meters_since(completed, since)) <= visible
    assert module.can_read_connections() is True


def test_hook_sample_reports_a_refused_key(leap_emulator, monkeypatch) -> None:
    from airflow_provider_leap.hooks.leap import connection_json

    monkeypatch.setenv("AIRFLOW_CONN_LEAP_WRONG", connection_json(leap_emulator.url, "wrong:key"))
    module = load_snippet(SNIPPETS / "hook_usage.py")
    assert module.can_read_connections("leap_wrong") is False


def test_emulator_samples(leap_emulator, leap_emulator_factory, monkeypatch) -> None:
    module = load_snippet(SNIPPETS / "emulator_usage.py")
    assert module.read_through_faults() == 300
    module.test_client_reads_every_record(leap_emulator)
    module.test_hook_against_odd_records(leap_emulator_factory, monkeypatch)


# -- (c) the vocabulary the docs must cover ------------------------------------------------------


def test_triage_page_names_every_bucket() -> None:
    text = page("triage.md")
    missing = [name for name in BUCKETS if f"`{name}`" not in text]
    assert not missing, missing


def test_triage_table_has_every_row() -> None:
    text = page("triage.md")
    rows = re.findall(r"^\| ([0-9]) \|", text, flags=re.MULTILINE)
    assert sorted(set(rows)) == [str(n) for n in range(10)]


# -- (d) every extra the hook accepts is documented, with the code's defaults ---------------------


def table_row(text: str, key: str) -> str:
    rows = [line for line in text.splitlines() if line.startswith(f"| `{key}` |")]
    assert rows, f"connection.md has no table row for `{key}`"
    return rows[0]


def test_every_extra_is_documented_in_connection_page() -> None:
    text = page("connection.md")
    assert set(CONNECTION_FORM["conn-fields"]) <= set(KNOWN_EXTRAS)  # the form sets extras
    missing = sorted(key for key in KNOWN_EXTRAS if f"`{key}`" not in text)
    assert not missing, missing


def test_documented_defaults_are_what_an_empty_form_field_gives() -> None:
    # The form declares no defaults (Airflow would save them into every connection); the docs
    # table and each field's help name the provider's own default instead.
    text = page("connection.md")

    def config(**extra: object) -> LeapConfig:
        conn = SimpleNamespace(
            conn_id="leap_form", host=None, schema=None, port=None, password="k" * 16, extra=extra
        )
        return LeapConfig.from_connection(conn)

    for key, field in CONNECTION_FORM["conn-fields"].items():
        assert "default" not in field["schema"], key
        row = table_row(text, key)
        assert field["label"] in row, (key, field["label"], row)
        documented = row.split("|")[3].strip()
        if documented != "empty":
            assert config(**{key: json.loads(documented)}) == config(), (key, documented)
            assert f"Empty: {documented}." in field["description"], (key, field["description"])
    for field in dataclasses.fields(wire.WireNames):
        assert f"`{field.default}`" in table_row(text, field.name), field.name


def test_connection_examples_resolve_as_documented(monkeypatch) -> None:
    from airflow_provider_leap.hooks.leap import LeapHook

    text = page("connection.md")
    values = re.findall(r"AIRFLOW_CONN_LEAP_DEFAULT='([^']+)'", text)
    assert len(values) >= 6
    urls = set()
    for value in values:
        value = value.replace("<URL-encoded API key>", "k%3Ak").replace("<API key>", "k:k")
        monkeypatch.setenv("AIRFLOW_CONN_LEAP_DOC", value)
        urls.add(LeapHook("leap_doc").config.base_url)
    assert urls == {wire.PRODUCTION_URL, wire.STAGING_URL, "http://127.0.0.1:8765"}


def test_reference_covers_every_public_module() -> None:
    text = page("reference.md")
    skip = {"airflow_provider_leap.testing.pytest_plugin"}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        module = ".".join(parts)
        if parts[-1].startswith("_") or module in skip:
            continue
        empty = path.name == "__init__.py" and not path.read_text(encoding="utf-8").strip()
        if not empty:
            assert f"::: {module}\n" in text, f"{module} is missing from reference.md"
