r"""Ranking and retrieval features for one request, fast: precomputed tables + NumPy history.

The batch feature code (:class:`~ytdnn.features.ranking.RankingFeaturePipeline`,
:class:`~ytdnn.features.retrieval.RetrievalFeaturizer`) is written for millions of rows in
Polars; on a single request its fixed per-operation cost dominates (≈ 80 ms for 300 candidates
on KuaiRand). Serving splits the work by what each feature depends on:

- **item side** (video id, author, music, tags, video statistics): a function of the video
  alone. Computed once at load for every video of the bundle *by the pipeline itself*
  (:meth:`RankingFeaturePipeline.transform` on one row per video), then gathered per request;
- **user side, static** (user id, profile): computed once per user the same way, plus the
  row of a user without a profile (all profile features absent) for unknown users;
- **request context** (tab, hour of day) and **history** (the user's last clicks, click rate,
  trailing-window counts, and the cross features "earlier impressions of this video", "clicks on
  this author"): computed per request in NumPy from the user's events, with exactly the
  definitions of :mod:`ytdnn.features.history` (every event strictly before ``now``), then
  normalised by the pipeline's own fitted vocabularies and quantile normalisers;
- **item-side history** (the candidate's click rate, watch time per impression and recent
  impressions over *all* users' events before ``now``): prefix sums over the bundled log sorted
  by (video, time), built once at load; a request costs one binary search per candidate. At the
  service's default request time these values are the same for every request, so the loader
  also takes a **snapshot** of them for every video (:meth:`FastRankingFeatures.item_table_batch`
  with a time) and folds it into the precomputed item half of the first layer; a request for
  which it holds (:meth:`FastRankingFeatures.snapshot_applies`: no logged event between the two
  times, no request event on a candidate) computes no item-side feature at all.

:class:`PipelineRankingFeatures` is the reference (the pipeline's own serving path,
``transform_requests``); tests hold the fast path equal to it on real data. A layout with a
feature the fast path does not know is served by the reference instead
(:func:`ranking_features_for`).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ytdnn.features.history import (
    AUTHOR_CLICK_SHARE,
    AUTHOR_CLICKS,
    CLICKED_IDS,
    HISTORY_COLUMNS,
    S_SINCE_LAST_AUTHOR_CLICK,
    S_SINCE_LAST_CLICK,
    USER_CLICK_RATE,
    USER_CLICKS_WINDOW,
    USER_IMPRESSIONS_WINDOW,
    USER_MEAN_WATCH_S,
    VIDEO_PREV_IMPRESSIONS,
)
from ytdnn.features.layout import RankingBatch
from ytdnn.features.quantile import QuantileNormaliser
from ytdnn.features.ranking import RankingFeaturePipeline
from ytdnn.features.retrieval import RetrievalFeaturizer
from ytdnn.features.vocab import Vocabulary

__all__ = [
    "FastRankingFeatures",
    "FastRetrievalFeatures",
    "PipelineRankingFeatures",
    "UnsupportedFeatureError",
    "ranking_features_for",
]

log = logging.getLogger("ytdnn.serving")

_CONTEXT_FEATURES = ("tab", "hour_of_day")
_USER_COMPUTED = {"user_id", *_CONTEXT_FEATURES}
# The history columns this module computes, by side (names as in ytdnn.features.history).
_USER_HISTORY = {CLICKED_IDS, S_SINCE_LAST_CLICK, USER_CLICK_RATE, USER_MEAN_WATCH_S, USER_IMPRESSIONS_WINDOW,
                 USER_CLICKS_WINDOW}
_CROSS_HISTORY = {VIDEO_PREV_IMPRESSIONS, AUTHOR_CLICKS, AUTHOR_CLICK_SHARE, S_SINCE_LAST_AUTHOR_CLICK}
VIDEO_CLICK_RATE = "hist_video_click_rate"
VIDEO_MEAN_WATCH_S = "hist_video_mean_watch_s"
VIDEO_IMPRESSIONS_WINDOW = "hist_video_impressions_window"
_ITEM_HISTORY = {VIDEO_CLICK_RATE, VIDEO_MEAN_WATCH_S, VIDEO_IMPRESSIONS_WINDOW}


def _is_dynamic_item(side: str, group: str) -> bool:
    """Item-side features that change with time (history over all users): not cacheable per video."""
    return side == "item" and group == "history"


class UnsupportedFeatureError(ValueError):
    """The layout holds a feature the fast serving path cannot compute; names it."""


class _IdLookup:
    """Vocabulary lookup on NumPy int64 arrays (sorted keys + searchsorted), same indices as
    :meth:`Vocabulary.lookup` (0 = out of vocabulary)."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        if vocabulary.kind != "int":
            raise UnsupportedFeatureError(f"vocabulary {vocabulary.name!r} has string keys; the fast path needs ints")
        keys = vocabulary.keys.to_numpy().astype(np.int64)
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._index = (order + 1).astype(np.int64)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.int64)
        if self._keys.size == 0:
            return np.zeros(values.shape, dtype=np.int64)
        position = np.minimum(np.searchsorted(self._keys, values), self._keys.size - 1)
        return np.where(self._keys[position] == values, self._index[position], 0)


def _positions(sorted_keys: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if sorted_keys.size == 0:
        return np.zeros(len(query), dtype=np.int64), np.zeros(len(query), dtype=bool)
    position = np.minimum(np.searchsorted(sorted_keys, query), sorted_keys.size - 1)
    return position, sorted_keys[position] == query


def _take(values: np.ndarray, position: np.ndarray, found: np.ndarray, default: float) -> np.ndarray:
    """values[position] where found, else ``default`` (safe on an empty ``values``)."""
    if values.size == 0:
        return np.full(position.shape, default, dtype=np.float64)
    return np.where(found, values[np.minimum(position, values.size - 1)], default).astype(np.float64)


def _flatten_lists(series: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(non-null values, row of each value) of a list column, through Arrow (no Polars query)."""
    array = series.to_arrow()
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(array)
    rows = np.repeat(np.arange(len(array), dtype=np.int64), lengths)
    valid = flat.is_valid().to_numpy(zero_copy_only=False)
    values = pc.fill_null(flat, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return values[valid], rows[valid]


def _expand_into(out: np.ndarray, normaliser: QuantileNormaliser, values: np.ndarray) -> None:
    """``out[:] = normaliser.transform_expand(values)`` ([x̃, x̃², √x̃] and the missing flag under
    ``indicator``), written in place with a handful of NumPy calls; ``values`` of length 1
    broadcast over every row of ``out``. Tests hold it equal to the normaliser's own method."""
    values = np.asarray(values, dtype=np.float64)
    missing = np.isnan(values)
    normalised = np.interp(np.where(missing, normaliser.knots[0], values), normaliser.knots, normaliser.cdf)
    if missing.any():
        normalised[missing] = normaliser.fill_cdf
    out[:, 0] = normalised
    out[:, 1] = normalised * normalised
    out[:, 2] = np.sqrt(normalised)
    if normaliser.missing == "indicator":
        out[:, 3] = missing


def _null_history_columns(n: int) -> list[pl.Series]:
    # One row repeated (a Python list of n empty lists costs ~0.2 s per 30k rows at load).
    columns = [pl.Series(CLICKED_IDS, [[]], dtype=pl.List(pl.Int64)).new_from_index(0, n)]
    columns += [pl.Series(name, [None], dtype=pl.Float64).new_from_index(0, n) for name in HISTORY_COLUMNS[1:]]
    return columns


def _first_of_groups(*keys: np.ndarray) -> np.ndarray:
    """Mask of the first row (in the given order) of each group of rows with equal ``keys``."""
    n = keys[0].size
    if n < 2:
        return np.ones(n, dtype=bool)
    order = np.lexsort(keys[::-1])  # stable: equal rows keep their order
    same_as_previous = np.ones(n - 1, dtype=bool)
    for key in keys:
        ordered = key[order]
        same_as_previous &= ordered[1:] == ordered[:-1]
    mask = np.empty(n, dtype=bool)
    mask[order] = np.concatenate([[True], ~same_as_previous])
    return mask


class _VideoHistoryIndex:
    """Per-video prefix sums over the log's counted events, sorted by (video, time).

    ``before(videos, t)`` gives, for each video, the impressions, clicks and watch seconds of all
    its counted events with time < t, and the impressions in [t − W, t).
    """

    def __init__(self, log: pl.DataFrame, count_duplicates_once: bool, window_ms: int) -> None:
        # The store's log is sorted by (user, time, row_id): the first row of a duplicate group is
        # the first logged one, as in history.py.
        users = log["user_id"].to_numpy().astype(np.int64)
        videos = log["video_id"].to_numpy().astype(np.int64)
        times = log["time_ms"].to_numpy().astype(np.int64)
        clicked = log["is_click"].to_numpy() == 1
        watch = np.where(clicked, log["watch_time_s"].to_numpy().astype(np.float64), 0.0)
        counted = _first_of_groups(users, videos, times) if count_duplicates_once else np.ones(times.size, bool)
        videos, times, clicked, watch = videos[counted], times[counted], clicked[counted], watch[counted]
        order = np.lexsort((times, videos))
        videos, times = videos[order], times[order]
        self._video_keys, self._video_starts = np.unique(videos, return_index=True)
        self._cum_clicks = np.concatenate([[0], np.cumsum(clicked[order])])
        self._cum_watch = np.concatenate([[0.0], np.cumsum(watch[order])])
        self.window_ms = window_ms
        # One sortable int64 key per event, rank(video) * span + (time - t0), so a whole request
        # is one searchsorted: (video, t) maps to the first event of that video at or after t.
        self._t0 = int(times.min()) - 1 if times.size else 0
        self._span = (int(times.max()) - self._t0 + 2) if times.size else 2
        if max(self._video_keys.size, 1) * self._span >= 2**62:
            raise UnsupportedFeatureError(f"the log spans {self._span} ms over {self._video_keys.size} videos: "
                                          "too wide for one int64 key")
        ranks = np.searchsorted(self._video_keys, videos)
        self._keys = ranks * self._span + (times - self._t0)
        self._times = np.sort(times)

    def same_history(self, t_a: int, t_b: int) -> bool:
        """Whether every video's history is the same "before t_a" as "before t_b": no counted
        event in [lo, hi) (the counts before t) nor in [lo − W, hi − W) (the window counts),
        lo = min(t_a, t_b), hi = max(t_a, t_b)."""
        lo, hi = min(t_a, t_b), max(t_a, t_b)
        if lo == hi:
            return True
        edges = np.searchsorted(self._times, np.array([lo, hi, lo - self.window_ms, hi - self.window_ms]))
        return bool(edges[0] == edges[1] and edges[2] == edges[3])

    def _first_at_or_after(self, rank: np.ndarray, t: np.ndarray) -> np.ndarray:
        offset = np.clip(t - self._t0, 0, self._span - 1)
        return np.searchsorted(self._keys, rank * self._span + offset, side="left")

    def before(self, videos: np.ndarray, now_ms: int) -> dict[str, np.ndarray]:
        rank, found = _positions(self._video_keys, videos)
        t = np.full(videos.size, now_ms, dtype=np.int64)
        end = self._first_at_or_after(rank, t)
        window_start = self._first_at_or_after(rank, t - self.window_ms)
        start = self._first_at_or_after(rank, np.full(videos.size, self._t0, dtype=np.int64))
        # Videos without a logged event: nothing before t.
        end = np.where(found, end, start)
        window_start = np.where(found, window_start, start)
        return {"impressions": (end - start).astype(np.float64),
                "clicks": (self._cum_clicks[end] - self._cum_clicks[start]).astype(np.float64),
                "watch_s": self._cum_watch[end] - self._cum_watch[start],
                "impressions_window": (end - window_start).astype(np.float64)}



@dataclass
class _DenseSlot:
    name: str
    side: str
    group: str
    start: int
    width: int


class PipelineRankingFeatures:
    """The reference: the pipeline's own serving path on the request's user and videos only.

    ``log`` (the whole bundled log) supplies the other users' events on the candidates, which
    item-side history features count.
    """

    def __init__(self, pipeline: RankingFeaturePipeline, users: pl.DataFrame, videos: pl.DataFrame,
                 log: pl.DataFrame | None = None) -> None:
        self.pipeline = pipeline
        self.log = log if log is not None and any(f.name in _ITEM_HISTORY for f in pipeline.layout.dense) else None
        self.users = users.sort("user_id")
        self.videos = videos.sort("video_id")
        self._user_ids = self.users["user_id"].to_numpy().astype(np.int64)
        self._video_ids = self.videos["video_id"].to_numpy().astype(np.int64)

    def batch(self, user_id: int, candidates: np.ndarray, now_ms: int, tab: int, past_log: pl.DataFrame) -> RankingBatch:
        n = candidates.size
        requests = pl.DataFrame({"user_id": np.full(n, user_id, dtype=np.int64),
                                 "video_id": np.asarray(candidates, dtype=np.int64),
                                 "time_ms": np.full(n, now_ms, dtype=np.int64), "tab": np.full(n, tab, dtype=np.int64)})
        position, found = _positions(self._user_ids, np.array([user_id], dtype=np.int64))
        users = self.users[position[found]] if found.any() else self.users.clear()
        video_ids = np.unique(np.concatenate([candidates, past_log["video_id"].to_numpy()]).astype(np.int64))
        position, found = _positions(self._video_ids, video_ids)
        videos = self.videos[position[found]] if found.any() else self.videos.clear()
        if self.log is not None:
            others = self.log.filter(pl.col("video_id").is_in(pl.Series(candidates).implode())
                                     & (pl.col("user_id") != user_id) & (pl.col("time_ms") < now_ms))
            past_log = pl.concat([past_log.select(others.columns), others])
        return self.pipeline.transform_requests(past_log, requests, users, videos)


class FastRankingFeatures:
    """:class:`RankingBatch` for one user's candidates from precomputed tables and NumPy history.

    Raises :class:`UnsupportedFeatureError` at construction for a layout it cannot serve.
    """

    def __init__(self, pipeline: RankingFeaturePipeline, users: pl.DataFrame, videos: pl.DataFrame,
                 log: pl.DataFrame | None = None) -> None:
        """``log``: the whole bundled impression log (sorted by user, time, row_id), needed when
        the layout has item-side history features (over all users' events)."""
        self.pipeline = pipeline
        layout = pipeline.layout
        self.layout = layout
        config = pipeline.config
        self.history_config = config.history
        self._tz = ZoneInfo(config.hour_timezone)
        self._window_ms = round(config.history.window_hours * 3_600_000)

        self._cat_specs = layout.categorical
        self._mv_specs = layout.multivalent
        self._dense_slots: list[_DenseSlot] = []
        offset = 0
        for spec in layout.dense:
            self._dense_slots.append(_DenseSlot(spec.name, spec.side, spec.group, offset, spec.width))
            offset += spec.width
        self._dense_width = offset
        self._check_supported()
        self._video_history: _VideoHistoryIndex | None = None
        if any(slot.name in _ITEM_HISTORY for slot in self._dense_slots):
            if log is None:
                raise UnsupportedFeatureError("item-side history features need the bundled log")
            self._video_history = _VideoHistoryIndex(log, getattr(config.history, "count_duplicates_once", False),
                                                     self._window_ms)

        self._lookups: dict[str, _IdLookup] = {}
        for spec in (*self._cat_specs, *self._mv_specs):
            if spec.name in _USER_COMPUTED or spec.name == "video_id" or spec.name == CLICKED_IDS:
                self._lookups.setdefault(spec.table, _IdLookup(pipeline.vocabularies[spec.table]))  # type: ignore[index]

        # -- videos: item-side tensors by the pipeline, one row per video (+ an unknown-video row)
        videos = videos.unique("video_id", keep="first").sort("video_id")
        self._video_ids = videos["video_id"].to_numpy().astype(np.int64)
        author = videos["author_id"] if "author_id" in videos.columns else pl.Series([None] * videos.height)
        self._video_author = author.cast(pl.Int64).fill_null(-1).to_numpy().astype(np.int64)
        self._video_has_author = author.is_not_null().to_numpy()
        absent_video = int(self._video_ids.max()) + 1 if self._video_ids.size else 1
        probe_user = -1
        video_rows = pl.DataFrame({
            "user_id": np.full(videos.height + 1, probe_user, dtype=np.int64),
            "video_id": np.concatenate([self._video_ids, [absent_video]]),
            "time_ms": np.zeros(videos.height + 1, dtype=np.int64), "tab": np.zeros(videos.height + 1, dtype=np.int64),
        }).with_columns(_null_history_columns(videos.height + 1))
        item_batch = pipeline.transform(video_rows, users.clear(), videos)
        self._item_cat_cols = [j for j, s in enumerate(self._cat_specs) if s.side == "item"]
        self._item_cat = item_batch.categorical.numpy()[:, self._item_cat_cols].copy()
        self._item_mv = {j: item_batch.multivalent[j].numpy().copy()
                         for j, s in enumerate(self._mv_specs) if s.side == "item"}
        # Static item columns only: item-side history changes with time and is computed per request.
        self._item_dense_cols = np.array([c for slot in self._dense_slots
                                          if slot.side == "item" and not _is_dynamic_item(slot.side, slot.group)
                                          for c in range(slot.start, slot.start + slot.width)], dtype=np.int64)
        self._item_dense = item_batch.dense.numpy()[:, self._item_dense_cols].copy()
        self._video_id_col = next((j for j, s in enumerate(self._cat_specs) if s.name == "video_id"), None)

        # -- users: static user-side (profile) tensors, one row per user (+ a no-profile row)
        users = users.unique("user_id", keep="first").sort("user_id")
        self._user_ids = users["user_id"].to_numpy().astype(np.int64)
        probe_video = int(self._video_ids[0]) if self._video_ids.size else 0
        user_rows = pl.DataFrame({
            "user_id": np.concatenate([self._user_ids, [int(self._user_ids.max()) + 1 if self._user_ids.size else 0]]),
            "video_id": np.full(users.height + 1, probe_video, dtype=np.int64),
            "time_ms": np.zeros(users.height + 1, dtype=np.int64), "tab": np.zeros(users.height + 1, dtype=np.int64),
        }).with_columns(_null_history_columns(users.height + 1))
        user_batch = pipeline.transform(user_rows, users, videos.head(1))
        self._profile_cat_cols = [j for j, s in enumerate(self._cat_specs)
                                  if s.side == "user" and s.name not in _USER_COMPUTED]
        self._profile_cat = user_batch.categorical.numpy()[:, self._profile_cat_cols].copy()
        self._profile_dense_cols = np.array([c for slot in self._dense_slots
                                             if slot.side == "user" and slot.group != "history"
                                             for c in range(slot.start, slot.start + slot.width)], dtype=np.int64)
        self._profile_dense = user_batch.dense.numpy()[:, self._profile_dense_cols].copy()

    # -- construction checks ---------------------------------------------------------------------
    def _check_supported(self) -> None:
        for spec in (*self._cat_specs, *self._mv_specs, *self.layout.dense):
            known = {"user": _USER_HISTORY, "cross": _CROSS_HISTORY, "item": _ITEM_HISTORY}[spec.side]
            if spec.group == "history":
                if spec.name not in known:
                    raise UnsupportedFeatureError(f"{spec.side}-side history feature {spec.name!r} is not known to "
                                                  "the fast path")
                if spec.side == "item" and spec.kind != "dense":
                    raise UnsupportedFeatureError(f"item-side history feature {spec.name!r} is not dense")
            elif spec.side == "item":
                continue  # a static property of the video: precomputed by the pipeline
            elif spec.side == "cross":
                raise UnsupportedFeatureError(f"cross feature {spec.name!r} outside the history group")
            elif spec.group == "context" and spec.name not in _CONTEXT_FEATURES:
                raise UnsupportedFeatureError(f"context feature {spec.name!r} is not known to the fast path")
            elif spec.kind == "multivalent":
                raise UnsupportedFeatureError(f"user-side multivalent feature {spec.name!r} outside the history group")

    # -- per request -----------------------------------------------------------------------------
    def item_rows(self, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of each candidate in :meth:`item_table_batch`, whether the video is in the table)."""
        position, found = _positions(self._video_ids, np.asarray(candidates, dtype=np.int64))
        return np.where(found, position, self._video_ids.size), found

    @property
    def has_item_history(self) -> bool:
        """Whether the layout has item-side history features (which change with the request time)."""
        return self._video_history is not None

    def item_table_batch(self, history_at_ms: int | None = None) -> RankingBatch:
        """One row per video of the table (and a last row for a video outside it), item columns
        only (everything else zero): the input of the item half of the first layer.

        ``history_at_ms``: also fill the item-side history columns with each video's history over
        every user's counted events before that time (a **snapshot**; see :meth:`snapshot_applies`);
        None leaves them zero (the cross half then computes them per request).
        """
        n = self._item_cat.shape[0]
        categorical = np.zeros((n, len(self._cat_specs)), dtype=np.int64)
        categorical[:, self._item_cat_cols] = self._item_cat
        multivalent = [self._item_mv[j] if j in self._item_mv else np.zeros((n, 1), dtype=np.int64)
                       for j in range(len(self._mv_specs))]
        dense = np.zeros((n, self._dense_width), dtype=np.float32)
        dense[:, self._item_dense_cols] = self._item_dense
        if history_at_ms is not None and self._video_history is not None:
            absent = int(self._video_ids.max()) + 1 if self._video_ids.size else 1
            videos = np.concatenate([self._video_ids, [absent]])
            values = self._item_history_values(self._video_history.before(videos, history_at_ms))
            for slot in self._dense_slots:
                if slot.name in values:
                    _expand_into(dense[:, slot.start:slot.start + slot.width], self.pipeline.normalisers[slot.name],
                                 values[slot.name])
        zeros = torch.zeros(n)
        return RankingBatch(torch.from_numpy(categorical), [torch.from_numpy(m) for m in multivalent],
                            torch.from_numpy(dense), zeros, zeros)

    def snapshot_applies(self, candidates: np.ndarray, now_ms: int, past_log: pl.DataFrame, snapshot_ms: int) -> bool:
        """Whether the item-side history of ``candidates`` at ``now_ms`` equals the snapshot taken
        at ``snapshot_ms`` (:meth:`item_table_batch`): no logged event between the two times
        (:meth:`_VideoHistoryIndex.same_history`), and no event the request brought
        (``row_id < 0``) on a candidate (those count in the candidate's history too)."""
        if self._video_history is None:
            return True
        if not self._video_history.same_history(now_ms, snapshot_ms):
            return False
        if past_log.height == 0 or "row_id" not in past_log.columns:
            return True
        row_id = past_log["row_id"]
        if int(row_id.min()) >= 0:  # type: ignore[arg-type]
            return True
        request_videos = past_log["video_id"].to_numpy()[row_id.to_numpy() < 0]
        return not np.isin(np.asarray(candidates, dtype=np.int64), request_videos.astype(np.int64)).any()

    def batch(self, user_id: int, candidates: np.ndarray, now_ms: int, tab: int, past_log: pl.DataFrame, *,
              item_columns: bool = True, user_rows: Literal["all", "first"] = "all",
              item_history: bool = True) -> RankingBatch:
        """Features of the impressions (user, candidates[i], now_ms, tab) given ``past_log``
        (that user's events; those at or after ``now_ms`` are ignored).

        For the cached path (the network reads the user side from row 0 only and the item side
        from its precomputed table): ``user_rows="first"`` fills the user columns of row 0 only,
        ``item_columns=False`` leaves the item columns zero, and ``item_history=False`` leaves the
        item-side history columns zero too (the table is a snapshot that holds them).
        """
        n = candidates.size
        video_pos, video_found = _positions(self._video_ids, candidates)
        item_rows = np.where(video_found, video_pos, self._video_ids.size)  # last row = unknown video
        user_pos, user_found = _positions(self._user_ids, np.array([user_id], dtype=np.int64))
        user_row = int(user_pos[0]) if user_found[0] else self._user_ids.size
        users = slice(None) if user_rows == "all" else slice(0, 1)

        events = past_log.filter(pl.col("time_ms") < now_ms) if past_log.height and \
            int(past_log["time_ms"].max()) >= now_ms else past_log
        history = self._history(events, candidates, video_pos, video_found, now_ms, item_history=item_history)

        categorical = np.zeros((n, len(self._cat_specs)), dtype=np.int64)
        if item_columns:
            categorical[:, self._item_cat_cols] = self._item_cat[item_rows]
            if self._video_id_col is not None:
                # Videos outside the table still have an id the vocabulary may know.
                unknown = ~video_found
                if unknown.any():
                    categorical[unknown, self._video_id_col] = self._lookups["video_id"](candidates[unknown])
        categorical[users, self._profile_cat_cols] = self._profile_cat[user_row]
        for j, spec in enumerate(self._cat_specs):
            if spec.name == "user_id":
                categorical[users, j] = self._lookups[spec.table](np.array([user_id]))[0]  # type: ignore[index]
            elif spec.name == "tab":
                categorical[users, j] = self._lookups[spec.table](np.array([tab]))[0]  # type: ignore[index]
            elif spec.name == "hour_of_day":
                hour = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC).astimezone(self._tz).hour
                categorical[users, j] = self._lookups[spec.table](np.array([hour]))[0]  # type: ignore[index]

        multivalent: list[np.ndarray] = []
        for j, spec in enumerate(self._mv_specs):
            if spec.side == "item":
                multivalent.append(self._item_mv[j][item_rows] if item_columns
                                   else np.zeros((n, 1), dtype=np.int64))
            else:  # the clicked-ids history
                ids = history[CLICKED_IDS]
                multivalent.append(np.repeat(ids, n, axis=0) if user_rows == "all" else
                                   np.concatenate([ids, np.zeros((n - 1, ids.shape[1]), dtype=np.int64)]))

        dense = np.zeros((n, self._dense_width), dtype=np.float32)
        if item_columns:
            dense[:, self._item_dense_cols] = self._item_dense[item_rows]
        dense[users, self._profile_dense_cols] = self._profile_dense[user_row]
        for slot in self._dense_slots:
            if slot.group == "history" and slot.name in history:
                rows = users if slot.side == "user" else slice(None)
                _expand_into(dense[rows, slot.start:slot.start + slot.width], self.pipeline.normalisers[slot.name],
                             history[slot.name])
        zeros = torch.zeros(n)
        return RankingBatch(categorical=torch.from_numpy(categorical), multivalent=[torch.from_numpy(m) for m in multivalent],
                            dense=torch.from_numpy(dense), is_click=zeros, watch_time_s=zeros)

    def _history(self, events: pl.DataFrame, candidates: np.ndarray, video_pos: np.ndarray, video_found: np.ndarray,
                 now_ms: int, item_history: bool = True) -> dict[str, np.ndarray]:
        """:mod:`ytdnn.features.history`'s columns for (user, candidate, now), every event before now.

        User-side values are [1] arrays, cross-side ones [n]; null is NaN. ``item_history=False``
        leaves out the item-side history columns.
        """
        config = self.history_config
        n = candidates.size
        times = events["time_ms"].to_numpy().astype(np.int64)
        videos = events["video_id"].to_numpy().astype(np.int64)
        clicked = events["is_click"].to_numpy() == 1
        watch_time_s = events["watch_time_s"].to_numpy().astype(np.float64)
        # Events the request brought (row_id < 0): the bundled log's item index does not have them.
        request_rows = events["row_id"].to_numpy() < 0 if "row_id" in events.columns else np.zeros(times.size, bool)
        # The store keeps events in (time, log order), the order history.py breaks ties in.
        if getattr(config, "count_duplicates_once", False) and times.size > 1 and not (np.diff(times) > 0).all():
            # Only the first row of each (video, time) counts, as in history.py.
            keep = _first_of_groups(times, videos)
            if not keep.all():
                times, videos, clicked, watch_time_s = times[keep], videos[keep], clicked[keep], watch_time_s[keep]
                request_rows = request_rows[keep]
        watch = np.where(clicked, watch_time_s, 0.0)
        imps = times.size
        clicks = int(clicked.sum())
        k, p0 = config.click_rate_prior_strength, config.click_rate_prior
        out: dict[str, np.ndarray] = {}
        click_times = times[clicked]
        out[S_SINCE_LAST_CLICK] = np.array([(now_ms - click_times.max()) / 1000.0 if clicks else np.nan])
        if k > 0:
            rate = (clicks + k * p0) / (imps + k)
        else:
            rate = clicks / imps if imps else p0
        out[USER_CLICK_RATE] = np.array([rate])
        out[USER_MEAN_WATCH_S] = np.array([watch.sum() / clicks if clicks else np.nan])
        in_window = times >= now_ms - self._window_ms
        out[USER_IMPRESSIONS_WINDOW] = np.array([float(in_window.sum())])
        out[USER_CLICKS_WINDOW] = np.array([float((in_window & clicked).sum())])
        recent = videos[clicked][::-1][: config.max_clicked]
        ids = self._lookups["video_id"](recent)
        ids = ids[ids > 0]  # lookup_lists drops out-of-vocabulary items
        row = np.zeros((1, config.max_clicked), dtype=np.int64)
        row[0, : ids.size] = ids
        out[CLICKED_IDS] = row

        # cross: earlier impressions of the candidate, the user's clicks on its author
        seen, seen_counts = np.unique(videos, return_counts=True)
        out[VIDEO_PREV_IMPRESSIONS] = _take(seen_counts, *_positions(seen, candidates), 0.0)
        candidate_author = _take(self._video_author, video_pos, video_found, -1.0).astype(np.int64)
        has_author = _take(self._video_has_author, video_pos, video_found, 0.0) > 0
        event_pos, event_found = _positions(self._video_ids, videos[clicked])
        event_author = _take(self._video_author, event_pos, event_found, -1.0).astype(np.int64)
        event_has_author = _take(self._video_has_author, event_pos, event_found, 0.0) > 0
        authors = event_author[event_has_author]
        author_times = click_times[event_has_author]
        unique_authors, inverse, counts = np.unique(authors, return_inverse=True, return_counts=True)
        last_time = np.full(unique_authors.size, -1, dtype=np.int64)
        np.maximum.at(last_time, inverse, author_times)
        pos, found = _positions(unique_authors, candidate_author)
        found &= has_author
        author_clicks = _take(counts, pos, found, 0.0)
        out[AUTHOR_CLICKS] = author_clicks
        out[AUTHOR_CLICK_SHARE] = (author_clicks / clicks) if clicks else np.zeros(n)
        out[S_SINCE_LAST_AUTHOR_CLICK] = np.where(found, (now_ms - _take(last_time, pos, found, 0.0)) / 1000.0, np.nan)
        if self._video_history is not None and item_history:
            out.update(self._item_history(candidates, now_ms, videos, times, clicked, watch, request_rows))
        return out

    def _item_history(self, candidates: np.ndarray, now_ms: int, videos: np.ndarray, times: np.ndarray,
                      clicked: np.ndarray, watch: np.ndarray, request_rows: np.ndarray) -> dict[str, np.ndarray]:
        """The candidates' click rate, watch per impression and recent impressions over every
        user's counted events before ``now`` (the bundled log, plus this request's own events)."""
        assert self._video_history is not None
        sums = self._video_history.before(candidates, now_ms)
        for event in np.flatnonzero(request_rows):
            # The request's own events (already deduplicated against the user's logged ones)
            # count too; a request carries few, so a short loop.
            rows = candidates == videos[event]
            if rows.any():
                sums["impressions"][rows] += 1.0
                sums["clicks"][rows] += float(clicked[event])
                sums["watch_s"][rows] += watch[event]
                if times[event] >= now_ms - self._window_ms:
                    sums["impressions_window"][rows] += 1.0
        return self._item_history_values(sums)

    def _item_history_values(self, sums: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Item-side history features from a video's counted impressions, clicks, watch seconds
        and recent impressions: click rate (c + k·p₀)/(n + k), watch per impression
        (w + k·m₀)/(n + k) (k = 0: c/n and w/n, the priors when n = 0), window impressions."""
        config = self.history_config
        k, p0 = config.click_rate_prior_strength, config.click_rate_prior
        m0 = getattr(config, "watch_prior_s", 0.0)
        imps, clicks, watch_s = sums["impressions"], sums["clicks"], sums["watch_s"]
        if k > 0:
            rate = (clicks + k * p0) / (imps + k)
            mean_watch = (watch_s + k * m0) / (imps + k)
        else:
            safe = np.maximum(imps, 1.0)
            rate = np.where(imps > 0, clicks / safe, p0)
            mean_watch = np.where(imps > 0, watch_s / safe, m0)
        return {VIDEO_CLICK_RATE: rate, VIDEO_MEAN_WATCH_S: mean_watch,
                VIDEO_IMPRESSIONS_WINDOW: sums["impressions_window"]}


def ranking_features_for(pipeline: RankingFeaturePipeline, users: pl.DataFrame, videos: pl.DataFrame,
                         impressions: pl.DataFrame | None = None, prefer_fast: bool = True
                         ) -> FastRankingFeatures | PipelineRankingFeatures:
    """The fast path when it supports the pipeline's layout, else the pipeline's own serving path.

    ``impressions``: the bundled log (sorted by user, time, row_id), for item-side history.
    """
    if prefer_fast:
        try:
            return FastRankingFeatures(pipeline, users, videos, impressions)
        except UnsupportedFeatureError as exc:
            log.warning("ranking features: %s; serving with the slower pipeline path", exc)
    return PipelineRankingFeatures(pipeline, users, videos, impressions)


# ---------------------------------------------------------------------------------------------
# Retrieval


class FastRetrievalFeatures:
    """The retrieval model's inputs for one user "now", equal to
    :meth:`RetrievalFeaturizer.serving_examples` (tested), without Polars per request.

    Returns NumPy arrays (history [1, N], tokens [1, L], profile [1, F], dense [1, D]).
    """

    def __init__(self, featurizer: RetrievalFeaturizer, users: pl.DataFrame) -> None:
        self.featurizer = featurizer
        users = users.unique("user_id", keep="first").sort("user_id")
        self._user_ids = users["user_id"].to_numpy().astype(np.int64)
        self._profiles = featurizer.profile_matrix(users, self._user_ids)
        self._dense = featurizer.example_age_features(np.array([featurizer.config.serving_example_age_days]))
        self._uses_tokens = bool(featurizer.config.use_tokens and len(featurizer.token_ids))

    def inputs(self, user_id: int, past_log: pl.DataFrame, now_ms: int) -> dict[str, np.ndarray]:
        config = self.featurizer.config
        times = past_log["time_ms"].to_numpy().astype(np.int64)
        before = times < now_ms
        clicked = (past_log["is_click"].to_numpy() == 1) & before
        watch_times = times[clicked]
        watch_videos = past_log["video_id"].to_numpy().astype(np.int64)[clicked]
        if watch_times.size > 1:
            # A watch logged twice (same video, same time) is one event of history.
            _, first = np.unique(np.stack([watch_times, watch_videos], axis=1), axis=0, return_index=True)
            first.sort()
            watch_times, watch_videos = watch_times[first], watch_videos[first]
        order = np.argsort(watch_times, kind="stable")
        corpus = self.featurizer.corpus_index(watch_videos[order]) + 1  # out of corpus -> 0 (padding)
        history = np.zeros((1, config.history_length), dtype=np.int64)
        last = corpus[-config.history_length:]
        if last.size:
            history[0, -last.size:] = last
        if self._uses_tokens and "tokens" in past_log.columns:
            source = clicked if config.token_source == "watches" else before
            token_values, token_rows = _flatten_lists(past_log["tokens"])
            in_source = source[token_rows]
            token_index = self.featurizer.token_index(token_values[in_source])
            token_times = times[token_rows[in_source]]
            keep = token_index > 0
            token_index = token_index[keep][np.argsort(token_times[keep], kind="stable")]
            tokens = np.zeros((1, config.token_history_length), dtype=np.int64)
            last_tokens = token_index[-config.token_history_length:]
            if last_tokens.size:
                tokens[0, -last_tokens.size:] = last_tokens
        else:
            tokens = np.zeros((1, 1), dtype=np.int64)
        pos, found = _positions(self._user_ids, np.array([user_id], dtype=np.int64))
        profile = self._profiles[pos] if found[0] else np.zeros((1, len(self.featurizer.profile_fields)), dtype=np.int64)
        return {"history": history, "tokens": tokens, "profile": profile.astype(np.int64), "dense": self._dense}
