"""Shared fixtures: the real KuaiRand-Pure window when ../shared/data has it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ytdnn.data.datadir import default_data_dir_candidates


def _real_data_dir() -> Path | None:
    for candidate in default_data_dir_candidates():
        if (candidate / "KuaiRand-Pure" / "data").is_dir():
            return candidate
    return None


REAL_DATA_DIR = _real_data_dir()
requires_real_data = pytest.mark.skipif(REAL_DATA_DIR is None, reason="KuaiRand-Pure not found in ../shared/data")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if REAL_DATA_DIR is None:
        pytest.skip("KuaiRand-Pure not found in ../shared/data")
    return REAL_DATA_DIR


@pytest.fixture(scope="session")
def kuairand(real_data_dir: Path):
    from ytdnn.data.kuairand import read_kuairand

    return read_kuairand(real_data_dir)
