import os
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"

# Keep Prefect and PyKEEN state out of the home directory, offline, quiet.
_STATE = Path(os.environ.get("PYTEST_STATE_DIR", Path(__file__).resolve().parents[1] / ".pytest_state"))
os.environ.setdefault("PREFECT_HOME", str(_STATE / "prefect"))
os.environ.setdefault("PYKEEN_HOME", str(_STATE / "pykeen"))
# Under pytest-xdist each worker gets its own Prefect home (its own SQLite database: two ephemeral
# servers writing one file lock each other out) and its own PyKEEN home (dataset extraction).
if os.environ.get("PYTEST_XDIST_WORKER"):
    _suffix = f"-{os.environ['PYTEST_XDIST_WORKER']}"
    for _var in ("PREFECT_HOME", "PYKEEN_HOME"):
        if not os.environ[_var].endswith(_suffix):  # this module may be imported twice (as tests.conftest)
            os.environ[_var] += _suffix
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# Prefect's ephemeral API gives up after 20 s by default; a busy 2-core CI machine can take longer.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def tiny_sources() -> list[Path]:
    return [DATA / "tiny.obo", DATA / "tiny.hpoa", DATA / "tiny_genes_to_phenotype.txt"]


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory, tiny_sources):
    """Every artifact of a build on the fabricated tiny ontology, through the library (no Prefect)."""
    from kg.config import EmbeddingConfig
    from kg.embeddings import train_embeddings
    from linking.build import build_linker
    from linking.index import build_entity_index
    from pipelines.artifacts import ArtifactLayout
    from pipelines.ingest import ingest
    from flows.stages import shard_inputs
    from pipelines.shards import ShardConfig, build_shards

    layout = ArtifactLayout(tmp_path_factory.mktemp("artifacts"), "tiny")
    ingest(tiny_sources, None, layout)
    train_embeddings(layout, EmbeddingConfig(model="transe", training_loop="slcwa", inverse_triples=False,
                                             learning_rate=0.01, embedding_dim=8, num_epochs=3, batch_size=8,
                                             eval_max_triples=None),
                     progress=False)
    build_entity_index(layout)
    build_linker(layout)
    build_shards(layout, shard_inputs(layout, "transe"), config=ShardConfig(rows_per_part=7, row_group_size=3, question_fraction=1.0))
    return layout


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600):
    """Run the installed console script in a fresh process."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ})
