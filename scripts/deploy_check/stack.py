"""The processes of the deployment check: PostgreSQL, the Leap emulator and Airflow's components.

Every process started here carries ``LEAP_DEPLOY_CHECK=<output folder>`` in its environment, and
its children inherit it (LocalExecutor workers, task processes, the triggerer's runner, the
PostgreSQL backends). Clean-up stops each service by its process group, then sweeps ``/proc``
for that marker and kills what is left by pid: nothing of this run survives it, and nothing
that is not of this run (or of an earlier, interrupted run into the same folder) is touched.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MARKER = "LEAP_DEPLOY_CHECK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_proc(pid: str, name: str) -> bytes:
    try:
        return Path("/proc", pid, name).read_bytes()
    except OSError:  # gone, or not ours to read
        return b""


def _session(pid: str) -> int:
    stat = read_proc(pid, "stat")
    return int(stat.rsplit(b")", 1)[1].split()[3]) if stat else -1


def ours(marker: str | None, sessions: set[int]) -> list[int]:
    """Pids of this run: the marker in their environment, or in a session this run started.

    Both are needed: processes that set their title (``airflow worker -- LocalExecutor``, the
    api-server) overwrite the environment ``/proc`` shows, and task processes move to their own
    process group, but they all stay in the session of the component that started them.
    """
    needle = f"{MARKER}={marker}".encode() if marker else None
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        if _session(entry) in sessions or (
            needle is not None and needle in read_proc(entry, "environ").split(b"\0")
        ):
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    stat = read_proc(str(pid), "stat")
    return bool(stat) and stat.rsplit(b")", 1)[1].split()[0] != b"Z"


def terminate(pids: list[int], grace: float) -> None:
    """SIGTERM, up to ``grace`` seconds to exit, then SIGKILL for what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        grace = 5.0


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


class Processes:
    """Background services, each in its own session, logging to ``logs/<name>.log``."""

    def __init__(self, logs: Path, marker: str, state_file: Path) -> None:
        self.logs = logs
        self.marker = marker
        self.state_file = state_file
        self.services: dict[str, Service] = {}
        self.sessions: set[int] = set()

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Service:
        log = self.logs / f"{name}.log"
        with log.open("ab") as handle:
            handle.write(f"\n===== start {name} {time.strftime('%H:%M:%S')} =====\n".encode())
            process = subprocess.Popen(
                argv,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.sessions.add(process.pid)
        remember(self.state_file, sessions=sorted(self.sessions))
        service = self.services[name] = Service(name, process, log)
        return service

    def members(self, name: str) -> list[int]:
        """The component's processes: everything in its session."""
        return ours(None, {self.services[name].process.pid})

    def kill(self, name: str, sig: signal.Signals) -> None:
        """Send ``sig`` to the component and every process it started."""
        for pid in self.members(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if sig == signal.SIGKILL:
            self.services.pop(name).process.wait(timeout=10)

    def stop_all(self, grace: float = 15.0) -> None:
        """SIGTERM every service together, then SIGKILL whatever of their sessions is left."""
        services, self.services = list(self.services.values()), {}
        terminate([s.process.pid for s in services], grace)
        for service in services:
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(timeout=1)
        terminate(ours(None, self.sessions), 5.0)


def _pg_bindir() -> Path:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError("PostgreSQL's initdb not found (scripts/deploy_check.sh installs it)")


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1, run by ``postgres`` when we are root.

    Its data directory lives under /tmp (the server's user must own it); the server log is
    copied into the output folder when it stops. Password authentication over TCP, with a
    password made for this run.
    """

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs = logs
        self.env = env
        self.bindir = _pg_bindir()
        self.port = free_port()
        self.password = secrets.token_urlsafe(16)
        self.root: Path | None = None
        self.as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://airflow:{self.password}@127.0.0.1:{self.port}/airflow"

    def _run(self, *argv: str, stdin: str | None = None) -> str:
        command = [*argv]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(
            command, input=stdin, capture_output=True, text=True, env=self.env, check=False
        )
        if done.returncode:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def start(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="leap-deploy-pg-"))
        data = self.root / "data"
        if self.as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        pwfile = self.root / "pw"
        self._run("sh", "-c", f"umask 077; cat > {pwfile}", stdin=self.password + "\n")
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}",
        )
        pwfile.unlink()
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(self.root / "postgres.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        sql = (
            f"CREATE USER airflow PASSWORD '{self.password}';\n"
            "CREATE DATABASE airflow OWNER airflow;\n"
        )
        self._run(*self._psql(), "-v", "ON_ERROR_STOP=1", "-q", "-f", "-", stdin=sql)

    def _psql(self, tool: str = "psql", database: str = "postgres") -> list[str]:
        assert self.root is not None
        return [str(self.bindir / tool), "-h", str(self.root), "-p", str(self.port)] + (
            ["-U", "postgres", "-d", database] if tool == "psql" else ["-U", "postgres", database]
        )

    def dump(self, path: Path) -> None:
        """A plain-SQL dump of the metadata database (for the secret sweep)."""
        path.write_text(self._run(*self._psql("pg_dump", "airflow")), encoding="utf-8")

    def stop(self) -> None:
        root, self.root = self.root, None
        if root is None:
            return
        data = root / "data"
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self._run(str(self.bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        with contextlib.suppress(OSError):
            shutil.copyfile(root / "postgres.log", self.logs / "postgres.log")
        shutil.rmtree(root, ignore_errors=True)


def remember(state_file: Path, **values: object) -> None:
    """Record what a later run needs to clean up after an interrupted one (no secrets)."""
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    state.update(values)
    state_file.write_text(json.dumps(state, indent=2))


def clean_previous(state_file: Path, marker: str) -> list[str]:
    """Undo what an interrupted earlier run into the same folder left running."""
    notes = []
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    sessions = set(state.get("sessions", ()))
    # A recorded session id may have been reused since: only take processes that are ours.
    needle = marker.encode()
    pids = [
        pid
        for pid in ours(marker, sessions)
        if b"airflow" in read_proc(str(pid), "cmdline") or needle in read_proc(str(pid), "environ")
    ]
    if pids:
        terminate(pids, 5.0)
        notes.append(f"stopped {len(pids)} process(es) of an earlier run: {pids}")
    root = state.get("postgres_root")
    if root and Path(root).exists():
        data = Path(root) / "data"
        bindir = state.get("postgres_bindir", "")
        if (data / "postmaster.pid").exists() and bindir:
            argv = [f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"]
            if os.geteuid() == 0:
                argv = ["runuser", "-u", "postgres", "--", *argv]
            subprocess.run(argv, capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)
        notes.append(f"removed the PostgreSQL cluster of an earlier run: {root}")
    return notes
