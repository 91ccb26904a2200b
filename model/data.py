"""Streaming reader of the shards: a torch IterableDataset that shards work across DataLoader
workers and distributed ranks without duplicating rows, tokenises with any fast tokenizer and maps
character spans to token-level entity indices through the offset mapping."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipelines.artifacts import cached_digest
from pipelines.errors import ArtifactError
from pipelines.integrity import reading

KNOWN_SCHEMA_VERSIONS = {1}


def read_shard_manifest(shards_dir: Path, *, expected_embedding_version: str | None = None,
                        verify_checksums: bool = True) -> dict[str, Any]:
    path = Path(shards_dir) / "manifest.json"
    if not path.exists():
        raise ArtifactError(f"{path} does not exist: build the shards with `kalora shards` first")
    with reading(path, "rebuild the shards with `kalora shards`"):
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    if manifest.get("schema_version") not in KNOWN_SCHEMA_VERSIONS:
        raise ArtifactError(f"{path}: shard schema version {manifest.get('schema_version')!r} is not one this reader "
                            f"knows ({sorted(KNOWN_SCHEMA_VERSIONS)}): upgrade kalora-kg or rebuild the shards")
    if expected_embedding_version is not None and manifest.get("embedding_version") != expected_embedding_version:
        raise ArtifactError(f"{path}: shards refer to embedding {manifest.get('embedding_version')!r} but the model "
                            f"was built with {expected_embedding_version!r}")
    if verify_checksums:
        for name, info in manifest["sets"].items():
            for part in info["parts"]:
                f = Path(shards_dir) / name / part["file"]
                digest = cached_digest(f) if f.exists() else "missing"  # hashed once per run (cache keys)
                if digest != part["sha256"]:
                    raise ArtifactError(f"{f}: checksum mismatch (expected {part['sha256'][:12]}…, got {digest[:12]}…): "
                                        "the shard was modified or truncated; rebuild with `kalora shards`")
    return manifest


def spans_to_token_entities(offsets: list[tuple[int, int]], spans: list[dict]) -> list[int]:
    """Entity index per token: a token takes the entity of the span its characters overlap."""
    out = [0] * len(offsets)
    if not spans:
        return out
    for i, (s, e) in enumerate(offsets):
        if e <= s:
            continue
        for span in spans:
            if s < span["end"] and e > span["start"]:
                out[i] = span["entity_index"]
                break
    return out


@dataclass
class ShardDataset(IterableDataset):
    """Rows of one shard set (``knowledge``, ``joint`` or ``alignment``) as tokenised examples.

    Work units are (part, row group) pairs, dealt round-robin to ``rank × workers + worker``.
    """

    shards_dir: Path
    name: str
    tokenizer: Any
    max_length: int = 128
    split: str | None = "train"
    rank: int = 0
    world_size: int = 1
    text_column: str = "text"
    spans_column: str = "spans"
    with_targets: bool = False       # joint/: append ``target`` (or ``label``) and train on it only

    def __post_init__(self) -> None:
        super().__init__()
        self.manifest = read_shard_manifest(self.shards_dir, verify_checksums=False)
        if self.name not in self.manifest["sets"]:
            raise ArtifactError(f"{self.shards_dir}: no shard set {self.name!r}")
        self.units = []
        for part in self.manifest["sets"][self.name]["parts"]:
            path = Path(self.shards_dir) / self.name / part["file"]
            for rg in range(pq.ParquetFile(path).num_row_groups):
                self.units.append((path, rg))

    def _my_units(self):
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        slot, slots = self.rank * workers + worker, self.world_size * workers
        return self.units[slot::slots]

    def __iter__(self):
        for path, rg in self._my_units():
            extra = ["target", "label"] if self.with_targets else []
            table = pq.ParquetFile(path).read_row_group(rg, columns=[self.text_column, self.spans_column, "split", *extra])
            texts = table.column(self.text_column).to_pylist()
            spans = table.column(self.spans_column).to_pylist()
            splits = table.column("split").to_pylist()
            keep = [i for i, s in enumerate(splits) if self.split is None or s == self.split]
            if not keep:
                continue
            targets = [None] * len(texts)
            if self.with_targets:
                targets = [t if t is not None else lab for t, lab in
                           zip(table.column("target").to_pylist(), table.column("label").to_pylist())]
            full = [texts[i] if targets[i] is None else f"{texts[i]} {targets[i]}" for i in keep]
            enc = self.tokenizer(full, truncation=True, max_length=self.max_length, return_offsets_mapping=True)
            for j, i in enumerate(keep):
                offsets = enc["offset_mapping"][j]
                item = {"input_ids": enc["input_ids"][j], "entity_ids": spans_to_token_entities(offsets, spans[i])}
                if targets[i] is not None:  # loss on the target only: tokens that start after the text
                    item["loss_mask"] = [int(s >= len(texts[i]) and e > s) for s, e in offsets]
                yield item


def collate(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    ents = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        ents[i, :n] = torch.tensor(b["entity_ids"])
        mask[i, :n] = 1
    labels = ids.masked_fill(mask == 0, -100)
    for i, b in enumerate(batch):
        if "loss_mask" in b:
            keep = torch.zeros(width, dtype=torch.bool)
            keep[:len(b["loss_mask"])] = torch.tensor(b["loss_mask"], dtype=torch.bool)
            labels[i] = labels[i].masked_fill(~keep, -100)
    return {"input_ids": ids, "attention_mask": mask, "entity_ids": ents, "labels": labels}


# -- alignment pairs ----------------------------------------------------------------------------
def read_alignment(shards_dir: Path, split: str | None = "train") -> list[dict[str, Any]]:
    """Every preference pair of ``alignment/`` (bounded by the shard builder's max_alignment_pairs
    plus the user files) in file order; ``row`` numbers them for the reference log-prob table."""
    manifest = read_shard_manifest(shards_dir, verify_checksums=False)
    if "alignment" not in manifest["sets"]:
        raise ArtifactError(f"{shards_dir}: no shard set 'alignment'")
    rows: list[dict[str, Any]] = []
    for part in manifest["sets"]["alignment"]["parts"]:
        table = pq.read_table(Path(shards_dir) / "alignment" / part["file"])
        for r in table.to_pylist():
            if split is None or r["split"] == split:
                rows.append({**r, "row": len(rows)})
    return rows


def _shift(spans: list[dict] | None, by: int) -> list[dict]:
    return [{**s, "start": s["start"] + by, "end": s["end"] + by} for s in spans or []]


def encode_pair(row: dict[str, Any], tokenizer, max_length: int) -> dict[str, Any] | None:
    """Token ids, entity ids and response masks of prompt+chosen and prompt+rejected; None when
    truncation leaves no response token on either side."""
    out: dict[str, Any] = {"row": row["row"]}
    for side in ("chosen", "rejected"):
        text = row["prompt"] + row[side]
        spans = list(row["prompt_spans"] or []) + _shift(row[f"{side}_spans"], len(row["prompt"]))
        enc = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
        response = [int(s >= len(row["prompt"]) and e > s) for s, e in enc["offset_mapping"]]
        if not any(response):
            return None
        out[side] = {"input_ids": enc["input_ids"], "entity_ids": spans_to_token_entities(enc["offset_mapping"], spans),
                     "loss_mask": response}
    return out


def collate_pairs(pairs: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen sequences first, then rejected: one forward pass scores both."""
    seqs = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    batch = collate(seqs, pad_id)
    width = batch["input_ids"].shape[1]
    response = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        response[i, :len(s["loss_mask"])] = torch.tensor(s["loss_mask"])
    batch["response_mask"] = response
    batch["row"] = torch.tensor([p["row"] for p in pairs])
    del batch["labels"]
    return batch
