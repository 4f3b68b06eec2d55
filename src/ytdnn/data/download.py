"""Download, verify and unpack public datasets (KuaiRand-Pure) into a data folder.

``download_dataset("kuairand-pure", data_dir)`` leaves ``data_dir/KuaiRand-Pure/data/*.csv``, the
dataset's own layout, and returns ``data_dir/KuaiRand-Pure``.

Where the KuaiRand-Pure archive comes from
------------------------------------------
KuaiRand (Chongming Gao et al., "KuaiRand: An Unbiased Sequential Recommendation Dataset with
Randomly Exposed Videos", CIKM 2022; https://kuairand.com, https://github.com/chongminggao/KuaiRand;
licence CC BY-SA 4.0) is published as Zenodo record 10439422. The archive used here is
``https://zenodo.org/records/10439422/files/KuaiRand-Pure.tar.gz``. (Older copies of the
repository README point at a private NAS, ``chongming.myds.me``, plus Google Drive / USTC Drive
folders, and one revision says the data is sent by e-mail only; the Zenodo record is the public
location the project site now links to.) Pass ``url=`` to fetch the same archive from a mirror:
the pinned checks below still apply.

What is verified, and how strongly
----------------------------------
* **MD5** of the archive against ``0820331067a3784d9691136f772b35a7``, the checksum Zenodo
  publishes for the file. No SHA-256 is published, so none is pinned. MD5 detects corruption and
  truncation reliably but is not collision resistant: it does not prove the bytes are the
  authors' against a deliberate attacker who controls the server or a mirror. The SHA-256 of what
  was downloaded is computed anyway and recorded in ``download_manifest.json`` so later copies
  can be compared against it.
* **Size**: 47,432,272 bytes (Zenodo lists 47.4 MB; the README says "compressed size 45.2MB",
  i.e. MiB). Checked against ``Content-Length`` before the body is read, and against the bytes
  actually received.
* **File list**: the six CSV files the README lists under ``KuaiRand-Pure/data/`` must all be in
  the archive (the README also lists ``load_data_pure.py``; it is kept if present but not
  required). Their contents are not checked beyond the archive checksum.

How it stays safe
-----------------
The body is streamed to a temp folder inside ``data_dir`` (hashing as it goes), verified, then
unpacked in that same temp folder with ``tarfile``'s ``"data"`` filter (refuses absolute paths,
``..``, links leaving the folder, device files) or, for zip, an explicit member-name check. Only
once the file list checks out is the dataset folder moved under its final name with
``os.replace``. Any failure or interrupt removes the temp folder and leaves an existing dataset
folder untouched; nothing half-written ever appears under the final name. (Only a hard kill can
leave a hidden ``.<name>.download-*`` folder behind in ``data_dir``; it is safe to delete.) With
``force=True`` an existing folder is swapped out by two renames, so for an instant between them
the final name is absent, never partial.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ytdnn.utils.io import atomic_write_json, read_json

__all__ = [
    "DATASETS",
    "KUAIRAND_PURE",
    "MANIFEST_NAME",
    "DatasetSpec",
    "DownloadError",
    "download_dataset",
    "fetch_dataset",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "download_manifest.json"
_CHUNK_BYTES = 1 << 20
_USER_AGENT = "ytdnn-dataset-download/0.1"


class DownloadError(ValueError):
    """A dataset could not be downloaded, verified or unpacked; the message says which and why."""


@dataclass(frozen=True)
class DatasetSpec:
    """What to fetch and what the result must look like.

    ``root_dir`` is the single top-level folder inside the archive; it becomes
    ``data_dir/root_dir``. ``required_files`` are POSIX paths relative to ``root_dir``. Checksums
    are lowercase hex; ``None`` means "not published, not checked".
    """

    name: str
    url: str
    archive_name: str
    root_dir: str
    required_files: tuple[str, ...]
    md5: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    archive_kind: Literal["tar", "zip"] = "tar"
    citation: str = ""

    def __post_init__(self) -> None:
        for field_name, digest, length in (("md5", self.md5, 32), ("sha256", self.sha256, 64)):
            if digest is not None and (len(digest) != length or digest.strip("0123456789abcdef")):
                raise ValueError(
                    f"DatasetSpec {self.name!r}: {field_name} must be {length} lowercase hex digits, got {digest!r}"
                )
        if not self.required_files:
            raise ValueError(f"DatasetSpec {self.name!r}: required_files is empty; nothing could be verified")
        if PurePosixPath(self.root_dir).name != self.root_dir or self.root_dir in {"", ".", ".."}:
            raise ValueError(f"DatasetSpec {self.name!r}: root_dir must be a plain folder name, got {self.root_dir!r}")


KUAIRAND_PURE = DatasetSpec(
    name="kuairand-pure",
    url="https://zenodo.org/records/10439422/files/KuaiRand-Pure.tar.gz",
    archive_name="KuaiRand-Pure.tar.gz",
    root_dir="KuaiRand-Pure",
    required_files=(
        "data/log_random_4_22_to_5_08_pure.csv",
        "data/log_standard_4_08_to_4_21_pure.csv",
        "data/log_standard_4_22_to_5_08_pure.csv",
        "data/user_features_pure.csv",
        "data/video_features_basic_pure.csv",
        "data/video_features_statistic_pure.csv",
    ),
    md5="0820331067a3784d9691136f772b35a7",
    sha256=None,  # not published by the authors or Zenodo
    size_bytes=47_432_272,
    archive_kind="tar",
    citation=(
        "Chongming Gao et al., KuaiRand: An Unbiased Sequential Recommendation Dataset with Randomly "
        "Exposed Videos, CIKM 2022. Licence CC BY-SA 4.0."
    ),
)

DATASETS: dict[str, DatasetSpec] = {KUAIRAND_PURE.name: KUAIRAND_PURE}


def download_dataset(name: str, data_dir: Path, *, url: str | None = None, force: bool = False,
                     progress: bool = True) -> Path:
    """Fetch the registered dataset ``name`` into ``data_dir`` and return its folder.

    ``url`` overrides the download address (a mirror); the registered checksum, size and file
    list are still enforced. If ``data_dir/<root>`` already holds the dataset and ``force`` is
    false, nothing is downloaded. Raises :class:`DownloadError` for an unknown name and for every
    download/verification failure (see :func:`fetch_dataset`).
    """
    spec = DATASETS.get(name.strip().lower())
    if spec is None:
        known = ", ".join(sorted(DATASETS))
        raise DownloadError(f"unknown dataset {name!r}; known datasets: {known}")
    return fetch_dataset(spec, data_dir, url=url, force=force, progress=progress)


def fetch_dataset(spec: DatasetSpec, data_dir: Path, *, url: str | None = None, force: bool = False,
                  progress: bool = True, timeout_s: float = 60.0) -> Path:
    """Download ``spec``'s archive, verify it, unpack it and move it to ``data_dir/spec.root_dir``.

    Steps: stream to a temp folder in ``data_dir`` computing MD5 and SHA-256 on the fly; check the
    size and every pinned checksum; unpack (path-traversal refused); check ``required_files``;
    write ``download_manifest.json``; ``os.replace`` the folder into place.

    Existing destination, ``force=False``: if every required file is there (and, when a manifest
    from an earlier download exists, sizes and archive checksum agree with it) it is reported and
    returned untouched; otherwise :class:`DownloadError` names what is wrong and suggests
    ``force=True``. With ``force=True`` the folder is replaced only after the new copy verified.

    Raises :class:`DownloadError` (a ``ValueError``) on HTTP/network errors, truncated bodies,
    size or checksum mismatch, unreadable archives, unsafe members or missing files.
    """
    data_dir = Path(data_dir)
    source_url = url or spec.url
    destination = data_dir / spec.root_dir
    console = Console(stderr=True) if progress else None

    if destination.exists() or destination.is_symlink():
        problems = _existing_dataset_problems(spec, destination)
        if not force:
            if problems:
                raise DownloadError(
                    f"{destination} exists but is not a complete {spec.name} dataset: {'; '.join(problems)}. "
                    "Pass force=True to download it again and replace the folder."
                )
            how = ("file list and sizes match its download manifest" if (destination / MANIFEST_NAME).is_file()
                   else "all required files found; it has no download manifest, so contents are unchecked")
            _say(console, f"{spec.name} is already present at {destination} ({how}); nothing to do.")
            return destination

    data_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f".{spec.root_dir}.download-", dir=data_dir))
    try:
        archive_path = work_dir / spec.archive_name
        md5_hex, sha256_hex, n_bytes = _stream_to_file(source_url, archive_path, spec, console, timeout_s)
        _verify_archive(spec, source_url, md5_hex, sha256_hex, n_bytes)

        extract_dir = work_dir / "extract"
        extract_dir.mkdir()
        _extract(archive_path, extract_dir, spec.archive_kind)
        archive_path.unlink()  # free the space before the dataset is moved in

        new_root = extract_dir / spec.root_dir
        missing = [rel for rel in spec.required_files if not (new_root / rel).is_file()]
        if missing:
            found = sorted(p.relative_to(extract_dir).as_posix() for p in extract_dir.rglob("*") if p.is_file())
            raise DownloadError(
                f"archive from {source_url} lacks {len(missing)} required file(s) under {spec.root_dir}/: "
                f"{', '.join(missing)}. Files it holds: {', '.join(found[:20]) or 'none'}"
                + (" ..." if len(found) > 20 else "")
            )

        atomic_write_json(new_root / MANIFEST_NAME, {
            "dataset": spec.name,
            "url": source_url,
            "archive_name": spec.archive_name,
            "archive_bytes": n_bytes,
            "archive_md5": md5_hex,
            "archive_sha256": sha256_hex,
            "verified": {"md5": spec.md5 is not None, "sha256": spec.sha256 is not None,
                         "size": spec.size_bytes is not None, "required_files": True},
            "files": {rel: (new_root / rel).stat().st_size for rel in spec.required_files},
            "downloaded_at_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "citation": spec.citation,
        })
        _move_into_place(new_root, destination, data_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    _say(console, f"{spec.name} downloaded and verified into {destination}")
    if spec.citation:
        _say(console, f"Please cite: {spec.citation}")
    return destination


def _say(console: Console | None, message: str) -> None:
    logger.info(message)
    if console is not None:
        console.print(message, highlight=False)


def _existing_dataset_problems(spec: DatasetSpec, destination: Path) -> list[str]:
    """Why ``destination`` is not a complete copy of ``spec`` (empty list: it is)."""
    if destination.is_symlink() and not destination.exists():
        return ["it is a broken symlink"]
    if not destination.is_dir():
        return ["it is not a folder"]
    missing = [rel for rel in spec.required_files if not (destination / rel).is_file()]
    problems = [f"missing {', '.join(missing)}"] if missing else []
    manifest_path = destination / MANIFEST_NAME
    if manifest_path.is_file():
        # A manifest means we downloaded it: hold the folder to what was recorded then.
        try:
            manifest = read_json(manifest_path)
            recorded_sizes: dict[str, int] = dict(manifest.get("files", {}))
        except (OSError, ValueError, TypeError, AttributeError) as error:
            return problems + [f"unreadable {MANIFEST_NAME} ({error})"]
        for rel, size in recorded_sizes.items():
            path = destination / rel
            if path.is_file() and path.stat().st_size != size:
                problems.append(f"{rel} is {path.stat().st_size} bytes, {MANIFEST_NAME} recorded {size}")
        for key, pinned in (("archive_md5", spec.md5), ("archive_sha256", spec.sha256)):
            if pinned is not None and manifest.get(key) != pinned:
                problems.append(f"{MANIFEST_NAME} records {key}={manifest.get(key)}, expected {pinned}")
    return problems


def _stream_to_file(url: str, path: Path, spec: DatasetSpec, console: Console | None,
                    timeout_s: float) -> tuple[str, str, int]:
    """Stream ``url`` into ``path``; return (md5 hex, sha256 hex, bytes written)."""
    md5 = hashlib.md5(usedforsecurity=False)
    sha256 = hashlib.sha256()
    n_bytes = 0
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response, open(path, "wb") as out:
            content_length = _content_length(response.headers.get("Content-Length"))
            if (content_length is not None and spec.size_bytes is not None
                    and content_length != spec.size_bytes):
                raise DownloadError(
                    f"size mismatch for {spec.archive_name} from {url}: expected {spec.size_bytes} bytes, "
                    f"server announces {content_length}"
                )
            total = content_length if content_length is not None else spec.size_bytes
            with _progress_bar(console) as bar:
                task = bar.add_task(spec.archive_name, total=total) if bar is not None else None
                while chunk := response.read(_CHUNK_BYTES):
                    out.write(chunk)
                    md5.update(chunk)
                    sha256.update(chunk)
                    n_bytes += len(chunk)
                    if bar is not None and task is not None:
                        bar.update(task, advance=len(chunk))
            out.flush()
            os.fsync(out.fileno())
    except urllib.error.HTTPError as error:
        raise DownloadError(f"HTTP {error.code} {error.reason} fetching {url}") from error
    except http.client.IncompleteRead as error:
        raise DownloadError(
            f"download of {url} was cut short: got {n_bytes + len(error.partial)} bytes"
            + (f", {error.expected} more were expected" if error.expected is not None else "")
        ) from error
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"could not download {url}: {reason}") from error
    if content_length is not None and n_bytes != content_length:
        raise DownloadError(f"download of {url} was cut short: got {n_bytes} of {content_length} bytes")
    return md5.hexdigest(), sha256.hexdigest(), n_bytes


def _content_length(header: str | None) -> int | None:
    if header is None:
        return None
    try:
        return int(header)
    except ValueError:
        return None


class _NoBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress_bar(console: Console | None) -> Progress | _NoBar:
    if console is None:
        return _NoBar()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _verify_archive(spec: DatasetSpec, url: str, md5_hex: str, sha256_hex: str, n_bytes: int) -> None:
    if spec.size_bytes is not None and n_bytes != spec.size_bytes:
        raise DownloadError(
            f"size mismatch for {spec.archive_name} from {url}: expected {spec.size_bytes} bytes, got {n_bytes}"
        )
    for algorithm, expected, got in (("sha256", spec.sha256, sha256_hex), ("md5", spec.md5, md5_hex)):
        if expected is not None and got != expected:
            raise DownloadError(
                f"checksum mismatch for {spec.archive_name} from {url}: expected {algorithm} {expected}, "
                f"got {got} ({n_bytes} bytes). The download is corrupt or not the published archive."
            )


def _extract(archive_path: Path, extract_dir: Path, kind: Literal["tar", "zip"]) -> None:
    try:
        if kind == "tar":
            with tarfile.open(archive_path, "r:*") as tar:
                for member in tar.getmembers():
                    _check_member_name(member.name, extract_dir)
                # The "data" filter refuses absolute names, "..", links that leave extract_dir,
                # and device files, and drops set-uid bits and foreign ownership.
                tar.extractall(extract_dir, filter="data")
        elif kind == "zip":
            with zipfile.ZipFile(archive_path) as archive:
                for info in archive.infolist():
                    _check_member_name(info.filename, extract_dir)
                archive.extractall(extract_dir)
        else:
            raise DownloadError(f"unsupported archive kind {kind!r}; expected 'tar' or 'zip'")
    except tarfile.FilterError as error:
        member = error.tarinfo.name if error.tarinfo is not None else "?"
        raise DownloadError(f"refusing unsafe archive member {member!r}: {error}") from error
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as error:
        raise DownloadError(f"cannot unpack {archive_path.name}: {error}") from error


def _check_member_name(name: str, extract_dir: Path) -> None:
    # tarfile's "data" filter would quietly strip a leading "/" and zipfile would quietly rewrite
    # "..": a dataset archive never needs either, so refuse the whole archive instead.
    posix = PurePosixPath(name.replace("\\", "/"))
    root = extract_dir.resolve()
    windows = PureWindowsPath(name)
    if (posix.is_absolute() or ".." in posix.parts or windows.drive
            or not (root / posix).resolve().is_relative_to(root)):
        raise DownloadError(f"refusing unsafe archive member {name!r}: it would be written outside the dataset folder")


def _move_into_place(new_root: Path, destination: Path, data_dir: Path) -> None:
    """Rename ``new_root`` to ``destination``, swapping out any existing folder only at the end."""
    if not (destination.exists() or destination.is_symlink()):
        os.replace(new_root, destination)
        return
    # os.replace cannot overwrite a non-empty folder: move the old one aside first, and put it
    # back if the second rename fails.
    backup = data_dir / f".{destination.name}.old-{uuid.uuid4().hex[:12]}"
    os.replace(destination, backup)
    try:
        os.replace(new_root, destination)
    except BaseException:
        os.replace(backup, destination)
        raise
    if backup.is_dir() and not backup.is_symlink():
        shutil.rmtree(backup, ignore_errors=True)
    else:
        backup.unlink(missing_ok=True)
