"""Leak-free history features for the ranker: what the server knew about the user before each impression.

Every feature of an impression at time t is computed from the same user's events with
``time_ms < t`` **strictly**: events logged at the same millisecond never see each other, in
either direction, and duplicates of one impression (KuaiRand logs some twice, under two
``hourmin`` buckets, with the same ``time_ms``) never count each other. The whole log is
processed in time order, so a test-day impression sees train-day and earlier test-day events,
exactly what a live server would know. Nothing here depends on labels of the row itself.

Columns added (``side`` as in :mod:`ytdnn.features.layout`):

| column | side | definition (over the user's events strictly before t) |
| --- | --- | --- |
| ``hist_clicked_video_ids`` | user | ids of the last N clicked videos, most recent first (List(Int64)) |
| ``hist_s_since_last_click`` | user | (t − time of the last click) / 1000; null when no click yet |
| ``hist_user_click_rate`` | user | (clicks + k·p₀) / (impressions + k): the click rate shrunk to a prior p₀ |
| ``hist_user_mean_watch_s`` | user | watch seconds / clicks; null when no click yet |
| ``hist_user_impressions_window`` | user | impressions in [t − W, t) (trailing window, default 24 h) |
| ``hist_user_clicks_window`` | user | clicks in [t − W, t) |
| ``hist_video_prev_impressions`` | cross | earlier impressions of this video to this user |
| ``hist_author_clicks`` | cross | the user's clicks on this video's author so far |
| ``hist_author_click_share`` | cross | author clicks / all clicks of the user (0 when no click yet) |
| ``hist_s_since_last_author_click`` | cross | seconds since the user's last click on this author; null if none |

Item-side history, over *all users'* events on the video strictly before t (what the server's
log says about the candidate; the trending signal that dominates this data):

| column | side | definition (over the video's events strictly before t) |
| --- | --- | --- |
| ``hist_video_click_rate`` | item | (clicks + k·p₀) / (impressions + k) |
| ``hist_video_mean_watch_s`` | item | (watch seconds + k·m₀) / (impressions + k): watch time per impression, shrunk to m₀ |
| ``hist_video_impressions_window`` | item | impressions of the video in [t − W, t) |

Cumulative counts grow with the log, so later days sit beyond the training quantiles; the rates,
shares and trailing-window counts do not. The cumulative ``hist_author_clicks`` and
``hist_video_prev_impressions`` are kept because the paper names them; they stay small.

Batch and serving share one code path: :func:`history_for_requests` appends the requests to the
past log as zero-weight rows (they count as neither impressions nor clicks) and runs the same
:func:`_history_core` as :func:`compute_history`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

Side = Literal["user", "item", "cross"]

CLICKED_IDS = "hist_clicked_video_ids"
S_SINCE_LAST_CLICK = "hist_s_since_last_click"
USER_CLICK_RATE = "hist_user_click_rate"
USER_MEAN_WATCH_S = "hist_user_mean_watch_s"
USER_IMPRESSIONS_WINDOW = "hist_user_impressions_window"
USER_CLICKS_WINDOW = "hist_user_clicks_window"
VIDEO_PREV_IMPRESSIONS = "hist_video_prev_impressions"
AUTHOR_CLICKS = "hist_author_clicks"
AUTHOR_CLICK_SHARE = "hist_author_click_share"
S_SINCE_LAST_AUTHOR_CLICK = "hist_s_since_last_author_click"
VIDEO_CLICK_RATE = "hist_video_click_rate"
VIDEO_MEAN_WATCH_S = "hist_video_mean_watch_s"
VIDEO_IMPRESSIONS_WINDOW = "hist_video_impressions_window"


@dataclass(frozen=True)
class HistoryColumn:
    name: str
    side: Side
    nullable: bool  # null means "no such event yet" (the pipeline adds a missing-indicator column)


DENSE_HISTORY_COLUMNS: tuple[HistoryColumn, ...] = (
    HistoryColumn(S_SINCE_LAST_CLICK, "user", True),
    HistoryColumn(USER_CLICK_RATE, "user", False),
    HistoryColumn(USER_MEAN_WATCH_S, "user", True),
    HistoryColumn(USER_IMPRESSIONS_WINDOW, "user", False),
    HistoryColumn(USER_CLICKS_WINDOW, "user", False),
    HistoryColumn(VIDEO_PREV_IMPRESSIONS, "cross", False),
    HistoryColumn(AUTHOR_CLICKS, "cross", False),
    HistoryColumn(AUTHOR_CLICK_SHARE, "cross", False),
    HistoryColumn(S_SINCE_LAST_AUTHOR_CLICK, "cross", True),
    HistoryColumn(VIDEO_CLICK_RATE, "item", False),
    HistoryColumn(VIDEO_MEAN_WATCH_S, "item", False),
    HistoryColumn(VIDEO_IMPRESSIONS_WINDOW, "item", False),
)
HISTORY_COLUMNS: tuple[str, ...] = (CLICKED_IDS, *(c.name for c in DENSE_HISTORY_COLUMNS))

_EVENT_COLUMNS = ("user_id", "video_id", "time_ms", "is_click", "watch_time_s")
_REQUEST_COLUMNS = ("user_id", "video_id", "time_ms")


class HistoryError(ValueError):
    """History features were asked of a frame that lacks a needed column or has bad values."""


class HistoryConfig(BaseModel):
    """How the history features are computed (part of the ranking feature config)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    max_clicked: int = Field(30, ge=1, le=1000, description="N: how many recent clicked video ids to keep")
    window_hours: float = Field(24.0, gt=0, description="trailing window W for the recent impression/click counts")
    click_rate_prior: float = Field(0.5, ge=0, le=1, description="p0: prior click rate the user rate shrinks to")
    click_rate_prior_strength: float = Field(5.0, ge=0, description="k: pseudo-impressions of the prior")
    watch_prior_s: float = Field(20.0, ge=0, description="m0: prior watch seconds per impression for video rates")
    count_duplicates_once: bool = Field(
        True, description="a row repeating an earlier row's (user, video, time_ms) adds nothing to later history")


def _check_columns(frame: pl.DataFrame, needed: tuple[str, ...], what: str) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise HistoryError(f"{what} lack column(s) {missing}; expected at least {list(needed)}")


def _author_map(videos: pl.DataFrame) -> pl.DataFrame:
    _check_columns(videos, ("video_id", "author_id"), "videos")
    authors = videos.select(pl.col("video_id").cast(pl.Int64), pl.col("author_id").cast(pl.Int64))
    if authors["video_id"].is_duplicated().any():
        dup = authors.filter(pl.col("video_id").is_duplicated())["video_id"][0]
        raise HistoryError(f"videos: video_id {dup} appears more than once; expected one row per video")
    return authors


def _group_runs(frame: pl.DataFrame, keys: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, group start, same-time start) for the rows of ``frame`` grouped by ``keys``.

    ``order`` sorts the rows by (keys, time_ms, _key), i.e. each group in the frame's own order
    (the frame is sorted by time_ms, _key within its leading key); ``group_start[i]`` is the
    position in that order where row order[i]'s group begins, ``time_start[i]`` where its
    (group, time_ms) run begins. A null key is a group of its own, as in Polars' ``over``.
    """
    columns: list[np.ndarray] = []
    for key in keys:
        series = frame[key]
        columns += [series.fill_null(0).to_numpy(), series.is_null().to_numpy()]
    time_ms = frame["time_ms"].to_numpy()
    order = np.lexsort([frame[KEY].to_numpy(), time_ms, *reversed(columns)])
    n = order.size
    new_group = np.zeros(n, dtype=bool)
    if n:
        new_group[0] = True
        for column in columns:
            ordered = column[order]
            new_group[1:] |= ordered[1:] != ordered[:-1]
    ordered_time = time_ms[order]
    new_time = new_group.copy()
    new_time[1:] |= ordered_time[1:] != ordered_time[:-1]
    positions = np.arange(n)
    group_start = np.maximum.accumulate(np.where(new_group, positions, 0)) if n else positions
    time_start = np.maximum.accumulate(np.where(new_time, positions, 0)) if n else positions
    return order, group_start, time_start


def _before(frame: pl.DataFrame, value: str, keys: list[str], out: str) -> pl.DataFrame:
    """Sum of ``value`` over rows of the same ``keys`` group with a strictly smaller time_ms.

    The frame is sorted by (user_id, time_ms, _key). The exclusive running sum at the *first* row
    of a same-time group counts only strictly earlier rows; every row of that group takes it.
    """
    if len(keys) > 1 and frame.schema[value].is_integer():
        # Many small groups (user × video): Polars' over() costs ~5 µs a group there; integer sums
        # can be taken as differences of one running sum (exact), with the groups found by a sort.
        order, group_start, time_start = _group_runs(frame, keys)
        ordered = frame[value].to_numpy()[order].astype(np.int64)
        exclusive = np.cumsum(ordered) - ordered
        before = (exclusive - exclusive[group_start])[time_start]
        result = np.empty_like(before)
        result[order] = before
        return frame.with_columns(pl.Series(out, result, dtype=pl.Int64))
    # shift(1) of the running sum, not "running sum − value": (S + x) − x need not equal S in floats,
    # and the serving path (other rows at that time) must get bit-identical sums.
    return (frame.with_columns(pl.col(value).cum_sum().shift(1, fill_value=0).over(keys).alias(out))
            .with_columns(pl.col(out).first().over([*keys, "time_ms"])))


def _last_before(frame: pl.DataFrame, value: str, keys: list[str], out: str) -> pl.DataFrame:
    """Latest non-null ``value`` of the ``keys`` group on rows with a strictly smaller time_ms."""
    if len(keys) > 1:  # the same sort as _before instead of over(): index of the last non-null row so far
        order, group_start, time_start = _group_runs(frame, keys)
        series = frame[value]
        ordered_valid = series.is_not_null().to_numpy()[order]
        positions = np.arange(order.size)
        last_valid = np.maximum.accumulate(np.where(ordered_valid, positions, -1)) if order.size else positions
        previous = np.concatenate([[-1], last_valid[:-1]])[time_start]
        found = previous >= group_start[time_start]
        source = order[np.where(found, previous, 0)] if order.size else order
        taken = series.gather(pl.Series(source)) if order.size else series
        ordered_out = pl.select(pl.when(pl.Series(found)).then(taken)).to_series()
        inverse = np.empty_like(order)
        inverse[order] = positions
        return frame.with_columns(ordered_out.gather(pl.Series(inverse)).alias(out))
    return (frame.with_columns(pl.col(value).shift(1).forward_fill().over(keys).alias(out))
            .with_columns(pl.col(out).first().over([*keys, "time_ms"])))


def _recent_clicked_ids(frame: pl.DataFrame, max_clicked: int) -> pl.Series:
    """For each row of the (user, time)-sorted frame: the user's last N clicked ids before it, newest first."""
    clicked_ids = frame.filter(pl.col("_click") == 1)["video_id"].to_numpy()
    # _gclicks: clicks earlier in the sorted frame (all users), i.e. an index into clicked_ids.
    end = frame["_gclicks"].to_numpy()
    n_before = end - frame["_gclicks_user_start"].to_numpy()
    lengths = np.minimum(n_before, max_clicked)
    offsets = np.zeros(len(frame) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    step = np.arange(max_clicked, dtype=np.int64)
    index = end[:, None] - 1 - step[None, :]
    valid = step[None, :] < lengths[:, None]
    values = clicked_ids[index[valid]] if clicked_ids.size else np.zeros(0, dtype=np.int64)
    array = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.int64), type=pa.int64()))
    return pl.Series(CLICKED_IDS, pl.from_arrow(array)).cast(pl.List(pl.Int64))


USER_SIDE_COLUMNS: tuple[str, ...] = (CLICKED_IDS, *(c.name for c in DENSE_HISTORY_COLUMNS if c.side != "item"))
ITEM_SIDE_COLUMNS: tuple[str, ...] = tuple(c.name for c in DENSE_HISTORY_COLUMNS if c.side == "item")
KEY = "_key"  # the row's position in the whole log: orders rows of the same time, and joins the two sides


def _prepare_events(events: pl.DataFrame, config: HistoryConfig) -> pl.DataFrame:
    """Typed events sorted by (user_id, time_ms, _key) with the counted-impression/click/watch columns.

    ``events`` may carry ``_key`` (the row's position in the whole log, as the out-of-core path
    passes it); otherwise the input order is the key. Duplicates are resolved within one
    (user, video, time_ms) group, so any subset of the log closed under that group (all the
    events of some users, or of some videos) gets the same ``_imp``/``_click`` as the whole log.
    """
    key = pl.col(KEY).cast(pl.Int64) if KEY in events.columns else pl.int_range(pl.len(), dtype=pl.Int64).alias(KEY)
    frame = (events.select(
        key,
        pl.col("user_id").cast(pl.Int64), pl.col("video_id").cast(pl.Int64), pl.col("author_id").cast(pl.Int64),
        pl.col("time_ms").cast(pl.Int64),
        pl.col("_weight").cast(pl.Int64),
        pl.col("is_click").cast(pl.Int64),
        pl.col("watch_time_s").cast(pl.Float64),
    ).sort(["user_id", "time_ms", KEY]))
    counted = pl.col("_weight") == 1
    if config.count_duplicates_once:
        # Only the first logged row of each (user, video, time_ms) counts; requests (weight 0) never do.
        counted = counted & (pl.col("_weight").cum_sum().over(["user_id", "video_id", "time_ms"]) == 1)
    frame = frame.with_columns(counted.cast(pl.Int64).alias("_imp")).with_columns(
        ((pl.col("is_click") == 1) & (pl.col("_imp") == 1)).cast(pl.Int64).alias("_click"))
    frame = frame.with_columns(
        pl.when(pl.col("_click") == 1).then(pl.col("watch_time_s")).otherwise(0.0).alias("_watch"))
    return frame.with_columns(
        pl.when(pl.col("_click") == 1).then(pl.col("time_ms")).alias("_click_time"),
        pl.from_epoch("time_ms", time_unit="ms").alias("_dt"),
    )


def _user_side(frame: pl.DataFrame, config: HistoryConfig) -> pl.DataFrame:
    """User and cross columns of a :func:`_prepare_events` frame (each user's events must all be there)."""
    window = f"{round(config.window_hours * 3_600_000)}ms"
    k, p0 = config.click_rate_prior_strength, config.click_rate_prior
    frame = frame.with_columns((pl.col("_click").cum_sum() - pl.col("_click")).alias("_gclicks"))
    user = ["user_id"]
    for value, keys, out in (("_imp", user, "_imps"), ("_click", user, "_clicks"), ("_watch", user, "_watch_s"),
                             ("_imp", ["user_id", "video_id"], "_video_imps"),
                             ("_click", ["user_id", "author_id"], "_author_clicks")):
        frame = _before(frame, value, keys, out)
    frame = _last_before(frame, "_click_time", user, "_last_click")
    frame = _last_before(frame, "_click_time", ["user_id", "author_id"], "_last_author_click")
    frame = frame.with_columns(
        pl.col("_gclicks").first().over(["user_id", "time_ms"]),
        pl.col("_gclicks").first().over("user_id").alias("_gclicks_user_start"),
        # Trailing window [t − W, t): closed="left" leaves out every row at time t itself.
        pl.col("_imp").rolling_sum_by("_dt", window_size=window, closed="left").over("user_id")
        .alias(USER_IMPRESSIONS_WINDOW),
        pl.col("_click").rolling_sum_by("_dt", window_size=window, closed="left").over("user_id")
        .alias(USER_CLICKS_WINDOW),
    )
    has_author = pl.col("author_id").is_not_null()
    frame = frame.with_columns(
        ((pl.col("time_ms") - pl.col("_last_click")) / 1000.0).alias(S_SINCE_LAST_CLICK),
        ((pl.col("_clicks") + k * p0) / (pl.col("_imps") + k)).alias(USER_CLICK_RATE)
        if k > 0 else pl.when(pl.col("_imps") > 0).then(pl.col("_clicks") / pl.col("_imps")).otherwise(p0)
        .alias(USER_CLICK_RATE),
        pl.when(pl.col("_clicks") > 0).then(pl.col("_watch_s") / pl.col("_clicks")).alias(USER_MEAN_WATCH_S),
        pl.col("_video_imps").alias(VIDEO_PREV_IMPRESSIONS),
        pl.when(has_author).then(pl.col("_author_clicks")).otherwise(0).alias(AUTHOR_CLICKS),
        pl.when(has_author & (pl.col("_clicks") > 0)).then(pl.col("_author_clicks") / pl.col("_clicks"))
        .otherwise(0.0).alias(AUTHOR_CLICK_SHARE),
        pl.when(has_author).then((pl.col("time_ms") - pl.col("_last_author_click")) / 1000.0)
        .alias(S_SINCE_LAST_AUTHOR_CLICK),
    )
    return frame.with_columns(_recent_clicked_ids(frame, config.max_clicked))


def _item_side(frame: pl.DataFrame, config: HistoryConfig) -> pl.DataFrame:
    """Item columns of a :func:`_prepare_events` frame (each video's events must all be there); sorted by video."""
    window = f"{round(config.window_hours * 3_600_000)}ms"
    k, p0, m0 = config.click_rate_prior_strength, config.click_rate_prior, config.watch_prior_s
    # The same strictly-earlier sums as the user side, over each video's events (all users).
    frame = frame.sort(["video_id", "time_ms", KEY])
    video = ["video_id"]
    for value, out in (("_imp", "_v_imps"), ("_click", "_v_clicks"), ("_watch", "_v_watch")):
        frame = _before(frame, value, video, out)
    return frame.with_columns(
        ((pl.col("_v_clicks") + k * p0) / (pl.col("_v_imps") + k)).alias(VIDEO_CLICK_RATE) if k > 0 else
        pl.when(pl.col("_v_imps") > 0).then(pl.col("_v_clicks") / pl.col("_v_imps")).otherwise(p0)
        .alias(VIDEO_CLICK_RATE),
        ((pl.col("_v_watch") + k * m0) / (pl.col("_v_imps") + k)).alias(VIDEO_MEAN_WATCH_S) if k > 0 else
        pl.when(pl.col("_v_imps") > 0).then(pl.col("_v_watch") / pl.col("_v_imps")).otherwise(m0)
        .alias(VIDEO_MEAN_WATCH_S),
        pl.col("_imp").rolling_sum_by("_dt", window_size=window, closed="left").over("video_id")
        .alias(VIDEO_IMPRESSIONS_WINDOW),
    )


_OUTPUT_TYPES: dict[str, pl.Expr] = {
    CLICKED_IDS: pl.col(CLICKED_IDS),
    S_SINCE_LAST_CLICK: pl.col(S_SINCE_LAST_CLICK).cast(pl.Float64),
    USER_CLICK_RATE: pl.col(USER_CLICK_RATE).cast(pl.Float64),
    USER_MEAN_WATCH_S: pl.col(USER_MEAN_WATCH_S).cast(pl.Float64),
    USER_IMPRESSIONS_WINDOW: pl.col(USER_IMPRESSIONS_WINDOW).fill_null(0).cast(pl.Int64),
    USER_CLICKS_WINDOW: pl.col(USER_CLICKS_WINDOW).fill_null(0).cast(pl.Int64),
    VIDEO_PREV_IMPRESSIONS: pl.col(VIDEO_PREV_IMPRESSIONS).cast(pl.Int64),
    AUTHOR_CLICKS: pl.col(AUTHOR_CLICKS).cast(pl.Int64),
    AUTHOR_CLICK_SHARE: pl.col(AUTHOR_CLICK_SHARE).cast(pl.Float64),
    S_SINCE_LAST_AUTHOR_CLICK: pl.col(S_SINCE_LAST_AUTHOR_CLICK).cast(pl.Float64),
    VIDEO_CLICK_RATE: pl.col(VIDEO_CLICK_RATE).cast(pl.Float64),
    VIDEO_MEAN_WATCH_S: pl.col(VIDEO_MEAN_WATCH_S).cast(pl.Float64),
    VIDEO_IMPRESSIONS_WINDOW: pl.col(VIDEO_IMPRESSIONS_WINDOW).fill_null(0).cast(pl.Int64),
}


def _select_output(frame: pl.DataFrame, columns: tuple[str, ...], *, keep_key: bool = False) -> pl.DataFrame:
    return frame.select(*([KEY] if keep_key else []), *(_OUTPUT_TYPES[c] for c in columns))


def user_side_history(events: pl.DataFrame, config: HistoryConfig) -> pl.DataFrame:
    """``_key`` + the user and cross history columns, for a log holding *all* events of its users.

    The out-of-core path runs it on one user partition of the log (see :mod:`.streaming`).
    """
    return _select_output(_user_side(_prepare_events(events, config), config), USER_SIDE_COLUMNS, keep_key=True)


def item_side_history(events: pl.DataFrame, config: HistoryConfig) -> pl.DataFrame:
    """``_key`` + the item history columns, for a log holding *all* events of its videos (a video partition)."""
    return _select_output(_item_side(_prepare_events(events, config), config), ITEM_SIDE_COLUMNS, keep_key=True)


def _history_core(events: pl.DataFrame, config: HistoryConfig) -> pl.DataFrame:
    """History columns for every row of ``events``, in the input order.

    ``events``: user_id, video_id, author_id (nullable), time_ms, is_click, watch_time_s and
    ``_weight`` (1 for a logged event, 0 for a serving request that must not count as history).
    """
    frame = _item_side(_user_side(_prepare_events(events, config), config), config).sort(KEY)
    return _select_output(frame, HISTORY_COLUMNS)


def _check_events(frame: pl.DataFrame, what: str) -> None:
    _check_columns(frame, _EVENT_COLUMNS, what)
    for column in ("user_id", "video_id", "time_ms", "is_click", "watch_time_s"):
        nulls = frame[column].is_null()
        if nulls.any():
            raise HistoryError(f"{what}: column {column!r} is null at row {int(nulls.arg_max())}; expected a value")


def compute_history(impressions: pl.DataFrame, videos: pl.DataFrame,
                    config: HistoryConfig | None = None) -> pl.DataFrame:
    """``impressions`` with the history columns appended (same rows, same order).

    Pass the whole log (train and test days): each row only ever uses strictly earlier events
    of its user. ``videos`` supplies ``author_id`` for the author features.
    """
    config = config or HistoryConfig()
    _check_events(impressions, "impressions")
    clashing = [c for c in HISTORY_COLUMNS if c in impressions.columns]
    if clashing:
        raise HistoryError(f"impressions already have history column(s) {clashing}; drop them first")
    events = (impressions.select(*_EVENT_COLUMNS)
              .join(_author_map(videos), on="video_id", how="left", maintain_order="left")
              .with_columns(pl.lit(1, dtype=pl.Int8).alias("_weight")))
    return pl.concat([impressions, _history_core(events, config)], how="horizontal")


def history_for_requests(past_log: pl.DataFrame, requests: pl.DataFrame, videos: pl.DataFrame,
                         config: HistoryConfig | None = None) -> pl.DataFrame:
    """Serving path: ``requests`` (user_id, video_id, time_ms, …) with the history columns appended.

    ``past_log`` is what the server has logged (it may also hold events at or after a request's
    time: only events strictly before it are used). Requests do not count as history for each
    other. The result equals what :func:`compute_history` gives a logged impression with the same
    user, video and time over the same past events (the same core function computes both).
    """
    config = config or HistoryConfig()
    _check_events(past_log, "past_log")
    _check_columns(requests, _REQUEST_COLUMNS, "requests")
    for column in _REQUEST_COLUMNS:
        nulls = requests[column].is_null()
        if nulls.any():
            raise HistoryError(f"requests: column {column!r} is null at row {int(nulls.arg_max())}; expected a value")
    clashing = [c for c in HISTORY_COLUMNS if c in requests.columns]
    if clashing:
        raise HistoryError(f"requests already have history column(s) {clashing}; drop them first")
    users = requests["user_id"].cast(pl.Int64).unique()
    videos_asked = requests["video_id"].cast(pl.Int64).unique()
    latest = requests["time_ms"].max()
    # Only events of the requested users (user history) or on the requested videos (item
    # history) before the latest request matter; cut the log down first.
    past = past_log.head(0) if latest is None else past_log.filter(
        (pl.col("user_id").cast(pl.Int64).is_in(users.implode())
         | pl.col("video_id").cast(pl.Int64).is_in(videos_asked.implode())) & (pl.col("time_ms") < latest))
    past_events = past.select(
        pl.col("user_id").cast(pl.Int64), pl.col("video_id").cast(pl.Int64), pl.col("time_ms").cast(pl.Int64),
        pl.col("is_click").cast(pl.Int8), pl.col("watch_time_s").cast(pl.Float64),
        pl.lit(1, dtype=pl.Int8).alias("_weight"))
    request_events = requests.select(
        pl.col("user_id").cast(pl.Int64), pl.col("video_id").cast(pl.Int64), pl.col("time_ms").cast(pl.Int64),
        pl.lit(0, dtype=pl.Int8).alias("is_click"), pl.lit(0.0).alias("watch_time_s"),
        pl.lit(0, dtype=pl.Int8).alias("_weight"))
    events = (pl.concat([request_events, past_events])
              .join(_author_map(videos), on="video_id", how="left", maintain_order="left"))
    history = _history_core(events, config).head(requests.height)
    return pl.concat([requests, history], how="horizontal")
