"""A real Airflow deployment in a throwaway folder: PostgreSQL, LocalExecutor, one process per
component (api-server, scheduler, dag-processor, triggerer), all on 127.0.0.1, with the Leap
emulator and an SMTP sink beside it.

The API key reaches the emulator (``LEAP_EMULATOR_API_KEY``) and Airflow
(``AIRFLOW_CONN_LEAP_DEFAULT``) through the environment only: never argv, never a file, never
printed. So does the webhook secret the receiver checks (the connection's ``webhook_secret``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import requests
from airflow_api import AirflowApi, CheckFailed, wait_for
from stack import MARKER, Postgres, Processes, free_port, ours, read_proc, remember, terminate

from airflow_provider_leap.testing.smtp import SmtpSink

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.path.abspath(sys.executable)).parent  # the venv's bin, symlinks kept
# Both re-engagement examples (hourly and on webhooks) import their policy and senders from
# leap_reengagement_common.py.
EXAMPLE_DAGS = (
    "leap_connect_reengagement.py",
    "leap_connect_events.py",
    "leap_connection_watch.py",
    "leap_reengagement_common.py",
    ".airflowignore",
)
CHECK_DAG = Path(__file__).resolve().parent / "dags" / "leap_deploy_check_watch.py"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
EMULATOR_SEED, EMULATOR_RECORDS = 0, 500
XCOM_BACKEND = "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend"
XCOM_THRESHOLD = 4096  # bytes; above it an XCom value is a file in the store, not a DB row


class Deployment:
    """Everything one check run starts; ``close()`` stops all of it, whatever happened."""

    def __init__(self, out: Path, api_key: str) -> None:
        self.out = out
        self.logs = out / "logs"
        self.home = out / "airflow-home"
        self.dags = out / "dags"
        self.leap_output = out / "leap_output"
        self.xcom_store = out / "xcom-store"
        self.ledger = out / "leap-ledger"
        self.api_key = api_key
        self.webhook_secret = "whsec_DEPLOYCHECK_" + secrets.token_hex(20)  # no "_" inside
        self.marker = str(out)
        self.state_file = out / "state.json"
        self.processes = Processes(self.logs, self.marker, self.state_file)
        self.postgres: Postgres | None = None
        self.smtp: SmtpSink | None = None
        self.api_port = free_port()
        self.emulator_port = free_port()
        self.api = AirflowApi(self.api_url, out, self.home / "logs")
        self.env: dict[str, str] = {}

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def emulator_url(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    def _base_env(self) -> dict[str, str]:
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
        env[MARKER] = self.marker
        return env

    # --- bring-up -------------------------------------------------------------------------

    def start_postgres(self) -> str:
        self.postgres = Postgres(self.logs, self._base_env())
        self.postgres.start()
        remember(
            self.state_file,
            postgres_root=str(self.postgres.root),
            postgres_bindir=str(self.postgres.bindir),
        )
        version = self.postgres.bindir.parent.name
        return f"PostgreSQL {version} on 127.0.0.1:{self.postgres.port}"

    def start_emulator(self, until: float) -> str:
        env = {**self._base_env(), "LEAP_EMULATOR_API_KEY": self.api_key}
        argv = [str(VENV_BIN / "python"), "-m", "airflow_provider_leap.testing"]
        argv += ["--port", str(self.emulator_port), "--seed", str(EMULATOR_SEED)]
        argv += ["--records", str(EMULATOR_RECORDS), "--admin", "--verbose"]
        self.processes.start("emulator", argv, env)

        def up() -> bool | None:
            try:
                requests.get(self.emulator_url + "/_emulator/records?ref_id=-", timeout=2)
            except requests.ConnectionError:
                return None
            return True

        wait_for("the emulator", up, until, every=0.2)
        return f"{self.emulator_url}, {EMULATOR_RECORDS} records, key from the environment"

    def prepare_home(self, contacts: dict[str, str]) -> str:
        """AIRFLOW_HOME, the DAGs folder and the environment every component shares."""
        assert self.postgres is not None
        self.home.mkdir(parents=True)
        self.dags.mkdir(parents=True)
        for name in EXAMPLE_DAGS:
            shutil.copy(REPO / "example_dags" / name, self.dags / name)
        shutil.copy(CHECK_DAG, self.dags / CHECK_DAG.name)
        (self.out / "smtp").mkdir()
        self.smtp = SmtpSink(self.out / "smtp" / "deliveries.jsonl").__enter__()
        from cryptography.fernet import Fernet

        leap = {
            "conn_type": "leap",
            "host": self.emulator_url,
            "password": self.api_key,
            "extra": {"webhook_secret": self.webhook_secret, "connect_account": "deploy-check"},
        }
        smtp = self.smtp.connection()
        settings = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres.url,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(24),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # The production settings docs/deploying.md describes, proven by the checks:
            # sensors defer by default, large XComs (triage buckets) go to object storage, and
            # the re-engagement example's delivery ledger lives where the deployment says.
            "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True",
            "AIRFLOW__CORE__XCOM_BACKEND": XCOM_BACKEND,
            "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": f"file://{self.xcom_store}",
            "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD": str(XCOM_THRESHOLD),
            "AIRFLOW__LEAP__LEDGER_URL": f"file://{self.ledger}",
            "AIRFLOW_CONN_LEAP_DEFAULT": json.dumps(leap),
            "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(smtp),
            "AIRFLOW_VAR_LEAP_CONTACTS": json.dumps(contacts),
            "LEAP_OUTPUT_DIR": str(self.leap_output),
        }
        self.env = {**self._base_env(), **settings}
        return f"AIRFLOW_HOME={self.home}, LocalExecutor, {len(contacts)} contacts by email"

    def airflow(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """One ``airflow`` CLI call; its output is appended to logs/cli.log."""
        done = subprocess.run(
            [str(VENV_BIN / "airflow"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        with (self.logs / "cli.log").open("a", encoding="utf-8") as handle:
            handle.write(f"\n$ airflow {' '.join(args)}  -> {done.returncode}\n")
            handle.write(done.stdout + done.stderr)
        return done

    def migrate(self) -> str:
        done = self.airflow("db", "migrate", timeout=300)
        if done.returncode:
            raise CheckFailed(f"airflow db migrate exited {done.returncode} (logs/cli.log)")
        return "metadata DB migrated"

    def start_component(self, name: str) -> None:
        argv = [str(VENV_BIN / "airflow"), name]
        if name in ("scheduler", "triggerer"):
            argv.append("--skip-serve-logs")  # else a log server binds 0.0.0.0:8793/8794
        self.processes.start(name, argv, self.env)

    def start_components(self, until: float) -> str:
        for name in COMPONENTS:
            self.start_component(name)
        self.wait_healthy(until)
        listening = self.listening()
        wide = [row for row in listening if not row.startswith(("127.0.0.1:", "[::1]:"))]
        if wide:
            raise CheckFailed(f"listening beyond loopback: {wide}")
        return f"4 components healthy at {self.api_url}; listening only on {', '.join(listening)}"

    def wait_healthy(self, until: float) -> None:
        def healthy() -> bool | None:
            try:
                health = requests.get(self.api_url + "/api/v2/monitor/health", timeout=5).json()
            except (requests.RequestException, ValueError):
                return None
            parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            ok = all((health.get(p) or {}).get("status") == "healthy" for p in parts)
            return True if ok else None

        wait_for("the four components to report healthy", healthy, until, every=2)

    def listening(self) -> list[str]:
        """``host:port`` of every TCP socket a process of this run listens on."""
        pids = {str(p) for p in ours(self.marker, self.processes.sessions)}
        inodes: set[str] = set()
        for pid in pids:
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
            except OSError:
                continue
        found = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                    found.add(_address(cols[1]))
        return sorted(found)

    # --- tear-down ------------------------------------------------------------------------

    def close(self) -> list[str]:
        """Stop everything, whatever state the run is in; returns notes on stragglers."""
        self.processes.stop_all()
        if self.postgres is not None:
            self.postgres.stop()
        if self.smtp is not None:
            self.smtp.__exit__(None, None, None)
        leftover = ours(self.marker, self.processes.sessions)
        if not leftover:
            # Nothing left for a later run to clean up: forget the session ids (they get reused).
            self.state_file.unlink(missing_ok=True)
            return []
        described = [
            (pid, read_proc(str(pid), "cmdline").split(b"\0")[0].decode()) for pid in leftover
        ]
        terminate(leftover, 5.0)
        return [f"stopped {len(leftover)} straggling process(es): {described}"]


def _address(hex_address: str) -> str:
    host, port = hex_address.split(":")
    if len(host) == 8:
        ip = ".".join(str(int(host[i : i + 2], 16)) for i in (6, 4, 2, 0))
    else:
        words = [host[i : i + 8] for i in range(0, 32, 8)]
        raw = b"".join(bytes.fromhex(w)[::-1] for w in words)
        ip = "[" + ":".join(raw[i : i + 2].hex() for i in range(0, 16, 2)) + "]"
        ip = "[::1]" if raw == b"\0" * 15 + b"\1" else ip
    return f"{ip}:{int(port, 16)}"
