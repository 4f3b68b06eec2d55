r"""Evaluate a ranker run on the test days, with its baselines, and write the report.

Everything here is scored the same way, on the test impressions (date >= test_start), with the
definitions of ``docs/metrics.md`` ("s is the score being judged: for ranking metrics, whatever
the model ranks by; for calibration, expected_watch_s"): the ranking metrics (weighted per-user
loss, XAUC, XAUC clicked, XGAUC, GAUC) score the objective's **ranking key**, the calibration
metrics (mean ratio, relative calibration error, RMSE, MAE, the reliability plot) its served
``expected_watch_s``.

- the ranker. With the default ``wlr-corrected`` it ranks by the WLR odds e^(Wx+b) and serves
  c · odds · (1 − p̂); for honesty its row also carries the weighted per-user loss and the XAUCs
  of ranking by the served value itself (``by_expected_watch_s_*``) and the odds' own mean ratio.
  With plain ``wlr`` both are e^(Wx+b);
- ``click``: the unweighted click model with the same network (trained by the same job), ranked
  by p̂ and served as p̂ · mean(T | click);
- ``popularity``: each video's mean watch time per impression in train (unseen videos get the
  global mean).

**Why e^(Wx+b) over-predicts here.** For weights T (clicked) and 1 (unclicked) the optimum odds
are E[T|x] / (1 − p(x)), E[T|x] counting unclicked impressions as 0. The report prints beside
the measured mean ratio the factor this predicts from the test data itself, per video:

.. math:: \text{expected ratio} = \frac{\sum_v n_v \bar T_v / (1 - \hat p_v)}{\sum_v n_v \bar T_v}

with n_v, T̄_v, p̂_v the video's test impressions, mean T and (smoothed) click rate — larger than
the global 1/(1 − CTR) because high-CTR videos carry the largest factor.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ytdnn.data.schema import InteractionData
from ytdnn.data.datadir import resolve_data_dir
from ytdnn.data.sources import load_dataset
from ytdnn.data.split import DateSplit
from ytdnn.evaluation.metrics import ranking_metrics
from ytdnn.training.ranker import (CLICK_BASELINE, CONFIG_FILE, LoadedRanker, RankerConfig, RankerError,
                                   load_ranker, page_ids)
from ytdnn.utils.io import atomic_write_json, atomic_write_text, atomic_write_with, read_json

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
PLOT_FILE = "calibration.png"
CITATION = ("Data: KuaiRand (Chongming Gao et al., \"KuaiRand: An Unbiased Sequential Recommendation Dataset "
            "with Randomly Exposed Videos\", CIKM 2022), CC BY-SA 4.0.")
PREDICTION_COLUMNS = ["user_id", "video_id", "time_ms", "date", "hourmin"]


def read_run_config(run_dir: str | Path, data_dir: str | Path | None = None) -> RankerConfig:
    """The run's resolved config; ``data_dir`` (the data moved, or another copy) replaces the one it
    recorded."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RankerError(f"{run_dir}: not a ranker run folder (no {CONFIG_FILE})")
    config = RankerConfig.read(path)
    if data_dir is not None:
        config = config.merged({"data.data_dir": str(resolve_data_dir(data_dir))})
    return config


def split_frames(config: RankerConfig, ranker: LoadedRanker,
                 data: InteractionData | None = None) -> tuple[InteractionData, pl.DataFrame, pl.DataFrame]:
    """(data, train rows, test rows), both with history columns computed over the whole log.

    History is causal (strictly earlier events), so a test impression sees the training days and
    the earlier test events, as a server would — never its own or later events.
    """
    if data is None:
        data = load_dataset(config.data.dataset, config.data.data_dir, on_bad_rows=config.data.on_bad_rows)
    split = DateSplit(train_end=config.data.train_end, test_start=config.data.test_start,
                      validation_days=config.data.validation_days)
    needed = data.impressions.filter(split.train_mask() | split.test_mask())
    with_history = ranker.pipeline.add_history(needed, data.videos)
    train = with_history.filter(split.train_mask())
    test = with_history.filter(split.test_mask()).sort("row_id")
    if test.height == 0:
        raise RankerError(f"data: no test impressions on or after {config.data.test_start}")
    return data, train, test


def popularity_scores(train: pl.DataFrame, test: pl.DataFrame) -> np.ndarray:
    """Per-video mean watch time per impression in train; the global mean for unseen videos."""
    global_mean = float(train["watch_time_s"].mean())
    per_video = train.group_by("video_id").agg(pl.col("watch_time_s").mean().alias("popularity"))
    scored = test.select("video_id").join(per_video, on="video_id", how="left", maintain_order="left")
    return scored["popularity"].fill_null(global_mean).to_numpy().astype(np.float64)


def expected_wlr_ratio(test: pl.DataFrame, prior_strength: float = 5.0) -> dict[str, float]:
    """The over-prediction factor of plain WLR implied by the data: overall and per video (see module doc)."""
    ctr = float(test["is_click"].mean())
    per_video = test.group_by("video_id").agg(
        pl.len().alias("n"), pl.col("watch_time_s").mean().alias("mean_t"), pl.col("is_click").sum().alias("clicks"))
    # Shrink each video's click rate toward the overall one so 1/(1-p) stays finite for all-click videos.
    p_hat = (per_video["clicks"].to_numpy() + prior_strength * ctr) / (per_video["n"].to_numpy() + prior_strength)
    n = per_video["n"].to_numpy().astype(np.float64)
    mean_t = per_video["mean_t"].to_numpy()
    return {"click_rate": ctr, "global": 1.0 / (1.0 - ctr),
            "per_video": float(np.sum(n * mean_t / (1.0 - p_hat)) / np.sum(n * mean_t))}


BY_SERVED_KEYS = ("weighted_per_user_loss", "xauc", "xauc_clicked", "xgauc", "gauc")
"""Ranking metrics also reported for ranking by ``expected_watch_s`` when the model ranks by another key."""


def _metrics_for(test: pl.DataFrame, pages: np.ndarray, score: np.ndarray,
                 served: np.ndarray | None) -> dict[str, Any]:
    return ranking_metrics(pages, test["user_id"].to_numpy(), test["is_click"].to_numpy(),
                           test["watch_time_s"].to_numpy(), score, served)


def scored_metrics(test: pl.DataFrame, pages: np.ndarray, scores: dict[str, np.ndarray],
                   ranking_key: str) -> dict[str, Any]:
    """Metrics of one model's scores of ``test``: ranking metrics of ``scores[ranking_key]``,
    calibration metrics of ``scores["expected_watch_s"]`` (docs/metrics.md), ``ranking_key``; when
    the model ranks by another key, also ``by_expected_watch_s_*`` (the ranking metrics of ranking
    by the served value itself); when it has ``odds`` that are not its served value, their
    ``odds_mean_ratio`` (the paper's plain e^(Wx+b) read of the same model)."""
    served = scores["expected_watch_s"]
    out = _metrics_for(test, pages, scores[ranking_key], served) | {"ranking_key": ranking_key}
    if ranking_key != "expected_watch_s":
        # The odds are the cheaper order for the weighted per-user loss (see WLRCorrectedObjective);
        # what ranking by the served value would give is reported beside, for honesty.
        by_served = _metrics_for(test, pages, served, None)
        for key in BY_SERVED_KEYS:
            out[f"by_expected_watch_s_{key}"] = float(by_served[key])
    if "odds" in scores and not np.array_equal(scores["odds"], served):
        out["odds_mean_ratio"] = float(scores["odds"].mean() / test["watch_time_s"].mean())
    return out


def evaluate_ranker_run(run_dir: str | Path, *, data: InteractionData | None = None,
                        data_dir: str | Path | None = None) -> dict[str, Any]:
    """Score the test days with the run's ranker and baselines; write metrics.json, report.md and the plot."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir, data_dir)
    ranker = load_ranker(run_dir)
    data, train, test = split_frames(config, ranker, data)
    pages = page_ids(test)

    methods: dict[str, dict[str, Any]] = {}
    served: dict[str, np.ndarray] = {}
    scores = ranker.score_frame(test, data.users, data.videos)
    main_name = f"ranker ({ranker.objective.name})"
    methods[main_name] = scored_metrics(test, pages, scores, ranker.ranking_key)
    served[main_name] = scores["expected_watch_s"]

    click_dir = run_dir / "baselines" / CLICK_BASELINE
    if (click_dir / "model.json").is_file():
        click = load_ranker(click_dir)
        click_scores = click.score_batch(ranker.pipeline.transform(test, data.users, data.videos)) \
            if click.pipeline.layout.to_dict() == ranker.pipeline.layout.to_dict() \
            else click.score_frame(test, data.users, data.videos)
        methods[CLICK_BASELINE] = _metrics_for(test, pages, click_scores[click.ranking_key],
                                               click_scores["expected_watch_s"]) | {"ranking_key": click.ranking_key}
        served[CLICK_BASELINE] = click_scores["expected_watch_s"]
    popularity = popularity_scores(train, test)
    methods["popularity"] = _metrics_for(test, pages, popularity, popularity) | {"ranking_key": "expected_watch_s"}
    served["popularity"] = popularity

    metrics: dict[str, Any] = {
        "model": main_name,
        "objective": ranker.objective.name,
        "ranking_key": ranker.ranking_key,
        "watch_scale": getattr(ranker.objective, "watch_scale", None),
        "test_rows": test.height,
        "test_dates": [int(test["date"].min()), int(test["date"].max())],
        "mean_watch_s": float(test["watch_time_s"].mean()),
        "expected_wlr_ratio": expected_wlr_ratio(test),
        "methods": methods,
        "citation": CITATION,
    }
    ablation_path = run_dir / "ablation.json"
    if ablation_path.is_file():
        metrics["ablation"] = read_json(ablation_path)
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    write_reliability_plot(run_dir / PLOT_FILE, served, test["watch_time_s"].to_numpy())
    atomic_write_text(run_dir / REPORT_FILE, render_report(metrics, config))
    return metrics


def write_reliability_plot(path: Path, served: dict[str, np.ndarray], watch_time_s: np.ndarray) -> None:
    """Mean prediction against mean observed T per equal-count decile, with the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ytdnn.evaluation.metrics import calibration

    fig, ax = plt.subplots(figsize=(6, 5), dpi=110)
    upper = 0.0
    for name, prediction in served.items():
        bins = calibration(prediction, watch_time_s)["bins"]
        xs = [b["mean_prediction"] for b in bins]
        ys = [b["mean_watch_s"] for b in bins]
        upper = max(upper, max(xs), max(ys))
        ax.plot(xs, ys, marker="o", label=name)
    ax.plot([0, upper], [0, upper], color="grey", linestyle="--", label="perfect calibration")
    ax.set_xlabel("mean expected_watch_s in decile (s)")
    ax.set_ylabel("mean observed watch time T (s)")
    ax.set_title("Reliability by decile of the prediction (test days)")
    ax.legend(fontsize=8)
    fig.text(0.01, 0.005, "Data: KuaiRand (Gao et al., CIKM 2022), CC BY-SA 4.0", fontsize=6, color="grey")
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
    plt.close(fig)


TABLE_COLUMNS = [("ranking_key", "ranked by"), ("weighted_per_user_loss", "wpu loss ↓"), ("xauc", "XAUC"), ("xauc_clicked", "XAUC clicked"),
                 ("xgauc", "XGAUC"), ("gauc", "GAUC"), ("rmse", "RMSE s"), ("mae", "MAE s"),
                 ("mean_ratio", "mean ratio"), ("relative_calibration_error", "rel. cal. err")]


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_report(metrics: dict[str, Any], config: RankerConfig | None = None) -> str:
    ratio = metrics["expected_wlr_ratio"]
    lines = [
        "# Ranker evaluation", "",
        f"Test days {metrics['test_dates'][0]}–{metrics['test_dates'][1]}: {metrics['test_rows']} impressions, "
        f"mean watch time {metrics['mean_watch_s']:.2f} s per impression. Model: {metrics['model']}.", "",
        "| method | " + " | ".join(label for _, label in TABLE_COLUMNS) + " |",
        "|---|" + "---|" * len(TABLE_COLUMNS),
    ]
    for name, values in metrics["methods"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(values.get(key)) for key, _ in TABLE_COLUMNS) + " |")
    lines += [
        "",
        "## Calibration of the served expected watch time", "",
        "![reliability by decile](calibration.png)", "",
        f"Click rate on the test days: {ratio['click_rate']:.3f}. Plain WLR learns odds = E[T|x]/(1 − p(x)), "
        f"so its e^(Wx+b) is expected to over-predict by 1/(1 − CTR) = {ratio['global']:.2f}× overall and by "
        f"{ratio['per_video']:.2f}× when each video's own click rate is used (high-CTR videos carry the largest "
        f"factor). Measured mean ratio of the served value: "
        f"{_fmt(next(iter(metrics['methods'].values())).get('mean_ratio'))}.", "",
    ]
    lines += _ranking_key_note(metrics)
    if "ablation" in metrics:
        lines += render_ablation(metrics["ablation"])
    lines += ["", CITATION, ""]
    return "\n".join(lines)


def _ranking_key_note(metrics: dict[str, Any]) -> list[str]:
    """What the ranker ranks by and serves, and the cost of ranking by the served value instead."""
    main = metrics["methods"].get(metrics["model"], {})
    if "by_expected_watch_s_weighted_per_user_loss" not in main:
        return []
    scale = metrics.get("watch_scale")
    scale_text = f" × the held-out calibration constant c = {scale:.4f}" if scale is not None else ""
    return [
        f"Ranking metrics score the ranker's ranking key `{main['ranking_key']}`, calibration metrics its served "
        f"`expected_watch_s` (odds · (1 − p̂){scale_text}). Ranking by the served value instead would give "
        f"weighted per-user loss {_fmt(main['by_expected_watch_s_weighted_per_user_loss'])} "
        f"(vs {_fmt(main['weighted_per_user_loss'])}), XAUC {_fmt(main['by_expected_watch_s_xauc'])} "
        f"(vs {_fmt(main['xauc'])}), XAUC clicked {_fmt(main['by_expected_watch_s_xauc_clicked'])} "
        f"(vs {_fmt(main['xauc_clicked'])}). The odds alone serve {_fmt(main.get('odds_mean_ratio'))}× the "
        "observed mean.", ""]


def render_ablation(ablation: dict[str, Any]) -> list[str]:
    lines = ["## Ablation by feature group", "",
             "Each row trains the same network and objective with only the listed feature groups.", "",
             "| feature groups | wpu loss ↓ | XAUC | XAUC clicked | epochs |", "|---|---|---|---|---|"]
    for row in ablation.get("rows", []):
        lines.append(f"| {row['name']} | {_fmt(row['weighted_per_user_loss'])} | {_fmt(row['xauc'])} | "
                     f"{_fmt(row['xauc_clicked'])} | {row.get('best_epoch', 'n/a')} |")
    return lines + [""]


def format_ranker_table(metrics: dict[str, Any]) -> str:
    """A Rich table of the methods, rendered to text for the terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Test days {metrics['test_dates'][0]}–{metrics['test_dates'][1]} "
                        f"({metrics['test_rows']} impressions)")
    table.add_column("method")
    for _, label in TABLE_COLUMNS:
        table.add_column(label, justify="right")
    for name, values in metrics["methods"].items():
        table.add_row(name, *(_fmt(values.get(key)) for key, _ in TABLE_COLUMNS))
    buffer = io.StringIO()
    Console(file=buffer, width=160, force_terminal=False).print(table)
    for line in _ranking_key_note(metrics):
        if line:
            buffer.write(line.replace("`", "") + "\n")
    ratio = metrics["expected_wlr_ratio"]
    buffer.write(f"WLR theory: odds = E[T]/(1-p); expected over-prediction {ratio['global']:.2f}x (global CTR), "
                 f"{ratio['per_video']:.2f}x (per-video CTR).\n{CITATION}\n")
    return buffer.getvalue()


PREDICTION_KEYS = ["user_id", "video_id", "time_ms", "date", "hourmin"]
"""The impression keys a ``predict`` file carries, row by row in the log's order."""


def label_predictions(predictions: pl.DataFrame, impressions: pl.DataFrame, *, source: str = "predictions"
                      ) -> pl.DataFrame:
    """``predictions`` (a ``predict`` file) with ``is_click`` and ``watch_time_s`` from the log.

    ``predict`` writes one row per impression of its dates in the log's order, duplicates kept, so
    the labels are the log's rows of the same dates in ``row_id`` order; the impression keys must
    match row for row (else a :class:`RankerError` naming ``source``)."""
    dates = predictions["date"]
    log = impressions.filter(pl.col("date").is_between(dates.min(), dates.max())).sort("row_id")
    keys = [key for key in PREDICTION_KEYS if key in predictions.columns]
    if log.height != predictions.height or not log.select(keys).cast(predictions.select(keys).schema).equals(
            predictions.select(keys)):
        raise RankerError(f"{source}: rows do not match the log's rows for dates {dates.min()}..{dates.max()} "
                          f"({predictions.height} vs {log.height}); expected a `ytdnn predict` file of this log")
    return predictions.with_columns(log["is_click"], log["watch_time_s"])


def predict_split(run_dir: str | Path, *, split: str = "test", out: str | Path,
                  data: InteractionData | None = None, data_dir: str | Path | None = None) -> pl.DataFrame:
    """One row per impression of ``split`` (test | train | all), in the log's order, duplicates kept.

    Columns: the impression keys, ``expected_watch_s`` (the served, calibrated expected watch time),
    ``logit`` (head 0), ``odds`` and ``p_click`` where the objective has them, and ``rank_score`` —
    the value that orders items (a copy of the objective's ranking key: ``odds`` for the default
    ``wlr-corrected``, ``expected_watch_s`` for plain ``wlr``, ``p_click`` for the click models;
    ``ytdnn predict`` prints which). Sort by ``rank_score`` descending to rank.
    """
    if split not in ("test", "train", "all"):
        raise ValueError(f"split must be 'test', 'train' or 'all', got {split!r}")
    run_dir = Path(run_dir)
    config = read_run_config(run_dir, data_dir)
    ranker = load_ranker(run_dir)
    data, train, test = split_frames(config, ranker, data)
    frame = {"test": test, "train": train, "all": pl.concat([train, test])}[split].sort("row_id")
    scores = ranker.score_frame(frame, data.users, data.videos)
    columns = {"expected_watch_s": scores["expected_watch_s"], "logit": scores["logit"]}
    if "odds" in scores:
        columns["odds"] = scores["odds"]
    if "p_click" in scores:
        columns["p_click"] = scores["p_click"]
    columns["rank_score"] = scores[ranker.ranking_key]
    result = frame.select(PREDICTION_COLUMNS).with_columns([pl.Series(k, v) for k, v in columns.items()])
    atomic_write_with(out, lambda tmp: result.write_parquet(tmp), suffix=".parquet")
    return result
