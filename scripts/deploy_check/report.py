"""The check table: each row is a named check with a deadline, its result and its seconds."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from airflow_api import CheckFailed


@dataclass
class Row:
    check: str
    result: str  # PASS or FAIL
    seconds: float
    detail: str


class Step:
    """Handed to a check's body: its deadline, and the detail it reports."""

    def __init__(self, deadline: float) -> None:
        self.until = time.monotonic() + deadline
        self.detail = ""


class Report:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.rows: list[Row] = []
        self.started = time.monotonic()

    @contextmanager
    def check(self, name: str, deadline: float) -> Iterator[Step]:
        """Run a check: an exception fails it (KeyboardInterrupt still stops the run)."""
        step = Step(deadline)
        started = time.monotonic()
        print(f"... {name}", flush=True)
        try:
            yield step
        except KeyboardInterrupt:
            self._add(name, "FAIL", started, "interrupted")
            raise
        except CheckFailed as exc:
            self._add(name, "FAIL", started, str(exc))
        except Exception as exc:  # a bug or a broken component: still a row, not a traceback
            self._add(name, "FAIL", started, f"{type(exc).__name__}: {exc}")
        else:
            if time.monotonic() > step.until:
                self._add(name, "FAIL", started, f"over its {deadline:.0f} s deadline")
            else:
                self._add(name, "PASS", started, step.detail)

    def _add(self, name: str, result: str, started: float, detail: str) -> None:
        row = Row(name, result, round(time.monotonic() - started, 1), detail)
        self.rows.append(row)
        print(f"    {result} {row.seconds:.1f}s {detail}", flush=True)

    @property
    def failed(self) -> bool:
        return any(r.result != "PASS" for r in self.rows)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.result == "PASS" for r in self.rows)

    def table(self) -> str:
        width = max([len(r.check) for r in self.rows] + [5])
        lines = [f"{'check':<{width}}  result  seconds", f"{'-' * width}  ------  -------"]
        lines += [f"{r.check:<{width}}  {r.result:<6}  {r.seconds:7.1f}" for r in self.rows]
        total = time.monotonic() - self.started
        lines.append(f"{'total':<{width}}  {'PASS' if self.ok else 'FAIL':<6}  {total:7.1f}")
        failures = [r for r in self.rows if r.result != "PASS"]
        if failures:
            lines.append("")
            lines += [f"FAIL {r.check}: {r.detail}" for r in failures]
        return "\n".join(lines)

    def save(self) -> None:
        (self.out / "report.txt").write_text(self.table() + "\n", encoding="utf-8")
        rows = [asdict(r) for r in self.rows]
        (self.out / "report.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
