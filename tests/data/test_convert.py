"""``ytdnn data convert``: CSV → sharded Parquet that reads back as the in-memory readers read it."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from tests.conftest import requires_real_data
from ytdnn.cli import app
from ytdnn.data.convert import convert_csv_logs
from ytdnn.data.errors import DataError
from ytdnn.data.schema import read_dataset

HEADER = "user_id,video_id,time_ms,date,is_click,watch_time_s,tab,tokens\n"
ROWS = [
    "1,10,1651363200000,20220501,1,12.5,1,3 4",
    "2,11,1651363201000,20220501,0,0,0,",
    "1,12,1651449600000,20220502,1,3.0,1,7",
    "3,10,1651449601000,20220502,0,0.0,1,",
    "2,13,1651449602000,20220502,1,40,0,1 2 3",
]


def _write(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text(header + "\n".join(rows) + "\n")
    return path


def test_schema_csv_becomes_shards_in_log_order(tmp_path: Path) -> None:
    source = tmp_path / "logs"
    source.mkdir()
    _write(source / "a.csv", ROWS[:3])
    _write(source / "b.csv", ROWS[3:])
    # block_bytes=64 forces several streamed blocks per file (each line is ~40 bytes).
    result = convert_csv_logs(source, tmp_path / "out", shard_rows=2, block_bytes=64)
    assert result.rows == 5 and result.shards == 3  # 2 + 2 + 1 rows
    shards = sorted(p.name for p in (tmp_path / "out" / "impressions").iterdir())
    assert shards == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    data = read_dataset(tmp_path / "out")
    imp = data.impressions
    assert imp["row_id"].to_list() == [0, 1, 2, 3, 4]
    assert imp["user_id"].to_list() == [1, 2, 1, 3, 2]
    assert imp["watch_time_s"].to_list() == [12.5, 0.0, 3.0, 0.0, 40.0]
    assert imp["tokens"].to_list() == [[3, 4], [], [7], [], [1, 2, 3]]
    assert imp["hourmin"].to_list() == [0] * 5  # absent in the source: the schema's default
    assert data.users["user_id"].to_list() == [1, 2, 3]  # derived by the reader: no users file given


def test_bad_value_names_file_line_and_column(tmp_path: Path) -> None:
    rows = ROWS[:3] + ["4,14,1651449603000,20220502,1,-2.0,1,"] + ROWS[3:]
    source = _write(tmp_path / "log.csv", rows)
    with pytest.raises(DataError, match=r"log\.csv, line 5, column 'watch_time_s': value '-2\.0' is not valid; "
                                        r"expected a finite watch time >= 0 seconds"):
        convert_csv_logs(source, tmp_path / "out", block_bytes=64)
    assert not (tmp_path / "out" / "impressions").exists()  # nothing half-converted is left behind


def test_skip_counts_bad_and_unparsable_rows(tmp_path: Path) -> None:
    # line 3: unparsable (too few fields); line 5: is_click = 7.
    rows = [ROWS[0], "2,11", ROWS[1], "5,15,1651449603000,20220502,7,0,1,", ROWS[2]]
    source = _write(tmp_path / "log.csv", rows)
    result = convert_csv_logs(source, tmp_path / "out", on_bad_rows="skip")
    assert result.rows == 3
    assert result.bad_rows["skipped_rows"] == 2
    assert result.bad_rows["by_reason"] == {"unparsable row": 1, "is_click: expected 0 or 1": 1}
    imp = read_dataset(tmp_path / "out").impressions
    assert imp["user_id"].to_list() == [1, 2, 1] and imp["row_id"].to_list() == [0, 1, 2]


def test_unparsable_row_is_an_error_by_default(tmp_path: Path) -> None:
    source = _write(tmp_path / "log.csv", [ROWS[0], "2,11"])
    with pytest.raises(DataError, match=r"line 3: unparsable row: expected 8 fields, found 2"):
        convert_csv_logs(source, tmp_path / "out")


def test_missing_required_column(tmp_path: Path) -> None:
    source = _write(tmp_path / "log.csv", ["1,10,1651363200000,20220501,1"],
                    header="user_id,video_id,time_ms,date,is_click\n")
    with pytest.raises(DataError, match=r"line 1: missing required column\(s\) \['watch_time_s'\]"):
        convert_csv_logs(source, tmp_path / "out")


def test_cli_convert_with_users_and_videos(tmp_path: Path) -> None:
    source = _write(tmp_path / "log.csv", ROWS)
    (tmp_path / "users.csv").write_text("user_id,age\n1,a\n2,b\n3,c\n")
    (tmp_path / "videos.csv").write_text("video_id,duration_s\n10,5.0\n11,6.0\n12,7.0\n13,8.0\n")
    result = CliRunner().invoke(app, ["data", "convert", str(source), "--out", str(tmp_path / "out"),
                                      "--shard-rows", "3", "--users", str(tmp_path / "users.csv"),
                                      "--videos", str(tmp_path / "videos.csv")])
    assert result.exit_code == 0, result.output
    data = read_dataset(tmp_path / "out")
    assert data.impressions.height == 5 and data.users["age"].to_list() == ["a", "b", "c"]
    assert data.videos["duration_s"].to_list() == [5.0, 6.0, 7.0, 8.0]
    assert data.videos["tags"].to_list() == [[], [], [], []]
    bad = CliRunner().invoke(app, ["data", "convert", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 2 and "no such file or folder" in bad.output


@requires_real_data
def test_kuairand_conversion_equals_the_in_memory_reader(tmp_path: Path, real_data_dir: Path, kuairand) -> None:
    result = convert_csv_logs(real_data_dir, tmp_path / "kr", shard_rows=100_000)
    assert result.shards == -(-kuairand.impressions.height // 100_000)
    converted = read_dataset(tmp_path / "kr")
    assert converted.impressions.equals(kuairand.impressions)
    assert converted.users.equals(kuairand.users) and converted.videos.equals(kuairand.videos)
    assert pl.read_parquet(tmp_path / "kr" / "impressions" / "part-00000.parquet").height == 100_000
