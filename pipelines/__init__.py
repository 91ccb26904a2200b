"""Dump readers, the canonical KG schema, Parquet writing and shard building (no torch here)."""
