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

from pipelines.artifacts import file_sha256
from pipelines.errors import ArtifactError

KNOWN_SCHEMA_VERSIONS = {1}


def read_shard_manifest(shards_dir: Path, *, expected_embedding_version: str | None = None,
                        verify_checksums: bool = True) -> dict[str, Any]:
    path = Path(shards_dir) / "manifest.json"
    if not path.exists():
        raise ArtifactError(f"{path} does not exist: build the shards with `kalora shards` first")
    manifest = json.loads(path.read_text())
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
                digest = file_sha256(f) if f.exists() else "missing"
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
            table = pq.ParquetFile(path).read_row_group(rg, columns=[self.text_column, self.spans_column, "split"])
            texts = table.column(self.text_column).to_pylist()
            spans = table.column(self.spans_column).to_pylist()
            splits = table.column("split").to_pylist()
            keep = [i for i, s in enumerate(splits) if self.split is None or s == self.split]
            if not keep:
                continue
            enc = self.tokenizer([texts[i] for i in keep], truncation=True, max_length=self.max_length,
                                 return_offsets_mapping=True)
            for j, i in enumerate(keep):
                yield {"input_ids": enc["input_ids"][j],
                       "entity_ids": spans_to_token_entities(enc["offset_mapping"][j], spans[i])}


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
    return {"input_ids": ids, "attention_mask": mask, "entity_ids": ents, "labels": labels}
