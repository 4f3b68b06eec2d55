from __future__ import annotations

import math
from pathlib import Path

import pytest

from ytdnn.utils.io import atomic_path, atomic_write_json, read_json


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_json_writes_nan_as_null(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "m.json", {"x": math.nan, "y": [1.5, math.inf]})
    assert read_json(tmp_path / "m.json") == {"x": None, "y": [1.5, None]}
