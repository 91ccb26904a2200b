"""Wikidata JSON dumps (``latest-all.json`` shape, plain/.gz/.bz2): entity extraction.

A dump is a JSON array with one entity per line, each line ending with a comma. Items and
properties become entities; labels, descriptions and aliases in the configured languages become
aliases; ``P31``/``P279`` values become types; entity-valued claims (deprecated rank excluded)
become triples; the sitelink count is the popularity prior. Literal values and qualifiers go to
tables of their own when asked for.

:func:`extract_lines` is the per-block work shared by both ingestion paths: the streaming,
parallel, resumable one for dumps (:mod:`pipelines.wikidata_stream`) and :func:`read_wikidata`,
which feeds the in-memory :class:`~pipelines.tables.KGBuilder` when a small Wikidata file is
ingested together with other formats. Each entity line goes through small functions that return
its rows (:func:`extract_entity`); :class:`Records` collects the rows of one block.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import orjson

from pipelines.errors import DumpParseError
from pipelines.normalize import normalize_alias
from pipelines.readers import DumpLines, iter_blocks, lines_before_damage
from pipelines.tables import Entity, KGBuilder

log = logging.getLogger(__name__)

TYPE_PROPERTIES = ("P31", "P279")


@dataclass(frozen=True)
class WikidataOptions:
    languages: tuple[str, ...] = ("en",)
    properties_allow: frozenset[str] | None = None  # keep only claims of these properties
    properties_deny: frozenset[str] = field(default_factory=frozenset)
    classes: frozenset[str] | None = None  # keep only items that are instances/subclasses of these
    literals: bool = False    # non-entity claim values → kg/literals/
    qualifiers: bool = False  # qualifiers of kept claims → kg/qualifiers/
    strict: bool = False


class MalformedLine(Exception):
    """Raised by :func:`extract_lines` in strict mode: ``line`` is relative to the block given."""

    def __init__(self, line: int, reason: str):
        super().__init__(reason)
        self.line = line
        self.reason = reason


# -- one entity line → its rows -------------------------------------------------------------------
# Rows are plain tuples (the per-entity cost matters at dump scale):
#   entity:    (entity_id, label, description, types, prior)
#   alias:     (row, alias, alias_norm, kind, lang)
#   triple:    (row, relation, tail)
#   literal:   (row, property, datatype, value, lang)
#   qualifier: (row, relation, value, qualifier_property, qualifier_value)
# ``row`` is the entity's position in its block.
CLAIM_TALLIES = ("claims_no_value", "claims_deprecated", "claims_literal_skipped", "claims_filtered_property")
ALIAS_TALLIES = ("dropped_alias_empty", "dropped_alias_normalises_to_nothing")


class ClaimRows(NamedTuple):
    """What an entity's claims yield, and how many claims were left out (``CLAIM_TALLIES``)."""

    triples: list[tuple]
    literals: list[tuple]
    qualifiers: list[tuple]
    tallies: tuple[int, int, int, int]


class EntityRows(NamedTuple):
    entity: tuple
    aliases: list[tuple]
    alias_tallies: tuple[int, int]  # ALIAS_TALLIES
    claims: ClaimRows
    property_label: str | None  # the label of a property entity (its id when it has none), else None


def parse_entity(line) -> dict:
    """The JSON document of one entity line; ``ValueError``/``KeyError``/``TypeError`` if it is not one."""
    doc = orjson.loads(line)
    if not isinstance(doc["id"], str):
        raise ValueError("'id' is not a string")
    return doc


def first_lang(values: dict, languages: tuple[str, ...]) -> str | None:
    """The value in the first of ``languages`` that ``values`` (labels, descriptions) has."""
    for lang in languages:
        if lang in values:
            return values[lang]["value"]
    return None


def literal_text(value) -> tuple[str, str | None]:
    """A claim value as text: strings as they are, monolingual text with its language, else JSON."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict) and "text" in value and "language" in value:
        return value["text"], value["language"]
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode(), None


def snak_text(snak: dict) -> str | None:
    """The value of a qualifier snak as text (entity id or literal), None for somevalue/novalue."""
    dv = snak.get("datavalue")
    if dv is None:
        return None
    value = dv.get("value")
    if dv.get("type") == "wikibase-entityid" and isinstance(value, dict) and "id" in value:
        return value["id"]
    return literal_text(value)[0]


def entity_types(claims: dict) -> list[str]:
    """The entity-valued, non-deprecated ``P31``/``P279`` values, in claim order (repeats kept)."""
    types = []
    for p in TYPE_PROPERTIES:
        for claim in claims.get(p, ()):
            dv = claim["mainsnak"].get("datavalue")
            if dv is not None and dv["type"] == "wikibase-entityid" and claim.get("rank") != "deprecated":
                types.append(dv["value"]["id"])
    return types


def alias_rows(row: int, labels: dict, aliases: dict, languages: tuple[str, ...]) -> tuple[list, tuple[int, int]]:
    """(rows, ``ALIAS_TALLIES``): the label and synonyms of each language, each name once per kind;
    names blank after stripping or whose normal form is empty are counted, not kept."""
    rows, n_empty, n_nothing = [], 0, 0
    for lang in languages:
        names = [("label", labels[lang]["value"])] if lang in labels else []
        names += [("synonym", a["value"]) for a in aliases.get(lang, ())]
        seen = set()
        for kind, text in names:
            text = text.strip()
            if not text:
                n_empty += 1
                continue
            if (text, kind) in seen:
                continue
            seen.add((text, kind))
            norm = normalize_alias(text)
            if not norm:
                n_nothing += 1
                continue
            rows.append((row, text, norm, kind, lang))
    return rows, (n_empty, n_nothing)


def claim_rows(row: int, claims: dict, options: WikidataOptions) -> ClaimRows:
    """Triples for entity-valued claims (each (property, tail) once), literal values when asked for,
    and the qualifiers of kept claims when asked for. No per-claim calls: this is the hot loop."""
    allow, deny = options.properties_allow, options.properties_deny
    filter_props = allow is not None or bool(deny)
    want_literals, want_qualifiers = options.literals, options.qualifiers
    triples, literals, qualifiers = [], [], []
    n_no_value = n_deprecated = n_lit_skipped = n_filtered = 0
    for prop, prop_claims in claims.items():
        if filter_props and (prop in deny or (allow is not None and prop not in allow)):
            n_filtered += len(prop_claims)
            continue
        seen = set() if len(prop_claims) > 1 else None  # one claim per property is the common case
        for claim in prop_claims:
            snak = claim["mainsnak"]
            dv = snak.get("datavalue")
            if dv is None:  # somevalue / novalue
                n_no_value += 1
                continue
            if claim.get("rank") == "deprecated":
                n_deprecated += 1
                continue
            if dv["type"] == "wikibase-entityid":
                text = dv["value"]["id"]
                if seen is not None:
                    if text in seen:
                        continue
                    seen.add(text)
                triples.append((row, prop, text))
            elif want_literals:
                text, lang = literal_text(dv.get("value"))
                literals.append((row, prop, snak.get("datatype"), text, lang))
            else:
                n_lit_skipped += 1
                continue
            if want_qualifiers and "qualifiers" in claim:
                for qprop, qsnaks in claim["qualifiers"].items():
                    for qsnak in qsnaks:
                        qtext = snak_text(qsnak)
                        if qtext is not None:
                            qualifiers.append((row, prop, text, qprop, qtext))
    return ClaimRows(triples, literals, qualifiers, (n_no_value, n_deprecated, n_lit_skipped, n_filtered))


def extract_entity(doc: dict, row: int, options: WikidataOptions) -> EntityRows | None:
    """The rows of one parsed entity (``row``: its position in the block), or None when the class
    filter leaves it out. A document of the wrong shape raises KeyError/TypeError/AttributeError/IndexError."""
    eid = doc["id"]
    claims = doc.get("claims") or {}
    types = entity_types(claims)
    is_property = doc.get("type") == "property"
    if options.classes is not None and not is_property and options.classes.isdisjoint(types):
        return None
    labels = doc.get("labels") or {}
    label = first_lang(labels, options.languages)
    description = first_lang(doc.get("descriptions") or {}, options.languages)
    entity = (eid, label or eid, description, sorted(set(types)) if len(types) > 1 else types,
              float(len(doc.get("sitelinks") or ())))
    aliases, alias_tallies = alias_rows(row, labels, doc.get("aliases") or {}, options.languages)
    return EntityRows(entity, aliases, alias_tallies, claim_rows(row, claims, options),
                      (label or eid) if is_property else None)


# -- one block → Records ----------------------------------------------------------------------------
class Records:
    """The rows of one block of dump lines, as lists of tuples (turned into Arrow by the caller).

    Aliases, triples, literals and qualifiers refer to their entity by ``row`` (its position in
    ``entities``); the merge turns rows back into ids. ``relations`` maps each property seen
    (defined or used) to its label, None when used but not defined in the block.
    """

    ENTITY_COLS = ("entity_id", "label", "description", "types", "prior")
    ALIAS_COLS = ("row", "alias", "alias_norm", "kind", "lang")
    TRIPLE_COLS = ("row", "relation", "tail")
    LITERAL_COLS = ("row", "property", "datatype", "value", "lang")
    QUALIFIER_COLS = ("row", "relation", "value", "qualifier_property", "qualifier_value")
    TABLES = {"entities": ENTITY_COLS, "aliases": ALIAS_COLS, "triples": TRIPLE_COLS,
              "literals": LITERAL_COLS, "qualifiers": QUALIFIER_COLS}

    def __init__(self) -> None:
        self.entities: list[tuple] = []
        self.aliases: list[tuple] = []
        self.triples: list[tuple] = []
        self.literals: list[tuple] = []
        self.qualifiers: list[tuple] = []
        self.relations: dict[str, str | None] = {}
        self.bad: list[tuple[int, bytes]] = []
        self.counts: Counter = Counter()
        self.lines = 0
        self._claim_tallies: list[tuple[int, ...]] = []  # summed by finish(): cheaper than counting per entity
        self._alias_tallies: list[tuple[int, ...]] = []

    def add(self, rows: EntityRows) -> None:
        entity, aliases, alias_tallies, (triples, literals, qualifiers, claim_tallies), property_label = rows
        self.entities.append(entity)
        self.aliases += aliases
        self.triples += triples
        self.literals += literals
        self.qualifiers += qualifiers
        self._claim_tallies.append(claim_tallies)
        self._alias_tallies.append(alias_tallies)
        if property_label is not None:
            self.relations[entity[0]] = property_label
            self.counts["properties"] += 1

    def columns(self, table: str) -> dict[str, list]:
        """``table``'s rows as columns (empty lists when it has none)."""
        names = self.TABLES[table]
        rows = getattr(self, table)
        return dict(zip(names, map(list, zip(*rows)))) if rows else {c: [] for c in names}

    def finish(self, lines: int) -> Records:
        """Record the block's line count and fold the tallies and the used relations in."""
        self.lines = lines
        for rel in {t[1] for t in self.triples}:
            self.relations.setdefault(rel, None)
        totals = {"entities": len(self.entities), "claims": len(self.triples), "literals": len(self.literals),
                  "qualifiers": len(self.qualifiers)}
        for keys, tallies in ((CLAIM_TALLIES, self._claim_tallies), (ALIAS_TALLIES, self._alias_tallies)):
            if tallies:
                totals.update(zip(keys, map(sum, zip(*tallies))))
        self.counts.update({k: n for k, n in totals.items() if n})
        return self


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: parsed documents and rows hold no reference cycles, and
    the collector would otherwise traverse every row tuple of a block, more than once."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def extract_lines(data, options: WikidataOptions, begin: int = 0, end: int | None = None) -> Records:
    """The records of whole dump lines ``data[begin:end]`` (``data``: bytes or an mmap of the
    dump). Line numbers (of malformed lines, of :class:`MalformedLine`) are 1-based within that block.

    The hot loop of ingestion: lines are zero-copy memoryview slices of the block and the cyclic
    garbage collector is paused. With the chunk I/O around it, one worker runs at about 0.7 of the
    rate of bare ``orjson.loads`` over the same lines (BENCHMARKS.md).
    """
    out = Records()
    lines = DumpLines(data, begin, end)
    with gc_paused():
        for lineno, line in lines:
            try:
                doc = parse_entity(line)
            except (ValueError, KeyError, TypeError) as exc:
                reason = str(exc) if isinstance(exc, ValueError) else f"expected a JSON object with an 'id' ({exc})"
                _malformed(out, options, lineno, line, f"malformed entity line ({reason})")
                continue
            try:
                rows = extract_entity(doc, len(out.entities), options)
            except (KeyError, TypeError, AttributeError, IndexError) as exc:  # valid JSON, not an entity's shape
                _malformed(out, options, lineno, line,
                           f"malformed entity line (unexpected structure: {type(exc).__name__} {exc})")
                continue
            if rows is None:
                out.counts["filtered_class"] += 1
            else:
                out.add(rows)
    return out.finish(lines.count)


def _malformed(out: Records, options: WikidataOptions, lineno: int, line: memoryview, reason: str) -> None:
    if options.strict:
        raise MalformedLine(lineno, reason)
    out.counts["malformed"] += 1
    out.bad.append((lineno, bytes(line[:10_000])))


# -- the in-memory path: a small Wikidata file next to other formats --------------------------------
def read_wikidata(path: Path, builder: KGBuilder, options: WikidataOptions = WikidataOptions(),
                  quarantine: Path | None = None) -> dict[str, int]:
    """Read a (small) dump into ``builder``: the path used when Wikidata is mixed with other formats.

    Dumps on their own go through :func:`pipelines.wikidata_stream.ingest_wikidata` (parallel,
    bounded memory, resumable).
    """
    counts: Counter = Counter()
    relations: dict[str, str | None] = {}
    bad: list[tuple[int, bytes]] = []
    first_line = 0
    try:
        for _, block in iter_blocks(path, 8 << 20):
            try:
                records = extract_lines(block, options)
            except MalformedLine as exc:
                raise DumpParseError(path, first_line + exc.line, exc.reason) from None
            _add_to_builder(records, builder)
            for pid, label in records.relations.items():  # a property's own label wins over "used"
                if label is not None or pid not in relations:
                    relations[pid] = label
            counts.update(records.counts)
            bad += [(first_line + n, text) for n, text in records.bad]
            first_line += records.lines
    except (EOFError, OSError) as exc:
        line = lines_before_damage(path)
        raise DumpParseError(path, line + 1, f"compressed stream ended early or is corrupt after line "
                             f"{line:,} ({counts['entities']:,} entities read) ({exc})") from None
    for pid, label in relations.items():
        builder.add_relation(pid, label or pid)
    result = dict(counts)
    if bad:
        result["quarantine_file"] = str(_quarantine(path, bad, quarantine))
    return result


def _add_to_builder(records: Records, builder: KGBuilder) -> None:
    ids = [e[0] for e in records.entities]
    for eid, label, description, types, prior in records.entities:
        builder.add_entity(Entity(eid, label, description, types, "wikidata", prior))
    for row, alias, _, kind, lang in records.aliases:
        builder.add_alias(alias, ids[row], kind, lang)
    for row, relation, tail in records.triples:
        builder.add_triple(ids[row], relation, tail, "wikidata")


def _quarantine(path: Path, bad: list[tuple[int, bytes]], target: Path | None) -> Path:
    from pipelines.artifacts import atomic_write_bytes

    target = target or Path(f"{path}.quarantine.tsv")
    atomic_write_bytes(target, b"".join(b"%d\t%s\n" % (n, text) for n, text in bad))
    log.warning("%s: %d malformed lines quarantined in %s", path, len(bad), target)
    return target
