"""A real two-worker Dask cluster for tests: ``dask scheduler`` + ``dask worker`` in processes of
their own on 127.0.0.1, reached through its address exactly as a remote cluster would be."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def local_dask_cluster(home: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> Iterator[str]:
    """Start the cluster (scheduler file in ``home``), wait for both workers, yield the address,
    then stop every process."""
    from distributed import Client

    dask = shutil.which("dask") or str(Path(sys.executable).with_name("dask"))
    info = home / "scheduler.json"
    quiet = {"cwd": cwd, "env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(info)], **quiet)]
    try:
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert info.exists(), "dask scheduler did not start"
        procs.append(subprocess.Popen([dask, "worker", "--scheduler-file", str(info), "--nworkers", "2",
                                       "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"], **quiet))
        address = json.loads(info.read_text())["address"]
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
