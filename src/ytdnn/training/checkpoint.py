"""Training checkpoints: one safetensors file per checkpoint, tensors plus a JSON header.

A checkpoint holds everything needed to continue a run exactly where it stopped:

* ``model/<name>``      the network's state dict;
* ``best/<name>``       the best epoch's weights so far (early stopping restores them at the end);
* ``recent<i>/<name>``  the last epoch-end weights kept for tail averaging (``average_last_epochs``);
* ``optimizer/<i>/<k>`` the optimiser's per-parameter state (Adam's ``step``, ``exp_avg``, ...);
* ``rng/<name>``        RNG states as uint8 tensors (the global torch RNG for dropout, the
  trainer's shuffling generator now and at the start of the current epoch, so the epoch's
  permutation can be drawn again);
* the JSON header (safetensors ``__metadata__``, key ``ytdnn``): format, step, position in the
  data (epoch, next row of the epoch's permutation), running sums, early-stopping state, the
  history so far, the optimiser's param groups and a fingerprint of the run it belongs to.

One file, written to a temp name in the same folder and renamed (``os.replace``), so a killed
process leaves either the previous checkpoints or a complete new one: never a half-written
file under a ``checkpoint-*.safetensors`` name. Temp files start with a dot and are ignored
(and removed by :meth:`CheckpointStore.remove_stale_temp_files`). No pickle anywhere.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ytdnn.utils.io import atomic_write_with

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "CheckpointStore", "TrainingCheckpoint",
           "optimizer_state_from_tensors", "optimizer_state_to_tensors"]

CHECKPOINT_FORMAT = "ytdnn-checkpoint-v1"
_METADATA_KEY = "ytdnn"
_NAME = re.compile(r"^checkpoint-(\d{12})\.safetensors$")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not belong to this run; says which file and why."""


@dataclass
class TrainingCheckpoint:
    """The state of a training run after ``step`` optimiser steps (see the module docstring)."""

    step: int
    model: dict[str, Tensor]
    optimizer: dict[str, Any]  # torch optimizer state_dict
    rng: dict[str, Tensor]
    state: dict[str, Any]  # JSON-able: position, running sums, history, fingerprint
    best_model: dict[str, Tensor] | None = None
    path: Path | None = field(default=None, compare=False)
    recent_epochs: list[dict[str, Tensor]] = field(default_factory=list)  # oldest first


def _json_safe(value: Any) -> Any:
    # JSON has no NaN/inf; they are written as null (readers map null back to NaN where needed).
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def optimizer_state_to_tensors(state_dict: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer ``state_dict`` into tensors named ``<param index>/<key>`` and a JSON-able rest."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state_dict["state"].items():
        for key, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"{index}/{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": _json_safe(state_dict["param_groups"]), "scalars": _json_safe(scalars)}


def optimizer_state_from_tensors(tensors: dict[str, Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_to_tensors`: a ``state_dict`` for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split("/", 1)
        state.setdefault(int(index), {})[key] = value
    for index, values in rest.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group in rest["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def _tensors(prefix: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    # Clones: safetensors refuses tensors that share storage, and the copy is what the file holds.
    return {f"{prefix}/{name}": tensor.detach().cpu().contiguous().clone() for name, tensor in state.items()}


def _strip(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    start = len(prefix) + 1
    return {name[start:]: value for name, value in tensors.items() if name.startswith(prefix + "/")}


class CheckpointStore:
    """The checkpoints of one training run in ``directory``: ``checkpoint-<step>.safetensors``.

    ``keep`` most recent checkpoints are kept; older ones are deleted only after a newer one is
    complete on disk, so there is always at least one readable checkpoint once one was written.
    """

    def __init__(self, directory: str | Path, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def paths(self) -> list[Path]:
        """Complete checkpoint files, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest_path(self) -> Path | None:
        paths = self.paths()
        return paths[-1] if paths else None

    def save(self, checkpoint: TrainingCheckpoint) -> Path:
        """Write ``checkpoint`` atomically, then prune old ones; return its path."""
        optimizer_tensors, optimizer_rest = optimizer_state_to_tensors(checkpoint.optimizer)
        tensors = (_tensors("model", checkpoint.model) | _tensors("optimizer", optimizer_tensors)
                   | _tensors("rng", checkpoint.rng))
        if checkpoint.best_model is not None:
            tensors |= _tensors("best", checkpoint.best_model)
        for index, recent in enumerate(checkpoint.recent_epochs):
            tensors |= _tensors(f"recent{index}", recent)
        header = {"format": CHECKPOINT_FORMAT, "step": checkpoint.step, "optimizer": optimizer_rest,
                  "has_best": checkpoint.best_model is not None, "n_recent": len(checkpoint.recent_epochs),
                  "state": _json_safe(checkpoint.state)}
        metadata = {_METADATA_KEY: json.dumps(header, allow_nan=False)}
        path = self.directory / f"checkpoint-{checkpoint.step:012d}.safetensors"
        atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), suffix=".safetensors")
        for old in self.paths()[:-self.keep]:
            old.unlink(missing_ok=True)
        return path

    def load(self, path: str | Path) -> TrainingCheckpoint:
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable checkpoint: {exc}") from exc
        if _METADATA_KEY not in metadata:
            raise CheckpointError(f"{path}: no '{_METADATA_KEY}' header; not a ytdnn checkpoint")
        header = json.loads(metadata[_METADATA_KEY])
        if header.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: format must be {CHECKPOINT_FORMAT!r}, got {header.get('format')!r}")
        optimizer = optimizer_state_from_tensors(_strip("optimizer", tensors), header["optimizer"])
        best = _strip("best", tensors) if header.get("has_best") else None
        recent = [_strip(f"recent{index}", tensors) for index in range(int(header.get("n_recent", 0)))]
        return TrainingCheckpoint(int(header["step"]), _strip("model", tensors), optimizer, _strip("rng", tensors),
                                  dict(header["state"]), best, path, recent)

    def latest(self) -> TrainingCheckpoint | None:
        path = self.latest_path()
        return None if path is None else self.load(path)

    def clear(self) -> None:
        """Remove every checkpoint (a fresh run must not resume from an older run's state)."""
        for path in self.paths():
            path.unlink(missing_ok=True)
        self.remove_stale_temp_files()

    def remove_stale_temp_files(self) -> None:
        """Delete temp files a killed writer left behind (``.checkpoint-*``)."""
        if self.directory.is_dir():
            for path in self.directory.glob(".checkpoint-*"):
                path.unlink(missing_ok=True)

