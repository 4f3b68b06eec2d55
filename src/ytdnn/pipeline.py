"""The main job (``ytdnn run`` / ``make run``): the whole system on KuaiRand-Pure, end to end.

1. train the ranker (the default objective) and its click baseline, evaluate them on the test days
   with the popularity baseline, print the table;
2. train the candidate generator, evaluate it against its baselines, build its FAISS index;
3. package both into a serving bundle and start the HTTP service on 127.0.0.1, printing a
   ``curl`` example.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

console = Console()


def _step(title: str) -> float:
    console.rule(f"[bold]{title}")
    return time.perf_counter()


def run_main_job(out: Path, *, data_dir: Path | None = None, serve: bool = True, port: int = 8000,
                 ablation: bool = True) -> dict[str, Path]:
    from ytdnn.evaluation.ranker_eval import evaluate_ranker_run, format_ranker_table
    from ytdnn.training.ranker import RankerConfig, train_ranker

    from ytdnn.data.sources import load_dataset
    from ytdnn.experiments.ablation import run_feature_ablation

    out = Path(out)
    overrides = {"data.data_dir": str(data_dir)} if data_dir else {}
    started = time.perf_counter()
    data = load_dataset("kuairand-pure", data_dir)  # read and validated once, shared by every step

    t = _step("1/3 ranking: weighted logistic regression on KuaiRand-Pure")
    ranker_dir = out / "ranker"
    train_ranker(RankerConfig.load(overrides=overrides), ranker_dir, data=data)
    if ablation:
        console.print("ablation by feature group (retrains the ranker on 4 subsets of the features) …")
        run_feature_ablation(ranker_dir, data=data)
    metrics = evaluate_ranker_run(ranker_dir, data=data)
    print(format_ranker_table(metrics), flush=True)
    console.print(f"ranker run folder: {ranker_dir} (report.md, metrics.json, calibration.png) "
                  f"[{time.perf_counter() - t:.0f} s]")

    paths = {"ranker": ranker_dir}
    try:
        from ytdnn.training.retrieval import RetrievalConfig, build_index, train_retrieval
    except ImportError:  # candidate generation not installed in this build
        return paths

    t = _step("2/3 candidate generation: softmax over the corpus, FAISS index")
    from ytdnn.evaluation.retrieval_eval import evaluate_retrieval, format_retrieval_table

    retrieval_dir = out / "retrieval"
    train_retrieval(RetrievalConfig.load(overrides=overrides), retrieval_dir, data=data)
    retrieval_metrics = evaluate_retrieval(retrieval_dir, data=data)
    print(format_retrieval_table(retrieval_metrics), flush=True)
    build_index(retrieval_dir, "hnsw", data=data)
    console.print(f"retrieval run folder: {retrieval_dir} [{time.perf_counter() - t:.0f} s]")
    paths["retrieval"] = retrieval_dir

    try:
        from ytdnn.serving.bundle import build_bundle
    except ImportError:
        return paths
    t = _step("3/3 serving: bundle and HTTP service")
    bundle_dir = build_bundle([ranker_dir, retrieval_dir], out / "bundle", data=data)
    paths["bundle"] = Path(bundle_dir)
    console.print(f"bundle: {bundle_dir} [{time.perf_counter() - t:.0f} s]; "
                  f"whole job {time.perf_counter() - started:.0f} s")
    if serve:
        from ytdnn.serving.app import serve as serve_http

        serve_http(Path(bundle_dir), host="127.0.0.1", port=port, config_path=None)
    return paths
