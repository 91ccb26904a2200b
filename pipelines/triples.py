"""Generic triples/nodes TSV or CSV (Hetionet, PrimeKG style) with a column mapping."""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import DumpParseError
from pipelines.readers import open_text
from pipelines.tables import Entity, KGBuilder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TriplesOptions:
    head: str = "head"
    relation: str = "relation"
    tail: str = "tail"
    head_type: str | None = None
    tail_type: str | None = None
    head_name: str | None = None
    tail_name: str | None = None
    undirected: bool = True  # PrimeKG lists both directions of symmetric edges: keep one
    delimiter: str | None = None  # default: tab for .tsv, comma otherwise


def read_triples(path: Path, builder: KGBuilder, options: TriplesOptions = TriplesOptions()) -> dict[str, int]:
    delimiter = options.delimiter or ("\t" if ".tsv" in path.name or ".txt" in path.name else ",")
    counts: Counter = Counter()
    seen_pairs: set[tuple[str, str, str]] = set()
    with open_text(path) as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        missing = {options.head, options.relation, options.tail} - set(reader.fieldnames or [])
        if missing:
            raise DumpParseError(path, 1, f"header lacks column(s) {sorted(missing)}; found {reader.fieldnames} "
                                 "(map columns with --column head=... relation=... tail=...)")
        for lineno, row in enumerate(reader, 2):
            h, r, t = row[options.head], row[options.relation], row[options.tail]
            if not h or not r or not t:
                raise DumpParseError(path, lineno, "empty head, relation or tail")
            if options.undirected and (t, r, h) in seen_pairs:
                counts["reverse_duplicates"] += 1
                continue
            seen_pairs.add((h, r, t))
            for eid, type_col, name_col in ((h, options.head_type, options.head_name), (t, options.tail_type, options.tail_name)):
                label = row.get(name_col) if name_col else None
                builder.add_entity(Entity(eid, label or eid, None, [row[type_col]] if type_col and row.get(type_col) else [], path.stem))
                if label:
                    builder.add_alias(label, eid, "label")
            builder.add_relation(r, r.replace("_", " "))
            builder.add_triple(h, r, t, path.stem)
            counts["rows"] += 1
    return dict(counts)
