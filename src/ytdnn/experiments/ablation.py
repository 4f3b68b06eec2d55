"""Ablation of the ranker by feature group: the same network, objective and training, fewer inputs.

Rows (cumulative, as the issue asks): ids only; + video statistics; + user history; + profile
fields; the full set (+ context). Each row is trained with the run's own config (only
``features.groups`` changes, no click baseline) — its own early stopping on the validation days
and, for a refitted run, its own refit on every training day — and scored on the test days
exactly as ``ytdnn evaluate`` scores the run. Written to ``RUN_DIR/ablation.json`` and folded into
``report.md`` by the next ``ytdnn evaluate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ytdnn.data.schema import InteractionData
from ytdnn.data.sources import load_dataset
from ytdnn.evaluation.metrics import ranking_metrics
from ytdnn.evaluation.ranker_eval import read_run_config, split_frames
from ytdnn.training.ranker import load_ranker, page_ids, train_ranker
from ytdnn.utils.io import atomic_write_json, read_json

ABLATION_ROWS: list[tuple[str, list[str]]] = [
    ("ids only", ["ids"]),
    ("+ video statistics", ["ids", "video_stats"]),
    ("+ user history", ["ids", "video_stats", "history"]),
    ("+ profile fields", ["ids", "video_stats", "history", "profile"]),
    ("full set (+ context)", ["ids", "video_stats", "history", "profile", "context"]),
]


def run_feature_ablation(run_dir: str | Path, *, data: InteractionData | None = None,
                         rows: list[tuple[str, list[str]]] | None = None) -> dict[str, Any]:
    """Train one ranker per feature-group set into ``RUN_DIR/ablation/<i>`` and score the test days."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if data is None:
        data = load_dataset(config.data.dataset, config.data.data_dir, on_bad_rows=config.data.on_bad_rows)
    results = []
    full_groups = sorted(config.features.groups)
    for index, (name, groups) in enumerate(rows or ABLATION_ROWS):
        if sorted(groups) == full_groups:
            model_dir = run_dir  # the run itself is this row: no need to train it again
        else:
            model_dir = run_dir / "ablation" / f"{index}"
            row_config = config.merged({"features.groups": groups, "baselines.click": False})
            train_ranker(row_config, model_dir, data=data)
        ranker = load_ranker(model_dir)
        _, _, test = split_frames(config, ranker, data)
        scores = ranker.score_frame(test, data.users, data.videos)
        metrics = ranking_metrics(page_ids(test), test["user_id"].to_numpy(), test["is_click"].to_numpy(),
                                  test["watch_time_s"].to_numpy(), scores[ranker.ranking_key],
                                  scores["expected_watch_s"])
        training = read_json(model_dir / "training.json")
        results.append({"name": name, "groups": groups, "model_dir": str(model_dir.relative_to(run_dir)),
                        "weighted_per_user_loss": metrics["weighted_per_user_loss"], "xauc": metrics["xauc"],
                        "xauc_clicked": metrics["xauc_clicked"], "gauc": metrics["gauc"],
                        "mean_ratio": metrics["mean_ratio"], "best_epoch": training.get("selection", training).get("best_epoch")})
    payload = {"objective": config.objective.name, "rows": results}
    atomic_write_json(run_dir / "ablation.json", payload)
    return payload
