"""UMLS RRF reader (MRCONSO, MRSTY, MRREL) for licensed users; pipe-separated, no header."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from pipelines.errors import DumpParseError, InputError
from pipelines.readers import open_text
from pipelines.tables import Entity, KGBuilder, drop_row

log = logging.getLogger(__name__)

MRCONSO = ["CUI", "LAT", "TS", "LUI", "STT", "SUI", "ISPREF", "AUI", "SAUI", "SCUI", "SDUI", "SAB", "TTY",
           "CODE", "STR", "SRL", "SUPPRESS", "CVF"]
MRSTY = ["CUI", "TUI", "STN", "STY", "ATUI", "CVF"]
MRREL = ["CUI1", "AUI1", "STYPE1", "REL", "CUI2", "AUI2", "STYPE2", "RELA", "RUI", "SRUI", "SAB", "SL", "RG",
         "DIR", "SUPPRESS", "CVF"]
LANGS = {"ENG": "en", "SPA": "es", "FRE": "fr", "GER": "de", "ITA": "it", "DUT": "nl", "POR": "pt", "JPN": "ja"}
ABBREVIATION_TTYS = {"AB", "ACR", "AA", "AM"}


def _rows(path: Path, columns: list[str]):
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.rstrip("\n").split("|")
            if fields and fields[-1] == "":
                fields = fields[:-1]
            if len(fields) != len(columns):
                raise DumpParseError(path, lineno, f"expected {len(columns)} '|'-separated fields ({path.name} layout), got {len(fields)}")
            yield lineno, dict(zip(columns, fields))


def umls_languages(languages: tuple[str, ...]) -> tuple[str, ...]:
    """ISO codes as the rest of the project uses them ("en", "es") → UMLS LAT codes ("ENG", "SPA")."""
    to_lat = {iso: lat for lat, iso in LANGS.items()}
    return tuple(to_lat.get(lang, lang.upper()) for lang in languages)


def read_umls(paths: list[Path], builder: KGBuilder, *, languages: tuple[str, ...] = ("ENG",),
              strict: bool = False) -> dict[str, int]:
    """Read a directory's worth of RRF files; MRCONSO is required, MRSTY and MRREL optional.

    ``languages`` are UMLS LAT codes (see :func:`umls_languages`); SAB:CODE pairs become xrefs.
    Rows left out by request (suppressed, other languages, their types and relations) are counted
    as skipped; a relation to a CUI that MRCONSO never lists is dropped (an error with ``strict``).
    MRCONSO is read twice: first for each concept's label, then to stream its names to the builder
    (memory holds one label per concept, not the names)."""
    by_name = {Path(p).name.upper().split(".")[0]: Path(p) for p in paths}
    if "MRCONSO" not in by_name:
        raise InputError(f"{', '.join(map(str, paths))}: UMLS input needs MRCONSO.RRF (and optionally MRSTY.RRF, MRREL.RRF)")
    counts: Counter = Counter()
    labels, listed = _labels(by_name["MRCONSO"], languages, counts)
    if "MRSTY" in by_name:
        for _, r in _rows(by_name["MRSTY"], MRSTY):
            if r["CUI"] in labels:
                builder.add_entity(Entity(r["CUI"], labels[r["CUI"]], None, [r["STY"]], "UMLS"))
            else:
                counts["skipped_type_of_concept_not_kept"] += 1
    for cui, label in labels.items():
        builder.add_entity(Entity(cui, label, None, [], "UMLS"))
    _names(by_name["MRCONSO"], builder, languages, labels)
    if "MRREL" in by_name:
        _relations(by_name["MRREL"], builder, labels, listed, counts, strict)
    counts["concepts"] = len(labels)
    return dict(counts)


def _kept(r: dict[str, str], languages: tuple[str, ...]) -> bool:
    return r["LAT"] in languages and r["SUPPRESS"] not in ("O", "E", "Y")


def _labels(path: Path, languages: tuple[str, ...], counts: Counter) -> tuple[dict[str, str], set[str]]:
    """MRCONSO, first pass: each kept CUI's label (its preferred name, English first, else its first
    kept name) and every CUI listed at all."""
    labels: dict[str, str] = {}
    preferred: set[str] = set()
    listed: set[str] = set()
    for _, r in _rows(path, MRCONSO):
        cui = r["CUI"]
        listed.add(cui)
        if not _kept(r, languages):
            counts["skipped_suppressed_or_other_language"] += 1
            continue
        if cui not in labels:
            labels[cui] = r["STR"]
        if r["TS"] == "P" and r["STT"] == "PF" and r["ISPREF"] == "Y" and (cui not in preferred or r["LAT"] == "ENG"):
            labels[cui] = r["STR"]
            preferred.add(cui)
    return labels, listed


def _names(path: Path, builder: KGBuilder, languages: tuple[str, ...], labels: dict[str, str]) -> None:
    """MRCONSO, second pass: every kept name as an alias, SAB:CODE pairs as xrefs."""
    for _, r in _rows(path, MRCONSO):
        if not _kept(r, languages):
            continue
        cui, text = r["CUI"], r["STR"]
        kind = "abbreviation" if r["TTY"] in ABBREVIATION_TTYS else "synonym"
        builder.add_alias(text, cui, "label" if text == labels[cui] else kind, LANGS.get(r["LAT"], r["LAT"].lower()))
        if r["SAB"] and r["CODE"] and r["CODE"] != "NOCODE":
            builder.add_xref(cui, f"{r['SAB']}:{r['CODE']}")


def _relations(path: Path, builder: KGBuilder, names: dict[str, str], listed: set[str], counts: Counter,
               strict: bool) -> None:
    for lineno, r in _rows(path, MRREL):
        if r["CUI1"] == r["CUI2"]:
            counts["skipped_self_relation"] += 1
            continue
        if r["SUPPRESS"] in ("O", "E", "Y"):
            counts["skipped_suppressed_relation"] += 1
            continue
        missing = [c for c in (r["CUI1"], r["CUI2"]) if c not in names]
        if any(c not in listed for c in missing):
            drop_row(counts, "relation_to_unlisted_concept", path, lineno,
                     f"{missing[0]} is not in MRCONSO", strict)
            continue
        if missing:  # listed, but none of its names is kept (language, suppression)
            counts["skipped_relation_of_concept_not_kept"] += 1
            continue
        rel = r["RELA"] or r["REL"]
        builder.add_relation(rel, rel.replace("_", " "))
        # MRREL reads "CUI2 has relation RELA to CUI1"
        builder.add_triple(r["CUI2"], rel, r["CUI1"], r["SAB"] or "UMLS")
        counts["relations_rows"] += 1
