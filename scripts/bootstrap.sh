#!/usr/bin/env bash
# Create .venv in the repo root and install the provider (editable) with its test, docs and dev
# extras. Idempotent: reinstalls only when pyproject.toml or the package version (the metadata's
# version is read from __version__ at install time) changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.leap-installed
want=$({ cat pyproject.toml; grep '^__version__' airflow_provider_leap/__init__.py; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Installing airflow-provider-leap and its extras into .venv ..."
  .venv/bin/python -m pip install --quiet --disable-pip-version-check uv
  # Byte-compile at install: with PYTHONDONTWRITEBYTECODE set (as on CI) every Airflow process
  # would otherwise compile Airflow from source at each start (about 4 s of CPU).
  .venv/bin/uv pip install --quiet --compile-bytecode --python .venv/bin/python -e '.[test,docs,dev]'
  echo "$want" > "$stamp"
fi
