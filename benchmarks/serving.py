"""Serving benchmark: in-process ranking vs the naive tower, and the HTTP service under load.

Everything is measured in one run on this machine and printed as ratios:

1. **In-process ranking** of 100 / 500 / 1000 candidates for one user — the serving path
   (features from the bundled log, the user half of the first layer once, the candidate half in
   one batch, ONNX Runtime) — against the *bare matrix-product time of the same tower* run the
   naive way: the full first layer on [x_user; x_candidate] for every candidate, then the rest
   of the tower (PyTorch, the same weights, inputs already built, nothing but the products).
   Beside it the same serving path without the item-history snapshot (item-side history
   computed per request, as at a request time the snapshot does not cover).
2. **First request vs steady state**: a fresh ``ytdnn serve`` process (warm-up on, and once with
   warm-up off for contrast); the first /v1/recommend after /readyz says ready, against the
   median of the following sequential requests.
3. **Load**: an open-loop generator on 127.0.0.1 sends ``--requests`` /v1/recommend requests at
   ``--rate`` per second (5% of them for users the bundle does not know); latency counts from the
   moment each request was *due*, so a server that falls behind cannot hide it.

Usage::

    .venv/bin/python benchmarks/serving.py --bundle runs/main/bundle          # an existing bundle
    .venv/bin/python benchmarks/serving.py                                   # trains tiny runs on KuaiRand first
    .venv/bin/python benchmarks/serving.py --requests 2000 --rate 200 --json out.json
    .venv/bin/python benchmarks/serving.py --bundle runs/main/bundle --server-setting workers=2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _interleaved_medians(functions: dict[str, Any], repeats: int, warmup: int = 5) -> dict[str, dict[str, float]]:
    """Median wall-clock and CPU ms of each function, run in turn within every repeat: on a
    shared machine a load spike then hits all of them alike. The CPU time (this thread's) does
    not count the time spent waiting for a core, so its ratios hold even on a busy machine."""
    for _ in range(warmup):
        for fn in functions.values():
            fn()
    wall: dict[str, list[float]] = {name: [] for name in functions}
    cpu: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            started, started_cpu = time.perf_counter(), time.thread_time()
            fn()
            cpu[name].append((time.thread_time() - started_cpu) * 1000)
            wall[name].append((time.perf_counter() - started) * 1000)
    return {name: {"wall_ms": statistics.median(wall[name]), "cpu_ms": statistics.median(cpu[name])}
            for name in functions}


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of a process and its descendants (uvicorn's worker
    processes), from Linux /proc."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # a process that just ended
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, fields in stats.items():
            if int(fields[1]) == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    ticks = sum(int(stats[p][11]) + int(stats[p][12]) for p in tree if p in stats)
    return ticks / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# 1. In-process


def in_process(bundle: Path, sizes: list[int], repeats: int) -> dict[str, Any]:
    import torch

    from ytdnn.serving.bundle import load_recommender
    from ytdnn.serving.onnx_ranker import batch_arrays
    from ytdnn.serving.settings import ServingSettings

    torch.set_num_threads(1)
    recommender = load_recommender(bundle, ServingSettings())
    recommender.warm_up(10)
    store, ranker = recommender.store, recommender.ranker
    from ytdnn.training.ranker import load_ranker

    net = load_ranker(Path(recommender.source) / "ranker").network.eval()
    counts = store.log.group_by("user_id").len().sort(["len", "user_id"])
    user = int(counts["user_id"][int(0.75 * (counts.height - 1))])  # a user with more history than most
    now = store.end_time_ms + 1
    past = store.user_log(user, now)
    video_ids = store.videos["video_id"].to_numpy()
    rows = []
    for n in sizes:
        candidates = video_ids[np.random.default_rng(n).permutation(video_ids.size)[:n]]
        network = ranker.network
        # The serving path's arrays: user side in row 0, cross side everywhere, item rows cached.
        item_rows, _ = ranker.features.item_rows(candidates)
        cached = batch_arrays(ranker.features.batch(user, candidates, now, 0, past, item_columns=False,
                                                    user_rows="first"))
        full_batch = ranker.features.batch(user, candidates, now, 0, past)
        categorical, multivalent, dense = batch_arrays(full_batch)

        def cached_network() -> None:
            c, m, d = cached
            hidden = network.user_hidden(c[:1], [x[:1] for x in m], d[:1])
            network.cached_logits(hidden, ranker.item_hidden[item_rows], c, m, d)

        def split_network() -> None:
            hidden = network.user_hidden(categorical[:1], [m[:1] for m in multivalent], dense[:1])
            network.logits(hidden, categorical, multivalent, dense)

        with torch.inference_mode():
            full_input = torch.cat([net.user_input(full_batch.categorical, full_batch.multivalent, full_batch.dense),
                                    net.candidate_input(full_batch.categorical, full_batch.multivalent,
                                                        full_batch.dense)], dim=1)
            first_weight = torch.cat([net.user_linear.weight, net.candidate_linear.weight], dim=1).contiguous()
            first_bias = net.user_linear.bias
            layers = [(m.weight, m.bias) for m in net.tower if isinstance(m, torch.nn.Linear)]

        def naive_tower() -> None:
            with torch.inference_mode():
                hidden = torch.nn.functional.linear(full_input, first_weight, first_bias)
                for weight, bias in layers:
                    hidden = torch.nn.functional.linear(torch.relu(hidden), weight, bias)

        def rank_without_snapshot() -> None:
            # The same path computing the item-side history per request (what every request
            # did before the snapshot, and what requests at other times still do).
            saved, ranker.item_snapshot = ranker.item_snapshot, None
            try:
                ranker.score(user, candidates, now, 0, past)
            finally:
                ranker.item_snapshot = saved

        medians = _interleaved_medians({
            "rank": lambda: ranker.score(user, candidates, now, 0, past), "rank_no_snapshot": rank_without_snapshot,
            "network": cached_network, "split": split_network, "naive": naive_tower}, repeats)
        row: dict[str, Any] = {"candidates": n}
        for clock in ("wall_ms", "cpu_ms"):
            naive = medians["naive"][clock]
            row[clock] = {name: value[clock] for name, value in medians.items()}
            row[clock.replace("_ms", "_ratios")] = {f"{name}/naive": value[clock] / naive
                                                    for name, value in medians.items() if name != "naive"}
        rows.append(row)
    from ytdnn.serving.bundle import read_manifest

    return {"served_parity": read_manifest(recommender.source).get("served_parity"),
            "input_width": int(net.user_width + net.candidate_width), "user_width": int(net.user_width),
            "candidate_width": int(net.candidate_width), "hidden": list(net.hidden), "rows": rows,
            "user_events": int(past.height)}


# ---------------------------------------------------------------------------------------------
# 2 + 3. HTTP


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``ytdnn serve`` in its own process (the load generator must not share its GIL)."""

    def __init__(self, bundle: Path, settings: dict[str, Any], workdir: Path) -> None:
        self.port = _free_port()
        config = workdir / f"serving-{self.port}.toml"
        config.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
        self.command = [sys.executable, "-m", "ytdnn.cli", "serve", str(bundle), "--host", "127.0.0.1",
                        "--port", str(self.port), "--config", str(config)]
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_s = float("nan")

    def __enter__(self) -> ServerProcess:
        import httpx

        started = time.perf_counter()
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - started > 300:
                raise RuntimeError("server not ready after 300 s")
            time.sleep(0.05)
        self.ready_s = time.perf_counter() - started
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _users(bundle: Path, n: int, seed: int = 0) -> list[int]:
    import polars as pl

    known = pl.read_parquet(bundle / "tables" / "log.parquet", columns=["user_id"])["user_id"].unique().to_numpy()
    rng = np.random.default_rng(seed)
    users = rng.choice(known, size=n).astype(np.int64)
    unknown = rng.random(n) < 0.05
    users[unknown] = int(known.max()) + 1 + rng.integers(0, 1_000_000, int(unknown.sum()))
    return users.tolist()


def first_vs_steady(bundle: Path, workdir: Path, warmup_requests: int, steady: int = 200) -> dict[str, Any]:
    import httpx

    users = _users(bundle, steady + 1, seed=1)
    with ServerProcess(bundle, {"warmup_requests": warmup_requests}, workdir) as server:
        with httpx.Client(base_url=server.base, timeout=30) as client:
            client.get("/healthz")  # opens the connection: the first request below times the model, not TCP
            started = time.perf_counter()
            first = client.post("/v1/recommend", json={"user_id": users[0], "k": 10})
            first_ms = (time.perf_counter() - started) * 1000
            assert first.status_code == 200, first.text
            latencies = []
            for user in users[1:]:
                started = time.perf_counter()
                response = client.post("/v1/recommend", json={"user_id": user, "k": 10})
                latencies.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, response.text
    steady_ms = statistics.median(latencies)
    return {"warmup_requests": warmup_requests, "ready_s": server.ready_s, "first_ms": first_ms,
            "steady_median_ms": steady_ms, "first_over_steady": first_ms / steady_ms}


async def _connection(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port)


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """One HTTP/1.1 keep-alive request on an open connection; returns the status code."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


async def _open_loop(port: int, users: list[int], rate: float, connections: int = 64) -> dict[str, Any]:
    """Open-loop load: request i is due at start + i / rate, whatever happened to the others.

    A minimal HTTP/1.1 client on raw asyncio streams (keep-alive, a pool of ``connections``):
    the generator shares the machine with the server, so it must cost far less than httpx. One
    dispatcher sleeps until each due time and only then starts that request's task (creating
    all tasks up front would make the first ones late before anything is sent). Latency counts
    from the due time, so a late dispatch or a server that falls behind cannot hide (no
    coordinated omission).
    """
    host = "127.0.0.1"
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await _connection(host, port))
    latencies: list[float] = []
    failures: list[str] = []
    clock = time.perf_counter  # uvloop's loop.time() counts whole milliseconds
    requests = []
    for user in users:
        body = json.dumps({"user_id": user, "k": 10}).encode()
        requests.append((f"POST /v1/recommend HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n").encode() + body)

    async def one(due: float, request: bytes) -> None:
        reader, writer = await pool.get()
        try:
            status = await _post(reader, writer, request)
            if status != 200:
                failures.append(f"status {status}")
            pool.put_nowait((reader, writer))
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            failures.append(repr(exc))
            writer.close()
            pool.put_nowait(await _connection(host, port))
        latencies.append((clock() - due) * 1000)

    tasks = []
    start = clock() + 0.2
    for i, request in enumerate(requests):
        due = start + i / rate
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(due, request)))
    await asyncio.gather(*tasks)
    elapsed = clock() - start
    while not pool.empty():
        pool.get_nowait()[1].close()
    values = np.array(latencies)
    return {"requests": len(users), "target_rate": rate, "throughput_rps": len(users) / elapsed,
            "errors": len(failures), "first_errors": failures[:3],
            "p50_ms": float(np.percentile(values, 50)), "p90_ms": float(np.percentile(values, 90)),
            "p99_ms": float(np.percentile(values, 99)), "max_ms": float(values.max())}


def _run_loop(coroutine: Any) -> Any:
    """asyncio.run on uvloop when it is installed (uvicorn[standard] brings it): a cheaper generator."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def load_test(bundle: Path, workdir: Path, requests: int, rate: float,
              server_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    import httpx

    users = _users(bundle, requests, seed=2)
    with ServerProcess(bundle, {"warmup_requests": 30, **(server_settings or {})}, workdir) as server:
        assert server.process is not None
        cpu_before = _process_cpu_s(server.process.pid)
        own_cpu_before = time.process_time()
        result = _run_loop(_open_loop(server.port, users, rate))
        result["server_cpu_ms_per_request"] = 1000 * (_process_cpu_s(server.process.pid) - cpu_before) / len(users)
        result["generator_cpu_ms_per_request"] = 1000 * (time.process_time() - own_cpu_before) / len(users)
        result["load_average_after"] = os.getloadavg()
        metrics = httpx.get(f"{server.base}/metrics", timeout=10).text
    route = 'route="/v1/recommend"'
    total = [float(line.split()[-1]) for line in metrics.splitlines()
             if line.startswith("ytdnn_http_request_duration_seconds_sum") and route in line]
    count = [float(line.split()[-1]) for line in metrics.splitlines()
             if line.startswith("ytdnn_http_request_duration_seconds_count") and route in line]
    if total and count and count[0]:
        result["server_mean_ms"] = 1000 * total[0] / count[0]
    return result


# ---------------------------------------------------------------------------------------------
# A bundle to measure


def build_demo_bundle(workdir: Path, data_dir: str | None) -> Path:
    """Tiny runs on KuaiRand-Pure (one epoch each, default features and towers), then a bundle."""
    from ytdnn.data.sources import load_dataset
    from ytdnn.serving.bundle import build_bundle
    from ytdnn.training.ranker import RankerConfig, train_ranker
    from ytdnn.training.retrieval import RetrievalConfig, train_retrieval

    data = load_dataset("kuairand-pure", data_dir)
    train_ranker(RankerConfig.load(None, {"train.epochs": 1, "train.progress": False, "baselines.click": False}),
                 workdir / "ranker", data=data)
    train_retrieval(RetrievalConfig.load(None, {"train.epochs": 1}), workdir / "retrieval", data=data)
    return build_bundle([workdir / "ranker", workdir / "retrieval"], workdir / "bundle", data=data)


def _load(average: tuple[float, float, float]) -> str:
    return " / ".join(f"{value:.2f}" for value in average) + " (1 / 5 / 15 min)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: train tiny runs and build one)")
    parser.add_argument("--data-dir", help="data directory for the default bundle")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--extra-rates", type=float, nargs="*", default=[50.0],
                        help="further open-loop rates, --extra-requests each (latency below saturation)")
    parser.add_argument("--extra-requests", type=int, default=2000)
    parser.add_argument("--server-setting", action="append", default=[], metavar="KEY=JSON",
                        help="a ServingSettings value for the load tests' server, e.g. scoring_threads=2")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="ytdnn-serving-bench-") as tmp:
        workdir = Path(tmp)
        bundle = args.bundle or build_demo_bundle(workdir, args.data_dir)
        results: dict[str, Any] = {"bundle": str(bundle), "cpus": os.cpu_count(),
                                   "load_average_at_start": os.getloadavg()}
        results["in_process"] = in_process(bundle, args.sizes, args.repeats)
        results["first_request"] = [first_vs_steady(bundle, workdir, 30), first_vs_steady(bundle, workdir, 0)]
        server = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.server_setting)}
        results["server_settings"] = server
        results["load"] = [load_test(bundle, workdir, args.requests, args.rate, server)]
        results["load"] += [load_test(bundle, workdir, args.extra_requests, rate, server) for rate in args.extra_rates]
        results["load_average_at_end"] = os.getloadavg()

    ip = results["in_process"]
    print(f"bundle {bundle}; first layer input {ip['input_width']} = user {ip['user_width']} + "
          f"candidate {ip['candidate_width']}, tower {ip['hidden']}; {results['cpus']} CPUs; "
          f"load average at start {_load(results['load_average_at_start'])}")
    parity = ip.get("served_parity")
    if parity:
        print(f"served path vs reference (pipeline features + full PyTorch network), from the bundle's manifest: "
              f"max relative difference {parity['max_relative_diff']:.2g} over {parity['rows']} real rows "
              f"({parity['snapshot_rows']} on the item-history snapshot)")
    print(f"\nin-process ranking, median of {args.repeats} interleaved runs, 1 thread. 'rank' = the serving path "
          "(features from the log + network + served values); 'no-snap' = the same without the item-history "
          "snapshot (item-side history computed per request); 'network' = user half once + cached item rows + "
          "cross half and tower; 'split' = user half once + the whole candidate half; 'naive' = the matrix "
          "products of the full tower on [x_user; x_candidate] for every candidate")
    for clock, label in (("cpu_ms", "CPU time (this thread)"), ("wall_ms", "wall clock")):
        print(f"  {label}")
        print(f"  {'candidates':>10} {'rank':>8} {'no-snap':>8} {'network':>8} {'split':>8} {'naive':>8} "
              f"{'rank/naive':>11} {'no-snap/naive':>14} {'network/naive':>14} {'split/naive':>12}")
        for row in ip["rows"]:
            ms, ratios = row[clock], row[clock.replace("_ms", "_ratios")]
            print(f"  {row['candidates']:>10} {ms['rank']:>8.3f} {ms['rank_no_snapshot']:>8.3f} {ms['network']:>8.3f} "
                  f"{ms['split']:>8.3f} {ms['naive']:>8.3f} {ratios['rank/naive']:>10.2f}x "
                  f"{ratios['rank_no_snapshot/naive']:>13.2f}x {ratios['network/naive']:>13.2f}x "
                  f"{ratios['split/naive']:>11.2f}x")
    print("\nfirst request after /readyz vs steady state (median of the next 200, sequential)")
    for row in results["first_request"]:
        print(f"  warm-up {row['warmup_requests']:>2} requests: ready in {row['ready_s']:.1f} s, first "
              f"{row['first_ms']:.1f} ms, steady {row['steady_median_ms']:.2f} ms, "
              f"ratio {row['first_over_steady']:.2f}x")
    for load in results["load"]:
        print(f"\nHTTP /v1/recommend, open loop at {load['target_rate']:.0f} req/s, {load['requests']} requests "
              f"(5% cold-start users), latency from the due time")
        print(f"  p50 {load['p50_ms']:.2f} ms, p90 {load['p90_ms']:.2f} ms, p99 {load['p99_ms']:.2f} ms, "
              f"max {load['max_ms']:.1f} ms; throughput {load['throughput_rps']:.1f} req/s; errors {load['errors']}"
              + (f"; server-side mean {load['server_mean_ms']:.2f} ms" if "server_mean_ms" in load else ""))
        cpu = load["server_cpu_ms_per_request"]
        print(f"  the server process spent {cpu:.2f} ms of CPU per request (one free core serves about "
              f"{1000 / cpu:.0f} requests/s), the generator {load['generator_cpu_ms_per_request']:.2f} ms; "
              f"load average after {_load(load['load_average_after'])}")
    print(f"\nserver settings {results['server_settings'] or 'default'}; load average of the machine at the end: "
          f"{_load(results['load_average_at_end'])}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
