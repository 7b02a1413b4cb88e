#!/usr/bin/env bash
# The main job: the hourly re-engagement DAG end to end against the local Leap emulator.
# No Leap credentials, no network. Sets up .venv if needed. Output lands in .demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
