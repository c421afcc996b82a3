"""Calibration spread over processes (and GPUs) with torch.distributed.

Started by ``torchrun --nproc-per-node N -m secateurs prune ...`` (or ``secateurs prune --workers N``, which
runs that): each rank takes a contiguous share of the calibration windows and runs every block on it; the
statistics of every Linear's input (norms, Hessians, token counts) are summed over the ranks before a weight is
solved, so every rank derives the same masks; rank 0 writes the output. gloo on CPU, NCCL on GPUs.

The result equals one process's up to the order of floating-point sums: input norms are accumulated in float64
(identical masks in practice); Hessians in float32, whose rounding can flip near-ties of SparseGPT's saliency.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def share(self, calibration: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of the calibration windows (ranks differ by at most one window)."""
        count = calibration.shape[0]
        start, end = count * self.rank // self.world, count * (self.rank + 1) // self.world
        return calibration[start:end]

    def gather(self, value: Any) -> list[Any]:
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, value)
        return gathered

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per rank (LOCAL_RANK), as torchrun numbers them."""
        if requested.type == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
        return requested


def from_environment(device: torch.device) -> Ranks | None:
    """Join the process group torchrun describes (WORLD_SIZE > 1); None in a single process."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return Ranks(dist.get_rank(), dist.get_world_size())


def launch(workers: int, argv: list[str]) -> int:
    """Run this command again under torchrun with ``workers`` processes; returns its exit code."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={workers}",
        "-m",
        "secateurs",
        *argv,
    ]
    return subprocess.run(command).returncode


def without_workers(argv: list[str]) -> list[str]:
    """``argv`` less its ``--workers N`` (the relaunched processes are the workers)."""
    cleaned, skip = [], False
    for argument in argv:
        if skip:
            skip = False
            continue
        if argument == "--workers":
            skip = True
            continue
        if argument.startswith("--workers="):
            continue
        cleaned.append(argument)
    return cleaned
