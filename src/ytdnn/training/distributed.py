"""Multi-process training with PyTorch's own engine: DDP launched by ``torchrun``.

``torchrun --nproc-per-node N -m ytdnn train ranker ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR/PORT`` set; :func:`init_from_env` joins them
into a process group (gloo on CPU, nccl when CUDA is there). The trainer then (see
:class:`ytdnn.training.trainer.Trainer`):

* wraps the network in ``DistributedDataParallel`` (gradients averaged across ranks each step);
* draws the same permutation on every rank (same seed) and gives rank ``r`` the ``r``-th of
  ``N`` near-equal slices of each *global* batch of ``batch_size`` rows, so one step of N ranks
  sees exactly the rows one process would see in one step. Each rank's mean loss is scaled by
  ``N * local_rows / global_rows`` before backward, so DDP's average of gradients equals the
  gradient of the global batch's mean loss even when the last batch splits unevenly;
* sums the training loss across ranks for the history; validation runs on every rank on the
  same weights (identical results), and only rank 0 writes checkpoints.

The retrieval trainer (:func:`ytdnn.training.retrieval.fit_candidate_model`) follows the same
recipe: same permutation, near-equal slices of each global batch, DDP, share-weighted loss,
summed training loss, rank 0 writes.

Multi-node: run the same command on every node with ``--nnodes M --node-rank i
--rdzv-backend c10d --rdzv-endpoint HOST:PORT`` (see benchmarks/README.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "current", "global_sum", "init_from_env", "is_main_process", "shutdown"]


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, n_rows: int) -> tuple[int, int]:
        """This rank's [start, stop) of a global batch of ``n_rows`` rows (near-equal slices)."""
        base, extra = divmod(n_rows, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)


def current() -> DistributedContext:
    """The running process group's rank and size; a single process when there is none."""
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size())
    return DistributedContext()


def init_from_env(backend: str | None = None) -> DistributedContext:
    """Join the process group torchrun describes in the environment (no-op for one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or (dist.is_available() and dist.is_initialized()):
        return current()
    if not dist.is_available():  # pragma: no cover - every supported build has it
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return current()


def global_sum(value: torch.Tensor) -> float:
    """``value`` summed over the ranks of the process group (itself for one process)."""
    if not current().enabled:
        return float(value)
    total = value.detach().clone()
    dist.all_reduce(total)
    return float(total)


def is_main_process() -> bool:
    return current().is_main


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
