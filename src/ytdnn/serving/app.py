"""The HTTP service: FastAPI routes over a hot-swappable :class:`~ytdnn.serving.recommender.Recommender`.

Routes (OpenAPI at ``/openapi.json``, interactive docs at ``/docs``):

- ``POST /v1/recommend`` — ``{user_id, k?, exclude?, context?, history?}`` → the top k videos
  with ``expected_watch_s`` (what the ranker serves as expected watch time per impression),
  ``odds`` (e^z) and ``p_click`` where the objective has them, ``rank`` and the model version.
  An unknown user with no ``history`` gets the documented **cold-start** answer: the most
  clicked videos of the bundled log's last days, ranked with every user feature absent
  (``cold_start: true``, ``candidate_source: "popularity"``).
- ``POST /v1/rank`` — ``{user_id, video_ids, context?, history?}`` → the same scores for the
  given videos, all of them, best first. Video ids the bundle does not know are a 422 that
  names them (``unknown_videos = "reject"``, the default) or are scored with every item
  feature out of vocabulary (``"score_oov"``).
- ``GET /healthz`` (the process is up), ``GET /readyz`` (200 only once a model is loaded and
  warmed up, else 503), ``GET /metrics`` (Prometheus text format).
- ``POST /admin/reload`` — load a bundle (the request's ``bundle_dir``, else the served path
  again, following its ``current`` pointer) *beside* the serving one, warm it up, then swap
  the reference in one assignment. Requests that already hold the old model finish on it; a
  bundle that fails to load or verify is rejected (422) and the old one keeps serving. Needs
  ``Authorization: Bearer <admin token>`` (403 when no token is configured).

Every bad input is a 422 in FastAPI's validation-error shape (``{"detail": [{"loc", "msg",
"type", …}]}``): malformed JSON, unknown fields, k or list sizes beyond the configured limits,
unknown video ids, history events after the request time. Nothing a client sends gives a 5xx.

Handlers run the model inline on the event loop by default: a request is about 2 ms of NumPy /
ONNX Runtime work that holds the GIL for most of it, so a worker thread adds no CPU and costs a
hop (measured on KuaiRand at 80 requests/s: 4.2–4.3 ms of server CPU per request inline, 4.3–4.7
ms with ``scoring_threads = 2``, latencies alike). ``scoring_threads`` moves scoring off the loop
when other routes must answer during a long scoring; ``workers`` runs several server processes
for more cores. The HTTP stack itself (routing, validation, middleware, JSON) costs ~0.15 ms
of CPU per request, measured with the model stubbed out. Loading a bundle runs in a worker
thread so the loop keeps serving while a reload happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import Body, FastAPI, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ytdnn.serving.recommender import (
    HistoryEvent,
    RankedList,
    Recommender,
    RecommendError,
    RequestContext,
)
from ytdnn.serving.settings import ServingSettings

__all__ = ["ModelSlot", "configure_threads", "create_app", "curl_example", "serve"]

log = logging.getLogger("ytdnn.serving")

INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
# Hard caps of the request schema; the configured limits (ServingSettings) are at most these
# and are written into the OpenAPI document of each app.
ABSOLUTE_MAX_LIST = 100_000
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                     0.25, 0.5, 1.0, 2.5)

Id64 = Annotated[int, Field(ge=0, le=INT64_MAX)]
WARMUP_HEADER = b"x-ytdnn-warmup"


# ---------------------------------------------------------------------------------------------
# Request and response schemas


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContextIn(_Strict):
    """Request context. Omitted fields take the service clock (``time_ms``) and tab 0. The hour
    of day the ranker sees is derived from ``time_ms``."""

    tab: int | None = Field(None, ge=0, le=INT32_MAX, description="page/tab the request comes from")
    time_ms: int | None = Field(None, ge=0, le=32_503_680_000_000,
                                description="request time, ms since the Unix epoch (default: the service clock)")


class HistoryEventIn(_Strict):
    """A recent event the client knows and the bundle does not; oldest first."""

    video_id: Id64
    time_ms: int | None = Field(None, ge=0, le=32_503_680_000_000,
                                description="event time; must be before the request time (default: just before it)")
    is_click: bool = Field(True, description="a click (watch) or a bare impression")
    watch_time_s: float = Field(0.0, ge=0.0, le=1e7, allow_inf_nan=False, description="seconds watched (clicks)")


class RecommendRequest(_Strict):
    user_id: Id64
    k: int | None = Field(None, ge=1, le=ABSOLUTE_MAX_LIST, description="how many videos (default: default_k, "
                                                                        "at most max_k)")
    exclude: list[Id64] = Field(default_factory=list, max_length=ABSOLUTE_MAX_LIST,
                                description="video ids never to return (at most max_exclude)")
    context: ContextIn | None = None
    history: list[HistoryEventIn] = Field(default_factory=list, max_length=ABSOLUTE_MAX_LIST,
                                          description="recent events beyond the bundled log (at most max_history_events)")


class RankRequest(_Strict):
    user_id: Id64
    video_ids: list[Id64] = Field(min_length=1, max_length=ABSOLUTE_MAX_LIST,
                                  description="distinct video ids to score (at most max_rank_videos)")
    context: ContextIn | None = None
    history: list[HistoryEventIn] = Field(default_factory=list, max_length=ABSOLUTE_MAX_LIST,
                                          description="recent events beyond the bundled log (at most max_history_events)")


class ReloadRequest(_Strict):
    bundle_dir: str | None = Field(None, max_length=4096,
                                   description="bundle folder to load (default: the served path, following `current`)")


class ScoredVideoOut(BaseModel):
    video_id: int
    rank: int = Field(description="1 = best")
    expected_watch_s: float = Field(description="expected watch time of this impression, seconds")
    odds: float | None = Field(None, description="e^z, the weighted-LR odds (when the objective has them)")
    p_click: float | None = Field(None, description="click probability (when the objective has a click head)")


class RecommendResponse(BaseModel):
    user_id: int
    model_version: str
    cold_start: bool = Field(description="the bundle has no record of this user")
    candidate_source: Literal["retrieval", "popularity", "request"]
    candidates_ranked: int
    items: list[ScoredVideoOut]


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    ready: bool
    model_version: str | None = None
    state: str
    detail: str | None = None


class ReloadResponse(BaseModel):
    model_version: str
    previous_version: str | None
    bundle_dir: str
    load_s: float


class ErrorDetail(BaseModel):
    detail: Any


VALIDATION_ERROR = {"description": "Invalid request (FastAPI validation-error shape)", "model": ErrorDetail}
NOT_READY = {"description": "No model loaded yet", "model": ErrorDetail}


# ---------------------------------------------------------------------------------------------
# The hot-swappable model


class ReloadInProgress(RuntimeError):
    """Another reload is running."""


class ModelSlot:
    """Holds the serving :class:`Recommender`; a reload swaps it with one reference assignment.

    A request reads :attr:`current` once and keeps that object for its whole life, so an
    in-flight request finishes on the model it started with even if a swap happens meanwhile
    (the old model is freed when its last request drops it).
    """

    def __init__(self, loader: Callable[[Path], Recommender], settings: ServingSettings, bundle_dir: Path) -> None:
        self._loader = loader
        self.settings = settings
        self.bundle_dir = bundle_dir
        self._current: Recommender | None = None
        self._reload_lock = threading.Lock()
        self.state: Literal["empty", "loading", "ready", "failed"] = "empty"
        self.last_error: str | None = None
        self.loaded_at: float | None = None
        self.on_swap: Callable[[Recommender, Recommender | None], None] | None = None

    @property
    def current(self) -> Recommender | None:
        return self._current

    def install(self, recommender: Recommender) -> None:
        """Serve an already loaded and warmed-up recommender."""
        previous, self._current = self._current, recommender
        self.state, self.loaded_at, self.last_error = "ready", time.time(), None
        if self.on_swap is not None:
            self.on_swap(recommender, previous)

    def load(self, path: Path | None = None) -> tuple[Recommender, Recommender | None, float]:
        """Load ``path`` (default: the slot's bundle dir), warm it up, swap. Returns (new, old, seconds).

        Raises :class:`ReloadInProgress` when another load is running, and whatever the loader
        raises for a broken bundle (the serving model is then untouched).
        """
        if not self._reload_lock.acquire(blocking=False):
            raise ReloadInProgress("a reload is already running")
        try:
            started = time.perf_counter()
            if self._current is None:
                self.state = "loading"
            try:
                fresh = self._loader(path or self.bundle_dir)
                fresh.warm_up(self.settings.warmup_requests)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self._current is None:
                    self.state = "failed"
                raise
            previous = self._current
            self.install(fresh)
            if path is not None:
                self.bundle_dir = path
            return fresh, previous, time.perf_counter() - started
        finally:
            self._reload_lock.release()


# ---------------------------------------------------------------------------------------------
# Metrics


class ServiceMetrics:
    """Prometheus metrics in a registry of the app's own (several apps may live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("ytdnn_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("ytdnn_http_request_duration_seconds", "Request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.model_info = Gauge("ytdnn_model_info", "1 for the model version being served", ["version"],
                                registry=self.registry)
        self.model_loaded = Gauge("ytdnn_model_loaded_timestamp_seconds", "When the served model was swapped in",
                                  registry=self.registry)
        self.reloads = Counter("ytdnn_model_reloads", "Bundle loads by outcome", ["outcome"], registry=self.registry)
        self.cold_start = Counter("ytdnn_cold_start_requests", "Recommendations for users the bundle does not know",
                                  registry=self.registry)
        self.candidates = Histogram("ytdnn_candidates_ranked", "Candidates ranked per request",
                                    buckets=(1, 10, 50, 100, 200, 300, 500, 1000, 2000, 5000), registry=self.registry)

    def swapped(self, new: Recommender, old: Recommender | None) -> None:
        if old is not None and old.version != new.version:
            self.model_info.remove(old.version)
        self.model_info.labels(version=new.version).set(1)
        self.model_loaded.set_to_current_time()


class _MetricsMiddleware:
    """Pure ASGI middleware: count and time every HTTP request by its route template."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        if (WARMUP_HEADER, b"1") in scope.get("headers", ()):
            await self.app(scope, receive, send)  # the service's own warm-up: not traffic
            return
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # Label by template, never the raw path, so label cardinality stays bounded.
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(route=name, method=scope.get("method", ""), status=str(status["code"])).inc()
            self.metrics.latency.labels(route=name).observe(time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# The app


def configure_threads(settings: ServingSettings) -> None:
    """Give PyTorch ``intra_op_threads`` threads (1 by default) for the whole process.

    A request's matrix products are small; on a busy machine two OpenMP threads spinning at a
    barrier made a 300 x 100 product ~100x slower (20 ms instead of 0.1 ms), measured here.
    """
    import torch

    torch.set_num_threads(settings.intra_op_threads)


def _validation_error(loc: tuple[Any, ...], message: str, kind: str, value: Any) -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ("body", *loc), "msg": message, "input": value}])


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def _check_limit(size: int, limit: int, loc: tuple[Any, ...], what: str) -> None:
    if size > limit:
        raise _validation_error(loc, f"{what}: at most {limit} allowed, got {size}", "too_long", size)


def _context(context: ContextIn | None) -> RequestContext:
    if context is None:
        return RequestContext()
    return RequestContext(tab=context.tab, time_ms=context.time_ms)


def _history(events: list[HistoryEventIn]) -> list[HistoryEvent]:
    return [HistoryEvent(video_id=e.video_id, time_ms=e.time_ms, is_click=e.is_click, watch_time_s=e.watch_time_s)
            for e in events]


def _answer(result: RankedList) -> Response:
    # Serialised here (the shape is RecommendResponse, documented on the route): re-validating
    # our own output with pydantic on every request would cost more than the JSON itself.
    body = {"user_id": result.user_id, "model_version": result.model_version, "cold_start": result.cold_start,
            "candidate_source": result.candidate_source, "candidates_ranked": result.candidates_ranked,
            "items": [{"video_id": item.video_id, "rank": item.rank, "expected_watch_s": item.expected_watch_s,
                       "odds": item.odds, "p_click": item.p_click} for item in result.items]}
    return Response(json.dumps(body, allow_nan=False, separators=(",", ":")), media_type="application/json")


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def create_app(bundle_dir: str | Path, settings: ServingSettings | None = None, *,
               loader: Callable[[Path], Recommender] | None = None,
               recommender: Recommender | None = None) -> FastAPI:
    """The FastAPI app serving ``bundle_dir`` (a bundle, or a folder with a ``current`` pointer).

    ``loader``: path → warmed-up-able :class:`Recommender` (default: :func:`ytdnn.serving.bundle.load_recommender`
    with ``settings``); ``recommender``: an already loaded model to serve from the start (it is
    warmed up unless it already was). Without it the model is loaded at start-up — in the
    background when ``settings.background_load`` (``/readyz`` says 503 until it is ready).
    """
    settings = settings or ServingSettings()
    bundle_path = Path(bundle_dir)
    if loader is None:
        from ytdnn.serving.bundle import load_recommender

        def loader(path: Path) -> Recommender:
            return load_recommender(path, settings)

    metrics = ServiceMetrics()
    slot = ModelSlot(loader, settings, bundle_path)
    slot.on_swap = metrics.swapped

    def initial_load() -> None:
        try:
            slot.load()
            metrics.reloads.labels(outcome="ok").inc()
        except Exception as exc:  # reported by /readyz; the process stays up for a reload
            metrics.reloads.labels(outcome="rejected").inc()
            log.error("loading %s failed: %s", bundle_path, exc)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_threads(settings)
        tasks: list[asyncio.Task[Any]] = []
        if slot.current is None:
            if recommender is not None:
                if not recommender.warmed_up:
                    await anyio.to_thread.run_sync(recommender.warm_up, settings.warmup_requests)
                slot.install(recommender)
            elif settings.background_load:
                slot.state = "loading"  # already, not once the worker thread gets to it: /readyz may come first
                tasks.append(asyncio.create_task(anyio.to_thread.run_sync(initial_load)))
            else:
                await anyio.to_thread.run_sync(initial_load)
            if slot.current is not None and settings.warmup_requests > 0:
                await _warm_http_stack(app, slot.current, settings)
        if settings.watch_pointer:
            tasks.append(asyncio.create_task(_watch_pointer(slot, metrics, bundle_path, settings.watch_interval_s)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    app = FastAPI(title="ytdnn", version="1", lifespan=lifespan,
                  description="The YouTube deep recommender: candidate generation, then a ranker whose "
                              "e^(Wx+b) is served as expected watch time. See `/docs`.")
    app.state.slot = slot
    app.state.metrics = metrics
    app.state.settings = settings
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    json_routes = {"/v1/recommend", "/v1/rank", "/admin/reload"}

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler, except that a NaN/inf the client sent is echoed as text: JSON
        # cannot carry it, and failing to encode the error must not become a 500.
        return JSONResponse(status_code=422, content={"detail": _json_safe(jsonable_encoder(exc.errors()))})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and request.url.path in json_routes:
            # A body FastAPI cannot even decode (not UTF-8, not a JSON document) is malformed JSON
            # like any other: 422 in the validation-error shape.
            detail = [{"type": "json_invalid", "loc": ["body"], "msg": f"request body is not valid JSON: {exc.detail}",
                       "input": None}]
            return JSONResponse(status_code=422, content={"detail": detail})
        return await http_exception_handler(request, exc)

    @app.exception_handler(RecommendError)
    async def _recommend_error(request: Request, exc: RecommendError) -> JSONResponse:
        loc = ("body", *exc.field)
        detail = [{"type": exc.kind, "loc": list(loc), "msg": str(exc), "input": exc.value}]
        return JSONResponse(status_code=422, content={"detail": jsonable_encoder(detail)})

    limiter = anyio.CapacityLimiter(settings.scoring_threads) if settings.scoring_threads else None

    async def run_scoring(call: Callable[[], RankedList]) -> RankedList:
        if limiter is None:
            return call()
        return await anyio.to_thread.run_sync(call, limiter=limiter)

    def current_model() -> Recommender | JSONResponse:
        model = slot.current
        if model is None:
            return JSONResponse(status_code=503, content={"detail": f"no model loaded yet (state: {slot.state})"})
        return model

    @app.post("/v1/recommend", response_model=RecommendResponse, tags=["recommend"],
              responses={422: VALIDATION_ERROR, 503: NOT_READY})
    async def recommend(body: RecommendRequest) -> Any:
        """Top k videos for a user: retrieve `candidate_count` candidates with the user tower and the
        index, rank them by expected watch time (the ranker's e^(Wx+b)), return the best k.

        **Cold start**: a user the bundle has never seen, with no `history` in the request, gets the
        most-clicked videos of the bundled log's last days as candidates, ranked with every user
        feature absent (`cold_start: true`, `candidate_source: "popularity"`). With a `history`, the
        user tower runs on it (`candidate_source: "retrieval"`, still `cold_start: true`)."""
        k = settings.default_k if body.k is None else body.k
        _check_limit(k, settings.max_k, ("k",), "k")
        _check_limit(len(body.exclude), settings.max_exclude, ("exclude",), "exclude")
        _check_limit(len(body.history), settings.max_history_events, ("history",), "history")
        model = current_model()
        if isinstance(model, JSONResponse):
            return model
        result = await run_scoring(functools.partial(model.recommend, body.user_id, k, exclude=body.exclude,
                                                     context=_context(body.context), history=_history(body.history)))
        if result.cold_start:
            metrics.cold_start.inc()
        metrics.candidates.observe(result.candidates_ranked)
        return _answer(result)

    @app.post("/v1/rank", response_model=RecommendResponse, tags=["recommend"],
              responses={422: VALIDATION_ERROR, 503: NOT_READY})
    async def rank(body: RankRequest) -> Any:
        """Score the given videos for a user and return all of them, best first.

        Video ids the bundle has no record of are a 422 naming them (or, with the setting
        `unknown_videos = "score_oov"`, scored with every item feature out of vocabulary); a
        repeated id is a 422 too."""
        _check_limit(len(body.video_ids), settings.max_rank_videos, ("video_ids",), "video_ids")
        _check_limit(len(body.history), settings.max_history_events, ("history",), "history")
        model = current_model()
        if isinstance(model, JSONResponse):
            return model
        result = await run_scoring(functools.partial(model.rank, body.user_id, body.video_ids,
                                                     context=_context(body.context), history=_history(body.history)))
        metrics.candidates.observe(result.candidates_ranked)
        return _answer(result)

    @app.get("/healthz", response_model=HealthResponse, tags=["operations"])
    async def healthz() -> Any:
        """The process is up (says nothing about the model)."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=ReadyResponse, tags=["operations"], responses={503: {"model": ReadyResponse}})
    async def readyz() -> Any:
        """200 once a model is loaded and warmed up; 503 before (or when the first load failed)."""
        model = slot.current
        if model is None or not model.warmed_up:
            return JSONResponse(status_code=503, content={"ready": False, "model_version": None, "state": slot.state,
                                                          "detail": slot.last_error})
        return {"ready": True, "model_version": model.version, "state": slot.state, "detail": None}

    @app.get("/metrics", tags=["operations"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
    async def prometheus_metrics() -> Response:
        """Request counts, latency histograms, model version, reloads (Prometheus text format)."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", response_model=ReloadResponse, tags=["admin"],
              responses={401: {"model": ErrorDetail}, 403: {"model": ErrorDetail}, 409: {"model": ErrorDetail},
                         422: VALIDATION_ERROR})
    async def reload(body: Annotated[ReloadRequest | None, Body()] = None,
                     authorization: Annotated[str | None, Header()] = None) -> Any:
        """Load a bundle beside the serving one, warm it up and swap atomically (admin token)."""
        if settings.admin_token is None:
            return JSONResponse(status_code=403, content={"detail": "admin routes are disabled: no admin token "
                                                                    "is configured"})
        if settings.workers > 1:
            # A request reaches one worker; reloading only that one would serve two models at once.
            return JSONResponse(status_code=409, content={"detail": f"{settings.workers} workers: roll out a bundle "
                                                                    "by moving the `current` pointer, which every "
                                                                    "worker watches"})
        token = _bearer(authorization)
        if token is None or not hmac.compare_digest(token.encode(), settings.admin_token.encode()):
            return JSONResponse(status_code=401, content={"detail": "missing or wrong admin token "
                                                                    "(Authorization: Bearer <token>)"})
        path = Path(body.bundle_dir) if body is not None and body.bundle_dir else None
        try:
            fresh, previous, seconds = await anyio.to_thread.run_sync(slot.load, path)
        except ReloadInProgress as exc:
            return JSONResponse(status_code=409, content={"detail": str(exc)})
        except Exception as exc:  # a broken bundle: reject it, keep serving the old model
            metrics.reloads.labels(outcome="rejected").inc()
            log.warning("reload of %s rejected: %s", path or slot.bundle_dir, exc)
            detail = [{"type": "bundle_rejected", "loc": ["body", "bundle_dir"], "input": str(path or slot.bundle_dir),
                       "msg": f"bundle rejected, still serving {getattr(slot.current, 'version', None)}: {exc}"}]
            return JSONResponse(status_code=422, content={"detail": detail})
        metrics.reloads.labels(outcome="ok").inc()
        return {"model_version": fresh.version, "previous_version": None if previous is None else previous.version,
                "bundle_dir": str(slot.bundle_dir), "load_s": seconds}

    def openapi() -> dict[str, Any]:
        # The configured limits, so the document tells clients (and schemathesis) what passes.
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.get("components", {}).get("schemas", {})
            limits = {("RecommendRequest", "k"): ("maximum", settings.max_k),
                      ("RecommendRequest", "exclude"): ("maxItems", settings.max_exclude),
                      ("RecommendRequest", "history"): ("maxItems", settings.max_history_events),
                      ("RankRequest", "video_ids"): ("maxItems", settings.max_rank_videos),
                      ("RankRequest", "history"): ("maxItems", settings.max_history_events)}
            for (model_name, field_name), (keyword, value) in limits.items():
                prop = components.get(model_name, {}).get("properties", {}).get(field_name)
                if prop is None:
                    continue
                for variant in prop.get("anyOf", [prop]):
                    if keyword in variant or (keyword == "maximum" and variant.get("type") == "integer"):
                        variant[keyword] = value
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _warm_http_stack(app: FastAPI, model: Recommender, settings: ServingSettings) -> None:
    """A few requests through the whole ASGI stack (validation, routing, middleware, JSON) before
    the server accepts connections: the model was warmed up in-process, this warms the rest."""
    import httpx

    users = model.store.logged_user_ids
    user = int(users[0]) if users.size else 0
    headers = {WARMUP_HEADER.decode(): "1"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://warm-up") as client:
        for i in range(min(settings.warmup_requests, 5)):
            answer = await client.post("/v1/recommend", headers=headers,
                                       json={"user_id": int(users[i % users.size]) if users.size else 0})
        videos = [item["video_id"] for item in answer.json().get("items", [])][:3] if answer.status_code == 200 else []
        if videos:
            await client.post("/v1/rank", headers=headers, json={"user_id": user, "video_ids": videos})
        await client.get("/readyz", headers=headers)


async def _watch_pointer(slot: ModelSlot, metrics: ServiceMetrics, root: Path, interval_s: float) -> None:
    """Reload when the ``current`` pointer under ``root`` names another bundle."""
    from ytdnn.serving.bundle import resolve_bundle_dir

    seen = None
    with contextlib.suppress(Exception):
        seen = resolve_bundle_dir(root)
    while True:
        await asyncio.sleep(interval_s)
        try:
            target = resolve_bundle_dir(root)
        except Exception as exc:  # a pointer being rewritten, or naming nothing: try again later
            log.warning("bundle pointer under %s unreadable: %s", root, exc)
            continue
        if target == seen:
            continue
        seen = target  # a rejected target is not retried until the pointer changes again
        try:
            await anyio.to_thread.run_sync(slot.load, root)
            metrics.reloads.labels(outcome="ok").inc()
            log.info("pointer reload: now serving %s", target)
        except ReloadInProgress:
            seen = None
        except Exception as exc:
            metrics.reloads.labels(outcome="rejected").inc()
            log.warning("pointer reload of %s rejected: %s", target, exc)


_WORKER_BUNDLE_ENV = "YTDNN_SERVE_BUNDLE"
_WORKER_SETTINGS_ENV = "YTDNN_SERVE_SETTINGS"


def app_from_environment() -> FastAPI:
    """The app of one uvicorn worker process (``workers > 1``): bundle and settings from the
    environment the parent set. The worker loads and warms its model before it accepts a
    connection, and follows the ``current`` pointer for roll-outs."""
    settings = ServingSettings.model_validate_json(os.environ[_WORKER_SETTINGS_ENV])
    settings = settings.merged({"background_load": False, "watch_pointer": True})
    return create_app(os.environ[_WORKER_BUNDLE_ENV], settings)


def serve(bundle_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          config_path: str | Path | None = None, settings: ServingSettings | None = None) -> None:
    """``ytdnn serve``: verify and load the bundle (a broken one stops here with a clear error),
    warm it up, then serve it with uvicorn until interrupted. With ``workers > 1`` the bundle is
    verified here and each worker process loads its own copy."""
    import uvicorn

    from ytdnn.serving.bundle import load_recommender, resolve_bundle_dir, verify_bundle
    from ytdnn.serving.settings import load_settings

    settings = settings or load_settings(config_path)
    configure_threads(settings)
    if settings.workers > 1:
        manifest = verify_bundle(resolve_bundle_dir(bundle_dir))
        os.environ[_WORKER_BUNDLE_ENV] = str(bundle_dir)
        os.environ[_WORKER_SETTINGS_ENV] = settings.model_dump_json()
        print(f"ytdnn: serving {bundle_dir} (model {manifest['version']}) on http://{host}:{port} with "
              f"{settings.workers} workers; docs at /docs", file=sys.stderr, flush=True)
        uvicorn.run("ytdnn.serving.app:app_from_environment", factory=True, host=host, port=port,
                    workers=settings.workers, log_level="warning", access_log=False)
        return
    recommender = load_recommender(Path(bundle_dir), settings)
    warm = recommender.warm_up(settings.warmup_requests)
    log.info("serving %s (model %s), warm-up %s", bundle_dir, recommender.version, warm)
    app = create_app(bundle_dir, settings, recommender=recommender)
    users = recommender.store.logged_user_ids
    example_user = int(users[0]) if users.size else 1
    print(f"ytdnn: serving {bundle_dir} (model {recommender.version}) on http://{host}:{port}; docs at /docs\n"
          f"  try: {curl_example(f'http://{host}:{port}', example_user)}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def curl_example(base_url: str, user_id: int, k: int = 5) -> str:
    """A copy-pasteable ``curl`` call of ``/v1/recommend``."""
    body = json.dumps({"user_id": user_id, "k": k})
    return f"curl -s -X POST {base_url}/v1/recommend -H 'Content-Type: application/json' -d '{body}'"
