"""``link-corpus``: link a large text file with a built linker, fanned out in chunks over the flow's
task runner (Prefect's thread pool, or Dask with ``dask``: a LocalCluster or an existing
scheduler). Output: JSONL in input order, written through a temporary file."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.build import RETRIES, DaskOptions, task_runner
from flows.config import artifact_root
from pipelines.artifacts import ArtifactLayout, atomic_write_bytes
from pipelines.config import check_value


@lru_cache(maxsize=2)
def _linker(linker_dir: str, mtime_ns: int):
    import spacy

    return spacy.load(linker_dir)  # once per worker process, reloaded when the linker is rebuilt


@task(name="link-chunk", cache_policy=NO_CACHE, **RETRIES)
def link_chunk(linker_dir: str, mtime_ns: int, texts: list[str]) -> list[dict[str, Any]]:
    from linking.build import doc_links, link_texts

    nlp = _linker(linker_dir, mtime_ns)
    return [{"text": t, "spans": doc_links(d)} for t, d in zip(texts, link_texts(nlp, texts))]


@flow(name="link-chunks")
def link_chunks(linker_dir: str, input: str, chunk_size: int) -> list[dict[str, Any]]:
    """The fan-out: one ``link-chunk`` task per ``chunk_size`` lines, on this flow's task runner."""
    from linking.build import read_lines

    texts = read_lines(Path(input))
    mtime = (Path(linker_dir) / "config.cfg").stat().st_mtime_ns
    futures = [link_chunk.submit(linker_dir, mtime, texts[i:i + chunk_size]) for i in range(0, len(texts), chunk_size)]
    return [row for f in futures for row in f.result()]


@flow(name="link-corpus")
def link_corpus(input: str, output: str, name: str = "hpo", root: str | None = None, chunk_size: int = 1000,
                dask: DaskOptions | None = None) -> dict[str, Any]:
    """Link every line of ``input`` (one text per line) with ``<root>/<name>/linker``; write JSONL
    ``{"text", "spans"}`` to ``output``. ``dask`` spreads the chunks over a Dask cluster."""
    from pipelines.readers import check_readable

    check_value("chunk_size", chunk_size, gt=0)
    check_readable(input)
    layout = ArtifactLayout(Path(artifact_root(root) or "./artifacts"), name)
    linker_dir = layout.require(layout.linker, "linker")
    rows = link_chunks.with_options(task_runner=task_runner(dask))(str(linker_dir.resolve()), str(input), chunk_size)
    atomic_write_bytes(Path(output), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    return {"documents": len(rows), "spans": sum(len(r["spans"]) for r in rows), "output": str(Path(output).resolve()),
            "chunks": -(-len(rows) // chunk_size)}
