"""The model bundle: everything the service needs, in one verified folder.

``ytdnn bundle RANKER_RUN [RETRIEVAL_RUN] --out BUNDLE_DIR`` (:func:`build_bundle`) writes::

    manifest.json              format, version, creation time, the runs' configs, serving facts,
                               the ONNX parity report, and the SHA-256 + size of every other file
    ranker/                    the ranker run's model.json, model.safetensors, config.json and
                               features/ (vocabularies, quantile normalisers; JSON)
    ranker/onnx/               user_part.onnx and candidate_part.onnx (the split first layer)
    retrieval/                 featurizer.json, model.json (network spec), model.safetensors
    retrieval/index/           the item index over the serving item vectors, keyed by video_id
    tables/                    users.parquet, videos.parquet, log.parquet (the impression log the
                               service reads users' history from), popularity.parquet

Building exports the ranker to ONNX and checks it against PyTorch on real rows (the last
impressions of the log, with their real history): the bundle is not written unless the
largest relative difference of the served quantities is at most ``parity_tolerance`` (1e-4).
It also checks the fast serving feature path against the feature pipeline on real users and
records whether they agree (the service falls back to the pipeline when not).

The bundle is assembled in a staging folder beside ``out`` and moved into place with one
rename, so a reader never sees half a bundle; an existing bundle at ``out`` is replaced the same
way. :func:`load_recommender` verifies every checksum before it reads anything and refuses a
bundle that does not match, naming the files.

``BUNDLE_DIR`` may also be a folder of bundles with a ``current`` pointer (a text file naming
the active bundle folder, relative to it, or a symlink); :func:`set_current` rewrites the
pointer atomically, which is how a new bundle is rolled out to a service watching it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from ytdnn.utils.io import atomic_write_json, atomic_write_text, atomic_write_with, read_json

__all__ = [
    "BUNDLE_FORMAT",
    "BundleError",
    "MANIFEST_NAME",
    "POINTER_NAME",
    "build_bundle",
    "load_recommender",
    "read_manifest",
    "resolve_bundle_dir",
    "set_current",
    "verify_bundle",
]

log = logging.getLogger("ytdnn.serving")

BUNDLE_FORMAT = "ytdnn-bundle-v1"
MANIFEST_NAME = "manifest.json"
POINTER_NAME = "current"
RANKER_DIR = "ranker"
RETRIEVAL_DIR = "retrieval"
TABLES_DIR = "tables"
ONNX_DIR = "ranker/onnx"
USER_TOWER_GRAPH = "user_tower.onnx"
_HASH_CHUNK = 1 << 20
# Corpus size up to which the bundle serves exact search whatever index the run holds.
EXACT_INDEX_MAX_ITEMS = 100_000


class BundleError(ValueError):
    """A bundle that cannot be built, or a folder that is not a complete, unaltered bundle."""


# ---------------------------------------------------------------------------------------------
# Checksums, manifest, pointer


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _file_table(root: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative == MANIFEST_NAME:
            continue
        files[relative] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return files


def resolve_bundle_dir(path: str | Path) -> Path:
    """The bundle folder ``path`` stands for: itself when it holds a manifest, else the folder its
    ``current`` pointer names (a symlink, or a text file with a path relative to ``path``)."""
    folder = Path(path)
    if (folder / MANIFEST_NAME).is_file():
        return folder
    pointer = folder / POINTER_NAME
    if pointer.is_symlink() or pointer.is_dir():
        target = pointer.resolve()
    elif pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        if not name:
            raise BundleError(f"{pointer}: the pointer is empty; expected the name of a bundle folder")
        target = (folder / name) if not Path(name).is_absolute() else Path(name)
    elif not folder.exists():
        raise BundleError(f"{folder}: no such folder")
    else:
        raise BundleError(f"{folder}: not a bundle (no {MANIFEST_NAME}) and no '{POINTER_NAME}' pointer")
    if not (target / MANIFEST_NAME).is_file():
        raise BundleError(f"{pointer} names {target}, which is not a bundle (no {MANIFEST_NAME})")
    return target


def set_current(root: str | Path, bundle_name: str) -> Path:
    """Point ``root/current`` at ``root/bundle_name`` (atomically); returns the bundle path."""
    root = Path(root)
    target = root / bundle_name
    if not (target / MANIFEST_NAME).is_file():
        raise BundleError(f"{target}: not a bundle (no {MANIFEST_NAME})")
    atomic_write_text(root / POINTER_NAME, bundle_name + "\n")
    return target


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: not a bundle (no {MANIFEST_NAME})")
    try:
        manifest = read_json(path)
    except ValueError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{path}: format {found!r}, this code reads {BUNDLE_FORMAT!r}")
    for key in ("version", "files"):
        if key not in manifest:
            raise BundleError(f"{path}: missing field {key!r}")
    return manifest


def verify_bundle(bundle_dir: str | Path) -> dict[str, Any]:
    """Check every file the manifest lists (present, same size, same SHA-256); return the manifest.

    Raises :class:`BundleError` naming every missing or altered file.
    """
    folder = Path(bundle_dir)
    manifest = read_manifest(folder)
    problems = []
    for relative, expected in manifest["files"].items():
        path = folder / relative
        if not path.is_file():
            problems.append(f"{relative}: missing")
        elif path.stat().st_size != expected.get("bytes"):
            problems.append(f"{relative}: {path.stat().st_size} bytes, manifest says {expected.get('bytes')}")
        elif sha256_file(path) != expected.get("sha256"):
            problems.append(f"{relative}: SHA-256 differs from the manifest")
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise BundleError(f"{folder}: bundle does not match its manifest ({shown}); refusing to load it")
    return manifest


# ---------------------------------------------------------------------------------------------
# Building


def _run_kind(run_dir: Path) -> str:
    config = run_dir / "config.json"
    if not config.is_file():
        raise BundleError(f"{run_dir}: not a run folder (no config.json)")
    return str(read_json(config).get("job", ""))


def _classify_runs(run_dirs: Sequence[str | Path]) -> tuple[Path, Path | None]:
    ranker: list[Path] = []
    retrieval: list[Path] = []
    for run in map(Path, run_dirs):
        kind = _run_kind(run)
        if kind == "RankerConfig":
            ranker.append(run)
        elif kind == "RetrievalConfig":
            retrieval.append(run)
        else:
            raise BundleError(f"{run}: a {kind or 'unknown'} run; a bundle takes a ranker run and a retrieval run")
    if len(ranker) != 1:
        raise BundleError(f"expected exactly one ranker run among {list(map(str, run_dirs))}, found {len(ranker)}")
    if len(retrieval) > 1:
        raise BundleError(f"expected at most one retrieval run, found {len(retrieval)}: {list(map(str, retrieval))}")
    return ranker[0], (retrieval[0] if retrieval else None)


def _copy_ranker(run: Path, target: Path) -> None:
    from ytdnn.training.ranker import CONFIG_FILE, FEATURES_DIR, MODEL_FILE

    metadata = read_json(run / MODEL_FILE) if (run / MODEL_FILE).is_file() else None
    if metadata is None:
        raise BundleError(f"{run}: no {MODEL_FILE}; not a finished ranker run")
    target.mkdir(parents=True)
    weights = metadata.get("weights", "model.safetensors")
    for name in (CONFIG_FILE, MODEL_FILE, weights):
        if not (run / name).is_file():
            raise BundleError(f"{run}: missing {name}")
        shutil.copy2(run / name, target / name)
    features = run / metadata.get("features", FEATURES_DIR)
    if not features.is_dir():
        raise BundleError(f"{run}: missing the feature pipeline folder {features}")
    shutil.copytree(features, target / FEATURES_DIR)
    if metadata.get("features", FEATURES_DIR) != FEATURES_DIR:
        metadata["features"] = FEATURES_DIR
        atomic_write_json(target / MODEL_FILE, metadata)


def _load_data(ranker_run: Path) -> Any:
    from ytdnn.data.sources import load_dataset
    from ytdnn.training.ranker import RankerConfig

    config = RankerConfig.read(ranker_run / "config.json")
    return load_dataset(config.data.dataset, config.data.data_dir, on_bad_rows=config.data.on_bad_rows)


def _clock_offset_hours(log_frame: pl.DataFrame) -> int:
    """Hours between UTC and the log's own ``hourmin`` buckets (the most common difference)."""
    if log_frame.height == 0 or "hourmin" not in log_frame.columns or int(log_frame["hourmin"].max()) == 0:
        return 0
    utc_hour = (log_frame["time_ms"] // 3_600_000) % 24
    offsets = ((log_frame["hourmin"] // 100) - utc_hour) % 24
    mode = offsets.value_counts(sort=True)
    value = int(mode[offsets.name][0])
    return value - 24 if value > 12 else value


def _write_parquet(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda tmp: frame.write_parquet(tmp), suffix=".parquet")


def _parity_batch(loaded: Any, impressions: pl.DataFrame, users: pl.DataFrame, videos: pl.DataFrame,
                  rows: int) -> Any:
    """The last ``rows`` impressions of the log with their real (causal) history, as a batch."""
    pipeline = loaded.pipeline
    tail = impressions.sort(["time_ms", "row_id"]).tail(rows)
    if "history" in pipeline.config.groups:
        # Over the whole log: item-side history counts every user's earlier events on a video.
        with_history = pipeline.add_history(impressions, videos)
        tail = with_history.join(tail.select("row_id"), on="row_id", how="semi")
    return pipeline.transform(tail, users, videos), tail["video_id"].to_numpy()


def _cached_parity(loaded: Any, network: Any, batch: Any, video_ids: np.ndarray, store: Any, tolerance: float) -> Any:
    """Parity of the serving path with the item half precomputed per video (rows whose video is
    in the table; the others are served by the full candidate graph, checked above)."""
    from ytdnn.serving.features import FastRankingFeatures
    from ytdnn.serving.onnx_ranker import check_parity, item_hidden_table

    features = FastRankingFeatures(loaded.pipeline, store.users, store.videos, store.log)
    rows, found = features.item_rows(video_ids)
    table = item_hidden_table(loaded.network, features.item_table_batch())
    keep = torch.from_numpy(np.flatnonzero(found))
    return check_parity(loaded.network, network, batch.index(keep), loaded.objective.predict, tolerance=tolerance,
                        item_hidden=table[rows[found]])


def _check_fast_features(loaded: Any, store: Any, users: pl.DataFrame, videos: pl.DataFrame,
                         n_users: int = 25, n_candidates: int = 100, seed: int = 0) -> dict[str, Any]:
    """Fast serving features against the pipeline's serving path on real users."""
    from ytdnn.serving.features import FastRankingFeatures, PipelineRankingFeatures, UnsupportedFeatureError
    try:
        fast = FastRankingFeatures(loaded.pipeline, users, videos, store.log)
    except UnsupportedFeatureError as exc:
        return {"fast_features": False, "reason": str(exc)}
    reference = PipelineRankingFeatures(loaded.pipeline, users, videos, store.log)
    rng = np.random.default_rng(seed)
    known = store.logged_user_ids
    picks = rng.choice(known, size=min(n_users, known.size), replace=False).tolist() if known.size else []
    picks.append(int(max(known.max() if known.size else 0, 0)) + 1)  # an unknown user
    video_ids = videos["video_id"].to_numpy()
    worst = 0.0
    for user in picks:
        now = store.end_time_ms + 1
        past = store.user_log(user, now)
        candidates = rng.choice(video_ids, size=min(n_candidates, video_ids.size), replace=False)
        if past.height:
            candidates = np.unique(np.concatenate([candidates, past["video_id"].to_numpy()[:10]]))
        a = fast.batch(user, candidates, now, 0, past)
        b = reference.batch(user, candidates, now, 0, past)
        same_ids = torch.equal(a.categorical, b.categorical) and all(
            torch.equal(x, y) for x, y in zip(a.multivalent, b.multivalent, strict=True))
        if not same_ids:
            return {"fast_features": False, "reason": f"id features differ from the pipeline for user {user}"}
        worst = max(worst, float((a.dense - b.dense).abs().max()) if len(a) else 0.0)
    ok = worst <= 1e-5
    return {"fast_features": ok, "users_checked": len(picks), "max_abs_dense_diff": worst,
            **({} if ok else {"reason": f"dense features differ by up to {worst}"})}


def _bundle_retrieval(run: Path, target: Path, index_kind: str | None,
                      parity_inputs: Callable[[Any], dict[str, np.ndarray]]) -> dict[str, Any]:
    """Write featurizer.json, model.json, model.safetensors and index/ (keyed by video_id).

    The index kind (and its parameters) is ``index_kind`` when given, else exact up to
    :data:`EXACT_INDEX_MAX_ITEMS` items, else that of an index the run folder already holds
    (``ytdnn index build``), else HNSW. Up to that size exact search is both exact and cheaper
    than a graph walk: on KuaiRand's 4,682 items, top 300 of one query took 0.17 ms of CPU
    exact against 0.44 ms for the run's HNSW (M 48, ef_search 384), measured here.
    """
    from safetensors.torch import save_file

    from ytdnn.index import make_index, read_manifest as read_index_manifest
    from ytdnn.training.retrieval import load_retrieval_run

    loaded = load_retrieval_run(run)
    model, featurizer = loaded.model, loaded.featurizer
    target.mkdir(parents=True)
    atomic_write_json(target / "featurizer.json", featurizer.to_dict())
    atomic_write_json(target / "model.json", {"spec": model.spec.to_dict()})
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    atomic_write_with(target / "model.safetensors", lambda tmp: save_file(state, str(tmp)), suffix=".safetensors")
    tower_parity = _export_user_tower(model, featurizer, target / USER_TOWER_GRAPH, parity_inputs)
    vectors, video_ids = loaded.item_vectors()
    params: dict[str, Any] = {}
    kind = index_kind
    if kind is None and vectors.shape[0] <= EXACT_INDEX_MAX_ITEMS:
        kind = "exact"
    if kind is None:
        existing = sorted(run.glob("*/index.json"))
        if existing:
            manifest = read_index_manifest(existing[0].parent)
            kind, params = manifest["kind"], dict(manifest.get("params", {}))
        else:
            kind = "hnsw"
    index = make_index(kind, vectors.shape[1], **params)
    index.build(vectors, video_ids)
    index.save(target / "index")
    return {"run": str(run), "index_kind": kind, "index_params": params, "items": int(vectors.shape[0]),
            "user_tower_onnx_parity": tower_parity, "config": loaded.config.model_dump(mode="json")}


def _retrieval_parity_inputs(featurizer: Any, store: Any, n_users: int = 256) -> dict[str, np.ndarray]:
    """The retrieval model's serving inputs for real users of the log (and one unknown user)."""
    from ytdnn.serving.features import FastRetrievalFeatures

    fast = FastRetrievalFeatures(featurizer, store.users)
    users = store.logged_user_ids
    picks = users[np.linspace(0, users.size - 1, num=min(n_users, users.size)).astype(np.int64)].tolist()
    picks.append(int(users.max()) + 1 if users.size else 0)
    now = store.end_time_ms + 1
    rows = [fast.inputs(user, store.user_log(user, now), now) for user in picks]
    return {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}


class _UserTowerGraph(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, history: torch.Tensor, tokens: torch.Tensor, profile: torch.Tensor,
                dense: torch.Tensor) -> torch.Tensor:
        return self.model.serving_user_vectors(self.model.user_vectors(history, tokens, profile, dense))


def _export_user_tower(model: Any, featurizer: Any, path: Path,
                       parity_inputs: Callable[[Any], dict[str, np.ndarray]], tolerance: float = 1e-4) -> dict[str, Any]:
    """Export the retrieval user tower (inputs → [u; 1]) to ONNX and check it on real users.

    The relative difference is taken per user against the largest entry of its vector.
    """
    import warnings

    import onnxruntime as ort

    from ytdnn.utils.io import atomic_path

    model = model.eval()
    inputs = parity_inputs(featurizer)
    names = ["history", "tokens", "profile", "dense"]
    tensors = tuple(torch.from_numpy(inputs[name]) for name in names)
    dynamic = {"history": {0: "batch"}, "tokens": {0: "batch", 1: "tokens"}, "profile": {0: "batch"},
               "dense": {0: "batch"}, "user_vector": {0: "batch"}}
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_UserTowerGraph(model), tuple(t[:2] for t in tensors), str(tmp), input_names=names,
                          output_names=["user_vector"], dynamic_axes=dynamic, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    onnx_out = session.run(None, {name: inputs[name] for name in names if name in wanted})[0]
    with torch.no_grad():
        reference = _UserTowerGraph(model)(*tensors).numpy()
    scale = np.maximum(np.abs(reference).max(axis=1, keepdims=True), 1e-6)
    worst = float((np.abs(onnx_out - reference) / scale).max())
    if not worst <= tolerance:
        raise BundleError(f"ONNX parity of the retrieval user tower failed: max relative difference {worst:.3g}")
    return {"rows": int(reference.shape[0]), "max_relative_diff": worst, "tolerance": tolerance}


def build_bundle(run_dirs: Sequence[str | Path], out: str | Path, *, data: Any | None = None,
                 parity_rows: int = 2048, parity_tolerance: float = 1e-4, popularity_days: float = 3.0,
                 index_kind: str | None = None) -> Path:
    """Package a ranker run (and optionally a retrieval run) into the bundle folder ``out``.

    ``data``: the :class:`~ytdnn.data.schema.InteractionData` whose log, users and videos go into
    the bundle (default: the dataset named in the ranker run's config). Without a retrieval run
    every user gets popularity candidates. Returns ``out``.
    """
    from ytdnn.serving.onnx_ranker import OnnxSplitNetwork, check_parity, export_ranker_onnx, input_names
    from ytdnn.serving.recommender import LOG_COLUMNS, HistoryStore
    from ytdnn.training.ranker import load_ranker

    out = Path(out)
    ranker_run, retrieval_run = _classify_runs(run_dirs)
    if out.exists() and not (out / MANIFEST_NAME).is_file() and any(out.iterdir()):
        raise BundleError(f"{out}: exists and is not a bundle; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        _copy_ranker(ranker_run, staging / RANKER_DIR)
        loaded = load_ranker(staging / RANKER_DIR)
        if data is None:
            data = _load_data(ranker_run)
        impressions = data.impressions
        log_frame = (impressions.select([pl.col(c).cast(t) for c, t in LOG_COLUMNS.items() if c in impressions.columns])
                     .sort(["user_id", "time_ms", "row_id"]))
        store = HistoryStore(log_frame, data.users, data.videos, popularity_days=popularity_days,
                             clock_offset_hours=_clock_offset_hours(log_frame))
        tables = staging / TABLES_DIR
        _write_parquet(store.users, tables / "users.parquet")
        _write_parquet(store.videos, tables / "videos.parquet")
        _write_parquet(store.log, tables / "log.parquet")
        _write_parquet(pl.DataFrame({"video_id": store.popular_video_ids}), tables / "popularity.parquet")

        # ONNX export + parity on real rows
        batch, parity_rows_videos = _parity_batch(loaded, impressions, data.users, data.videos, parity_rows)
        if len(batch) == 0:
            raise BundleError("the log has no impression to check the ONNX export on")
        graphs = export_ranker_onnx(loaded.network, batch.index(torch.arange(min(8, len(batch)))), staging / ONNX_DIR)
        onnx_network = OnnxSplitNetwork(*graphs, feature_names=input_names(loaded.network),
                                        n_heads=loaded.network.n_heads)
        parity = check_parity(loaded.network, onnx_network, batch, loaded.objective.predict, tolerance=parity_tolerance)
        if not parity.passed:
            raise BundleError(f"ONNX parity failed: max relative difference {parity.max_relative_diff:.3g} > "
                              f"{parity_tolerance:g} on {parity.rows} real rows; bundle not written")
        features_check = _check_fast_features(loaded, store, store.users, store.videos)
        cached_parity = _cached_parity(loaded, onnx_network, batch, parity_rows_videos, store, parity_tolerance) \
            if features_check.get("fast_features") and graphs[2] is not None else None
        if cached_parity is not None and not cached_parity.passed:
            raise BundleError(f"ONNX parity of the cached item path failed: max relative difference "
                              f"{cached_parity.max_relative_diff:.3g} > {parity_tolerance:g}; bundle not written")

        retrieval_info = None
        if retrieval_run is not None:
            retrieval_info = _bundle_retrieval(retrieval_run, staging / RETRIEVAL_DIR, index_kind,
                                               lambda featurizer: _retrieval_parity_inputs(featurizer, store))

        created = dt.datetime.now(dt.UTC)
        files = _file_table(staging)
        content = hashlib.sha256("".join(f"{k}:{v['sha256']}" for k, v in files.items()).encode()).hexdigest()
        manifest = {
            "format": BUNDLE_FORMAT,
            "version": f"{created:%Y%m%dT%H%M%SZ}-{content[:8]}",
            "created_at": created.isoformat(),
            "runs": {"ranker": str(ranker_run), "retrieval": None if retrieval_run is None else str(retrieval_run)},
            "configs": {"ranker": read_json(ranker_run / "config.json").get("config", {}),
                        "retrieval": None if retrieval_info is None else retrieval_info.pop("config")},
            "serving": {
                "objective": loaded.objective.name, "ranking_key": loaded.ranking_key,
                # The served expected_watch_s's calibration constant (in ranker/model.json; shown here).
                "watch_scale": getattr(loaded.objective, "watch_scale", None),
                "log_end_time_ms": store.end_time_ms, "clock_offset_hours": store.clock_offset_hours,
                "popularity_days": popularity_days, "log_rows": store.log.height,
                "users": store.users.height, "videos": store.videos.height,
                "retrieval": retrieval_info, **features_check,
            },
            "onnx_parity": parity.to_dict(),
            "onnx_parity_item_cache": None if cached_parity is None else cached_parity.to_dict(),
            "files": files,
        }
        atomic_write_json(staging / MANIFEST_NAME, manifest)
        # The whole serving path as loaded (fast features, item snapshot, ONNX) against the
        # reference on real users; recorded in the manifest (which no checksum covers).
        served = served_parity(staging, loaded, tolerance=parity_tolerance)
        if not served["passed"]:
            raise BundleError(f"served-path parity failed: max relative difference {served['max_relative_diff']:.3g} "
                              f"> {parity_tolerance:g} over {served['rows']} real rows; bundle not written")
        manifest["served_parity"] = served
        atomic_write_json(staging / MANIFEST_NAME, manifest)
        _install(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("bundle %s written to %s", manifest["version"], out)
    return out


def served_parity(bundle_dir: str | Path, loaded: Any, *, n_users: int = 6, candidates: int = 100,
                  tolerance: float = 1e-4, floor: float = 1e-6, seed: int = 0) -> dict[str, Any]:
    """The bundle's serving path (:func:`load_recommender` with default settings: fast features,
    item cache and item-history snapshot, ONNX Runtime) against the reference — the pipeline's
    own serving features (:class:`~ytdnn.serving.features.PipelineRankingFeatures`) through the
    full PyTorch network — on real users of the bundled log and their retrieved candidates.

    Requests: ``n_users`` logged users and one unknown user at the default request time (the
    snapshot applies), and two of them again 12 hours before the log's end, with a request
    event on their first candidate (the snapshot does not apply). ``max_relative_diff`` = max
    over rows and served quantities q of |q_served − q_ref| / max(|q_ref|, ``floor``).
    """
    from ytdnn.serving.features import PipelineRankingFeatures
    from ytdnn.serving.recommender import HistoryEvent, RequestContext

    recommender = load_recommender(bundle_dir)
    store, ranker = recommender.store, recommender.ranker
    reference = PipelineRankingFeatures(loaded.pipeline, store.users, store.videos, store.log)
    rng = np.random.default_rng(seed)
    known = store.logged_user_ids
    picks = rng.choice(known, size=min(n_users, known.size), replace=False).tolist() if known.size else []
    unknown = max(int(known.max()) if known.size else 0, int(store._user_ids.max()) if store._user_ids.size else 0) + 1
    default_now = recommender.now_ms(RequestContext())
    earlier = default_now - 12 * 3_600_000
    requests = [(user, default_now, False) for user in [*picks, unknown]]
    requests += [(user, earlier, True) for user in picks[:2]]
    worst, rows, snapshot_rows = 0.0, 0, 0
    for user, now, with_event in requests:
        past = store.user_log(user, now)
        ids = (recommender.retriever.retrieve(user, past, now, candidates) if recommender.retriever is not None
               and past.height else store.popular_videos(candidates))
        ids = ids[store.known_videos(ids)][:candidates]
        if ids.size == 0:
            continue
        if with_event:
            past = store.user_log(user, now, [HistoryEvent(int(ids[0]), time_ms=now - 60_000, watch_time_s=30.0)])
        served = ranker.score(user, ids, now, 0, past)
        snapshot = ranker.item_snapshot
        if snapshot is not None and ranker.features.snapshot_applies(ids, now, past, snapshot[0]):
            snapshot_rows += ids.size
        with torch.inference_mode():
            expected = loaded.objective.predict(loaded.network.eval()(reference.batch(user, ids, now, 0, past)))
        for key, value in expected.items():
            if key == "logit":
                continue
            ref = value.double().numpy()
            worst = max(worst, float(np.max(np.abs(served[key] - ref) / np.maximum(np.abs(ref), floor))))
        rows += ids.size
    return {"requests": len(requests), "rows": rows, "snapshot_rows": snapshot_rows, "max_relative_diff": worst,
            "tolerance": tolerance, "passed": bool(rows > 0 and worst <= tolerance)}


def _install(staging: Path, out: Path) -> None:
    """Move ``staging`` onto ``out`` with renames; an old bundle there is moved away first."""
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / "bundle")
        os.replace(staging, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, out)


# ---------------------------------------------------------------------------------------------
# Loading


class TowerRetriever:
    """Candidate generation at serving: user tower ([u; 1], ONNX) on the user's history → index search."""

    def __init__(self, features: Any, user_tower: Path, index: Any, threads: int = 1) -> None:
        import onnxruntime as ort

        self.features = features
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(user_tower), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.index = index

    def user_vector(self, user_id: int, past_log: pl.DataFrame, now_ms: int) -> np.ndarray:
        """[1, d'] serving user vector ([u; 1] when the model has item biases)."""
        inputs = self.features.inputs(user_id, past_log, now_ms)
        return self._session.run(None, {name: value for name, value in inputs.items() if name in self._inputs})[0]

    def retrieve(self, user_id: int, past_log: pl.DataFrame, now_ms: int, n: int) -> np.ndarray:
        _, ids = self.index.search(self.user_vector(user_id, past_log, now_ms), min(n, max(len(self.index), 1)))
        return ids[0][ids[0] >= 0]


def _load_retrieval(folder: Path, users: pl.DataFrame, threads: int) -> TowerRetriever:
    from ytdnn.features.retrieval import RetrievalFeaturizer
    from ytdnn.index import load_index
    from ytdnn.serving.features import FastRetrievalFeatures

    featurizer = RetrievalFeaturizer.from_dict(read_json(folder / "featurizer.json"))
    index = load_index(folder / "index")
    if hasattr(index, "num_threads"):
        index.num_threads = threads
    return TowerRetriever(FastRetrievalFeatures(featurizer, users), folder / USER_TOWER_GRAPH, index, threads)


def load_recommender(path: str | Path, settings: Any | None = None) -> Any:
    """Verify and load the bundle at ``path`` (or its ``current`` pointer) into a
    :class:`~ytdnn.serving.recommender.Recommender` (not yet warmed up).

    Raises :class:`BundleError` for anything wrong with the bundle.
    """
    from ytdnn.serving.features import PipelineRankingFeatures, ranking_features_for
    from ytdnn.serving.features import FastRankingFeatures
    from ytdnn.serving.onnx_ranker import (
        CANDIDATE_GRAPH_NAME,
        CROSS_TOWER_GRAPH_NAME,
        USER_GRAPH_NAME,
        OnnxSplitNetwork,
        TorchSplitNetwork,
        input_names,
        item_hidden_table,
    )
    from ytdnn.serving.recommender import HistoryStore, Recommender, SplitRanker
    from ytdnn.serving.settings import ServingSettings
    from ytdnn.training.ranker import load_ranker

    settings = settings or ServingSettings()
    bundle_dir = resolve_bundle_dir(path)
    manifest = verify_bundle(bundle_dir)
    serving = manifest.get("serving", {})
    try:
        tables = bundle_dir / TABLES_DIR
        users = pl.read_parquet(tables / "users.parquet")
        videos = pl.read_parquet(tables / "videos.parquet")
        store = HistoryStore(pl.read_parquet(tables / "log.parquet"), users, videos,
                             popular_video_ids=pl.read_parquet(tables / "popularity.parquet")["video_id"].to_numpy(),
                             clock_offset_hours=int(serving.get("clock_offset_hours", 0)))
        loaded = load_ranker(bundle_dir / RANKER_DIR)
        if settings.ranker_backend == "onnx":
            cross_graph = bundle_dir / ONNX_DIR / CROSS_TOWER_GRAPH_NAME
            network: Any = OnnxSplitNetwork(bundle_dir / ONNX_DIR / USER_GRAPH_NAME,
                                            bundle_dir / ONNX_DIR / CANDIDATE_GRAPH_NAME,
                                            cross_graph if cross_graph.is_file() else None,
                                            feature_names=input_names(loaded.network), n_heads=loaded.network.n_heads,
                                            threads=settings.intra_op_threads)
        else:
            network = TorchSplitNetwork(loaded.network)
        features = (ranking_features_for(loaded.pipeline, store.users, store.videos, store.log)
                    if serving.get("fast_features", False)
                    else PipelineRankingFeatures(loaded.pipeline, store.users, store.videos, store.log))
        cross_tower = bundle_dir / ONNX_DIR / CROSS_TOWER_GRAPH_NAME
        item_hidden = (item_hidden_table(loaded.network, features.item_table_batch())
                       if settings.item_cache and isinstance(features, FastRankingFeatures) and cross_tower.is_file()
                       else None)
        item_snapshot = None
        if item_hidden is not None and features.has_item_history:
            # The item-side history at the service's default request time, folded into the table.
            snapshot_ms = store.end_time_ms + 1 if settings.clock == "log_end" else max(store.end_time_ms + 1,
                                                                                         int(time.time() * 1000))
            item_snapshot = (snapshot_ms, item_hidden_table(loaded.network, features.item_table_batch(snapshot_ms),
                                                            with_item_history=True))
        ranker = SplitRanker(features, network, loaded.objective.predict, loaded.ranking_key, item_hidden,
                             item_snapshot)
        retriever = (_load_retrieval(bundle_dir / RETRIEVAL_DIR, store.users, settings.intra_op_threads)
                     if (bundle_dir / RETRIEVAL_DIR).is_dir() else None)
    except BundleError:
        raise
    except Exception as exc:  # whatever a damaged or incompatible bundle raises, say so in one line
        raise BundleError(f"{bundle_dir}: cannot load the bundle: {type(exc).__name__}: {exc}") from exc
    return Recommender(store=store, retriever=retriever, ranker=ranker, version=str(manifest["version"]),
                       candidate_count=settings.candidate_count, clock=settings.clock,
                       unknown_videos=settings.unknown_videos, source=str(bundle_dir),
                       info={"features": type(features).__name__, "backend": settings.ranker_backend,
                             "item_cache": item_hidden is not None,
                             "item_history_snapshot_ms": item_snapshot[0] if item_snapshot is not None else None,
                             "objective": serving.get("objective")})
