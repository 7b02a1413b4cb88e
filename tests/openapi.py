"""The repository's OpenAPI files (``spec/``) as validators and Hypothesis strategies, for tests.

Validation uses ``jsonschema_rs`` (a dependency of the pinned schemathesis) with formats checked;
generation uses schemathesis' own generators, so the property tests and the CI's schemathesis run
read the specs the same way.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema_rs
import schemathesis
import yaml
from hypothesis import strategies as st
from schemathesis import GenerationMode

SPEC_DIR = Path(__file__).resolve().parents[1] / "spec"
METERS = SPEC_DIR / "leap" / "meters-openapi.yml"
CONNECT = SPEC_DIR / "connect-openapi.assumed.yml"


class _Loader(yaml.SafeLoader):
    """YAML as JSON sees it: ``2000-01-23T04:56:07.000+00:00`` stays a string, not a datetime."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@functools.cache
def load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        return yaml.load(handle, Loader=_Loader)  # type: ignore[no-any-return]


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` as JSON Schema (``jsonschema_rs`` ignores the keyword)."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") else out


def schema(path: Path, name: str, **overrides: Any) -> dict[str, Any]:
    """Component schema ``name`` of the spec at ``path``, refs resolvable, plus ``overrides``."""
    components = _json_schema(load(path)["components"])
    target = {**components["schemas"][name], **overrides}
    return {**target, "components": components}


def validator(path: Path, name: str, **overrides: Any) -> Any:
    """A validator for ``name`` (``.iter_errors(value)``; ``.is_valid(value)``)."""
    return jsonschema_rs.Draft4Validator(schema(path, name, **overrides), validate_formats=True)


def errors(check: Any, value: Any) -> list[str]:
    """Readable errors of ``value`` (empty when valid)."""
    return [f"{list(e.instance_path)}: {e.message}" for e in check.iter_errors(value)]


def query_errors(path: Path, route: str, pairs: list[tuple[str, str]]) -> list[str]:
    """Errors of a GET query (name/value pairs as sent) against the operation's parameters.

    Stricter than OpenAPI: an undeclared or repeated (non-array) parameter is an error too.
    """
    declared = {p["name"]: p["schema"] for p in load(path)["paths"][route]["get"]["parameters"]}
    values: dict[str, Any] = {}
    for name, value in pairs:
        kind = declared.get(name, {}).get("type")
        if name not in declared or (name in values and kind != "array"):
            return [f"parameter {name!r} undeclared or repeated"]
        if kind == "array":
            values.setdefault(name, []).append(value)
        else:
            values[name] = int(value) if kind == "integer" and value.isdigit() else value
    check = jsonschema_rs.Draft4Validator(
        {"type": "object", "properties": declared, "components": load(path)["components"]},
        validate_formats=True,
    )
    return errors(check, values)


def operation(path: Path, method: str, route: str) -> Any:
    return schemathesis.openapi.from_path(str(path))[route][method]


def requests_for(path: Path, method: str, route: str) -> st.SearchStrategy[Any]:
    """Schema-valid requests (schemathesis ``Case`` objects) of one operation."""
    return operation(path, method, route).as_strategy(generation_mode=GenerationMode.POSITIVE)


def values_of(
    path: Path, name: str, narrow: dict[str, dict[str, Any]] | None = None
) -> st.SearchStrategy[Any]:
    """Schema-valid values of component schema ``name``, drawn by schemathesis' generators.

    Schemathesis generates requests, not responses: the schema is put in as the request body of
    a one-operation document, which is all its generators need. ``narrow`` adds keywords to
    named component schemas (to set aside a known difference that has a test of its own).
    """
    components = dict(load(path)["components"])
    components["schemas"] = {
        key: {**value, **(narrow or {}).get(key, {})}
        for key, value in components["schemas"].items()
    }
    document = {
        "openapi": load(path)["openapi"],
        "info": {"title": f"values of {name}", "version": "1"},
        "paths": {
            "/value": {
                "post": {
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}
                        },
                    },
                    "responses": {"200": {"description": "ok"}},
                }
            }
        },
        "components": components,
    }
    strategy = schemathesis.openapi.from_dict(document)["/value"]["POST"].as_strategy(
        generation_mode=GenerationMode.POSITIVE
    )
    return strategy.map(lambda case: case.body)
