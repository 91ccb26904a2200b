"""Wikidata JSON dumps (``latest-all.json`` shape, plain/.gz/.bz2): entity extraction.

A dump is a JSON array with one entity per line, each line ending with a comma. Items and
properties become entities; labels, descriptions and aliases in the configured languages become
aliases; ``P31``/``P279`` values become types; entity-valued claims (deprecated rank excluded)
become triples; the sitelink count is the popularity prior. Literal values and qualifiers go to
tables of their own when asked for.

:func:`extract_lines` is the per-line work shared by both ingestion paths: the streaming,
parallel, resumable one for dumps (:mod:`pipelines.wikidata_stream`) and :func:`read_wikidata`,
which feeds the in-memory :class:`~pipelines.tables.KGBuilder` when a small Wikidata file is
ingested together with other formats.
"""

from __future__ import annotations

import gc
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from pipelines.errors import DumpParseError
from pipelines.normalize import normalize_alias
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


class Records:
    """Columnar output of one block of dump lines (plain lists; turned into Arrow by the caller).

    Aliases, triples, literals and qualifiers refer to their entity by ``row`` (its position in
    ``entities``); the merge turns rows back into ids.
    """

    ENTITY_COLS = ("entity_id", "label", "description", "types", "prior")
    ALIAS_COLS = ("row", "alias", "alias_norm", "kind", "lang")
    TRIPLE_COLS = ("row", "relation", "tail")
    LITERAL_COLS = ("row", "property", "datatype", "value", "lang")
    QUALIFIER_COLS = ("row", "relation", "value", "qualifier_property", "qualifier_value")

    def __init__(self) -> None:
        self.entities: dict[str, list] = {c: [] for c in self.ENTITY_COLS}
        self.aliases: dict[str, list] = {c: [] for c in self.ALIAS_COLS}
        self.triples: dict[str, list] = {c: [] for c in self.TRIPLE_COLS}
        self.literals: dict[str, list] = {c: [] for c in self.LITERAL_COLS}
        self.qualifiers: dict[str, list] = {c: [] for c in self.QUALIFIER_COLS}
        self.relations: dict[str, str | None] = {}  # property id → label (None: used, never defined)
        self.bad: list[tuple[int, bytes]] = []
        self.counts: Counter = Counter()
        self.lines = 0


def _first_lang(values: dict, languages: tuple[str, ...]) -> str | None:
    """The value in the first of ``languages`` that ``values`` (labels, descriptions) has."""
    for lang in languages:
        if lang in values:
            return values[lang]["value"]
    return None


def _literal(value) -> tuple[str, str | None]:
    """A claim value as text: strings as they are, monolingual text with its language, else JSON."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict) and "text" in value and "language" in value:
        return value["text"], value["language"]
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode(), None


def _snak_text(snak: dict) -> str | None:
    """The value of a qualifier snak as text (entity id or literal), None for somevalue/novalue."""
    dv = snak.get("datavalue")
    if dv is None:
        return None
    value = dv.get("value")
    if dv.get("type") == "wikibase-entityid" and isinstance(value, dict) and "id" in value:
        return value["id"]
    return _literal(value)[0]


def extract_lines(data, options: WikidataOptions, out: Records, begin: int = 0, end: int | None = None) -> None:
    """Parse whole dump lines ``data[begin:end]`` into ``out`` (``data``: bytes or an mmap of the
    dump). Line numbers are 1-based within that block.

    The hot loop of ingestion: written for speed (lines are zero-copy memoryview slices of the
    block, local names, no per-claim calls, the cyclic garbage collector paused since parsed
    documents hold no cycles). With the chunk I/O around it, one worker runs at 0.70 of the rate of
    bare ``orjson.loads`` over the same lines (BENCHMARKS.md).
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        _extract(data, options, out, begin, len(data) if end is None else end)
    finally:
        if gc_was_enabled:
            gc.enable()


def _extract(data, options: WikidataOptions, out: Records, pos: int, size: int) -> None:
    languages = options.languages
    allow, deny = options.properties_allow, options.properties_deny
    filter_props = allow is not None or bool(deny)
    classes = options.classes
    want_literals, want_qualifiers = options.literals, options.qualifiers
    e_id, e_label, e_desc, e_types, e_prior = (out.entities[c].append for c in Records.ENTITY_COLS)
    a_row, a_alias, a_norm, a_kind, a_lang = (out.aliases[c].append for c in Records.ALIAS_COLS)
    t_row, t_rel, t_tail = (out.triples[c].append for c in Records.TRIPLE_COLS)
    L, QL = out.literals, out.qualifiers
    relations = out.relations
    counts = out.counts
    n_malformed = n_entities = n_claims = n_deprecated = n_no_value = n_lit_skipped = n_literals = 0
    n_filtered_prop = n_filtered_class = n_properties = n_alias_empty = n_alias_nothing = n_qualifiers = 0
    row = len(out.entities["entity_id"])
    before = {name: len(getattr(out, name)["row"]) for name in ("triples", "literals", "qualifiers")}
    loads = orjson.loads
    find = data.find
    view = memoryview(data)
    lineno = 0
    while pos < size:
        end = find(b"\n", pos, size)
        if end < 0:
            end = size
        lineno += 1
        start, stop, pos = pos, end, end + 1
        while stop > start and data[stop - 1] in b" \t\r":
            stop -= 1
        if stop > start and data[stop - 1] == 44:  # the "," after each entity
            stop -= 1
        while start < stop and data[start] in b" \t":
            start += 1
        if stop - start < 2 and data[start:stop] in (b"", b"[", b"]"):
            continue
        line = view[start:stop]
        try:
            doc = loads(line)
            eid = doc["id"]
            if not isinstance(eid, str):
                raise ValueError("'id' is not a string")
        except (ValueError, KeyError, TypeError) as exc:
            reason = f"expected a JSON object with an 'id' ({exc})" if not isinstance(exc, ValueError) else str(exc)
            if options.strict:
                raise MalformedLine(lineno, f"malformed entity line ({reason})") from None
            n_malformed += 1
            out.bad.append((lineno, bytes(line[:10_000])))
            continue
        try:
            claims = doc.get("claims") or {}
            types = []
            for p in TYPE_PROPERTIES:
                for claim in claims.get(p, ()):
                    dv = claim["mainsnak"].get("datavalue")
                    if dv is not None and dv["type"] == "wikibase-entityid" and claim.get("rank") != "deprecated":
                        types.append(dv["value"]["id"])
            is_property = doc.get("type") == "property"
            if classes is not None and not is_property and classes.isdisjoint(types):
                n_filtered_class += 1
                continue
            labels = doc.get("labels") or {}
            label = _first_lang(labels, languages)
            if is_property:
                relations[eid] = label or eid
                n_properties += 1
            description = _first_lang(doc.get("descriptions") or {}, languages)
            e_id(eid)
            e_label(label or eid)
            e_desc(description)
            e_types(sorted(set(types)) if len(types) > 1 else types)
            e_prior(float(len(doc.get("sitelinks") or ())))

            all_aliases = doc.get("aliases") or {}
            for lang in languages:
                names = [("label", labels[lang]["value"])] if lang in labels else []
                names += [("synonym", a["value"]) for a in all_aliases.get(lang, ())]
                seen_alias = set()
                for kind, text in names:
                    text = text.strip()
                    if not text:
                        n_alias_empty += 1
                        continue
                    if (text, kind) in seen_alias:
                        continue
                    seen_alias.add((text, kind))
                    norm = normalize_alias(text)
                    if not norm:
                        n_alias_nothing += 1
                        continue
                    a_row(row)
                    a_alias(text)
                    a_norm(norm)
                    a_kind(kind)
                    a_lang(lang)

            for prop, prop_claims in claims.items():
                if filter_props and (prop in deny or (allow is not None and prop not in allow)):
                    n_filtered_prop += len(prop_claims)
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
                        t_row(row)
                        t_rel(prop)
                        t_tail(text)
                        if prop not in relations:
                            relations[prop] = None
                    elif want_literals:
                        text, lang = _literal(dv.get("value"))
                        L["row"].append(row)
                        L["property"].append(prop)
                        L["datatype"].append(snak.get("datatype"))
                        L["value"].append(text)
                        L["lang"].append(lang)
                    else:
                        n_lit_skipped += 1
                        continue
                    if want_qualifiers and "qualifiers" in claim:
                        for qprop, qsnaks in claim["qualifiers"].items():
                            for qsnak in qsnaks:
                                qtext = _snak_text(qsnak)
                                if qtext is None:
                                    continue
                                QL["row"].append(row)
                                QL["relation"].append(prop)
                                QL["value"].append(text)
                                QL["qualifier_property"].append(qprop)
                                QL["qualifier_value"].append(qtext)
        except (KeyError, TypeError, AttributeError, IndexError) as exc:  # valid JSON, not an entity's shape
            _rollback(out, row)
            reason = f"malformed entity line (unexpected structure: {type(exc).__name__} {exc})"
            if options.strict:
                raise MalformedLine(lineno, reason) from None
            n_malformed += 1
            out.bad.append((lineno, bytes(line[:10_000])))
            continue
        n_entities += 1
        row += 1
    out.lines += lineno
    n_claims, n_literals, n_qualifiers = (len(getattr(out, name)["row"]) - before[name] for name in before)
    for key, n in (("malformed", n_malformed), ("entities", n_entities), ("claims", n_claims),
                   ("claims_deprecated", n_deprecated), ("claims_no_value", n_no_value),
                   ("claims_literal_skipped", n_lit_skipped), ("literals", n_literals),
                   ("claims_filtered_property", n_filtered_prop), ("filtered_class", n_filtered_class),
                   ("properties", n_properties), ("dropped_alias_empty", n_alias_empty),
                   ("dropped_alias_normalises_to_nothing", n_alias_nothing), ("qualifiers", n_qualifiers)):
        if n:
            counts[key] += n


def _rollback(out: Records, row: int) -> None:
    """Remove whatever a half-extracted entity at ``row`` added (its records come last)."""
    if len(out.entities["entity_id"]) > row:
        for col in out.entities.values():
            del col[row:]
    for table in (out.aliases, out.triples, out.literals, out.qualifiers):
        rows = table["row"]
        cut = len(rows)
        while cut and rows[cut - 1] >= row:
            cut -= 1
        for col in table.values():
            del col[cut:]


def read_wikidata(path: Path, builder: KGBuilder, options: WikidataOptions = WikidataOptions(),
                  quarantine: Path | None = None) -> dict[str, int]:
    """Read a (small) dump into ``builder``: the path used when Wikidata is mixed with other formats.

    Dumps on their own go through :func:`pipelines.wikidata_stream.ingest_wikidata` (parallel,
    bounded memory, resumable).
    """
    from pipelines.wikidata_stream import iter_blocks

    out = Records()
    first_line = 0
    try:
        for _, block in iter_blocks(path, 8 << 20):
            before, lines_before = len(out.bad), out.lines
            try:
                extract_lines(block, options, out)
            except MalformedLine as exc:
                raise DumpParseError(path, first_line + exc.line, exc.reason) from None
            out.bad[before:] = [(first_line + n, text) for n, text in out.bad[before:]]
            first_line += out.lines - lines_before
    except (EOFError, OSError) as exc:
        raise DumpParseError(path, first_line, f"compressed stream ended early or is corrupt after line "
                             f"{first_line:,} ({out.counts['entities']:,} entities read) ({exc})") from None
    E = out.entities
    for i, eid in enumerate(E["entity_id"]):
        builder.add_entity(Entity(eid, E["label"][i], E["description"][i], E["types"][i], "wikidata", E["prior"][i]))
    for pid, label in out.relations.items():
        builder.add_relation(pid, label or pid)
    A = out.aliases
    for row, alias, kind, lang in zip(A["row"], A["alias"], A["kind"], A["lang"]):
        builder.add_alias(alias, E["entity_id"][row], kind, lang)
    T = out.triples
    for row, r, t in zip(T["row"], T["relation"], T["tail"]):
        builder.add_triple(E["entity_id"][row], r, t, "wikidata")
    counts = dict(out.counts)
    if out.bad:
        quarantine = quarantine or Path(f"{path}.quarantine.tsv")
        from pipelines.artifacts import atomic_write_bytes

        atomic_write_bytes(quarantine, b"".join(b"%d\t%s\n" % (n, text) for n, text in out.bad))
        log.warning("%s: %d malformed lines quarantined in %s", path, len(out.bad), quarantine)
        counts["quarantine_file"] = str(quarantine)
    return counts
