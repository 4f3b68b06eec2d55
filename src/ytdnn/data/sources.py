"""Open a dataset by name or path: ``kuairand-pure`` (official layout) or a ytdnn-layout folder."""

from __future__ import annotations

from pathlib import Path

from ytdnn.data.csv_reader import OnBadRows
from ytdnn.data.datadir import resolve_data_dir
from ytdnn.data.errors import DataError
from ytdnn.data.kuairand import read_kuairand
from ytdnn.data.schema import InteractionData, is_ytdnn_layout, read_dataset


def load_dataset(dataset: str = "kuairand-pure", data_dir: str | Path | None = None, *,
                 on_bad_rows: OnBadRows = "error") -> InteractionData:
    """``dataset`` is ``kuairand-pure`` (found under the data directory) or a path to a folder in
    the ytdnn layout (e.g. written by ``ytdnn simulate``) or in the KuaiRand layout."""
    if dataset == "kuairand-pure":
        return read_kuairand(resolve_data_dir(data_dir), on_bad_rows=on_bad_rows)
    path = Path(dataset).expanduser()
    if path.is_dir():
        if is_ytdnn_layout(path):
            return read_dataset(path)
        return read_kuairand(path, on_bad_rows=on_bad_rows)
    raise DataError("unknown dataset: expected 'kuairand-pure' or a dataset folder", path=dataset)
