from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from ytdnn.data.datadir import ENV_VAR, resolve_data_dir
from ytdnn.data.errors import DataError
from ytdnn.data.schema import InteractionData, conform_impressions, read_dataset, write_dataset
from ytdnn.data.split import DateSplit


def tiny_impressions() -> pl.DataFrame:
    return conform_impressions(pl.DataFrame({
        "user_id": [1, 1, 2, 2], "video_id": [5, 6, 5, 7], "time_ms": [10, 20, 30, 40],
        "date": [20220503, 20220504, 20220505, 20220506], "is_click": [1, 0, 1, 0],
        "watch_time_s": [12.5, 0.0, 3.0, 0.0],
    }))


def test_split_by_date_and_validation_days() -> None:
    data = InteractionData(tiny_impressions(), pl.DataFrame({"user_id": [1, 2]}), pl.DataFrame({"video_id": [5]}))
    train, test = DateSplit().split(data)
    assert train["date"].to_list() == [20220503, 20220504]
    assert test["date"].to_list() == [20220505, 20220506]
    assert DateSplit(validation_days=1).validation_dates(data.impressions) == [20220504]
    with pytest.raises(ValueError, match="must come after"):
        DateSplit(train_end=20220505, test_start=20220505)


def test_schema_rejects_watch_time_on_unclicked_rows() -> None:
    frame = tiny_impressions().with_columns(pl.Series("watch_time_s", [12.5, 4.0, 3.0, 0.0]))
    with pytest.raises(DataError, match="column 'watch_time_s': row 1 has value 4.0"):
        conform_impressions(frame)


def test_dataset_roundtrip(tmp_path: Path) -> None:
    data = InteractionData(tiny_impressions(), pl.DataFrame({"user_id": [1, 2]}), pl.DataFrame({"video_id": [5]}),
                           name="tiny")
    write_dataset(data, tmp_path / "ds")
    back = read_dataset(tmp_path / "ds")
    assert back.name == "tiny"
    assert back.impressions.equals(data.impressions)
    assert back.videos["tags"].to_list() == [[]]


def test_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flag, env = tmp_path / "flag", tmp_path / "env"
    flag.mkdir()
    env.mkdir()
    monkeypatch.setenv(ENV_VAR, str(env))
    assert resolve_data_dir(flag) == flag
    assert resolve_data_dir(None) == env
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(DataError, match=ENV_VAR):
        resolve_data_dir(None)
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_dir(tmp_path / "nope")
