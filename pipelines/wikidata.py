"""Streaming reader for Wikidata JSON dumps (``latest-all.json`` shape, plain/.gz/.bz2).

One entity per line inside a JSON array, each line ending with a comma. Items and properties
become entities; labels, descriptions and aliases in the configured languages become aliases;
``P31``/``P279`` values become types; entity-valued claims become triples; the sitelink count is
the popularity prior. A malformed line is written with its line number to a quarantine file and
counted (``strict=True`` stops at the first one instead).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from pipelines.errors import DumpParseError
from pipelines.readers import open_binary
from pipelines.tables import Entity, KGBuilder

log = logging.getLogger(__name__)

TYPE_PROPERTIES = ("P31", "P279")


@dataclass(frozen=True)
class WikidataOptions:
    languages: tuple[str, ...] = ("en",)
    properties_allow: frozenset[str] | None = None
    properties_deny: frozenset[str] = field(default_factory=frozenset)
    classes: frozenset[str] | None = None  # keep only entities that are instances/subclasses of these
    strict: bool = False


def _entity_values(claims: list[dict]) -> list[str]:
    out = []
    for claim in claims:
        snak = claim.get("mainsnak", {})
        if snak.get("snaktype") != "value":
            continue
        value = snak.get("datavalue", {}).get("value")
        if isinstance(value, dict) and "id" in value and value.get("entity-type") in ("item", "property"):
            out.append(value["id"])
    return out


def _first_lang(values: dict, languages: tuple[str, ...]) -> str | None:
    for lang in languages:
        if lang in values:
            return values[lang]["value"]
    return None


def read_wikidata(path: Path, builder: KGBuilder, options: WikidataOptions = WikidataOptions(),
                  quarantine: Path | None = None) -> dict[str, int]:
    counts: Counter = Counter()
    bad_lines: list[bytes] = []
    with open_binary(path) as fh:
        try:
            for lineno, raw in enumerate(fh, 1):
                line = raw.strip()
                if line in (b"[", b"]", b""):
                    continue
                if line.endswith(b","):
                    line = line[:-1]
                try:
                    doc = orjson.loads(line)
                    if not isinstance(doc, dict) or "id" not in doc:
                        raise ValueError("expected a JSON object with an 'id'")
                except ValueError as exc:
                    if options.strict:
                        raise DumpParseError(path, lineno, f"malformed entity line ({exc})") from None
                    counts["malformed"] += 1
                    bad_lines.append(b"%d\t" % lineno + line[:10_000])
                    continue
                _add(doc, builder, options, counts)
        except (EOFError, OSError) as exc:
            raise DumpParseError(path, counts["entities"] + counts["malformed"],
                                 f"compressed stream ended early or is corrupt after {counts['entities']} entities ({exc})") from None
    if bad_lines:
        quarantine = quarantine or Path(f"{path}.quarantine.tsv")
        from pipelines.artifacts import atomic_write_bytes

        atomic_write_bytes(quarantine, b"\n".join(bad_lines) + b"\n")
        log.warning("%s: %d malformed lines quarantined in %s", path, len(bad_lines), quarantine)
        counts["quarantine_file"] = str(quarantine)  # type: ignore[assignment]
    return dict(counts)


def _add(doc: dict, builder: KGBuilder, options: WikidataOptions, counts: Counter) -> None:
    eid = doc["id"]
    claims = doc.get("claims", {}) or {}
    types = [v for p in TYPE_PROPERTIES for v in _entity_values(claims.get(p, []))]
    if options.classes is not None and doc.get("type") == "item" and not (set(types) & options.classes):
        counts["filtered_class"] += 1
        return
    labels = doc.get("labels", {}) or {}
    label = _first_lang(labels, options.languages)
    if doc.get("type") == "property":
        builder.add_relation(eid, label or eid)
        counts["properties"] += 1
    sitelinks = len(doc.get("sitelinks", {}) or {})
    builder.add_entity(Entity(eid, label or eid, _first_lang(doc.get("descriptions", {}) or {}, options.languages),
                              types, "wikidata", float(sitelinks)))
    for lang in options.languages:
        if lang in labels:
            builder.add_alias(labels[lang]["value"], eid, "label", lang)
        for alias in (doc.get("aliases", {}) or {}).get(lang, []):
            builder.add_alias(alias["value"], eid, "synonym", lang)
    for prop, prop_claims in claims.items():
        if prop in options.properties_deny or (options.properties_allow is not None and prop not in options.properties_allow):
            continue
        for target in _entity_values(prop_claims):
            builder.relations.setdefault(prop, prop)
            builder.add_triple(eid, prop, target, "wikidata")
            counts["claims"] += 1
    counts["entities"] += 1
