"""The issue-6 scale run: simulate → out-of-core features → one sharded training epoch, with peak memory.

    python benchmarks/scale.py --impressions 50000000 --work /data/scale50m          # the 50M set
    python benchmarks/scale.py --impressions 10000000 --work /tmp/scale10m --threads 1

Each stage runs as its own process (the CLI commands a user would run), and its wall time and
**peak RSS** come from ``wait4``'s ``ru_maxrss`` of that process (what ``/usr/bin/time -v`` reports
as "Maximum resident set size"):

1. ``ytdnn simulate --impressions N`` (Parquet shards of 1M rows; the scale shape: N/10 users, N/50 videos);
2. ``ytdnn data features LOG --out FEATURES`` (routing, history, fit, transform; see
   :mod:`ytdnn.features.streaming`);
3. one epoch of :func:`ytdnn.training.sharded.train_sharded` with the ranker's default config
   (batch 1024, sparse gradients for tables ≥ 10,000 rows), then the test-split metrics; in the
   same process, after the epoch, the **matrix-product limit** of the network at the same batch
   size (``benchmarks/training.py``'s ``matmul_limit``: bare forward and backward ``mm`` of every
   dense layer, fastest of 7 blocks), and a short ``torch.profiler`` window plus a dense-Adam
   window of ``--compare-batches`` batches each for the optimiser comparison.

The load average is printed before and after every stage: the box is shared, figures move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def run_stage(name: str, command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one stage as a child process; its wall time and peak RSS (``wait4``)."""
    before = _load()
    print(f"[{name}] {' '.join(command)}  ({before})", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"stage {name} failed with exit status {code}")
    peak_mib = usage.ru_maxrss / (1024 * 1024) if sys.platform == "darwin" else usage.ru_maxrss / 1024
    after = _load()
    print(f"[{name}] {wall:.1f}s wall, {usage.ru_utime + usage.ru_stime:.1f}s CPU, peak RSS {peak_mib:,.0f} MiB "
          f"({after})", flush=True)
    return {"command": command, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": peak_mib,
            "load_before": before, "load_after": after}


def train_stage(args: argparse.Namespace) -> None:
    """Stage 3, inside its own process: one epoch, test metrics, matmul limit, profile and dense-Adam window."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from training import _op_group, matmul_limit, ranking_layers
    from ytdnn.features.ranking import RankingFeaturePipeline
    from ytdnn.features.streaming import read_manifest
    from ytdnn.models.ranking import RankingNet
    from ytdnn.training.losses import make_objective
    from ytdnn.training.ranker import RankerConfig
    from ytdnn.training.sharded import (ShardedFeatureDataset, make_optimizer, read_labels, sparse_table_names,
                                        train_sharded)

    torch.set_num_threads(args.threads)
    config = RankerConfig()
    batch_size = config.train.batch_size
    features = Path(args.features)
    result = train_sharded(features, Path(args.run), objective_name=config.objective.name,
                           objective_params=config.objective.params, hidden=tuple(config.model.hidden),
                           dropout=config.model.dropout, lr=config.train.lr, weight_decay=config.train.weight_decay,
                           batch_size=batch_size, epochs=1, seed=config.seed, num_threads=args.threads,
                           log_every=2000)
    epoch = result.history.epochs[-1]
    out: dict[str, Any] = {"rows": result.n_train, "train_s": result.seconds["train"],
                           "examples_per_s": result.n_train / result.seconds["train"], "train_loss": epoch.train_loss,
                           "test": result.test, "seconds": result.seconds, "batch_size": batch_size,
                           "load_after_epoch": _load()}
    limit = matmul_limit(ranking_layers(result.network), batch_size)
    out["matmul_limit"] = {"layers": limit.layers, "examples_per_s": limit.examples_per_s, "gflops": limit.gflops,
                           "seconds_per_batch": limit.seconds_per_batch}
    out["limit_over_throughput"] = limit.examples_per_s / out["examples_per_s"]
    out["parameters"] = sum(p.numel() for p in result.network.parameters())
    manifest = read_manifest(features)
    layout = RankingFeaturePipeline.load(features / manifest["pipeline"]).layout
    out["tables"] = {t.name: [t.vocab_size, t.dim] for t in layout.tables}

    # Windows of --compare-batches steps from a fresh network: sparse tables (default) under the
    # profiler, then the same with every table dense (dense Adam), timed side by side.
    is_click, watch_time_s = read_labels(features)
    objective = make_objective(config.objective.name, **config.objective.params)
    objective.fit(is_click, watch_time_s)
    bias = objective.init_bias(is_click, watch_time_s)
    del is_click, watch_time_s
    dataset = ShardedFeatureDataset(features, batch_size=batch_size, seed=1)
    batches = []
    for batch in dataset:
        batches.append(batch)
        if len(batches) == args.compare_batches:
            break

    def window(sparse_min_rows: int | None, profiler: bool) -> tuple[float, Any]:
        torch.manual_seed(0)
        network = RankingNet(layout, hidden=config.model.hidden, n_heads=objective.n_heads)
        network.set_output_bias(bias)
        optimizer = make_optimizer(network, lr=config.train.lr, weight_decay=config.train.weight_decay,
                                   sparse_tables=sparse_table_names(layout, sparse_min_rows))
        for batch in batches[:3]:  # warm-up
            optimizer.zero_grad()
            objective.loss(network(batch), batch.is_click, batch.watch_time_s).backward()
            optimizer.step()
        context = profile(activities=[ProfilerActivity.CPU]) if profiler else None
        started = time.perf_counter()
        if context:
            context.__enter__()
        for batch in batches:
            optimizer.zero_grad()
            objective.loss(network(batch), batch.is_click, batch.watch_time_s).backward()
            optimizer.step()
        wall = time.perf_counter() - started
        if context:
            context.__exit__(None, None, None)
        return wall, context

    sparse_wall, prof = window(10_000, True)
    sparse_plain, _ = window(10_000, False)
    dense_wall, _ = window(None, False)
    rows = sum(len(b) for b in batches)
    out["window"] = {"batches": len(batches), "sparse_examples_per_s": rows / sparse_plain,
                     "dense_examples_per_s": rows / dense_wall, "profiled_wall_s": sparse_wall}
    groups: dict[str, float] = defaultdict(float)
    averages = prof.key_averages()
    op_self = 0.0
    for event in averages:
        groups[_op_group(event.key)] += event.self_cpu_time_total / 1e6
        op_self += event.self_cpu_time_total / 1e6
    out["profile"] = {"wall_s": sparse_wall, "op_self_s": op_self,
                      "groups": dict(sorted(groups.items(), key=lambda item: -item[1])),
                      "top_ops": [[e.key, e.self_cpu_time_total / 1e6, e.count] for e in
                                  sorted(averages, key=lambda e: -e.self_cpu_time_total)[:12]]}
    Path(args.stage_out).write_text(json.dumps(out, indent=2, default=str) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impressions", type=int, default=50_000_000)
    parser.add_argument("--work", type=Path, help="folder for the log, the features and the run (required)")
    parser.add_argument("--partitions", type=int, default=None, help="default: rows / 2M")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compare-batches", type=int, default=200)
    parser.add_argument("--reuse", action="store_true", help="skip stages whose output is already complete")
    parser.add_argument("--out", type=Path, default=None, help="JSON of the figures (default WORK/scale.json)")
    parser.add_argument("--stage", choices=["train"], help=argparse.SUPPRESS)
    parser.add_argument("--features", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--stage-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage == "train":
        train_stage(args)
        return
    if args.work is None:
        parser.error("--work is required")
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "POLARS_MAX_THREADS": str(max(1, args.threads))}
    python = sys.executable
    log, features, run = work / "log", work / "features", work / "run"
    report: dict[str, Any] = {"impressions": args.impressions, "threads": args.threads, "stages": {}}
    if not (args.reuse and (log / "dataset.json").exists()):
        report["stages"]["simulate"] = run_stage("simulate", [python, "-m", "ytdnn", "simulate", "--impressions",
                                                              str(args.impressions), "--out", str(log)], env)
    if not (args.reuse and (features / "manifest.json").exists()):
        command = [python, "-m", "ytdnn", "data", "features", str(log), "--out", str(features)]
        if args.partitions:
            command += ["--partitions", str(args.partitions)]
        report["stages"]["features"] = run_stage("features", command, env)
    stage_out = work / "train_stage.json"
    report["stages"]["train"] = run_stage("train", [python, str(Path(__file__).resolve()), "--stage", "train",
                                                    "--features", str(features), "--run", str(run), "--stage-out",
                                                    str(stage_out), "--threads", str(args.threads),
                                                    "--compare-batches", str(args.compare_batches)], env)
    report["train"] = json.loads(stage_out.read_text())
    report["feature_manifest"] = {k: v for k, v in json.loads((features / "manifest.json").read_text()).items()
                                  if k != "shards"}
    out = args.out or work / "scale.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    train = report["train"]
    print(f"\nrows/epoch {train['rows']:,}: {train['examples_per_s']:,.0f} examples/s; matmul limit "
          f"{train['matmul_limit']['examples_per_s']:,.0f} examples/s ({train['limit_over_throughput']:.2f}x); "
          f"window: sparse {train['window']['sparse_examples_per_s']:,.0f} vs dense Adam "
          f"{train['window']['dense_examples_per_s']:,.0f} examples/s")
    for name, stage in report["stages"].items():
        print(f"{name:>9}: {stage['wall_s']:8.1f}s  peak RSS {stage['peak_rss_mib']:8,.0f} MiB")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
