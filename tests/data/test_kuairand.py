from __future__ import annotations

import math
import shutil
from pathlib import Path

import polars as pl
import pytest

from ytdnn.data.errors import DataError
from ytdnn.data.kuairand import read_kuairand
from ytdnn.data.split import DateSplit

HEADER = ("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,"
          "long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab")
GOOD_ROWS = [
    "1,10,20220425,0,1650812741436,1,0,0,0,0,0,1,61802,49866,0,0,0,0,1",
    "2,11,20220425,0,1650812934945,0,0,0,0,0,0,0,1184,11933,0,0,0,0,1",
    "1,11,20220505,100,1651712934945,1,0,0,0,0,0,0,2500,11933,0,0,0,0,0",
]


def make_tree(root: Path, rows: list[str], header: str = HEADER) -> Path:
    data = root / "KuaiRand-Pure" / "data"
    data.mkdir(parents=True)
    (data / "log_standard_4_25_to_5_08_pure.csv").write_text("\n".join([header, *rows]) + "\n")
    (data / "user_features_pure.csv").write_text("user_id,user_active_degree,follow_user_num\n1,full_active,3\n"
                                                 "2,high_active,7\n")
    (data / "video_features_basic_pure.csv").write_text(
        "video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,"
        "server_height,music_id,music_type,tag\n10,100,NORMAL,2022-04-10,X,0.0,49866.0,720.0,1280.0,5,9.0,\"3,7\"\n"
        "11,101,NORMAL,2022-04-10,X,0.0,11933.0,720.0,1280.0,6,9.0,39\n")
    return root


def test_reads_official_layout_and_maps_watch_time(tmp_path: Path) -> None:
    data = read_kuairand(make_tree(tmp_path, GOOD_ROWS))
    imp = data.impressions
    assert imp["row_id"].to_list() == [0, 1, 2]
    # T = play_time_ms / 1000 on clicked rows, 0 on unclicked ones (the 1.184 s preview is not a watch).
    assert imp["watch_time_s"].to_list() == [61.802, 0.0, 2.5]
    assert imp["is_click"].to_list() == [1, 0, 1]
    assert imp["tab"].to_list() == [1, 1, 0]
    assert data.videos.filter(pl.col("video_id") == 10)["tags"].to_list() == [[3, 7]]
    assert data.videos.filter(pl.col("video_id") == 10)["duration_s"].item() == pytest.approx(49.866)


def test_reads_every_log_file_present(tmp_path: Path) -> None:
    root = make_tree(tmp_path, GOOD_ROWS[:2])
    (root / "KuaiRand-Pure" / "data" / "log_standard_4_08_to_4_21_pure.csv").write_text(
        HEADER + "\n3,10,20220410,0,1649548800000,1,0,0,0,0,0,1,5000,49866,0,0,0,0,1\n")
    data = read_kuairand(root)
    assert data.impressions.height == 3
    # Rows from the earlier file come first: ordered by time.
    assert data.impressions["user_id"].to_list() == [3, 1, 2]
    assert len(data.provenance["logs"]) == 2


@pytest.mark.parametrize(
    ("row", "column", "expected"),
    [
        ("x1,10,20220425,0,1650812741436,1,0,0,0,0,0,1,61802,49866,0,0,0,0,1", "user_id", "integer id"),
        ("1,10,20220425,0,1650812741436,1,0,0,0,0,0,1,-5,49866,0,0,0,0,1", "play_time_ms", ">= 0"),
        ("1,10,20220425,0,1650812741436,1,0,0,0,0,0,1,inf,49866,0,0,0,0,1", "play_time_ms", "finite"),
        ("1,10,20220425,0,1650812741436,2,0,0,0,0,0,1,100,49866,0,0,0,0,1", "is_click", "0 or 1"),
        ("1,10.5,20220425,0,1650812741436,1,0,0,0,0,0,1,100,49866,0,0,0,0,1", "video_id", "integer id"),
    ],
)
def test_bad_value_names_file_line_and_column(tmp_path: Path, row: str, column: str, expected: str) -> None:
    make_tree(tmp_path, [GOOD_ROWS[0], row, GOOD_ROWS[1]])
    with pytest.raises(DataError) as info:
        read_kuairand(tmp_path)
    message = str(info.value)
    assert "log_standard_4_25_to_5_08_pure.csv" in message
    assert "line 3" in message  # header is line 1, the bad row is the second data row
    assert f"column '{column}'" in message
    assert expected in message
    assert info.value.line == 3 and info.value.column == column


def test_unparsable_row_names_its_line(tmp_path: Path) -> None:
    make_tree(tmp_path, [GOOD_ROWS[0], GOOD_ROWS[1], "1,2,3"])
    with pytest.raises(DataError, match=r"line 4.*unparsable row: expected 19 fields, found 3"):
        read_kuairand(tmp_path)


def test_missing_column_is_named(tmp_path: Path) -> None:
    header = HEADER.replace("play_time_ms,", "")
    rows = [",".join(r.split(",")[:12] + r.split(",")[13:]) for r in GOOD_ROWS]
    make_tree(tmp_path, rows, header=header)
    with pytest.raises(DataError, match=r"line 1.*missing required column\(s\) \['play_time_ms'\]"):
        read_kuairand(tmp_path)


def test_skip_mode_drops_and_counts_bad_rows(tmp_path: Path) -> None:
    bad = [
        "x1,10,20220425,0,1650812741436,1,0,0,0,0,0,1,61802,49866,0,0,0,0,1",
        "1,10,20220425,0,1650812741437,1,0,0,0,0,0,1,-1,49866,0,0,0,0,1",
        "1,2,3",
    ]
    make_tree(tmp_path, [GOOD_ROWS[0], *bad, GOOD_ROWS[1], GOOD_ROWS[2]])
    data = read_kuairand(tmp_path, on_bad_rows="skip")
    assert data.impressions.height == 3
    report = data.provenance["bad_rows"]
    assert report["skipped_rows"] == 3
    assert report["by_reason"]["unparsable row"] == 1
    assert report["by_reason"]["play_time_ms: expected a finite play time >= 0 ms"] == 1
    assert any(":3:" in e for e in report["examples"])  # line numbers survive the skipped rows


def test_missing_data_folder_says_how_to_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ytdnn data download kuairand-pure"):
        read_kuairand(tmp_path)


def test_real_window_facts(kuairand) -> None:
    imp = kuairand.impressions
    assert imp.height == 228_329
    assert math.isclose(float(imp["is_click"].mean()), 0.4419, abs_tol=5e-4)
    clicked = imp.filter(pl.col("is_click") == 1)["watch_time_s"]
    assert math.isclose(float(clicked.mean()), 45.75, abs_tol=0.01)
    assert float(imp.filter(pl.col("is_click") == 0)["watch_time_s"].max()) == 0.0
    dup = imp.group_by(["user_id", "video_id", "time_ms"]).len().filter(pl.col("len") > 1)
    assert dup.height == 5_874
    train, test = DateSplit().split(kuairand)
    assert int(train["date"].max()) == 20220504 and int(test["date"].min()) == 20220505
    assert train.height + test.height == imp.height
    assert test["row_id"].is_sorted()


def test_a_repeated_user_or_video_id_names_the_file_and_both_lines(tmp_path: Path) -> None:
    users_root = make_tree(tmp_path / "u", GOOD_ROWS)
    users = users_root / "KuaiRand-Pure" / "data" / "user_features_pure.csv"
    users.write_text(users.read_text() + "1,low_active,9\n")  # line 4 repeats line 2's user 1
    with pytest.raises(DataError, match=r"user_features_pure.csv, line 4, column 'user_id': user_id 1 repeats line 2"):
        read_kuairand(users_root)
    videos_root = make_tree(tmp_path / "v", GOOD_ROWS)
    videos = videos_root / "KuaiRand-Pure" / "data" / "video_features_basic_pure.csv"
    lines = videos.read_text().splitlines()
    videos.write_text("\n".join([*lines, lines[2]]) + "\n")  # video 11 again, on line 4
    with pytest.raises(DataError, match=r"video_features_basic_pure.csv, line 4, column 'video_id': video_id 11 "
                                        r"repeats line 3"):
        read_kuairand(videos_root)


def test_a_stray_non_number_in_a_count_column_is_reported_not_silently_dropped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_tree(tmp_path, GOOD_ROWS)
    users = root / "KuaiRand-Pure" / "data" / "user_features_pure.csv"
    rows = "".join(f"{u},full_active,{u % 7}\n" for u in range(3, 203))
    users.write_text(users.read_text().replace("2,high_active,7\n", "2,high_active,lots\n") + rows)
    with caplog.at_level("WARNING", logger="ytdnn.data.kuairand"):
        data = read_kuairand(root)
    assert "follow_user_num__num" not in data.users.columns  # not a number column any more ...
    assert "line 3, column 'follow_user_num': 'lots' is not a number" in caplog.text  # ... and it says so
    assert "1 such rows" in caplog.text
