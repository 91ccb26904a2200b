"""HPO annotation files: ``phenotype.hpoa`` (disease → phenotype) and ``genes_to_phenotype.txt``.

Diseases and genes become entities of their own types; annotations become triples. A ``NOT``
qualifier becomes the relation ``lacks_phenotype`` rather than being dropped or inverted. An
annotation whose HPO term is not in the ontology read before it is dropped and counted (an error
with ``strict``); one outside a ``root_term`` slice is skipped and counted, so slices stay
self-consistent.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import DumpParseError
from pipelines.readers import open_text
from pipelines.tables import Entity, KGBuilder, drop_row

log = logging.getLogger(__name__)

HPOA_COLUMNS = ["database_id", "disease_name", "qualifier", "hpo_id", "reference", "evidence", "onset",
                "frequency", "sex", "modifier", "aspect", "biocuration"]
G2P_COLUMNS = ["ncbi_gene_id", "gene_symbol", "hpo_id", "hpo_name", "frequency", "disease_id"]

# phenotype.hpoa "aspect" column → relation
ASPECT_RELATIONS = {
    "P": ("has_phenotype", "has phenotype"),
    "I": ("has_mode_of_inheritance", "has mode of inheritance"),
    "C": ("has_clinical_course", "has clinical course"),
    "M": ("has_clinical_modifier", "has clinical modifier"),
    "H": ("has_past_medical_history", "has past medical history"),
}


def _header(path: Path) -> tuple[list[str], int]:
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if line.startswith("#") and not line.startswith("#DatabaseID"):
                continue
            return line.lstrip("#").rstrip("\n").split("\t"), lineno
    raise DumpParseError(path, None, "empty file: expected a tab-separated header")


@dataclass(frozen=True)
class AnnotationOptions:
    max_rows: int | None = None  # read at most this many rows per file
    strict: bool = False         # an annotation that would be dropped is an error naming its line


def read_annotations(path: Path, builder: KGBuilder, options: AnnotationOptions = AnnotationOptions()) -> dict[str, int]:
    """Read ``phenotype.hpoa`` or ``genes_to_phenotype.txt`` (detected from the header)."""
    header, header_line = _header(path)
    if header[: len(HPOA_COLUMNS) - 1] == HPOA_COLUMNS[:-1]:
        return _read(path, builder, header_line, _hpoa_row, HPOA_COLUMNS, options)
    if header[:5] == G2P_COLUMNS[:5]:
        return _read(path, builder, header_line, _g2p_row, G2P_COLUMNS, options)
    raise DumpParseError(
        path, header_line,
        f"unknown annotation header {header[:4]}: expected phenotype.hpoa ({', '.join(HPOA_COLUMNS[:4])}, ...) "
        f"or genes_to_phenotype ({', '.join(G2P_COLUMNS[:4])}, ...)",
    )


def _read(path, builder, header_line, handle_row, columns, options: AnnotationOptions) -> dict[str, int]:
    counts: Counter = Counter()
    has_ontology = builder.entity_count > 0
    with open_text(path) as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        for lineno, row in enumerate(reader, 1):
            if lineno <= header_line or not row or row[0].startswith("#"):
                continue
            if len(row) < len(columns) - 1:
                raise DumpParseError(path, lineno, f"expected {len(columns)} tab-separated columns, got {len(row)}")
            rec = dict(zip(columns, row))
            hpo = builder.resolve(rec["hpo_id"])
            if not rec["hpo_id"].startswith("HP:"):
                raise DumpParseError(path, lineno, f"hpo_id: expected an HP:nnnnnnn id, got {rec['hpo_id']!r}")
            if hpo is None:
                if rec["hpo_id"] in builder.sliced_out:
                    counts["skipped_term_outside_root_term"] += 1
                    continue
                if has_ontology:
                    drop_row(counts, "annotation_term_not_in_ontology", path, lineno,
                             f"{rec['hpo_id']} is not a live term of the ontology read before", options.strict)
                    continue
                hpo = rec["hpo_id"]
            handle_row(rec, hpo, builder, counts)
            counts["rows"] += 1
            if options.max_rows is not None and counts["rows"] >= options.max_rows:
                break
    log.info("%s: %s", path, dict(counts))
    return dict(counts)


def _hpoa_row(rec: dict[str, str], hpo: str, builder: KGBuilder, counts: Counter) -> None:
    disease = rec["database_id"]
    builder.add_entity(Entity(disease, rec["disease_name"] or disease, None, ["disease"], disease.split(":")[0]))
    builder.add_alias(rec["disease_name"], disease, "label")
    aspect = rec.get("aspect", "P") or "P"
    rel, label = ASPECT_RELATIONS.get(aspect, ("has_phenotype", "has phenotype"))
    if rec["qualifier"] == "NOT":
        rel, label = "lacks_phenotype", "lacks phenotype"
        counts["negated"] += 1
    builder.add_relation(rel, label)
    builder.add_triple(disease, rel, hpo, "phenotype.hpoa")
    builder.bump_prior(hpo)
    builder.bump_prior(disease)


def _g2p_row(rec: dict[str, str], hpo: str, builder: KGBuilder, counts: Counter) -> None:
    gene = f"NCBIGene:{rec['ncbi_gene_id']}"
    builder.add_entity(Entity(gene, rec["gene_symbol"], None, ["gene"], "NCBIGene"))
    builder.add_alias(rec["gene_symbol"], gene, "symbol")
    builder.add_relation("gene_associated_with_phenotype", "is associated with phenotype")
    builder.add_triple(gene, "gene_associated_with_phenotype", hpo, "genes_to_phenotype")
    builder.bump_prior(hpo)
    builder.bump_prior(gene)
    disease = rec.get("disease_id") or ""
    if disease and builder.has_entity(disease):
        builder.add_relation("gene_associated_with_disease", "is associated with disease")
        builder.add_triple(gene, "gene_associated_with_disease", disease, "genes_to_phenotype")
