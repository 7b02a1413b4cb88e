"""Leap's webhooks end to end in real Airflow processes: the emulator's customers act, Leap's
deliveries reach the receiver the plugin mounts on a real API server (two workers), the events
become asset events, and a running scheduler creates a run of ``leap_connect_events`` that
reads them and waits, deferred. ``scripts/webhooks_check.py`` does the work (the deployment
check calls the same checks); this test runs it as a user would and reads its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_emulator_to_receiver_to_asset_event_to_scheduled_run(tmp_path: Path) -> None:
    out = tmp_path / "check"
    table = tmp_path / "table.json"
    command = [
        sys.executable,
        str(ROOT / "scripts" / "webhooks_check.py"),
        *("--out", str(out), "--json", str(table), "--timeout", "300"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
    print(done.stdout)
    report = json.loads(table.read_text()) if table.exists() else {"ok": False, "rows": []}
    failed = [row for row in report["rows"] if not row["ok"]]
    logs = "\n".join(
        f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
        for path in sorted((out / "logs").glob("*.log"))
    )
    assert done.returncode == 0 and report["ok"], (failed, done.stderr[-3000:], logs)
    checks = [row["check"] for row in report["rows"]]
    assert "scheduler created runs from the events" in checks
    assert "the runs read the events, then wait deferred" in checks
