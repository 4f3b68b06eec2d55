"""Every route and every error of the HTTP service, through FastAPI's test client."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ytdnn.serving.app import create_app
from ytdnn.serving.bundle import load_recommender
from ytdnn.serving.recommender import Recommender

from .conftest import ADMIN_TOKEN, settings

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def copy_with_version(bundle_dir: Path, target: Path, version: str) -> Path:
    """A copy of the bundle that announces another version (the manifest is not checksummed)."""
    shutil.copytree(bundle_dir, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = version
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.fixture(scope="module")
def client(bundle_dir: Path) -> Iterator[TestClient]:
    app = create_app(bundle_dir, settings(max_k=20, max_exclude=5, max_rank_videos=30, max_history_events=4))
    with TestClient(app) as test_client:
        yield test_client


def known_user(client: TestClient) -> int:
    return int(client.app.state.slot.current.store.logged_user_ids[0])  # type: ignore[attr-defined]


# -- operations -------------------------------------------------------------------------------------


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True and body["state"] == "ready"
    assert body["model_version"] == client.app.state.slot.current.version  # type: ignore[attr-defined]


def test_openapi_documents_routes_and_configured_limits(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/v1/recommend", "/v1/rank", "/healthz", "/readyz", "/metrics", "/admin/reload"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["RecommendRequest"]["properties"]
    assert any(v.get("maximum") == 20 for v in request["k"]["anyOf"])
    assert request["exclude"]["maxItems"] == 5
    assert schema["components"]["schemas"]["RankRequest"]["properties"]["video_ids"]["maxItems"] == 30
    assert client.get("/docs").status_code == 200


def test_metrics_count_requests_and_name_the_model(client: TestClient) -> None:
    client.post("/v1/recommend", json={"user_id": known_user(client), "k": 3})
    client.post("/v1/recommend", json={"user_id": known_user(client), "k": 999})
    client.get("/no/such/route")
    text = client.get("/metrics").text
    version = client.app.state.slot.current.version  # type: ignore[attr-defined]
    assert f'ytdnn_model_info{{version="{version}"}} 1.0' in text
    assert 'ytdnn_http_requests_total{method="POST",route="/v1/recommend",status="200"}' in text
    assert 'ytdnn_http_requests_total{method="POST",route="/v1/recommend",status="422"}' in text
    assert 'ytdnn_http_requests_total{method="GET",route="unmatched",status="404"}' in text
    assert 'ytdnn_http_request_duration_seconds_bucket{le="0.005",route="/v1/recommend"}' in text
    assert 'ytdnn_model_reloads_total{outcome="ok"} 1.0' in text
    # The start-up warm-up went through the whole HTTP stack but is not counted as traffic.
    assert 'route="/v1/rank",status="200"' not in text


# -- /v1/recommend ----------------------------------------------------------------------------------


def test_recommend(client: TestClient) -> None:
    user = known_user(client)
    response = client.post("/v1/recommend", json={"user_id": user, "k": 4, "context": {"tab": 1}})
    assert response.status_code == 200
    body = response.json()
    assert body["user_id"] == user and body["cold_start"] is False and body["candidate_source"] == "retrieval"
    assert [item["rank"] for item in body["items"]] == [1, 2, 3, 4]
    assert set(body["items"][0]) == {"video_id", "rank", "expected_watch_s", "odds", "p_click"}
    odds = [item["odds"] for item in body["items"]]  # the default objective ranks by the WLR odds
    assert odds == sorted(odds, reverse=True)
    assert all(item["expected_watch_s"] > 0 and 0 < item["p_click"] < 1 for item in body["items"])
    default_k = client.post("/v1/recommend", json={"user_id": user}).json()
    assert len(default_k["items"]) == 10


def test_scoring_in_worker_threads_gives_the_same_answers(client: TestClient, recommender: Recommender,
                                                           bundle_dir: Path) -> None:
    threaded = create_app(bundle_dir, settings(scoring_threads=2), recommender=recommender)
    user = known_user(client)
    with TestClient(threaded) as other:
        for path, body in (("/v1/recommend", {"user_id": user, "k": 5}),
                           ("/v1/rank", {"user_id": user, "video_ids": [1, 2, 3]})):
            answer = other.post(path, json=body)
            assert answer.status_code == 200
            assert answer.json()["items"] == client.post(path, json=body).json()["items"]
        assert other.post("/v1/rank", json={"user_id": user, "video_ids": [9_999_999]}).status_code == 422


def test_recommend_cold_start(client: TestClient) -> None:
    body = client.post("/v1/recommend", json={"user_id": 10_000_000, "k": 3}).json()
    assert body["cold_start"] is True and body["candidate_source"] == "popularity" and len(body["items"]) == 3


@pytest.mark.parametrize("payload, field, kind", [
    ({"user_id": 1, "k": 21}, ["body", "k"], "too_long"),  # beyond max_k (20)
    ({"user_id": 1, "k": 0}, ["body", "k"], "greater_than_equal"),
    ({"user_id": 1, "exclude": [1, 2, 3, 4, 5, 6]}, ["body", "exclude"], "too_long"),
    ({"user_id": 1, "history": [{"video_id": 1}] * 5}, ["body", "history"], "too_long"),
    ({"user_id": -1}, ["body", "user_id"], "greater_than_equal"),
    ({"user_id": 2**63}, ["body", "user_id"], "less_than_equal"),
    ({"user_id": "abc"}, ["body", "user_id"], "int_parsing"),
    ({"k": 3}, ["body", "user_id"], "missing"),
    ({"user_id": 1, "colour": "red"}, ["body", "colour"], "extra_forbidden"),
    ({"user_id": 1, "context": {"tab": -2}}, ["body", "context", "tab"], "greater_than_equal"),
    ({"user_id": 1, "history": [{"video_id": 1, "watch_time_s": -3}]}, ["body", "history", 0, "watch_time_s"],
     "greater_than_equal"),
])
def test_recommend_rejects_bad_input_with_422(client: TestClient, payload: dict, field: list, kind: str) -> None:
    response = client.post("/v1/recommend", json=payload)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert any(d["loc"] == field and d["type"] == kind for d in detail), detail


def test_malformed_json_and_nan_are_422(client: TestClient) -> None:
    response = client.post("/v1/recommend", content=b'{"user_id": 1,', headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "json_invalid"
    nan = b'{"user_id": 1, "history": [{"video_id": 1, "watch_time_s": NaN}]}'
    response = client.post("/v1/recommend", content=nan, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "finite_number"
    assert client.post("/v1/recommend", content=b"[]", headers={"Content-Type": "application/json"}).status_code == 422
    assert client.get("/v1/recommend").status_code == 405


def test_history_after_the_request_time_is_422(client: TestClient) -> None:
    response = client.post("/v1/recommend", json={"user_id": 1, "context": {"time_ms": 1000},
                                                  "history": [{"video_id": 1, "time_ms": 1000}]})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "history", 0, "time_ms"] and "not before the request time" in detail["msg"]


# -- /v1/rank ----------------------------------------------------------------------------------------


def test_rank(client: TestClient) -> None:
    body = client.post("/v1/rank", json={"user_id": known_user(client), "video_ids": [3, 1, 2]}).json()
    assert sorted(item["video_id"] for item in body["items"]) == [1, 2, 3]
    assert body["candidate_source"] == "request" and body["candidates_ranked"] == 3


def test_rank_names_unknown_videos_in_a_422(client: TestClient) -> None:
    response = client.post("/v1/rank", json={"user_id": 1, "video_ids": [1, 8_888_888, 9_999_999]})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["type"] == "unknown_video" and detail["input"] == [8_888_888, 9_999_999]
    assert "8888888" in detail["msg"]


@pytest.mark.parametrize("video_ids, kind", [([], "too_short"), (list(range(31)), "too_long"),
                                             ([1, 2, 1], "invalid_request")])
def test_rank_rejects_bad_lists(client: TestClient, video_ids: list[int], kind: str) -> None:
    response = client.post("/v1/rank", json={"user_id": 1, "video_ids": video_ids})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == kind


# -- /admin/reload -----------------------------------------------------------------------------------


def test_reload_needs_the_token(client: TestClient) -> None:
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    assert client.post("/admin/reload", headers={"Authorization": ADMIN_TOKEN}).status_code == 401  # no scheme


def test_admin_is_off_without_a_configured_token(bundle_dir: Path, recommender: Recommender) -> None:
    app = create_app(bundle_dir, settings(admin_token=None), recommender=recommender)
    with TestClient(app) as test_client:
        response = test_client.post("/admin/reload", headers=AUTH)
    assert response.status_code == 403 and "no admin token" in response.json()["detail"]


def test_reload_swaps_and_a_broken_bundle_is_rejected(bundle_dir: Path, tmp_path: Path) -> None:
    second = copy_with_version(bundle_dir, tmp_path / "second", "v-second")
    broken = copy_with_version(bundle_dir, tmp_path / "broken", "v-broken")
    (broken / "tables" / "popularity.parquet").write_bytes(b"not parquet")
    app = create_app(bundle_dir, settings())
    with TestClient(app) as test_client:
        first_version = test_client.get("/readyz").json()["model_version"]
        swapped = test_client.post("/admin/reload", headers=AUTH, json={"bundle_dir": str(second)})
        assert swapped.status_code == 200
        assert swapped.json()["model_version"] == "v-second"
        assert swapped.json()["previous_version"] == first_version
        served = test_client.post("/v1/recommend", json={"user_id": 1, "k": 2}).json()
        assert served["model_version"] == "v-second"

        rejected = test_client.post("/admin/reload", headers=AUTH, json={"bundle_dir": str(broken)})
        assert rejected.status_code == 422
        assert "popularity.parquet" in rejected.json()["detail"][0]["msg"]
        assert "still serving v-second" in rejected.json()["detail"][0]["msg"]
        assert test_client.post("/v1/recommend", json={"user_id": 1}).json()["model_version"] == "v-second"
        missing = test_client.post("/admin/reload", headers=AUTH, json={"bundle_dir": str(tmp_path / "nope")})
        assert missing.status_code == 422
        # Without a body the served path is loaded again (here: the second bundle).
        again = test_client.post("/admin/reload", headers=AUTH)
        assert again.status_code == 200 and again.json()["bundle_dir"] == str(second)
        metrics = test_client.get("/metrics").text
        assert 'ytdnn_model_info{version="v-second"} 1.0' in metrics
        assert f'version="{first_version}"' not in metrics
        assert 'ytdnn_model_reloads_total{outcome="rejected"} 2.0' in metrics


# -- readiness while loading -------------------------------------------------------------------------


def test_not_ready_until_loaded_and_warm(bundle_dir: Path) -> None:
    release = threading.Event()

    def slow_loader(path: Path) -> Recommender:
        release.wait(10)
        return load_recommender(path, settings())

    app = create_app(bundle_dir, settings(background_load=True), loader=slow_loader)
    with TestClient(app) as test_client:
        waiting = test_client.get("/readyz")
        assert waiting.status_code == 503 and waiting.json()["state"] == "loading"
        assert test_client.get("/healthz").status_code == 200
        not_yet = test_client.post("/v1/recommend", json={"user_id": 1})
        assert not_yet.status_code == 503 and "no model loaded yet" in not_yet.json()["detail"]
        release.set()
        deadline = time.monotonic() + 20
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the model never became ready"
            time.sleep(0.05)
        assert test_client.post("/v1/recommend", json={"user_id": 1}).status_code == 200


def test_a_failed_first_load_is_reported_not_served(tmp_path: Path) -> None:
    app = create_app(tmp_path / "missing", settings())
    with TestClient(app) as test_client:
        ready = test_client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["state"] == "failed" and "no such folder" in ready.json()["detail"]
        assert test_client.post("/v1/recommend", json={"user_id": 1}).status_code == 503
