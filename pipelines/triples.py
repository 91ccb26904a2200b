"""Generic triples TSV/CSV: headerless ``head<TAB>relation<TAB>tail`` (PyKEEN, LibKGE, OGB) or
with a header (Hetionet, PrimeKG), columns mapped by name or by 1-based position.

Edges are directed: ``A r B`` and ``B r A`` are two facts. ``undirected`` keeps one direction of
each pair (PrimeKG lists both directions of its symmetric edges) and counts the other as skipped.
"""

from __future__ import annotations

import csv
import itertools
import logging
import sys
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

from pipelines.errors import DumpParseError, InputError
from pipelines.readers import open_text
from pipelines.tables import KGBuilder

log = logging.getLogger(__name__)

# Parquet holds strings up to 2 GiB; the csv module's default field limit is 128 KiB.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

ROLES = ("head", "relation", "tail", "head_type", "tail_type", "head_name", "tail_name")
# First-row words that mean "this is a header", so that a header is never ingested as a triple.
HEADER_WORDS = {"head", "relation", "tail", "h", "r", "t", "subject", "predicate", "object", "source", "target",
                "edge", "metaedge", "relation_type", "rel", "from", "to", "src", "dst", "head_id", "tail_id",
                "x_id", "y_id", "subject_id", "object_id", "node1", "node2", "type", "label"}


@dataclass(frozen=True)
class TriplesOptions:
    """Column roles map to a header name or a 1-based position (an int, or a string of digits).

    ``head``/``relation``/``tail`` left unset mean the columns named so when the file has a
    header, and columns 1, 2, 3 when it has none. ``header`` None detects it from the first row."""

    head: str | int | None = None
    relation: str | int | None = None
    tail: str | int | None = None
    head_type: str | int | None = None
    tail_type: str | int | None = None
    head_name: str | int | None = None
    tail_name: str | int | None = None
    header: bool | None = None
    undirected: bool = False
    delimiter: str | None = None  # default: tab for .tsv/.txt, comma otherwise

    @classmethod
    def from_mapping(cls, columns: dict[str, str | int], **extra) -> TriplesOptions:
        unknown = sorted(set(columns) - set(ROLES))
        if unknown:
            raise InputError(f"triple column mapping: unknown role(s) {unknown}; expected some of {sorted(ROLES)}")
        return cls(**columns, **extra)

    def mapping(self) -> dict[str, str | int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in ROLES and getattr(self, f.name) is not None}


def _position(value: str | int) -> int | None:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        if int(value) < 1:
            raise InputError(f"triple column position {value!r}: positions start at 1")
        return int(value) - 1
    return None


def _looks_like_header(first: list[str]) -> bool:
    words = [f.strip().lower() for f in first]
    return sum(w in HEADER_WORDS for w in words) >= 2


def _has_header(path: Path, first: list[str], options: TriplesOptions) -> bool:
    mapping = options.mapping()
    named = {role: col for role, col in mapping.items() if _position(col) is None}
    if options.header is not None:
        return options.header
    if named:
        return set(named.values()) <= set(first) or _missing(path, first, named)
    if mapping:  # only positions: a header is recognised by its words
        return _looks_like_header(first)
    if {"head", "relation", "tail"} <= set(first):
        return True
    if _looks_like_header(first):
        raise DumpParseError(path, 1, f"the first row {first} looks like a header without 'head', 'relation', 'tail' "
                                      "columns: map them by name (--column head=NAME relation=NAME tail=NAME) or by "
                                      "position (--column head=1), or pass --no-header")
    return False


def _missing(path: Path, header: list[str], named: dict[str, str | int]) -> bool:
    missing = sorted(set(named.values()) - set(header))
    raise DumpParseError(path, 1, f"header lacks column(s) {missing}; found {header} (map columns with --column "
                                  "head=NAME relation=NAME tail=NAME, or by position --column head=1 for a headerless file)")


def column_indices(path: Path, first: list[str], options: TriplesOptions) -> tuple[dict[str, int], bool]:
    """Role → 0-based column index, and whether the first row is a header."""
    header = _has_header(path, first, options)
    mapping = options.mapping()
    if header:
        mapping = {"head": "head", "relation": "relation", "tail": "tail", **mapping}
    else:
        mapping = {"head": 1, "relation": 2, "tail": 3, **mapping}
    out = {}
    for role, col in mapping.items():
        pos = _position(col)
        if pos is None:
            if not header:
                raise InputError(f"{path}: column {col!r} for {role} is a name, but the file has no header "
                                 "(--no-header): map it by position, e.g. --column head=1")
            if col not in first:
                _missing(path, first, {role: col})
            pos = first.index(col)
        out[role] = pos
    return out, header


def _dialect(path: Path, options: TriplesOptions) -> dict:
    delimiter = options.delimiter or ("\t" if ".tsv" in path.name or ".txt" in path.name else ",")
    # TSV has no quoting convention: a stray '"' must not swallow the lines after it
    return {"delimiter": delimiter, "quoting": csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL}


def read_triples(path: Path, builder: KGBuilder, options: TriplesOptions = TriplesOptions(),
                 seen_pairs: set[tuple[str, str, str]] | None = None) -> dict[str, int]:
    """Add the rows of one triples file to ``builder``; return counts (rows, skipped by reason).

    With ``undirected``, ``seen_pairs`` (shared by the files of one KG, e.g. train/valid/test)
    holds the triples kept so far, so a reversed pair is skipped across files too."""
    counts: Counter = Counter()
    seen_pairs = set() if seen_pairs is None else seen_pairs
    with open_text(path) as fh:
        reader = csv.reader(fh, **_dialect(path, options))
        try:
            first = next(reader, None)
            if first is None:
                raise DumpParseError(path, None, "empty file: expected triples (head, relation, tail per line)")
            cols, header = column_indices(path, first, options)
            rows = reader if header else itertools.chain([first], reader)
            width = max(cols.values()) + 1
            add = _adder(builder, cols, path.stem)
            for row in rows:
                if not row:
                    continue
                lineno = reader.line_num
                if len(row) < width:
                    raise DumpParseError(path, lineno, f"expected at least {width} {_name(options, path)}-separated "
                                                       f"fields, got {len(row)}")
                h, r, t = row[cols["head"]], row[cols["relation"]], row[cols["tail"]]
                if not h or not r or not t:
                    raise DumpParseError(path, lineno, "empty head, relation or tail")
                if options.undirected:
                    if (t, r, h) in seen_pairs:
                        counts["skipped_reverse_duplicate"] += 1
                        continue
                    seen_pairs.add((h, r, t))
                add(row, h, r, t)
                counts["rows"] += 1
        except csv.Error as exc:
            raise DumpParseError(path, reader.line_num, f"unreadable row ({exc})") from None
    log.info("%s: %s", path, dict(counts))
    return dict(counts)


def _name(options: TriplesOptions, path: Path) -> str:
    return "tab" if _dialect(path, options)["delimiter"] == "\t" else repr(_dialect(path, options)["delimiter"])


def _adder(builder: KGBuilder, cols: dict[str, int], source: str):
    """The per-row call, specialised once per file (this loop runs once per line of large files)."""
    add_entity, add_relation, add_triple = builder.add_bare_entity, builder.add_relation, builder.add_triple
    extras = [cols.get(role) for role in ("head_name", "head_type", "tail_name", "tail_type")]

    def plain(row: list[str], h: str, r: str, t: str) -> None:
        add_entity(h, None, None, source)
        add_entity(t, None, None, source)
        add_relation(r, r.replace("_", " "))
        add_triple(h, r, t, source, known=True)

    def described(row: list[str], h: str, r: str, t: str) -> None:
        hn, ht, tn, tt = (row[i] or None if i is not None and i < len(row) else None for i in extras)
        add_entity(h, hn, ht, source)
        add_entity(t, tn, tt, source)
        add_relation(r, r.replace("_", " "))
        add_triple(h, r, t, source, known=True)

    return described if any(i is not None for i in extras) else plain
