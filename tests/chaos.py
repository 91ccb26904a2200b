"""Chaos runs of the whole build: ``kalora run`` on a small KG, SIGKILLed (its whole process group:
with no ``api_url``, Prefect's ephemeral API subprocess too) at seeded random moments, then run
again to completion; the result must equal an uninterrupted build's. Used by ``tests/test_chaos.py`` and ``benchmarks/chaos.py``.

What "equal" means (``build_digests``): every artifact file under ``<root>/<name>``, Parquet compared
by content (schema and rows), JSON with its timing fields removed, everything else byte for byte;
and the manifest's stage entries with their timestamps and timings removed. Two fields carry wall
clock values and nothing else does (measured on the tiny build): ``completed_at``/``wall_time_s``
and the ``*_seconds``/``*_s`` metrics of a stage entry, and the same metrics in
``embeddings/<model>/metrics.json``. Because that file is an input of the shards stage, the
manifest's cache keys and input digests of stages downstream of ``embed`` hash a timing too; they
are left out of the comparison, and the files they hash are compared directly instead.

The publish swap of ``pipelines.artifacts.staged_dir`` (old output renamed aside, new one renamed
into place) lasts microseconds, so a random delay never lands in it: ``python -m tests.chaos
swap-kill N -- <kalora args>`` runs the CLI with ``os.replace`` wrapped so that the process group is
SIGKILLed right after the N-th "rename the old output aside", i.e. with no output under the final
name. Nothing in the library knows about it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
NAME = "chaos"
# the fabricated tiny ontology; embedding and training checkpoint after every epoch / step, so that
# a kill inside them resumes from a checkpoint
BUILD = {
    "name": NAME,
    "embed": {"model": "transe", "training_loop": "slcwa", "embedding_dim": 8, "num_epochs": 4, "batch_size": 8,
              "eval_every": 0, "eval_max_triples": None, "checkpoint_every": 1},
    "shards": {"rows_per_part": 50, "question_fraction": 1.0},
    "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "max_length": 48, "vocab_size": 300},
    "stage1": {"max_steps": 3, "batch_size": 4, "checkpoint_every": 1},
    # the kill-and-resume runs cover the build through stage 1; stages 2 and 3 resume from their
    # checkpoints the same way (tests/test_model_stages.py)
    "stages": [1],
}
# stage names as the manifest records them, in build order
STAGES = ("ingest", "splits", "embed:transe", "index", "linker", "eval:linker", "shards", "train:stage1")
OUTPUTS = {"ingest": "kg", "embed:transe": "embeddings/transe", "index": "index", "linker": "linker",
           "shards": "shards", "train:stage1": "adapters/stage1"}
_TIMING_KEY = re.compile(r"(^|_)(seconds|s|at)$")
# per stage entry: hashes over files holding timings (module docstring); the integrity block's
# digests cover the same files, which are compared one by one, timings left out
_NOT_DETERMINISTIC_UNDER = {"cache", "integrity"}
_STATE = {"manifest.json", ".manifest.lock"}
_SCRATCH = re.compile(r"(^|/)(\.work|checkpoints|\.[^/]*\.(tmp|saving)|\.[^/]*\.old(-[^/]+)?)(/|$)")


def write_config(directory: Path, root: Path) -> Path:
    """The build YAML for ``kalora run``: the tiny fabricated KG of ``tests/data``."""
    sources = [str(DATA / f) for f in ("tiny.obo", "tiny.hpoa", "tiny_genes_to_phenotype.txt")]
    path = directory / "build.yaml"
    path.write_text(yaml.safe_dump({**BUILD, "root": str(root), "sources": sources}, sort_keys=False))
    return path


@dataclass
class Run:
    returncode: int | None  # None: killed
    seconds: float
    log: Path

    @property
    def killed(self) -> bool:
        return self.returncode is None


def kalora(args: list[str], env: dict[str, str], log: Path, kill_after: float | None = None,
           timeout: float = 900, module: str = "flows.cli") -> Run:
    """Run ``python -m <module> *args`` in its own process group; SIGKILL the whole group after
    ``kill_after`` seconds if it is still running (the run then counts as killed, as does a run
    that died of SIGKILL by itself: the swap kill)."""
    started = time.monotonic()
    with open(log, "ab") as fh:
        fh.write(f"\n$ {module} {' '.join(args)} (kill after {kill_after})\n".encode())
        fh.flush()
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(kill_after if kill_after is not None else timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if kill_after is None:
                raise RuntimeError(f"kalora {' '.join(args)} still running after {timeout}s: see {log}") from None
            _reap_group(proc.pid)
            return Run(None, time.monotonic() - started, log)
    _reap_group(proc.pid)
    return Run(None if rc == -signal.SIGKILL else rc, time.monotonic() - started, log)


def _reap_group(pgid: int) -> None:
    """Wait until no process of the group is left (SIGKILL is asynchronous for the children)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def chaos_env(prefect_home: Path, api_url: str | None = None) -> dict[str, str]:
    """Without ``api_url`` each run starts Prefect's ephemeral API (a subprocess in its group)."""
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def kill_delays(seed: int, n: int, duration: float) -> list[float]:
    """``n`` seeded delays, one drawn uniformly in each of ``n`` equal slices of ``duration``, so
    that a few points still spread over every stage of the run."""
    rng = random.Random(seed)
    return [round(duration * (i + rng.random()) / n, 2) for i in range(n)]


# -- comparing two builds ---------------------------------------------------------------------------
def _strip(value: Any, root: str) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v, root) for k, v in sorted(value.items()) if not _TIMING_KEY.search(k)}
    if isinstance(value, list):
        return [_strip(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<root>")
    return value


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _parquet_digest(path: Path) -> str:
    """Schema and rows, not bytes: two writers of the same table may lay out pages differently."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return _digest({"schema": str(table.schema), "rows": table.to_pylist()})


def file_digest(path: Path, root: str) -> str:
    if path.suffix == ".parquet":
        return _parquet_digest(path)
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if path.name == "sentencizer.json":  # spaCy writes its punctuation set in hash order
            data["punct_chars"] = sorted(data.get("punct_chars") or [])
        return _digest(_strip(data, root))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_stages(base: Path, root: str) -> dict[str, Any]:
    """The manifest's stage entries with timestamps, timings and timing-dependent hashes removed."""
    stages = json.loads((base / "manifest.json").read_text())["stages"]
    return {name: _strip({k: v for k, v in entry.items() if k not in _NOT_DETERMINISTIC_UNDER}, root)
            for name, entry in stages.items()}


def build_digests(root: Path) -> dict[str, str]:
    """``{relative path: digest}`` of every artifact of the build, plus one entry per manifest stage."""
    base = root / NAME
    out = {}
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        rel = path.relative_to(base).as_posix()
        if rel in _STATE or _SCRATCH.search(rel) or any(part.startswith(".") for part in path.relative_to(base).parts):
            continue  # hidden files are run state: the writer lock, running markers
        out[rel] = file_digest(path, str(root))
    for stage, entry in manifest_stages(base, str(root)).items():
        out[f"manifest.json#{stage}"] = _digest(entry)
    return out


def leftovers(root: Path) -> list[str]:
    """Staging or set-aside directories a finished build still carries (disk a kill left behind;
    a temporary JSON file of an interrupted ``atomic_write_bytes`` is not counted)."""
    base = root / NAME
    staged = [p for p in base.rglob(".*") if p.is_dir() and re.search(r"\.(tmp|saving)$|\.old(-\d+@.+)?$", p.name)]
    spilled = list((base / ".work").glob("*/runs-*"))  # ingest's sort runs (pipelines/spill.py)
    return sorted(p.relative_to(base).as_posix() for p in staged + spilled)


def completed_stages(root: Path, name: str = NAME, stamped: bool = False) -> list[str]:
    """Stages the manifest records as finished (``stamped``: and whose cache key the flow stamped,
    so that a rerun skips them)."""
    path = root / name / "manifest.json"
    if not path.exists():
        return []
    try:
        stages = json.loads(path.read_text())["stages"]
    except (ValueError, KeyError):
        return ["<unreadable manifest>"]
    return [s for s in STAGES if s in stages and (not stamped or "cache" in stages[s])]


def differences(expected: dict[str, str], found: dict[str, str]) -> list[str]:
    keys = sorted(set(expected) | set(found))
    return [k for k in keys if expected.get(k) != found.get(k)]


# -- one chaos session: a reference build, then kills each followed by a rerun -------------------------
@dataclass
class Outcome:
    kind: str                  # "timing": a delay in seconds; "swap": the N-th publish swap
    point: float
    killed: bool               # False: the run finished before the kill
    done_at_kill: list[str]    # manifest stages complete when it was killed
    missing_at_kill: list[str]  # outputs of those stages absent when it was killed (inside a swap)
    rerun_rc: int | None
    rerun_seconds: float
    differences: list[str]     # artifact paths / manifest stages unlike the reference's
    leftovers: list[str]

    @property
    def ok(self) -> bool:
        return self.rerun_rc == 0 and not self.differences

    def line(self) -> str:
        at = "finished first" if not self.killed else f"after {self.done_at_kill[-1] if self.done_at_kill else 'nothing'}"
        what = f"{self.point:7.2f}s" if self.kind == "timing" else f"swap #{int(self.point)}"
        verdict = "equal" if self.ok else f"rerun rc {self.rerun_rc}, differs: {self.differences[:5]}"
        gone = f" ({', '.join(self.missing_at_kill)} missing)" if self.missing_at_kill else ""
        return f"{self.kind:6} {what:>9}  killed {at}{gone}  rerun {self.rerun_seconds:6.1f}s  {verdict}"


class Chaos:
    """Kills and reruns of one build config in ``scratch``: every run builds into the same path
    (``scratch/artifacts``), so the manifests' absolute paths agree; one PREFECT_HOME throughout, as
    a user's repeated ``kalora run`` would share it."""

    def __init__(self, scratch: Path, api_url: str | None = None):
        self.scratch, self.root = scratch, scratch / "artifacts"
        self.env, self.log = chaos_env(scratch / "prefect", api_url), scratch / "runs.log"
        self.config = write_config(scratch, self.root)
        self.expected: dict[str, str] = {}

    def reference(self) -> float:
        """An uninterrupted build; its digests are what every rerun must reproduce. Seconds taken."""
        _rmtree(self.root)
        run = kalora(["run", str(self.config)], self.env, self.log)
        if run.returncode != 0:
            raise RuntimeError(f"the uninterrupted build failed (rc {run.returncode}): see {self.log}")
        self.expected = build_digests(self.root)
        _rmtree(self.scratch / "reference")
        os.rename(self.root, self.scratch / "reference")
        return run.seconds

    def timing_kill(self, delay: float) -> Outcome:
        """A fresh build SIGKILLed after ``delay`` seconds, then a plain rerun."""
        _rmtree(self.root)
        killed = kalora(["run", str(self.config)], self.env, self.log, kill_after=delay)
        return self._rerun("timing", delay, killed)

    def swap_kill(self, n: int) -> Outcome:
        """A forced rebuild over the finished reference, SIGKILLed inside its ``n``-th publish swap
        (old output renamed aside, new one not yet in place), then a plain rerun."""
        import shutil

        _rmtree(self.root)
        shutil.copytree(self.scratch / "reference", self.root, symlinks=True)
        killed = kalora(["swap-kill", str(n), "--", "run", str(self.config), "--force", "all"], self.env, self.log,
                        module="tests.chaos")
        return self._rerun("swap", n, killed)

    def _rerun(self, kind: str, point: float, killed: Run) -> Outcome:
        done = completed_stages(self.root)
        missing = [o for s, o in OUTPUTS.items() if s in done and not (self.root / NAME / o).exists()]
        rerun = kalora(["run", str(self.config)], self.env, self.log)
        diff = differences(self.expected, build_digests(self.root)) if rerun.returncode == 0 else ["<rerun failed>"]
        return Outcome(kind, point, killed.killed, done, missing, rerun.returncode, rerun.seconds, diff,
                       leftovers(self.root))


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# -- the swap kill: a test-side wrapper around the CLI --------------------------------------------
def _kill_in_swap(n: int) -> None:
    real = os.replace
    seen = 0

    def replace(src, dst, *args, **kwargs):
        nonlocal seen
        real(src, dst, *args, **kwargs)
        if re.search(r"/\.[^/]+\.old-\d+@[^/]+$", os.fspath(dst)):
            seen += 1
            print(f"chaos: publish swap #{seen}: {os.fspath(dst)}", file=sys.stderr, flush=True)
            if seen == n:
                os.killpg(os.getpgid(0), signal.SIGKILL)

    os.replace = replace


def main(argv: list[str]) -> int:
    """``swap-kill N -- <kalora args>``"""
    if len(argv) < 3 or argv[0] != "swap-kill" or argv[2] != "--":
        sys.exit("usage: python -m tests.chaos swap-kill N -- <kalora args>")
    _kill_in_swap(int(argv[1]))
    from flows.cli import main as kalora_main

    return kalora_main(argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
