"""Tests for ytdnn.data.download against a local HTTP server serving archives built here."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import re
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from ytdnn.data import download as dl
from ytdnn.data.download import (
    DATASETS,
    KUAIRAND_PURE,
    MANIFEST_NAME,
    DatasetSpec,
    DownloadError,
    download_dataset,
    fetch_dataset,
)

ROOT = "KuaiRand-Pure"
# A tiny stand-in for the real tree: same names, a few bytes each, so content can be compared.
FAKE_FILES: dict[str, bytes] = {
    rel: f"user_id,video_id\n{i},{i * 10}\n".encode() for i, rel in enumerate(KUAIRAND_PURE.required_files)
}
FAKE_FILES["load_data_pure.py"] = b"# loader shipped with the dataset\n"


def make_tar(members: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


def fake_tree(files: dict[str, bytes] = FAKE_FILES) -> dict[str, bytes]:
    return {f"{ROOT}/{rel}": payload for rel, payload in files.items()}


def spec_for(archive: bytes, url: str, **overrides: object) -> DatasetSpec:
    """The real KuaiRand-Pure spec, re-pinned to a test archive's checksums and size."""
    fields: dict[str, object] = {
        "url": url,
        "md5": hashlib.md5(archive).hexdigest(),
        "sha256": hashlib.sha256(archive).hexdigest(),
        "size_bytes": len(archive),
    }
    fields.update(overrides)
    return dataclasses.replace(KUAIRAND_PURE, **fields)


class Server:
    """Serves files from a folder on 127.0.0.1; counts requests; /truncated/* lies about length."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                if self.path.startswith("/truncated/"):
                    body = (server.root / self.path.removeprefix("/truncated/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def publish(self, name: str, payload: bytes) -> str:
        (self.root / name).write_bytes(payload)
        return f"{self.base_url}/{name}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "served"
    root.mkdir()
    srv = Server(root)
    thread = threading.Thread(target=srv.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def plant_existing(data_dir: Path) -> dict[str, bytes]:
    """An existing, complete dataset folder with distinctive content."""
    old = {rel: b"old copy of " + rel.encode() for rel in KUAIRAND_PURE.required_files}
    for rel, payload in old.items():
        path = data_dir / ROOT / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
    return old


def assert_tree(data_dir: Path, expected: dict[str, bytes]) -> None:
    for rel, payload in expected.items():
        assert (data_dir / ROOT / rel).read_bytes() == payload, rel


# --- success paths -------------------------------------------------------------------------


def test_download_unpacks_verifies_and_records_manifest(server: Server, data_dir: Path) -> None:
    archive = make_tar(fake_tree())
    spec = spec_for(archive, server.publish("KuaiRand-Pure.tar.gz", archive))

    result = fetch_dataset(spec, data_dir, progress=False)

    assert result == data_dir / ROOT
    assert_tree(data_dir, FAKE_FILES)
    # Nothing else in data_dir: no temp archive, no temp folder.
    assert entries(data_dir) == [ROOT]
    manifest = json.loads((result / MANIFEST_NAME).read_text())
    assert manifest["archive_sha256"] == hashlib.sha256(archive).hexdigest()
    assert manifest["archive_md5"] == hashlib.md5(archive).hexdigest()
    assert manifest["archive_bytes"] == len(archive)
    assert manifest["files"]["data/user_features_pure.csv"] == len(FAKE_FILES["data/user_features_pure.csv"])
    assert manifest["url"] == spec.url


def test_second_call_finds_dataset_and_does_not_download(server: Server, data_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    archive = make_tar(fake_tree())
    spec = spec_for(archive, server.publish("KuaiRand-Pure.tar.gz", archive))
    fetch_dataset(spec, data_dir, progress=False)
    assert len(server.requests) == 1

    assert fetch_dataset(spec, data_dir, progress=True) == data_dir / ROOT
    assert len(server.requests) == 1
    assert "already present" in capsys.readouterr().err


def test_progress_bar_path_downloads_too(server: Server, data_dir: Path) -> None:
    archive = make_tar(fake_tree())
    spec = spec_for(archive, server.publish("KuaiRand-Pure.tar.gz", archive))
    fetch_dataset(spec, data_dir, progress=True)
    assert_tree(data_dir, FAKE_FILES)


def test_force_replaces_existing_dataset(server: Server, data_dir: Path) -> None:
    plant_existing(data_dir)
    archive = make_tar(fake_tree())
    spec = spec_for(archive, server.publish("KuaiRand-Pure.tar.gz", archive))

    fetch_dataset(spec, data_dir, force=True, progress=False)

    assert_tree(data_dir, FAKE_FILES)
    assert entries(data_dir) == [ROOT]  # the moved-aside old copy is gone


def test_zip_archive(server: Server, data_dir: Path) -> None:
    archive = make_zip(fake_tree())
    spec = spec_for(archive, server.publish("KuaiRand-Pure.zip", archive), archive_kind="zip",
                    archive_name="KuaiRand-Pure.zip")
    fetch_dataset(spec, data_dir, progress=False)
    assert_tree(data_dir, FAKE_FILES)


def test_registry_name_and_url_override(server: Server, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_tar(fake_tree())
    url = server.publish("mirror.tar.gz", archive)
    # Registered spec points elsewhere; the url= override must be used and the pins still apply.
    spec = dataclasses.replace(spec_for(archive, url), name="tiny", url="http://127.0.0.1:9/never-used")
    monkeypatch.setitem(DATASETS, "tiny", spec)

    assert download_dataset("Tiny", data_dir, url=url, progress=False) == data_dir / ROOT
    assert server.requests == ["/mirror.tar.gz"]


# --- failures: nothing under the final name, no temp files --------------------------------


@pytest.mark.parametrize("field", ["md5", "sha256"])
def test_checksum_mismatch_names_expected_and_got(server: Server, data_dir: Path, field: str) -> None:
    archive = make_tar(fake_tree())
    spec = spec_for(archive, server.publish("KuaiRand-Pure.tar.gz", archive))
    wrong = "0" * (32 if field == "md5" else 64)
    spec = dataclasses.replace(spec, **{field: wrong})
    got = (hashlib.md5 if field == "md5" else hashlib.sha256)(archive).hexdigest()

    with pytest.raises(DownloadError, match=f"expected {field} {wrong}, got {got}"):
        fetch_dataset(spec, data_dir, progress=False)
    assert entries(data_dir) == []


def test_size_mismatch(server: Server, data_dir: Path) -> None:
    archive = make_tar(fake_tree())
    spec = spec_for(archive, server.publish("KuaiRand-Pure.tar.gz", archive), size_bytes=len(archive) + 1)
    with pytest.raises(DownloadError, match=f"expected {len(archive) + 1} bytes, server announces {len(archive)}"):
        fetch_dataset(spec, data_dir, progress=False)
    assert entries(data_dir) == []


def test_truncated_body(server: Server, data_dir: Path) -> None:
    archive = make_tar(fake_tree())
    server.publish("KuaiRand-Pure.tar.gz", archive)
    spec = spec_for(archive, f"{server.base_url}/truncated/KuaiRand-Pure.tar.gz")
    with pytest.raises(DownloadError, match="cut short"):
        fetch_dataset(spec, data_dir, progress=False)
    assert entries(data_dir) == []


def test_missing_file_is_named(server: Server, data_dir: Path) -> None:
    files = {k: v for k, v in FAKE_FILES.items() if k != "data/video_features_statistic_pure.csv"}
    archive = make_tar(fake_tree(files))
    spec = spec_for(archive, server.publish("KuaiRand-Pure.tar.gz", archive))
    with pytest.raises(DownloadError, match="lacks 1 required file.*data/video_features_statistic_pure.csv"):
        fetch_dataset(spec, data_dir, progress=False)
    assert entries(data_dir) == []


def test_http_404(server: Server, data_dir: Path) -> None:
    spec = dataclasses.replace(KUAIRAND_PURE, url=f"{server.base_url}/nope.tar.gz")
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch_dataset(spec, data_dir, progress=False)
    assert entries(data_dir) == []


def test_unreachable_host(data_dir: Path) -> None:
    # Port 9 (discard) on loopback is closed in any sane test environment: connection refused.
    spec = dataclasses.replace(KUAIRAND_PURE, url="http://127.0.0.1:9/KuaiRand-Pure.tar.gz")
    with pytest.raises(DownloadError, match="could not download"):
        fetch_dataset(spec, data_dir, progress=False, timeout_s=5)
    assert entries(data_dir) == []


def test_corrupt_archive_with_matching_checksum(server: Server, data_dir: Path) -> None:
    archive = b"this is not a tar file at all"
    spec = spec_for(archive, server.publish("KuaiRand-Pure.tar.gz", archive))
    with pytest.raises(DownloadError, match="cannot unpack"):
        fetch_dataset(spec, data_dir, progress=False)
    assert entries(data_dir) == []


def test_existing_dataset_untouched_when_forced_download_fails(server: Server, data_dir: Path) -> None:
    old = plant_existing(data_dir)
    archive = make_tar(fake_tree())
    spec = spec_for(archive, server.publish("KuaiRand-Pure.tar.gz", archive), md5="f" * 32)

    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch_dataset(spec, data_dir, force=True, progress=False)

    assert_tree(data_dir, old)
    assert entries(data_dir) == [ROOT]
    assert sorted(p.name for p in (data_dir / ROOT / "data").iterdir()) == sorted(
        Path(rel).name for rel in KUAIRAND_PURE.required_files
    )


def test_interrupt_during_unpack_leaves_existing_dataset_and_no_temp(
        server: Server, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = plant_existing(data_dir)
    archive = make_tar(fake_tree())
    spec = spec_for(archive, server.publish("KuaiRand-Pure.tar.gz", archive))

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(dl, "_extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch_dataset(spec, data_dir, force=True, progress=False)
    assert_tree(data_dir, old)
    assert entries(data_dir) == [ROOT]


def test_incomplete_existing_folder_without_force_is_an_error(server: Server, data_dir: Path) -> None:
    plant_existing(data_dir)
    (data_dir / ROOT / "data" / "user_features_pure.csv").unlink()
    spec = dataclasses.replace(KUAIRAND_PURE, url=f"{server.base_url}/unused.tar.gz")
    with pytest.raises(DownloadError, match="missing data/user_features_pure.csv.*force=True"):
        fetch_dataset(spec, data_dir, progress=False)
    assert server.requests == []


def test_existing_folder_whose_file_shrank_since_download_is_not_verified(server: Server, data_dir: Path) -> None:
    archive = make_tar(fake_tree())
    spec = spec_for(archive, server.publish("KuaiRand-Pure.tar.gz", archive))
    fetch_dataset(spec, data_dir, progress=False)
    (data_dir / ROOT / "data" / "user_features_pure.csv").write_bytes(b"x")

    with pytest.raises(DownloadError, match="user_features_pure.csv is 1 bytes"):
        fetch_dataset(spec, data_dir, progress=False)


@pytest.mark.parametrize(
    ("members", "symlinks", "bad_member"),
    [
        ({"../evil.txt": b"escaped"}, None, "../evil.txt"),
        ({f"{ROOT}/../../evil.txt": b"escaped"}, None, f"{ROOT}/../../evil.txt"),
        ({"<tmp_path>/evil.txt": b"escaped"}, None, "<tmp_path>/evil.txt"),
        ({}, {f"{ROOT}/data/link": "../../../evil.txt"}, f"{ROOT}/data/link"),
    ],
)
def test_tar_path_traversal_refused(server: Server, data_dir: Path, tmp_path: Path,
                                    members: dict[str, bytes], symlinks: dict[str, str] | None,
                                    bad_member: str) -> None:
    # An absolute name is spelled with this test's own tmp_path so a leak would be visible below.
    members = {name.replace("<tmp_path>", str(tmp_path)): payload for name, payload in members.items()}
    bad_member = bad_member.replace("<tmp_path>", str(tmp_path))
    archive = make_tar({**fake_tree(), **members}, symlinks=symlinks)
    spec = spec_for(archive, server.publish("KuaiRand-Pure.tar.gz", archive))
    with pytest.raises(DownloadError, match="refusing unsafe archive member"):
        try:
            fetch_dataset(spec, data_dir, progress=False)
        except DownloadError as error:
            assert bad_member in str(error)
            raise
    assert entries(data_dir) == []
    assert not (tmp_path / "evil.txt").exists()
    assert not (data_dir / "evil.txt").exists()


@pytest.mark.parametrize("bad_member", ["../evil.txt", f"{ROOT}/../../evil.txt", "C:/evil.txt"])
def test_zip_path_traversal_refused(server: Server, data_dir: Path, tmp_path: Path, bad_member: str) -> None:
    archive = make_zip({**fake_tree(), bad_member: b"escaped"})
    spec = spec_for(archive, server.publish("KuaiRand-Pure.zip", archive), archive_kind="zip",
                    archive_name="KuaiRand-Pure.zip")
    with pytest.raises(DownloadError, match=f"refusing unsafe archive member {re.escape(repr(bad_member))}"):
        fetch_dataset(spec, data_dir, progress=False)
    assert entries(data_dir) == []
    assert not (tmp_path / "evil.txt").exists()


# --- registry and spec validation ----------------------------------------------------------


def test_unknown_dataset_lists_known_ones(data_dir: Path) -> None:
    with pytest.raises(DownloadError, match="unknown dataset 'movielens'; known datasets: kuairand-pure"):
        download_dataset("movielens", data_dir, progress=False)
    assert entries(data_dir) == []


def test_kuairand_pure_registry_entry_matches_the_published_layout() -> None:
    spec = DATASETS["kuairand-pure"]
    assert spec.url == "https://zenodo.org/records/10439422/files/KuaiRand-Pure.tar.gz"
    assert spec.md5 == "0820331067a3784d9691136f772b35a7"
    assert spec.root_dir == "KuaiRand-Pure"
    assert sorted(spec.required_files) == [
        "data/log_random_4_22_to_5_08_pure.csv",
        "data/log_standard_4_08_to_4_21_pure.csv",
        "data/log_standard_4_22_to_5_08_pure.csv",
        "data/user_features_pure.csv",
        "data/video_features_basic_pure.csv",
        "data/video_features_statistic_pure.csv",
    ]


def test_spec_rejects_malformed_checksum_and_root() -> None:
    with pytest.raises(ValueError, match="md5 must be 32 lowercase hex digits"):
        dataclasses.replace(KUAIRAND_PURE, md5="ABC")
    with pytest.raises(ValueError, match="root_dir must be a plain folder name"):
        dataclasses.replace(KUAIRAND_PURE, root_dir="../up")
    with pytest.raises(ValueError, match="required_files is empty"):
        dataclasses.replace(KUAIRAND_PURE, required_files=())
