from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

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
    HistoryConfig,
    HistoryError,
    compute_history,
    history_for_requests,
)

VIDEOS = pl.DataFrame({"video_id": [10, 11, 12], "author_id": [100, 100, 200]})  # video 13: no author known
# N = 2 recent clicks, W = 3 s window, click rate prior p0 = 0.5 with k = 2 pseudo-impressions.
CONFIG = HistoryConfig(max_clicked=2, window_hours=3 / 3600, click_rate_prior=0.5, click_rate_prior_strength=2.0)

# row_id: user, time_ms, video, click, watch
EVENTS = {
    0: (1, 1000, 10, 1, 5.0),
    1: (1, 1000, 11, 0, 0.0),   # same millisecond as row 0: neither sees the other
    2: (1, 2000, 12, 1, 10.0),
    3: (1, 2000, 12, 1, 10.0),  # duplicate of row 2 (logged under a second hourmin bucket)
    4: (1, 5000, 10, 0, 0.0),
    5: (1, 5000, 11, 1, 20.0),  # tie with row 4
    6: (1, 9000, 10, 0, 0.0),
    7: (2, 1500, 10, 1, 7.0),
    8: (2, 3000, 13, 1, 3.0),   # video without a known author
}
SCRAMBLED = [6, 0, 7, 3, 1, 2, 8, 5, 4]  # input order must not matter

# Expected, worked by hand from the rows strictly earlier than each row (row 3 never counts: duplicate).
# clicked ids, s since last click, click rate (c + 1)/(n + 2), mean watch, window imps, window clicks,
# prev impressions of the video, author clicks, author share, s since last author click.
EXPECTED = {
    0: ([], None, 1 / 2, None, 0, 0, 0, 0, 0.0, None),
    1: ([], None, 1 / 2, None, 0, 0, 0, 0, 0.0, None),
    # before t=2000: rows 0 (click v10 @1000, 5 s) and 1.  window [-1000, 2000): rows 0, 1.
    2: ([10], 1.0, 2 / 4, 5.0, 2, 1, 0, 0, 0.0, None),
    3: ([10], 1.0, 2 / 4, 5.0, 2, 1, 0, 0, 0.0, None),
    # before t=5000: rows 0, 1, 2 (clicks v10, v12).  window [2000, 5000): row 2 only.
    # author 100 (v10, v11): clicked at row 0 (t=1000) → 1 click, share 1/2, 4 s ago.
    4: ([12, 10], 3.0, 3 / 5, 7.5, 1, 1, 1, 1, 0.5, 4.0),
    5: ([12, 10], 3.0, 3 / 5, 7.5, 1, 1, 1, 1, 0.5, 4.0),
    # before t=9000: rows 0, 1, 2, 4, 5 (clicks v10, v12, v11).  window [6000, 9000): empty.
    # v10 shown at rows 0 and 4; author 100 clicked at rows 0 and 5 (t=5000 → 4 s ago).
    6: ([11, 12], 4.0, 4 / 7, 35 / 3, 0, 0, 2, 2, 2 / 3, 4.0),
    7: ([], None, 1 / 2, None, 0, 0, 0, 0, 0.0, None),
    # user 2 before t=3000: row 7 (click v10, 7 s); video 13 has no author → author features empty.
    8: ([10], 1.5, 2 / 3, 7.0, 1, 1, 0, 0, 0.0, None),
}
FEATURE_ORDER = (CLICKED_IDS, S_SINCE_LAST_CLICK, USER_CLICK_RATE, USER_MEAN_WATCH_S, USER_IMPRESSIONS_WINDOW,
                 USER_CLICKS_WINDOW, VIDEO_PREV_IMPRESSIONS, AUTHOR_CLICKS, AUTHOR_CLICK_SHARE,
                 S_SINCE_LAST_AUTHOR_CLICK)


def _log(rows: list[int] | None = None) -> pl.DataFrame:
    rows = SCRAMBLED if rows is None else rows
    return pl.DataFrame({
        "row_id": rows,
        "user_id": [EVENTS[r][0] for r in rows],
        "time_ms": [EVENTS[r][1] for r in rows],
        "video_id": [EVENTS[r][2] for r in rows],
        "is_click": pl.Series([EVENTS[r][3] for r in rows], dtype=pl.Int8),
        "watch_time_s": [EVENTS[r][4] for r in rows],
    })


def _row_values(frame: pl.DataFrame, i: int) -> tuple:
    return tuple(frame[c][i] if c != CLICKED_IDS else frame[c][i].to_list() for c in FEATURE_ORDER)


def _assert_close(got: tuple, want: tuple, where: str) -> None:
    for name, g, w in zip(FEATURE_ORDER, got, want, strict=True):
        if w is None or isinstance(w, list):
            assert g == w, f"{where} {name}: got {g}, expected {w}"
        else:
            assert g == pytest.approx(w), f"{where} {name}: got {g}, expected {w}"


def test_hand_worked_history_with_ties_and_duplicates() -> None:
    out = compute_history(_log(), VIDEOS, CONFIG)
    assert out["row_id"].to_list() == SCRAMBLED  # rows and their order are kept
    assert out.columns[-len(HISTORY_COLUMNS):] == list(HISTORY_COLUMNS)
    for i, row in enumerate(SCRAMBLED):
        _assert_close(_row_values(out, i), EXPECTED[row], f"row {row}")


def test_future_and_same_time_events_do_not_change_a_row() -> None:
    # Dropping every event at or after t=2000 leaves rows at t < 2000 unchanged; flipping the
    # labels of same-time rows (row 0 ↔ row 1) changes nothing for either of them.
    early = compute_history(_log([0, 1, 7]), VIDEOS, CONFIG)
    for i, row in enumerate([0, 1, 7]):
        _assert_close(_row_values(early, i), EXPECTED[row], f"row {row}")
    flipped = _log().with_columns(
        pl.when(pl.col("row_id") == 0).then(0).when(pl.col("row_id") == 1).then(1).otherwise(pl.col("is_click"))
        .cast(pl.Int8).alias("is_click"),
        pl.when(pl.col("row_id") == 0).then(0.0).when(pl.col("row_id") == 1).then(5.0)
        .otherwise(pl.col("watch_time_s")).alias("watch_time_s"))
    out = compute_history(flipped, VIDEOS, CONFIG)
    for i, row in enumerate(SCRAMBLED):
        if row in (0, 1):
            _assert_close(_row_values(out, i), EXPECTED[row], f"row {row}")


def test_duplicates_count_twice_when_asked() -> None:
    config = CONFIG.model_copy(update={"count_duplicates_once": False})
    out = compute_history(_log(), VIDEOS, config).filter(pl.col("row_id") == 6)
    # Row 6 now also counts row 3: 6 impressions, 4 clicks → (4 + 1) / (6 + 2).
    assert out[USER_CLICK_RATE][0] == pytest.approx(5 / 8)
    assert out[CLICKED_IDS][0].to_list() == [11, 12]


def _reference(log: pl.DataFrame, authors: dict[int, int], config: HistoryConfig) -> list[tuple]:
    """Brute force: for every row, scan the whole log for the same user's strictly earlier events."""
    rows = log.to_dicts()
    window_ms = config.window_hours * 3_600_000
    k, p0 = config.click_rate_prior_strength, config.click_rate_prior
    seen: set[tuple[int, int, int]] = set()
    counted = []
    for i, r in enumerate(rows):  # the first row (in input order) of a (user, video, time) counts
        key = (r["user_id"], r["video_id"], r["time_ms"])
        counted.append(key not in seen)
        seen.add(key)
    out = []
    for r in rows:
        before = [e for e, c in zip(rows, counted) if c and e["user_id"] == r["user_id"] and e["time_ms"] < r["time_ms"]]
        before.sort(key=lambda e: (e["time_ms"], e["row_id"]))
        clicks = [e for e in before if e["is_click"] == 1]
        author = authors.get(r["video_id"])
        author_clicks = [e for e in clicks if author is not None and authors.get(e["video_id"]) == author]
        recent = [e for e in before if e["time_ms"] >= r["time_ms"] - window_ms]
        out.append((
            [e["video_id"] for e in reversed(clicks)][: config.max_clicked],
            (r["time_ms"] - clicks[-1]["time_ms"]) / 1000 if clicks else None,
            (len(clicks) + k * p0) / (len(before) + k),
            sum(e["watch_time_s"] for e in clicks) / len(clicks) if clicks else None,
            len(recent),
            sum(e["is_click"] for e in recent),
            sum(e["video_id"] == r["video_id"] for e in before),
            len(author_clicks),
            len(author_clicks) / len(clicks) if clicks else 0.0,
            (r["time_ms"] - author_clicks[-1]["time_ms"]) / 1000 if author_clicks else None,
        ))
    return out


def _random_log(seed: int, n: int = 300) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    # Few users, few distinct times and videos: many ties and exact duplicates.
    return pl.DataFrame({
        "row_id": np.arange(n),
        "user_id": rng.integers(0, 4, n),
        "time_ms": rng.integers(0, 40, n) * 500,
        "video_id": rng.integers(0, 8, n),
        "is_click": rng.integers(0, 2, n).astype(np.int8),
    }).with_columns(pl.when(pl.col("is_click") == 1).then(pl.col("row_id") % 7 + 1.0).otherwise(0.0)
                    .alias("watch_time_s"))


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force_reference_on_random_tied_log(seed: int) -> None:
    log = _random_log(seed)
    videos = pl.DataFrame({"video_id": list(range(7)), "author_id": [0, 0, 1, 1, 2, 2, 3]})  # video 7: unknown
    config = HistoryConfig(max_clicked=3, window_hours=4 / 3600, click_rate_prior=0.3, click_rate_prior_strength=4)
    out = compute_history(log, videos, config)
    expected = _reference(log, dict(zip(videos["video_id"], videos["author_id"])), config)
    for i in range(log.height):
        _assert_close(_row_values(out, i), expected[i], f"row {i}")


def test_serving_path_equals_batch_path() -> None:
    log = _random_log(5)
    videos = pl.DataFrame({"video_id": list(range(8)), "author_id": [0, 0, 1, 1, 2, 2, 3, 3]})
    config = HistoryConfig(max_clicked=3, window_hours=4 / 3600)
    batch = compute_history(log, videos, config)
    requests = log.select("user_id", "video_id", "time_ms")
    # From the full log (later events must be ignored) …
    served = history_for_requests(log, requests, videos, config)
    assert served.select(HISTORY_COLUMNS).equals(batch.select(HISTORY_COLUMNS))
    # … and, row by row, from exactly the events before each request.
    for i in range(0, log.height, 37):
        t = log["time_ms"][i]
        one = history_for_requests(log.filter(pl.col("time_ms") < t), requests.slice(i, 1), videos, config)
        assert one.select(HISTORY_COLUMNS).equals(batch.slice(i, 1).select(HISTORY_COLUMNS)), f"row {i}"


def test_requests_do_not_count_as_history_for_each_other() -> None:
    requests = pl.DataFrame({"user_id": [1, 1, 1], "video_id": [10, 10, 12], "time_ms": [9000, 12_000, 12_000]})
    out = history_for_requests(_log(), requests, VIDEOS, CONFIG)
    # The request at 9000 for v10 is not an impression: at 12 000, v10 still has 3 earlier impressions
    # (rows 0, 4, 6), not 4; and the window [9000, 12000) holds row 6 only.
    assert out[VIDEO_PREV_IMPRESSIONS].to_list() == [2, 3, 1]  # v12: row 2 (its duplicate row 3 counts once)
    assert out[USER_IMPRESSIONS_WINDOW].to_list() == [0, 1, 1]
    assert out[S_SINCE_LAST_CLICK].to_list() == [4.0, 7.0, 7.0]
    unknown_user = history_for_requests(_log(), pl.DataFrame({"user_id": [99], "video_id": [10], "time_ms": [1]}),
                                        VIDEOS, CONFIG)
    assert unknown_user[USER_CLICK_RATE][0] == pytest.approx(0.5) and unknown_user[CLICKED_IDS][0].to_list() == []


def test_bad_input_is_named() -> None:
    with pytest.raises(HistoryError, match="watch_time_s"):
        compute_history(_log().drop("watch_time_s"), VIDEOS, CONFIG)
    with pytest.raises(HistoryError, match="time_ms.*null at row 2"):
        compute_history(_log().with_columns(pl.when(pl.col("row_id") == 7).then(None).otherwise(pl.col("time_ms"))
                                            .alias("time_ms")), VIDEOS, CONFIG)
    with pytest.raises(HistoryError, match="video_id 10 appears more than once"):
        compute_history(_log(), pl.concat([VIDEOS, VIDEOS]), CONFIG)
    with pytest.raises(HistoryError, match="already have history"):
        compute_history(compute_history(_log(), VIDEOS, CONFIG), VIDEOS, CONFIG)


def test_no_python_loop_speed_on_a_large_synthetic_log() -> None:
    rng = np.random.default_rng(0)
    n = 100_000
    log = pl.DataFrame({
        "user_id": rng.integers(0, 20_000, n), "video_id": rng.integers(0, 5_000, n),
        "time_ms": np.sort(rng.integers(0, 14 * 86_400_000, n)), "is_click": rng.integers(0, 2, n).astype(np.int8),
    }).with_columns((pl.col("is_click") * 30.0).alias("watch_time_s"))
    videos = pl.DataFrame({"video_id": np.arange(5_000), "author_id": np.arange(5_000) // 3})
    import time
    start = time.perf_counter()
    out = compute_history(log, videos)
    assert time.perf_counter() - start < 15.0  # ~1-2 s on 2 cores; a per-row Python loop takes minutes
    assert out.height == n and not math.isnan(out[USER_CLICK_RATE].mean())


def test_item_side_history_counts_all_users_strictly_before() -> None:
    from ytdnn.features.history import VIDEO_CLICK_RATE, VIDEO_IMPRESSIONS_WINDOW, VIDEO_MEAN_WATCH_S

    config = HistoryConfig(window_hours=3 / 3600, click_rate_prior=0.5, click_rate_prior_strength=2.0,
                           watch_prior_s=4.0)
    log = pl.DataFrame({
        "row_id": [0, 1, 2, 3, 4],
        "user_id": [1, 2, 3, 3, 1],
        "video_id": [10, 10, 10, 10, 10],
        "time_ms": [1000, 1000, 2000, 2000, 5000],
        "is_click": [1, 0, 1, 1, 0],
        "watch_time_s": [6.0, 0.0, 10.0, 10.0, 0.0],  # rows 2 and 3: one impression logged twice
    })
    out = compute_history(log, VIDEOS, config)
    # Rows 0/1 (t=1000): nothing earlier -> prior: rate (0 + 2*0.5)/(0 + 2) = 0.5, watch (0 + 2*4)/(0 + 2) = 4.
    # Rows 2/3 (t=2000): rows 0, 1 earlier: rate (1 + 1)/(2 + 2) = 0.5, watch (6 + 8)/(2 + 2) = 3.5;
    #   the duplicate never sees its twin (same time_ms).
    # Row 4 (t=5000): rows 0, 1, 2 (3 is a duplicate, counted once): rate (2 + 1)/(3 + 2) = 0.6,
    #   watch (16 + 8)/(3 + 2) = 4.8; window [2000, 5000) holds row 2 only -> 1.
    assert out[VIDEO_CLICK_RATE].to_list() == pytest.approx([0.5, 0.5, 0.5, 0.5, 0.6])
    assert out[VIDEO_MEAN_WATCH_S].to_list() == pytest.approx([4.0, 4.0, 3.5, 3.5, 4.8])
    assert out[VIDEO_IMPRESSIONS_WINDOW].to_list() == [0, 0, 2, 2, 1]
