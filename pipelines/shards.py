"""Training shards for the three KALoRA stages (ARCHITECTURE.md, "Shard schemas").

- ``knowledge/``: KG triples verbalised with per-relation templates, as statements and as
  questions with answers (Self-KG style), with character spans of the entities they mention.
- ``joint/``: a domain corpus linked by the saved linker (HPO default: the term definitions).
- ``alignment/``: factuality preference pairs from held-out facts; the rejected answer is a
  plausible wrong entity of the same type found through the FAISS index and checked against every
  known triple; merged with user preference files.

Parts are Parquet with bounded rows and streaming-sized row groups; ``shards/manifest.json`` holds
the schema version, row counts, SHA-256 checksums and the embedding version the shards refer to.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import schema
from pipelines.artifacts import ArtifactLayout, Timer, atomic_write_json, file_sha256, record_stage, staged_dir
from pipelines.config import check_range
from pipelines.errors import ConfigError, DumpParseError, InputError

log = logging.getLogger(__name__)

SHARD_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ShardConfig:
    rows_per_part: int = 100_000
    row_group_size: int = 8_192
    question_fraction: float = 0.3       # share of facts that also get a question/answer row
    max_alignment_pairs: int = 5_000
    alignment_negatives_k: int = 32      # FAISS neighbours searched for a plausible wrong answer
    valid_fraction: float = 0.05         # of corpus documents and preference pairs
    templates: str | None = None         # YAML file: {relation_id: {statement: ..., question: ...}}
    seed: int = 13

    def __post_init__(self) -> None:
        check_range(self, "shards", "rows_per_part", "row_group_size", gt=0)
        check_range(self, "shards", "question_fraction", ge=0, le=1)


# -- templates --------------------------------------------------------------------------------
def default_templates(relation_labels: dict[str, str]) -> dict[str, dict[str, str]]:
    return {rid: {"statement": "{head} " + label + " {tail}.", "question": "Question: {head} " + label + " what? Answer: {tail}."}
            for rid, label in relation_labels.items()}


def load_templates(path: str | Path | None, relation_labels: dict[str, str]) -> dict[str, dict[str, str]]:
    templates = default_templates(relation_labels)
    if path is None:
        return templates
    import yaml

    try:
        user = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read templates ({exc})") from None
    for rid, forms in user.items():
        if rid not in relation_labels:
            raise ConfigError(f"{path}: template for unknown relation {rid!r}; known: {sorted(relation_labels)}")
        for form, text in (forms or {}).items():
            if form not in ("statement", "question"):
                raise ConfigError(f"{path}: [{rid} -> {form}] expected 'statement' or 'question'")
            if "{head}" not in text or "{tail}" not in text:
                raise ConfigError(f"{path}: [{rid} -> {form}] must contain {{head}} and {{tail}}")
            templates[rid][form] = text
    return templates


def render(template: str, head: str, tail: str) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """Fill ``{head}``/``{tail}``; return the text and both character spans."""
    out, spans, pos = [], {}, 0
    rest = template
    while rest:
        cut = [(rest.find(k), k) for k in ("{head}", "{tail}") if rest.find(k) >= 0]
        if not cut:
            out.append(rest)
            break
        at, key = min(cut)
        out.append(rest[:at])
        pos += at
        value = head if key == "{head}" else tail
        spans[key] = (pos, pos + len(value))
        out.append(value)
        pos += len(value)
        rest = rest[at + len(key):]
    return "".join(out), spans["{head}"], spans["{tail}"]


# -- writing ----------------------------------------------------------------------------------
def write_parts(columns: dict[str, list], out_dir: Path, table_schema: pa.Schema, config: ShardConfig) -> list[dict[str, Any]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(columns.values()))) if columns else 0
    parts = []
    for part, start in enumerate(range(0, max(n, 1), config.rows_per_part)):
        chunk = {k: v[start:start + config.rows_per_part] for k, v in columns.items()}
        table = pa.table(chunk, schema=table_schema)
        path = out_dir / f"part-{part:05d}.parquet"
        pq.write_table(table, path, row_group_size=config.row_group_size)
        parts.append({"file": path.name, "rows": table.num_rows, "sha256": file_sha256(path)})
    return parts


def _split_of(key: str, valid_fraction: float) -> str:
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    return "valid" if (h % 10_000) < valid_fraction * 10_000 else "train"


# -- knowledge --------------------------------------------------------------------------------
def knowledge_rows(splits: dict[str, np.ndarray], labels: list[str], rel_ids: list[str],
                   templates: dict[str, dict[str, str]], config: ShardConfig) -> dict[str, list]:
    """``labels[i]`` is the label of entity index i (0: padding); ``rel_ids`` likewise."""
    rng = np.random.default_rng(config.seed)
    cols: dict[str, list] = {k: [] for k in schema.KNOWLEDGE_SHARD.names}
    for split in ("train", "valid"):
        triples = splits[split]
        ask = rng.random(len(triples)) < config.question_fraction
        for (h, r, t), q in zip(triples.tolist(), ask.tolist()):
            forms = templates[rel_ids[r]]
            for form in ("statement", "question") if q else ("statement",):
                text, hs, ts = render(forms[form], labels[h], labels[t])
                cols["text"].append(text)
                cols["spans"].append([{"start": hs[0], "end": hs[1], "entity_index": h},
                                      {"start": ts[0], "end": ts[1], "entity_index": t}])
                cols["head_index"].append(h)
                cols["relation_index"].append(r)
                cols["tail_index"].append(t)
                cols["template"].append(form)
                cols["split"].append(split)
    return cols


# -- joint ------------------------------------------------------------------------------------
def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a bad line raises naming file and line."""
    from pipelines.readers import open_text

    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DumpParseError(path, lineno, f"not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DumpParseError(path, lineno, "expected a JSON object per line")
            yield lineno, obj


def read_corpus(path: Path, text_column: str = "text") -> tuple[list[str], list[str], list[str | None], list[str | None]]:
    """JSONL or Parquet with a text column and optional doc_id/target/label; errors name file and line."""
    from pipelines.readers import check_readable

    check_readable(path)
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        if text_column not in table.column_names:
            raise InputError(f"{path}: no column {text_column!r}; found {table.column_names}")
        rows = list(enumerate(table.to_pylist(), 1))  # row numbers stand in for line numbers
    else:
        rows = list(iter_jsonl(path))
    texts, ids, targets, labels = [], [], [], []
    for i, row in rows:
        text = row.get(text_column)
        if not isinstance(text, str):
            raise DumpParseError(path, i, f"field {text_column!r}: expected a string, got {type(text).__name__}")
        texts.append(text)
        ids.append(str(row.get("doc_id", row.get("id", f"{path.stem}:{i}"))))
        targets.append(None if row.get("target") is None else str(row["target"]))
        labels.append(None if row.get("label") is None else str(row["label"]))
    return texts, ids, targets, labels


def joint_rows(nlp, texts: list[str], doc_ids: list[str], targets: list, labels: list, index_of: dict[str, int],
               config: ShardConfig, progress: bool = False) -> tuple[dict[str, list], int]:
    cols: dict[str, list] = {k: [] for k in schema.JOINT_SHARD.names}
    unlinked = 0
    docs = nlp.pipe(texts, batch_size=256)
    if progress:
        from rich.progress import track

        docs = track(docs, total=len(texts), description="linking corpus")
    for doc, did, target, label in zip(docs, doc_ids, targets, labels):
        spans = [{"start": e.start_char, "end": e.end_char, "entity_index": index_of[e.kb_id_], "score": float(e._.kg_score)}
                 for e in doc.ents if e.kb_id_ in index_of]
        unlinked += not spans
        cols["doc_id"].append(did)
        cols["text"].append(doc.text)
        cols["spans"].append(spans)
        cols["target"].append(target)
        cols["label"].append(label)
        cols["split"].append(_split_of(did, config.valid_fraction))
    return cols, unlinked


# -- alignment --------------------------------------------------------------------------------
def kg_preference_rows(held_out: np.ndarray, all_triples: np.ndarray, labels: list[str], types: list[str],
                       rel_ids: list[str], templates: dict[str, dict[str, str]], entity_index, vectors: np.ndarray,
                       config: ShardConfig) -> tuple[dict[str, list], dict[str, int]]:
    """Prompt from a held-out fact; chosen = the true tail; rejected = the nearest FAISS neighbour of
    the tail with the same type that is not the tail of any known (head, relation, ·) triple."""
    rng = np.random.default_rng(config.seed)
    pick = held_out[rng.permutation(len(held_out))[: config.max_alignment_pairs]]
    known = set(map(tuple, all_triples.tolist()))
    cols: dict[str, list] = {k: [] for k in schema.ALIGNMENT_SHARD.names}
    stats = {"no_negative_found": 0}
    k = min(config.alignment_negatives_k + 1, len(labels) - 1)
    _, neighbours = entity_index.search(vectors[pick[:, 2]], k)
    for (h, r, t), cands in zip(pick.tolist(), neighbours.tolist()):
        wrong = next((c for c in cands if c not in (0, t, h) and types[c] == types[t] and (h, r, c) not in known
                      and labels[c] != labels[t]), None)
        if wrong is None:
            stats["no_negative_found"] += 1
            continue
        template = templates[rel_ids[r]]["question"]
        prompt_template, _, answer_template = template.partition("{tail}")
        if "{head}" not in prompt_template:
            prompt_template, answer_template = "{head} " + rel_ids[r] + " ", ""
        prompt = prompt_template.replace("{head}", labels[h]).rstrip()
        hs = prompt.find(labels[h])
        chosen, rejected = f" {labels[t]}{answer_template}", f" {labels[wrong]}{answer_template}"
        cols["prompt"].append(prompt)
        cols["chosen"].append(chosen)
        cols["rejected"].append(rejected)
        cols["prompt_spans"].append([{"start": hs, "end": hs + len(labels[h]), "entity_index": h}])
        cols["chosen_spans"].append([{"start": 1, "end": 1 + len(labels[t]), "entity_index": t}])
        cols["rejected_spans"].append([{"start": 1, "end": 1 + len(labels[wrong]), "entity_index": wrong}])
        cols["source"].append("kg_factual")
        cols["split"].append(_split_of(f"{h}:{r}:{t}", config.valid_fraction))
    return cols, stats


def read_preferences(path: Path) -> list[dict[str, str]]:
    """User preference JSONL: one {"prompt", "chosen", "rejected"} object per line, validated row by row."""
    rows = []
    for lineno, obj in iter_jsonl(path):
        for field in ("prompt", "chosen", "rejected"):
            if not isinstance(obj.get(field), str) or not obj[field].strip():
                raise DumpParseError(path, lineno, f"field {field!r}: expected a non-empty string")
        if obj["chosen"] == obj["rejected"]:
            raise DumpParseError(path, lineno, "chosen and rejected are identical")
        rows.append(obj)
    return rows


def append_user_preferences(cols: dict[str, list], rows: Iterable[dict[str, str]], config: ShardConfig) -> int:
    n = 0
    for obj in rows:
        for field in ("prompt", "chosen", "rejected"):
            cols[field].append(obj[field])
        for field in ("prompt_spans", "chosen_spans", "rejected_spans"):
            cols[field].append([])
        cols["source"].append("user")
        cols["split"].append(_split_of(obj["prompt"] + obj["chosen"], config.valid_fraction))
        n += 1
    return n


# -- the stage --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardInputs:
    """The upstream artifacts the shards stage reads besides the KG tables, loaded by its caller
    (the flow's shards task, ``kalora shards``): ``pipelines`` sits below ``kg`` and ``linking`` and
    does not import them."""

    splits: dict[str, np.ndarray]   # train/valid/test index triples (kg.splits.read_splits)
    vectors: np.ndarray             # entity vectors, row i = entity index i
    embedding_version: str          # of ``vectors``; the index must have been built from the same
    index: Any                      # the FAISS entity index: ``search(vectors, k)`` and ``meta``
    nlp: Any                        # the saved spaCy pipeline with ``kg_linker``


def _kg_labels(layout: ArtifactLayout, config: ShardConfig) -> dict[str, Any]:
    """Entity labels, first types and relation ids by index (0: padding), templates, id → index."""
    ents = pq.read_table(layout.require(layout.entities, "ingest"), columns=["entity_id", "label", "description", "types"])
    rels = pq.read_table(layout.relations)
    rel_ids = rels.column("relation_id").to_pylist()
    templates = load_templates(config.templates, dict(zip(rel_ids, rels.column("label").to_pylist())))
    templates[""] = {"statement": "", "question": ""}
    return {"ents": ents, "labels": [""] + ents.column("label").to_pylist(),
            "types": [""] + [(t or [""])[0] for t in ents.column("types").to_pylist()],
            "rel_ids": [""] + rel_ids, "templates": templates,
            "index_of": dict(zip(ents.column("entity_id").to_pylist(), range(1, ents.num_rows + 1)))}


def _corpus(ents: pa.Table, corpus: Path | None) -> tuple[list[str], list[str], list, list]:
    if corpus is not None:
        return read_corpus(Path(corpus))
    desc = ents.column("description").to_pylist()  # the KG's own descriptions (HPO: term definitions)
    ids = ents.column("entity_id").to_pylist()
    texts = [d for d in desc if d]
    return texts, [i for i, d in zip(ids, desc) if d], [None] * len(texts), [None] * len(texts)


def build_shards(layout: ArtifactLayout, inputs: ShardInputs, *, corpus: Path | None = None,
                 preferences: list[Path] = (), model: str = "transe", config: ShardConfig = ShardConfig(),
                 progress: bool = False) -> dict[str, Any]:
    if inputs.index.meta.get("embedding_version") != inputs.embedding_version:
        raise InputError(f"{layout.index} was built from embedding {inputs.index.meta.get('embedding_version')} "
                         f"but {layout.embeddings(model)} holds {inputs.embedding_version}: re-run `kalora index`")
    with Timer() as timer:
        kg = _kg_labels(layout, config)
        labels, splits = kg["labels"], inputs.splits
        texts, doc_ids, targets, tlabels = _corpus(kg["ents"], corpus)
        with staged_dir(layout.shards) as tmp:
            know = knowledge_rows(splits, labels, kg["rel_ids"], kg["templates"], config)
            parts = {"knowledge": write_parts(know, tmp / "knowledge", schema.KNOWLEDGE_SHARD, config)}
            joint, unlinked = joint_rows(inputs.nlp, texts, doc_ids, targets, tlabels, kg["index_of"], config, progress)
            parts["joint"] = write_parts(joint, tmp / "joint", schema.JOINT_SHARD, config)
            align, astats = kg_preference_rows(splits["test"], np.concatenate(list(splits.values())), labels,
                                               kg["types"], kg["rel_ids"], kg["templates"], inputs.index,
                                               inputs.vectors, config)
            user = sum(append_user_preferences(align, read_preferences(Path(p)), config) for p in preferences)
            parts["alignment"] = write_parts(align, tmp / "alignment", schema.ALIGNMENT_SHARD, config)
            counts = {"knowledge_rows": len(know["text"]), "joint_docs": len(joint["text"]),
                      "joint_docs_unlinked": unlinked, "joint_spans": sum(len(s) for s in joint["spans"]),
                      "alignment_pairs": len(align["prompt"]), "alignment_user_pairs": user,
                      "alignment_no_negative_found": astats["no_negative_found"]}
            manifest = {"schema_version": SHARD_SCHEMA_VERSION, "embedding_version": inputs.embedding_version,
                        "embedding_model": model, "num_entities": len(labels) - 1,
                        "entity_vectors": str(layout.embeddings(model) / "entities.npy"),
                        "sets": {name: {"parts": p, "rows": sum(x["rows"] for x in p)} for name, p in parts.items()},
                        "counts": counts, "config": asdict(config)}
            atomic_write_json(tmp / "manifest.json", manifest)
    digests = {"corpus": file_sha256(Path(corpus)) if corpus else "kg-descriptions",
               **{str(p): file_sha256(Path(p)) for p in preferences}}
    log.info("shards: %s", counts)
    return record_stage(layout, "shards", inputs=digests, parameters=asdict(config), outputs={
        "shards": str(layout.shards), "embedding_version": inputs.embedding_version}, counts=counts,
        wall_time_s=timer.seconds)
