"""The README's examples are the code's contract with users: keep them parseable."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_readme_build_config_example_is_valid():
    from flows.config import BuildConfig

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"A build config for `kalora run`.*?```yaml\n(.*?)```", readme, re.S).group(1)
    cfg = BuildConfig.from_dict(yaml.safe_load(block), "README")
    assert cfg.embed.model == "complex" and cfg.embed.regularizer_weight == 0.1
    assert cfg.ingest.root_term == "HP:0000478"
    assert cfg.embed.split.valid_fraction == 0.05 and cfg.embed.split.k_core == 0


def test_readme_lightning_example_is_a_valid_embedding_config():
    from kg.config import EmbeddingConfig

    page = (ROOT / "docs" / "embeddings.md").read_text()
    block = re.search(r"# embed\.yaml.*?\n(.*?)```", page, re.S).group(1)
    cfg = EmbeddingConfig.from_dict(yaml.safe_load(block))
    assert cfg.engine == "lightning" and cfg.devices == 4 and cfg.num_nodes == 2


def test_readme_links_to_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    links = set(re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)(?:#[\w-]+)?\)", readme))
    assert {"docs/ingest.md", "docs/embeddings.md", "docs/linking.md", "docs/flows.md"} <= links
    for link in links:
        assert (ROOT / link).is_file(), link
