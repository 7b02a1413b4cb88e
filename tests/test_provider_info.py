"""The packaging as Airflow and pip see it: the provider info is valid for the installed Airflow,
everything it names exists in the installed package, the version has one source, and the package
under test is the one that was installed (the built wheel in scripts/compat_check.sh)."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
from pathlib import Path
from typing import Any

import airflow
from jsonschema import Draft7Validator

import airflow_provider_leap
from airflow_provider_leap import __version__, get_provider_info

DIST = "airflow-provider-leap"
ROOT = Path(__file__).resolve().parents[1]


def installed_dist() -> importlib.metadata.Distribution:
    """The installed distribution (it has a RECORD), not a build's ``*.egg-info`` left in the
    checkout, which ``python -m pytest`` would otherwise find first on ``sys.path``."""
    dists = [d for d in importlib.metadata.distributions(name=DIST) if d.read_text("RECORD")]
    assert len(dists) == 1, [str(d.locate_file("")) for d in dists]
    return dists[0]


def resolve(dotted: str) -> Any:
    """Import a module, or a module's attribute, from its dotted path."""
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError:
        module, _, name = dotted.rpartition(".")
        return getattr(importlib.import_module(module), name)


def test_provider_info_is_valid_for_the_installed_airflow() -> None:
    schema_path = Path(airflow.__file__).with_name("provider_info.schema.json")
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in Draft7Validator(schema).iter_errors(get_provider_info())
    ]
    assert errors == [], f"against Airflow {airflow.__version__}'s schema: {errors}"


def test_everything_the_provider_info_names_is_importable() -> None:
    info = get_provider_info()
    modules = [
        module
        for kind in ("hooks", "operators", "sensors", "triggers")
        for entry in info[kind]
        for module in entry["python-modules"]
    ]
    classes = [c["hook-class-name"] for c in info["connection-types"]] + info["extra-links"]
    for dotted in modules + classes:
        assert resolve(dotted) is not None, dotted
    assert {e["integration-name"] for e in info["integrations"]} >= {
        entry["integration-name"]
        for kind in ("hooks", "operators", "sensors", "triggers")
        for entry in info[kind]
    }


def test_airflow_finds_the_provider_through_its_entry_point() -> None:
    points = [
        ep
        for ep in importlib.metadata.entry_points(group="apache_airflow_provider")
        if ep.dist is not None and ep.dist.name == DIST
    ]
    assert points, "no apache_airflow_provider entry point"
    assert [ep.value for ep in points] == ["airflow_provider_leap:get_provider_info"]
    assert points[0].load()()["package-name"] == DIST


def test_the_version_has_one_source() -> None:
    assert installed_dist().version == __version__
    assert get_provider_info()["versions"] == [__version__]
    changelog = (ROOT / "docs" / "changelog.md").read_text(encoding="utf-8")
    newest = re.search(r"^## (\S+)", changelog, re.MULTILINE)
    assert newest and newest.group(1) == __version__


def test_the_installed_package_is_the_one_under_test() -> None:
    """An editable install imports the checkout; a wheel install must not (compat_check.sh sets
    LEAP_EXPECT_WHEEL=1 so a test run that silently picked up the checkout fails here)."""
    dist = installed_dist()
    imported = Path(airflow_provider_leap.__file__).resolve()
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    editable = direct_url.get("dir_info", {}).get("editable", False)
    if os.environ.get("LEAP_EXPECT_WHEEL") == "1":
        assert not editable, direct_url
    if editable:
        assert imported.is_relative_to(ROOT), imported
    else:
        installed = Path(str(dist.locate_file("airflow_provider_leap/__init__.py"))).resolve()
        assert imported == installed
        assert not imported.is_relative_to(ROOT), f"{imported} is the checkout, not the wheel"


def test_the_metadata_declares_the_floor_the_license_and_the_pythons() -> None:
    """What pip and PyPI read: the tested Airflow floor (3.2: the hook and sensor import
    ``airflow.sdk`` names 3.0 and 3.1 lack), the license file, one classifier per supported
    Python, and no dependency the code does not import (pendulum was one)."""
    from packaging.requirements import Requirement

    meta = installed_dist().metadata
    requires = {r.name: r for r in map(Requirement, meta.get_all("Requires-Dist") or [])}
    airflow_req = requires["apache-airflow"]
    assert airflow_req.specifier.contains("3.2.0") and airflow_req.specifier.contains("3.3.2")
    assert not airflow_req.specifier.contains("3.1.8") and not airflow_req.specifier.contains("4.0")
    assert "pendulum" not in requires
    assert meta["License-Expression"] == "Apache-2.0"
    assert installed_dist().read_text("licenses/LICENSE") or installed_dist().read_text("LICENSE")
    assert meta["Requires-Python"] == ">=3.10"
    classifiers = set(meta.get_all("Classifier") or [])
    assert "Framework :: Apache Airflow :: Provider" in classifiers
    pythons = {c.rsplit(" ", 1)[1] for c in classifiers if re.fullmatch(r".*:: 3\.\d+", c)}
    assert pythons == {"3.10", "3.11", "3.12", "3.13"}
