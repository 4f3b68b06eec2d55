"""Bundle building, the manifest, checksum verification, the `current` pointer."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from ytdnn.serving.bundle import (
    BUNDLE_FORMAT,
    BundleError,
    _install,
    build_bundle,
    load_recommender,
    read_manifest,
    resolve_bundle_dir,
    set_current,
    verify_bundle,
)

EXPECTED_FILES = {
    "ranker/model.json", "ranker/model.safetensors", "ranker/config.json", "ranker/features/ranking_features.json",
    "ranker/onnx/user_part.onnx", "ranker/onnx/candidate_part.onnx", "ranker/onnx/cross_tower.onnx",
    "retrieval/featurizer.json", "retrieval/model.json", "retrieval/model.safetensors", "retrieval/user_tower.onnx",
    "retrieval/index/index.json", "retrieval/index/ids.safetensors", "retrieval/index/vectors.safetensors",
    "tables/users.parquet", "tables/videos.parquet", "tables/log.parquet", "tables/popularity.parquet",
}


@pytest.fixture()
def bundle_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    return copy


def test_manifest_lists_every_file_with_its_sha256(bundle_dir: Path) -> None:
    manifest = read_manifest(bundle_dir)
    assert manifest["format"] == BUNDLE_FORMAT
    assert set(manifest["files"]) == EXPECTED_FILES
    on_disk = {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()}
    assert on_disk == EXPECTED_FILES | {"manifest.json"}
    for relative, entry in manifest["files"].items():
        data = (bundle_dir / relative).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert manifest["version"].startswith(manifest["created_at"][:4])
    assert manifest["configs"]["ranker"]["objective"]["name"] == "wlr-corrected"
    assert manifest["configs"]["retrieval"]["loss"]["kind"] == "full"
    assert manifest["serving"]["ranking_key"] == "odds"
    ranker_model = json.loads((bundle_dir / "ranker" / "model.json").read_text())
    assert manifest["serving"]["watch_scale"] == ranker_model["objective"]["watch_scale"] > 0
    assert manifest["serving"]["fast_features"] is True
    assert manifest["serving"]["retrieval"]["index_kind"] == "exact"
    assert verify_bundle(bundle_dir) == manifest


def test_altered_file_is_refused_with_its_name(bundle_copy: Path) -> None:
    path = bundle_copy / "tables" / "videos.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"tables/videos\.parquet: SHA-256 differs"):
        verify_bundle(bundle_copy)
    with pytest.raises(BundleError, match="refusing to load it"):
        load_recommender(bundle_copy)


def test_missing_or_resized_files_are_named(bundle_copy: Path) -> None:
    (bundle_copy / "ranker" / "onnx" / "user_part.onnx").unlink()
    with open(bundle_copy / "tables" / "log.parquet", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(BundleError) as error:
        verify_bundle(bundle_copy)
    assert "ranker/onnx/user_part.onnx: missing" in str(error.value)
    assert "tables/log.parquet:" in str(error.value) and "bytes, manifest says" in str(error.value)


def test_manifest_of_another_format_is_refused(bundle_copy: Path) -> None:
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["format"] = "something-else"
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format 'something-else'"):
        verify_bundle(bundle_copy)
    (bundle_copy / "manifest.json").write_text("{ not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        verify_bundle(bundle_copy)


def test_current_pointer_names_the_active_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    root.mkdir()
    shutil.copytree(bundle_dir, root / "v1")
    with pytest.raises(BundleError, match="no 'current' pointer"):
        resolve_bundle_dir(root)
    assert set_current(root, "v1") == root / "v1"
    assert (root / "current").read_text() == "v1\n"
    assert resolve_bundle_dir(root) == root / "v1"
    assert resolve_bundle_dir(root / "v1") == root / "v1"
    with pytest.raises(BundleError, match="not a bundle"):
        set_current(root, "v2")
    (root / "current").write_text("v2\n")
    with pytest.raises(BundleError, match="names .*v2, which is not a bundle"):
        resolve_bundle_dir(root)
    with pytest.raises(BundleError, match="no such folder"):
        resolve_bundle_dir(tmp_path / "nowhere")


def test_install_replaces_an_old_bundle_by_renames(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "manifest.json").write_text("new")
    _install(staging, out)
    assert (out / "manifest.json").read_text() == "new"
    assert not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging or trash left behind


def test_build_refuses_bad_run_sets_and_foreign_folders(runs: tuple[Path, Path], tmp_path: Path) -> None:
    ranker, retrieval = runs
    with pytest.raises(BundleError, match="exactly one ranker run"):
        build_bundle([retrieval], tmp_path / "b1")
    with pytest.raises(BundleError, match="exactly one ranker run .* found 2"):
        build_bundle([ranker, ranker], tmp_path / "b2")
    with pytest.raises(BundleError, match="not a run folder"):
        build_bundle([ranker, tmp_path], tmp_path / "b3")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(BundleError, match="exists and is not a bundle"):
        build_bundle([ranker, retrieval], foreign)
    assert (foreign / "cat.jpg").read_bytes() == b"meow"
    assert not list(tmp_path.glob(".*staging*"))
