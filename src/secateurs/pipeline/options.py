"""How a pruning runs, whatever the recipe: the device, the calibration batch size, where SparseGPT's Hessians
live, progress bars; and the distillation step both kinds of recipe end with."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..checks import check_choice
from ..models.load import DTYPES
from ..report import DistillRecord
from ..tuning import Distill, distill


@dataclass(kw_only=True)
class JobOptions:
    """What every job that loads a model shares: the device it runs on (``auto``: CUDA when present), the dtype it
    loads the model in, whether pickle checkpoints may be read (unpickling runs code), progress bars."""

    device: str = "auto"
    dtype: str = "float32"
    trust_pickle: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        check_choice(self.dtype, "dtype", tuple(DTYPES))


@dataclass
class RunOptions:
    """``batch_size``: calibration windows per forward (None: the walk's default); ``hessians_on_cpu``: the
    block's Hessians kept in CPU memory, only the one being solved on the device."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int | None = None
    hessians_on_cpu: bool = False
    progress: bool = True


def distill_model(
    model: nn.Module,
    teacher: nn.Module,
    masks: dict[nn.Parameter, torch.Tensor],
    calibration: torch.Tensor,
    settings: Distill,
    options: RunOptions,
) -> DistillRecord:
    """The distillation after pruning (``secateurs.tuning.distill``) and its record."""
    began = time.perf_counter()
    losses = distill(model, teacher, masks, calibration, settings.settings, options.device, options.progress)
    seconds = round(time.perf_counter() - began, 3)
    return DistillRecord(settings.epochs, settings.lr, [round(loss, 6) for loss in losses], seconds)
