"""Data-parallel training with ``torch.distributed``: process group, shards and gradient averaging.

Launched with ``torchrun --nproc_per_node N script.py`` (or one process per node under SLURM), every rank runs the
same script. The model is built identically on every rank (same seed), each rank draws its minibatch rows from its
own shard of every slice, and gradients are averaged over ranks after each backward pass, so the weights stay
identical everywhere. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from sd_inspire._logging import logger


@dataclass(frozen=True)
class World:
    """Rank of the current process among the training processes, and their number."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and shows progress."""
        return self.rank == 0


def world(device: torch.device) -> World:
    """The process group of a ``torchrun`` launch (created on first use: gloo on CPU, nccl on GPU), or one process.

    Raises
    ------
    RuntimeError
        If ``WORLD_SIZE`` says several processes but ``torch.distributed`` is unavailable.
    """
    import torch.distributed as dist

    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 and not (dist.is_available() and dist.is_initialized()):
        return World()
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={size} but this torch build has no torch.distributed.")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        logger.info("Joined a %s process group: rank %d of %d", backend, dist.get_rank(), dist.get_world_size())
    return World(rank=dist.get_rank(), size=dist.get_world_size())


def local_cuda_device(device: str) -> torch.device:
    """``device`` ("cuda" without an index) as this process's own GPU under ``torchrun``: ``cuda:LOCAL_RANK``.

    Every rank of a node would otherwise take GPU 0 (nccl refuses two ranks on one GPU). A device with an index, or
    a launch without ``LOCAL_RANK``, is left as it is.
    """
    local_rank = os.environ.get("LOCAL_RANK")
    if device != "cuda" or local_rank is None:
        return torch.device(device)
    return torch.device("cuda", int(local_rank) % max(torch.cuda.device_count(), 1))


def average_gradients(parameters: list[torch.nn.Parameter], size: int) -> None:
    """Replace each gradient by its mean over the ranks (one flattened all-reduce)."""
    if size <= 1:
        return
    import torch.distributed as dist

    for p in parameters:  # every rank must reduce the same tensors
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in parameters]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_over_ranks(value: float | list[float], size: int, device: torch.device) -> float | list[float]:
    """Mean over the ranks of a number, or of each number of a list, in one all-reduce on ``device``.

    The tensor lives on the training device: nccl reduces only GPU tensors.
    """
    if size <= 1:
        return value
    import torch.distributed as dist

    t = torch.tensor(value if isinstance(value, list) else [value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    means = [float(v) / size for v in t.tolist()]
    return means if isinstance(value, list) else means[0]
