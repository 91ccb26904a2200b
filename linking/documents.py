"""Documents in, linked documents out: what ``kalora link --input`` streams.

Input: a directory (every ``*.txt`` file is one document, its id the file name's stem), a
``.jsonl`` file (one ``{"id": ..., "text": ...}`` object per line) or a text file (one document
per line, its id the line number). Documents that cannot be linked are skipped and counted by
reason (empty, not UTF-8, not text, longer than ``max_chars``), never a crash inside spaCy. Output
rows are JSON (spans with ids, scores, negation; the document's concept list) or PubTator.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import InputError

MAX_CHARS = 1_000_000  # spaCy's default nlp.max_length


@dataclass
class Intake:
    """Reads documents from ``path``; ``skipped`` counts what was left out, by reason."""

    path: Path
    max_chars: int = MAX_CHARS
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def _skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, where)

    def _check(self, doc_id: str, text, where: str) -> tuple[str, str] | None:
        if not isinstance(text, str):
            self._skip("not_text", f"{where}: expected a string, got {type(text).__name__}")
        elif not text.strip():
            self._skip("empty", where)
        elif len(text) > self.max_chars:
            self._skip("too_long", f"{where}: {len(text):,} characters > {self.max_chars:,}")
        else:
            return doc_id, text
        return None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        path = self.path
        if path.is_dir():
            files = sorted(path.glob("*.txt"))
            if not files:
                raise InputError(f"{path}: no *.txt files (one document per file)")
            for f in files:
                try:
                    text = f.read_bytes().decode("utf-8")
                except UnicodeDecodeError as exc:
                    self._skip("not_utf8", f"{f}: byte {exc.start}")
                    continue
                if (row := self._check(f.stem, text, str(f))) is not None:
                    yield row
            return
        if not path.is_file():
            raise InputError(f"{path}: no such file or directory")
        yield from self._lines(path)

    def _lines(self, path: Path) -> Iterator[tuple[str, str]]:
        jsonl = path.suffix == ".jsonl"
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                where = f"{path}:{lineno}"
                try:
                    line = raw.decode("utf-8").rstrip("\n")
                except UnicodeDecodeError as exc:
                    self._skip("not_utf8", f"{where}: byte {exc.start}")
                    continue
                if not jsonl:
                    if (row := self._check(str(lineno), line, where)) is not None:
                        yield row
                    continue
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{where}: not a JSON object ({exc.msg}); expected {{\"id\": ..., \"text\": ...}}") from None
                if not isinstance(obj, dict) or "text" not in obj:
                    raise InputError(f"{where}: expected an object with a \"text\" field (and an optional \"id\")")
                if (row := self._check(str(obj.get("id", lineno)), obj["text"], where)) is not None:
                    yield row


def link_documents(nlp, docs: Iterable[tuple[str, str]], *, batch_size: int = 32,
                   n_process: int = 1) -> Iterator[tuple[str, object]]:
    """(id, linked Doc) pairs, streamed through ``nlp.pipe`` (the pipeline is loaded once by the caller)."""
    for doc, doc_id in nlp.pipe(((text, doc_id) for doc_id, text in docs), as_tuples=True,
                                batch_size=batch_size, n_process=n_process):
        yield doc_id, doc


def as_json(doc_id: str, doc, include_negated: bool = False) -> str:
    from linking.build import doc_links
    from linking.concepts import doc_concepts

    return json.dumps({"id": doc_id, "spans": doc_links(doc),
                       "concepts": doc_concepts(doc, include_negated=include_negated)}, ensure_ascii=False)


def as_pubtator(doc_id: str, doc, include_negated: bool = False) -> str:
    """PubTator: ``id|t|`` and ``id|a|text``, then ``id<TAB>start<TAB>end<TAB>mention<TAB>type<TAB>concept``
    per linked span (negated spans left out unless asked for)."""
    text = doc.text.replace("\n", " ")
    lines = [f"{doc_id}|t|", f"{doc_id}|a|{text}"]
    for e in doc.ents:
        if include_negated or not e._.negated:
            lines.append(f"{doc_id}\t{e.start_char}\t{e.end_char}\t{e.text}\t{e.label_}\t{e.kb_id_}")
    return "\n".join(lines) + "\n"
