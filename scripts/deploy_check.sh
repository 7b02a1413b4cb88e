#!/usr/bin/env bash
# The deployment check: a real Airflow deployment (PostgreSQL, LocalExecutor, api-server,
# scheduler, dag-processor and triggerer as separate processes, all on 127.0.0.1) with the Leap
# emulator, the example DAGs and a table of checks. See docs/deploying.md.
#
# Installs what is missing (Debian's postgresql, chromium, nodejs; apache-airflow[postgres] at
# the .venv's Airflow version; playwright-core from npm into .deploy-check/tools), then runs
# scripts/deploy_check/run.py. Everything it writes is under .deploy-check/ (or $DEPLOY_CHECK_OUT);
# it stops everything it started, on success, failure or Ctrl-C. Exit status 0 = every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${DEPLOY_CHECK_OUT:-.deploy-check}
bash scripts/bootstrap.sh

as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo "$@"
  else
    echo "deploy_check: need root (or passwordless sudo) to run: $*" >&2
    exit 2
  fi
}

policy=/usr/sbin/policy-rc.d
remove_policy=
cleanup_policy() { if [ -n "$remove_policy" ]; then as_root rm -f "$policy"; fi; }
trap cleanup_policy EXIT

apt_install() {
  # Debian packages without starting their services: the check runs its own PostgreSQL.
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    remove_policy=1
  fi
  echo "deploy_check: apt-get install $*"
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null; then
    as_root apt-get update -q >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
  fi
}

if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null; then
  apt_install postgresql
fi
if [ ! -x /usr/bin/chromium ]; then
  apt_install chromium fonts-dejavu-core
fi
if ! command -v npm >/dev/null; then
  apt_install nodejs npm
fi
cleanup_policy
remove_policy=

# The PostgreSQL driver and Airflow's async DB stack, at the .venv's own Airflow version.
if ! .venv/bin/python -c "import asyncpg, psycopg2, airflow.providers.postgres" 2>/dev/null; then
  version=$(.venv/bin/python -c "import airflow; print(airflow.__version__)")
  echo "deploy_check: installing apache-airflow[postgres]==$version into .venv"
  .venv/bin/uv pip install --quiet --python .venv/bin/python "apache-airflow[postgres]==$version"
fi

# playwright-core drives Debian's chromium; it downloads no browser of its own.
tools="$out/tools"
mkdir -p "$tools"
if ! cmp -s scripts/deploy_check/browser/package-lock.json "$tools/package-lock.json" \
  || [ ! -d "$tools/node_modules/playwright-core" ]; then
  cp scripts/deploy_check/browser/package.json scripts/deploy_check/browser/package-lock.json "$tools/"
  (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error)
fi

exec .venv/bin/python scripts/deploy_check/run.py --out "$out" "$@"
