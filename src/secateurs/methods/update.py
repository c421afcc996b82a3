"""The Wanda paper's weight-update ablations (Sun et al. 2024, Section 5): a score's mask followed by SparseGPT's
OBS update of the kept weights, the mask fixed once (``obs-seq``) or re-chosen by the score on the updated
weights every column block of the sweep (``obs-iter``). Both read the layer Hessian."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .base import HESSIAN, LayerPlan, ScoreMethod, Solution
from .sparsegpt import ObsSettings


@dataclass(frozen=True)
class ObsUpdate(ObsSettings):
    name: ClassVar[str]
    statistics: ClassVar[str] = HESSIAN

    def solve(self, weight: torch.Tensor, statistics: Any, plan: LayerPlan, method: ScoreMethod) -> Solution:
        raise NotImplementedError


@dataclass(frozen=True)
class ObsSeq(ObsUpdate):
    """The score's mask, then the OBS update of the weights it keeps."""

    name: ClassVar[str] = "obs-seq"

    def solve(self, weight: torch.Tensor, statistics: Any, plan: LayerPlan, method: ScoreMethod) -> Solution:
        mask = method.prune(weight, statistics, plan).mask
        return self.sweep(weight, statistics, plan, mask=mask)


@dataclass(frozen=True)
class ObsIter(ObsUpdate):
    """The score chooses the mask block by block on the weights the sweep has updated so far."""

    name: ClassVar[str] = "obs-iter"

    def solve(self, weight: torch.Tensor, statistics: Any, plan: LayerPlan, method: ScoreMethod) -> Solution:
        norms = method.input_sum_squares(statistics)

        def saliency(weights: torch.Tensor, hinv_diagonal: torch.Tensor, columns: slice) -> torch.Tensor:
            return method.score(weights, None if norms is None else norms[columns].to(weights.device))

        return self.sweep(weight, statistics, plan, saliency=saliency)


UPDATES: dict[str, type[ObsUpdate]] = {cls.name: cls for cls in (ObsSeq, ObsIter)}
