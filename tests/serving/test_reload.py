"""Hot reload: in-flight requests finish on the old model; a real server under load loses nothing."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from ytdnn.serving.app import create_app
from ytdnn.serving.bundle import load_recommender, set_current
from ytdnn.serving.recommender import Recommender

from .conftest import ADMIN_TOKEN, settings
from .test_app import copy_with_version

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class GatedRecommender:
    """A recommender whose ``recommend`` waits at a gate, to hold a request in flight."""

    def __init__(self, inner: Recommender) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def recommend(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        assert self.gate.wait(20), "the test never opened the gate"
        return self.inner.recommend(*args, **kwargs)


def test_in_flight_request_finishes_on_the_old_model(bundle_dir: Path, tmp_path: Path) -> None:
    second = copy_with_version(bundle_dir, tmp_path / "second", "v-second")
    old = GatedRecommender(load_recommender(bundle_dir, settings()))
    # No warm-up: it would run into the gate.
    app = create_app(bundle_dir, settings(warmup_requests=0), recommender=old)  # type: ignore[arg-type]
    with TestClient(app) as client:
        answer: dict[str, Any] = {}
        in_flight = threading.Thread(
            target=lambda: answer.update(client.post("/v1/recommend", json={"user_id": 1, "k": 2}).json()))
        in_flight.start()
        assert old.entered.wait(20)
        # The request holds the old model; swap under it.
        fresh, previous, _ = app.state.slot.load(second)
        assert previous is old and app.state.slot.current is fresh and fresh.version == "v-second"
        old.gate.set()
        in_flight.join(20)
        assert answer["model_version"] == old.version != "v-second"
        assert client.post("/v1/recommend", json={"user_id": 1, "k": 2}).json()["model_version"] == "v-second"


class _Server:
    """uvicorn on 127.0.0.1, an OS-chosen port, in a background thread."""

    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_reload_under_load_fails_no_request(bundle_dir: Path, tmp_path: Path) -> None:
    second = copy_with_version(bundle_dir, tmp_path / "second", "v-second")
    broken = copy_with_version(bundle_dir, tmp_path / "broken", "v-broken")
    (broken / "ranker" / "model.safetensors").write_bytes(b"\x00" * 16)
    app = create_app(bundle_dir, settings())
    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    errors: list[str] = []
    stop = threading.Event()

    def client_loop(base: str, worker: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            i = 0
            while not stop.is_set():
                try:
                    response = http.post("/v1/recommend", json={"user_id": (worker * 37 + i) % 150, "k": 5})
                    statuses[response.status_code] += 1
                    if response.status_code == 200:
                        versions[response.json()["model_version"]] += 1
                except httpx.HTTPError as exc:  # a dropped connection is a failed request
                    errors.append(repr(exc))
                i += 1

    with _Server(app) as base:
        workers = [threading.Thread(target=client_loop, args=(base, w)) for w in range(4)]
        for worker in workers:
            worker.start()
        with httpx.Client(base_url=base, timeout=60) as admin:
            time.sleep(0.3)
            outcomes = []
            for target in (second, broken, bundle_dir, second):
                response = admin.post("/admin/reload", headers=AUTH, json={"bundle_dir": str(target)})
                outcomes.append(response.status_code)
                time.sleep(0.3)
            final = admin.get("/readyz").json()
        stop.set()
        for worker in workers:
            worker.join(30)
    assert outcomes == [200, 422, 200, 200]
    assert final["model_version"] == "v-second"
    assert not errors, errors[:3]
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) > 50
    assert "v-second" in versions and len(versions) == 2 and "v-broken" not in versions


def test_watched_pointer_rolls_out_a_new_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    root.mkdir()
    copy_with_version(bundle_dir, root / "one", "v-one")
    copy_with_version(bundle_dir, root / "two", "v-two")
    set_current(root, "one")
    app = create_app(root, settings(watch_pointer=True, watch_interval_s=0.05))
    with TestClient(app) as client:
        assert client.get("/readyz").json()["model_version"] == "v-one"
        set_current(root, "two")
        deadline = time.monotonic() + 30
        while client.post("/v1/recommend", json={"user_id": 1}).json()["model_version"] != "v-two":
            assert time.monotonic() < deadline, "the pointer change was never picked up"
            time.sleep(0.05)
        # A pointer to a broken bundle is rejected and the service stays on v-two.
        copy_with_version(bundle_dir, root / "three", "v-three")
        (root / "three" / "tables" / "log.parquet").write_bytes(b"garbage")
        set_current(root, "three")
        time.sleep(1.0)
        assert client.get("/readyz").json()["model_version"] == "v-two"
        assert 'ytdnn_model_reloads_total{outcome="rejected"} 1.0' in client.get("/metrics").text


def test_admin_token_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from ytdnn.config import ConfigError
    from ytdnn.serving.settings import load_settings

    monkeypatch.setenv("YTDNN_ADMIN_TOKEN", "from-the-environment")
    assert load_settings(None, ["admin_token=from-the-file"]).admin_token == "from-the-environment"
    monkeypatch.delenv("YTDNN_ADMIN_TOKEN")
    assert load_settings(None, ["admin_token=from-the-file"]).admin_token == "from-the-file"
    assert load_settings().admin_token is None
    with pytest.raises(ConfigError, match="at least 8 characters"):
        load_settings(None, ["admin_token=short"])
    with pytest.raises(ConfigError, match="default_k"):
        load_settings(None, ["default_k=50", "max_k=10"])


def test_two_worker_processes_serve_and_follow_the_pointer(bundle_dir: Path, tmp_path: Path) -> None:
    """`ytdnn serve` with workers = 2 answers, /admin/reload refuses (it would reach one worker),
    and a moved `current` pointer reaches the workers (20 answers in a row on the new model, over
    new connections the kernel spreads between them)."""
    import os
    import socket
    import subprocess
    import sys

    root = tmp_path / "bundles"
    root.mkdir()
    copy_with_version(bundle_dir, root / "one", "v-one")
    copy_with_version(bundle_dir, root / "two", "v-two")
    set_current(root, "one")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    config = tmp_path / "serving.toml"
    config.write_text(f'workers = 2\ncandidate_count = 40\nmax_k = 20\nwarmup_requests = 2\nwatch_interval_s = 0.2\n'
                      f'admin_token = "{ADMIN_TOKEN}"\n')
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "ytdnn.cli", "serve", str(root), "--host", "127.0.0.1",
                               "--port", str(port), "--config", str(config)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        versions: Counter[str] = Counter()
        while sum(versions.values()) < 20:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the workers never answered"
            try:  # a new connection per request: the kernel spreads them over the workers
                answer = httpx.post(f"{base}/v1/recommend", json={"user_id": 1, "k": 3}, timeout=10)
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            assert answer.status_code == 200, answer.text
            versions[answer.json()["model_version"]] += 1
        assert versions == Counter({"v-one": 20})
        refused = httpx.post(f"{base}/admin/reload", headers=AUTH, timeout=10)
        assert refused.status_code == 409 and "pointer" in refused.json()["detail"]
        set_current(root, "two")
        streak = 0
        while streak < 20:
            assert time.monotonic() < deadline, "the pointer change did not reach every worker"
            version = httpx.post(f"{base}/v1/recommend", json={"user_id": 1, "k": 3}, timeout=10).json()["model_version"]
            streak = streak + 1 if version == "v-two" else 0
            time.sleep(0.02)
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
