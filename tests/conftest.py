"""Shared fixtures: the real KuaiRand-Pure window when ../shared/data has it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ytdnn.data.datadir import ENV_VAR, default_data_dir_candidates


def _real_data_dir() -> Path | None:
    """The same lookup as the CLI: $YTDNN_DATA_DIR first, then ../shared/data."""
    env = os.environ.get(ENV_VAR)
    for candidate in ([Path(env)] if env else []) + default_data_dir_candidates():
        if (candidate / "KuaiRand-Pure" / "data").is_dir():
            return candidate
    return None


REAL_DATA_DIR = _real_data_dir()
requires_real_data = pytest.mark.skipif(REAL_DATA_DIR is None, reason="KuaiRand-Pure not found ($YTDNN_DATA_DIR or ../shared/data)")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if REAL_DATA_DIR is None:
        pytest.skip("KuaiRand-Pure not found in ../shared/data")
    return REAL_DATA_DIR


@pytest.fixture(scope="session")
def kuairand(real_data_dir: Path):
    from ytdnn.data.kuairand import read_kuairand

    return read_kuairand(real_data_dir)
