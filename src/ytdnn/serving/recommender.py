r"""The in-process serving path: user → candidates → ranked videos with expected watch time.

One request runs

1. **history**: the user's logged events (the bundled log, indexed by user, O(1) per lookup)
   plus any events the request carries (``history``, for real-time use), strictly before the
   request time ``now``;
2. **candidates**: the retrieval model's user tower turns that history (and the profile) into a
   user vector u, and the index returns the ``candidate_count`` videos with the largest u·v
   (:class:`CandidateRetriever`). A **cold-start** user — one the bundle has never seen and
   whose request carries no history — gets the most-clicked videos of the bundled log's last
   days instead (:meth:`HistoryStore.popular_videos`);
3. **ranking** (:class:`SplitRanker`): the feature pipeline builds one batch for the N
   candidates; the user half of the first layer, :math:`h_u = W_u x_u + b`, is computed once
   from row 0 and the candidate half :math:`W_c x_c` for all rows in one matrix product,
   :math:`z = \mathrm{tower}(h_u + W_c x_c)`, where the item part of :math:`W_c x_c` (and,
   at the default request time, the item-side history's part) is a row of a table computed at
   load; the objective turns z into the served ``expected_watch_s`` (e^z for weighted LR),
   ``odds`` and ``p_click`` where it has them;
4. the top k by the objective's ranking key (``odds`` for the default ``wlr-corrected``, which
   serves the calibrated c · odds · (1 − p̂); ``expected_watch_s`` for most others; ``p_click``
   for click models), best first, ``rank`` 1..k.

Unknown users are ranked with every user feature absent (the user id and profile fall back to
the out-of-vocabulary row, the history is empty), which is what "no user features" means for a
network whose OOV rows are zero vectors.

Everything here is read-only after construction, so one :class:`Recommender` serves requests
from many threads at once; a reload builds a new one and swaps the reference.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import polars as pl
import torch

from ytdnn.features.layout import RankingBatch
from ytdnn.serving.onnx_ranker import SplitNetwork, batch_arrays

__all__ = [
    "CandidateRetriever",
    "HistoryEvent",
    "HistoryStore",
    "RankedList",
    "RankingFeatures",
    "Recommender",
    "RecommendError",
    "RequestContext",
    "RequestError",
    "ScoredVideo",
    "SplitRanker",
    "UnknownVideosError",
]

MS_PER_DAY = 86_400_000
LOG_COLUMNS: dict[str, pl.DataType] = {
    "row_id": pl.Int64(), "user_id": pl.Int64(), "video_id": pl.Int64(), "time_ms": pl.Int64(),
    "date": pl.Int32(), "hourmin": pl.Int32(), "is_click": pl.Int8(), "watch_time_s": pl.Float64(),
    "tab": pl.Int32(), "tokens": pl.List(pl.Int64()),
}


class RecommendError(ValueError):
    """A request the models cannot answer as asked; the service turns it into a 422."""

    def __init__(self, message: str, *, field: tuple[str | int, ...] = (), value: Any = None,
                 kind: str = "invalid_request") -> None:
        super().__init__(message)
        self.field = field
        self.value = value
        self.kind = kind


class RequestError(RecommendError):
    """A field of the request is inconsistent (e.g. a history event after the request time)."""


class UnknownVideosError(RecommendError):
    """``/v1/rank`` named videos the bundle has no record of."""

    def __init__(self, video_ids: Sequence[int], positions: Sequence[int]) -> None:
        shown = list(video_ids)[:20]
        more = f" (and {len(video_ids) - 20} more)" if len(video_ids) > 20 else ""
        super().__init__(f"unknown video id(s) {shown}{more}: not in the bundle's video table",
                         field=("video_ids",), value=list(video_ids), kind="unknown_video")
        self.video_ids = list(video_ids)
        self.positions = list(positions)


# ---------------------------------------------------------------------------------------------
# Request and answer types


@dataclass(frozen=True)
class RequestContext:
    """Optional request context: the page/tab and the request time (ms since the Unix epoch)."""

    tab: int | None = None
    time_ms: int | None = None


@dataclass(frozen=True)
class HistoryEvent:
    """A recent event the client knows of and the bundle does not (real-time history).

    ``time_ms`` None: just before the request, in the given order (oldest first).
    """

    video_id: int
    time_ms: int | None = None
    is_click: bool = True
    watch_time_s: float = 0.0


@dataclass(frozen=True)
class ScoredVideo:
    video_id: int
    rank: int
    expected_watch_s: float
    odds: float | None = None
    p_click: float | None = None


@dataclass(frozen=True)
class RankedList:
    """The answer to one request."""

    user_id: int
    model_version: str
    cold_start: bool
    candidate_source: Literal["retrieval", "popularity", "request"]
    items: list[ScoredVideo]
    candidates_ranked: int
    timings_ms: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# The bundled log, indexed by user


def _sorted_positions(keys: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position of each query in sorted unique ``keys``, whether it is there)."""
    if keys.size == 0:
        return np.zeros(len(query), dtype=np.int64), np.zeros(len(query), dtype=bool)
    position = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return position, keys[position] == query


class HistoryStore:
    """The bundled impression log plus the user and video tables, indexed for per-request lookups.

    ``log`` is conformed to :data:`LOG_COLUMNS` and sorted by (user_id, time_ms, row_id); each
    user's events are one zero-copy ``slice`` of it. ``clock_offset_hours`` converts event times
    to the log's own ``date``/``hourmin`` buckets (KuaiRand logs them in UTC+8).
    """

    def __init__(self, log: pl.DataFrame, users: pl.DataFrame, videos: pl.DataFrame, *,
                 popular_video_ids: np.ndarray | None = None, popularity_days: float = 3.0,
                 clock_offset_hours: int = 0) -> None:
        for column in ("user_id", "video_id", "time_ms", "is_click", "watch_time_s"):
            if column not in log.columns:
                raise ValueError(f"log: missing column {column!r}")
        frame = log
        if "row_id" not in frame.columns:
            frame = frame.with_row_index("row_id")
        defaults = {"date": pl.lit(0), "hourmin": pl.lit(0), "tab": pl.lit(0),
                    "tokens": pl.lit([], dtype=pl.List(pl.Int64))}
        frame = frame.with_columns([expr.alias(name) for name, expr in defaults.items() if name not in frame.columns])
        self.log = (frame.select([pl.col(name).cast(dtype) for name, dtype in LOG_COLUMNS.items()])
                    .sort(["user_id", "time_ms", "row_id"]))
        user_column = self.log["user_id"].to_numpy()
        self._log_users, self._log_starts, counts = np.unique(user_column, return_index=True, return_counts=True)
        self._log_ends = self._log_starts + counts
        if "user_id" not in users.columns:
            raise ValueError("users: missing column 'user_id'")
        self.users = users.unique("user_id", keep="first").sort("user_id")
        self._user_ids = self.users["user_id"].to_numpy().astype(np.int64)
        if "video_id" not in videos.columns:
            raise ValueError("videos: missing column 'video_id'")
        self.videos = videos.unique("video_id", keep="first").sort("video_id")
        self._video_ids = self.videos["video_id"].to_numpy().astype(np.int64)
        self.end_time_ms = int(self.log["time_ms"].max()) if self.log.height else 0
        self.clock_offset_hours = int(clock_offset_hours)
        if popular_video_ids is None:
            popular_video_ids = self.compute_popularity(self.log, popularity_days)
        popular = np.asarray(popular_video_ids, dtype=np.int64)
        self.popular_video_ids = popular[self.known_videos(popular)]
        self._empty_log = self.log.clear()

    @staticmethod
    def compute_popularity(log: pl.DataFrame, days: float) -> np.ndarray:
        """Video ids by clicks in the log's last ``days`` days, then by all clicks, most first."""
        if log.height == 0:
            return np.zeros(0, dtype=np.int64)
        start = int(log["time_ms"].max()) - int(days * MS_PER_DAY)
        ranked = (log.group_by("video_id")
                  .agg(((pl.col("time_ms") >= start) & (pl.col("is_click") == 1)).sum().alias("recent"),
                       (pl.col("is_click") == 1).sum().alias("clicks"), pl.len().alias("impressions"))
                  .sort(["recent", "clicks", "impressions", "video_id"], descending=[True, True, True, False]))
        return ranked["video_id"].to_numpy().astype(np.int64)

    # -- lookups ---------------------------------------------------------------------------------
    @property
    def logged_user_ids(self) -> np.ndarray:
        """Users with at least one logged event, ascending."""
        return self._log_users

    def has_user(self, user_id: int) -> bool:
        """Whether the bundle knows the user (a profile row or at least one logged event)."""
        query = np.array([user_id], dtype=np.int64)
        return bool(_sorted_positions(self._user_ids, query)[1][0] or _sorted_positions(self._log_users, query)[1][0])

    def known_videos(self, video_ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which ids are in the video table."""
        return _sorted_positions(self._video_ids, np.asarray(video_ids, dtype=np.int64))[1]

    def popular_videos(self, n: int, exclude: set[int] | None = None) -> np.ndarray:
        ids = self.popular_video_ids
        if exclude:
            ids = ids[~np.isin(ids, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))]
        return ids[:n]

    def date_hourmin(self, time_ms: int) -> tuple[int, int]:
        """(YYYYMMDD, HH00) of ``time_ms`` in the log's clock."""
        moment = dt.datetime.fromtimestamp(time_ms / 1000, dt.UTC) + dt.timedelta(hours=self.clock_offset_hours)
        return moment.year * 10000 + moment.month * 100 + moment.day, moment.hour * 100

    def user_log(self, user_id: int, now_ms: int, extra: Sequence[HistoryEvent] = ()) -> pl.DataFrame:
        """The user's events strictly before ``now_ms``: the bundled ones plus ``extra``."""
        position, found = _sorted_positions(self._log_users, np.array([user_id], dtype=np.int64))
        if found[0]:
            start = int(self._log_starts[position[0]])
            user_events = self.log.slice(start, int(self._log_ends[position[0]]) - start)
            if int(user_events["time_ms"][-1]) >= now_ms:
                user_events = user_events.filter(pl.col("time_ms") < now_ms)
        else:
            user_events = self._empty_log
        if not extra:
            return user_events
        # Time order, logged events before request events at the same time: the order both the
        # batch history code and the fast serving path break ties in.
        return pl.concat([user_events, self.events_frame(user_id, now_ms, extra)]).sort("time_ms", maintain_order=True)

    def events_frame(self, user_id: int, now_ms: int, events: Sequence[HistoryEvent]) -> pl.DataFrame:
        """Request history as log rows (``row_id`` -1…-n), each checked to be before ``now_ms``."""
        n = len(events)
        times = []
        for i, event in enumerate(events):
            time_ms = now_ms - (n - i) if event.time_ms is None else int(event.time_ms)
            if time_ms >= now_ms:
                raise RequestError(f"history[{i}].time_ms = {time_ms} is not before the request time {now_ms}",
                                   field=("history", i, "time_ms"), value=time_ms)
            times.append(time_ms)
        buckets = [self.date_hourmin(t) for t in times]
        return pl.DataFrame({
            "row_id": [-(i + 1) for i in range(n)], "user_id": [user_id] * n,
            "video_id": [int(e.video_id) for e in events], "time_ms": times,
            "date": [b[0] for b in buckets], "hourmin": [b[1] for b in buckets],
            "is_click": [1 if e.is_click else 0 for e in events],
            "watch_time_s": [float(e.watch_time_s) if e.is_click else 0.0 for e in events],
            "tab": [0] * n, "tokens": [[] for _ in range(n)],
        }, schema=LOG_COLUMNS).sort("time_ms", maintain_order=True)


# ---------------------------------------------------------------------------------------------
# Components


class CandidateRetriever(Protocol):
    """First stage: the ``n`` best video ids for a user, best first (fewer if the corpus is small)."""

    def retrieve(self, user_id: int, past_log: pl.DataFrame, now_ms: int, n: int) -> np.ndarray:
        """``past_log``: the user's events before ``now_ms`` (bundled and from the request)."""
        ...


class RankingFeatures(Protocol):
    """Second stage's features: a :class:`RankingBatch` for one user's unlabelled candidates."""

    def batch(self, user_id: int, candidates: np.ndarray, now_ms: int, tab: int, past_log: pl.DataFrame) -> RankingBatch:
        """Row i is the impression (user, candidates[i], now_ms, tab); ``past_log`` holds that user's
        events (those at or after ``now_ms`` are ignored)."""
        ...


class SplitRanker:
    """Features → user half once → candidate half in one batch → served quantities.

    With ``item_hidden`` (the item half of the first layer for every video of the features'
    table, :func:`~ytdnn.serving.onnx_ranker.item_hidden_table`) and features that support it,
    a request whose candidates are all in the table only gathers their item rows and computes
    the cross part and the tower; otherwise the whole candidate half is computed.

    ``item_snapshot`` = (t_s, table): the same table with the item-side history (every user's
    events on the video before t_s: click rate, watch per impression, recent impressions)
    folded in. A request whose candidates have the same history at its own time as at t_s (no
    logged event in between, no request event on a candidate; see
    :meth:`~ytdnn.serving.features.FastRankingFeatures.snapshot_applies`) gathers these rows and
    computes no item-side feature at all; any other request computes that history itself,
    exactly. The scores are the same either way (float32 rounding apart; tested).
    """

    def __init__(self, features: RankingFeatures, network: SplitNetwork,
                 predict: Callable[[torch.Tensor], dict[str, torch.Tensor]], ranking_key: str = "expected_watch_s",
                 item_hidden: np.ndarray | None = None,
                 item_snapshot: tuple[int, np.ndarray] | None = None) -> None:
        self.features = features
        self.network = network
        self.predict = predict
        self.ranking_key = ranking_key
        self.item_hidden = item_hidden if item_hidden is not None and hasattr(features, "item_rows") else None
        self.item_snapshot = item_snapshot if self.item_hidden is not None else None

    def logits(self, user_id: int, candidates: np.ndarray, now_ms: int, tab: int, past_log: pl.DataFrame,
               timings: dict[str, float] | None = None) -> np.ndarray:
        """[N, n_heads] logits of the candidates."""
        started = time.perf_counter()
        rows = None
        table = self.item_hidden
        item_history = True
        if self.item_hidden is not None:
            rows, found = self.features.item_rows(candidates)  # type: ignore[attr-defined]
            rows = rows if found.all() else None
            snapshot = self.item_snapshot
            if rows is not None and snapshot is not None and \
                    self.features.snapshot_applies(candidates, now_ms, past_log, snapshot[0]):  # type: ignore[attr-defined]
                table, item_history = snapshot[1], False
        if rows is not None:
            batch = self.features.batch(user_id, candidates, now_ms, tab, past_log,  # type: ignore[call-arg]
                                        item_columns=False, user_rows="first", item_history=item_history)
        else:
            batch = self.features.batch(user_id, candidates, now_ms, tab, past_log)
        if len(batch) != candidates.size:
            raise RuntimeError(f"the feature pipeline returned {len(batch)} rows for {candidates.size} candidates")
        categorical, multivalent, dense = batch_arrays(batch)
        featured = time.perf_counter()
        # Every row carries the same user features; row 0 stands for all of them.
        user_hidden = self.network.user_hidden(categorical[:1], [m[:1] for m in multivalent], dense[:1])
        if rows is not None:
            logits = self.network.cached_logits(user_hidden, table[rows],  # type: ignore[index]
                                                categorical, multivalent, dense)
        else:
            logits = self.network.logits(user_hidden, categorical, multivalent, dense)
        if timings is not None:
            timings["features_ms"] = (featured - started) * 1000
            timings["network_ms"] = (time.perf_counter() - featured) * 1000
        return np.asarray(logits, dtype=np.float32)

    def score(self, user_id: int, candidates: np.ndarray, now_ms: int, tab: int, past_log: pl.DataFrame,
              timings: dict[str, float] | None = None) -> dict[str, np.ndarray]:
        """Served quantities per candidate (``expected_watch_s``, and ``odds``/``p_click`` when the
        objective has them), float64 arrays aligned with ``candidates``."""
        logits = self.logits(user_id, candidates, now_ms, tab, past_log, timings)
        served = self.predict(torch.from_numpy(logits))
        return {key: value.detach().double().numpy() for key, value in served.items() if key != "logit"}


# ---------------------------------------------------------------------------------------------
# The recommender


def _finite_or_none(value: float | None) -> float | None:
    # Six significant digits: the network computes in float32, more digits would be noise.
    return float(f"{value:.6g}") if value is not None and math.isfinite(value) else None


class Recommender:
    """Both stages and the bundled history behind two calls, :meth:`recommend` and :meth:`rank`.

    ``retriever`` None (a bundle without a retrieval model): every user gets popularity candidates.
    """

    def __init__(self, *, store: HistoryStore, retriever: CandidateRetriever | None, ranker: SplitRanker,
                 version: str, candidate_count: int = 300, clock: Literal["log_end", "wall"] = "log_end",
                 unknown_videos: Literal["reject", "score_oov"] = "reject",
                 source: str | None = None, info: dict[str, Any] | None = None) -> None:
        self.store = store
        self.retriever = retriever
        self.ranker = ranker
        self.version = version
        self.candidate_count = int(candidate_count)
        self.clock = clock
        self.unknown_videos = unknown_videos
        self.source = source
        self.info = dict(info or {})
        self.warmed_up = False

    def now_ms(self, context: RequestContext) -> int:
        if context.time_ms is not None:
            return int(context.time_ms)
        if self.clock == "wall":
            return int(time.time() * 1000)
        # Just after the last logged event: every bundled event is history, none is in the future.
        return self.store.end_time_ms + 1

    def recommend(self, user_id: int, k: int, *, exclude: Sequence[int] = (), context: RequestContext | None = None,
                  history: Sequence[HistoryEvent] = ()) -> RankedList:
        """Top ``k`` videos for the user: retrieve ``candidate_count`` candidates, rank, cut."""
        if k < 1:
            raise RequestError(f"k must be >= 1, got {k}", field=("k",), value=k)
        context = context or RequestContext()
        timings: dict[str, float] = {}
        started = time.perf_counter()
        now = self.now_ms(context)
        past = self.store.user_log(user_id, now, history)
        known = self.store.has_user(user_id)
        excluded = {int(v) for v in exclude}
        wanted = self.candidate_count + len(excluded)
        if self.retriever is not None and (known or past.height):
            candidates = self.retriever.retrieve(user_id, past, now, wanted)
            candidates = candidates[candidates >= 0]
            source: Literal["retrieval", "popularity"] = "retrieval"
        else:
            candidates = np.zeros(0, dtype=np.int64)
            source = "popularity"
        if excluded:
            candidates = candidates[~np.isin(candidates, np.fromiter(excluded, dtype=np.int64, count=len(excluded)))]
        if candidates.size < self.candidate_count:
            # Top up from popularity (cold start, a tiny corpus, or most candidates excluded).
            fill = self.store.popular_videos(self.candidate_count + candidates.size, excluded)
            fill = fill[~np.isin(fill, candidates)]
            candidates = np.concatenate([candidates, fill[: self.candidate_count - candidates.size]])
        candidates = candidates[: self.candidate_count]
        timings["retrieve_ms"] = (time.perf_counter() - started) * 1000
        items = self._rank(user_id, candidates, past, now, context, timings, k)
        timings["total_ms"] = (time.perf_counter() - started) * 1000
        return RankedList(user_id=user_id, model_version=self.version, cold_start=not known, candidate_source=source,
                          items=items, candidates_ranked=int(candidates.size), timings_ms=timings)

    def rank(self, user_id: int, video_ids: Sequence[int], *, context: RequestContext | None = None,
             history: Sequence[HistoryEvent] = ()) -> RankedList:
        """Score the given videos for the user and return all of them, best first."""
        context = context or RequestContext()
        started = time.perf_counter()
        ids = np.asarray(list(video_ids), dtype=np.int64)
        if ids.size == 0:
            raise RequestError("video_ids: give at least one video id", field=("video_ids",), value=[])
        unique, first, counts = np.unique(ids, return_index=True, return_counts=True)
        if (counts > 1).any():
            duplicate = int(unique[np.argmax(counts > 1)])
            positions = np.flatnonzero(ids == duplicate).tolist()
            raise RequestError(f"video_ids: id {duplicate} appears more than once (positions {positions})",
                               field=("video_ids", positions[1]), value=duplicate)
        known_mask = self.store.known_videos(ids)
        if self.unknown_videos == "reject" and not known_mask.all():
            positions = np.flatnonzero(~known_mask)
            raise UnknownVideosError(ids[positions].tolist(), positions.tolist())
        now = self.now_ms(context)
        past = self.store.user_log(user_id, now, history)
        timings: dict[str, float] = {}
        items = self._rank(user_id, ids, past, now, context, timings)
        timings["total_ms"] = (time.perf_counter() - started) * 1000
        return RankedList(user_id=user_id, model_version=self.version, cold_start=not self.store.has_user(user_id),
                          candidate_source="request", items=items, candidates_ranked=int(ids.size), timings_ms=timings)

    def _rank(self, user_id: int, candidates: np.ndarray, past: pl.DataFrame, now: int, context: RequestContext,
              timings: dict[str, float], k: int | None = None) -> list[ScoredVideo]:
        if candidates.size == 0:
            return []
        served = self.ranker.score(user_id, candidates, now, context.tab or 0, past, timings)
        key = served.get(self.ranker.ranking_key, served["expected_watch_s"])
        # Stable sort on the negated key: ties keep the retrieval order.
        order = np.argsort(-np.nan_to_num(key, nan=-np.inf), kind="stable")[:k]
        video_ids = candidates[order].tolist()
        expected = served["expected_watch_s"][order].tolist()
        odds = served["odds"][order].tolist() if "odds" in served else [None] * len(order)
        p_click = served["p_click"][order].tolist() if "p_click" in served else [None] * len(order)
        return [ScoredVideo(video_id=video_ids[r], rank=r + 1, expected_watch_s=_finite_or_none(expected[r]) or 0.0,
                            odds=_finite_or_none(odds[r]), p_click=_finite_or_none(p_click[r]))
                for r in range(len(order))]

    # -- warm-up ---------------------------------------------------------------------------------
    def warm_up(self, requests: int = 30, k: int = 10) -> dict[str, float]:
        """Run ``requests`` recommendations (known and cold-start users, and a /rank) so that
        every lazy allocation (ONNX Runtime arenas, Polars' thread pool, NumPy/torch kernels)
        happens before the first real request. Returns the first and last latency in ms."""
        if requests <= 0:
            self.warmed_up = True
            return {}
        users = self.store.logged_user_ids
        picks = users[np.linspace(0, users.size - 1, num=min(requests, users.size)).astype(np.int64)] \
            if users.size else np.zeros(0, dtype=np.int64)
        unknown = int(max(int(users.max()) if users.size else 0, int(self.store._user_ids.max())
                          if self.store._user_ids.size else 0) + 1)
        latencies = []
        for i in range(requests):
            user = int(picks[i % picks.size]) if picks.size and i % 5 else unknown
            started = time.perf_counter()
            answer = self.recommend(user, k)
            latencies.append((time.perf_counter() - started) * 1000)
            if i == 0 and answer.items:
                self.rank(user, [item.video_id for item in answer.items])
        self.warmed_up = True
        return {"first_ms": latencies[0], "last_ms": latencies[-1], "requests": float(requests)}
