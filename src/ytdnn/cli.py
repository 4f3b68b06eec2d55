"""The ``ytdnn`` command line: a thin Typer layer over the package.

Every error a user can cause (bad data, bad config, missing files) is printed as one clear line
and exits with status 2; no stack trace.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="ytdnn: the YouTube deep recommender (candidate generation, WLR ranking, serving).")
data_app = typer.Typer(no_args_is_help=True, help="Get, check and convert data.")
train_app = typer.Typer(no_args_is_help=True, help="Train the ranker or the retrieval model.")
index_app = typer.Typer(no_args_is_help=True, help="Build retrieval indexes.")
experiment_app = typer.Typer(no_args_is_help=True, help="Studies that answer users' questions with experiments.")
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(index_app, name="index")
app.add_typer(experiment_app, name="experiment")

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="A TOML file with the job's config.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: --set train.epochs=3")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Data directory (default: $YTDNN_DATA_DIR, "
                                                                         "then ../shared/data).")]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", help="'kuairand-pure' or a dataset folder.")]


def user_errors(func: F) -> F:
    """Turn the errors a user can cause into one red line and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ytdnn.config import ConfigError
        from ytdnn.data.errors import DataError

        try:
            return func(*args, **kwargs)
        except (DataError, ConfigError, OSError, ValueError) as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _overrides(pairs: dict[str, Any], extra: list[str] | None) -> list[str]:
    import json

    out = [f"{key}={json.dumps(value) if not isinstance(value, str) else value}"
           for key, value in pairs.items() if value is not None]
    return out + list(extra or [])


# ----------------------------------------------------------------------------------------- data

@data_app.command("download")
@user_errors
def data_download(
    name: Annotated[str, typer.Argument(help="Dataset name, e.g. kuairand-pure.")],
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where to put it.")] = Path("data"),
    url: Annotated[Optional[str], typer.Option(help="Override the download address (mirrors).")] = None,
    force: Annotated[bool, typer.Option(help="Download again even if present and verified.")] = False,
) -> None:
    """Download a public dataset, verify it and unpack it atomically."""
    from ytdnn.data.download import download_dataset

    path = download_dataset(name, data_dir, url=url, force=force)
    console.print(f"[green]ready:[/] {path}")


@data_app.command("info")
@user_errors
def data_info(dataset: DatasetOpt = "kuairand-pure", data_dir: DataDirOpt = None,
              on_bad_rows: Annotated[str, typer.Option(help="error | skip")] = "error") -> None:
    """Read a dataset, validate every row, and print a summary."""
    import json

    from ytdnn.data.sources import load_dataset

    data = load_dataset(dataset or "kuairand-pure", data_dir, on_bad_rows=on_bad_rows)  # type: ignore[arg-type]
    from ytdnn.utils.io import _clean_floats

    summary = data.summary() | {"bad_rows": data.provenance.get("bad_rows")}
    typer.echo(json.dumps(_clean_floats(summary), indent=2))  # NaN (e.g. no rows) as null: valid JSON


@data_app.command("convert")
@user_errors
def data_convert(
    source: Annotated[Path, typer.Argument(help="A CSV log, a folder of CSV logs, or a KuaiRand folder.")],
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to write (ytdnn layout).")],
    shard_rows: Annotated[int, typer.Option(help="Rows per impressions/part-*.parquet shard.")] = 1_000_000,
    on_bad_rows: Annotated[str, typer.Option(help="error | skip")] = "error",
    users: Annotated[Optional[Path], typer.Option(help="Users table (CSV/Parquet) for a schema CSV.")] = None,
    videos: Annotated[Optional[Path], typer.Option(help="Videos table (CSV/Parquet) for a schema CSV.")] = None,
) -> None:
    """Convert CSV impression logs into partitioned Parquet, streaming (bounded memory)."""
    from ytdnn.data.convert import convert_csv_logs

    result = convert_csv_logs(source, out, shard_rows=shard_rows, on_bad_rows=on_bad_rows,  # type: ignore[arg-type]
                              users=users, videos=videos)
    console.print(f"[green]wrote[/] {out}: {result.rows} impressions in {result.shards} shard(s); "
                  f"{result.bad_rows.get('skipped_rows', 0)} bad row(s) skipped")


@data_app.command("features")
@user_errors
def data_features(
    source: Annotated[Path, typer.Argument(help="A dataset folder with impressions/*.parquet (or *.csv) shards.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the fitted pipeline and the feature shards.")],
    config: ConfigOpt = None,
    partitions: Annotated[Optional[int], typer.Option(help="User/video hash partitions (default: rows / 2M); "
                                                           "peak memory is about one partition.")] = None,
    shard_rows: Annotated[int, typer.Option(help="Rows per feature shard.")] = 262_144,
    set_: SetOpt = None,
) -> None:
    """Ranking features out of core: history, vocabularies, quantiles and feature shards, one partition at a time."""
    from ytdnn.data.split import DateSplit
    from ytdnn.features.streaming import build_features_out_of_core
    from ytdnn.training.ranker import RankerConfig

    cfg = RankerConfig.load(config, _overrides({}, set_))
    split = DateSplit(train_end=cfg.data.train_end, test_start=cfg.data.test_start)
    result = build_features_out_of_core(source, out, config=cfg.features, split=split, n_partitions=partitions,
                                        shard_rows=shard_rows, log=lambda m: console.print(f"  {m}"))
    console.print(f"[green]wrote[/] {out}: {result.rows('train'):,} train and {result.rows('test'):,} test rows in "
                  f"{len(result.shards)} shards ({result.n_partitions} partitions, "
                  f"{result.seconds['total']:.1f}s)")


# ---------------------------------------------------------------------------------------- train

@train_app.command("ranker")
@user_errors
def train_ranker_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run folder to write.")],
    config: ConfigOpt = None,
    objective: Annotated[Optional[str], typer.Option(help="wlr | wlr-resample | wlr-exact | wlr-corrected | "
                                                          "poisson | mse | log-mse | click-only")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    on_bad_rows: Annotated[Optional[str], typer.Option(help="error | skip")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a killed run from its last checkpoint in OUT/checkpoints.")
                      ] = False,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="Checkpoint every N batches (and at epoch ends) "
                                                                 "into OUT/checkpoints.")] = None,
    set_: SetOpt = None,
) -> None:
    """Train the ranking network (default: weighted LR + click head, ranked by the WLR odds, calibrated)."""
    from ytdnn.training.ranker import RankerConfig, train_ranker

    checkpoints = str(out / "checkpoints") if resume or checkpoint_every else None
    cfg = RankerConfig.load(config, _overrides({
        "objective.name": objective, "train.epochs": epochs, "seed": seed, "data.dataset": dataset,
        "data.data_dir": str(data_dir) if data_dir else None, "data.on_bad_rows": on_bad_rows,
        "train.checkpoint_dir": checkpoints, "train.checkpoint_every_batches": checkpoint_every,
        "train.resume": resume or None}, set_))
    # Under torchrun every rank trains (DDP); only rank 0 writes the run folder.
    import shutil
    import tempfile

    from ytdnn.training import distributed

    ctx = distributed.init_from_env()
    target = out if ctx.is_main else Path(tempfile.mkdtemp(prefix=f"ytdnn-rank{ctx.rank}-"))
    try:
        train_ranker(cfg, target)
    finally:
        if not ctx.is_main:
            shutil.rmtree(target, ignore_errors=True)
        distributed.shutdown()
    if ctx.is_main:
        console.print(f"[green]ranker trained:[/] {out}" + (f" ({ctx.world_size} processes)" if ctx.enabled else ""))


@train_app.command("sharded")
@user_errors
def train_sharded_cmd(
    features: Annotated[Path, typer.Argument(help="Feature shards folder written by `ytdnn data features`.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder to write.")],
    config: ConfigOpt = None,
    epochs: Annotated[int, typer.Option(help="Epochs over the training shards.")] = 1,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    sparse_min_rows: Annotated[int, typer.Option(help="Tables with at least this many rows get sparse gradients "
                                                      "and SparseAdam; 0 = every table dense.")] = 10_000,
    buffer_shards: Annotated[int, typer.Option(help="Feature shards per shuffle buffer.")] = 2,
    set_: SetOpt = None,
) -> None:
    """Train the ranker from feature shards, batch by batch (bounded memory; DDP ranks read their own shards).

    Model, objective and optimiser settings come from the ranker config (model.hidden, objective.name,
    train.lr, train.batch_size = per rank, train.num_threads).
    """
    from ytdnn.training import distributed
    from ytdnn.training.ranker import RankerConfig
    from ytdnn.training.sharded import train_sharded

    cfg = RankerConfig.load(config, _overrides({"seed": seed}, set_))
    ctx = distributed.init_from_env()
    try:
        result = train_sharded(features, out, objective_name=cfg.objective.name, objective_params=cfg.objective.params,
                               hidden=tuple(cfg.model.hidden), dropout=cfg.model.dropout, lr=cfg.train.lr,
                               weight_decay=cfg.train.weight_decay, batch_size=cfg.train.batch_size, epochs=epochs,
                               seed=cfg.seed, buffer_shards=buffer_shards, sparse_min_rows=sparse_min_rows or None,
                               num_threads=cfg.train.num_threads, log_every=500)
    finally:
        distributed.shutdown()
    if ctx.is_main:
        last = result.history.epochs[-1]
        console.print(f"[green]ranker trained from shards:[/] {out}: {result.n_train:,} rows/epoch, train loss "
                      f"{last.train_loss:.5f}, test loss {result.test.get('test_loss', float('nan')):.5f} "
                      f"({result.seconds['train']:.1f}s training)")


@train_app.command("retrieval")
@user_errors
def train_retrieval_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run folder to write.")],
    config: ConfigOpt = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train the candidate-generation model (softmax over the corpus); runs under torchrun (DDP)."""
    from ytdnn.training import distributed
    from ytdnn.training.retrieval import RetrievalConfig, train_retrieval

    cfg = RetrievalConfig.load(config, _overrides({
        "train.epochs": epochs, "seed": seed, "data.dataset": dataset,
        "data.data_dir": str(data_dir) if data_dir else None}, set_))
    # Under torchrun every rank trains (DDP); only rank 0 writes the run folder.
    ctx = distributed.init_from_env()
    try:
        train_retrieval(cfg, out)
    finally:
        distributed.shutdown()
    if ctx.is_main:
        console.print(f"[green]retrieval model trained:[/] {out}"
                      + (f" ({ctx.world_size} processes)" if ctx.enabled else ""))


# ------------------------------------------------------------------------------ evaluate/predict

def _use_data_dir(data_dir: Path | None) -> None:
    """A run folder records where its data came from; --data-dir points elsewhere (moved data)."""
    if data_dir is not None:
        import os

        from ytdnn.data.datadir import ENV_VAR, resolve_data_dir

        os.environ[ENV_VAR] = str(resolve_data_dir(data_dir))


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None


def _run_kind(run_dir: Path) -> str:
    from ytdnn.utils.io import read_json

    path = run_dir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no config.json)")
    return str(read_json(path).get("job", ""))


@app.command("evaluate")
@user_errors
def evaluate_cmd(run_dir: Annotated[Path, typer.Argument(help="A run folder written by `ytdnn train`.")],
                 data_dir: DataDirOpt = None) -> None:
    """Evaluate a run on the test days (with its baselines) and write metrics + report."""
    _use_data_dir(data_dir)
    kind = _run_kind(run_dir)
    if kind == "RetrievalConfig":
        from ytdnn.evaluation.retrieval_eval import evaluate_retrieval, format_retrieval_table

        metrics = evaluate_retrieval(run_dir)
        typer.echo(format_retrieval_table(metrics))
    else:
        from ytdnn.evaluation.ranker_eval import evaluate_ranker_run, format_ranker_table

        metrics = evaluate_ranker_run(run_dir, data_dir=data_dir)
        typer.echo(format_ranker_table(metrics))


@app.command("predict")
@user_errors
def predict_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A ranker run folder.")],
    out: Annotated[Path, typer.Option("--out", help="Parquet file to write.")],
    split: Annotated[str, typer.Option(help="test | train | all")] = "test",
    data_dir: DataDirOpt = None,
) -> None:
    """Score impressions: one row per impression, in the log's order (rank_score orders items)."""
    kind = _run_kind(run_dir)
    if kind != "RankerConfig":
        raise ValueError(f"{run_dir}: a {kind or 'non-ranker'} run; `ytdnn predict` scores ranker runs "
                         "(written by `ytdnn train ranker`)")
    _use_data_dir(data_dir)
    from ytdnn.evaluation.ranker_eval import predict_split

    from ytdnn.utils.io import read_json

    frame = predict_split(run_dir, split=split, out=out, data_dir=data_dir)
    ranking_key = read_json(run_dir / "model.json").get("ranking_key", "expected_watch_s")
    console.print(f"[green]wrote[/] {out} ({frame.height} rows); items are ordered by rank_score (= {ranking_key}); "
                  "expected_watch_s is the served expected watch time")


# ------------------------------------------------------------------------- simulate/experiments

@app.command("simulate")
@user_errors
def simulate_cmd(
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to write (ytdnn layout).")],
    config: ConfigOpt = None,
    click_rate: Annotated[Optional[float], typer.Option(help="Target average click rate.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Scale set shape (10 impressions per user, 50 per video): "
                                                       "scale-1m | scale-10m | scale-20m | scale-50m; written as "
                                                       "Parquet shards in bounded memory.")] = None,
    impressions: Annotated[Optional[int], typer.Option(help="With --preset: this many impressions instead.")] = None,
    shard_rows: Annotated[int, typer.Option(help="Rows per impressions/part-*.parquet shard (--preset).")
                          ] = 1_000_000,
    set_: SetOpt = None,
) -> None:
    """Write a synthetic impression log with known ground truth (E[T|x], p(x))."""
    from ytdnn.data.schema import write_dataset
    from ytdnn.data.simulator import SCALE_PRESETS, SimulatorConfig, scale_config, simulate, simulate_to_parquet

    overrides = _overrides({"target_click_rate": click_rate, "seed": seed}, set_)
    if preset is not None or impressions is not None:
        if preset is not None and preset not in SCALE_PRESETS:
            raise typer.BadParameter(f"unknown preset {preset!r}; expected one of {sorted(SCALE_PRESETS)}",
                                     param_hint="--preset")
        n_impressions = impressions or SCALE_PRESETS[preset or "scale-50m"]
        shape = scale_config(n_impressions)  # sets the sizes; --set / --seed / --click-rate still apply
        sizes = [f"{key}={getattr(shape, key)}" for key in ("n_users", "n_videos", "n_days",
                                                             "impressions_per_user_day")]
        cfg = SimulatorConfig.load(config, sizes + overrides)
        simulate_to_parquet(cfg, out, shard_rows=shard_rows)
        console.print(f"[green]wrote[/] {out}: ~{n_impressions:,} impressions, {cfg.n_users:,} users, "
                      f"{cfg.n_videos:,} videos in Parquet shards of {shard_rows:,} rows")
        return
    cfg = SimulatorConfig.load(config, overrides)
    data = simulate(cfg)
    write_dataset(data, out)
    console.print(f"[green]wrote[/] {out}: {data.summary()}")


@experiment_app.command("wlr-methods")
@user_errors
def experiment_wlr_methods(
    out: Annotated[Path, typer.Option("--out", help="Where to write the report and plots.")] = Path("reports"),
    quick: Annotated[bool, typer.Option(help="A small version that finishes in minutes.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Every WLR training method at every click rate (simulator) and on KuaiRand, over seeds."""
    from ytdnn.experiments.wlr_methods import WlrMethodsConfig, run_wlr_methods

    cfg = WlrMethodsConfig.load(config, _overrides({"quick": quick}, set_))
    run_wlr_methods(cfg, out)


@experiment_app.command("ablation")
@user_errors
def experiment_ablation(run_dir: Annotated[Path, typer.Argument(help="A ranker run folder.")]) -> None:
    """Retrain the run's ranker by feature group (ids; + video stats; + history; + profile; full)."""
    from ytdnn.evaluation.ranker_eval import evaluate_ranker_run, format_ranker_table
    from ytdnn.experiments.ablation import run_feature_ablation

    run_feature_ablation(run_dir)
    typer.echo(format_ranker_table(evaluate_ranker_run(run_dir)))
    console.print(f"[green]ablation written:[/] {run_dir / 'ablation.json'} (and report.md)")


# ------------------------------------------------------------------------------- index/serving

@index_app.command("build")
@user_errors
def index_build(
    run_dir: Annotated[Path, typer.Argument(help="A retrieval run folder.")],
    kind: Annotated[str, typer.Option(help="exact | hnsw | ivf")] = "hnsw",
) -> None:
    """Build a nearest-neighbour index over the run's item vectors, inside the run folder."""
    from ytdnn.training.retrieval import build_index

    path = build_index(run_dir, kind)
    console.print(f"[green]index written:[/] {path}")


@app.command("bundle")
@user_errors
def bundle_cmd(
    run_dirs: Annotated[list[Path], typer.Argument(help="The ranker and retrieval run folders.")],
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to write.")],
) -> None:
    """Package both stages for serving (ONNX ranker, index, tables, manifest with SHA-256)."""
    from ytdnn.serving.bundle import build_bundle

    path = build_bundle(run_dirs, out)
    console.print(f"[green]bundle written:[/] {path}")


@app.command("serve")
@user_errors
def serve_cmd(
    bundle_dir: Annotated[Path, typer.Argument(help="A bundle folder (or a folder with a `current` pointer).")],
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", min=1, max=65535)] = 8000,
    config: ConfigOpt = None,
) -> None:
    """Serve recommendations over HTTP (FastAPI on uvicorn)."""
    _check_port_free(host, port)
    from ytdnn.serving.app import serve

    serve(bundle_dir, host=host, port=port, config_path=config)


# -------------------------------------------------------------------------------------- main job

@app.command("run")
@user_errors
def run_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for all the main job's runs.")] = Path("runs/main"),
    data_dir: DataDirOpt = None,
    serve: Annotated[bool, typer.Option(help="Start the service at the end.")] = True,
    port: Annotated[int, typer.Option(help="Port of the service.", min=1, max=65535)] = 8000,
    ablation: Annotated[bool, typer.Option(help="Also run the ranker's feature-group ablation.")] = True,
) -> None:
    """The main job: train and evaluate the system on KuaiRand-Pure, then serve it."""
    from ytdnn.pipeline import run_main_job

    if serve:
        _check_port_free("127.0.0.1", port)  # fail now, not after minutes of training
    run_main_job(out, data_dir=data_dir, serve=serve, port=port, ablation=ablation)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
