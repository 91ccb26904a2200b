"""A throwaway PostgreSQL server on 127.0.0.1 for the production-stack test: its own data directory
under /tmp, a random password, a free port, stopped and deleted on exit.

PostgreSQL refuses to run as root ("root" execution of the PostgreSQL server is not permitted), and
Debian's ``initdb``/``pg_ctl`` are the plain binaries (``/usr/lib/postgresql/<v>/bin``, linked from
``/usr/local/bin`` on the reference machines), not the ``pg_ctlcluster`` wrappers. As root, every
PostgreSQL command therefore runs as the ``postgres`` system user through ``runuser -u postgres``
(util-linux; the Debian package creates that user), in a directory that user owns. As any other
user the commands run as that user directly.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.prefect_server import free_port


def pg_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and createdb: on PATH, else Debian's newest
    ``/usr/lib/postgresql/<version>/bin``."""
    found = shutil.which("initdb")
    candidates = [Path(os.path.realpath(found)).parent] if found else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                           key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
                                           reverse=True)]
    for d in candidates:
        if all((d / tool).is_file() for tool in ("initdb", "pg_ctl", "createdb")):
            return d
    return None


def unavailable_reason() -> str | None:
    """Why this machine cannot run the server, or None."""
    if pg_bindir() is None:
        return ("PostgreSQL binaries (initdb, pg_ctl, createdb) not found on PATH or under /usr/lib/postgresql/*/bin; "
                "`.ci/run` installs Debian's postgresql package when it runs as root")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as (PostgreSQL refuses root)"
        if shutil.which("runuser") is None:
            return "running as root and runuser (util-linux) is missing"
    return None


class _Pg:
    def __init__(self, base: Path):
        self.bindir, self.base = pg_bindir(), base
        self.data, self.log = base / "data", base / "postgres.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(base, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def run(self, tool: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> None:
        r = subprocess.run([*self.as_user, str(self.bindir / tool), *args], cwd=self.base, capture_output=True,
                           text=True, timeout=timeout, env={**os.environ, **(env or {})})
        if r.returncode != 0:
            log = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}\n{log}")


@contextlib.contextmanager
def postgres_server(user: str = "prefect", database: str = "prefect") -> Iterator[str]:
    """Yield the SQLAlchemy URL (``postgresql+asyncpg://user:password@127.0.0.1:port/database``) of
    a fresh server. Password authentication (scram-sha-256) on TCP; the Unix socket lives in the
    throwaway directory. fsync is off: the data is thrown away at exit."""
    base = Path(tempfile.mkdtemp(prefix="kalora-pg-"))  # not under pytest's tmp_path: 'postgres' must reach it
    pg = _Pg(base)
    password = secrets.token_hex(16)
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    if pg.as_user:
        shutil.chown(pwfile, "postgres")
    port = free_port()
    started = False
    try:
        pg.run("initdb", "-D", str(pg.data), "-U", user, "--auth=scram-sha-256", f"--pwfile={pwfile}",
               "-E", "UTF8", "--locale=C", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off"
        pg.run("pg_ctl", "-D", str(pg.data), "-l", str(pg.log), "-o", options, "-w", "-t", "60", "start")
        started = True
        pg.run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", user, database, env={"PGPASSWORD": password})
        yield f"postgresql+asyncpg://{user}:{password}@127.0.0.1:{port}/{database}"
    finally:
        if started:
            try:
                pg.run("pg_ctl", "-D", str(pg.data), "-m", "fast", "-w", "-t", "30", "stop", timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                pg.run("pg_ctl", "-D", str(pg.data), "-m", "immediate", "-w", "-t", "30", "stop", timeout=60)
        shutil.rmtree(base, ignore_errors=True)
