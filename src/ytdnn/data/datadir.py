"""Where the data lives: ``--data-dir`` flag, then ``$YTDNN_DATA_DIR``, then ``../shared/data``."""

from __future__ import annotations

import os
from pathlib import Path

from ytdnn.data.errors import DataError

ENV_VAR = "YTDNN_DATA_DIR"
_REPO_ROOT = Path(__file__).resolve().parents[3]


def default_data_dir_candidates() -> list[Path]:
    """``../shared/data`` next to the current folder and next to the repository checkout."""
    return [Path.cwd().parent / "shared" / "data", _REPO_ROOT.parent / "shared" / "data", Path.cwd() / "data"]


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """Resolve the data directory: explicit argument > $YTDNN_DATA_DIR > ../shared/data > ./data."""
    if data_dir is not None and str(data_dir) != "":
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise DataError("data directory does not exist", path=path)
        return path
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataError(f"${ENV_VAR} points to a folder that does not exist", path=path)
        return path
    for candidate in default_data_dir_candidates():
        if candidate.is_dir():
            return candidate
    raise DataError(f"no data directory: pass --data-dir, set ${ENV_VAR}, or run "
                    "`ytdnn data download kuairand-pure --data-dir DIR`")
