"""Rows per second of the shard reader (model.data.ShardDataset → DataLoader → collate), with 0 and
2 DataLoader workers, on the knowledge/ shards of a build.

    .venv/bin/python benchmarks/shard_reader.py --shards artifacts/hpo/shards --rows 100000

The tokenizer is the byte-level BPE the demo trains on the shards (adapters/tokenizer when present,
else trained here on 20k shard texts). Each configuration reads the first --rows train rows,
tokenising with offsets and mapping character spans to token entity indices; the reported figure is
the median of --repeats runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from torch.utils.data import DataLoader

from model.data import ShardDataset, collate
from model.tokenizer import load_tokenizer, train_bpe_tokenizer


def rate(shards: Path, tokenizer, workers: int, rows: int, batch_size: int) -> float:
    ds = ShardDataset(shards, "knowledge", tokenizer, max_length=96)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers,
                        collate_fn=lambda b: collate(b, tokenizer.pad_token_id))
    seen = 0
    start = time.perf_counter()
    for batch in loader:
        seen += batch["input_ids"].shape[0]
        if seen >= rows:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=Path, default=Path("artifacts/hpo/shards"))
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tok_dir = args.shards.parent / "adapters" / "tokenizer"
    if tok_dir.exists():
        tokenizer = load_tokenizer(tok_dir)
    else:
        import pyarrow.parquet as pq

        texts = pq.read_table(sorted((args.shards / "knowledge").glob("part-*.parquet"))[0], columns=["text"])
        tokenizer = train_bpe_tokenizer(texts.column("text").to_pylist()[:20_000])
    print("| DataLoader workers | rows/s (median) | runs |\n|---|---|---|")
    for workers in (0, 2):
        runs = [rate(args.shards, tokenizer, workers, args.rows, args.batch_size) for _ in range(args.repeats)]
        print(f"| {workers} | {statistics.median(runs):,.0f} | {', '.join(f'{r:,.0f}' for r in runs)} |")


if __name__ == "__main__":
    main()
