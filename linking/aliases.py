"""The alias table the linker matches against, built from ``kg/aliases.parquet``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.artifacts import ArtifactLayout
from pipelines.errors import InputError
from pipelines.normalize import variant_key

# Match-quality weight of each alias kind (how much an exact hit on it says about the entity).
KIND_WEIGHTS = {"label": 1.0, "synonym_exact": 0.95, "symbol": 0.95, "synonym": 0.9, "layperson": 0.9,
                "plural_form": 0.95, "uk_spelling": 0.95, "abbreviation": 0.8, "replaced_by": 0.7,
                "synonym_related": 0.6, "synonym_narrow": 0.55, "synonym_broad": 0.5}
DEFAULT_KIND_WEIGHT = 0.7
CASE_SENSITIVE_KINDS = {"abbreviation", "symbol"}
SKIPPED_KINDS = {"obsolete_synonym"}


def is_case_sensitive(alias: str, kind: str) -> bool:
    """Abbreviations, gene symbols and short acronyms ("ASD", "CAT") must match with their case."""
    if kind in CASE_SENSITIVE_KINDS:
        return True
    letters = [c for c in alias if c.isalpha()]
    return len(alias) <= 6 and sum(c.isupper() for c in letters) >= 2


@dataclass
class AliasTable:
    """Columnar alias table: parallel arrays, one row per (alias, entity) pair."""

    alias: list[str]
    alias_norm: list[str]
    entity_index: np.ndarray  # int32, index into the entity table (1-based, 0 = padding)
    kind: list[str]
    alias_variant: list[str] | None = None  # variant_key of each alias_norm, computed on first use
    alias_bag: list[str] | None = None  # linking.phrases bag key of each row, computed on first use

    def __len__(self) -> int:
        return len(self.alias)

    def variants(self) -> list[str]:
        """``variant_key`` of every row's normalised alias (computed once; saved with the linker)."""
        if self.alias_variant is None:
            self.alias_variant = [variant_key(n) for n in self.alias_norm]
        return self.alias_variant

    def bags(self) -> list[str]:
        """The word-bag key of every row (:func:`linking.phrases.bag_keys`; computed once, saved with the linker)."""
        if self.alias_bag is None:
            from linking.phrases import bag_keys

            self.alias_bag = bag_keys(self)
        return self.alias_bag

    @classmethod
    def from_layout(cls, layout: ArtifactLayout, min_chars: int = 3) -> "AliasTable":
        aliases = pq.read_table(layout.require(layout.aliases, "ingest"))
        ents = pq.read_table(layout.entities, columns=["entity_id", "index"])
        aliases = aliases.filter(pc.invert(pc.is_in(aliases.column("kind"), value_set=_arr(SKIPPED_KINDS))))
        pos = pc.index_in(aliases.column("entity_id"), value_set=ents.column("entity_id"))
        if pos.null_count:
            raise InputError(f"{layout.aliases}: {pos.null_count} aliases name entities missing from {layout.entities}")
        index = ents.column("index").to_numpy()[pos.to_numpy()]
        table = cls(aliases.column("alias").to_pylist(), aliases.column("alias_norm").to_pylist(),
                    index.astype(np.int32), aliases.column("kind").to_pylist())
        return table.filter_short(min_chars)

    def filter_short(self, min_chars: int) -> "AliasTable":
        """Drop aliases too short to link safely, unless they are case-sensitive acronyms."""
        keep = [i for i, (a, n, k) in enumerate(zip(self.alias, self.alias_norm, self.kind))
                if n and (len(n.replace(" ", "")) >= min_chars or (is_case_sensitive(a, k) and len(n) >= 2))]
        variants = [self.alias_variant[i] for i in keep] if self.alias_variant is not None else None
        bags = [self.alias_bag[i] for i in keep] if self.alias_bag is not None else None
        return AliasTable([self.alias[i] for i in keep], [self.alias_norm[i] for i in keep],
                          self.entity_index[keep], [self.kind[i] for i in keep], variants, bags)


def unique_norms(table: AliasTable):
    """Unique normalised aliases and, for each, the alias-table rows that carry it:
    (norms, rows sorted by norm, start and end of each norm's rows in that order)."""
    norms, inverse = np.unique(np.asarray(table.alias_norm, dtype=object), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(norms)))
    return norms, order, starts, np.append(starts[1:], len(order))


def _arr(values):
    import pyarrow as pa

    return pa.array(sorted(values), pa.string())
