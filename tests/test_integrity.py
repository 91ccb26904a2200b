"""Integrity end to end: every stage records the digests of what it publishes, every reader checks
them first (a cached stage too), ``kalora verify`` checks a whole build; a changed file is one
error naming the file, the expected and the found digest, and what to rerun."""

import json
import re
import shutil
from pathlib import Path

import pytest

from pipelines.artifacts import ArtifactLayout, file_sha256, read_manifest, record_stage, stamp_cache
from pipelines.errors import ArtifactError
from tests.conftest import run_cli


@pytest.fixture
def build(tmp_path, tiny_build) -> ArtifactLayout:
    """A private copy of the session's tiny build (ingest, embed, index, linker, shards), to damage."""
    shutil.copytree(tiny_build.base, tmp_path / "tiny")
    return ArtifactLayout(tmp_path, "tiny")


def _flip(path: Path, n: int = 16) -> None:
    """Invert ``n`` bytes in the middle of ``path`` (same size, same inode)."""
    with open(path, "r+b") as fh:
        fh.seek(max(0, path.stat().st_size // 2 - n // 2))
        block = fh.read(n)
        fh.seek(-len(block), 1)
        fh.write(bytes(b ^ 0xFF for b in block))


def _recorded(layout: ArtifactLayout, path: Path) -> str:
    rel = str(path.relative_to(layout.base))
    for entry in read_manifest(layout)["stages"].values():
        if rel in entry.get("integrity", {}).get("files", {}):
            return entry["integrity"]["files"][rel]
    raise AssertionError(f"{rel} is recorded by no stage")


def _assert_names_both_digests(err, layout: ArtifactLayout, path: Path, expected: str, rerun: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: sha256 {file_sha256(path)} does not match {expected}"), message
    assert rerun in message, message


def _verify_cli(layout: ArtifactLayout, capsys) -> tuple[int, str, str]:
    from flows.cli import main

    capsys.readouterr()
    rc = main(["verify", "--name", layout.name, "--root", str(layout.root)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_integrity_every_stage_records_what_it_published(build):
    stages = read_manifest(build)["stages"]
    for stage in ("ingest", "splits", "embed:transe", "index", "linker", "shards"):
        assert stages[stage]["integrity"]["algorithm"] == "sha256", stage
    files = {stage: set(entry.get("integrity", {}).get("files", {})) for stage, entry in stages.items()}
    on_disk = {str(p.relative_to(build.base)) for p in build.base.rglob("*")
               if p.is_file() and not any(part.startswith(".") for part in p.relative_to(build.base).parts)}
    assert set().union(*files.values()) == on_disk - {"manifest.json"}
    assert {f for f in files["ingest"] if f.startswith("kg/triples/")} and "kg/entities.parquet" in files["ingest"]
    assert files["splits"] == {"kg/splits/train.parquet", "kg/splits/valid.parquet", "kg/splits/test.parquet",
                               "kg/splits/split.json", "kg/stats.json"}
    assert {"embeddings/transe/entities.npy", "embeddings/transe/model.safetensors"} <= files["embed:transe"]
    assert {"linker/kg_linker/checksums.json", "linker/vocab/strings.json"} <= files["linker"]
    for rel, digest in stages["index"]["integrity"]["files"].items():
        assert file_sha256(build.base / rel) == digest


def test_integrity_untouched_build_verifies_clean(build, capsys):
    rc, out, err = _verify_cli(build, capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["stage", "files", "ok", "mismatch", "missing"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(rows) == {"ingest", "splits", "embed:transe", "index", "linker", "shards"}
    for stage, (files, ok, mismatch, missing) in rows.items():
        assert int(files) > 0 and files == ok and mismatch == missing == "0", (stage, rows[stage])


@pytest.mark.parametrize("rel", ["embeddings/transe/entities.npy", "embeddings/transe/model.safetensors"])
def test_integrity_changed_embeddings_stop_the_index_stage(build, capsys, rel):
    from linking.index import build_entity_index

    path = build.base / rel
    expected = _recorded(build, path)
    _flip(path)
    with pytest.raises(ArtifactError) as err:
        build_entity_index(build, "transe")
    _assert_names_both_digests(err, build, path, expected, "--force embed")
    with pytest.raises(ArtifactError, match=re.escape(str(path))):
        from linking.build import build_linker

        build_linker(build, "transe")  # the linker stage reads the vectors too
    rc, out, err_text = _verify_cli(build, capsys)
    assert rc == 2 and len(err_text.strip().splitlines()) == 1 and str(path) in err_text
    assert re.search(r"^embed:transe\s+(\d+)\s+\d+\s+1\s+0$", out, re.M), out


def test_integrity_changed_index_stops_its_readers(build, capsys):
    from linking.index import load_entity_index

    path = build.index / "entities.faiss"
    expected = _recorded(build, path)
    _flip(path)
    with pytest.raises(ArtifactError) as err:
        load_entity_index(build)  # what the shards stage loads
    _assert_names_both_digests(err, build, path, expected, "--force index")
    assert _verify_cli(build, capsys)[0] == 2


def test_integrity_changed_triples_are_noticed_when_splits_are_cached(build, capsys, tiny_sources):
    from kg.config import EmbeddingConfig
    from kg.embeddings import train_embeddings

    path = sorted(build.triples.glob("part-*.parquet"))[0]
    expected = _recorded(build, path)
    _flip(path)
    with pytest.raises(ArtifactError) as err:  # kg/splits/split.json matches: the split is reused
        train_embeddings(build, EmbeddingConfig(model="transe", training_loop="slcwa", embedding_dim=8, num_epochs=1),
                         progress=False)
    _assert_names_both_digests(err, build, path, expected, "--force ingest")
    rc, _, err_text = _verify_cli(build, capsys)
    assert rc == 2 and str(path) in err_text
    from pipelines.ingest import ingest

    with pytest.raises(ArtifactError, match=re.escape(f"{path}: sha256 ")):  # ingest's unchanged-input skip
        ingest(tiny_sources, None, build)


def test_integrity_a_cached_stage_is_verified_before_it_is_skipped(build):
    from flows.config import BuildConfig
    from flows.stages import SPECS, lookup, running_marker
    from pipelines.artifacts import cached_entry

    stamp_cache(build, "ingest", "key-1", {})
    assert cached_entry(build, "ingest", "key-1", [build.triples]) is not None
    path = sorted(build.triples.glob("part-*.parquet"))[0]
    expected = _recorded(build, path)
    _flip(path)
    with pytest.raises(ArtifactError) as err:
        cached_entry(build, "ingest", "key-1", [build.entities, build.triples])
    _assert_names_both_digests(err, build, path, expected, "--force ingest")

    # a stage that was running when its run died: the old entry is not trusted, the stage reruns
    cfg = BuildConfig(name=build.name, root=str(build.root))
    stamp_cache(build, "index", "key-2", {})
    assert lookup(SPECS["index"], cfg, build, "key-2") is not None
    running_marker(build, "index").touch()
    _flip(build.index / "entities.faiss")
    assert lookup(SPECS["index"], cfg, build, "key-2") is None
    running_marker(build, "index").unlink()
    with pytest.raises(ArtifactError, match="entities.faiss: sha256"):
        lookup(SPECS["index"], cfg, build, "key-2")


def test_integrity_spacy_load_refuses_any_changed_linker_file(build, tmp_path):
    import spacy

    recorded = json.loads((build.linker / "kg_linker" / "checksums.json").read_text())["sha256"]
    assert {"vectors.npy", "tfidf_idf.npy"} <= set(recorded)
    assert set(recorded) == {p.name for p in (build.linker / "kg_linker").iterdir()} - {"checksums.json"}
    for i, name in enumerate(["vectors.npy", "tfidf_idf.npy", "aliases.parquet", "kb.json"]):  # in copies
        copy = shutil.copytree(build.linker, tmp_path / f"copy{i}" / "tiny" / "linker")
        path = copy / "kg_linker" / name
        _flip(path)
        with pytest.raises(ArtifactError) as err:
            spacy.load(copy)
        message = str(err.value)
        assert message.startswith(f"{path}: sha256 {file_sha256(path)} does not match {recorded[name]}"), message
        assert "rebuild the linker: kalora linker --name tiny" in message
    spacy.load(build.linker)


def test_integrity_spacy_load_refuses_a_changed_name_encoder(tmp_path):
    """The tiny KB has too few multi-name entities for a name encoder; this one trains one."""
    import spacy

    from tests.test_linking_load import _saved

    path, _, _ = _saved(tmp_path)
    weights = path / "kg_linker" / "name_encoder.safetensors"
    expected = json.loads((path / "kg_linker" / "checksums.json").read_text())["sha256"][weights.name]
    _flip(weights)
    with pytest.raises(ArtifactError, match=rf"^{re.escape(str(weights))}: sha256 {file_sha256(weights)} does not "
                                            rf"match {expected} .*: rebuild the linker"):
        spacy.load(path)


def test_integrity_linker_loader_names_a_changed_or_corrupt_vocab_file(build):
    from linking.build import load_linker

    strings = build.linker / "vocab" / "strings.json"
    expected = _recorded(build, strings)
    strings.write_bytes(b"\xff\xfe not json" + strings.read_bytes()[11:])
    with pytest.raises(ArtifactError) as err:
        load_linker(build)
    assert str(err.value).startswith(f"{strings}: sha256 {file_sha256(strings)} does not match {expected}")

    manifest = read_manifest(build)  # a build recorded before digests were: still one error, naming the pipeline
    del manifest["stages"]["linker"]["integrity"]
    build.manifest.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=rf"^{re.escape(str(build.linker))}: not a loadable spaCy pipeline "):
        load_linker(build)


def test_integrity_corrupt_tables_and_manifest_are_one_named_error(build, capsys):
    from kg.ids import load_entity_map

    build.entities.write_bytes(build.entities.read_bytes()[:100] + b"\x00" * 64)  # a truncated Parquet file
    with pytest.raises(ArtifactError, match=rf"^{re.escape(str(build.entities))}: sha256 "):
        load_entity_map(build)
    manifest = read_manifest(build)
    del manifest["stages"]["ingest"]["integrity"]
    build.manifest.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=rf"^{re.escape(str(build.entities))}: unreadable \("):
        load_entity_map(build)
    rc, out, err = _verify_cli(build, capsys)
    assert rc == 2 and "the ingest stage recorded no digests" in out

    build.manifest.write_bytes(b"\xff" + build.manifest.read_bytes())
    with pytest.raises(ArtifactError, match=r"manifest\.json: not UTF-8 text \(byte 0\)"):
        read_manifest(build)
    result = run_cli("verify", "--name", build.name, "--root", str(build.root))  # a real process: no traceback
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"kalora: error: {build.manifest}: not UTF-8 text (byte 0): the manifest is corrupt; restore it or rebuild the KG"]


def test_integrity_adapters_are_verified_before_a_later_stage_loads_them(build):
    import torch
    from safetensors.torch import save_file

    from model.trainer import train_stage2

    stage1 = build.adapters / "stage1"
    stage1.mkdir(parents=True)
    save_file({"injection.proj.weight": torch.randn(8, 8)}, str(stage1 / "knowledge.safetensors"))
    (stage1 / "config.json").write_text(json.dumps({"model": {}}))
    record_stage(build, "train:stage1")
    path = stage1 / "knowledge.safetensors"
    expected = _recorded(build, path)
    _flip(path)
    with pytest.raises(ArtifactError) as err:
        train_stage2(build)
    _assert_names_both_digests(err, build, path, expected, "--force train")
