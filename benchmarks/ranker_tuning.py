"""Ranker tuning harness: many ranker settings on one feature build, metrics per epoch.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ranker_tuning.py --split backtest \
        --trial 'name=base' --trial 'name=cos train.lr_schedule=cosine' --out reports/tuning.jsonl
    # a refit on every training day (no validation day), with uniform averages of epoch ends:
    ... --swa 1+2+3+4 --trial 'name=refit data.validation_days=0 train.early_stopping_metric=val_loss \
        train.mode=min train.patience=0 train.epochs=4'

Without validation days the evaluation rows stand in as the trainer's validation set only so
that every epoch is scored: read the trajectory, never the kept epoch, then.

Each ``--trial`` is ``name=NAME`` followed by ``key=value`` overrides of the ranker config
(``train.*``, ``model.*``, ``features.*``, ``objective.*``, ``seed``; values parsed as JSON when
they parse, else kept as text). Trials that share the ``features.*`` and ``data.*`` overrides share
one feature build. Every epoch's weights are scored on the validation day (the one the job
early-stops on) *and* on an evaluation span, so the whole trajectory is visible; the row the job
would keep is the early-stopping epoch. Results append to ``--out`` as JSON lines.

Splits (``--split``):

- ``backtest`` (for choosing settings): the test setup moved 4 days back. Train on the days up to
  2022-04-29, early-stop on 2022-04-30, evaluate on 2022-05-01..04 — the same gaps as the real
  split (validation adjacent to the training days, evaluation 1–4 days after it) and no test day
  is read;
- ``test`` (for confirming): the fixed split, train ≤ 2022-05-04 (validation 2022-05-04), test
  2022-05-05..08. Scores equal those of ``ytdnn predict`` on the same run (same pipeline, same
  history over train + test, same weights).

Metrics per span: weighted per-user loss (pages = user × day), XAUC, XAUC among clicked, GAUC,
mean ratio of the served value to the observed watch time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from ytdnn.data.sources import load_dataset
from ytdnn.data.split import DateSplit
from ytdnn.evaluation.metrics import gauc, weighted_per_user_loss, xauc
from ytdnn.features.layout import RankingBatch
from ytdnn.features.ranking import RankingFeaturePipeline
from ytdnn.models.ranking import RankingNet
from ytdnn.training.losses import make_objective
from ytdnn.training.ranker import RankerConfig, page_ids
from ytdnn.training.trainer import Trainer, predict_outputs
from ytdnn.utils.seed import seed_everything

SPLITS = {"backtest": (20220430, 20220501, 20220504), "test": (20220504, 20220505, None)}


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_trial(text: str) -> tuple[str, dict[str, Any]]:
    name, overrides = None, {}
    for token in text.split():
        key, _, value = token.partition("=")
        if key == "name":
            name = value
        else:
            overrides[key] = _parse_value(value)
    if not name:
        raise SystemExit(f"trial {text!r}: needs name=NAME")
    return name, overrides


def _concat(a: RankingBatch, b: RankingBatch) -> RankingBatch:
    return RankingBatch(torch.cat([a.categorical, b.categorical]),
                        [torch.cat([x, y]) for x, y in zip(a.multivalent, b.multivalent, strict=True)],
                        torch.cat([a.dense, b.dense]), torch.cat([a.is_click, b.is_click]),
                        torch.cat([a.watch_time_s, b.watch_time_s]))


def span_metrics(frame: pl.DataFrame, score: np.ndarray, served: np.ndarray) -> dict[str, float]:
    is_click = frame["is_click"].to_numpy()
    watch = frame["watch_time_s"].to_numpy()
    clicked = is_click.astype(bool)
    return {"wpu": weighted_per_user_loss(page_ids(frame), is_click, watch, score),
            "xauc": xauc(watch, score), "xauc_clicked": xauc(watch[clicked], score[clicked]),
            "gauc": gauc(frame["user_id"].to_numpy(), is_click, score),
            "mean_ratio": float(served.mean() / watch.mean())}


class Build:
    """One feature build: the fitted pipeline and the train / validation / evaluation tensors."""

    def __init__(self, data: Any, config: RankerConfig, split_name: str) -> None:
        train_end, eval_start, eval_end = SPLITS[split_name]
        split = DateSplit(train_end=train_end, test_start=eval_start, test_end=eval_end,
                          validation_days=config.data.validation_days)
        started = time.perf_counter()
        pipeline = RankingFeaturePipeline(config.features)
        needed = data.impressions.filter(split.train_mask() | split.test_mask())
        with_history = pipeline.add_history(needed, data.videos)
        train_part = with_history.filter(split.train_mask())
        validation_dates = split.validation_dates(train_part)
        is_validation = pl.col("date").is_in(validation_dates)
        fit_frame = train_part.filter(~is_validation)
        self.validation_frame = train_part.filter(is_validation)
        self.eval_frame = with_history.filter(split.test_mask()).sort("row_id")
        pipeline.fit(fit_frame, data.users, data.videos)
        self.pipeline = pipeline
        self.train = pipeline.transform(fit_frame, data.users, data.videos)
        self.validation = pipeline.transform(self.validation_frame, data.users, data.videos)
        self.evaluation = pipeline.transform(self.eval_frame, data.users, data.videos)
        # Without validation days (a refit on every training day) the evaluation rows stand in as
        # the trainer's "validation" only so that every epoch gets scored; read the trajectory
        # (patience=0), never the kept epoch, in that case.
        self.both = _concat(self.validation, self.evaluation) if len(self.validation) else self.evaluation
        self.n_validation = len(self.validation)
        self.seconds = time.perf_counter() - started
        print(f"[build {split_name}] train {len(self.train)} val {self.n_validation} ({validation_dates}) "
              f"eval {len(self.evaluation)} in {self.seconds:.0f}s", file=sys.stderr, flush=True)


def run_trial(build: Build, config: RankerConfig, save_scores: str | None = None,
              swa: list[list[int]] | None = None) -> dict[str, Any]:
    seed_everything(config.seed)
    objective = make_objective(config.objective.name, **config.objective.params)
    objective.fit(build.train.is_click, build.train.watch_time_s)
    init_bias = objective.init_bias(build.train.is_click, build.train.watch_time_s)
    torch.manual_seed(config.seed)
    network = RankingNet(build.pipeline.layout, hidden=config.model.hidden, n_heads=objective.n_heads,
                         dropout=config.model.dropout)
    network.set_output_bias(init_bias)
    key = objective.ranking_key
    per_epoch: list[dict[str, Any]] = []
    snapshots: list[dict[str, torch.Tensor]] = []
    n_val = build.n_validation

    def metric_fn(predictions: dict[str, np.ndarray]) -> dict[str, float]:
        score = np.asarray(predictions[key], dtype=np.float64)
        served = np.asarray(predictions["expected_watch_s"], dtype=np.float64)
        nan = {"wpu": math.nan, "xauc": math.nan, "xauc_clicked": math.nan, "gauc": math.nan, "mean_ratio": math.nan}
        row = {"val": span_metrics(build.validation_frame, score[:n_val], served[:n_val]) if n_val else nan,
               "eval": span_metrics(build.eval_frame, score[n_val:], served[n_val:])}
        for extra in ("odds",):  # wlr-corrected serves its odds head too
            if extra in predictions and extra != key:
                odds = np.asarray(predictions[extra], dtype=np.float64)
                row[f"eval_{extra}"] = span_metrics(build.eval_frame, odds[n_val:], odds[n_val:])
        per_epoch.append(row)
        if swa:
            snapshots.append({k: v.detach().clone() for k, v in network.state_dict().items()})
        if save_scores is not None:
            np.save(f"{save_scores}_e{len(per_epoch)}.npy", score[n_val:])
        return {"weighted_per_user_loss": row["val"]["wpu"], "gauc": row["val"]["gauc"],
                "xauc": row["val"]["xauc"]} if n_val else {}

    train = config.train.model_copy(update={"seed": config.seed if config.train.seed is None else config.train.seed,
                                            "progress": False})
    started = time.perf_counter()
    history = Trainer(network, objective, build.train, build.both, train, metric_fn).fit()
    averaged = {}
    for epochs in swa or []:  # uniform average of the chosen epochs' weights (SWA over epoch ends)
        if max(epochs) > len(snapshots):
            continue
        network.load_state_dict({k: torch.stack([snapshots[e - 1][k].float() for e in epochs]).mean(0)
                                 for k in snapshots[0]})
        with torch.no_grad():
            predictions = {k: v.numpy() for k, v in objective.predict(predict_outputs(network, build.both)).items()}
        n_before = len(per_epoch)
        metric_fn(predictions)
        averaged["+".join(map(str, epochs))] = per_epoch.pop()
        assert len(per_epoch) == n_before
    return {"best_epoch": history.best_epoch, "epochs": per_epoch, "swa": averaged,
            "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=sorted(SPLITS), default="backtest")
    parser.add_argument("--trial", action="append", required=True)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, each trial runs once per seed")
    parser.add_argument("--out", type=Path, default=Path("reports/ranker_tuning.jsonl"))
    parser.add_argument("--swa", default=None, help="epoch sets to average, e.g. '1+2,2+3+4'")
    parser.add_argument("--save-scores", default=None, help="save each epoch's evaluation scores to PREFIX_<trial>_s<seed>_e<epoch>.npy")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("kuairand-pure")
    builds: dict[str, Build] = {}
    for text in args.trial:
        name, overrides = parse_trial(text)
        for seed in [int(s) for s in args.seeds.split(",")]:
            config = RankerConfig().merged(overrides | {"seed": overrides.get("seed", seed)})
            build_key = json.dumps({k: v for k, v in overrides.items() if k.startswith(("features.", "data."))},
                                   sort_keys=True)
            if build_key not in builds:
                builds[build_key] = Build(data, config, args.split)
            prefix = f"{args.save_scores}_{name}_s{config.seed}" if args.save_scores else None
            swa = [[int(e) for e in part.split("+")] for part in args.swa.split(",")] if args.swa else None
            result = run_trial(builds[build_key], config, prefix, swa)
            best = result["epochs"][result["best_epoch"] - 1] if result["best_epoch"] else result["epochs"][-1]
            record = {"name": name, "split": args.split, "seed": config.seed, "overrides": overrides} | result
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            trajectory = " | ".join(f"{e['eval']['wpu']:.4f}/{e['eval']['xauc']:.4f} (v {e['val']['wpu']:.4f}/{e['val']['xauc']:.4f})"
                                    for e in result["epochs"])
            print(f"{name} seed {config.seed}: kept epoch {result['best_epoch']}: eval wpu {best['eval']['wpu']:.4f} "
                  f"xauc {best['eval']['xauc']:.4f} xc {best['eval']['xauc_clicked']:.4f} "
                  f"ratio {best['eval']['mean_ratio']:.2f} [{result['seconds']:.0f}s] :: {trajectory}", flush=True)
            for label, e in result["swa"].items():
                print(f"    swa {label}: eval {e['eval']['wpu']:.4f}/{e['eval']['xauc']:.4f} "
                      f"(v {e['val']['wpu']:.4f}/{e['val']['xauc']:.4f})", flush=True)
            if not all(math.isfinite(e["eval"]["wpu"]) for e in result["epochs"]):
                print(f"{name}: non-finite metric", file=sys.stderr)


if __name__ == "__main__":
    main()
