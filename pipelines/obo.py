"""Streaming OBO 1.2/1.4 reader (HPO, MONDO, GO, DOID) into the canonical KG.

Terms become entities; names, synonyms (with scope and type) become aliases; xrefs go to
``kg/xrefs.parquet``; ``is_a`` and
``relationship`` lines become triples; obsolete terms are excluded but their ``replaced_by`` and
every ``alt_id`` become redirects, so annotations that use old ids still resolve.

The file is read twice: a first pass keeps only each term's skeleton (name, parents, alt ids,
obsolescence: what slicing, branches and edge checks need), the second hands one term at a time
to the builder, so definitions, synonyms and xrefs are never all in memory.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import DumpParseError
from pipelines.readers import open_text
from pipelines.tables import Entity, KGBuilder, drop_row

log = logging.getLogger(__name__)

_SYNONYM = re.compile(r'^"((?:[^"\\]|\\.)*)"\s+(EXACT|BROAD|NARROW|RELATED)(?:\s+([^\s\[]+))?\s*(\[.*\])?\s*(\{.*\})?\s*$')
_DEF = re.compile(r'^"((?:[^"\\]|\\.)*)"\s*(\[.*\])?\s*(\{.*\})?\s*$')
_ESCAPE = re.compile(r"\\(.)")

# Synonym types that mean "this alias is an abbreviation" (matched case-sensitively by the linker).
ABBREVIATION_TYPES = {"abbreviation", "ABBREVIATION", "acronym"}


@dataclass
class OboTerm:
    id: str
    line: int
    name: str | None = None
    definition: str | None = None
    namespace: str | None = None
    synonyms: list[tuple[str, str, str | None]] = field(default_factory=list)  # (text, scope, type)
    xrefs: list[str] = field(default_factory=list)
    is_a: list[str] = field(default_factory=list)
    is_a_lines: list[int] = field(default_factory=list)
    relationships: list[tuple[str, str, int]] = field(default_factory=list)  # (type, target, line)
    alt_ids: list[str] = field(default_factory=list)
    replaced_by: list[str] = field(default_factory=list)
    obsolete: bool = False


def _unescape(text: str) -> str:
    return _ESCAPE.sub(r"\1", text)


def _strip_comment(value: str) -> str:
    # "HP:0000118 ! Phenotypic abnormality" → "HP:0000118" (a "!" inside quotes is not a comment)
    if '"' not in value and "!" in value:
        value = value.split("!", 1)[0]
    return value.strip()


# the tags the first pass reads (every line is still checked for the 'tag: value' shape)
SKELETON_TAGS = frozenset({"name", "is_a", "alt_id", "replaced_by", "is_obsolete"})


@dataclass(slots=True)
class _Node:
    """What the first pass keeps of a term."""

    line: int
    name: str | None
    obsolete: bool
    is_a: list[str]
    alt_ids: list[str]
    replaced_by: list[str]


def _skeleton(path: Path) -> dict[str, _Node]:
    return {t.id: _Node(t.line, t.name, t.obsolete, t.is_a, t.alt_ids, t.replaced_by)
            for t in iter_terms(path, SKELETON_TAGS)}


def iter_terms(path: Path, tags: frozenset[str] | None = None) -> Iterator[OboTerm]:
    """Yield every ``[Term]`` stanza of an OBO file, with the line it starts on; with ``tags``,
    only those tags are parsed into the term."""
    term: OboTerm | None = None
    in_term = False
    with open_text(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line or line.startswith("!"):
                continue
            if line.startswith("["):
                if term is not None:
                    yield term
                term = None
                in_term = line == "[Term]"
                if not line.endswith("]"):
                    raise DumpParseError(path, lineno, f"malformed stanza header {line!r}")
                continue
            if ":" not in line:
                raise DumpParseError(path, lineno, f"expected 'tag: value', got {line[:80]!r}")
            tag, value = line.split(":", 1)
            value = value.strip()
            if not in_term:
                continue
            if tag == "id":
                if term is not None:
                    raise DumpParseError(path, lineno, "second 'id:' in one [Term] stanza")
                term = OboTerm(id=_strip_comment(value), line=lineno)
                continue
            if term is None:
                raise DumpParseError(path, lineno, f"'{tag}:' before the stanza's 'id:'")
            if tags is None or tag in tags:
                _apply(term, tag, value, path, lineno)
    if term is not None:
        yield term


def _apply(term: OboTerm, tag: str, value: str, path: Path, lineno: int) -> None:
    if tag == "name":
        term.name = value
    elif tag == "def":
        m = _DEF.match(value)
        if not m:
            raise DumpParseError(path, lineno, f"expected def: \"text\" [refs], got {value[:80]!r}")
        term.definition = _unescape(m.group(1))
    elif tag == "synonym":
        m = _SYNONYM.match(value)
        if not m:
            raise DumpParseError(path, lineno, f"expected synonym: \"text\" SCOPE [TYPE] [refs], got {value[:80]!r}")
        term.synonyms.append((_unescape(m.group(1)), m.group(2), m.group(3)))
    elif tag == "namespace":
        term.namespace = value
    elif tag == "xref":
        term.xrefs.append(_strip_comment(value).split(" ", 1)[0])
    elif tag == "is_a":
        term.is_a.append(_strip_comment(value).split(" ", 1)[0])
        term.is_a_lines.append(lineno)
    elif tag == "relationship":
        parts = _strip_comment(value).split()
        if len(parts) < 2:
            raise DumpParseError(path, lineno, f"expected relationship: TYPE TARGET, got {value[:80]!r}")
        term.relationships.append((parts[0], parts[1], lineno))
    elif tag == "alt_id":
        term.alt_ids.append(_strip_comment(value))
    elif tag == "replaced_by":
        term.replaced_by.append(_strip_comment(value))
    elif tag == "is_obsolete":
        term.obsolete = value.lower() == "true"


def _branches(terms: dict[str, _Node]) -> dict[str, set[str]]:
    """For each term, the top-level branches (children of a root) it descends from."""
    roots = {t for t, term in terms.items() if not any(p in terms for p in term.is_a)}
    memo: dict[str, set[str]] = {}

    def visit(tid: str, depth: int = 0) -> set[str]:
        if tid in memo:
            return memo[tid]
        if tid in roots or depth > 200:
            memo[tid] = set()
            return memo[tid]
        out: set[str] = set()
        for parent in terms[tid].is_a:
            if parent not in terms:
                continue
            out |= {tid} if parent in roots else visit(parent, depth + 1)
        memo[tid] = out
        return out

    import sys

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    return {tid: visit(tid) for tid in terms}


def descendants(terms: dict[str, _Node], root: str) -> set[str]:
    children: dict[str, list[str]] = {}
    for tid, term in terms.items():
        for parent in term.is_a:
            children.setdefault(parent, []).append(tid)
    out, stack = {root}, [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in out:
                out.add(child)
                stack.append(child)
    return out


@dataclass
class _Slice:
    """What one read keeps: the live terms (after ``root_term``) and why an edge target is absent."""

    path: Path
    all_terms: dict[str, _Node]
    live: dict[str, _Node]
    unsliced: set[str]
    strict: bool

    def edge_target_kept(self, target: str, line: int, what: str, counts: Counter) -> bool:
        if target in self.live:
            return True
        if target in self.unsliced:  # a live term outside the requested root_term slice: asked for
            counts["skipped_edge_outside_root_term"] += 1
        elif target in self.all_terms:
            drop_row(counts, "edge_to_obsolete_term", self.path, line, f"{what} {target}: the target is obsolete",
                     self.strict)
        else:
            drop_row(counts, "edge_to_unknown_term", self.path, line, f"{what} {target}: no such term in this file",
                     self.strict)
        return False


def read_obo(path: Path, builder: KGBuilder, *, root_term: str | None = None, source: str | None = None,
             strict: bool = False) -> dict[str, int]:
    """Add the terms of one OBO file to ``builder``. ``root_term`` keeps only its descendants.

    An ``is_a`` or ``relationship`` to an obsolete or unknown id is counted as dropped (with
    ``strict``: an error naming the line); one to a live term outside the slice is counted as skipped."""
    path = Path(path)
    source = source or path.name.split(".")[0]
    all_terms = _skeleton(path)
    if not all_terms:
        raise DumpParseError(path, None, "no [Term] stanza with an 'id:' found: is this an OBO file?")
    live = {tid: t for tid, t in all_terms.items() if not t.obsolete}
    unsliced = set(live)
    if root_term is not None:
        if root_term not in live:
            raise DumpParseError(path, None, f"root term {root_term!r} is not a live term of this ontology")
        keep = descendants(live, root_term)
        live = {tid: t for tid, t in live.items() if tid in keep}
        builder.sliced_out.update(unsliced - keep)
        builder.sliced_out.update(alt for tid in unsliced - keep for alt in all_terms[tid].alt_ids)
    counts: Counter = Counter()
    view = _Slice(path, all_terms, live, unsliced, strict)
    branches = _branches(live)
    builder.add_relation("is_a", "is a")
    for term in iter_terms(path):
        node = live.get(term.id)
        if node is None or node.line != term.line:  # obsolete, sliced out, or an earlier stanza of a repeated id
            continue
        if not term.name:
            raise DumpParseError(path, term.line, f"term {term.id} has no 'name:'")
        types = ["ontology_term"] + [f"branch:{live[b].name}" for b in sorted(branches[term.id])]
        builder.add_entity(Entity(term.id, term.name, term.definition, types, source))
        _add_names(builder, term)
        _add_edges(builder, term, view, counts, source)
    redirected = _redirect_obsolete(builder, all_terms, live)
    counts.update({"terms": len(live), "obsolete": sum(t.obsolete for t in all_terms.values()),
                   "obsolete_redirected": redirected})
    log.info("%s: %d live terms, %d obsolete (%d redirected)", path, counts["terms"], counts["obsolete"], redirected)
    return dict(counts)


def _add_edges(builder: KGBuilder, term: OboTerm, view: _Slice, counts: Counter, source: str) -> None:
    for parent, line in zip(term.is_a, term.is_a_lines):
        if view.edge_target_kept(parent, line, f"{term.id} is_a", counts):
            builder.add_triple(term.id, "is_a", parent, source)
    for rel, target, line in term.relationships:
        if view.edge_target_kept(target, line, f"{term.id} relationship {rel}", counts):
            builder.add_relation(rel, rel.replace("_", " "))
            builder.add_triple(term.id, rel, target, source)
    for alt in term.alt_ids:
        builder.add_redirect(alt, term.id)


def _add_names(builder: KGBuilder, term: OboTerm) -> None:
    builder.add_alias(term.name, term.id, "label")
    for text, scope, syn_type in term.synonyms:
        if syn_type == "obsolete_synonym":
            kind = "obsolete_synonym"
        elif syn_type in ABBREVIATION_TYPES:
            kind = "abbreviation"
        elif syn_type:
            kind = syn_type
        else:
            kind = f"synonym_{scope.lower()}"
        builder.add_alias(text, term.id, kind, scope=scope)
    for xref in term.xrefs:
        builder.add_xref(term.id, xref)


def _redirect_obsolete(builder: KGBuilder, all_terms: dict[str, _Node], live: dict[str, _Node]) -> int:
    redirected = 0
    for tid, term in all_terms.items():
        if term.obsolete and term.replaced_by and term.replaced_by[0] in live:
            builder.add_redirect(tid, term.replaced_by[0])
            if term.name:
                builder.add_alias(term.name, term.replaced_by[0], "replaced_by")
            redirected += 1
    return redirected
