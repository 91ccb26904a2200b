"""Wikidata-shaped dumps of any size, for load tests and benchmarks of the ingestion path.

Real Wikidata items (by default the 100-item sample in ``tests/data``, CC0) are the templates:
entity ``Q<i>`` copies a random template's structure — a random subset of its labels,
descriptions and aliases languages, of its claim groups (with their qualifiers and references)
and of its sitelinks — and points its entity-valued claims at random ids of the generated dump,
about ``outside`` of them beyond it (such triples are dropped at ingestion, as claims to entities
outside a Wikidata subset are). Every ``property_every``-th entity is a property ``P<i>``.
The output is a ``latest-all.json``-shaped array, one entity per line, deterministic for a seed.
"""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path

import numpy as np
import orjson

from pipelines.readers import open_binary


def load_templates(path: Path) -> list[dict]:
    out = []
    with open_binary(path) as fh:
        for raw in fh:
            line = raw.strip().rstrip(b",")
            if line and line not in (b"[", b"]"):
                out.append(orjson.loads(line))
    return out


def _subset(rng: np.random.Generator, d: dict, k: int, keep: tuple[str, ...] = ("en",)) -> dict:
    keys = list(d)
    if len(keys) <= k:
        return dict(d)
    chosen = set(rng.choice(len(keys), size=k, replace=False).tolist())
    return {key: d[key] for i, key in enumerate(keys) if i in chosen or key in keep}


def _entity_value(num: int) -> dict:
    return {"type": "wikibase-entityid", "value": {"entity-type": "item", "numeric-id": num, "id": f"Q{num}"}}


def _remap_claim(claim: dict, rng: np.random.Generator, high: int) -> dict:
    snak = claim.get("mainsnak") or {}
    dv = snak.get("datavalue") or {}
    if dv.get("type") != "wikibase-entityid":
        return claim
    out = dict(claim)
    out["mainsnak"] = {**snak, "datavalue": _entity_value(int(rng.integers(1, high)))}
    return out


def generate_entities(n: int, templates: list[dict], seed: int = 0, mean_claim_groups: float = 12.0,
                      outside: float = 0.1, property_every: int = 200):
    """Yield ``n`` entity dicts (see the module docstring)."""
    rng = np.random.default_rng(seed)
    high = int(n * (1 + outside)) + 1
    for i in range(1, n + 1):
        t = templates[int(rng.integers(len(templates)))]
        is_property = i % property_every == 0
        eid = f"P{i}" if is_property else f"Q{i}"
        labels = _subset(rng, t.get("labels") or {}, int(rng.integers(3, 25)))
        if "en" in labels:
            labels["en"] = {"language": "en", "value": f"{labels['en']['value']} {i}"}
        claims = t.get("claims") or {}
        groups = list(claims)
        k = min(len(groups), max(1, int(rng.poisson(mean_claim_groups))))
        picked = sorted(rng.choice(len(groups), size=k, replace=False).tolist()) if groups else []
        doc = {
            "type": "property" if is_property else "item",
            "id": eid,
            "labels": labels,
            "descriptions": _subset(rng, t.get("descriptions") or {}, int(rng.integers(2, 15))),
            "aliases": _subset(rng, t.get("aliases") or {}, int(rng.integers(1, 6))),
            "claims": {groups[g]: [_remap_claim(c, rng, high) for c in claims[groups[g]][:8]] for g in picked},
            "sitelinks": {} if is_property else _subset(rng, t.get("sitelinks") or {}, int(rng.integers(0, 40)), keep=()),
        }
        if is_property:
            doc["datatype"] = "wikibase-item"
        yield doc


def write_dump(path: Path, n: int, templates: list[dict], seed: int = 0, **kwargs) -> int:
    """Write a dump of ``n`` entities (``.gz``/``.bz2`` by suffix); return its uncompressed size in bytes."""
    opener = gzip.open if path.suffix == ".gz" else bz2.open if path.suffix == ".bz2" else open
    size = 0
    with opener(path, "wb") as fh:
        fh.write(b"[\n")
        size += 2
        first = True
        for doc in generate_entities(n, templates, seed, **kwargs):
            line = (b"" if first else b",\n") + orjson.dumps(doc)
            fh.write(line)
            size += len(line)
            first = False
        fh.write(b"\n]\n")
        size += 3
    return size
