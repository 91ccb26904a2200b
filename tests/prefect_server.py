"""A real Prefect server (SQLite in a temporary PREFECT_HOME, or the database URL given) and process
worker on 127.0.0.1, started as child processes and stopped by their PIDs. Used by the deployment
test, the PostgreSQL production-stack test and the cache benchmark."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_env(home: Path, api_url: str | None = None, database_url: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "INFO",
           "PREFECT_API_DATABASE_CONNECTION_URL": database_url or f"sqlite+aiosqlite:///{home / 'prefect.db'}"}
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group we started (the server and worker spawn children), then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _spawn(args: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    fh = open(log, "ab")
    # a new session: the process and its children form one group we can stop by its PID
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


@contextlib.contextmanager
def prefect_server(home: Path, timeout: float = 120,
                   database_url: str | None = None) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield (api_url, env for clients) of a server started on a free loopback port, on
    ``database_url`` (an SQLAlchemy URL) or a SQLite file in ``home``."""
    import httpx

    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    proc = _spawn([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                  prefect_env(home, database_url=database_url), home / "server.log")
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{(home / 'server.log').read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server not healthy after {timeout}s:\n{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield api, prefect_env(home, api, database_url)
    finally:
        stop(proc)


@contextlib.contextmanager
def process_worker(pool: str, env: dict[str, str], cwd: Path, log: Path) -> Iterator[subprocess.Popen]:
    proc = _spawn([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"], env, log, cwd)
    try:
        yield proc
    finally:
        stop(proc)


def prefect(args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
