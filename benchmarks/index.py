"""Side-by-side benchmark of the retrieval indexes: exact, FAISS HNSW, FAISS IVF-Flat.

    python benchmarks/index.py --n 1000000 --dim 64 --queries 1000 --k 100

Builds every index on the same vectors in one run and prints, per configuration: build time,
single-query latency (p50 and mean over --single-queries one-row calls), batched latency (all
queries in one call, per query), recall@k against exact search, and latency relative to exact.

Data: ``clustered`` (default) draws items and queries from one Gaussian mixture, the shape real
embeddings take (items in topical clusters, users near what they watch); ``gaussian`` is
isotropic noise, the worst case for both graph and cell indexes.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ytdnn.index import ExactIndex, HnswIndex, IvfFlatIndex, VectorIndex, usable_cpu_count
from ytdnn.utils.io import atomic_write_json


@dataclass
class Row:
    index: str
    search_param: str
    build_s: float
    single_p50_ms: float
    single_mean_ms: float
    batched_ms_per_query: float
    recall: float
    single_vs_exact: float = float("nan")  # p50 latency / exact p50 latency
    batched_vs_exact: float = float("nan")


def make_data(kind: str, count: int, dim: int, queries: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return (rng.standard_normal((count, dim), dtype=np.float32),
                rng.standard_normal((queries, dim), dtype=np.float32))
    # Mixture: centres ~ N(0, I); members = centre + N(0, 0.5² I); cluster sizes Zipf-like so a
    # few topics are large, as in watch data.
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.8
    weights /= weights.sum()

    def draw(rows: int) -> np.ndarray:
        members = rng.choice(clusters, size=rows, p=weights)
        out = rng.standard_normal((rows, dim), dtype=np.float32)
        out *= 0.5
        out += centres[members]
        return out

    return draw(count), draw(queries)


def time_search(index: VectorIndex, queries: np.ndarray, k: int,
                single_queries: int) -> tuple[float, float, float, np.ndarray]:
    """(single p50 ms, single mean ms, batched ms per query, batched result ids)."""
    index.search(queries[:8], k)  # warm-up: page in memory, start thread pools
    single = []
    for row in range(min(single_queries, queries.shape[0])):
        start = time.perf_counter()
        index.search(queries[row:row + 1], k)
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    _, found = index.search(queries, k)
    batched = time.perf_counter() - start
    return (float(np.median(single)) * 1e3, float(np.mean(single)) * 1e3,
            batched * 1e3 / queries.shape[0], found)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found_q ∩ truth_q| / k."""
    hits = [np.intersect1d(f[f >= 0], t).size for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / truth.shape[1]


def print_table(rows: list[Row]) -> None:
    header = (f"{'index':<6} {'search param':<14} {'build s':>8} {'1q p50 ms':>10} {'1q mean ms':>11} "
              f"{'batch ms/q':>11} {'recall':>7} {'1q x exact':>11} {'batch x exact':>14}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row.index:<6} {row.search_param:<14} {row.build_s:>8.1f} {row.single_p50_ms:>10.3f} "
              f"{row.single_mean_ms:>11.3f} {row.batched_ms_per_query:>11.4f} {row.recall:>7.4f} "
              f"{row.single_vs_exact:>11.4f} {row.batched_vs_exact:>14.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="items in the index")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--single-queries", type=int, default=200, help="one-row searches timed per config")
    parser.add_argument("--data", choices=["clustered", "gaussian"], default="clustered")
    parser.add_argument("--clusters", type=int, default=1000, help="mixture components (clustered data)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--hnsw-ef-construction", type=int, default=40)
    parser.add_argument("--hnsw-ef-search", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--ivf-nlist", type=int, default=None, help="default: round(4·sqrt(n))")
    parser.add_argument("--ivf-nprobe", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--threads", type=int, default=None, help="FAISS threads; default: usable CPUs")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()

    print(f"# {args.n:,} x {args.dim} {args.data} vectors, {args.queries} queries, k={args.k}; "
          f"{usable_cpu_count()} usable CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"{platform.processor() or platform.machine()}")
    started = time.perf_counter()
    vectors, queries = make_data(args.data, args.n, args.dim, args.queries, args.clusters, args.seed)
    ids = np.arange(args.n, dtype=np.int64)
    print(f"# data generated in {time.perf_counter() - started:.1f} s", flush=True)

    rows: list[Row] = []

    exact = ExactIndex(args.dim)
    start = time.perf_counter()
    exact.build(vectors, ids)
    build_s = time.perf_counter() - start
    p50, mean, batched, truth = time_search(exact, queries, args.k, args.single_queries)
    rows.append(Row("exact", "-", build_s, p50, mean, batched, 1.0))
    del exact
    print(f"# exact done: {batched:.3f} ms/query batched", flush=True)

    hnsw = HnswIndex(args.dim, M=args.hnsw_m, ef_construction=args.hnsw_ef_construction, num_threads=args.threads)
    start = time.perf_counter()
    hnsw.build(vectors, ids)
    build_s = time.perf_counter() - start
    print(f"# hnsw built in {build_s:.1f} s", flush=True)
    for ef_search in args.hnsw_ef_search:
        hnsw.ef_search = ef_search
        p50, mean, batched, found = time_search(hnsw, queries, args.k, args.single_queries)
        rows.append(Row("hnsw", f"ef_search={ef_search}", build_s, p50, mean, batched, recall_at_k(found, truth)))
    del hnsw

    ivf = IvfFlatIndex(args.dim, nlist=args.ivf_nlist, num_threads=args.threads)
    start = time.perf_counter()
    ivf.build(vectors, ids)
    build_s = time.perf_counter() - start
    print(f"# ivf built in {build_s:.1f} s (nlist={ivf.nlist})", flush=True)
    for nprobe in args.ivf_nprobe:
        ivf.nprobe = nprobe
        p50, mean, batched, found = time_search(ivf, queries, args.k, args.single_queries)
        rows.append(Row("ivf", f"nprobe={nprobe}", build_s, p50, mean, batched, recall_at_k(found, truth)))

    for row in rows:
        row.single_vs_exact = row.single_p50_ms / rows[0].single_p50_ms
        row.batched_vs_exact = row.batched_ms_per_query / rows[0].batched_ms_per_query
    print(f"# hnsw: M={args.hnsw_m}, ef_construction={args.hnsw_ef_construction}; ivf: nlist={ivf.nlist}; "
          f"'x exact' = latency / exact latency (lower is faster); total {time.perf_counter() - started:.0f} s")
    print_table(rows)
    if args.json is not None:
        settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
        atomic_write_json(args.json, {"args": settings, "rows": [asdict(row) for row in rows]})


if __name__ == "__main__":
    main()
