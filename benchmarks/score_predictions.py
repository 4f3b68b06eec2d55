"""Score a ``ytdnn predict`` parquet against the log: weighted per-user loss, XAUC, XAUC clicked, GAUC.

Usage::

    .venv/bin/python benchmarks/score_predictions.py runs/x/p.parquet [--column expected_watch_s]
        [--max-date 20220504] [--name x] [--out reports/scores.jsonl]

The labels (is_click, watch_time_s) are read from the KuaiRand log and matched to the prediction
rows by (user_id, video_id, time_ms, date, hourmin) in order (``predict`` writes one row per
impression in the log's order, duplicates included). Pages for the weighted per-user loss are
(user_id, date), as ``ytdnn evaluate`` defines them. Every score column present (``expected_watch_s``,
``odds``, ``p_click``) is scored.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl

from ytdnn.data.sources import load_dataset
from ytdnn.evaluation.metrics import ranking_metrics
from ytdnn.evaluation.ranker_eval import label_predictions
from ytdnn.training.ranker import RankerError, page_ids

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", type=Path)
    parser.add_argument("--max-date", type=int, default=None, help="score only rows on or before this date")
    parser.add_argument("--name", default=None)
    parser.add_argument("--out", type=Path, default=None, help="append a JSON line here")
    args = parser.parse_args()
    predictions = pl.read_parquet(args.predictions)
    try:
        frame = label_predictions(predictions, load_dataset("kuairand-pure").impressions,
                                  source=str(args.predictions))
    except RankerError as exc:
        raise SystemExit(str(exc)) from None
    if args.max_date is not None:
        frame = frame.filter(pl.col("date") <= args.max_date)
    watch = frame["watch_time_s"].to_numpy()
    is_click = frame["is_click"].to_numpy()
    pages, users = page_ids(frame), frame["user_id"].to_numpy()
    result = {"name": args.name or str(args.predictions), "rows": frame.height,
              "dates": [int(frame["date"].min()), int(frame["date"].max())]}
    for column in ("expected_watch_s", "odds", "p_click"):
        if column not in frame.columns:
            continue
        score = frame[column].to_numpy().astype(np.float64)
        metrics = ranking_metrics(pages, users, is_click, watch, score)
        result[column] = {"wpu": metrics["weighted_per_user_loss"], "xauc": metrics["xauc"],
                          "xauc_clicked": metrics["xauc_clicked"], "gauc": metrics["gauc"],
                          "mean_ratio": float(score.mean() / watch.mean())}
    line = json.dumps(result)
    print(line)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()
