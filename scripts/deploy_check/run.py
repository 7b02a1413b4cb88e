"""Entry point of ``scripts/deploy_check.sh``: bring a real deployment up, check it, tear it down.

``python scripts/deploy_check/run.py --out .deploy-check`` (the shell script installs what this
needs first). ``--hold`` keeps the deployment up after the checks until Ctrl-C, for a look in a
browser. The API key comes from ``LEAP_DEPLOY_CHECK_API_KEY`` when set, else a random,
distinctive one is made, so a leak can be found with grep; it is never printed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from checks import run_checks
from deployment import Deployment
from report import Report
from stack import clean_previous

KEEP = ("tools",)  # cached installs (playwright-core) survive between runs


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def prepare(out: Path) -> list[str]:
    """Undo an interrupted earlier run, then empty the folder (the cached tools excepted)."""
    out.mkdir(parents=True, exist_ok=True)
    notes = clean_previous(out / "state.json", str(out))
    for entry in out.iterdir():
        if entry.name in KEEP:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (out / "logs").mkdir()
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(".deploy-check"))
    parser.add_argument("--hold", action="store_true", help="keep it up until Ctrl-C")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    for note in prepare(out):
        print(note)
    api_key = os.environ.get("LEAP_DEPLOY_CHECK_API_KEY") or (
        "lk_live_DEPLOYCHECK_" + secrets.token_hex(20)  # no "_" in the random part
    )
    report = Report(out)
    deployment = Deployment(out, api_key)
    try:
        run_checks(deployment, report)
        if args.hold:
            print(f"\nUp at {deployment.api_url} (Ctrl-C to stop)", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", flush=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # clean-up is bounded; let it finish
        for note in deployment.close():
            print(note)
        report.save()
        print()
        print(report.table())
        print(f"\nEverything is under {out}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
