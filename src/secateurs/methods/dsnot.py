"""DSnoT, dynamic sparse no training (Zhang et al. 2024, "Dynamic Sparse No Training: Training-Free
Fine-tuning for Sparse LLMs"): refine a pruning mask by swapping weights, without touching their values.

For an output row, removing weight j changes the row's expected output by W_ij * E[x_j]; the sum over the
removed weights is the row's expected reconstruction error e. While |e| is above ``threshold``, each
cycle regrows the removed weight that cancels e best (largest W_ij E[x_j] / Var(x_j)^p of e's sign) and
removes, in exchange, a kept weight of low Wanda score whose removal also pulls e toward 0, so the count of
kept weights never changes. Unstructured swaps are within a row; N:M swaps stay within one group of M.
Defaults are the paper's: 50 cycles, threshold 0.1, p = 1 (``pow_of_var_regrowing``).

One difference from the reference code: a swap is kept only when it lowers |e|, so the objective DSnoT
optimizes never gets worse (the reference can overshoot and keep swapping until the cycle limit).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, ClassVar

import torch

from ..checks import check_whole
from ..errors import RecipeError
from ..patterns import NMPattern
from . import wanda
from .base import NORMS, LayerPlan

MAX_CYCLES = 50
UPDATE_THRESHOLD = 0.1
POWER_OF_VARIANCE = 1.0


@dataclass(frozen=True)
class DSnoT:
    """The refinement's settings: stop below ``threshold`` (|e| per row) or after ``max_cycles``; regrowth weighs
    by Var(x)^``power_of_variance``; layers matching a ``skip`` glob are left as the method chose (the paper's
    code skips the MLPs)."""

    name: ClassVar[str] = "dsnot"
    statistics: ClassVar[str] = NORMS  # the mean and variance of each input feature
    threshold: float = UPDATE_THRESHOLD
    skip: tuple[str, ...] = ("*mlp*",)
    max_cycles: int = MAX_CYCLES
    power_of_variance: float = POWER_OF_VARIANCE

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or self.threshold < 0:
            raise RecipeError(f"{{threshold}} {self.threshold!r} must be a number >= 0, e.g. 0.1")
        check_whole(self.max_cycles, "max_cycles", 0, "50")
        object.__setattr__(self, "skip", tuple(self.skip))

    def applies(self, layer: str) -> bool:
        return not any(fnmatchcase(layer, glob) for glob in self.skip)

    def refine(self, weight: torch.Tensor, keep: torch.Tensor, statistics: Any, plan: LayerPlan) -> torch.Tensor:
        """The refined keep-mask of ``weight`` (float32) from ``keep``, with the layer's input statistics."""
        wanda_score = wanda.score(weight, statistics.input_sum_squares())
        return dsnot(weight, keep, statistics.mean, statistics.variance, wanda_score, plan.pattern, self)


def expected_error(weight: torch.Tensor, keep: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """e per row: the expected change of the row's output from the removed weights, sum_j W_ij E[x_j] (removed)."""
    return (weight * mean.unsqueeze(0) * ~keep).sum(1)


def dsnot(
    weight: torch.Tensor,
    keep: torch.Tensor,
    mean: torch.Tensor,
    variance: torch.Tensor,
    wanda_score: torch.Tensor,
    pattern: NMPattern | None = None,
    settings: DSnoT = DSnoT(),
) -> torch.Tensor:
    """The refined keep-mask for ``weight`` [out, in], starting from ``keep`` (True = kept)."""
    weight, keep = weight.float(), keep.clone()
    contribution = weight * mean.float().unsqueeze(0)  # W_ij E[x_j]
    regrow_gain = contribution / variance.float().clamp_min(1e-12).unsqueeze(0) ** settings.power_of_variance
    rows = torch.arange(weight.shape[0], device=weight.device)
    error = expected_error(weight, keep, mean.float())
    active = error.abs() > settings.threshold
    for _ in range(settings.max_cycles):
        if not active.any():
            break
        sign = torch.sign(error).unsqueeze(1)
        # regrow: the removed weight whose contribution, scaled by 1/Var, cancels the most of e
        candidates = torch.where(~keep, regrow_gain * sign, torch.full_like(regrow_gain, -torch.inf))
        grown = candidates.argmax(1)
        # remove: a kept weight of low Wanda score whose contribution has the sign opposite to e
        # (removing it adds its contribution to e), taken in the group of the regrown one for N:M
        allowed = keep & (contribution * sign < 0)
        if pattern is not None:
            group = torch.arange(weight.shape[1], device=weight.device) // pattern.m
            allowed &= group.unsqueeze(0) == (grown // pattern.m).unsqueeze(1)
        removal_score = torch.where(allowed, wanda_score.float(), torch.full_like(contribution, torch.inf))
        removed = removal_score.argmin(1)
        possible = torch.isfinite(candidates[rows, grown]) & torch.isfinite(removal_score[rows, removed])
        new_error = error - contribution[rows, grown] + contribution[rows, removed]
        swap = active & possible & (new_error.abs() < error.abs())
        keep[rows[swap], grown[swap]] = True
        keep[rows[swap], removed[swap]] = False
        error = torch.where(swap, new_error, error)
        active = swap & (error.abs() > settings.threshold)
    return keep
