"""Wanda (Sun et al. 2024, "A Simple and Effective Pruning Approach for LLMs").

score_ij = |W_ij| * ||X_j||_2, where ||X_j||_2 is the norm of input feature j over all calibration tokens;
scores are compared within each output row (``Method.per_row``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import RecipeError
from ..patterns import NMPattern
from .base import NORMS, LayerPlan, ScoreMethod, Solution, register_method


def score(weight: torch.Tensor, input_sum_squares: torch.Tensor | None) -> torch.Tensor:
    """|W| [out, in] times sqrt(sum over tokens of x_j^2) [in], broadcast over rows."""
    if input_sum_squares is None:
        raise ValueError("wanda needs the sum of squares of each input feature")
    return weight.abs() * input_sum_squares.sqrt().to(weight.dtype).unsqueeze(0)


def variant_mask(score: torch.Tensor, sparsity: float, tolerance: float = 0.001) -> torch.Tensor:
    """The Wanda paper's variant (its code's ``--use_variant``): in every row, remove the lowest scores whose
    running sum stays within ``alpha`` times the row's total, with one ``alpha`` per layer found by bisection
    so that the layer's sparsity is within ``tolerance`` of ``sparsity``. Rows thus lose different counts.

    Returns the keep-mask (True = kept).
    """
    ordered = torch.sort(score, dim=1, stable=True)
    cumulative = torch.cumsum(ordered.values, dim=1)
    totals = score.sum(dim=1, keepdim=True)

    def mask_for(alpha: float) -> tuple[torch.Tensor, float]:
        # The threshold is the largest sorted score whose running sum is within alpha of the row total.
        count = (cumulative <= totals * alpha).sum(dim=1, keepdim=True)
        threshold = ordered.values.gather(1, (count - 1).clamp_min(0))
        removed = (score <= threshold) & (count > 0)
        return ~removed, float(removed.float().mean())

    low, high, alpha = 0.0, 0.8, 0.4
    keep, achieved = mask_for(alpha)
    while abs(achieved - sparsity) > tolerance and high - low >= tolerance:
        if achieved > sparsity:
            high = alpha
        else:
            low = alpha
        alpha = (low + high) / 2
        keep, achieved = mask_for(alpha)
    return keep


@register_method
@dataclass(frozen=True)
class Wanda(ScoreMethod):
    """|W_ij| * ||X_j||, compared per output row; ``variant``: the paper's per-row cumulative threshold."""

    name: ClassVar[str] = "wanda"
    statistics: ClassVar[str | None] = NORMS
    per_row: ClassVar[bool] = True
    variant: bool = False

    def score(self, weight: torch.Tensor, input_sum_squares: torch.Tensor | None) -> torch.Tensor:
        return score(weight, input_sum_squares)

    def prune(self, weight: torch.Tensor, statistics: Any, plan: LayerPlan) -> Solution:
        if not self.variant:
            return super().prune(weight, statistics, plan)
        return Solution(variant_mask(self.score(weight, self.input_sum_squares(statistics)), plan.sparsity))

    def check(self, pattern: NMPattern | None, updated: bool) -> None:
        if self.variant and (pattern is not None or updated):
            raise RecipeError(
                "{variant} is Wanda's per-row threshold search: it needs unstructured sparsity and no OBS update"
            )
