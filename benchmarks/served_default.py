"""Issue 3's KuaiRand requirements of the served default, measured from `ytdnn predict` files.

For each pair of run folders (the default objective, plain WLR; same seed), reads
``<run>/pred.parquet`` (``ytdnn predict <run> --split test --out <run>/pred.parquet``), joins the
test impressions' labels (the predict file is in the log's order of the test rows) and prints:

- mean ratio of ``expected_watch_s`` to observed T (target 0.95–1.05);
- relative calibration error over equal-count deciles of ``expected_watch_s`` (target ≤ 0.10);
- weighted per-user loss (pages = (user_id, date)) of ``rank_score`` — the column that orders
  items — and its gap to plain WLR's (target ≤ +0.005); also of ranking by ``expected_watch_s``.

    .venv/bin/python benchmarks/served_default.py runs/default_s0:runs/wlr_s0 [more pairs ...]

Data: KuaiRand (Chongming Gao et al., CIKM 2022), CC BY-SA 4.0.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl

from ytdnn.data.sources import load_dataset
from ytdnn.evaluation.metrics import calibration, ranking_metrics
from ytdnn.evaluation.ranker_eval import label_predictions, read_run_config
from ytdnn.training.ranker import RankerError, page_ids


def _labelled(run: Path, impressions: pl.DataFrame) -> pl.DataFrame:
    path = run / "pred.parquet"
    try:
        return label_predictions(pl.read_parquet(path), impressions, source=str(path))
    except RankerError as exc:
        raise SystemExit(str(exc)) from None


def measure(frame: pl.DataFrame) -> dict[str, float]:
    pages = page_ids(frame)
    users, clicks, watch = (frame[c].to_numpy() for c in ("user_id", "is_click", "watch_time_s"))
    served = frame["expected_watch_s"].to_numpy()
    cal = calibration(served, watch)
    ranked = ranking_metrics(pages, users, clicks, watch, frame["rank_score"].to_numpy())
    by_served = ranking_metrics(pages, users, clicks, watch, served)
    return {"mean_ratio": cal["mean_ratio"], "rel_cal_err": cal["relative_calibration_error"],
            "wpu": ranked["weighted_per_user_loss"], "xauc": ranked["xauc"],
            "wpu_by_served": by_served["weighted_per_user_loss"], "xauc_by_served": by_served["xauc"]}


def main(pairs: list[str]) -> None:
    rows = []
    impressions = None
    for pair in pairs:
        default_run, wlr_run = (Path(p) for p in pair.split(":"))
        if impressions is None:
            config = read_run_config(default_run)
            impressions = load_dataset(config.data.dataset, config.data.data_dir).impressions
        d, w = measure(_labelled(default_run, impressions)), measure(_labelled(wlr_run, impressions))
        rows.append((default_run.name, d, w))
        print(f"{default_run.name}: mean ratio {d['mean_ratio']:.4f}, rel. cal. err {d['rel_cal_err']:.4f}, "
              f"wpu {d['wpu']:.4f} (WLR {w['wpu']:.4f}, gap {d['wpu'] - w['wpu']:+.4f}), XAUC {d['xauc']:.4f} "
              f"(WLR {w['xauc']:.4f}); ranked by expected_watch_s: wpu {d['wpu_by_served']:.4f}, "
              f"XAUC {d['xauc_by_served']:.4f}; WLR served mean ratio {w['mean_ratio']:.3f}, "
              f"rel. cal. err {w['rel_cal_err']:.3f}")
    if len(rows) > 1:
        for key in ("mean_ratio", "rel_cal_err", "wpu", "wpu_by_served", "xauc"):
            values = np.array([d[key] for _, d, _ in rows])
            print(f"  {key}: {values.mean():.4f} ± {values.std(ddof=1):.4f} over {len(rows)} seeds")
        gaps = np.array([d["wpu"] - w["wpu"] for _, d, w in rows])
        print(f"  wpu gap to WLR: {gaps.mean():+.4f} ± {gaps.std(ddof=1):.4f}")
    print("Data: KuaiRand (Chongming Gao et al., CIKM 2022), CC BY-SA 4.0.")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
